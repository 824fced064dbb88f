"""Does history slow the present, and what does one job cost? (issue #13, points 5 and 6)

    .venv/bin/python scripts/bench_history.py                         # both sections
    .venv/bin/python scripts/bench_history.py --only history --sizes 0,100000,1000000
    .venv/bin/python scripts/bench_history.py --only perjob --perjob-n 300 --rounds 7

`history`: one data dir per size (finished jobs, one step each, written by storage.bulk while no
  daemon runs; each bigger store starts as a copy of the one before; the fill time is reported).
  In each round every size gets a fresh `localjobs serve` (127.0.0.1, port 0, a bearer token), in
  turn, asked over HTTP, one request at a time:
  - submit: POST one-step `true` jobs, with a 20 ms pause between them;
  - List Jobs, first page (the defaults: 10 newest first) of the workspace holding the history;
  - List Jobs filtered by `status=completed` (what bench.py polls);
  - List Steps, first page (the defaults: 25 oldest first) of the workspace (`jobs/-/steps`),
    and of one job (`jobs/<name>/steps`);
  and its RSS is read after start-up and after the requests, and its start-up timed (to the
  ready line). p50 of each (median over rounds), and the ratio to the smallest size (per round,
  then the median).
`perjob`: N one-step `true` jobs submitted one after another by one HTTP client, each waited for
  (its `logs?follow=true` stream, which ends when the job has finished and every line was sent;
  then its status is checked), against N `true` spawned directly one after another (posix_spawn,
  output to a new file each, as a task's), and, when installed, Debian's task-spooler
  (`tsp -f true`, N times: each waits for its job). Rounds alternate the three; the ratio is taken
  per round, then the median.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.models import JobStatus, PlatformJobSpec  # noqa: E402
from storage.bulk import FilledJob, FilledStep, bulk_fill  # noqa: E402
from tests.daemon_process import DaemonProcess  # noqa: E402

V2 = "/apis/jobs/v2"
WORKSPACE = "history"
TOKEN = "bench-history-token-0123456789abcdef"
STATUS_CYCLE = [JobStatus.COMPLETED] * 7 + [JobStatus.ERROR] * 2 + [JobStatus.CANCELLED]


def log(message: str) -> None:
    print(f"[bench_history {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def p50(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def one_step_job(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": "bench",
        "spec": {},
        "platform_spec": {
            "steps": [{"name": "step", "executor": {"provider": "subprocess", "command": ["true"]}}]
        },
    }


# ------------------------------------------------------------------------------- history


def history(start: int, stop: int) -> Iterator[FilledJob]:
    spec = PlatformJobSpec.model_validate(one_step_job("x")["platform_spec"])
    base_us = int(time.time() * 1e6) - 86_400_000_000 * 365  # a year ago, 1 ms apart
    for i in range(start, stop):
        status = STATUS_CYCLE[i % len(STATUS_CYCLE)]
        created = base_us + i * 1000
        details = {"message": f"Job {status.value}"}
        errors = {"message": "exit code 1", "exit_code": 1} if status is JobStatus.ERROR else None
        step = FilledStep(status, created, created + 500, details, errors, active_since=created + 100)
        yield FilledJob(
            workspace=WORKSPACE,
            name=f"old-{i:08d}",
            source="bench",
            platform_spec=spec,
            status=status,
            created_at=created,
            updated_at=created + 500,
            steps=[step],
            status_details=details,
            error_details=errors,
        )


def start_daemon(data_dir: Path, log_dir: Path) -> DaemonProcess:
    daemon = DaemonProcess(log_dir, data_dir=data_dir, env={"LOCALJOBS_TOKEN": TOKEN})
    daemon.start(timeout_s=120)
    return daemon


def rss_mb(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / 2**20


async def timed_get(session: aiohttp.ClientSession, url: str, params: dict[str, str], n: int) -> list[float]:
    times = []
    for i in range(n + 3):  # 3 warm-ups
        t0 = time.perf_counter()
        async with session.get(url, params=params) as resp:
            await resp.read()
            if resp.status != 200:
                raise RuntimeError(f"GET {url} -> {resp.status}")
        if i >= 3:
            times.append((time.perf_counter() - t0) * 1e3)
    return times


async def measure_history(base: str, size: int, args: argparse.Namespace, tag: str) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    found: dict[str, float] = {}
    async with aiohttp.ClientSession(headers=headers) as session:
        submits = []
        for i in range(args.submits):
            t0 = time.perf_counter()
            async with session.post(
                f"{base}{V2}/workspaces/{WORKSPACE}/jobs", json=one_step_job(f"{tag}-{i}")
            ) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"POST -> {r.status}")
            submits.append((time.perf_counter() - t0) * 1e3)
            await asyncio.sleep(0.02)
        found["submit"] = p50(submits)
        await asyncio.sleep(0.5)  # let the submitted jobs finish
        jobs = f"{base}{V2}/workspaces/{WORKSPACE}/jobs"
        one_job = "old-00000005" if size > 5 else f"{tag}-5"
        queries = {
            "list_jobs": (jobs, {}),
            "list_jobs_completed": (jobs, {"filter[status]": "completed"}),
            "list_steps_ws": (f"{jobs}/-/steps", {}),
            "list_steps_job": (f"{jobs}/{one_job}/steps", {}),
        }
        for key, (url, params) in queries.items():
            found[key] = p50(await timed_get(session, url, params, args.lists))
    return found


def fill_stores(sizes: list[int], tmp: Path) -> dict[int, Path]:
    """One data dir per size; each bigger one starts as a copy of the one before it."""
    stores: dict[int, Path] = {}
    previous: tuple[int, Path] | None = None
    for size in sizes:
        data_dir = tmp / f"history-{size}"
        if previous is None:
            data_dir.mkdir(mode=0o700)
        else:
            shutil.copytree(previous[1], data_dir)
        filled = previous[0] if previous else 0
        t0 = time.monotonic()
        bulk_fill(data_dir / "localjobs.db", history(filled, size))
        log(f"filled {filled:,} -> {size:,} jobs in {time.monotonic() - t0:.1f} s")
        stores[size] = previous_dir = data_dir
        previous = (size, previous_dir)
    return stores


def section_history(args: argparse.Namespace, tmp: Path) -> None:
    sizes = [int(s) for s in args.sizes.split(",")]
    stores = fill_stores(sizes, tmp)
    runs: dict[int, list[dict[str, float]]] = {size: [] for size in sizes}
    # Sizes alternate within each round, so the machine's drift hits every size alike.
    for run in range(args.history_runs):
        for size in sizes:
            t0 = time.monotonic()
            daemon = start_daemon(stores[size], tmp / f"logs-history-{size}-{run}")
            start_s = time.monotonic() - t0
            try:
                time.sleep(0.5)
                rss0 = rss_mb(daemon.pid)
                one = asyncio.run(measure_history(daemon.base_url, size, args, f"now-{size}-{run}"))
                one["rss_start"], one["rss_end"] = rss0, rss_mb(daemon.pid)
                one["start_s"] = start_s
                runs[size].append(one)
            finally:
                daemon.stop(timeout_s=60)
            log(f"{size:,} jobs, run {run + 1}: " + ", ".join(f"{k} {v:.2f}" for k, v in one.items()))
    keys = list(runs[sizes[0]][0])
    found = {size: {k: p50([r[k] for r in runs[size]]) for k in keys} for size in sizes}
    print(f"\nHistory: p50 in ms (median over {args.history_runs} daemon runs); RSS in MB; start-up in s")
    print(f"{'jobs':>10} " + " ".join(f"{k:>20}" for k in keys))
    for size in sizes:
        print(f"{size:>10,} " + " ".join(f"{found[size][k]:>20.2f}" for k in keys))
    base = sizes[0]
    for size in sizes[1:]:
        # The ratio of each round's pair (same minute of the machine), then the median.
        ratios = [p50([runs[size][i][k] / runs[base][i][k] for i in range(args.history_runs)]) for k in keys]
        print(f"{'x' + format(size, ','):>10} " + " ".join(f"{r:>20.2f}" for r in ratios))


# -------------------------------------------------------------------------------- perjob


async def daemon_sequential(base: str, n: int, tag: str) -> float:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
        jobs = f"{base}{V2}/workspaces/{WORKSPACE}/jobs"
        async with session.get(jobs) as r:  # the connection is open before the clock starts
            await r.read()
        t0 = time.perf_counter()
        for i in range(n):
            name = f"{tag}-{i}"
            async with session.post(jobs, json=one_step_job(name)) as r:
                await r.read()
                if r.status != 201:
                    raise RuntimeError(f"POST -> {r.status}")
            async with session.get(f"{jobs}/{name}/logs", params={"follow": "true"}) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"follow -> {r.status}")
        elapsed = time.perf_counter() - t0
        for i in (0, n - 1):
            async with session.get(f"{jobs}/{tag}-{i}") as r:
                status = (await r.json())["status"]
                if status != "completed":
                    raise RuntimeError(f"job {tag}-{i} ended {status}")
        return elapsed


def spawn_floor(n: int, folder: Path) -> float:
    true = shutil.which("true") or "/bin/true"
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
    t0 = time.perf_counter()
    for i in range(n):
        out = os.open(folder / f"{i}.out", flags, 0o644)
        try:
            pid = os.posix_spawn(
                true,
                [true],
                os.environ,
                file_actions=[(os.POSIX_SPAWN_DUP2, out, 1), (os.POSIX_SPAWN_DUP2, out, 2)],
                setsid=True,
            )
        finally:
            os.close(out)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise RuntimeError("true failed")
    return time.perf_counter() - t0


def tsp_sequential(n: int, folder: Path) -> float | None:
    tsp = shutil.which("tsp")
    if tsp is None:
        return None
    env = {**os.environ, "TS_SOCKET": str(folder / "tsp.socket"), "TMPDIR": str(folder), "TS_SAVELIST": ""}
    subprocess.run([tsp, "-S", "1"], env=env, check=True, capture_output=True)  # starts its server
    t0 = time.perf_counter()
    for _ in range(n):
        subprocess.run([tsp, "-f", "true"], env=env, check=True, capture_output=True)
    elapsed = time.perf_counter() - t0
    subprocess.run([tsp, "-K"], env=env, capture_output=True)
    return elapsed


def section_perjob(args: argparse.Namespace, tmp: Path) -> None:
    n = args.perjob_n
    daemon = start_daemon(tmp / "perjob-data", tmp / "logs-perjob")
    results: list[dict[str, float]] = []
    try:
        asyncio.run(daemon_sequential(daemon.base_url, 20, "warm"))  # brings up the launcher
        proc = psutil.Process(daemon.pid)
        for rnd in range(args.rounds):
            found: dict[str, float] = {}
            cpu0 = sum(proc.cpu_times()[:2])
            found["daemon"] = asyncio.run(daemon_sequential(daemon.base_url, n, f"seq{rnd}"))
            found["daemon_cpu"] = sum(proc.cpu_times()[:2]) - cpu0
            folder = tmp / f"floor-{rnd}"
            folder.mkdir()
            found["floor"] = spawn_floor(n, folder)
            tsp_folder = tmp / f"tsp-{rnd}"
            tsp_folder.mkdir()
            tsp = tsp_sequential(n, tsp_folder)
            if tsp is not None:
                found["tsp"] = tsp
            found["ratio"] = found["daemon"] / found["floor"]
            results.append(found)
            log(f"round {rnd + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in found.items()))
    finally:
        daemon.stop(timeout_s=60)
    print(f"\nPer-job cost: {n} one-step `true` jobs one after another, {args.rounds} rounds (medians, s)")
    for key in results[0]:
        print(
            f"  {key:<11} {p50([r[key] for r in results]):8.3f}   "
            + " ".join(f"{r[key]:.3f}" for r in results)
        )
    print(
        f"  per job: daemon {p50([r['daemon'] for r in results]) / n * 1e3:.2f} ms,"
        f" daemon CPU {p50([r['daemon_cpu'] for r in results]) / n * 1e3:.2f} ms,"
        f" floor {p50([r['floor'] for r in results]) / n * 1e3:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="history,perjob", help="sections: history, perjob")
    parser.add_argument("--sizes", default="0,100000,1000000", help="history sizes, ascending")
    parser.add_argument("--submits", type=int, default=100, help="POSTs timed at each size")
    parser.add_argument("--lists", type=int, default=200, help="GETs timed per list query")
    parser.add_argument("--history-runs", type=int, default=3, help="daemons started at each size")
    parser.add_argument("--perjob-n", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="work in this folder and leave it (else a temporary one)")
    args = parser.parse_args()
    sections = set(args.only.split(","))
    if args.keep:
        args.keep.mkdir(parents=True)
        tmp_cm: Any = None
        tmp = args.keep
    else:
        tmp_cm = tempfile.TemporaryDirectory(prefix="localjobs-bench-history-")
        tmp = Path(tmp_cm.name)
    try:
        if "history" in sections:
            section_history(args, tmp)
        if "perjob" in sections:
            section_perjob(args, tmp)
    finally:
        if tmp_cm is not None:
            tmp_cm.cleanup()


if __name__ == "__main__":
    main()
