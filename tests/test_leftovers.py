"""Nothing left behind: what a step's main process leaves running is ended when it ends (SIGTERM,
the grace period, SIGKILL), its output up to then is stored, and a restart sweeps what no step
knows. Processes are counted from /proc (through psutil)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.conftest import Api, api_for, running_server, shell
from tests.daemon_process import DaemonProcess, launchers_of
from tests.helpers import TERMINAL, pid_alive, until, until_blocking, wait_status_blocking

WS = "/apis/jobs/v2/workspaces/default"
GRACE_S = 2.0

# 50 processes left behind, each way a process can leave: 20 in the group, 10 in their own
# session (setsid), 10 double-forked (their parent gone at once), 5 both, 5 in their own session
# ignoring SIGTERM (they go only with SIGKILL, after the grace period).
FIFTY = (
    "for i in $(seq 20); do sleep 3001 & done; "
    "for i in $(seq 10); do setsid sleep 3002 & done; "
    "for i in $(seq 10); do (sleep 3003 &); done; "
    "for i in $(seq 5); do (setsid sleep 3004 &); done; "
    "for i in $(seq 5); do (trap '' TERM; exec setsid sleep 3005) & done; "
)


@pytest.fixture(autouse=True)
def _nothing_left_by_the_test(tmp_path: Path) -> Iterator[None]:
    """Whatever happens (e.g. on code that leaves them running), no process of the test's daemon
    survives the test: they all carry its data dir in their environment."""
    yield
    for proc in psutil.process_iter(["environ"]):
        if proc.pid != os.getpid() and str(tmp_path) in str(proc.info.get("environ") or {}):
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _sleeps(data_dir: Path, *marks: str) -> list[psutil.Process]:
    """Live `sleep MARK` processes of the daemon of `data_dir` (its path is in their environment)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        info = proc.info
        cmdline = info.get("cmdline") or []
        if info.get("status") == psutil.STATUS_ZOMBIE or len(cmdline) != 2 or cmdline[0] != "sleep":
            continue
        if cmdline[1] in marks and str(data_dir) in str(info.get("environ") or {}):
            found.append(proc)
    return found


def _kill(procs: list[psutil.Process]) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def _wait_for(name: str) -> str:
    """Shell: wait (bounded, ~60 s) until the test creates `name` in the job's storage. A step
    that must run until the test has seen something waits so, not for a fixed time (a loaded
    machine misses such windows)."""
    return (
        f'i=0; while [ ! -e "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/{name}" ] && [ $i -lt 1200 ]; '
        "do sleep 0.05; i=$((i+1)); done; "
    )


def _storage_of(step: dict[str, Any]) -> Path:
    """The job's storage on the host: the workload's $NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH."""
    details = step["status_details"]
    return Path(details.get("work_dir") or details["subprocess_work_dir"]).parent.parent / "job-storage"


async def _job_storage(api: Api, job: str) -> Path:
    await api.wait_job(job, {"active"}, timeout_s=60)
    _, step = await api.request("GET", f"/jobs/{job}/steps/main")
    return _storage_of(step)


