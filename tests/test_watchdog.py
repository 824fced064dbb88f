"""Staleness and time limits, on an injected clock (no long sleeps), plus one real-time check."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from runner.clock import ManualClock
from tests.conftest import Api, api_for, running_server, shell
from tests.helpers import wait_gone

PUT_HEARTBEAT = (
    'curl -s -X PUT -H "content-type: application/json" -H "Authorization: Bearer $(cat "$NMP_WORKLOAD_IDENTITY_TOKEN_FILE")" -d \'{"status":"active"}\' '
    '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/steps/$NEMO_JOB_STEP/tasks/$NEMO_JOB_TASK"'
    " >/dev/null"
)


async def _left_alone(api: Api, name: str, status: str) -> None:
    """The watchdog did not end the job: read now (not waited for), still `status`, no error
    written, and its step likewise."""
    job = await api.job(name)
    assert job["status"] == status and not job["error_details"], job
    _, steps = await api.request("GET", f"/jobs/{name}/steps")
    assert [(s["status"], bool(s["error_details"])) for s in steps["data"]] == [(status, False)], steps


async def _task_name(api: Api, job: str, step: str) -> str:
    _, tasks = await api.request("GET", f"/jobs/{job}/steps/{step}/tasks")
    return tasks["data"][0]["name"]  # type: ignore[no-any-return]


async def test_staleness_on_an_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    async with running_server(tmp_path, clock=clock) as srv, api_for(srv) as api:
        lifecycle = {"staleness_timeout_seconds": 5}
        await api.create_job([shell("quiet", "sleep 60", lifecycle=lifecycle)], name="stale")
        await api.wait_job("stale", {"active"})
        _, step = await api.request("GET", "/jobs/stale/steps/quiet")
        pid = step["status_details"]["pid"]
        watchdog = srv.daemon.watchdog

        clock.advance(4)
        await watchdog.check()
        await _left_alone(api, "stale", "active")

        # A PUT from the workload is a heartbeat even when nothing else changes.
        task = await _task_name(api, "stale", "quiet")
        status, _ = await api.request(
            "PUT", f"/jobs/stale/steps/quiet/tasks/{task}", json={"status": "active"}
        )
        assert status == 200
        clock.advance(4)  # 8 s after start, 4 s after the heartbeat
        await watchdog.check()
        await _left_alone(api, "stale", "active")

        clock.advance(1.5)  # 5.5 s after the heartbeat
        await watchdog.check()
        job = await api.wait_job("stale")
        assert job["status"] == "error"
        assert job["error_details"]["message"] == "Job terminated: no task updates received within 5 s"
        await wait_gone(pid, timeout_s=5)
        _, tasks = await api.request("GET", "/jobs/stale/steps/quiet/tasks")
        assert tasks["data"][0]["status"] == "error"


async def test_daemon_bookkeeping_is_not_a_heartbeat(tmp_path: Path) -> None:
    clock = ManualClock()
    async with running_server(tmp_path, clock=clock) as srv, api_for(srv) as api:
        lifecycle = {"staleness_timeout_seconds": 3}
        await api.create_job(
            [shell("chatty", "while true; do echo tick; sleep 0.05; done", lifecycle=lifecycle)],
            name="chatty",
        )
        await api.wait_job("chatty", {"active"})
        clock.advance(3.1)  # output and log bookkeeping keep flowing, but no PUT arrived
        await srv.daemon.watchdog.check()
        job = await api.wait_job("chatty")
        assert job["status"] == "error"


async def test_active_time_limit_ignores_paused_time(tmp_path: Path) -> None:
    clock = ManualClock()
    async with running_server(tmp_path, clock=clock, ttl_seconds_active=10) as srv, api_for(srv) as api:
        watchdog = srv.daemon.watchdog
        await api.create_job([shell("long", "sleep 60")], name="limited")
        await api.wait_job("limited", {"active"})
        clock.advance(6)
        status, job = await api.request("POST", "/jobs/limited/pause")
        assert status == 200
        await api.wait_job("limited", {"paused"})
        clock.advance(100)  # paused: neither the limit nor staleness runs
        await watchdog.check()
        await _left_alone(api, "limited", "paused")
        await api.request("POST", "/jobs/limited/resume")
        await api.wait_job("limited", {"active"})
        clock.advance(3)  # 9 s active in all
        await watchdog.check()
        await _left_alone(api, "limited", "active")
        clock.advance(2)  # 11 s active
        await watchdog.check()
        job = await api.wait_job("limited")
        assert job["status"] == "error"
        assert "ttl_seconds_active=10" in job["error_details"]["message"]


async def test_before_active_time_limit(tmp_path: Path) -> None:
    clock = ManualClock()
    # No slot to run in: the step waits in `created` until its before-active limit ends it.
    async with (
        running_server(tmp_path, clock=clock, max_running_steps=1, ttl_seconds_before_active=30) as srv,
        api_for(srv) as api,
    ):
        await api.create_job([shell("hog", "sleep 60")], name="hog")
        await api.wait_job("hog", {"active"})
        await api.create_job([shell("queued", "true")], name="queued")
        clock.advance(31)
        await srv.daemon.watchdog.check()
        job = await api.wait_job("queued")
        assert job["status"] == "error"
        assert "ttl_seconds_before_active=30" in job["error_details"]["message"]
        await api.request("POST", "/jobs/hog/cancel")


@pytest.mark.timeout(120)
async def test_staleness_in_real_time(tmp_path: Path) -> None:
    """Real clock: a heartbeating workload outlives the timeout; a silent one is ended promptly."""
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        # The beating one beats every ~0.2 s for 8 s and more (its sleeps alone), well past its
        # 4 s timeout; 4 s, not 1 s, since a loaded machine can hold a beat up for over a second.
        beating = f"for i in $(seq 40); do {PUT_HEARTBEAT}; sleep 0.2; done"
        lifecycle = {"staleness_timeout_seconds": 4}
        await api.create_job([shell("beats", beating, lifecycle=lifecycle)], name="beating")
        silent = shell("silent", "sleep 60", lifecycle={"staleness_timeout_seconds": 1})
        await api.create_job([silent], name="silent")
        started = time.monotonic()
        job = await api.wait_job("silent", timeout_s=40)
        assert job["status"] == "error"
        # Ended by the watchdog (deadline 1 s after it became active), not by its own exit.
        assert time.monotonic() - started < 30  # far before the 60 s sleep would end
        assert job["error_details"]["message"] == "Job terminated: no task updates received within 1 s"
        job = await api.wait_job("beating", timeout_s=90)
        assert job["status"] == "completed", job


async def test_task_folders_removed_after_ttl_seconds_after_finished(tmp_path: Path) -> None:
    clock = ManualClock()
    async with (
        running_server(tmp_path, clock=clock, ttl_seconds_after_finished=10) as srv,
        api_for(srv) as api,
    ):
        script = 'echo kept; echo result > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out.txt"'
        await api.create_job([shell("work", script)], name="tidy")
        assert (await api.wait_job("tidy"))["status"] == "completed"
        _, step = await api.request("GET", "/jobs/tidy/steps/work")
        folder = Path(step["status_details"]["subprocess_work_dir"])
        storage = folder.parent.parent / "job-storage"
        assert folder.is_dir()
        clock.advance(5)
        await srv.daemon.watchdog.check()
        assert folder.is_dir()
        clock.advance(6)
        await srv.daemon.watchdog.check()
        assert not folder.exists()
        assert (storage / "out.txt").read_text() == "result\n"  # the job's fileset stays
        assert await api.logs("tidy") == ["kept"]  # so do its logs


@pytest.mark.timeout(30)
async def test_paused_step_does_not_go_stale_and_is_watched_again_after_resume(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        lifecycle = {"staleness_timeout_seconds": 2}
        await api.create_job([shell("nap", "sleep 60", lifecycle=lifecycle)], name="paused-stale")
        await api.wait_job("paused-stale", {"active"})
        await api.request("POST", "/jobs/paused-stale/pause")
        await api.wait_job("paused-stale", {"paused"})
        await asyncio.sleep(3)  # longer than the timeout, but paused
        await _left_alone(api, "paused-stale", "paused")
        await api.request("POST", "/jobs/paused-stale/resume")
        await api.wait_job("paused-stale", {"active"})
        job = await api.wait_job("paused-stale", timeout_s=15)  # silent again: ended ~2 s later
        assert job["status"] == "error"
        assert "no task updates received within 2 s" in job["error_details"]["message"]
