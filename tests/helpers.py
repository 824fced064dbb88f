"""Helpers several test modules share: bounded waits, process liveness, small conversions.

Every wait here is bounded and fails with an AssertionError that says what it waited for.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

TERMINAL = {"completed", "error", "cancelled"}


def status_of(job: Any) -> str:
    """A job's status, from a JSON body (a mapping) or an SDK object (`.status`)."""
    return str(job["status"] if isinstance(job, Mapping) else job.status)


async def wait_status[J](
    fetch: Callable[[], Awaitable[J]],
    statuses: Collection[str],
    *,
    what: str,
    timeout_s: float = 20,
    poll_s: float = 0.02,
    detail: Callable[[J], object] = lambda job: job,
) -> J:
    """Poll `fetch()` until its status is one of `statuses`; return that last answer."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = await fetch()
        if status_of(job) in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still {status_of(job)} after {timeout_s}s: {detail(job)}")
        await asyncio.sleep(poll_s)


def wait_status_blocking[J](
    fetch: Callable[[], J],
    statuses: Collection[str],
    *,
    what: str,
    timeout_s: float = 20,
    poll_s: float = 0.05,
    detail: Callable[[J], object] = lambda job: job,
) -> J:
    """`wait_status` for code without an event loop (a test driving a daemon process)."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = fetch()
        if status_of(job) in statuses:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still {status_of(job)} after {timeout_s}s: {detail(job)}")
        time.sleep(poll_s)


async def until(
    predicate: Callable[[], bool], *, what: str, timeout_s: float = 20, poll_s: float = 0.02
) -> None:
    """Poll `predicate()` (from a coroutine) until it holds."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(poll_s)


def until_blocking(
    predicate: Callable[[], bool], *, what: str, timeout_s: float = 20, poll_s: float = 0.05
) -> None:
    """`until` for code without an event loop."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(poll_s)


def pid_alive(process: int | psutil.Process) -> bool:
    """True while the process (a pid, or a psutil.Process: safe from pid reuse) is live and not a
    zombie (a zombie runs no more)."""
    try:
        proc = psutil.Process(process) if isinstance(process, int) else process
        return bool(proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


async def wait_gone(pid: int, timeout_s: float = 20, poll_s: float = 0.02) -> None:
    """Until process `pid` has ended (a zombie counts: it runs no more)."""
    await until(lambda: not pid_alive(pid), what=f"process {pid} ending", timeout_s=timeout_s, poll_s=poll_s)


def require(reason: str | None, *, switch: str, what: str, needs: str) -> None:
    """Tests that need something optional (Docker, a browser): go on when `reason` is None (it
    is there); skip only when explicitly allowed (`switch`=1 in the environment, as scripts/test.sh
    sets outside CI when the setup failed); otherwise fail, saying what is missing."""
    if reason is None:
        return
    if os.environ.get(switch) == "1":
        pytest.skip(f"{what} tests skipped ({switch}=1): {reason}")
    pytest.fail(f"{what} tests need {needs}: {reason}")


def ts(value: str) -> datetime:
    """An API timestamp (ISO 8601, `Z` for UTC) as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def file_mode(path: str | Path) -> int:
    """The permission bits of `path` (e.g. 0o600)."""
    return stat.S_IMODE(os.stat(path).st_mode)


def cpu_step(name: str, script: str, **requests: str) -> dict[str, Any]:
    """A `cpu` step asking for `requests` (e.g. cpu="1", memory="256Mi"), run as a host process
    by a daemon with `cpu_containers_as_subprocess` (its image is never pulled)."""
    return {
        "name": name,
        "executor": {
            "provider": "cpu",
            "container": {"image": "unused-as-host-process", "entrypoint": ["sh", "-c"], "command": [script]},
            "resources": {"requests": requests},
        },
    }
