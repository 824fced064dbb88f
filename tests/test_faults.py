"""The truth under faults: a store that cannot write while steps run (a lock held by another
program; a disk that fills up).

For the full disk, a real file system that fills up: a 16 MiB tmpfs mounted over the daemon's data folder (so the
database and the tasks' output files are on it), filled with one big file and freed again by
deleting it. Mounting needs root (CI runs as root); elsewhere these tests are skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage.health import WriteHealth
from tests.conftest import Api, api_for, running_server, shell, step
from tests.helpers import pid_alive, wait_gone
from web.app import Server

FULL = "no space left on device"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system for the data folder needs root")
    mount = ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(folder)]
    done = subprocess.run(mount, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "--lazy", str(folder)], check=False)


def _fill(disk: Path) -> Path:
    """Write one file until the file system has not a byte left; return it (deleting it frees all)."""
    big = disk / "filler"
    fd = os.open(big, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return big


async def _health(srv: Server, api: Api) -> tuple[int, Any]:
    # Deliberately without the token: /health is open, and must tell nothing beyond readiness.
    async with api.session.get(f"{srv.base_url}/health") as resp:
        return resp.status, await resp.json()


async def _wait_health(srv: Server, api: Api, code: int, timeout_s: float = 20) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        status, body = await _health(srv, api)
        if status == code:
            return body
        assert time.monotonic() < deadline, f"/health still answers {status} {body}"
        await asyncio.sleep(0.05)


async def _wait_logs(api: Api, job: str, count: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await api.logs(job)) < count:
        assert time.monotonic() < deadline, f"fewer than {count} lines of {job} stored"
        await asyncio.sleep(0.02)


async def _pid(api: Api, job: str, step_name: str) -> int:
    await api.wait_job(job, {"active"})
    _, s = await api.request("GET", f"/jobs/{job}/steps/{step_name}")
    return int(s["status_details"]["pid"])


async def _stdout(api: Api, job: str) -> list[str]:
    status, page = await api.request("GET", f"/jobs/{job}/logs", params={"limit": 10000})
    assert status == 200, page
    return [line["message"] for line in page["data"] if line["stream"] == "stdout"]


async def test_health_tells_a_full_disk_while_idle_and_recovers(small_disk: Path, tmp_path: Path) -> None:
    async with running_server(tmp_path, data_dir=small_disk / "data") as srv, api_for(srv) as api:
        assert await _health(srv, api) == (200, {"status": "ok"})
        filler = await asyncio.to_thread(_fill, small_disk)
        body = await _wait_health(srv, api, 503)
        assert body == {"status": "degraded", "reason": f"the store cannot write: {FULL}"}
        filler.unlink()
        assert await _wait_health(srv, api, 200) == {"status": "ok"}


async def test_a_disk_full_while_a_step_prints_is_told_and_its_output_stored_once_space_returns(
    small_disk: Path, tmp_path: Path
) -> None:
    stop = tmp_path / "stop"  # beside the small disk: the test ends the step when it is done
    script = 'i=0; while [ ! -e "$STOP" ]; do i=$((i+1)); echo "line $i"; sleep 0.01; done; echo done'
    printer = shell("printer", script, environment=[{"name": "STOP", "value": str(stop)}])
    async with running_server(tmp_path, data_dir=small_disk / "data") as srv, api_for(srv) as api:
        await api.create_job([printer], name="printer")
        await _wait_logs(api, "printer", 20)
        filler = await asyncio.to_thread(_fill, small_disk)
        body = await _wait_health(srv, api, 503)
        assert body == {"status": "degraded", "reason": f"the store cannot write: {FULL}"}
        status, job = await api.request("GET", "/jobs/printer")
        assert (status, job["status"]) == (200, "active")
        await asyncio.sleep(1)  # a while of a full disk
        filler.unlink()
        assert await _wait_health(srv, api, 200) == {"status": "ok"}
        stored = len(await api.logs("printer"))
        await _wait_logs(api, "printer", stored + 20)  # it goes on being stored
        stop.touch()
        job = await api.wait_job("printer")
        assert job["status"] == "completed", job
        _, s = await api.request("GET", "/jobs/printer/steps/printer")
        _, tasks = await api.request("GET", "/jobs/printer/steps/printer/tasks")
        (task,) = tasks["data"]
        for details in (s["status_details"], task["status_details"]):
            note = details["output_error"]
            assert re.fullmatch(rf"output could not be stored for \d+\.\d s while it ran: {FULL}", note), note
        # What the step managed to write is stored, once each and in order, the end included.
        lines = await _stdout(api, "printer")
        assert lines[-1] == "done"
        numbers = [int(line.split()[1]) for line in lines[:-1]]
        assert numbers == sorted(set(numbers)), "a line stored twice or out of order"


async def test_a_step_printing_while_the_disk_is_full_waits_and_loses_nothing(
    small_disk: Path, tmp_path: Path
) -> None:
    """Its output goes through the launcher's pipes: what a full disk does not take is held, and
    the pipe left unread, so the task waits on its writes instead of failing them; once there
    is space it goes on, and every line is stored once, in order."""
    script = "import time\nfor i in range(400):\n    print(str(i) * 200, flush=True)\n    time.sleep(0.01)"
    async with running_server(tmp_path, data_dir=small_disk / "data") as srv, api_for(srv) as api:
        await api.create_job([step("writer", "python", "-c", script)], name="writer")
        await _wait_logs(api, "writer", 5)
        pid = await _pid(api, "writer", "writer")
        filler = await asyncio.to_thread(_fill, small_disk)
        await _wait_health(srv, api, 503)
        await asyncio.sleep(1.5)  # a while of a full disk: the task fills its pipe and waits
        assert pid_alive(pid)
        filler.unlink()
        job = await api.wait_job("writer", timeout_s=60)
        assert job["status"] == "completed", job
        assert await _stdout(api, "writer") == [str(i) * 200 for i in range(400)]
        assert await _wait_health(srv, api, 200) == {"status": "ok"}


async def test_the_last_line_of_a_step_that_ends_while_the_disk_is_full_is_kept(
    small_disk: Path, tmp_path: Path
) -> None:
    """The step prints once and ends while the disk is full: its end is told once its output is
    written (bounded), so the line is stored when space returns."""
    go = tmp_path / "go"
    script = 'while [ ! -e "$GO" ]; do sleep 0.01; done; echo too-late || exit 3'
    quiet = shell("quiet", script, environment=[{"name": "GO", "value": str(go)}])
    async with running_server(tmp_path, data_dir=small_disk / "data") as srv, api_for(srv) as api:
        await api.create_job([quiet], name="quiet")
        await api.wait_job("quiet", {"active"})
        pid = await _pid(api, "quiet", "quiet")
        filler = await asyncio.to_thread(_fill, small_disk)
        go.touch()
        await wait_gone(pid)  # it wrote into its pipe and ended (not a fixed sleep hoping it had)
        await _wait_health(srv, api, 503)
        status, job = await api.request("GET", "/jobs/quiet")
        assert job["status"] == "active", job  # its end waits for its output
        filler.unlink()
        job = await api.wait_job("quiet", timeout_s=30)
        assert job["status"] == "completed", job
        assert await api.logs("quiet") == ["too-late"]


def test_an_outage_lasts_until_no_write_is_left_failing() -> None:
    """Small writes that fit do not end an outage while a larger one keeps failing and retrying."""
    health = WriteHealth()
    before = time.monotonic()
    assert health.cause is None and health.outages_since(before) is None
    health.failed("no space left on device")  # a large write
    health.retry_began()
    health.succeeded()  # a small one fits
    assert health.cause == "no space left on device"
    health.failed("no space left on device")  # the large one, again
    health.succeeded()  # ... and at last
    health.retry_ended()
    assert health.cause is None
    outage = health.outages_since(before)
    assert outage is not None and outage.cause == "no space left on device"
    assert health.outages_since(time.monotonic()) is None  # a later task ran through none
    health.failed("the database is locked by another program")  # an API write, not retried
    assert health.cause == "the database is locked by another program"
    health.succeeded()
    assert health.cause is None


@contextlib.asynccontextmanager
async def _write_lock_held(db_path: Path, timeout_s: float) -> AsyncIterator[None]:
    """Another program holds the database's write lock (BEGIN IMMEDIATE) for the block."""
    holding, release = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def hold_the_lock() -> None:
        conn = sqlite3.connect(db_path, isolation_level=None)
        try:
            conn.execute("BEGIN IMMEDIATE")
            loop.call_soon_threadsafe(holding.set)
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(timeout=timeout_s)
            conn.execute("ROLLBACK")
        finally:
            conn.close()

    holder = asyncio.create_task(asyncio.to_thread(hold_the_lock))
    await holding.wait()
    try:
        yield
    finally:
        release.set()
        await holder


