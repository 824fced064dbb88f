"""The launcher process that starts and reaps subprocess tasks (runner/executors/host/launcher.py)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from runner.executors.base import OutputEnd
from runner.executors.host.exits import ExitWatcher
from runner.executors.host.launcher_client import LauncherClient
from runner.executors.host.protocol import BadMessage, Exited, StartRequest, TaskStart, Wrote, decode_report
from tests.conftest import Api, shell, step
from tests.daemon_process import launchers_of
from tests.helpers import pid_alive, until


def _launchers() -> list[psutil.Process]:
    return launchers_of(os.getpid())


@contextlib.asynccontextmanager
async def _client(tmp_path: Path, idle_s: float = 30.0) -> AsyncIterator[LauncherClient]:
    exits = ExitWatcher()
    client = LauncherClient(exits, tmp_path / "launcher.log", idle_s=idle_s, environment=os.environ)
    try:
        yield client
    finally:
        await client.close()
        exits.close()


def _request(folder: Path, argv: list[str]) -> TaskStart:
    return TaskStart(
        argv=argv,
        env={"PATH": os.defpath},
        work_dir=str(folder),
        folders=[f"{folder}/scratch"],
        config_file=f"{folder}/config.json",
        config="{}",
        stdout=f"{folder}/stdout.log",
        stderr=f"{folder}/stderr.log",
        exit_file=f"{folder}/exit_code",
    )


async def test_many_starts_at_once_all_get_their_answer(tmp_path: Path) -> None:
    """More requests than the launcher's socket queue holds (~10): they wait their turn."""
    async with _client(tmp_path) as client:

        async def start(i: int) -> tuple[int, int | None]:
            started = await client.start(_request(tmp_path / f"task-{i}", ["/bin/sh", "-c", f"exit {i % 7}"]))
            os.close(started.pidfd)
            return i, await asyncio.wait_for(started.exited, 30)

        results = await asyncio.gather(*(start(i) for i in range(150)))
        assert all(code == i % 7 for i, code in results)
        assert all((tmp_path / f"task-{i}" / "exit_code").read_text() == f"{i % 7}\n" for i in range(150))


async def test_the_environment_reaches_the_task_byte_for_byte(tmp_path: Path) -> None:
    """The daemon encodes requests with orjson, which refuses a lone surrogate (an environment
    byte that is not UTF-8, as os.environ holds it): such a request goes as the standard
    library's JSON; both arrive as given."""
    async with _client(tmp_path) as client:
        for name, value in (("plain", "caf\u00e9 \u2603"), ("odd", "caf\u00e9-\udcff")):
            request = _request(tmp_path / name, ["/bin/sh", "-c", 'printf %s "$ODD" > value'])
            request.env["ODD"] = value
            started = await client.start(request)
            os.close(started.pidfd)
            assert await asyncio.wait_for(started.exited, 30) == 0
            assert (tmp_path / name / "value").read_bytes() == os.fsencode(value)


async def test_the_launcher_tells_of_a_tasks_first_output_and_where_its_files_end(
    tmp_path: Path,
) -> None:
    """The daemon follows a task's files only once told that it wrote something, and skips
    reading them at the end when it has stored up to where they end."""
    async with _client(tmp_path) as client:
        gate = tmp_path / "go"
        wait = f'while [ ! -e "{gate}" ]; do sleep 0.01; done'
        for name, script, sizes in (
            ("chatty", f"printf 'a\\n'; {wait}; printf 'bb' >&2; printf 'c\\n'", (4, 2)),
            ("silent", f"{wait}; exit 5", (0, 0)),
        ):
            folder = tmp_path / name
            request = dataclasses.replace(
                _request(folder, ["/bin/sh", "-c", script]), order=f"{folder}/output.order"
            )
            started = await client.start(request)
            os.close(started.pidfd)
            exited_when_told: list[bool] = []
            exited = started.exited
            started.output.written.add_done_callback(
                lambda _, told=exited_when_told, exited=exited: told.append(exited.done())
            )
            if name == "chatty":
                await asyncio.wait_for(asyncio.shield(started.output.written), 30)
            gate.touch()
            await asyncio.wait_for(started.exited, 30)
            await asyncio.sleep(0)  # done callbacks run soon after, not at once
            # Told of output before the end, or (nothing printed) only with the end.
            assert exited_when_told == [name == "silent"]
            order_size = (folder / "output.order").stat().st_size
            assert started.output.end == OutputEnd(*sizes, order_size)
            assert (order_size > 0) == (name == "chatty")
            assert (folder / "stdout.log").stat().st_size == sizes[0]


