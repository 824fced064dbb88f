"""GPU-aware scheduling with declared GPUs (this machine has none): a step gets exactly the GPUs
it asked for, waits in `created` until they are free, gives them back however it ends, and a
restarted daemon knows who holds which before it starts anything new."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from runner.gpus import Gpu, discover
from tests.conftest import Api, api_for, running_server

_S = 1_000_000


def _gpu_step(
    name: str, script: str, gpus: int = 1, provider: str = "gpu", **resources: Any
) -> dict[str, Any]:
    return {
        "name": name,
        "executor": {
            "provider": provider,
            "container": {"image": "unused-as-host-process", "entrypoint": ["sh", "-c"], "command": [script]},
            "resources": {"num_gpus": gpus, **resources},
        },
    }


def test_declared_gpus_stand_for_the_machines_when_nvml_has_none() -> None:
    gpus = discover(["0", "1", "GPU-abc"])
    assert [g.index for g in gpus] == [0, 1, 2]
    assert [g.uuid for g in gpus] == ["GPU-declared-0", "GPU-declared-1", "GPU-abc"]
    # What the driver understands: the declared index, or the UUID.
    assert [g.device_id for g in gpus] == ["0", "1", "GPU-abc"]
    assert [g.device_id for g in discover(["0", " 1", "0", ""])] == ["0", "1"]
    assert discover([]) == []  # no NVML and nothing declared: no GPUs, not an error


def _settings(**extra: Any) -> dict[str, Any]:
    return {"gpus": ("0", "1"), "gpu_containers_as_subprocess": True, **extra}


async def _task_details(api: Api, job: str, step: str) -> dict[str, Any]:
    _, tasks = await api.request("GET", f"/jobs/{job}/steps/{step}/tasks")
    return tasks["data"][0]["status_details"]  # type: ignore[no-any-return]


async def test_steps_get_exactly_their_gpus_and_wait_for_free_ones(tmp_path: Path) -> None:
    async with running_server(tmp_path, **_settings()) as srv, api_for(srv) as api:
        hold = 'echo "cuda=$CUDA_VISIBLE_DEVICES nvidia=$NVIDIA_VISIBLE_DEVICES"; sleep 60'
        await api.create_job([_gpu_step("train", hold)], name="first")
        await api.create_job([_gpu_step("train", hold)], name="second")
        for name in ("first", "second"):
            await api.wait_job(name, {"active"}, timeout_s=60)
        held = {name: (await _task_details(api, name, "train"))["gpus"] for name in ("first", "second")}
        assert sorted(g for ids in held.values() for g in ids) == ["0", "1"]
        for name in ("first", "second"):
            (gpu,) = held[name]
            assert await _eventually_logs(api, name) == [f"cuda={gpu} nvidia={gpu}"]

        # A third waits in `created` while both are held...
        await api.create_job([_gpu_step("train", 'echo "cuda=$CUDA_VISIBLE_DEVICES"')], name="third")
        _, waiting = await api.request("GET", "/jobs/third")
        assert waiting["status"] == "created"
        # ...and the extension route says who holds which, and why the third waits.
        usage = await _usage(api)
        assert (usage["total"], usage["free"]) == (2, 0)
        holders = {g["device_id"]: g["held_by"]["job"] for g in usage["gpus"]}
        assert holders == {held["first"][0]: "first", held["second"][0]: "second"}
        assert usage["waiting"] == [
            {
                "workspace": "default",
                "job": "third",
                "step": "train",
                "gpus_needed": 1,
                "reason": "waiting for 1 GPU; 0 free",
            }
        ]
        # ...and gets the one a cancelled step gives back.
        await api.request("POST", "/jobs/first/cancel")
        assert (await api.wait_job("third", timeout_s=60))["status"] == "completed"
        assert await api.logs("third") == [f"cuda={held['first'][0]}"]

        # A step that could never fit is refused at submission.
        status, body = await api.request(
            "POST",
            "/jobs",
            json={"source": "t", "spec": {}, "platform_spec": {"steps": [_gpu_step("big", "true", gpus=3)]}},
        )
        assert status == 422 and "needs 3 GPUs; this machine has 2" in body["detail"], body
        await api.request("POST", "/jobs/second/cancel")
        await api.wait_job("second", timeout_s=60)


async def _usage(api: Api) -> dict[str, Any]:
    from openapi_schema_validator import OAS31Validator

    from web.meta_routes import contract

    status, usage = await api.request("GET", f"{api.base_url}/apis/localjobs/v1/gpus")
    assert status == 200, usage
    schema = contract()["paths"]["/apis/localjobs/v1/gpus"]["get"]["responses"]["200"]
    OAS31Validator(schema["content"]["application/json"]["schema"]).validate(usage)
    return usage  # type: ignore[no-any-return]


async def _eventually_logs(api: Api, name: str) -> list[str]:
    for _ in range(600):  # 30 s at most
        if lines := await api.logs(name):
            return lines
        await asyncio.sleep(0.05)
    return []


async def test_a_restarted_daemon_rebuilds_who_holds_which_gpu(tmp_path: Path) -> None:
    hold = "sleep 60"
    settings = _settings(stop_steps_on_shutdown=False)
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        await api.create_job([_gpu_step("train", hold)], name="survivor")
        await api.wait_job("survivor", {"active"}, timeout_s=60)
        (gpu,) = (await _task_details(api, "survivor", "train"))["gpus"]
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        # The survivor still holds its GPU: a new step gets the other one.
        await api.create_job([_gpu_step("train", 'echo "$CUDA_VISIBLE_DEVICES"; sleep 60')], name="newcomer")
        await api.wait_job("newcomer", {"active"}, timeout_s=60)
        (other,) = (await _task_details(api, "newcomer", "train"))["gpus"]
        assert other != gpu
        # Both held: one more waits.
        await api.create_job([_gpu_step("train", "true")], name="waiter")
        assert (await api.request("GET", "/jobs/waiter"))[1]["status"] == "created"
        await api.request("POST", "/jobs/survivor/cancel")
        assert (await api.wait_job("waiter", timeout_s=60))["status"] == "completed"
        await api.request("POST", "/jobs/newcomer/cancel")
        await api.wait_job("newcomer", timeout_s=60)


def test_gpu_objects_name_their_device() -> None:
    assert Gpu(index=0, uuid="GPU-1").device_id == "GPU-1"


async def test_a_gpu_step_on_a_machine_without_gpus_is_refused_at_submission(api: Api) -> None:
    assert await _usage(api) == {"total": 0, "free": 0, "gpus": [], "waiting": []}
    step = _gpu_step("needs-gpu", "true")
    status, body = await api.request(
        "POST", "/jobs", json={"source": "t", "spec": {}, "platform_spec": {"steps": [step]}}
    )
    assert status == 422 and "needs 1 GPU; this machine has 0" in body["detail"], body


async def test_declared_gpus_on_an_engine_without_a_gpu_runtime_fail_clearly(tmp_path: Path) -> None:
    """The container asks the engine for exactly the GPU it was given (DeviceIDs): an engine
    without the NVIDIA runtime says so, and the step ends in error naming it."""
    from tests.docker_env import TEST_IMAGE, require_docker

    require_docker()
    step = _gpu_step("needs-gpu", "true")
    step["executor"]["container"]["image"] = TEST_IMAGE
    async with running_server(tmp_path, gpus=("0",)) as srv, api_for(srv) as api:
        await api.create_job([step], name="gpu")
        job = await api.wait_job("gpu", timeout_s=60)
        assert job["status"] == "error"
        assert "no GPU runtime" in job["error_details"]["message"]


async def test_a_waiting_step_that_no_longer_fits_after_a_restart_ends_in_error(tmp_path: Path) -> None:
    settings = _settings(stop_steps_on_shutdown=False)
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        await api.create_job([_gpu_step("train", "sleep 60")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([_gpu_step("train", "true", gpus=2)], name="pair")  # waits: one is held
        assert (await api.request("GET", "/jobs/pair"))[1]["status"] == "created"
    async with running_server(tmp_path, **{**settings, "gpus": ("0",)}) as srv, api_for(srv) as api:
        job = await api.wait_job("pair", timeout_s=30)
        assert job["status"] == "error"
        assert "needs 2 GPUs; this machine now has 1" in job["error_details"]["message"]
        await api.request("POST", "/jobs/holder/cancel")
        await api.wait_job("holder", timeout_s=60)


async def test_a_later_step_that_cannot_fit_the_shrunk_machine_ends_in_error(tmp_path: Path) -> None:
    """Created after the restart (its job's first step completed then), it is settled by the loop,
    not left waiting: only steps already waiting were looked at by the recovery."""
    gate = tmp_path / "go"
    first = {
        "name": "prepare",
        "executor": {
            "provider": "subprocess",
            "command": ["sh", "-c", f"while [ ! -e {gate} ]; do sleep 0.05; done"],
        },
    }
    settings = _settings(stop_steps_on_shutdown=False)
    async with running_server(tmp_path, **settings) as srv, api_for(srv) as api:
        await api.create_job([first, _gpu_step("train", "true", gpus=2)], name="two-steps")
        await api.wait_job("two-steps", {"active"}, timeout_s=60)
    async with running_server(tmp_path, **{**settings, "gpus": ("0",)}) as srv, api_for(srv) as api:
        gate.touch()
        job = await api.wait_job("two-steps", timeout_s=60)
        assert job["status"] == "error", job
        assert "it needs 2 GPUs; this machine now has 1" in job["error_details"]["message"]