async def test_a_lock_held_by_another_program_is_told_while_it_lasts(tmp_path: Path) -> None:
    """Any store failure, not only a full disk (this one needs no root): another program holds the
    write lock beyond busy_timeout (5 s) while a step prints."""
    script = "for i in $(seq 1 40); do echo line-$i; sleep 0.2; done"
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([shell("printer", script)], name="locked")
        await _wait_logs(api, "locked", 2)
        async with _write_lock_held(srv.daemon.settings.db_path, timeout_s=30):
            body = await _wait_health(srv, api, 503, timeout_s=15)
            assert body == {
                "status": "degraded",
                "reason": "the store cannot write: the database is locked by another program",
            }
        assert await _wait_health(srv, api, 200) == {"status": "ok"}
        job = await api.wait_job("locked", timeout_s=30)
        assert job["status"] == "completed", job
        assert await api.logs("locked") == [f"line-{i}" for i in range(1, 41)]  # late, not lost
        _, s = await api.request("GET", "/jobs/locked/steps/printer")
        assert s["status_details"]["output_error"].endswith(": the database is locked by another program")


async def test_a_final_status_waits_out_an_outage_longer_than_patient_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The step ends while the store cannot write for longer than a patient write is retried:
    its final status is still recorded once the store can write (not left `active`)."""
    import storage.repository

    monkeypatch.setattr(storage.repository, "PATIENT_WRITE_S", 0.5)
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([shell("quick", "echo start; sleep 1; echo end")], name="outlived")
        await _wait_logs(api, "outlived", 1)
        async with _write_lock_held(srv.daemon.settings.db_path, timeout_s=60):
            await asyncio.sleep(12)  # the step ends ~1 s in; busy_timeout 5 s + patience 0.5 s pass
        job = await api.wait_job("outlived", timeout_s=30)
        assert job["status"] == "completed", job
        # Only the status is written until stored: output drained during the outage is patient
        # for PATIENT_WRITE_S only (a known limit: see docs/design.md).
        assert (await api.logs("outlived"))[0] == "start"
