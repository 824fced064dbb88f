"""The options, and the order the sections run in."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import scripts.bench
from scripts.bench import daemon
from scripts.bench.common import SECTIONS, log
from scripts.bench.containers import DOCKER_IMAGE, DockerResult, docker_available, docker_run
from scripts.bench.jobs import RunResult, one_run
from scripts.bench.lists import ListResult, list_run, populate_store
from scripts.bench.logs import LogsResult, logs_run
from scripts.bench.quiet import quiet_run, quiet_table
from scripts.bench.report import machine_info, report


async def amain(args: argparse.Namespace) -> int:
    info_machine = machine_info()
    log("machine: " + ", ".join(f"{k}={v}" for k, v in info_machine.items()))
    tmp = Path(tempfile.mkdtemp(prefix="localjobs-bench-"))
    runs: list[RunResult] = []
    lists: list[ListResult] = []
    info: dict[str, Any] = {}
    populate_s = float("nan")
    failure: BaseException | None = None
    dockers: list[DockerResult] = []
    logs: list[LogsResult] = []
    docker_skipped: str | None = None
    quiet: list[dict[str, float]] = []
    try:
        if "jobs" in args.sections:
            for run_no in range(1, args.runs + 1):
                runs.append(RunResult())
                await one_run(args, run_no, tmp, runs[-1])
        if "lists" in args.sections and args.steps > 0:
            store = tmp / "list-store"
            store.mkdir()
            log(f"pre-filling a store with {args.steps:,} steps")
            t0 = time.monotonic()
            info = await asyncio.to_thread(populate_store, store, args.steps)
            populate_s = time.monotonic() - t0
            log(f"pre-filled in {populate_s:.1f}s: {info}")
            for run_no in range(1, args.runs + 1):
                lists.append(await list_run(args, run_no, tmp, store, info))
            shutil.rmtree(store, ignore_errors=True)
        if "docker" in args.sections:
            docker_skipped = docker_available()
            if docker_skipped:
                log(f"container steps skipped: {docker_skipped}")
            else:
                for run_no in range(1, args.runs + 1):
                    dockers.append(await docker_run(args, run_no, tmp))
        if "logs" in args.sections:
            for run_no in range(1, args.runs + 1):
                logs.append(await logs_run(args, run_no, tmp))
        if "quiet" in args.sections:
            for run_no in range(1, args.runs + 1):
                quiet.append(await quiet_run(args, run_no, tmp))
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
    print(report(args, runs, lists, info, populate_s, dockers, logs, docker_skipped))
    if quiet:
        print()
        print(quiet_table(quiet))
    if failure is not None:
        print(f"\n**Incomplete: {type(failure).__name__}: {failure}**")
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.bench",
        description=scripts.bench.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N=100, 10k steps, 1 run, 3 container reps, 20 MB / 0.1 GB logs, 2 s follow",
    )
    parser.add_argument("--skip-jobs", action="store_true", help="leave out the `jobs` section")
    parser.add_argument(
        "--only",
        default=",".join(SECTIONS),
        help=f"comma-separated sections to run, of {','.join(SECTIONS)} (default: all)",
    )
    parser.add_argument(
        "--docker-reps", type=int, default=None, help="container steps per run and method (default 10)"
    )
    parser.add_argument(
        "--profile-logs",
        type=Path,
        default=None,
        help="py-spy the daemon while run 1 writes the big log; write raw stacks to this file",
    )
    parser.add_argument("--docker-image", default=DOCKER_IMAGE, help="image for the container-step section")
    parser.add_argument(
        "--log-mb", type=float, default=None, help="MB one step writes for ingestion (default 200)"
    )
    parser.add_argument(
        "--log-gb", type=float, default=None, help="size of the big log for tail latency (default 1.0)"
    )
    parser.add_argument(
        "--big-log-runs", type=int, default=1, help="runs that also write the big log (default 1)"
    )
    parser.add_argument(
        "--big-log-timeout", type=float, default=1800, help="seconds allowed to write the big log"
    )
    parser.add_argument(
        "--tail-requests", type=int, default=None, help="requests per log query (default 200)"
    )
    parser.add_argument(
        "--follow-s", type=float, default=None, help="length of the follow-latency step (default 5)"
    )
    parser.add_argument(
        "--quiet-steps", type=int, default=None, help="sleeping steps for the quiet section (default 1000)"
    )
    parser.add_argument("--quiet-s", type=float, default=10.0, help="how long the quiet steps' CPU is read")
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help="start the daemons with --no-auth (to measure what the token costs, against a default run)",
    )
    parser.add_argument(
        "--keep-tmp", action="store_true", help="keep the temporary data dirs and daemon logs"
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=None,
        help="run the daemon from this source tree (e.g. a `git archive HEAD` snapshot, of this commit or a later"
        " one: the bench imports its storage/ and tests/ too) via PYTHONPATH",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="py-spy the daemon during run 1's N-job phase; write collapsed stacks to this file",
    )
    parser.add_argument(
        "--profile-seq",
        type=Path,
        default=None,
        help="py-spy the daemon during run 1's one-POST-at-a-time phase; write collapsed stacks to this file",
    )
    args = parser.parse_args()
    daemon.NO_AUTH = args.no_auth
    quick = args.quick
    args.jobs = args.jobs if args.jobs is not None else (100 if quick else 1000)
    args.runs = args.runs if args.runs is not None else (1 if quick else 3)
    args.steps = args.steps if args.steps is not None else (10_000 if quick else 100_000)
    args.spawn_jobs = args.spawn_jobs if args.spawn_jobs is not None else (30 if quick else 100)
    args.docker_reps = args.docker_reps if args.docker_reps is not None else (3 if quick else 10)
    args.log_mb = args.log_mb if args.log_mb is not None else (20.0 if quick else 200.0)
    args.log_gb = args.log_gb if args.log_gb is not None else (0.1 if quick else 1.0)
    args.tail_requests = args.tail_requests if args.tail_requests is not None else (50 if quick else 200)
    args.follow_s = args.follow_s if args.follow_s is not None else (2.0 if quick else 5.0)
    args.quiet_steps = args.quiet_steps if args.quiet_steps is not None else (200 if quick else 1000)
    args.sections = {x.strip() for x in args.only.split(",") if x.strip()}
    unknown = args.sections - set(SECTIONS)
    if unknown:
        parser.error(
            f"--only: unknown section(s) {', '.join(sorted(unknown))}; choose from {','.join(SECTIONS)}"
        )
    if args.skip_jobs:
        args.sections.discard("jobs")
    if quick:
        args.list_requests = min(args.list_requests, 50)
    if args.profile is not None:
        args.profile = args.profile.resolve()
    if args.profile_seq is not None:
        args.profile_seq = args.profile_seq.resolve()
    if args.profile_logs is not None:
        args.profile_logs = args.profile_logs.resolve()
    return asyncio.run(amain(args))
