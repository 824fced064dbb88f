"""The `quiet` section: what running steps that print nothing cost the daemon and its launcher.

`--quiet-steps` one-step `sleep` jobs are started (with room for all of them to run at once), and
once every one is active and a few seconds have passed, the CPU time of the daemon and of its
task launcher is read over `--quiet-s` seconds: the share of one core they take. The floor is 0:
a quiet task needs nothing from anyone until it prints or ends.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path

import aiohttp
import psutil

from scripts.bench.client import one_step_job, post_job
from scripts.bench.common import V2, log
from scripts.bench.daemon import AUTH_HEADERS, launcher, running_daemon

WORKSPACE = "bench-quiet"


def _cpu_s(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        times = process.cpu_times()
        total += times.user + times.system
    return total


async def _active_count(session: aiohttp.ClientSession, base: str) -> int:
    params = {"filter[status]": "active", "page_size": "1"}
    async with session.get(f"{base}{V2}/workspaces/{WORKSPACE}/jobs", params=params) as resp:
        return int(json.loads(await resp.read())["pagination"]["total_results"])


async def quiet_run(args: argparse.Namespace, run_no: int, tmp: Path) -> dict[str, float]:
    steps = args.quiet_steps
    env = {"LOCALJOBS_MAX_RUNNING_STEPS": str(steps + 8)}
    timeout = aiohttp.ClientTimeout(total=120)
    async with (
        running_daemon(tmp / f"quiet{run_no}-data", tmp, f"quiet{run_no}", extra_env=env) as daemon,
        aiohttp.ClientSession(headers=AUTH_HEADERS, timeout=timeout) as session,
    ):
        base = daemon.base_url
        log(f"quiet run {run_no}: starting {steps} sleeping steps")
        for i in range(steps):
            await post_job(session, base, WORKSPACE, one_step_job(f"quiet-{run_no}-{i}", ["sleep", "3600"]))
        deadline = time.monotonic() + 300
        while (active := await _active_count(session, base)) < steps:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {active} of {steps} quiet steps became active")
            await asyncio.sleep(0.5)
        await asyncio.sleep(3)  # start-up work done
        processes = [psutil.Process(daemon.pid)]
        if (found := launcher(daemon)) is not None:
            processes.append(found)
        cpu0, t0 = _cpu_s(processes), time.monotonic()
        await asyncio.sleep(args.quiet_s)
        cpu1, t1 = _cpu_s(processes), time.monotonic()
        share = (cpu1 - cpu0) / (t1 - t0) * 100
        log(f"quiet run {run_no}: {steps} quiet steps cost {share:.2f}% of a core (daemon + launcher)")
        for i in range(steps):
            async with session.post(
                f"{base}{V2}/workspaces/{WORKSPACE}/jobs/quiet-{run_no}-{i}/cancel"
            ) as resp:
                await resp.read()
    return {"steps": float(steps), "cpu_pct": share}


def quiet_table(results: list[dict[str, float]]) -> str:
    if not results:
        return ""
    shares = sorted(r["cpu_pct"] for r in results)
    median = shares[len(shares) // 2]
    return (
        "| quiet running steps | daemon + launcher CPU, % of one core (median of "
        f"{len(results)}) | floor |\n|---|---|---|\n| {int(results[0]['steps'])} | {median:.2f} "
        f"(runs: {', '.join(f'{s:.2f}' for s in shares)}) | 0 |"
    )
