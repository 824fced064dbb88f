"""The `jobs` section: submit and spawn latency, N jobs end to end against the spawn floor, RSS."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import psutil

from scripts.bench.client import one_step_job, post_job, wait_all_completed
from scripts.bench.common import MAX_RUNNING_STEPS, V2, log, pct, profiler, quiesce_disk
from scripts.bench.daemon import AUTH_HEADERS, running_daemon
from scripts.bench.daemon import launcher as daemon_launcher


def machine_cpu() -> tuple[float, float, float]:
    """Seconds of CPU time so far, over all cores: (busy, idle incl. iowait, stolen by the host)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq) / tick, (idle + iowait) / tick, steal / tick


def busy_share(before: tuple[float, float, float], after: tuple[float, float, float]) -> tuple[float, float]:
    """Of all cores' time between two `machine_cpu()` readings: the share busy, the share stolen."""
    busy, idle, steal = (a - b for a, b in zip(after, before, strict=True))
    total = busy + idle + steal
    return (busy / total, steal / total) if total > 0 else (0.0, 0.0)


@dataclass
class RunResult:
    values: dict[str, float] = field(default_factory=dict)


async def phase_spawn_latency(
    session: aiohttp.ClientSession, base: str, count: int, gap_s: float, result: RunResult
) -> None:
    """Idle daemon, one POST at a time: submit latency, and POST-sent -> workload-started latency."""
    workspace = "bench-spawn"
    date = shutil.which("date") or "/bin/date"
    sent_ns: dict[str, int] = {}
    submit_ms: list[float] = []
    for i in range(count):
        name = f"spawn-{i}"
        body = one_step_job(name, [date, "+%s%N"])
        t_ns = time.time_ns()
        t0 = time.perf_counter()
        await post_job(session, base, workspace, body)
        submit_ms.append((time.perf_counter() - t0) * 1000)
        sent_ns[name] = t_ns
        await asyncio.sleep(gap_s)
    await wait_all_completed(session, base, workspace, count, timeout_s=60 + count)
    spawn_ms: list[float] = []
    for name, t_ns in sent_ns.items():
        async with session.get(f"{base}{V2}/workspaces/{workspace}/jobs/{name}/logs") as resp:
            raw = await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET logs of {name} -> {resp.status}: {raw[:300]!r}")
            page = json.loads(raw)
        started = [int(line["message"]) for line in page["data"] if line["message"].strip().isdigit()]
        if not started:
            raise RuntimeError(f"job {name}: no start time in its logs: {page}")
        spawn_ms.append((started[0] - t_ns) / 1e6)
    result.values["submit_idle_p50"] = pct(submit_ms, 50)
    result.values["submit_idle_p95"] = pct(submit_ms, 95)
    result.values["spawn_p50"] = pct(spawn_ms, 50)
    result.values["spawn_p95"] = pct(spawn_ms, 95)


async def phase_end_to_end(
    session: aiohttp.ClientSession, base: str, n: int, concurrency: int, result: RunResult
) -> None:
    """N one-step `true` jobs, submitted `concurrency` at a time: first POST -> all completed."""
    await _jobs_end_to_end(session, base, "bench-e2e", n, concurrency, result, "")


async def phase_one_post_at_a_time(
    session: aiohttp.ClientSession, base: str, n: int, result: RunResult
) -> None:
    """#13's own shape: N one-step `true` jobs submitted one after another by one client (each
    POST sent once the one before is answered, none waited for), first POST -> all completed."""
    await _jobs_end_to_end(session, base, "bench-seq", n, 1, result, "seq_")


async def _jobs_end_to_end(
    session: aiohttp.ClientSession,
    base: str,
    workspace: str,
    n: int,
    concurrency: int,
    result: RunResult,
    prefix: str,
) -> None:
    true = shutil.which("true") or "/bin/true"
    sem = asyncio.Semaphore(concurrency)
    submit_ms: list[float] = []

    async def submit(i: int) -> None:
        async with sem:
            t0 = time.perf_counter()
            await post_job(session, base, workspace, one_step_job(f"e2e-{i}", [true]))
            submit_ms.append((time.perf_counter() - t0) * 1000)

    t_start = time.monotonic()
    submitters = asyncio.gather(*(submit(i) for i in range(n)))
    try:
        await asyncio.wait_for(asyncio.shield(submitters), timeout=60 + n * 0.5)
    except BaseException:
        submitters.cancel()
        with contextlib.suppress(BaseException):
            await submitters
        raise
    t_submitted = time.monotonic()
    t_done = await wait_all_completed(session, base, workspace, n, timeout_s=120 + n * 1.0)
    result.values[f"{prefix}submit_load_p50"] = pct(submit_ms, 50)
    result.values[f"{prefix}submit_load_p95"] = pct(submit_ms, 95)
    result.values[f"{prefix}submit_all_s"] = t_submitted - t_start
    result.values[f"{prefix}e2e_s"] = t_done - t_start


async def task_spooler(n: int, tmp: Path) -> float | None:
    """Debian's task-spooler, the local peer #13 names: N `tsp true` one after another (each
    returns once its job is queued), then `tsp -w` for the last (one slot, as installed: jobs run
    in order). Its own server socket; its output files in `tmp`. None if tsp is not installed."""
    tsp = shutil.which("tsp")
    if tsp is None:
        return None
    env = {
        **os.environ,
        "TS_SOCKET": str(tmp / "tsp.socket"),
        "TS_MAXFINISHED": str(n + 10),
        "TS_SAVELIST": "",
        "TMPDIR": str(tmp),
    }
    env.pop("TS_ONFINISH", None)

    async def tsp_call(*argv: str) -> None:
        proc = await asyncio.create_subprocess_exec(
            tsp, *argv, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL
        )
        if await asyncio.wait_for(proc.wait(), 60) != 0:
            raise RuntimeError(f"tsp {' '.join(argv)} failed")

    true = shutil.which("true") or "/bin/true"
    os.makedirs(tmp, exist_ok=True)
    try:
        t0 = time.monotonic()
        for _ in range(n):
            await tsp_call(true)
        await tsp_call("-w")
        return time.monotonic() - t0
    finally:
        with contextlib.suppress(Exception):
            await tsp_call("-K")


