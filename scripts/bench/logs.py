"""The `logs` section: ingestion rate, submit latency during a flood, follow latency, and `tail`
latency on a big log."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

from scripts.bench.client import TERMINAL, follow_lines, job_status, one_step_job, post_job, wait_job_polling
from scripts.bench.common import V2, log, pct, profiler, run_argv
from scripts.bench.daemon import AUTH_HEADERS, running_daemon
from tests.daemon_process import DaemonProcess

LINE_BYTES = 100  # 99 characters + newline
LOG_LINE = "x" * (LINE_BYTES - 1)


def shell_job(name: str, script: str) -> dict[str, Any]:
    return one_step_job(name, ["/bin/sh", "-c", script])


def flood_script(lines: int) -> str:
    return f"yes {LOG_LINE} | head -n {lines}"


async def tail_message(
    session: aiohttp.ClientSession, base: str, workspace: str, name: str
) -> tuple[str, int]:
    async with session.get(
        f"{base}{V2}/workspaces/{workspace}/jobs/{name}/logs", params={"tail": "1"}
    ) as resp:
        raw = await resp.read()
        if resp.status != 200:
            raise RuntimeError(f"GET logs of {name} -> {resp.status}: {raw[:300]!r}")
        page = json.loads(raw)
    return page["data"][-1]["message"], int(page["total"])


def db_bytes(data_dir: Path, suffix: str = "*") -> int:
    return sum(p.stat().st_size for p in data_dir.glob(f"localjobs.db{suffix}") if p.is_file())


def disk_bytes(data_dir: Path) -> int:
    """Disk blocks in use under the data dir: the store, the stored logs and the task folders
    (whose output files are the intake, given back once stored)."""
    return sum(p.stat().st_blocks * 512 for p in data_dir.rglob("*") if p.is_file() and not p.is_symlink())


@dataclass
class LogsResult:
    values: dict[str, float] = field(default_factory=dict)
    tail_big: list[float] = field(default_factory=list)
    tail_small: list[float] = field(default_factory=list)
    first_big: list[float] = field(default_factory=list)
    follow_ms: list[float] = field(default_factory=list)


async def phase_ingestion(
    session: aiohttp.ClientSession, base: str, lines: int, tmp: Path, run_no: int, result: LogsResult
) -> None:
    """(a) one step floods its output; submit -> completed, vs the same command straight to /dev/null."""
    workspace = "bench-logs"
    nbytes = lines * LINE_BYTES
    direct_null = ["/bin/sh", "-c", f"{flood_script(lines)} > /dev/null"]
    out_file = tmp / f"flood{run_no}.out"
    direct_file = ["/bin/sh", "-c", f"{flood_script(lines)} > {out_file}"]
    result.values["ingest_null_s"] = await run_argv(direct_null)
    name = f"flood-{run_no}"
    # The workload prints when it finished writing, so the time splits into "running" and "draining".
    script = f"{flood_script(lines)}; date +%s%N"
    t_ns = time.time_ns()
    t0 = time.perf_counter()
    await post_job(session, base, workspace, shell_job(name, script))
    t1 = await wait_job_polling(session, base, workspace, name, 0.025, 600)
    done_ns = t_ns + int((t1 - t0) * 1e9)
    message, total = await tail_message(session, base, workspace, name)
    if total != lines + 1:
        raise RuntimeError(f"flood job stored {total} lines, expected {lines + 1}")
    result.values["ingest_s"] = t1 - t0
    result.values["ingest_workload_s"] = (int(message) - t_ns) / 1e9
    result.values["ingest_drain_s"] = (done_ns - int(message)) / 1e9
    result.values["ingest_mb_s"] = nbytes / 1e6 / (t1 - t0)
    result.values["ingest_null_mb_s"] = nbytes / 1e6 / result.values["ingest_null_s"]
    result.values["ingest_file_s"] = await run_argv(direct_file)
    result.values["ingest_file_mb_s"] = nbytes / 1e6 / result.values["ingest_file_s"]
    out_file.unlink(missing_ok=True)


async def phase_write_contention(
    session: aiohttp.ClientSession, base: str, lines: int, run_no: int, result: LogsResult
) -> None:
    """Submit latency (one POST at a time, 20 ms apart) on an idle daemon, then while one step floods
    its output: every store write shares one write transaction lock with the log ingestion."""
    workspace = "bench-contention"
    true = shutil.which("true") or "/bin/true"

    async def timed_post(name: str) -> float:
        t0 = time.perf_counter()
        await post_job(session, base, workspace, one_step_job(name, [true]))
        return (time.perf_counter() - t0) * 1000

    idle = []
    for i in range(50):
        idle.append(await timed_post(f"idle-{run_no}-{i}"))
        await asyncio.sleep(0.02)
    flood = f"contention-flood-{run_no}"
    await post_job(session, base, workspace, shell_job(flood, flood_script(lines)))
    await asyncio.sleep(0.5)
    busy: list[float] = []
    while len(busy) < 200 and await job_status(session, base, workspace, flood) not in TERMINAL:
        busy.append(await timed_post(f"busy-{run_no}-{len(busy)}"))
        await asyncio.sleep(0.02)
    await wait_job_polling(session, base, workspace, flood, 0.05, 600)
    if len(busy) < 5:
        raise RuntimeError(f"the flood ended after {len(busy)} POSTs: too short to measure contention")
    result.values["post_idle_p50"] = pct(idle, 50)
    result.values["post_idle_p95"] = pct(idle, 95)
    result.values["post_flood_p50"] = pct(busy, 50)
    result.values["post_flood_p95"] = pct(busy, 95)
    result.values["post_flood_n"] = len(busy)


async def phase_follow(
    session: aiohttp.ClientSession, base: str, seconds: float, run_no: int, result: LogsResult
) -> None:
    """(c) a step prints its own `date +%s%N` every 100 ms; latency = receipt - printed instant."""
    workspace = "bench-follow"
    name = f"follow-{run_no}"
    count = max(2, int(seconds * 10))
    script = f"i=0; while [ $i -lt {count} ]; do date +%s%N; sleep 0.1; i=$((i+1)); done"
    await post_job(session, base, workspace, shell_job(name, script))
    got: list[float] = []
    async for received, obj in follow_lines(session, base, workspace, name, timeout_s=seconds + 120):
        text = obj["message"].strip()
        if text.isdigit():
            got.append((received - int(text)) / 1e6)
    if len(got) != count:
        raise RuntimeError(f"follow stream gave {len(got)} timestamped lines, expected {count}")
    result.follow_ms = got


async def timed_gets(
    session: aiohttp.ClientSession, url: str, params: dict[str, str], expect_lines: int
) -> float:
    t0 = time.perf_counter()
    async with session.get(url, params=params) as resp:
        body = await resp.read()
    elapsed = (time.perf_counter() - t0) * 1000
    if resp.status != 200:
        raise RuntimeError(f"GET {url} {params} -> {resp.status}: {body[:300]!r}")
    if len(json.loads(body)["data"]) != expect_lines:
        raise RuntimeError(f"GET {url} {params}: expected {expect_lines} lines")
    return elapsed


async def phase_big_log(
    args: argparse.Namespace,
    session: aiohttp.ClientSession,
    daemon: DaemonProcess,
    run_no: int,
    result: LogsResult,
) -> None:
    """(b) `tail=100` on a ~log_gb GB log vs on a 1 KB log, interleaved; DB size on disk."""
    base = daemon.base_url
    workspace = "bench-biglog"
    lines = max(1, int(args.log_gb * 1e9 / LINE_BYTES))
    small, big = f"small-{run_no}", f"big-{run_no}"
    # The small log is 1 KB as 100 lines of 10 bytes, so `tail=100` returns 100 lines from both logs.
    await post_job(session, base, workspace, shell_job(small, "yes 123456789 | head -n 100"))
    await wait_job_polling(session, base, workspace, small, 0.025, 60)
    db0 = db_bytes(daemon.data_dir)
    disk0 = disk_bytes(daemon.data_dir)
    log(f"logs run {run_no}: writing a {lines * LINE_BYTES / 1e9:.2f} GB log ({lines:,} lines)")
    cpu0 = psutil.Process(daemon.pid).cpu_times()
    t0 = time.perf_counter()
    with profiler(daemon.pid, args.profile_logs if run_no == 1 else None):
        await post_job(session, base, workspace, shell_job(big, flood_script(lines)))
        t1 = await wait_job_polling(session, base, workspace, big, 0.1, args.big_log_timeout)
    cpu1 = psutil.Process(daemon.pid).cpu_times()
    result.values["big_write_s"] = t1 - t0
    result.values["big_mb_s"] = lines * LINE_BYTES / 1e6 / (t1 - t0)
    result.values["big_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    result.values["big_lines"] = lines
    result.values["rss_big_mb"] = daemon.rss_mb()
    _, total = await tail_message(session, base, workspace, big)
    if total != lines:
        raise RuntimeError(f"big log stored {total} lines, expected {lines}")
    result.values["db_bytes"] = db_bytes(daemon.data_dir)
    result.values["db_wal_bytes"] = db_bytes(daemon.data_dir, "-wal")
    result.values["db_growth_bytes"] = result.values["db_bytes"] - db0
    result.values["disk_growth_bytes"] = disk_bytes(daemon.data_dir) - disk0
    # The floor: the same command writing the same output to a file on the same disk.
    out_file = daemon.data_dir / f"floor-{run_no}.out"
    result.values["big_file_s"] = await run_argv(["/bin/sh", "-c", f"{flood_script(lines)} > {out_file}"])
    out_file.unlink(missing_ok=True)
    urls = {k: f"{base}{V2}/workspaces/{workspace}/jobs/{k}/logs" for k in (small, big)}
    for _ in range(3):  # warm-up
        await timed_gets(session, urls[big], {"tail": "100"}, 100)
        await timed_gets(session, urls[small], {"tail": "100"}, 100)
    for _ in range(args.tail_requests):
        result.tail_big.append(await timed_gets(session, urls[big], {"tail": "100"}, 100))
        result.tail_small.append(await timed_gets(session, urls[small], {"tail": "100"}, 100))
        result.first_big.append(await timed_gets(session, urls[big], {"limit": "100"}, 100))
    log(
        f"logs run {run_no}: {lines * LINE_BYTES / 1e9:.2f} GB in {t1 - t0:.1f}s; tail=100 p50 "
        f"{pct(result.tail_big, 50):.2f} ms (1 KB log: {pct(result.tail_small, 50):.2f} ms); "
        f"DB {result.values['db_bytes'] / 1e9:.2f} GB"
    )


async def logs_run(args: argparse.Namespace, run_no: int, tmp: Path) -> LogsResult:
    result = LogsResult()
    timeout = aiohttp.ClientTimeout(total=120)
    data_dir = tmp / f"logs{run_no}-data"
    async with (
        running_daemon(data_dir, tmp, f"logs{run_no}") as daemon,
        aiohttp.ClientSession(headers=AUTH_HEADERS, timeout=timeout) as session,
    ):
        log(f"logs run {run_no}: ingestion of {args.log_mb} MB")
        await phase_ingestion(
            session, daemon.base_url, int(args.log_mb * 1e6 / LINE_BYTES), tmp, run_no, result
        )
        log(
            f"logs run {run_no}: {result.values['ingest_mb_s']:.1f} MB/s through the daemon, "
            f"{result.values['ingest_null_mb_s']:.0f} MB/s to /dev/null; follow latency ({args.follow_s:.0f} s)"
        )
        await phase_follow(session, daemon.base_url, args.follow_s, run_no, result)
        log(
            f"logs run {run_no}: follow p50 {pct(result.follow_ms, 50):.1f} ms; submit latency during a flood"
        )
        await phase_write_contention(
            session, daemon.base_url, int(args.log_mb * 1e6 / LINE_BYTES), run_no, result
        )
        log(
            f"logs run {run_no}: POST p50 {result.values['post_idle_p50']:.1f} ms idle, "
            f"{result.values['post_flood_p50']:.1f} ms during a flood"
        )
    if not args.keep_tmp:
        shutil.rmtree(data_dir, ignore_errors=True)
    if run_no <= args.big_log_runs and args.log_gb > 0:
        # Without the per-task size limit, so the whole log really is stored (the default keeps 512 MiB).
        big_dir = tmp / f"biglog{run_no}-data"
        env = {"LOCALJOBS_LOG_MAX_BYTES_PER_TASK": "0"}
        async with (
            running_daemon(big_dir, tmp, f"biglog{run_no}", extra_env=env) as daemon,
            aiohttp.ClientSession(headers=AUTH_HEADERS, timeout=timeout) as session,
        ):
            await phase_big_log(args, session, daemon, run_no, result)
        if not args.keep_tmp:
            shutil.rmtree(big_dir, ignore_errors=True)
    return result
