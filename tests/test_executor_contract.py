"""One contract, every executor: the same jobs behave the same as host processes and as containers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import Api
from tests.docker_env import TEST_IMAGE, require_docker


def _step(provider: str, name: str, script: str, **extra: Any) -> dict[str, Any]:
    if provider == "subprocess":
        executor: dict[str, Any] = {"provider": "subprocess", "command": ["sh", "-c", script]}
    else:
        executor = {
            "provider": provider,
            "container": {"image": TEST_IMAGE, "entrypoint": ["sh", "-c"], "command": [script]},
        }
    return {"name": name, "executor": executor, **extra}


@pytest.fixture(params=["subprocess", "cpu"])
def provider(request: pytest.FixtureRequest) -> str:
    if request.param != "subprocess":
        require_docker()
    return str(request.param)


async def test_exit_zero_completes_and_logs_keep_order(api: Api, provider: str) -> None:
    script = "for i in $(seq 1 200); do echo line-$i; done; echo to-stderr >&2"
    await api.create_job([_step(provider, "main", script)], name="ordered")
    job = await api.wait_job("ordered", timeout_s=60)
    assert job["status"] == "completed", job
    status, page = await api.request("GET", "/jobs/ordered/logs", params={"limit": 10000})
    assert status == 200, page
    # Order is kept within each stream only: stdout and stderr are two files (two engine streams
    # for a container), read one after the other, so a stderr line may be stored before stdout
    # lines printed earlier that had not reached their file yet (README, "Following logs").
    by_stream: dict[str, list[str]] = {"stdout": [], "stderr": []}
    for line in page["data"]:
        by_stream[line["stream"]].append(line["message"])
    assert by_stream == {
        "stdout": [f"line-{i}" for i in range(1, 201)],
        "stderr": ["[stderr] to-stderr"],
    }


async def test_non_zero_exit_is_an_error_with_its_code(api: Api, provider: str) -> None:
    await api.create_job([_step(provider, "main", "echo last words; exit 7")], name="fails")
    job = await api.wait_job("fails", timeout_s=60)
    assert job["status"] == "error"
    assert job["error_details"]["exit_code"] == 7
    assert job["error_details"]["last_lines"][-1] == "last words"


async def test_signal_is_reported(api: Api, provider: str) -> None:
    await api.create_job([_step(provider, "main", "kill -KILL $$")], name="signalled")
    job = await api.wait_job("signalled", timeout_s=60)
    assert job["status"] == "error"
    assert job["error_details"]["signal"] == "SIGKILL"


async def test_environment_and_config_file(api: Api, provider: str) -> None:
    script = 'echo "$NEMO_JOB_ID/$NEMO_JOB_STEP/$MY_VAR"; cat "$NEMO_JOB_STEP_CONFIG_FILE_PATH"; echo; test -n "$NEMO_JOB_TASK" && echo has-task'
    s = _step(provider, "main", script, environment=[{"name": "MY_VAR", "value": "v1"}], config={"k": [1, 2]})
    await api.create_job([s], name="envcfg")
    job = await api.wait_job("envcfg", timeout_s=60)
    assert job["status"] == "completed", job
    lines = await api.logs("envcfg")
    assert lines[0] == "envcfg/main/v1"
    assert json.loads(lines[1]) == {"k": [1, 2]}
    assert lines[2] == "has-task"


async def test_cancel_stops_the_workload(api: Api, provider: str) -> None:
    await api.create_job([_step(provider, "main", "echo up; sleep 120")], name="cancelme")
    await api.wait_job("cancelme", {"active"}, timeout_s=60)
    status, _ = await api.request("POST", "/jobs/cancelme/cancel")
    assert status == 200
    job = await api.wait_job("cancelme", timeout_s=60)
    assert job["status"] == "cancelled"


async def test_steps_run_in_sequence(api: Api, provider: str) -> None:
    await api.create_job([_step(provider, "one", "echo a"), _step(provider, "two", "echo b")], name="seq")
    job = await api.wait_job("seq", timeout_s=60)
    assert job["status"] == "completed", job
    assert await api.logs("seq") == ["a", "b"]
