#!/usr/bin/env python
"""Benchmark a real `localjobs serve` subprocess over HTTP and print a markdown table.

    python scripts/bench.py [--jobs N] [--runs R] [--steps S] [--quick]

Each run starts the daemon as `<venv>/bin/localjobs serve --port 0 --data-dir <tmpdir>`, waits for
its `localjobs ready http://...` line and measures, on a fresh empty store:

  * idle RSS right after start (psutil);
  * submit latency and submit-to-spawn latency on an otherwise idle daemon: jobs run
    `date +%s%N`, so the workload itself prints the wall-clock instant it started (read back via the
    logs API) and that is compared with the instant the POST was sent;
  * end-to-end time for N one-step `true` jobs (first POST sent -> all N jobs `completed`), with the
    submit latency under that load; then, in the same run, the physical floor: N `true` processes
    spawned straight from Python (same concurrency as the daemon's max_running_steps, own session,
    output to files), and RSS after the run;

and, on a store pre-filled with S steps (written before the daemon starts), List Steps latency for
first / filtered / per-job / deep pages under several sorts.

Medians over R runs are reported. The daemon is always stopped (SIGTERM, then SIGKILL), and gets
SIGTERM too should this script die (PR_SET_PDEATHSIG). Results and methodology: docs/benchmarks.md.

Extras: `--profile FILE` runs py-spy (if installed in the venv) on the daemon during run 1's N-job
phase and writes collapsed stacks; `--source DIR` benchmarks another source tree (e.g. a
`git archive HEAD` snapshot) through PYTHONPATH; `--skip-jobs` runs only the List Steps part.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime as dt
import json
import os
import platform
import random
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parent.parent


def _source_root() -> Path:
    """`--source DIR`: benchmark the code in DIR (e.g. a `git archive` snapshot) instead of ROOT."""
    for i, arg in enumerate(sys.argv):
        if arg == "--source" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if arg.startswith("--source="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT


SOURCE = _source_root()
sys.path.insert(0, str(SOURCE))

from runner.models import PlatformJobSpec, new_entity_id  # noqa: E402
from storage import Repository  # noqa: E402

V2 = "/apis/jobs/v2"
READY = re.compile(r"localjobs ready (http://\S+)")
MAX_RUNNING_STEPS = 64  # the daemon's default (runner/settings.py), used for the floor too
# The reference implementation's figures, for scale.
REF_S_PER_100_JOBS = 150.0
REF_LIST_100_MS = 3500.0
REF_IDLE_RSS_MB = 259.0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def localjobs_executable() -> str:
    for candidate in (Path(sys.executable).parent / "localjobs", ROOT / ".venv" / "bin" / "localjobs"):
        if candidate.exists():
            return str(candidate)
    found = shutil.which("localjobs")
    if found is None:
        raise SystemExit("bench: cannot find the `localjobs` executable (install the project into the venv)")
    return found


# ---------------------------------------------------------------------------------------------
# The daemon as a subprocess
# ---------------------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # If the bench itself is killed, the daemon gets SIGTERM instead of lingering (Linux only).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DaemonProcess:
    def __init__(self, data_dir: Path, log_dir: Path, label: str, extra_args: Sequence[str] = ()) -> None:
        self.data_dir = data_dir
        self.stdout_path = log_dir / f"{label}.stdout"
        self.stderr_path = log_dir / f"{label}.stderr"
        self.extra_args = list(extra_args)
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.startup_s = float("nan")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _spawn(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALJOBS_")}
        if SOURCE != ROOT:
            # Ahead of the venv's editable install (its finder comes after sys.path entries).
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
        argv = [localjobs_executable(), "serve", "--port", "0", "--data-dir", str(self.data_dir)]
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            return subprocess.Popen(
                [*argv, *self.extra_args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    async def start(self, timeout_s: float = 60.0) -> None:
        t0 = time.monotonic()
        self.proc = self._spawn()
        deadline = t0 + timeout_s
        while True:
            text = self.stdout_path.read_text(errors="replace")
            match = READY.search(text)
            if match:
                self.base_url = match.group(1)
                self.startup_s = time.monotonic() - t0
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}:\n{self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"daemon not ready after {timeout_s}s:\n{self.stderr_tail()}")
            await asyncio.sleep(0.01)

    def stderr_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.stderr_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def rss_mb(self) -> float:
        return psutil.Process(self.pid).memory_info().rss / 2**20

    def stop(self, grace_s: float = 30.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            log(f"daemon {proc.pid} ignored SIGTERM for {grace_s}s: SIGKILL")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.asynccontextmanager
async def running_daemon(
    data_dir: Path, log_dir: Path, label: str, extra_args: Sequence[str] = ()
) -> AsyncIterator[DaemonProcess]:
    daemon = DaemonProcess(data_dir, log_dir, label, extra_args)
    try:
        await daemon.start()
        yield daemon
    finally:
        daemon.stop()
        if daemon.proc is not None and daemon.proc.returncode not in (0, None):
            log(f"daemon {label} exited with {daemon.proc.returncode}; stderr tail:\n{daemon.stderr_tail()}")


# ---------------------------------------------------------------------------------------------
# HTTP helpers
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------


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
    workspace = "bench-e2e"
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
    result.values["submit_load_p50"] = pct(submit_ms, 50)
    result.values["submit_load_p95"] = pct(submit_ms, 95)
    result.values["submit_all_s"] = t_submitted - t_start
    result.values["e2e_s"] = t_done - t_start


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


# The daemon's own wrapper (runner/executors/subprocess.py): what it really spawns per task.
_WRAPPER = 'f=$1; shift; trap : HUP INT TERM; "$@"; rc=$?; printf "%s\\n" "$rc" >"$f"; exit "$rc"'


async def phase_floor(n: int, tmp: Path, result: RunResult) -> None:
    true = shutil.which("true") or "/bin/true"
    floor_dir = tmp / "floor"
    shutil.rmtree(floor_dir, ignore_errors=True)
    floor_dir.mkdir(parents=True)
    result.values["floor_s"] = await spawn_floor(n, lambda i, d: [true], floor_dir)
    shutil.rmtree(floor_dir, ignore_errors=True)
    floor_dir.mkdir(parents=True)
    result.values["floor_wrapped_s"] = await spawn_floor(
        n, lambda i, d: ["/bin/sh", "-c", _WRAPPER, "localjobs-bench", str(d / f"{i}.exit"), true], floor_dir
    )
    shutil.rmtree(floor_dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# List Steps on a big store
# ---------------------------------------------------------------------------------------------

STEPS_PER_JOB = 10
# Terminal statuses, plus `paused`: the only non-terminal status a restarted daemon leaves alone
# (created/resuming steps would be started, active/pending ones settled as lost at start-up).
STATUS_MIX = [("completed", 0.55), ("error", 0.20), ("cancelled", 0.15), ("paused", 0.10)]


def populate_store(data_dir: Path, total_steps: int, seed: int = 7) -> dict[str, Any]:
    """Create the schema through storage.Repository, then bulk-insert rows encoded as it encodes them.

    (Writing 100k steps one by one through Repository.transaction()/insert_step/update_step_state
    takes ~37 s on a 2-vCPU box, ~0.37 ms per step; executemany takes a couple of seconds.)
    """
    rng = random.Random(seed)
    db_path = data_dir / "localjobs.db"

    async def migrate() -> None:
        repo = await Repository.open(db_path)
        await repo.close()

    asyncio.run(migrate())  # called in a worker thread: no loop is running there
    spec = PlatformJobSpec.model_validate(
        {
            "steps": [
                {"name": f"step-{i}", "executor": {"provider": "subprocess", "command": ["true"]}}
                for i in range(STEPS_PER_JOB)
            ]
        }
    )
    spec_json = spec.model_dump_json()
    step_specs = [s.model_dump_json() for s in spec.steps]
    auth = json.dumps({"principal_id": "bench", "principal_groups": []}, separators=(",", ":"))
    n_jobs = max(1, total_steps // STEPS_PER_JOB)
    base_us = int(time.time() * 1e6) - total_steps * 10_000
    statuses, weights = zip(*STATUS_MIX, strict=True)
    jobs: list[tuple[Any, ...]] = []
    steps: list[tuple[Any, ...]] = []
    for j in range(n_jobs):
        workspace = "bench" if j % 10 else "other"
        name = f"job-{j:06d}"
        attempt = new_entity_id("platform-job-attempt")
        created = base_us + j * STEPS_PER_JOB * 10_000
        step_status = rng.choices(statuses, weights, k=STEPS_PER_JOB)
        job_status = step_status[-1]
        jobs.append(
            (
                j + 1,
                new_entity_id("platform-job"),
                workspace,
                name,
                "bench",
                "{}",
                spec_json,
                f"job-fileset-{name}",
                auth,
                attempt,
                job_status,
                created,
                created + STEPS_PER_JOB * 10_000,
            )
        )
        for i in range(STEPS_PER_JOB):
            s_created = created + i * 10_000
            # updated_at order differs from created_at order
            s_updated = s_created + rng.randrange(1, 50_000_000)
            status = step_status[i]
            details = json.dumps({"message": status.capitalize(), "pid": 1000 + i}, separators=(",", ":"))
            errors = (
                json.dumps({"message": "exit code 1", "exit_code": 1}, separators=(",", ":"))
                if status == "error"
                else None
            )
            steps.append(
                (
                    new_entity_id("platform-job-step"),
                    workspace,
                    j + 1,
                    name,
                    "bench",
                    attempt,
                    f"job-fileset-{name}",
                    auth,
                    i,
                    f"step-{i}",
                    step_specs[i],
                    status,
                    details,
                    errors,
                    s_created,
                    s_updated,
                    s_created + 1000,
                )
            )
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.executemany(
                "INSERT INTO jobs (pk, id, workspace, name, source, spec, platform_spec, fileset, auth_context,"
                " attempt_id, status, created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                jobs,
            )
            conn.executemany(
                "INSERT INTO steps (id, workspace, job_pk, job_name, job_source, attempt_id, fileset,"
                " auth_context, idx, name, spec, status, status_details, error_details, created_at,"
                " updated_at, active_since) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                steps,
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # No ANALYZE: the daemon gets the store as a long-running daemon would have left it.
    finally:
        conn.close()
    bench_jobs = [row[3] for row in jobs if row[2] == "bench"]
    return {
        "jobs": n_jobs,
        "steps": len(steps),
        "bench_steps": sum(1 for s in steps if s[1] == "bench"),
        "middle_job": bench_jobs[len(bench_jobs) // 2],
    }


def list_queries(info: dict[str, Any]) -> list[tuple[str, str, dict[str, str]]]:
    """(label, path under /workspaces, query params)."""
    bench_steps = info["bench_steps"]
    deep = max(1, min(3000, bench_steps // 25 - 1))  # page 3000 of 25, or near the end
    job = info["middle_job"]
    return [
        ("first page, created_at", "/bench/jobs/-/steps", {}),
        ("first page, -created_at", "/bench/jobs/-/steps", {"sort": "-created_at"}),
        ("first page, updated_at", "/bench/jobs/-/steps", {"sort": "updated_at"}),
        ("first page, all workspaces", "/-/jobs/-/steps", {}),
        ("first page, page_size=100", "/bench/jobs/-/steps", {"page_size": "100"}),
        ("filter[status]=error", "/bench/jobs/-/steps", {"filter[status]": "error"}),
        (
            "filter[status]=error, -created_at",
            "/bench/jobs/-/steps",
            {"filter[status]": "error", "sort": "-created_at"},
        ),
        (
            "filter[status]=error, updated_at",
            "/bench/jobs/-/steps",
            {"filter[status]": "error", "sort": "updated_at"},
        ),
        ("one job's steps", f"/bench/jobs/{job}/steps", {}),
        (f"deep page={deep}, created_at", "/bench/jobs/-/steps", {"page": str(deep)}),
        (f"deep page={deep}, -created_at", "/bench/jobs/-/steps", {"page": str(deep), "sort": "-created_at"}),
        (f"deep page={deep}, updated_at", "/bench/jobs/-/steps", {"page": str(deep), "sort": "updated_at"}),
    ]


async def phase_list_steps(
    session: aiohttp.ClientSession, base: str, info: dict[str, Any], requests: int, budget_s: float
) -> dict[str, tuple[float, float, int]]:
    out: dict[str, tuple[float, float, int]] = {}
    for label, path, params in list_queries(info):
        url = f"{base}{V2}/workspaces{path}"
        # Warm-up (page cache, prepared statements), then timed requests one at a time.
        for _ in range(3):
            async with session.get(url, params=params) as resp:
                body = await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {url} {params} -> {resp.status}: {body[:300]!r}")
        samples: list[float] = []
        deadline = time.monotonic() + budget_s
        for _ in range(requests):
            t0 = time.perf_counter()
            async with session.get(url, params=params) as resp:
                body = await resp.read()
            samples.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET {url} {params} -> {resp.status}: {body[:300]!r}")
            if time.monotonic() > deadline:
                break
        data = json.loads(body)
        if not data["data"]:
            raise RuntimeError(f"GET {url} {params}: empty page")
        out[label] = (pct(samples, 50), pct(samples, 95), len(samples))
    return out


# ---------------------------------------------------------------------------------------------
# Orchestration and report
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Orchestration and report
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def profiler(pid: int, out: Path | None) -> Any:
    """py-spy on the daemon for the duration of the block (if asked for and installed)."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if out is None or exe is None:
        if out is not None:
            log("py-spy not found (pip install py-spy into the venv): not profiling")
        yield
        return
    proc = subprocess.Popen(
        [exe, "record", "-p", str(pid), "-r", "250", "-f", "raw", "-o", str(out), "--threads"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=_die_with_parent,
    )
    time.sleep(0.5)  # let it attach
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        log(f"py-spy profile of the daemon written to {out} ({err.decode(errors='replace').strip()[-200:]})")


async def one_run(args: argparse.Namespace, run_no: int, tmp: Path, result: RunResult) -> None:
    data_dir = tmp / f"run{run_no}-data"
    async with running_daemon(data_dir, tmp, f"run{run_no}") as daemon:
        result.values["startup_s"] = daemon.startup_s
        await asyncio.sleep(0.5)
        result.values["rss_idle_mb"] = daemon.rss_mb()
        timeout = aiohttp.ClientTimeout(total=60)
        connector = aiohttp.TCPConnector(limit=max(args.concurrency, 4))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            log(f"run {run_no}: spawn latency ({args.spawn_jobs} sequential jobs)")
            await phase_spawn_latency(session, daemon.base_url, args.spawn_jobs, 0.02, result)
            log(f"run {run_no}: end-to-end, {args.jobs} jobs, {args.concurrency} POSTs in flight")
            me, cpu0 = psutil.Process(), psutil.Process(daemon.pid).cpu_times()
            mine0 = me.cpu_times()
            with profiler(daemon.pid, args.profile if run_no == 1 else None):
                await phase_end_to_end(session, daemon.base_url, args.jobs, args.concurrency, result)
            cpu1, mine1 = psutil.Process(daemon.pid).cpu_times(), me.cpu_times()
            result.values["daemon_cpu_s"] = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
            result.values["daemon_sys_s"] = cpu1.system - cpu0.system
            result.values["client_cpu_s"] = (mine1.user + mine1.system) - (mine0.user + mine0.system)
            await asyncio.sleep(1.0)
            result.values["rss_after_mb"] = daemon.rss_mb()
            log(
                f"run {run_no}: e2e {result.values['e2e_s']:.2f}s (daemon CPU {result.values['daemon_cpu_s']:.2f}s);"
                f" floor ({args.jobs} direct spawns)"
            )
            await phase_floor(args.jobs, tmp, result)
            log(f"run {run_no}: floor {result.values['floor_s']:.2f}s")
    shutil.rmtree(data_dir, ignore_errors=True)


@dataclass
class ListResult:
    startup_s: float = float("nan")
    rss_mb: float = float("nan")
    queries: dict[str, tuple[float, float, int]] = field(default_factory=dict)


async def list_run(
    args: argparse.Namespace, run_no: int, tmp: Path, store: Path, info: dict[str, Any]
) -> ListResult:
    result = ListResult()
    async with running_daemon(store, tmp, f"list{run_no}") as daemon:
        result.startup_s = daemon.startup_s
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            log(f"list run {run_no}: {len(list_queries(info))} queries x {args.list_requests} requests")
            result.queries = await phase_list_steps(
                session, daemon.base_url, info, args.list_requests, budget_s=30
            )
        result.rss_mb = daemon.rss_mb()
    return result


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def machine_info() -> dict[str, str]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = psutil.virtual_memory().total / 2**30
    commit = "unknown (not a git work tree)"
    with contextlib.suppress(Exception):
        commit = subprocess.run(
            ["git", "-C", str(SOURCE), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": str(os.cpu_count()),
        "cpu": model,
        "memory": f"{mem:.1f} GiB",
        "python": platform.python_version(),
        "kernel": platform.release(),
        "sqlite": sqlite3.sqlite_version,
        "aiohttp": aiohttp.__version__,
        "source": str(SOURCE),
        "commit": commit or "unknown (not a git work tree)",
    }


def report(
    args: argparse.Namespace,
    runs: list[RunResult],
    lists: list[ListResult],
    info: dict[str, Any],
    populate_s: float,
) -> str:
    def vals(key: str) -> list[float]:
        return [r.values[key] for r in runs if key in r.values]

    def m(key: str) -> float:
        return median(vals(key))

    def each(key: str, digits: int = 1) -> str:
        return ", ".join(fmt(v, digits) for v in vals(key)) or "n/a"

    def pair(k50: str, k95: str, digits: int = 1) -> str:
        return f"{fmt(m(k50), digits)} / {fmt(m(k95), digits)}"

    def verdict(ok: bool) -> str:
        return "meets target" if ok else "**misses target**"

    n = args.jobs
    lines = [
        f"Runs: {args.runs}; N = {n} jobs; {args.concurrency} POSTs in flight; {args.spawn_jobs} sequential "
        f"jobs for spawn latency; List Steps store of {info.get('steps', 0):,} steps "
        f"({info.get('jobs', 0):,} jobs, {info.get('bench_steps', 0):,} in the queried workspace), "
        f"{args.list_requests} requests per query.",
        "",
        "| Metric | Median | Each run | Target | Reference | Ratio / verdict |",
        "| --- | ---: | --- | --- | --- | --- |",
    ]
    if runs:
        ratios = [
            r.values["e2e_s"] / r.values["floor_s"] for r in runs if {"e2e_s", "floor_s"} <= r.values.keys()
        ]
        wratios = [
            r.values["e2e_s"] / r.values["floor_wrapped_s"]
            for r in runs
            if {"e2e_s", "floor_wrapped_s"} <= r.values.keys()
        ]
        ratio, e2e = median(ratios), m("e2e_s")
        per100 = e2e * 100 / n
        rss = m("rss_idle_mb")
        lines += [
            f"| Submit latency, idle daemon (one POST at a time), p50 / p95 (ms) "
            f"| {pair('submit_idle_p50', 'submit_idle_p95')} | p50: {each('submit_idle_p50')} | | | |",
            f"| Submit latency during the N-job run ({args.concurrency} in flight), p50 / p95 (ms) "
            f"| {pair('submit_load_p50', 'submit_load_p95')} | p50: {each('submit_load_p50')} | | | |",
            f"| Submit-to-spawn, idle daemon (POST sent -> workload's `date +%s%N`), p50 / p95 (ms) "
            f"| {pair('spawn_p50', 'spawn_p95')} | p50: {each('spawn_p50')} | | | |",
            f"| All {n} POSTs answered (s) | {fmt(m('submit_all_s'), 2)} | {each('submit_all_s', 2)} | | | |",
            f"| **End-to-end, {n} one-step `true` jobs** (first POST -> all `completed`) (s) | **{fmt(e2e, 2)}** "
            f"| {each('e2e_s', 2)} | | ~150 s per 100 jobs (~{REF_S_PER_100_JOBS * n / 100:,.0f} s for {n}) "
            f"| {fmt(REF_S_PER_100_JOBS / per100, 0)}x faster than the reference |",
            f"| Daemon CPU time during that run, user+sys (of which sys) (s) | {fmt(m('daemon_cpu_s'), 2)} "
            f"({fmt(m('daemon_sys_s'), 2)}) | {each('daemon_cpu_s', 2)} | | | |",
            f"| Load generator (this script) CPU time during that run (s) | {fmt(m('client_cpu_s'), 2)} "
            f"| {each('client_cpu_s', 2)} | | | |",
            f"| Floor: {n} `true` spawned from Python, {MAX_RUNNING_STEPS} at a time (s) | {fmt(m('floor_s'), 2)} "
            f"| {each('floor_s', 2)} | | | |",
            f"| **Daemon / floor** | **{fmt(ratio, 2)}** | {', '.join(fmt(x, 2) for x in ratios)} | <= 3 | "
            f"| {verdict(ratio <= 3)} |",
            f"| Floor with the daemon's `sh` exit-code wrapper around `true` (s); daemon / that "
            f"| {fmt(m('floor_wrapped_s'), 2)} | {each('floor_wrapped_s', 2)} | | | {fmt(median(wratios), 2)} |",
            f"| Idle RSS, empty store, right after start (MB) | {fmt(rss)} | {each('rss_idle_mb')} | < 60 "
            f"| 259 MB | {verdict(rss < 60)}; {fmt(REF_IDLE_RSS_MB / rss)}x smaller |",
            f"| RSS after the {n}-job run (MB) | {fmt(m('rss_after_mb'))} | {each('rss_after_mb')} | | | |",
            f"| Start-up to `ready`, empty store (s) | {fmt(m('startup_s'), 2)} | {each('startup_s', 2)} | | | |",
        ]
    done = [x for x in lists if x.queries]
    if lists:
        lines += [
            f"| Start-up to `ready`, {info.get('steps', 0):,}-step store (s) "
            f"| {fmt(median([x.startup_s for x in lists]), 2)} | {', '.join(fmt(x.startup_s, 2) for x in lists)} "
            "| | | |",
            f"| RSS after the List Steps queries (MB) | {fmt(median([x.rss_mb for x in done]))} "
            f"| {', '.join(fmt(x.rss_mb) for x in done)} | | | |",
        ]
    if done:
        for label in done[0].queries:
            p50 = median([x.queries[label][0] for x in done])
            p95 = median([x.queries[label][1] for x in done])
            counts = "/".join(str(x.queries[label][2]) for x in done)
            ref, extra = "", verdict(p50 < 10)
            if "page_size=100" in label:
                ref = "~3.5 s per 100-item list"
                extra += f"; {REF_LIST_100_MS / p50:,.0f}x faster"
            lines.append(
                f"| List Steps: {label}, p50 / p95 (ms) | {fmt(p50, 2)} / {fmt(p95, 2)} "
                f"| p50: {', '.join(fmt(x.queries[label][0], 2) for x in done)} ({counts} req.) | p50 < 10 "
                f"| {ref} | {extra} |"
            )
    if populate_s == populate_s:
        lines += [
            "",
            f"Store pre-fill: {fmt(populate_s, 1)} s (schema via storage.Repository, rows via executemany).",
        ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> int:
    info_machine = machine_info()
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info_machine.items()))
    tmp = Path(tempfile.mkdtemp(prefix="localjobs-bench-"))
    runs: list[RunResult] = []
    lists: list[ListResult] = []
    info: dict[str, Any] = {}
    populate_s = float("nan")
    failure: BaseException | None = None
    try:
        if not args.skip_jobs:
            for run_no in range(1, args.runs + 1):
                runs.append(RunResult())
                await one_run(args, run_no, tmp, runs[-1])
        if args.steps > 0:
            store = tmp / "list-store"
            store.mkdir()
            log(f"pre-filling a store with {args.steps:,} steps")
            t0 = time.monotonic()
            info = await asyncio.to_thread(populate_store, store, args.steps)
            populate_s = time.monotonic() - t0
            log(f"pre-filled in {populate_s:.1f}s: {info}")
            for run_no in range(1, args.runs + 1):
                lists.append(await list_run(args, run_no, tmp, store, info))
    except Exception as exc:  # report what was measured, then fail
        failure = exc
        log(f"FAILED: {type(exc).__name__}: {exc}")
    finally:
        if args.keep_tmp or failure is not None:
            log(f"temporary files (daemon logs) kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print("Machine: " + ", ".join(f"{k} {v}" for k, v in info_machine.items()))
    print()
    print(report(args, runs, lists, info, populate_s))
    if failure is not None:
        print(f"\n**Incomplete: {type(failure).__name__}: {failure}**")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--jobs", type=int, default=None, help="N one-step jobs for end-to-end (default 1000)"
    )
    parser.add_argument(
        "--runs", type=int, default=None, help="repetitions; medians are reported (default 3)"
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="steps in the List Steps store (default 100000)"
    )
    parser.add_argument(
        "--spawn-jobs", type=int, default=None, help="sequential jobs for spawn latency (default 100)"
    )
    parser.add_argument("--list-requests", type=int, default=200, help="requests per List Steps query")
    parser.add_argument("--concurrency", type=int, default=16, help="POSTs in flight during the N-job run")
    parser.add_argument("--quick", action="store_true", help="smoke run: N=100, 10k steps, 1 run")
    parser.add_argument("--skip-jobs", action="store_true", help="only the List Steps part")
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary data dirs and daemon logs"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="run the daemon from this source tree (e.g. a `git archive HEAD` snapshot) via PYTHONPATH",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the daemon during run 1's N-job phase; write collapsed stacks to this file",
    )
    args = parser.parse_args()
    quick = args.quick
    args.jobs = args.jobs if args.jobs is not None else (100 if quick else 1000)
    args.runs = args.runs if args.runs is not None else (1 if quick else 3)
    args.steps = args.steps if args.steps is not None else (10_000 if quick else 100_000)
    args.spawn_jobs = args.spawn_jobs if args.spawn_jobs is not None else (30 if quick else 100)
    if quick:
        args.list_requests = min(args.list_requests, 50)
    if args.profile is not None:
        args.profile = args.profile.resolve()
    return asyncio.run(amain(args))


if __name__ == "__main__":
    sys.exit(main())
