"""A job's first step started by its submit's own transaction when a slot is free and nothing
waits (runner/scheduler.py, `claim_first_step`): what a client sees, and the queue's order."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import Api, api_for, running_server, shell, step
from tests.helpers import cpu_step


def _alive_with(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and marker in " ".join(proc.info["cmdline"] or []):
            found.append(proc)
    return found


async def _started_by_its_submit(api: Api, job: str, step_name: str) -> bool:
    """Whether the job's first step was recorded started in the submit's own transaction: its
    task then has the job's creation time to the microsecond (the loop records it later)."""
    created = (await api.job(job))["created_at"]
    _, tasks = await api.request("GET", f"/jobs/{job}/steps/{step_name}/tasks")
    _, step_record = await api.request("GET", f"/jobs/{job}/steps/{step_name}")
    assert len(tasks["data"]) == 1, tasks
    return bool(tasks["data"][0]["created_at"] == step_record["created_at"] == created)


def _shape(record: dict[str, Any]) -> tuple[str, list[str], Any]:
    return record["status"], sorted(record["status_details"]), record["error_details"]


async def _shapes(api: Api, job: str) -> list[Any]:
    _, tree = await api.request("GET", f"/jobs/{job}/status")
    record = await api.job(job)
    return [_shape(record), *[(_shape(s), [_shape(t) for t in s["tasks"]]) for s in tree["steps"]]]


async def test_an_idle_daemon_has_started_a_job_when_it_answers_the_submit(api: Api) -> None:
    await api.create_job([step("only", "true")], name="warm-up")  # may come before recovery's end
    await api.wait_job("warm-up")
    answered = await api.create_job([step("only", "true")], name="at-once")
    assert answered["status"] == "created"  # the answer is the job as submitted, as the reference's
    seen = await api.job("at-once")
    assert seen["status"] != "created", seen  # its start was committed with it
    assert (await api.wait_job("at-once"))["status"] == "completed"
    assert await _started_by_its_submit(api, "at-once", "only")


async def test_a_submit_behind_a_waiting_step_leaves_the_start_to_the_scheduler(tmp_path: Path) -> None:
    settings = {"cpus": 2.0, "memory": "1Gi", "cpu_containers_as_subprocess": True}
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        await api.create_job([cpu_step("work", "true")], name="warm-up")
        await api.wait_job("warm-up", timeout_s=60)
        await api.create_job([cpu_step("work", "echo one")], name="direct")
        assert (await api.wait_job("direct", timeout_s=60))["status"] == "completed"
        assert await _started_by_its_submit(api, "direct", "work")

        await api.create_job([cpu_step("work", "sleep 60", cpu="2")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([cpu_step("work", "echo waited", cpu="1")], name="waits")
        # A step waits (for CPUs): a new job goes the scheduler's way, which lets a step asking
        # for nothing pass one waiting for room, as before.
        await api.create_job([cpu_step("work", "echo one")], name="by-loop")
        assert (await api.wait_job("by-loop", timeout_s=60))["status"] == "completed"
        assert not await _started_by_its_submit(api, "by-loop", "work")
        assert (await api.job("waits"))["status"] == "created"
        # Both ways leave the same statuses and the same kinds of details, at every level.
        assert await _shapes(api, "direct") == await _shapes(api, "by-loop")

        await api.request("POST", "/jobs/holder/cancel")
        assert (await api.wait_job("waits", timeout_s=60))["status"] == "completed"
        await api.create_job([cpu_step("work", "true")], name="again")
        await api.wait_job("again", timeout_s=60)
        assert await _started_by_its_submit(api, "again", "work")  # nothing waits any more


async def test_jobs_waiting_for_a_slot_start_in_the_order_they_were_submitted(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_running_steps=1) as srv, api_for(srv) as api:
        await api.create_job([shell("hog", "sleep 60")], name="hog")
        await api.wait_job("hog", {"active"})
        for name in ("first", "second", "third"):
            answered = await api.create_job([shell("says", f"echo {name}")], name=name)
            assert answered["status"] == "created"
            assert (await api.job(name))["status"] == "created"  # no slot: it waits its turn
        await api.request("POST", "/jobs/hog/cancel")
        ended = [await api.wait_job(name) for name in ("first", "second", "third")]
        assert [job["status"] for job in ended] == ["completed"] * 3
        started = {}  # a task is inserted when its step's start is recorded
        for name in ("first", "second", "third"):
            _, tasks = await api.request("GET", f"/jobs/{name}/steps/says/tasks")
            started[name] = tasks["data"][0]["created_at"]
        assert started["first"] < started["second"] < started["third"], started
        # A new job behind nothing starts at once again.
        await api.create_job([step("only", "true")], name="after")
        assert (await api.job("after"))["status"] != "created"


async def test_a_refused_submit_gives_back_the_slot_it_held(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_running_steps=1) as srv, api_for(srv) as api:
        await api.create_job([step("only", "true")], name="same")
        await api.wait_job("same")
        body = {
            "name": "same",
            "source": "test",
            "spec": {},
            "platform_spec": {"steps": [step("only", "true")]},
        }
        for _ in range(3):
            status, error = await api.request("POST", "/jobs", json=body)
            assert status == 409, error
        # Had a refused submit kept its claim, the one slot would be gone and this would wait.
        await api.create_job([step("only", "true")], name="next")
        assert (await api.job("next"))["status"] != "created"
        assert (await api.wait_job("next"))["status"] == "completed"


async def test_a_cancel_sent_right_after_the_submit_stops_the_step(api: Api) -> None:
    """The cancel lands before the spawn (the claim is `is_running` from before the commit, so the
    stop waits for the spawn) or after it; either way nothing is left running."""
    for i in range(5):
        marker = f"sleep {4100 + i}"
        name = f"quick-cancel-{i}"
        submit = asyncio.ensure_future(api.create_job([shell("nap", marker)], name=name))
        status, job = None, None
        deadline = time.monotonic() + 10
        while status != 200:  # sent the moment the job can be found
            assert time.monotonic() < deadline, (status, job)
            status, job = await api.request("POST", f"/jobs/{name}/cancel")
        await submit
        assert (await api.wait_job(name))["status"] == "cancelled"
        deadline = time.monotonic() + 10
        while _alive_with(marker):
            assert time.monotonic() < deadline, f"{marker!r} still runs after its job was cancelled"
            await asyncio.sleep(0.05)
