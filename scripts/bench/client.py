"""HTTP calls to the daemon: submit jobs, count and wait for them, follow their logs."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp

from scripts.bench.common import V2

TERMINAL = {"completed", "error", "cancelled"}


def one_step_job(name: str, command: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "source": "bench",
        "spec": {},
        "platform_spec": {
            "steps": [{"name": "step", "executor": {"provider": "subprocess", "command": command}}]
        },
    }


async def post_job(session: aiohttp.ClientSession, base: str, workspace: str, body: dict[str, Any]) -> None:
    async with session.post(f"{base}{V2}/workspaces/{workspace}/jobs", json=body) as resp:
        data = await resp.read()
        if resp.status != 201:
            raise RuntimeError(f"POST job -> {resp.status}: {data[:500]!r}")


async def count_jobs(session: aiohttp.ClientSession, base: str, workspace: str, status: str) -> int:
    params = {"filter[status]": status, "page_size": "1"}
    async with session.get(f"{base}{V2}/workspaces/{workspace}/jobs", params=params) as resp:
        data = await resp.json()
        if resp.status != 200:
            raise RuntimeError(f"GET jobs -> {resp.status}: {data}")
        return int(data["pagination"]["total_results"])


async def wait_all_completed(
    session: aiohttp.ClientSession, base: str, workspace: str, n: int, timeout_s: float, poll_s: float = 0.025
) -> float:
    """Poll until `n` jobs are completed; returns the monotonic time the last poll saw them all."""
    deadline = time.monotonic() + timeout_s
    last_error_check = 0.0
    while True:
        done = await count_jobs(session, base, workspace, "completed")
        now = time.monotonic()
        if done >= n:
            return now
        if now - last_error_check > 1.0:
            last_error_check = now
            failed = await count_jobs(session, base, workspace, "error")
            if failed:
                raise RuntimeError(f"{failed} job(s) in workspace {workspace!r} ended in error")
        if now > deadline:
            raise TimeoutError(f"only {done}/{n} jobs completed after {timeout_s:.0f}s")
        await asyncio.sleep(poll_s)


async def job_status(session: aiohttp.ClientSession, base: str, workspace: str, name: str) -> str:
    async with session.get(f"{base}{V2}/workspaces/{workspace}/jobs/{name}") as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET job {name} -> {resp.status}: {raw[:300]!r}")
        return str(json.loads(raw)["status"])


async def wait_job_polling(
    session: aiohttp.ClientSession, base: str, workspace: str, name: str, poll_s: float, timeout_s: float
) -> float:
    """Poll GET .../jobs/{name} every `poll_s`; perf_counter time of the poll that saw it completed."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = await job_status(session, base, workspace, name)
        now = time.perf_counter()
        if status == "completed":
            return now
        if status in TERMINAL:
            raise RuntimeError(f"job {name} ended {status}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {name} still {status} after {timeout_s:.0f}s")
        await asyncio.sleep(poll_s)


async def follow_lines(
    session: aiohttp.ClientSession, base: str, workspace: str, name: str, timeout_s: float
) -> AsyncIterator[tuple[int, dict[str, Any]]]:
    """`GET .../logs?follow=true`: (time.time_ns() at receipt, NDJSON object) per line, until it ends."""
    url = f"{base}{V2}/workspaces/{workspace}/jobs/{name}/logs"
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_read=timeout_s)
    async with session.get(url, params={"follow": "true"}, timeout=timeout) as resp:
        if resp.status != 200:
            raise RuntimeError(f"GET {url}?follow=true -> {resp.status}: {(await resp.read())[:300]!r}")
        while True:
            raw = await resp.content.readline()
            if not raw:
                return
            received = time.time_ns()
            if raw.strip():
                yield received, json.loads(raw)
