"""The official NeMo Platform SDK (`nemo_platform`) against a real daemon: what its users will run.

The SDK client is synchronous (httpx); each call runs in a worker thread so that the in-process
daemon keeps serving on the test's event loop. One test uses the async client directly.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.daemon_process import TEST_TOKEN
from tests.helpers import TERMINAL, pid_alive, wait_gone, wait_status
from web.app import Server

if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
    import nemo_platform  # CI must run these tests: a missing SDK is a failure, not a skip.
else:
    nemo_platform = pytest.importorskip("nemo_platform")

NeMoPlatform = nemo_platform.NeMoPlatform
AsyncNeMoPlatform = nemo_platform.AsyncNeMoPlatform
NotFoundError = nemo_platform.NotFoundError
ConflictError = nemo_platform.ConflictError
UnprocessableEntityError = nemo_platform.UnprocessableEntityError


class Sdk:
    """The sync client, with every call made off the event loop."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.jobs = client.jobs

    async def __call__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def all(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[Any]:
        """Every item of a paginated call: the SDK's auto-pagination, fetching page after page."""
        return await asyncio.to_thread(lambda: list(fn(*args, **kwargs)))

    async def pages(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> list[list[Any]]:
        def collect() -> list[list[Any]]:
            return [list(page._get_page_items()) for page in fn(*args, **kwargs).iter_pages()]

        return await asyncio.to_thread(collect)

    async def wait_job(self, name: str, statuses: set[str] | None = None, timeout_s: float = 20) -> Any:
        return await wait_status(
            lambda: self(self.jobs.retrieve, name),
            statuses or TERMINAL,
            what=f"job {name}",
            timeout_s=timeout_s,
            detail=lambda job: "",
        )

    async def create(self, name: str | None, *steps: dict[str, Any], **extra: Any) -> Any:
        if name is not None:
            extra["name"] = name
        return await self(
            self.jobs.create, source="sdk-test", spec={}, platform_spec={"steps": list(steps)}, **extra
        )


def sh(name: str, script: str) -> dict[str, Any]:
    return {"name": name, "executor": {"provider": "subprocess", "command": ["sh", "-c", script]}}


@pytest.fixture(autouse=True)
def _direct_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # With a workload-identity token file set, the client would bootstrap auth instead of going direct.
    monkeypatch.delenv("NMP_WORKLOAD_IDENTITY_TOKEN_FILE", raising=False)


@pytest.fixture
async def sdk(server: Server) -> AsyncIterator[Sdk]:
    client = NeMoPlatform(
        base_url=server.base_url, workspace="default", max_retries=0, timeout=30, access_token=TEST_TOKEN
    )
    try:
        yield Sdk(client)
    finally:
        await asyncio.to_thread(client.close)


LINES = 250
PRINT_250 = f'i=1; while [ $i -le {LINES} ]; do echo "line $i"; i=$((i+1)); done'


async def test_create_poll_status_logs_steps_and_tasks(sdk: Sdk) -> None:
    created = await sdk.create("sdk-basic", sh("print", PRINT_250))
    assert created.name == "sdk-basic"
    assert created.status == "created"
    assert created.workspace == "default"
    assert created.platform_spec.steps[0].name == "print"

    fetched = await sdk(sdk.jobs.retrieve, "sdk-basic")
    assert fetched.id == created.id
    done = await sdk.wait_job("sdk-basic")
    assert done.status == "completed", done

    status = await sdk(sdk.jobs.get_status, "sdk-basic")
    assert status.status == "completed"
    assert [s.name for s in status.steps] == ["print"]
    assert status.steps[0].status == "completed"
    assert [t.status for t in status.steps[0].tasks] == ["completed"]

    # Logs: auto-pagination with cursors, 100 a page, every line once and in order.
    lines = await sdk.all(sdk.jobs.get_logs, "sdk-basic", limit=100)
    assert [line.message for line in lines] == [f"line {i}" for i in range(1, LINES + 1)]
    assert {line.job_step for line in lines} == {"print"}
    pages = await sdk.pages(sdk.jobs.get_logs, "sdk-basic", limit=100)
    assert [len(p) for p in pages] == [100, 100, 50]
    tail = await sdk(sdk.jobs.get_logs, "sdk-basic", tail=5)
    assert [line.message for line in tail.data] == [f"line {i}" for i in range(246, 251)]

    # Steps: a one-item status list is sent as `filter[status]=completed`.
    steps = await sdk.all(sdk.jobs.steps.list, "sdk-basic", filter={"status": ["completed"]})
    assert [(s.name, s.job, s.status) for s in steps] == [("print", "sdk-basic", "completed")]
    assert await sdk.all(sdk.jobs.steps.list, "sdk-basic", filter={"status": ["active"]}) == []
    both = await sdk.all(sdk.jobs.steps.list, "sdk-basic", filter={"status": ["active", "completed"]})
    assert [s.name for s in both] == ["print"]
    step = await sdk(sdk.jobs.steps.retrieve, "print", job="sdk-basic")
    assert step.status == "completed"

    # Tasks: the daemon's own task, then one a client creates and updates.
    tasks = await sdk(sdk.jobs.tasks.list, "print", job="sdk-basic")
    assert len(tasks.data) == 1
    own = tasks.data[0]
    assert own.status == "completed"
    again = await sdk(sdk.jobs.tasks.retrieve, own.name, job="sdk-basic", step="print")
    assert again.id == own.id

    made = await sdk(
        sdk.jobs.tasks.create_or_update,
        "client-task",
        job="sdk-basic",
        step="print",
        status="active",
        status_details={"percentage_done": 10},
    )
    assert (made.name, made.status) == ("client-task", "active")
    updated = await sdk(
        sdk.jobs.tasks.create_or_update,
        "client-task",
        job="sdk-basic",
        step="print",
        status="completed",
        status_details={"percentage_done": 100},
    )
    assert updated.status == "completed"
    assert updated.status_details == {"percentage_done": 100}
    got = await sdk(sdk.jobs.tasks.retrieve, "client-task", job="sdk-basic", step="print")
    assert (got.status, got.status_details) == ("completed", {"percentage_done": 100})
    tasks = await sdk(sdk.jobs.tasks.list, "print", job="sdk-basic")
    assert sorted(t.name for t in tasks.data) == sorted([own.name, "client-task"])
    # A task's status details feed the job's.
    job = await sdk(sdk.jobs.retrieve, "sdk-basic")
    assert job.status_details["percentage_done"] == 100


async def test_auto_pagination_of_steps_and_jobs(sdk: Sdk) -> None:
    names = [f"page-{i}" for i in range(5)]
    for name in names:
        await sdk.create(name, sh("only", "true"))
    await sdk.create("page-fails", sh("only", "exit 4"))
    for name in [*names, "page-fails"]:
        await sdk.wait_job(name)

    # Steps across every job of the workspace (`-`), two a page: 6 steps over 3 pages.
    pages = await sdk.pages(sdk.jobs.steps.list, "-", page_size=2)
    assert [len(p) for p in pages] == [2, 2, 2]
    steps = await sdk.all(sdk.jobs.steps.list, "-", page_size=2)
    assert sorted(s.job for s in steps) == sorted([*names, "page-fails"])
    done = await sdk.all(sdk.jobs.steps.list, "-", page_size=2, filter={"status": ["completed"]})
    assert sorted(s.job for s in done) == sorted(names)
    failed = await sdk.all(sdk.jobs.steps.list, "-", filter={"status": ["error"]})
    assert [s.job for s in failed] == ["page-fails"]

    # Jobs, filtered by a status list, two a page.
    completed = await sdk.all(sdk.jobs.list, filter={"status": ["completed"]}, page_size=2)
    assert sorted(j.name for j in completed) == sorted(names)
    either = await sdk.all(sdk.jobs.list, filter={"status": ["completed", "error"]}, page_size=2)
    assert len(either) == 6
    errors = await sdk.all(sdk.jobs.list, filter={"status": "error"})
    assert [j.name for j in errors] == ["page-fails"]
    assert errors[0].error_details["exit_code"] == 4
    first = await sdk(sdk.jobs.list, page_size=4)
    assert first.pagination.total_results == 6
    assert first.pagination.total_pages == 2
    assert len(first.data) == 4


async def test_update_status_details_and_step_status(sdk: Sdk) -> None:
    await sdk.create("sdk-patch", sh("slow", "sleep 300"))
    await sdk.wait_job("sdk-patch", {"active"})

    assert await sdk(sdk.jobs.update_status_details, "sdk-patch", body={"phase": "warmup"}) is None
    await sdk(sdk.jobs.update_status_details, "sdk-patch", body={"epoch": 3})
    job = await sdk(sdk.jobs.retrieve, "sdk-patch")
    assert job.status_details["phase"] == "warmup"
    assert job.status_details["epoch"] == 3

    step = await sdk(
        sdk.jobs.steps.update_status, "slow", job="sdk-patch", status="active", status_details={"note": "hi"}
    )
    assert step.status == "active"
    assert step.status_details["note"] == "hi"
    pid = step.status_details["pid"]
    assert pid_alive(pid)

    # A client deciding the step's end: the daemon ends the workload to match.
    step = await sdk(
        sdk.jobs.steps.update_status,
        "slow",
        job="sdk-patch",
        status="error",
        error_details={"message": "given up by the client"},
    )
    assert step.status == "error"
    job = await sdk.wait_job("sdk-patch")
    assert job.status == "error"
    assert job.error_details["message"] == "given up by the client"
    await wait_gone(pid)

    with pytest.raises(ConflictError):
        await sdk(sdk.jobs.steps.update_status, "slow", job="sdk-patch", status="active")


async def test_cancel_a_sleeping_job_then_delete_it(sdk: Sdk) -> None:
    await sdk.create("sdk-cancel", sh("slow", "sleep 300"))
    await sdk.wait_job("sdk-cancel", {"active"})
    step = await sdk(sdk.jobs.steps.retrieve, "slow", job="sdk-cancel")
    pid = step.status_details["pid"]

    with pytest.raises(ConflictError):
        await sdk(sdk.jobs.delete, "sdk-cancel")  # still running

    job = await sdk(sdk.jobs.cancel, "sdk-cancel")
    assert job.status in ("cancelling", "cancelled")
    job = await sdk.wait_job("sdk-cancel")
    assert job.status == "cancelled"
    await wait_gone(pid)

    assert await sdk(sdk.jobs.delete, "sdk-cancel") is None
    with pytest.raises(NotFoundError):
        await sdk(sdk.jobs.retrieve, "sdk-cancel")
    assert await sdk.all(sdk.jobs.list) == []


async def test_pause_and_resume(sdk: Sdk) -> None:
    await sdk.create("sdk-pause", sh("slow", "sleep 300"))
    await sdk.wait_job("sdk-pause", {"active"})
    await sdk(sdk.jobs.pause, "sdk-pause")
    await sdk.wait_job("sdk-pause", {"paused"})
    await sdk(sdk.jobs.resume, "sdk-pause")
    await sdk.wait_job("sdk-pause", {"active"})
    await sdk(sdk.jobs.cancel, "sdk-pause")
    assert (await sdk.wait_job("sdk-pause")).status == "cancelled"


async def test_execution_profiles(sdk: Sdk) -> None:
    profiles = await sdk(sdk.jobs.list_execution_profiles)
    subprocess_profiles = [p for p in profiles if p.provider == "subprocess"]
    assert len(subprocess_profiles) == 1
    assert subprocess_profiles[0].profile == "default"
    assert subprocess_profiles[0].backend == "subprocess"


async def test_errors_map_to_sdk_exceptions(sdk: Sdk) -> None:
    with pytest.raises(NotFoundError) as missing:
        await sdk(sdk.jobs.retrieve, "no-such-job")
    assert missing.value.status_code == 404
    with pytest.raises(NotFoundError):
        await sdk(sdk.jobs.get_status, "no-such-job")
    with pytest.raises(NotFoundError):
        await sdk(sdk.jobs.steps.retrieve, "nope", job="no-such-job")
    with pytest.raises(NotFoundError):
        await sdk.all(sdk.jobs.get_logs, "no-such-job")

    await sdk.create("sdk-dup", sh("only", "true"))
    with pytest.raises(ConflictError) as dup:
        await sdk.create("sdk-dup", sh("only", "true"))
    assert dup.value.status_code == 409

    with pytest.raises(UnprocessableEntityError) as bad:
        await sdk.create("sdk-bad-step", sh("Bad Step!", "true"))
    assert bad.value.status_code == 422
    assert isinstance(bad.value.body, dict)
    detail = bad.value.body["detail"]
    assert any(item["loc"][:3] == ["body", "platform_spec", "steps"] for item in detail), detail
    with pytest.raises(NotFoundError):
        await sdk(sdk.jobs.retrieve, "sdk-bad-step")
    await sdk.wait_job("sdk-dup")


async def test_async_client_auto_pagination(server: Server) -> None:
    client = AsyncNeMoPlatform(
        base_url=server.base_url, workspace="default", max_retries=0, timeout=30, access_token=TEST_TOKEN
    )
    try:
        spec: Any = {"steps": [sh("print", PRINT_250)]}
        await client.jobs.create(name="sdk-async", source="sdk-test", spec={}, platform_spec=spec)
        deadline = time.monotonic() + 20
        while (job := await client.jobs.retrieve("sdk-async")).status not in TERMINAL:
            assert time.monotonic() < deadline, job
            await asyncio.sleep(0.02)
        assert job.status == "completed"
        messages = [line.message async for line in client.jobs.get_logs("sdk-async", limit=100)]
        assert messages == [f"line {i}" for i in range(1, LINES + 1)]
        steps = [s async for s in client.jobs.steps.list("-", page_size=1)]
        assert [s.name for s in steps] == ["print"]
    finally:
        await client.close()


async def test_results_through_the_sdk(sdk: Sdk) -> None:
    script = 'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out" && printf "weights" > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/w.bin"'
    await sdk.create("sdk-results", sh("make", script))
    job = await sdk.wait_job("sdk-results")
    assert job.status == "completed"
    url = f"{job.workspace}/{job.fileset}#out/w.bin"
    created = await sdk(
        sdk.jobs.results.create,
        "weights",
        job="sdk-results",
        artifact_storage_type="fileset",
        artifact_url=url,
    )
    assert created.name == "weights" and created.job == job.id
    got = await sdk(sdk.jobs.results.retrieve, "weights", job="sdk-results")
    assert got.artifact_url == url
    listed = await sdk(sdk.jobs.results.list, "sdk-results")
    assert [r.name for r in listed.data] == ["weights"]
    download = await sdk(sdk.jobs.results.download, "weights", job="sdk-results")
    assert download.read() == b"weights"
    with pytest.raises(ConflictError):
        await sdk(
            sdk.jobs.results.create,
            "weights",
            job="sdk-results",
            artifact_storage_type="fileset",
            artifact_url=url,
        )


async def test_secrets_through_the_sdk(sdk: Sdk) -> None:
    secrets = sdk.client.secrets
    created = await sdk(secrets.create, name="api-key", value="value-from-sdk-123", description="for a test")
    assert created.name == "api-key"
    assert [s.name for s in await sdk.all(secrets.list)] == ["api-key"]
    assert (await sdk(secrets.retrieve, "api-key")).description == "for a test"
    await sdk(secrets.update, "api-key", value="rotated-value-456")
    assert (await sdk(secrets.access, "api-key")).value == "rotated-value-456"
    step = sh("use", 'echo "key=$KEY"')
    step["environment"] = [{"name": "KEY", "from_secret": {"name": "api-key"}}]
    await sdk.create("sdk-secret", step)
    assert (await sdk.wait_job("sdk-secret")).status == "completed"
    lines = [line.message for line in await sdk.all(sdk.jobs.get_logs, "sdk-secret")]
    assert lines == ["key=********"]
    rotation = await sdk(secrets.admin.rotate_encryption_keys)
    assert (rotation.rotated_secrets, rotation.success) == (1, True)
    assert (await sdk(secrets.access, "api-key")).value == "rotated-value-456"
    await sdk(secrets.delete, "api-key")
    with pytest.raises(NotFoundError):
        await sdk(secrets.retrieve, "api-key")


async def test_container_step_through_the_sdk(sdk: Sdk) -> None:
    from tests.docker_env import TEST_IMAGE, require_docker

    require_docker()
    step = {
        "name": "boxed",
        "executor": {
            "provider": "cpu",
            "container": {
                "image": TEST_IMAGE,
                "entrypoint": ["sh", "-c"],
                "command": ["echo from-a-container"],
            },
            "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
        },
    }
    await sdk.create("sdk-container", step)
    job = await sdk.wait_job("sdk-container", timeout_s=60)
    assert job.status == "completed"
    assert [line.message for line in await sdk.all(sdk.jobs.get_logs, "sdk-container")] == [
        "from-a-container"
    ]
    steps = await sdk.all(sdk.jobs.steps.list, "sdk-container", filter={"status": ["completed"]})
    assert [s.name for s in steps] == ["boxed"]
