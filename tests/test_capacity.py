"""CPU and memory requests admitted against the machine (declared here with `cpus`/`memory`, so the
figures do not depend on this machine): a step that does not fit waits in `created` with its
reason, starts when what it needs is given back, and one that can never fit is refused with 422."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from openapi_schema_validator import OAS31Validator

from tests.conftest import Api, api_for, running_server
from tests.helpers import cpu_step
from web.meta_routes import contract

_GI = 2**30


def _settings(**extra: Any) -> dict[str, Any]:
    return {"cpus": 2.0, "memory": "1Gi", "cpu_containers_as_subprocess": True, **extra}


async def _capacity(api: Api) -> dict[str, Any]:
    status, body = await api.request("GET", f"{api.base_url}/apis/localjobs/v1/capacity")
    assert status == 200, body
    schema = contract()["paths"]["/apis/localjobs/v1/capacity"]["get"]["responses"]["200"]
    OAS31Validator(schema["content"]["application/json"]["schema"]).validate(body)
    return body  # type: ignore[no-any-return]


async def _submit(api: Api, step: dict[str, Any]) -> tuple[int, Any]:
    body = {"source": "t", "spec": {}, "platform_spec": {"steps": [step]}}
    return await api.request("POST", "/jobs", json=body)


async def test_requests_wait_for_room_and_start_when_it_is_given_back(tmp_path: Path) -> None:
    async with running_server(tmp_path, **_settings()) as srv, api_for(srv) as api:
        await api.create_job([cpu_step("work", "sleep 60", cpu="1500m", memory="256Mi")], name="big")
        await api.wait_job("big", {"active"}, timeout_s=60)
        # 0.5 CPU is left: a step asking for 1 waits, one asking for nothing does not.
        await api.create_job([cpu_step("work", "echo ran", cpu="1")], name="waits")
        await api.create_job([cpu_step("work", "echo plain")], name="plain")
        assert (await api.wait_job("plain", timeout_s=60))["status"] == "completed"
        assert (await api.request("GET", "/jobs/waits"))[1]["status"] == "created"

        usage = await _capacity(api)
        assert usage["cpus"] == {"total": 2.0, "in_use": 1.5, "free": 0.5}
        assert usage["memory_bytes"] == {"total": _GI, "in_use": 256 * 2**20, "free": _GI - 256 * 2**20}
        assert usage["gpus"] == {"total": 0, "in_use": 0, "free": 0}
        assert usage["waiting"] == [
            {
                "workspace": "default",
                "job": "waits",
                "step": "work",
                "needs": {"gpus": 0, "cpus": 1.0, "memory_bytes": 0},
                "reason": "waiting for 1 CPU; 0.5 free",
            }
        ]
        # Every execution profile carries the machine's capacity (a localjobs extension).
        _, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
        assert {p["capacity"]["cpus"]["in_use"] for p in profiles} == {1.5}

        await api.request("POST", "/jobs/big/cancel")
        assert (await api.wait_job("waits", timeout_s=60))["status"] == "completed"
        assert await api.logs("waits") == ["ran"]
        assert (await _capacity(api))["cpus"]["in_use"] == 0.0


async def test_a_request_larger_than_the_machine_is_refused_at_submission(tmp_path: Path) -> None:
    async with running_server(tmp_path, **_settings()) as srv, api_for(srv) as api:
        status, body = await _submit(api, cpu_step("huge", "true", cpu="3"))
        assert status == 422, body
        assert "it requests 3 CPUs; this machine has 2 (see --cpus / LOCALJOBS_CPUS)" in body["detail"]
        status, body = await _submit(api, cpu_step("huge", "true", memory="2Gi"))
        assert status == 422, body
        assert "it requests 2 GiB of memory; this machine has 1 GiB" in body["detail"]
        _, jobs = await api.request("GET", "/jobs")
        assert jobs["data"] == []  # nothing stored for a refused job


async def test_a_restarted_daemon_counts_what_surviving_steps_requested(tmp_path: Path) -> None:
    settings = _settings(stop_steps_on_shutdown=False)
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        await api.create_job([cpu_step("work", "sleep 60", cpu="2")], name="survivor")
        await api.wait_job("survivor", {"active"}, timeout_s=60)
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        assert (await _capacity(api))["cpus"]["in_use"] == 2.0
        await api.create_job([cpu_step("work", "true", cpu="1")], name="newcomer")
        assert (await api.request("GET", "/jobs/newcomer"))[1]["status"] == "created"
        await api.request("POST", "/jobs/survivor/cancel")
        assert (await api.wait_job("newcomer", timeout_s=60))["status"] == "completed"


async def test_a_waiting_request_that_no_longer_fits_after_a_restart_ends_in_error(tmp_path: Path) -> None:
    async with (
        running_server(tmp_path, **_settings(stop_steps_on_shutdown=False)) as srv,
        api_for(srv) as api,
    ):
        await api.create_job([cpu_step("work", "sleep 60", cpu="2")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([cpu_step("work", "true", cpu="2")], name="waiter")
    async with running_server(tmp_path, **_settings(cpus=1.0)) as srv, api_for(srv) as api:
        job = await api.wait_job("waiter", timeout_s=30)
        assert job["status"] == "error"
        assert "it requests 2 CPUs; this machine now has 1" in job["error_details"]["message"]
        await api.request("POST", "/jobs/holder/cancel")
        await api.wait_job("holder", timeout_s=60)


async def test_a_job_is_active_while_its_next_step_waits_after_a_short_first_one(tmp_path: Path) -> None:
    """A first step that ends before its `active` is written goes `pending` -> `completed`; the job
    must not stay `pending` while its second step waits for room: it is under way."""
    async with running_server(tmp_path, **_settings()) as srv, api_for(srv) as api:
        await api.create_job([cpu_step("work", "sleep 60", cpu="2")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([cpu_step("first", "true"), cpu_step("second", "echo ran", cpu="1")], name="two")
        status, second = 0, {}
        for _ in range(600):
            status, second = await api.request("GET", "/jobs/two/steps/second")
            if status == 200:
                break
            await asyncio.sleep(0.05)
        assert status == 200 and second["status"] == "created", second
        job = await api.job("two")
        assert job["status"] == "active", job
        await api.request("POST", "/jobs/holder/cancel")
        assert (await api.wait_job("two", timeout_s=60))["status"] == "completed"
        assert await api.logs("two") == ["ran"]


async def test_a_resumed_job_whose_waiting_step_ends_at_once_completes(tmp_path: Path) -> None:
    """Pause and resume a job whose second step waits for room; once room is given back, that step
    runs `true`, which ends before its `active` is written: the job must reach `completed`, not
    stay `resuming` (which cannot go to `completed` directly)."""
    async with running_server(tmp_path, **_settings()) as srv, api_for(srv) as api:
        await api.create_job([cpu_step("work", "sleep 60", cpu="2")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([cpu_step("first", "true"), cpu_step("second", "true", cpu="1")], name="two")
        for _ in range(600):
            if (await api.request("GET", "/jobs/two/steps/second"))[0] == 200:
                break
            await asyncio.sleep(0.05)
        assert (await api.request("POST", "/jobs/two/pause"))[0] == 200
        await api.wait_job("two", {"paused"}, timeout_s=30)
        assert (await api.request("POST", "/jobs/two/resume"))[0] == 200
        assert (await api.job("two"))["status"] == "resuming"
        await api.request("POST", "/jobs/holder/cancel")
        job = await api.wait_job("two", timeout_s=60)
        assert job["status"] == "completed", job
        _, second = await api.request("GET", "/jobs/two/steps/second")
        assert second["status"] == "completed", second
