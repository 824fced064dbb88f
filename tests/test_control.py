"""Cancel, pause and resume on real process trees."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import psutil

from tests.conftest import Api, api_for, running_server, shell, step


def _processes_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in proc.info.get("cmdline") or []):
            found.append(proc)
    return found


async def _queue_behind_a_hog(api: Api, job: str, step_name: str) -> None:
    """With one slot, a running `hog` job keeps the one-step job `job` waiting (`created`)."""
    await api.create_job([shell("hog", "sleep 60")], name="hog")
    await api.wait_job("hog", {"active"})
    await api.create_job([step(step_name, "true")], name=job)


async def _eventually(predicate: object, timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_cancel_ends_the_whole_tree_including_escaped_grandchildren(api: Api) -> None:
    script = (
        "sleep 3001 & "  # a grandchild in the step's process group
        "setsid sleep 3002 & "  # one that left the group
        "sh -c 'trap \"\" TERM; sleep 3003' & "  # one that ignores SIGTERM
        "echo started; wait"
    )
    await api.create_job([shell("tree", script), step("after", "true")], name="tree")
    await api.wait_job("tree", {"active"})
    await _eventually(lambda: len(_processes_with("300")) >= 3)
    status, job = await api.request("POST", "/jobs/tree/cancel")
    assert status == 200 and job["status"] in ("cancelling", "cancelled")
    job = await api.wait_job("tree")
    assert job["status"] == "cancelled"
    for marker in ("sleep 3001", "3002", "3003"):
        await _eventually(
            lambda m=marker: not [p for p in _processes_with(m.split()[-1]) if p.status() != "zombie"]
        )
    status, _ = await api.request("GET", "/jobs/tree/steps/after")
    assert status == 404  # later steps never start
    status, tree = await api.request("GET", "/jobs/tree/status")
    assert tree["steps"][0]["status"] == "cancelled"
    assert tree["steps"][0]["tasks"][0]["status"] == "cancelled"


async def test_cancel_before_start_and_on_terminal_job(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_running_steps=1) as srv, api_for(srv) as api:
        await _queue_behind_a_hog(api, "waiting", "waits")
        status, job = await api.request("POST", "/jobs/waiting/cancel")
        assert (status, job["status"]) == (200, "cancelled")  # never started: cancelled at once
        await api.request("POST", "/jobs/hog/cancel")
        assert (await api.wait_job("hog"))["status"] == "cancelled"
        _, again = await api.request("POST", "/jobs/hog/cancel")
        assert again["status"] == "cancelled"  # a terminal job is returned unchanged
        await asyncio.sleep(0.2)
        _, job = await api.request("GET", "/jobs/waiting")
        assert job["status"] == "cancelled"
        _, tasks = await api.request("GET", "/jobs/waiting/steps/waits/tasks")
        assert tasks["data"] == []  # it never ran


async def test_pause_freezes_and_resume_continues_progress(api: Api) -> None:
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done"
    await api.create_job([shell("count", counter)], name="counter")
    await api.wait_job("counter", {"active"})
    await asyncio.sleep(0.3)
    status, job = await api.request("POST", "/jobs/counter/pause")
    assert status == 200
    job = await api.wait_job("counter", {"paused"})
    # The job and its task say it is paused, not what they said while it ran.
    assert job["status_details"]["message"] == "Job is paused", job
    _, tasks = await api.request("GET", "/jobs/counter/steps/count/tasks")
    assert [t["status_details"]["message"] for t in tasks["data"]] == ["Job is paused"], tasks
    _, step_before = await api.request("GET", "/jobs/counter/steps/count")
    pid = step_before["status_details"]["pid"]
    # Stopped, or (dash vforks) waiting in the kernel for a stopped child to exec.
    assert psutil.Process(pid).status() in {psutil.STATUS_STOPPED, psutil.STATUS_DISK_SLEEP}
    raw = Path(step_before["status_details"]["subprocess_work_dir"]) / "stdout.log"
    printed = raw.read_bytes().count(b"\n")
    # The collector reads on after the freeze until it has stored all that was printed before it
    # (a fixed sleep was not always enough on a loaded machine).
    deadline = time.monotonic() + 20
    while len(frozen := await api.logs("counter")) < printed:
        assert time.monotonic() < deadline, f"{len(frozen)} of {printed} lines stored"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert raw.read_bytes().count(b"\n") == printed  # nothing printed while paused
    assert await api.logs("counter") == frozen
    status, job = await api.request("POST", "/jobs/counter/resume")
    assert status == 200
    assert job["status_details"]["message"] == "Job is resuming", job
    job = await api.wait_job("counter", {"active"})
    assert job["status_details"]["message"] == "Job is running", job
    # It prints again: more lines get stored (polled, not a fixed sleep hoping one was printed).
    deadline = time.monotonic() + 20
    while len(resumed := await api.logs("counter")) <= len(frozen):
        assert time.monotonic() < deadline, f"no line stored within 20 s of the resume: {len(resumed)}"
        await asyncio.sleep(0.05)
    later = [int(x) for x in resumed]
    assert later[: len(frozen)] == [int(x) for x in frozen]
    assert len(later) > len(frozen)
    assert later == list(range(1, len(later) + 1))  # continued where it stopped, never restarted
    _, step_after = await api.request("GET", "/jobs/counter/steps/count")
    assert step_after["status_details"]["pid"] == pid
    await api.request("POST", "/jobs/counter/cancel")
    assert (await api.wait_job("counter"))["status"] == "cancelled"


async def test_cancel_a_paused_step(api: Api) -> None:
    await api.create_job([shell("nap", "sleep 60")], name="paused-cancel")
    await api.wait_job("paused-cancel", {"active"})
    await api.request("POST", "/jobs/paused-cancel/pause")
    await api.wait_job("paused-cancel", {"paused"})
    status, job = await api.request("POST", "/jobs/paused-cancel/cancel")
    assert status == 200
    assert job["status_details"]["message"] == "Job is cancelling", job  # no longer "paused"
    assert (await api.wait_job("paused-cancel"))["status"] == "cancelled"


async def test_workload_that_handles_sigterm_is_still_cancelled(api: Api) -> None:
    script = "trap 'echo got-term; exit 0' TERM; echo ready; while true; do sleep 0.05; done"
    await api.create_job([shell("graceful", script)], name="graceful")
    await api.wait_job("graceful", {"active"})
    # Cancelled only once its trap is set (it says so): else SIGTERM could beat the trap.
    deadline = time.monotonic() + 20
    while "ready" not in await api.logs("graceful"):
        assert time.monotonic() < deadline, "the trap was not set within 20 s"
        await asyncio.sleep(0.05)
    await api.request("POST", "/jobs/graceful/cancel")
    job = await api.wait_job("graceful")
    assert job["status"] == "cancelled"
    assert "got-term" in await api.logs("graceful")


async def test_client_patch_to_terminal_status_ends_the_workload(api: Api) -> None:
    await api.create_job([shell("victim", "sleep 60")], name="patched")
    await api.wait_job("patched", {"active"})
    _, s = await api.request("GET", "/jobs/patched/steps/victim")
    pid = s["status_details"]["pid"]
    status, body = await api.request(
        "PATCH",
        "/jobs/patched/steps/victim/status",
        json={"status": "error", "error_details": {"message": "by hand"}},
    )
    assert status == 200 and body["status"] == "error"
    job = await api.wait_job("patched")
    assert job["error_details"]["message"] == "by hand"
    await _eventually(lambda: _gone(pid))


def _stopped(pid: int) -> bool:
    """Frozen by the pause: stopped, or (dash vforks) waiting in the kernel, in `D`, for a
    stopped child to exec."""
    proc = psutil.Process(pid)
    status = proc.status()
    if status == psutil.STATUS_STOPPED:
        return True
    if status != psutil.STATUS_DISK_SLEEP:
        return False
    try:
        return any(child.status() == psutil.STATUS_STOPPED for child in proc.children())
    except psutil.NoSuchProcess:  # the child exec'd and ended meanwhile: not frozen
        return False


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == "zombie"
    except psutil.NoSuchProcess:  # reaped (possibly between two looks)
        return True


async def test_cancel_right_after_submit_never_leaves_a_step_stuck(api: Api) -> None:
    names = [f"race-{i}" for i in range(30)]
    for name in names:
        await api.create_job([shell("nap", "sleep 30")], name=name)
        status, _ = await api.request("POST", f"/jobs/{name}/cancel")
        assert status == 200
    for name in names:
        job = await api.wait_job(name, timeout_s=30)
        assert job["status"] == "cancelled", job
        _, s = await api.request("GET", f"/jobs/{name}/steps/nap")
        assert s["status"] == "cancelled"


async def test_cancel_a_queued_step_that_was_paused(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_running_steps=1) as srv, api_for(srv) as api:
        await _queue_behind_a_hog(api, "queued", "queued")
        status, job = await api.request("POST", "/jobs/queued/pause")
        assert (status, job["status"]) == (200, "paused")
        assert job["status_details"]["message"] == "Job is paused", job  # it has no task to say it
        status, job = await api.request("POST", "/jobs/queued/cancel")
        assert (status, job["status"]) == (200, "cancelled")
        await api.request("POST", "/jobs/hog/cancel")


async def test_a_workload_that_dies_while_paused_is_recorded(api: Api) -> None:
    import os
    import signal

    await api.create_job([shell("frozen", "sleep 60"), step("after", "true")], name="dies-paused")
    await api.wait_job("dies-paused", {"active"})
    await api.request("POST", "/jobs/dies-paused/pause")
    await api.wait_job("dies-paused", {"paused"})
    _, s = await api.request("GET", "/jobs/dies-paused/steps/frozen")
    os.killpg(s["status_details"]["pid"], signal.SIGKILL)
    job = await api.wait_job("dies-paused")
    assert job["status"] == "error"
    assert job["error_details"]["signal"] == "SIGKILL"
    status, _ = await api.request("POST", "/jobs/dies-paused/resume")
    assert status == 200
    _, tasks = await api.request("GET", "/jobs/dies-paused/steps/frozen/tasks")
    assert len(tasks["data"]) == 1  # resuming a finished job runs nothing again


async def test_client_patch_to_paused_and_back_freezes_and_thaws(api: Api) -> None:
    await api.create_job([shell("ticker", "while true; do echo t; sleep 0.05; done")], name="patch-pause")
    await api.wait_job("patch-pause", {"active"})
    _, s = await api.request("GET", "/jobs/patch-pause/steps/ticker")
    pid = s["status_details"]["pid"]
    status, _ = await api.request("PATCH", "/jobs/patch-pause/steps/ticker/status", json={"status": "paused"})
    assert status == 200
    await _eventually(lambda: _stopped(pid))
    status, _ = await api.request("PATCH", "/jobs/patch-pause/steps/ticker/status", json={"status": "active"})
    assert status == 200
    await _eventually(lambda: not _stopped(pid))
    await api.request("POST", "/jobs/patch-pause/cancel")
    assert (await api.wait_job("patch-pause"))["status"] == "cancelled"


async def test_a_step_paused_across_a_restart_resumes(tmp_path: Path) -> None:
    """Left frozen while no daemon ran, the step is taken over as frozen: resume thaws it."""
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.02; done"
    async with running_server(tmp_path, stop_steps_on_shutdown=False) as srv, api_for(srv) as api:
        await api.create_job([shell("count", counter)], name="frozen")
        await api.wait_job("frozen", {"active"})
        await api.request("POST", "/jobs/frozen/pause")
        await api.wait_job("frozen", {"paused"})
        _, step_record = await api.request("GET", "/jobs/frozen/steps/count")
        pid = step_record["status_details"]["pid"]
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        stored = len(await api.logs("frozen"))
        status, _ = await api.request("POST", "/jobs/frozen/resume")
        assert status == 200
        await api.wait_job("frozen", {"active"}, timeout_s=30)
        # It prints again: the same process, thawed (not left stopped in `resuming`).
        deadline = time.monotonic() + 30
        while len(await api.logs("frozen")) <= stored:
            assert time.monotonic() < deadline, "no line after the resume: still frozen"
            await asyncio.sleep(0.05)
        assert psutil.Process(pid).status() not in {psutil.STATUS_STOPPED}
        await api.request("POST", "/jobs/frozen/cancel")
        assert (await api.wait_job("frozen", timeout_s=60))["status"] == "cancelled"
