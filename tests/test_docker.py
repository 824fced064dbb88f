"""Container steps against the real Docker engine (CI starts one: scripts/setup_docker.sh)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from typing import Any

import pytest

from tests.conftest import Api
from tests.docker_env import TEST_IMAGE, containers_with_label, require_docker
from tests.helpers import ts
from web.app import Server


@pytest.fixture(autouse=True)
def _needs_docker() -> None:
    require_docker()


def container_step(name: str, script: str | None, provider: str = "cpu", **resources: Any) -> dict[str, Any]:
    container: dict[str, Any] = {"image": TEST_IMAGE}
    if script is not None:
        container.update({"entrypoint": ["sh", "-c"], "command": [script]})
    executor: dict[str, Any] = {"provider": provider, "container": container}
    if resources:
        executor["resources"] = resources
    return {"name": name, "executor": executor}


def _owned_containers(server: Server) -> list[str]:
    return containers_with_label(f"localjobs.owner={server.daemon.settings.owner_id}")


async def test_execution_profiles_list_docker(api: Api) -> None:
    status, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
    assert status == 200
    assert {(p["provider"], p["backend"]) for p in profiles} >= {
        ("subprocess", "subprocess"),
        ("cpu", "docker"),
        ("gpu", "docker"),
        ("gpu_distributed", "docker"),
    }


async def test_memory_limit_kill_is_reported_as_oom(api: Api) -> None:
    hog = "x=$(head -c 200m /dev/zero | tr '\\0' a); echo survived"
    await api.create_job([container_step("hog", hog, limits={"memory": "32Mi"})], name="oom")
    job = await api.wait_job("oom", timeout_s=60)
    assert job["status"] == "error"
    assert job["error_details"]["reason"] == "OOMKilled"
    assert "OOMKilled" in job["error_details"]["message"]


async def test_cpu_quota_and_memory_limit_reach_the_cgroup(api: Api) -> None:
    script = (
        "cat /sys/fs/cgroup/cpu.max 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us; "
        "cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    await api.create_job(
        [container_step("caps", script, limits={"cpu": "250m", "memory": "128Mi"})], name="caps"
    )
    job = await api.wait_job("caps", timeout_s=60)
    assert job["status"] == "completed", job
    cpu, memory = await api.logs("caps")
    assert cpu.split()[0] == "25000"  # 0.25 CPU of a 100 ms period, fractional value kept
    assert int(memory) == 128 * 2**20


async def test_labels_and_no_container_left_behind(api: Api, server: Server) -> None:
    await api.create_job([container_step("labelled", "sleep 60")], name="labels")
    await api.wait_job("labels", {"active"}, timeout_s=60)
    _, s = await api.request("GET", "/jobs/labels/steps/labelled")
    (short_id,) = s["status_details"]["container_ids"]
    inspect = subprocess.run(["docker", "inspect", short_id], capture_output=True, text=True, check=True)
    info = json.loads(inspect.stdout)[0]
    labels = info["Config"]["Labels"]
    _, tasks = await api.request("GET", "/jobs/labels/steps/labelled/tasks")
    assert labels["localjobs.workspace"] == "default"
    assert labels["localjobs.job"] == "labels"
    assert labels["localjobs.step"] == "labelled"
    assert labels["localjobs.task"] == tasks["data"][0]["name"]
    assert labels["localjobs.attempt"] == s["attempt_id"]
    assert info["HostConfig"]["Init"] is True
    await api.request("POST", "/jobs/labels/cancel")
    assert (await api.wait_job("labels", timeout_s=60))["status"] == "cancelled"
    for _ in range(100):
        if not _owned_containers(server):
            break
        await asyncio.sleep(0.1)
    assert _owned_containers(server) == []


async def test_two_node_distributed_step_sees_its_ranks(api: Api) -> None:
    script = 'echo "rank=$NODE_RANK of=$NNODES world=$WORLD_SIZE master=$MASTER_ADDR:$MASTER_PORT"'
    s = container_step("train", script, provider="gpu_distributed", num_nodes=2, num_gpus=0)
    await api.create_job([s], name="dist")
    job = await api.wait_job("dist", timeout_s=60)
    assert job["status"] == "completed", job
    _, tasks = await api.request("GET", "/jobs/dist/steps/train/tasks")
    assert len(tasks["data"]) == 2
    master = f"lj-{tasks['data'][0]['name']}"
    lines = sorted(await api.logs("dist"))
    assert lines == [
        f"rank=0 of=2 world=2 master={master}:29500",
        f"rank=1 of=2 world=2 master={master}:29500",
    ]


async def test_distributed_nodes_reach_each_other(api: Api) -> None:
    script = (
        'if [ "$NODE_RANK" = 0 ]; then echo ready | nc -l -p "$MASTER_PORT"; echo served; '
        # Rank 1 tries for a minute or more: rank 0 may start listening seconds later on a loaded machine.
        'else for i in $(seq 1 600); do nc "$MASTER_ADDR" "$MASTER_PORT" && break; sleep 0.1; done; fi'
    )
    s = container_step("rdzv", script, provider="gpu_distributed", num_nodes=2, num_gpus=0)
    await api.create_job([s], name="rdzv")
    job = await api.wait_job("rdzv", timeout_s=120)
    assert job["status"] == "completed", job
    assert sorted(await api.logs("rdzv")) == ["ready", "served"]


async def test_one_failing_node_fails_the_step_and_stops_the_rest(api: Api) -> None:
    script = 'if [ "$NODE_RANK" = 1 ]; then exit 9; fi; sleep 120'
    s = container_step("partial", script, provider="gpu_distributed", num_nodes=2, num_gpus=0)
    await api.create_job([s], name="partial")
    job = await api.wait_job("partial", timeout_s=60)
    assert job["status"] == "error"
    assert job["error_details"]["exit_code"] == 9


async def test_missing_image_fails_with_the_engines_reason(api: Api) -> None:
    step = container_step("noimage", "true")
    step["executor"]["container"]["image"] = "localjobs-test:does-not-exist"
    await api.create_job([step], name="noimage")
    job = await api.wait_job("noimage", timeout_s=120)
    assert job["status"] == "error"
    assert "localjobs-test:does-not-exist" in job["error_details"]["message"]
    assert "pulling it failed" in job["error_details"]["message"]


async def test_empty_entrypoint_and_command_keep_the_images_own(api: Api) -> None:
    # The test image's CMD is /bin/sh, which exits 0 at once with no input.
    await api.create_job([container_step("default-cmd", None)], name="defaults")
    job = await api.wait_job("defaults", timeout_s=60)
    assert job["status"] == "completed", job


async def _docker_last_line(container_id: str) -> str:
    done = await asyncio.to_thread(
        subprocess.run,
        ["docker", "logs", "--tail", "1", container_id],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.strip()


async def test_pause_and_resume_a_container(api: Api) -> None:
    counter = "i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done"
    await api.create_job([container_step("count", counter)], name="cpause")
    await api.wait_job("cpause", {"active"}, timeout_s=60)
    _, s = await api.request("GET", "/jobs/cpause/steps/count")
    (container_id,) = s["status_details"]["container_ids"]
    await api.logs_until("cpause", lambda lines: len(lines) >= 5, "it counts")
    await api.request("POST", "/jobs/cpause/pause")
    await api.wait_job("cpause", {"paused"}, timeout_s=60)
    # Frozen: the collector stores what was printed before the freeze, up to the counter's last
    # number as the engine has it (read again each time: it may still be taking in the last
    # lines), and no more (fixed sleeps assumed it had caught up by then).
    deadline = asyncio.get_running_loop().time() + 30
    while (last := await _docker_last_line(container_id)) != str(len(frozen := await api.logs("cpause"))):
        assert asyncio.get_running_loop().time() < deadline, (
            f"{len(frozen)} lines stored, the engine's last: {last}"
        )
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)
    assert await _docker_last_line(container_id) == last  # nothing printed while paused
    assert await api.logs("cpause") == frozen
    await api.request("POST", "/jobs/cpause/resume")
    await api.wait_job("cpause", {"active"}, timeout_s=60)
    resumed = await api.logs_until("cpause", lambda lines: len(lines) > len(frozen), "it counts on")
    later = [int(x) for x in resumed]
    assert len(later) > len(frozen)
    assert later == list(range(1, len(later) + 1))
    await api.request("POST", "/jobs/cpause/cancel")
    assert (await api.wait_job("cpause", timeout_s=60))["status"] == "cancelled"


async def test_malformed_quantity_is_rejected_at_submission(api: Api) -> None:
    body = {
        "source": "t",
        "spec": {},
        "platform_spec": {"steps": [container_step("bad", "true", limits={"cpu": "lots"})]},
    }
    status, err = await api.request("POST", "/jobs", json=body)
    assert status == 422
    assert err["detail"][0]["loc"][-1] == "cpu"


async def test_container_step_can_call_the_daemon_back(api: Api) -> None:
    script = (
        'wget -q -O - --header "Authorization: Bearer $(cat "$NMP_WORKLOAD_IDENTITY_TOKEN_FILE")" '
        '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID" '
        '| grep -o \'"name":"callback"\''
    )
    await api.create_job([container_step("call", script)], name="callback")
    job = await api.wait_job("callback", timeout_s=60)
    assert job["status"] == "completed", (job, await api.logs("callback"))


async def test_without_an_engine_container_steps_are_refused(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.conftest import api_for, running_server

    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        _, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
        assert [p["provider"] for p in profiles] == ["subprocess"]
        body = {"source": "t", "spec": {}, "platform_spec": {"steps": [container_step("boxed", "true")]}}
        status, err = await api.request("POST", "/jobs", json=body)
        assert status == 422
        assert "Docker engine" in err["detail"]
        # Host steps still run.
        await api.create_job(
            [{"name": "host", "executor": {"provider": "subprocess", "command": ["true"]}}], name="host-only"
        )
        assert (await api.wait_job("host-only"))["status"] == "completed"


async def test_cpu_containers_as_host_processes_when_asked(tmp_path: Any) -> None:
    from tests.conftest import api_for, running_server

    async with running_server(tmp_path, cpu_containers_as_subprocess=True) as srv, api_for(srv) as api:
        step = container_step("local", "echo on-the-host $NEMO_JOB_STEP")
        step["executor"]["container"]["image"] = "image-that-is-never-pulled"
        await api.create_job([step], name="local-cpu")
        job = await api.wait_job("local-cpu")
        assert job["status"] == "completed", job
        assert await api.logs("local-cpu") == ["on-the-host local"]
        _, s = await api.request("GET", "/jobs/local-cpu/steps/local")
        assert "pid" in s["status_details"]


async def test_a_silent_container_goes_stale_and_is_removed(tmp_path: Any) -> None:
    from runner.clock import ManualClock
    from tests.conftest import api_for, running_server

    clock = ManualClock()
    async with running_server(tmp_path, clock=clock) as srv, api_for(srv) as api:
        step = container_step("silent", "sleep 120")
        step["lifecycle"] = {"staleness_timeout_seconds": 5}
        await api.create_job([step], name="stale-box")
        await api.wait_job("stale-box", {"active"}, timeout_s=60)
        clock.advance(6)
        await srv.daemon.watchdog.check()
        job = await api.wait_job("stale-box", timeout_s=60)
        assert job["status"] == "error"
        assert job["error_details"]["message"] == "Job terminated: no task updates received within 5 s"
        for _ in range(100):
            if not _owned_containers(srv):
                break
            await asyncio.sleep(0.1)
        assert _owned_containers(srv) == []


async def test_execution_profiles_are_the_references_shape(api: Api) -> None:
    from nemo_platform_plugin.jobs.execution_profiles import (
        DockerJobExecutionProfile,
        SubprocessJobExecutionProfileConfig,
    )

    _, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
    for profile in profiles:
        assert set(profile.pop("capacity")) == {"cpus", "memory_bytes", "gpus"}  # the one extension
        if profile["backend"] == "docker":
            reference = DockerJobExecutionProfile.model_validate(profile, strict=True).model_dump(mode="json")
            assert reference == profile  # no missing or extra key, same values
            assert list(reference["config"]) == list(profile["config"])
        else:
            config = SubprocessJobExecutionProfileConfig.model_validate(profile["config"], strict=True)
            assert config.model_dump(mode="json") == profile["config"]


async def test_a_containers_stdout_and_stderr_keep_the_order_and_times_printed(api: Api) -> None:
    """Both streams come from the engine's one log, frame by frame with its times: the order
    across them is the engine's, and a line's time is when the engine took it."""
    script = "echo one; sleep 0.3; echo two >&2; sleep 0.3; echo three; sleep 0.3; echo four >&2"
    await api.create_job([container_step("main", script)], name="ordered")
    assert (await api.wait_job("ordered", timeout_s=120))["status"] == "completed"
    _, page = await api.request("GET", "/jobs/ordered/logs")
    lines = page["data"]
    assert [line["message"] for line in lines] == ["one", "[stderr] two", "three", "[stderr] four"]
    gap_s = (ts(lines[1]["timestamp"]) - ts(lines[0]["timestamp"])).total_seconds()
    assert 0.2 < gap_s < 2.0, gap_s
