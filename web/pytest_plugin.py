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

import pytest

from web.testing import LocalJobs

_counter = itertools.count(1)


@pytest.fixture(scope="session")
def localjobs_daemon() -> Iterator[LocalJobs]:
    """The session's daemon itself (started at first use)."""
    with LocalJobs() as daemon:
        yield daemon


@pytest.fixture
def localjobs(localjobs_daemon: LocalJobs, request: pytest.FixtureRequest) -> Iterator[LocalJobs]:
    """A running localjobs daemon, its helpers defaulting to a workspace of this test's own."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40] or "test"
    workspace = f"t{next(_counter)}-{stem}"
    yield localjobs_daemon.in_workspace(workspace)
    localjobs_daemon.cancel_unfinished(workspace)
