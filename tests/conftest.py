"""Shared fixtures: a real daemon on 127.0.0.1 with a real SQLite file, driven over HTTP."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runner.clock import Clock
from runner.daemon import Daemon
from runner.settings import ENV_PREFIX, Settings
from storage import Repository
from tests.daemon_process import AUTH_HEADERS, TEST_TOKEN
from tests.helpers import TERMINAL, wait_status
from web.app import Server

# Every test daemon runs with TEST_TOKEN (auth is on by default); `Api` sends it.


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Repository]:
    """A real store (SQLite file, migrations run) in the test's folder, closed afterwards."""
    repository = await Repository.open(tmp_path / "localjobs.db")
    try:
        yield repository
    finally:
        await repository.close()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never pick up a developer's daemon settings (test switches such as
    LOCALJOBS_SKIP_DOCKER are not settings and stay)."""
    for f in fields(Settings):
        monkeypatch.delenv(ENV_PREFIX + f.name.upper(), raising=False)


def test_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        host="127.0.0.1", port=0, data_dir=tmp_path / "data", grace_period_s=2.0, token=TEST_TOKEN
    )
    return replace(base, **overrides)


@dataclass
class Api:
    """A thin HTTP client for one workspace of a running daemon."""

    session: aiohttp.ClientSession
    base_url: str
    workspace: str = "default"

    @property
    def headers(self) -> dict[str, str]:
        """What a raw request (another client, a hand-built one) needs to be let in."""
        return dict(AUTH_HEADERS)

    @property
    def ws(self) -> str:
        return f"{self.base_url}/apis/jobs/v2/workspaces/{self.workspace}"

    async def request(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        url = path if path.startswith("http") else f"{self.ws}{path}"
        headers = {**AUTH_HEADERS, **kwargs.pop("headers", {})}
        async with self.session.request(method, url, headers=headers, **kwargs) as resp:
            body = await resp.read()
            if not body:
                return resp.status, None
            if resp.content_type == "application/json":
                return resp.status, await resp.json()
            return resp.status, body

    async def create_job(
        self, steps: list[dict[str, Any]], name: str | None = None, **extra: Any
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"source": "test", "spec": {}, "platform_spec": {"steps": steps}, **extra}
        if name is not None:
            body["name"] = name
        status, data = await self.request("POST", "/jobs", json=body)
        assert status == 201, data
        return data  # type: ignore[no-any-return]

    async def wait_job(
        self, name: str, statuses: set[str] | None = None, timeout_s: float = 20
    ) -> dict[str, Any]:
        return await wait_status(
            lambda: self.job(name), statuses or TERMINAL, what=f"job {name}", timeout_s=timeout_s
        )

    async def job(self, name: str) -> dict[str, Any]:
        """GET the job now (no waiting)."""
        status, job = await self.request("GET", f"/jobs/{name}")
        assert status == 200, job
        return job  # type: ignore[no-any-return]

    async def log_pages(self, name: str, limit: int, **params: Any) -> list[dict[str, Any]]:
        """Every page of the job's logs, `limit` lines each, following `next_page` to the end."""
        pages: list[dict[str, Any]] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": limit, **params}
            if cursor:
                query["page_cursor"] = cursor
            status, page = await self.request("GET", f"/jobs/{name}/logs", params=query)
            assert status == 200, page
            pages.append(page)
            cursor = page["next_page"]
            if not cursor:
                return pages

    async def logs(self, name: str, **params: Any) -> list[str]:
        status, page = await self.request("GET", f"/jobs/{name}/logs", params={"limit": 10000, **params})
        assert status == 200, page
        return [line["message"] for line in page["data"]]

    async def logs_until(
        self, name: str, done: Callable[[list[str]], bool], what: str, timeout_s: float = 20
    ) -> list[str]:
        """The job's stored lines once `done(lines)` holds (polled, bounded)."""
        deadline = time.monotonic() + timeout_s
        while not done(lines := await self.logs(name)):
            assert time.monotonic() < deadline, (
                f"{what}: not within {timeout_s} s ({len(lines)} lines): {lines[-20:]}"
            )
            await asyncio.sleep(0.05)
        return lines


def assert_422(body: Any) -> list[dict[str, Any]]:
    """The HTTPValidationError shape: {"detail": [{"loc": [...], "msg": str, "type": str}, ...]}."""
    assert isinstance(body, dict) and set(body) == {"detail"}, body
    detail = body["detail"]
    assert isinstance(detail, list) and detail, body
    for error in detail:
        assert isinstance(error["loc"], list) and error["loc"], error
        assert all(isinstance(part, str | int) for part in error["loc"]), error
        assert isinstance(error["msg"], str) and error["msg"], error
        assert isinstance(error["type"], str) and error["type"], error
    return detail  # type: ignore[no-any-return]


def step(name: str, *command: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "executor": {"provider": "subprocess", "command": list(command)}, **extra}


def shell(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return step(name, "sh", "-c", script, **extra)


@asynccontextmanager
async def running_server(
    tmp_path: Path, clock: Clock | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    srv = Server(Daemon(test_settings(tmp_path, **overrides), clock=clock))
    await srv.start()
    try:
        yield srv
    finally:
        await srv.stop()


@asynccontextmanager
async def api_for(srv: Server) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(headers=AUTH_HEADERS) as session:
        yield Api(session=session, base_url=srv.base_url)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    async with running_server(tmp_path) as srv:
        yield srv


@pytest.fixture
async def api(server: Server) -> AsyncIterator[Api]:
    async with aiohttp.ClientSession(headers=AUTH_HEADERS) as session:
        yield Api(session=session, base_url=server.base_url)


def _checking_containers() -> bool:
    """Checked in CI only: on a developer's machine a real daemon may legitimately be running
    containers."""
    from tests.docker_env import docker_ready

    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no") and docker_ready() is None


def _owners_of_this_run(base: Path) -> set[str]:
    """The container owner labels of every daemon this run made: each has its data dir (with
    its database) under pytest's base folder. Another suite sharing the engine (a second clone,
    a CI job on the same machine) has its own."""

    return {Settings(data_dir=db.parent).owner_id for db in base.rglob("localjobs.db")}


@pytest.fixture(scope="module", autouse=True)
def _no_container_left_behind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After each test module, no container of a daemon of this run may remain; checked per
    module so that a leak names the module that caused it, and the job and step."""
    yield
    from tests.docker_env import describe_containers_with_label

    if _checking_containers():
        ours = _owners_of_this_run(tmp_path_factory.getbasetemp())
        left = [c for c in describe_containers_with_label("localjobs.owner") if c.split()[-1] in ours]
        assert left == [], f"containers left behind: {left}"
