"""The launcher process that starts and reaps subprocess tasks (runner/executors/launcher.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from pathlib import Path

import psutil

from runner.executors.exits import ExitWatcher
from runner.executors.launch_client import LauncherClient
from tests.conftest import Api, shell, step


def _launchers() -> list[psutil.Process]:
    found = []
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):  # e.g. gone meanwhile
            if "runner.executors.launcher" in child.cmdline():
                found.append(child)
    return found


def _request(folder: Path, argv: list[str]) -> dict[str, object]:
    return {
        "argv": argv,
        "env": {"PATH": os.defpath},
        "work_dir": str(folder),
        "folders": [f"{folder}/scratch"],
        "config_file": f"{folder}/config.json",
        "config": "{}",
        "stdout": f"{folder}/stdout.log",
        "stderr": f"{folder}/stderr.log",
        "exit_file": f"{folder}/exit_code",
    }


def _alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_many_starts_at_once_all_get_their_answer(tmp_path: Path) -> None:
    """More requests than the launcher's socket queue holds (~10): they wait their turn."""
    exits = ExitWatcher()
    client = LauncherClient(exits)
    try:

        async def start(i: int) -> tuple[int, int | None]:
            started = await client.start(_request(tmp_path / f"task-{i}", ["/bin/sh", "-c", f"exit {i % 7}"]))
            os.close(started.pidfd)
            return i, await asyncio.wait_for(started.exited, 30)

        results = await asyncio.gather(*(start(i) for i in range(150)))
        assert all(code == i % 7 for i, code in results)
        assert all((tmp_path / f"task-{i}" / "exit_code").read_text() == f"{i % 7}\n" for i in range(150))
    finally:
        await client.close()
        exits.close()


async def test_an_idle_launcher_leaves_and_the_next_start_brings_a_new_one(tmp_path: Path) -> None:
    exits = ExitWatcher()
    client = LauncherClient(exits, idle_s=0.2)
    try:
        first = await client.start(_request(tmp_path / "first", ["/bin/true"]))
        os.close(first.pidfd)
        assert await asyncio.wait_for(first.exited, 10) == 0
        (launcher,) = _launchers()
        deadline = asyncio.get_running_loop().time() + 10
        while _alive(launcher):
            assert asyncio.get_running_loop().time() < deadline, "the idle launcher stayed"
            await asyncio.sleep(0.05)
        second = await client.start(_request(tmp_path / "second", ["/bin/sh", "-c", "exit 3"]))
        os.close(second.pidfd)
        assert await asyncio.wait_for(second.exited, 10) == 3
    finally:
        await client.close()
        exits.close()


async def test_a_failed_start_is_the_step_error(api: Api) -> None:
    await api.create_job([step("main", "/no/such")], name="bad")
    job = await api.wait_job("bad")
    assert job["status"] == "error"
    assert "/no/such" in job["error_details"]["message"]


async def test_steps_go_on_when_the_launcher_is_killed(api: Api) -> None:
    await api.create_job([shell("main", "sleep 1; exit 3")], name="running")
    await api.wait_job("running", {"active"})
    (launcher,) = _launchers()
    launcher.send_signal(signal.SIGKILL)
    launcher.wait(10)
    # The task it started ran on, but nobody was left to hear its exit status: said so.
    job = await api.wait_job("running")
    assert job["status"] == "error"
    assert "launcher" in job["error_details"]["message"]
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
