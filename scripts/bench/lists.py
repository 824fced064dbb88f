"""The `lists` section: List Steps latency on a store pre-filled through storage/bulk.py."""

from __future__ import annotations

import argparse
import json
import random
import time
from dataclasses import field
from pathlib import Path
from typing import Any

import aiohttp

from runner.models import JobStatus, PlatformJobSpec
from scripts.bench.common import V2, log, pct
from scripts.bench.daemon import AUTH_HEADERS, running_daemon
from storage.bulk import FilledJob, FilledStep, bulk_fill

STEPS_PER_JOB = 10
# Terminal statuses, plus `paused`: the only non-terminal status a restarted daemon leaves alone
# (created/resuming steps would be started, active/pending ones settled as lost at start-up).
STATUS_MIX = [
    (JobStatus.COMPLETED, 0.55),
    (JobStatus.ERROR, 0.20),
    (JobStatus.CANCELLED, 0.15),
    (JobStatus.PAUSED, 0.10),
]


def populate_store(data_dir: Path, total_steps: int, seed: int = 7) -> dict[str, Any]:
    """Fill `data_dir`'s store with total_steps steps (jobs of STEPS_PER_JOB steps): 90 % in
    workspace `bench`, the rest in `other`. Blocking: called in a worker thread."""
    rng = random.Random(seed)
    spec = PlatformJobSpec.model_validate(
        {
            "steps": [
                {"name": f"step-{i}", "executor": {"provider": "subprocess", "command": ["true"]}}
                for i in range(STEPS_PER_JOB)
            ]
        }
    )
    auth = {"principal_id": "bench", "principal_groups": []}
    n_jobs = max(1, total_steps // STEPS_PER_JOB)
    base_us = int(time.time() * 1e6) - total_steps * 10_000
    statuses, weights = zip(*STATUS_MIX, strict=True)
    jobs: list[FilledJob] = []
    for j in range(n_jobs):
        created = base_us + j * STEPS_PER_JOB * 10_000
        step_status = rng.choices(statuses, weights, k=STEPS_PER_JOB)
        steps = []
        for i, status in enumerate(step_status):
            s_created = created + i * 10_000
            steps.append(
                FilledStep(
                    status=status,
                    created_at=s_created,
                    # updated_at order differs from created_at order
                    updated_at=s_created + rng.randrange(1, 50_000_000),
                    status_details={"message": status.value.capitalize(), "pid": 1000 + i},
                    error_details=(
                        {"message": "exit code 1", "exit_code": 1} if status is JobStatus.ERROR else None
                    ),
                    active_since=s_created + 1000,
                )
            )
        jobs.append(
            FilledJob(
                workspace="bench" if j % 10 else "other",
                name=f"job-{j:06d}",
                source="bench",
                platform_spec=spec,
                status=step_status[-1],
                created_at=created,
                updated_at=created + STEPS_PER_JOB * 10_000,
                steps=steps,
                auth_context=auth,
            )
        )
    written = bulk_fill(data_dir / "localjobs.db", jobs)
    bench_jobs = [job.name for job in jobs if job.workspace == "bench"]
    return {
        "jobs": n_jobs,
        "steps": written,
        "bench_steps": sum(len(job.steps) for job in jobs if job.workspace == "bench"),
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
        async with aiohttp.ClientSession(headers=AUTH_HEADERS, timeout=timeout) as session:
            log(f"list run {run_no}: {len(list_queries(info))} queries x {args.list_requests} requests")
            result.queries = await phase_list_steps(
                session, daemon.base_url, info, args.list_requests, budget_s=30
            )
        result.rss_mb = daemon.rss_mb()
    return result
