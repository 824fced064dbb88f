"""What every section shares: constants, log lines, percentiles, running a command, py-spy, the disk."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from scripts.bench import ROOT, SOURCE
from tests.daemon_process import die_with_parent

__all__ = ["ROOT", "SOURCE", "log", "median", "pct", "profiler", "quiesce_disk", "run_argv"]

V2 = "/apis/jobs/v2"
SECTIONS = ("jobs", "lists", "docker", "logs", "quiet")
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


async def run_argv(argv: Sequence[str], timeout_s: float = 120.0) -> float:
    """Run a command to completion (output discarded); returns its wall-clock seconds."""
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    elapsed = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"{list(argv)} exited with {proc.returncode}: {err.decode(errors='replace')[-300:]}"
        )
    return elapsed


@contextlib.contextmanager
def profiler(pid: int, out: Path | None) -> Any:
    """py-spy on the daemon for the duration of the block (if asked for and installed), or
    `perf record -g` with BENCH_PROFILER=perf."""
    exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if out is None or exe is None:
        if out is not None:
            log("py-spy not found (pip install py-spy into the venv): not profiling")
        yield
        return
    # BENCH_PYSPY_RATE (samples/s, default 250) and BENCH_PYSPY_EXTRA (e.g. "--gil --nonblocking":
    # only what holds the GIL, i.e. Python's own CPU) tune the sampling.
    rate = os.environ.get("BENCH_PYSPY_RATE", "250")
    extra = os.environ.get("BENCH_PYSPY_EXTRA", "").split()
    argv = [exe, "record", "-p", str(pid), "-r", rate, "-f", "raw", "-o", str(out), "--threads", *extra]
    if os.environ.get("BENCH_PROFILER") == "perf":
        # Native code too (SQLite, libuv, the kernel), which py-spy does not see; `perf report -i OUT`.
        argv = ["perf", "record", "-g", "-F", rate, "-p", str(pid), "-o", str(out), *extra]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        preexec_fn=die_with_parent,
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


def quiesce_disk() -> None:
    """Let the previous run's file creation reach the disk before the next run starts.

    The `jobs` runs also delete nothing until the bench is over: on ext4, creating files and
    folders right after deleting thousands costs much more kernel time (the inode allocator
    skips inodes freed in the last ~30 s, `recently_deleted` in perf), which made runs 2 and 3
    of a set, and their floors, 20-50% slower than run 1."""
    os.sync()
    time.sleep(1.0)