def test_output_news_round_trips_and_bad_sizes_are_refused() -> None:
    for message in (Wrote(12, 34), Exited(12, None, 3, (1, 2, 3)), Exited(12, 34, 0)):
        assert decode_report(message.encode()) == message
    for bad in ([1, 2], [1, -2, 3], [1, 2, "3"], "123", [True, 2, 3]):
        with pytest.raises(BadMessage):
            decode_report(json.dumps({"exited": 12, "start_ticks": 34, "code": 0, "output": bad}).encode())


async def test_an_idle_launcher_leaves_and_the_next_start_brings_a_new_one(tmp_path: Path) -> None:
    go = tmp_path / "go"
    async with _client(tmp_path, idle_s=0.2) as client:
        # The first task runs until the test has taken its launcher (which can not leave while
        # it runs): once it ends, the launcher is idle and may leave before a next look.
        wait = f'i=0; while [ ! -e "{go}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'
        first = await client.start(_request(tmp_path / "first", ["/bin/sh", "-c", wait]))
        os.close(first.pidfd)
        (launcher,) = _launchers()
        go.touch()
        assert await asyncio.wait_for(first.exited, 30) == 0
        await until(
            lambda: not pid_alive(launcher), what="the idle launcher leaving", timeout_s=10, poll_s=0.05
        )
        second = await client.start(_request(tmp_path / "second", ["/bin/sh", "-c", "exit 3"]))
        os.close(second.pidfd)
        assert await asyncio.wait_for(second.exited, 10) == 3


async def test_a_failed_start_is_the_step_error(api: Api) -> None:
    await api.create_job([step("main", "/no/such")], name="bad")
    job = await api.wait_job("bad")
    assert job["status"] == "error"
    assert "/no/such" in job["error_details"]["message"]


async def test_steps_go_on_when_the_launcher_is_killed(api: Api) -> None:
    # The task ends only once its launcher is gone (a fixed sleep had to outlast killing it).
    wait = 'i=0; while [ ! -e "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'
    await api.create_job([shell("main", f"echo before; {wait}; exit 3")], name="running")
    await api.wait_job("running", {"active"})
    _, s = await api.request("GET", "/jobs/running/steps/main")
    storage = Path(s["status_details"]["subprocess_work_dir"]).parent.parent / "job-storage"
    await api.logs_until("running", lambda lines: lines == ["before"], "followed from the launcher's word")
    (launcher,) = _launchers()
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(10)
    (storage / "go").touch()
    # The task it started ran on, but nobody was left to hear its exit status: said so.
    job = await api.wait_job("running")
    assert job["status"] == "error"
    assert "launcher" in job["error_details"]["message"]
    assert await api.logs("running") == ["before"]  # what it printed while the launcher ran
    # The next step gets a new launcher.
    await api.create_job([shell("main", "exit 0")], name="after")
    assert (await api.wait_job("after"))["status"] == "completed"
    assert len(_launchers()) == 1


async def test_a_start_too_large_for_the_launcher_is_made_by_the_daemon(api: Api) -> None:
    big = "x" * 300_000  # over one launcher message (192 KiB): started in-process, sh wrapper
    await api.create_job(
        [{**shell("main", 'wc -c < "$NEMO_JOB_STEP_CONFIG_FILE_PATH"; exit 4'), "config": {"big": big}}],
        name="big",
    )
    job = await api.wait_job("big")
    assert (job["status"], job["error_details"]["exit_code"]) == ("error", 4)
    _, logs = await api.request("GET", "/jobs/big/logs")
    assert int(logs["data"][0]["message"]) > 300_000


async def test_a_task_sees_only_stdin_stdout_and_stderr(api: Api) -> None:
    """Not the launcher's channel to the daemon (a task could forge messages), nor what the
    daemon's own parent let it inherit. `ls` lists its own folder handle, 3, too."""
    await api.create_job([step("main", "ls", "/proc/self/fd")], name="fds")
    assert (await api.wait_job("fds"))["status"] == "completed"
    assert sorted(await api.logs("fds")) == ["0", "1", "2", "3"]


async def test_signals_have_their_default_action_in_a_task(api: Api) -> None:
    await api.create_job([shell("main", "kill -INT $$; echo survived")], name="interrupted")
    job = await api.wait_job("interrupted")
    assert job["status"] == "error"
    assert job["error_details"]["signal"] == "SIGINT"


async def test_a_script_without_a_shebang_runs_as_a_shell_script(api: Api, tmp_path: Path) -> None:
    script = tmp_path / "plain-script"
    script.write_text("echo from the script\nexit 6\n")
    script.chmod(0o755)
    await api.create_job([step("main", str(script))], name="plain")
    job = await api.wait_job("plain")
    assert (job["status"], job["error_details"]["exit_code"]) == ("error", 6)
    assert await api.logs("plain") == ["from the script"]


