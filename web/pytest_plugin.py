"""The pytest plugin shipped with localjobs (entry point `pytest11: localjobs`).

    def test_training_step(localjobs):
        job = localjobs.run("python", "-c", "print('hi')")
        assert job["status"] == "completed"
        assert localjobs.logs(job["name"]) == ["hi"]

One daemon for the whole test session (a free port, a temporary data dir, its own token); each
test gets its own workspace, whose unfinished jobs are cancelled when the test ends. At the end
of the session the daemon stops its steps and nothing it started is left running.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import pytest

from web.testing import LocalJobs

_counter = itertools.count(1)


class WorkspaceDaemon:
    """The session's daemon, seen from one test: its helpers default to the test's workspace."""

    def __init__(self, daemon: LocalJobs, workspace: str) -> None:
        self.daemon = daemon
        self.workspace = workspace

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def token(self) -> str:
        return self.daemon.token

    @property
    def headers(self) -> dict[str, str]:
        return self.daemon.headers

    @property
    def jobs_url(self) -> str:
        return f"{self.url}/apis/jobs/v2/workspaces/{self.workspace}/jobs"

    def submit(self, steps: Any, **kwargs: Any) -> dict[str, Any]:
        return self.daemon.submit(steps, workspace=self.workspace, **kwargs)

    def run(self, *command: str, **kwargs: Any) -> dict[str, Any]:
        return self.daemon.run(*command, workspace=self.workspace, **kwargs)

    def wait(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return self.daemon.wait(name, workspace=self.workspace, **kwargs)

    def job(self, name: str) -> dict[str, Any]:
        return self.daemon.job(name, self.workspace)

    def logs(self, name: str) -> list[str]:
        return self.daemon.logs(name, workspace=self.workspace)

    def sdk(self) -> Any:
        """The official SDK's client, bound to this test's workspace (needs `nemo-platform`)."""
        return self.daemon.sdk(self.workspace)


@pytest.fixture(scope="session")
def localjobs_daemon() -> Iterator[LocalJobs]:
    """The session's daemon itself (started at first use)."""
    with LocalJobs() as daemon:
        yield daemon


@pytest.fixture
def localjobs(localjobs_daemon: LocalJobs, request: pytest.FixtureRequest) -> Iterator[WorkspaceDaemon]:
    """A running localjobs daemon and a workspace of this test's own."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] or "test"
    workspace = f"t{next(_counter)}-{stem}"
    yield WorkspaceDaemon(localjobs_daemon, workspace)
    localjobs_daemon.cancel_unfinished(workspace)