async def test_fifty_left_behind_are_all_gone_within_the_grace_period(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    marks = ("3001", "3002", "3003", "3004", "3005")
    async with running_server(tmp_path, grace_period_s=GRACE_S) as srv, api_for(srv) as api:
        script = FIFTY + "echo spawned; " + _wait_for("go") + "exit 0"
        await api.create_job([shell("main", script)], name="fifty")
        storage = await _job_storage(api, "fifty")
        await until(
            lambda: len(_sleeps(data_dir, *marks)) == 50, what="50 background processes", timeout_s=30
        )
        (storage / "go").touch()  # the main process ends now: the grace period starts after this
        main_ended = time.monotonic()
        job = await api.wait_job("fifty", timeout_s=GRACE_S + 20)
        took = time.monotonic() - main_ended
        assert job["status"] == "completed", job  # the main process's exit code counts
        assert _sleeps(data_dir, *marks) == []  # ended before the step counts as ended
        # The five that ignore SIGTERM had their grace period, then SIGKILL (the upper bound is
        # only there to catch a grace period not kept: far above what a loaded machine takes).
        assert GRACE_S * 0.8 <= took <= GRACE_S + 10, took


async def test_what_a_leftover_prints_after_the_main_process_ended_is_stored(tmp_path: Path) -> None:
    # Each leftover marks (in the job's storage) that its trap is set; the main process ends
    # only once all three did (a fixed sleep was the only guarantee before).
    script = (
        "s=$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH; "
        "(trap '' TERM; touch \"$s/group\"; sleep 0.5; echo late-from-the-group; exec sleep 3101) & "
        'setsid sh -c \'trap "" TERM; touch "$1/session"; sleep 0.5; echo late-from-its-own-session >&2; '
        'exec sleep 3102\' sh "$s" & '
        '(sh -c \'trap "echo double-forked-got-sigterm; exit 0" TERM; touch "$1/double"; '
        'while :; do sleep 0.05; done\' sh "$s" &); '
        'i=0; until [ -e "$s/group" ] && [ -e "$s/session" ] && [ -e "$s/double" ] || [ $i -ge 1200 ]; '
        "do sleep 0.05; i=$((i+1)); done; echo main-done"
    )
    async with running_server(tmp_path, grace_period_s=GRACE_S) as srv, api_for(srv) as api:
        await api.create_job([shell("main", script)], name="late")
        job = await api.wait_job("late", timeout_s=GRACE_S + 10)
        assert job["status"] == "completed", job
        lines = await api.logs("late")
        assert "main-done" in lines
        assert "late-from-the-group" in lines
        assert "[stderr] late-from-its-own-session" in lines
        assert "double-forked-got-sigterm" in lines
        assert _sleeps(tmp_path / "data", "3101", "3102") == []


async def test_one_that_left_the_session_and_cleared_its_environment_is_ended_too(tmp_path: Path) -> None:
    """Nothing ties it to its task any more: it is ended once no task it may belong to runs
    (here also `other`, running when it was first seen), never taken for a running task's."""
    async with running_server(tmp_path, grace_period_s=GRACE_S) as srv, api_for(srv) as api:
        try:
            # Both end only when the test says so (fixed sleeps were windows a loaded machine missed).
            await api.create_job([shell("main", _wait_for("go") + "exit 0")], name="other")
            other = await _job_storage(api, "other")
            await api.create_job(
                [shell("main", "setsid env -i sleep 3601 & " + _wait_for("go"))], name="anon"
            )
            anon = await _job_storage(api, "anon")
            # Exec'd as `sleep` (not `setsid ... sleep 3601` any more): it left the session.
            await until(
                lambda: [p.info["cmdline"] for p in _host_sleeps("3601")] == [["sleep", "3601"]],
                what="it left the session",
                timeout_s=30,
            )
            (anon / "go").touch()
            assert (await api.wait_job("anon"))["status"] == "completed"
            assert len(_host_sleeps("3601")) == 1  # `other` still runs: it may be its
            (other / "go").touch()
            assert (await api.wait_job("other"))["status"] == "completed"
            await until(lambda: not _host_sleeps("3601"), what="ended", timeout_s=10)
        finally:
            _kill(_host_sleeps("3601"))


async def test_a_cancel_ends_the_whole_tree_with_one_sigterm_each(tmp_path: Path) -> None:
    """Cancelled while it runs: its tree (what left the group and session included) gets one
    SIGTERM from the stop; once the main process has ended, none of its leftovers gets another."""
    # Inside the outer script's double quotes: `\$` reaches the inner shell as `$`.
    counter = (
        "trap 'n=\\$((n+1)); echo {name}-sigterm-\\$n' TERM; echo {name}-ready; while :; do sleep 0.05; done"
    )
    script = (
        f'(sh -c "{counter.format(name="double-forked")}" &); '
        f'setsid sh -c "{counter.format(name="own-session")}" & '
        "echo started; wait"
    )
    async with running_server(tmp_path, grace_period_s=GRACE_S) as srv, api_for(srv) as api:
        await api.create_job([shell("main", script)], name="tree")
        await api.wait_job("tree", {"active"})
        # Both traps set (each says so after its trap), not a fixed sleep that hoped they were.
        ready = {"double-forked-ready", "own-session-ready"}
        deadline = time.monotonic() + 20
        while not ready <= set(lines := await api.logs("tree")):
            assert time.monotonic() < deadline, f"not both ready within 20 s: {lines}"
            await asyncio.sleep(0.05)
        started = time.monotonic()
        status, _ = await api.request("POST", "/jobs/tree/cancel")
        assert status == 200
        job = await api.wait_job("tree", timeout_s=GRACE_S + 20)
        assert job["status"] == "cancelled"
        assert time.monotonic() - started <= GRACE_S + 10  # one grace period, not more
        lines = await api.logs("tree")
        assert sorted(line for line in lines if "sigterm" in line) == [
            "double-forked-sigterm-1",
            "own-session-sigterm-1",
        ]


async def test_the_keep_setting_leaves_them_running(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    script = "sleep 3201 & setsid sleep 3202 & (sleep 3203 &); exit 0"
    # A long grace period, so that "nothing waited for them" is told apart from a loaded machine.
    grace_s = 30.0
    async with (
        running_server(tmp_path, grace_period_s=grace_s, keep_leftover_processes=True) as srv,
        api_for(srv) as api,
    ):
        started = time.monotonic()
        await api.create_job([shell("main", script)], name="kept")
        job = await api.wait_job("kept", timeout_s=grace_s)
        assert job["status"] == "completed"
        assert time.monotonic() - started < grace_s / 2  # nothing waited for them
        # All three running (the double-forked one may exec only after the step ended).
        await until(
            lambda: len(_sleeps(data_dir, "3201", "3202", "3203")) == 3,
            what="three left running",
            timeout_s=10,
        )


def _host_sleeps(*marks: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("status") != psutil.STATUS_ZOMBIE and cmdline[-2:] in (["sleep", m] for m in marks):
            found.append(proc)
    return found


async def test_a_container_steps_leftovers_die_with_its_container(tmp_path: Path) -> None:
    """The container's init (--init) ends with the main process, and the kernel then kills
    whatever else runs in the container: nothing is left on the host either."""
    from tests.docker_env import TEST_IMAGE, require_docker

    require_docker()
    marks = ("3501", "3502", "3503")
    # The main process ends only once the test has seen all three (a fixed sleep was a window
    # a loaded machine could miss): when the file `go` appears in the job's storage.
    script = "sleep 3501 & setsid sleep 3502 & (sleep 3503 &); " + _wait_for("go") + "echo main-done; exit 0"
    container = {"image": TEST_IMAGE, "entrypoint": ["sh", "-c"], "command": [script]}
    async with running_server(tmp_path, grace_period_s=GRACE_S) as srv, api_for(srv) as api:
        try:
            await api.create_job(
                [{"name": "main", "executor": {"provider": "cpu", "container": container}}], name="box"
            )
            await until(
                lambda: len(_host_sleeps(*marks)) == 3, what="three running in the container", timeout_s=60
            )
            (await _job_storage(api, "box") / "go").touch()
            job = await api.wait_job("box", timeout_s=60)
            assert job["status"] == "completed", job
            assert await api.logs("box") == ["main-done"]
            assert _host_sleeps(*marks) == []  # gone with it, before the step counts as ended
        finally:
            _kill(_host_sleeps(*marks))


_GIVE_UP_SCRIPT = """
import os, signal, sys
from runner.executors.host.leftovers import GIVE_UP_S, Leftovers, become_child_subreaper
from runner.executors.host.procfs import children_of

assert become_child_subreaper()
now, sent, stuck = [0.0], [], set()

def send(pid, sig):
    sent.append((pid, sig))
    if not (sig == signal.SIGKILL and pid in stuck):  # waiting in the kernel: SIGKILL does not end it
        os.kill(pid, sig)

tracker = Leftovers(1.0, clock=lambda: now[0], send=send)
script = "trap '' TERM; (exec sleep 3701) & exit 0"
env = {"PATH": os.defpath, "LOCALJOBS_TASK": "localjobs-task:o:t"}
main = os.posix_spawn("/bin/sh", ["sh", "-c", script], env, setsid=True)
tracker.started(main, 7, "localjobs-task:o:t")
os.waitid(os.P_PID, main, os.WEXITED | os.WNOWAIT)
tracker.main_ended(main, 0)
os.waitpid(main, 0)
assert tracker.step() == [], "something was left"
(left,) = children_of(os.getpid())
stuck.add(left)
assert (left, signal.SIGTERM) in sent
now[0] = 1.5
assert tracker.step() == [] and (left, signal.SIGKILL) in sent  # past the grace period
now[0] = 1.0 + GIVE_UP_S + 0.1
assert tracker.step() == [(main, 7, 0)]  # reported anyway
count = len(sent)
now[0] += 60
assert tracker.step() == [] and len(sent) == count and not tracker.busy  # never signalled again
stuck.clear()
os.kill(left, signal.SIGKILL)
os.waitpid(left, 0)
tracker.reaped(left)
print("ok")
"""


def test_one_that_sigkill_does_not_end_holds_the_report_at_most_give_up_s() -> None:
    """A process waiting in the kernel dies only once it wakes: the task is reported after the
    give-up time anyway, and that process is not signalled again and again meanwhile."""
    import subprocess
    import sys

    from runner.executors.host.launcher_client import _IMPORT_ROOT

    done = subprocess.run(
        [sys.executable, "-c", _GIVE_UP_SCRIPT],
        env={**os.environ, "PYTHONPATH": _IMPORT_ROOT},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.stdout.strip() == "ok", done.stderr


# ---------------------------------------------------------------------------------------------
# Across restarts (a real daemon process, killed with SIGKILL)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(
        tmp_path / "logs", data_dir=tmp_path / "data", args=["--grace-period-s", str(GRACE_S)]
    ) as process:
        yield process


def _call(daemon: DaemonProcess, method: str, path: str, body: Any = None) -> Any:
    response = httpx.request(
        method, daemon.base_url + WS + path, json=body, headers=daemon.headers, timeout=10
    )
    assert response.status_code < 300, response.text
    return response.json()


def _submit(daemon: DaemonProcess, name: str, script: str) -> None:
    steps = [{"name": "main", "executor": {"provider": "subprocess", "command": ["sh", "-c", script]}}]
    _call(
        daemon,
        "POST",
        "/jobs",
        {"name": name, "source": "test", "spec": {}, "platform_spec": {"steps": steps}},
    )


def _wait(daemon: DaemonProcess, name: str, statuses: set[str], timeout_s: float = 20) -> dict[str, Any]:
    return wait_status_blocking(
        lambda: _call(daemon, "GET", f"/jobs/{name}"),
        statuses,
        what=name,
        timeout_s=timeout_s,
        detail=lambda job: daemon,
    )


LEAVES_THREE = "sleep 3301 & setsid sleep 3302 & (sleep 3303 &); exit 0"
THREE = ("3301", "3302", "3303")


def test_a_restart_sweeps_the_leftovers_of_a_task_no_step_knows(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """Left running on purpose (the keep setting), then the daemon is killed and started again
    without it: its sweep finds them by their marker, though none leads a session of a task."""
    data_dir = tmp_path / "data"
    daemon.env["LOCALJOBS_KEEP_LEFTOVER_PROCESSES"] = "true"
    daemon.start()
    _submit(daemon, "kept", LEAVES_THREE)
    assert _wait(daemon, "kept", TERMINAL)["status"] == "completed"
    until_blocking(lambda: len(_sleeps(data_dir, *THREE)) == 3, what="three left running", timeout_s=5)
    daemon.stop(signal.SIGKILL)
    assert len(_sleeps(data_dir, *THREE)) == 3
    del daemon.env["LOCALJOBS_KEEP_LEFTOVER_PROCESSES"]
    daemon.start()
    until_blocking(lambda: not _sleeps(data_dir, *THREE), what="the sweep ends them", timeout_s=10)


def test_with_the_keep_setting_a_restart_keeps_what_an_ended_task_left(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    daemon.env["LOCALJOBS_KEEP_LEFTOVER_PROCESSES"] = "true"
    daemon.start()
    _submit(daemon, "kept", LEAVES_THREE)
    assert _wait(daemon, "kept", TERMINAL)["status"] == "completed"
    until_blocking(lambda: len(_sleeps(data_dir, *THREE)) == 3, what="three left running", timeout_s=5)
    daemon.stop(signal.SIGKILL)
    daemon.start()
    time.sleep(1.0)  # the sweep runs before the daemon takes steps: long done by now
    assert len(_sleeps(data_dir, *THREE)) == 3


def test_leftovers_of_a_task_whose_launcher_died_are_swept(daemon: DaemonProcess, tmp_path: Path) -> None:
    """Daemon and launcher killed; the main process ends meanwhile and its leftovers go to init:
    the restarted daemon cannot know the step's exit status, and sweeps what it left."""
    data_dir = tmp_path / "data"
    daemon.start()
    # The main process ends only once both are gone (a fixed sleep had to outlast killing them).
    _submit(
        daemon, "orphaned", "sleep 3301 & setsid sleep 3302 & (sleep 3303 &); " + _wait_for("go") + "exit 0"
    )
    _wait(daemon, "orphaned", {"active"})
    step = _call(daemon, "GET", "/jobs/orphaned/steps/main")
    pid = int(step["status_details"]["pid"])
    until_blocking(lambda: len(_sleeps(data_dir, *THREE)) == 3, what="three running", timeout_s=20)
    (launcher,) = launchers_of(daemon.pid)
    daemon.stop(signal.SIGKILL)
    launcher.kill()
    launcher.wait(10)
    (_storage_of(step) / "go").touch()
    until_blocking(lambda: not pid_alive(pid), what="the main process ends", timeout_s=20)
    assert len(_sleeps(data_dir, *THREE)) == 3
    daemon.start()
    job = _wait(daemon, "orphaned", TERMINAL)
    assert job["status"] == "error", job
    until_blocking(lambda: not _sleeps(data_dir, *THREE), what="the sweep ends them", timeout_s=10)


def test_after_a_restart_leftovers_are_still_ended_and_their_output_stored(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    """The daemon is killed while the step runs; its launcher stays and ends the leftovers when
    the main process ends; the restarted daemon reads their output until they are gone."""
    data_dir = tmp_path / "data"
    script = "(trap '' TERM; sleep 3; echo late-after-restart; exec sleep 3401) & sleep 2; echo main-done"
    daemon.start()
    _submit(daemon, "adopted", script)
    _wait(daemon, "adopted", {"active"})
    daemon.stop(signal.SIGKILL)
    daemon.start()
    job = _wait(daemon, "adopted", TERMINAL, timeout_s=30)
    assert job["status"] == "completed", job
    assert _sleeps(data_dir, "3401") == []
    page = _call(daemon, "GET", "/jobs/adopted/logs")
    assert [line["message"] for line in page["data"]] == ["main-done", "late-after-restart"]