async def test_the_launcher_writes_its_own_errors_to_its_log_file(api: Api, tmp_path: Path) -> None:
    """Not to the daemon's stderr: it may outlive the daemon, and a reader of that would wait."""
    await api.create_job([shell("main", "exit 0")], name="any")
    await api.wait_job("any")
    (launcher,) = _launchers()
    assert os.readlink(f"/proc/{launcher.pid}/fd/2").endswith("launcher.log")


async def test_a_package_named_runner_in_the_working_folder_does_not_replace_the_launcher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "runner").mkdir()
    (tmp_path / "runner" / "__init__.py").write_text("raise SystemExit(3)\n")
    monkeypatch.chdir(tmp_path)
    async with _client(tmp_path) as client:
        started = await client.start(_request(tmp_path / "task", ["/bin/true"]))
        os.close(started.pidfd)
        assert await asyncio.wait_for(started.exited, 10) == 0


def test_exits_are_seen_through_pidfds_numbered_past_1024(tmp_path: Path) -> None:
    """select() refuses such numbers; a daemon with many running tasks reaches them."""
    from runner.executors.host.exits import _has_ended

    process = subprocess.Popen(["/bin/sleep", "30"])
    pidfd = os.pidfd_open(process.pid)
    high = os.dup2(pidfd, 1500)
    try:
        assert not _has_ended(high)
        process.kill()
        process.wait()
        assert _has_ended(high)
    finally:
        os.close(high)
        os.close(pidfd)


def test_a_relative_data_dir_is_made_absolute() -> None:
    from runner.settings import Settings

    assert Settings(data_dir=Path("relative/data")).data_dir == Path.cwd() / "relative" / "data"


def test_a_request_the_daemon_gave_up_on_before_leaving_is_not_started(tmp_path: Path) -> None:
    """The daemon sent a start, then closed its end (shut down) before the launcher read it."""
    import sys

    from runner.executors.host.launcher_client import _IMPORT_ROOT

    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    mine.send(StartRequest(1, _request(tmp_path / "task", ["/bin/sh", "-c", "touch started"])).encode())
    mine.close()  # before the launcher has even started: the request waits in its queue
    launcher = subprocess.Popen(
        [sys.executable, "-S", "-P", "-m", "runner.executors.host.launcher", str(theirs.fileno()), "30"],
        pass_fds=(theirs.fileno(),),
        env={**os.environ, "PYTHONPATH": _IMPORT_ROOT},
    )
    theirs.close()
    assert launcher.wait(timeout=30) == 0
    assert not (tmp_path / "task").exists()


async def test_a_workload_asked_for_after_shutdown_gets_a_status_not_an_error(tmp_path: Path) -> None:
    from runner.executors.host.workloads import LaunchedTask

    exits = ExitWatcher()
    client = LauncherClient(exits, tmp_path / "launcher.log", environment=os.environ)
    started = await client.start(_request(tmp_path / "task", ["/bin/sleep", "30"]))
    workload = LaunchedTask(
        started,
        str(tmp_path / "task" / "exit_code"),
        watcher=exits,
        loop=asyncio.get_running_loop(),
        launcher=client,
    )
    try:
        await client.close()  # leaves the task running (for a next daemon), tells it so
        exits.close()
        status = await asyncio.wait_for(workload.wait(), 10)
        assert status.reason == "the daemon stopped watching"
    finally:
        os.killpg(started.pid, signal.SIGKILL)


@pytest.mark.parametrize("module", ["runner.executors.host.launcher", "runner.executors.launcher"])
def test_leftovers_under_a_launcher_are_the_launchers_to_end(module: str) -> None:
    """Found by the module in its command line; `runner.executors.launcher` is the launcher of a
    daemon from before the host package, which outlives that daemon and ends what its tasks left."""
    import time

    from runner.executors.host.strays import _ended_by_a_launcher

    # `sh -c SCRIPT NAME`: NAME is in the shell's command line, as the module is in a launcher's.
    parent = subprocess.Popen(["/bin/sh", "-c", "/bin/sleep 30 & wait", module])
    try:
        children: list[psutil.Process] = []
        for _ in range(500):
            children = psutil.Process(parent.pid).children()
            if children:
                break
            time.sleep(0.01)
        assert children
        assert _ended_by_a_launcher(children)
        assert not _ended_by_a_launcher([psutil.Process(parent.pid)])  # its parent is no launcher
    finally:
        for child in psutil.Process(parent.pid).children():
            child.kill()
        parent.kill()
        parent.wait()