async def spawn_floor(n: int, argv_for: Callable[[int, Path], list[str]], tmp: Path) -> float:
    """N processes straight from Python, MAX_RUNNING_STEPS at a time, own session, output to files."""
    sem = asyncio.Semaphore(MAX_RUNNING_STEPS)
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC

    async def one(i: int) -> None:
        async with sem:
            out = os.open(tmp / f"{i}.out", flags, 0o644)
            err = os.open(tmp / f"{i}.err", flags, 0o644)
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv_for(i, tmp),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    start_new_session=True,
                )
            finally:
                os.close(out)
                os.close(err)
            if await proc.wait() != 0:
                raise RuntimeError(f"floor process {i} failed")

    t0 = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(n))), timeout=60 + n * 0.5)
    return time.monotonic() - t0


async def phase_floor(n: int, tmp: Path, run_no: int, result: RunResult) -> None:
    # Fresh folders, nothing deleted until the whole bench is over: see quiesce_disk.
    true = shutil.which("true") or "/bin/true"
    bare = tmp / f"floor-{run_no}"
    bare.mkdir(parents=True)
    machine0 = machine_cpu()
    result.values["floor_s"] = await spawn_floor(n, lambda i, d: [true], bare)
    result.values["floor_machine_busy"], _ = busy_share(machine0, machine_cpu())


async def one_run(args: argparse.Namespace, run_no: int, tmp: Path, result: RunResult) -> None:
    data_dir = tmp / f"run{run_no}-data"
    quiesce_disk()
    async with running_daemon(data_dir, tmp, f"run{run_no}") as daemon:
        result.values["startup_s"] = daemon.startup_s
        await asyncio.sleep(0.5)
        result.values["rss_idle_mb"] = daemon.rss_mb()
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=max(args.concurrency, 4))
        async with aiohttp.ClientSession(
            headers=AUTH_HEADERS, timeout=timeout, connector=connector
        ) as session:
            log(f"run {run_no}: spawn latency ({args.spawn_jobs} sequential jobs)")
            await phase_spawn_latency(session, daemon.base_url, args.spawn_jobs, 0.02, result)
            log(f"run {run_no}: end-to-end, {args.jobs} jobs, {args.concurrency} POSTs in flight")
            me, cpu0 = psutil.Process(), psutil.Process(daemon.pid).cpu_times()
            mine0 = me.cpu_times()
            launcher = daemon_launcher(daemon)  # started by the spawn-latency phase
            launcher0 = launcher.cpu_times() if launcher is not None else None
            machine0 = machine_cpu()
            with profiler(daemon.pid, args.profile if run_no == 1 else None):
                await phase_end_to_end(session, daemon.base_url, args.jobs, args.concurrency, result)
            result.values["machine_busy"], result.values["machine_steal"] = busy_share(
                machine0, machine_cpu()
            )
            cpu1, mine1 = psutil.Process(daemon.pid).cpu_times(), me.cpu_times()
            result.values["daemon_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            result.values["daemon_sys_s"] = cpu1.system - cpu0.system
            result.values["client_cpu_s"] = (mine1.user + mine1.system) - (mine0.user + mine0.system)
            if launcher is not None and launcher0 is not None:
                with contextlib.suppress(psutil.Error):
                    launcher1 = launcher.cpu_times()
                    result.values["launcher_cpu_s"] = (launcher1.user + launcher1.system) - (
                        launcher0.user + launcher0.system
                    )
            log(f"run {run_no}: end-to-end, {args.jobs} jobs, one POST at a time")
            cpu0 = psutil.Process(daemon.pid).cpu_times()
            with profiler(daemon.pid, args.profile_seq if run_no == 1 else None):
                await phase_one_post_at_a_time(session, daemon.base_url, args.jobs, result)
            cpu1 = psutil.Process(daemon.pid).cpu_times()
            result.values["seq_daemon_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            await asyncio.sleep(1.0)
            result.values["rss_after_mb"] = daemon.rss_mb()
            launcher = daemon_launcher(daemon)
            if launcher is not None:
                with contextlib.suppress(psutil.Error):
                    result.values["launcher_rss_mb"] = launcher.memory_info().rss / 2**20
            log(
                f"run {run_no}: e2e {result.values['e2e_s']:.2f}s (daemon CPU {result.values['daemon_cpu_s']:.2f}s);"
                f" floor ({args.jobs} direct spawns)"
            )
            await asyncio.to_thread(quiesce_disk)  # the floor too starts from a synced disk
            await phase_floor(args.jobs, tmp, run_no, result)
            log(f"run {run_no}: floor {result.values['floor_s']:.2f}s")
            tsp_s = await task_spooler(args.jobs, tmp / f"tsp-{run_no}")
            if tsp_s is not None:
                result.values["tsp_s"] = tsp_s
                log(f"run {run_no}: task-spooler {tsp_s:.2f}s")
    # data_dir stays until the bench is over (removed with tmp): see quiesce_disk.
