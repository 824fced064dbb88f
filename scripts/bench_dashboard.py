"""Measure the dashboard on a big store: page weight and first paint, in headless Chromium.

    .venv/bin/python scripts/bench_dashboard.py [--jobs 100000] [--runs 7] [--json out.json]

1. Fills a fresh data dir with N finished jobs (one step each; 0.5 % paused, so the list also asks
   for the steps in flight) through storage/bulk.py (bulk inserts encoded as the repository encodes
   rows); writing them one by one through the API would take most of an hour.
2. Starts `localjobs serve` on it (port 0), then for each run opens a new browser context (an empty
   cache), signed in with the session cookie, and loads:
   - the jobs list `/` (first page of 25, newest first),
   - the list searched by name (`?q=...`, a substring match that scans the workspace),
   - a deep page of the list (`?page=...`),
   - a job's page (its log, steps and results).
   For each: first-contentful-paint, the moment the page's data is shown (`jobs-rendered`, marked
   by jobs.js after its first render; for the job page, the steps tree filled), and the bytes
   transferred (every response's body, as the browser's resource timing reports it).
Prints the medians; --json writes every run. Uses the system's Chromium (scripts/setup_browser.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from runner.models import JobStatus, PlatformJobSpec  # noqa: E402
from storage.bulk import FilledJob, FilledStep, bulk_fill  # noqa: E402
from tests.browser_env import CHROMIUM  # noqa: E402
from tests.daemon_process import DaemonError, DaemonProcess  # noqa: E402
from web.security import AccessPolicy  # noqa: E402

TOKEN = "bench-dashboard-token-0123456789"
WORKSPACE = "default"
STATUS_MIX = [
    (JobStatus.COMPLETED, 0.695),
    (JobStatus.ERROR, 0.2),
    (JobStatus.CANCELLED, 0.1),
    (JobStatus.PAUSED, 0.005),
]


def log(message: str) -> None:
    print(f"[bench_dashboard {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fill_store(data_dir: Path, n_jobs: int, seed: int = 15) -> None:
    rng = random.Random(seed)
    spec = PlatformJobSpec.model_validate(
        {"steps": [{"name": "train", "executor": {"provider": "subprocess", "command": ["true"]}}]}
    )
    statuses, weights = zip(*STATUS_MIX, strict=True)
    base_us = int(time.time() * 1e6) - n_jobs * 60_000_000
    jobs = []
    for j in range(n_jobs):
        status = rng.choices(statuses, weights)[0]
        created = base_us + j * 60_000_000
        updated = created + rng.randrange(1_000_000, 3_000_000_000)
        details: dict[str, Any] = {"message": f"Job {status}", "exit_code": 0 if status == "completed" else 1}
        if rng.random() < 0.5:
            details["percentage_done"] = 100 if status == "completed" else rng.randrange(0, 100)
        errors = {"message": "Job exited with code 1", "exit_code": 1, "last_lines": ["boom"]}
        error_details = errors if status == JobStatus.ERROR else None
        step = FilledStep(status, created, updated, status_details=details, error_details=error_details)
        jobs.append(
            FilledJob(
                workspace=WORKSPACE,
                name=f"job-{j:06d}",
                source="bench",
                platform_spec=spec,
                status=status,
                created_at=created,
                updated_at=updated,
                steps=[step],
                status_details=details,
                error_details=error_details,
            )
        )
    bulk_fill(data_dir / "localjobs.db", jobs)


def start_daemon(data_dir: Path, logs: Path) -> DaemonProcess:
    daemon = DaemonProcess(logs, data_dir=data_dir, host=None, token=TOKEN)
    try:
        daemon.start(timeout_s=120)
    except DaemonError as exc:
        raise SystemExit(f"the daemon did not get ready: {exc}") from None
    return daemon


_MEASURE = """() => {
  const paint = performance.getEntriesByName('first-contentful-paint')[0];
  const mark = performance.getEntriesByName('jobs-rendered')[0];
  const nav = performance.getEntriesByType('navigation')[0];
  const resources = performance.getEntriesByType('resource');
  const bytes = nav.encodedBodySize + resources.reduce((sum, r) => sum + r.encodedBodySize, 0);
  const api = resources.filter(r => r.name.includes('/apis/')).map(r => [r.name, r.duration]);
  return {fcp: paint ? paint.startTime : null, data: mark ? mark.startTime : null, bytes,
          requests: resources.length + 1, api};
}"""


async def _until(page: Any, predicate: str, timeout_s: float = 30.0) -> None:
    # Polled from here: the page's CSP refuses the eval that wait_for_function would need.
    deadline = time.monotonic() + timeout_s
    while not await page.evaluate(predicate):
        if time.monotonic() > deadline:
            raise SystemExit(f"{page.url}: {predicate} still false after {timeout_s} s")
        await asyncio.sleep(0.02)


async def measure(base: str, runs: int, job_name: str, search: str, deep_page: int) -> dict[str, list[Any]]:
    from playwright.async_api import async_playwright

    port = int(base.rsplit(":", 1)[1])
    policy = AccessPolicy(token=TOKEN, allowed_hosts=frozenset(), port=port)
    cookie = {"name": policy.session_cookie, "value": policy.session_value() or "", "url": base}
    views = {
        # The floor: the first paint of a bare file from this daemon, on this machine, now.
        "floor": "/static/favicon.svg",
        "list": "/",
        "search": f"/?q={search}",
        "deep page": f"/?page={deep_page}",
        "job page": f"/workspaces/{WORKSPACE}/jobs/{job_name}",
    }
    found: dict[str, list[Any]] = {view: [] for view in views}
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            for run in range(runs):
                for view, path in views.items():
                    context = await browser.new_context(viewport={"width": 1280, "height": 900})
                    await context.add_cookies([cookie])  # type: ignore[list-item]
                    page = await context.new_page()
                    await page.goto(base + path)
                    if view == "floor":
                        await _until(
                            page, "() => performance.getEntriesByName('first-contentful-paint').length"
                        )
                    elif view == "job page":
                        await page.wait_for_selector("#steps li.step", timeout=30_000)
                        await page.evaluate("performance.mark('jobs-rendered')")
                        await page.wait_for_selector("#log[data-ended]", timeout=30_000)
                    else:
                        await _until(page, "() => performance.getEntriesByName('jobs-rendered').length")
                    result = await page.evaluate(_MEASURE)
                    found[view].append(result)
                    await context.close()
                log(f"run {run + 1}/{runs}: " + ", ".join(f"{v} {_short(found[v][-1])}" for v in views))
        finally:
            await browser.close()
    return found


def _short(result: dict[str, Any]) -> str:
    return f"fcp {_ms(result['fcp'])} data {_ms(result['data'])}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="write every run's figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="localjobs-bench-dashboard-") as tmp:
        data_dir, logs = Path(tmp) / "data", Path(tmp)
        data_dir.mkdir(mode=0o700)
        started = time.monotonic()
        fill_store(data_dir, args.jobs)
        log(f"store filled with {args.jobs:,} jobs in {time.monotonic() - started:.1f} s")
        daemon = start_daemon(data_dir, logs)
        try:
            found = asyncio.run(
                measure(
                    daemon.base_url,
                    args.runs,
                    f"job-{args.jobs // 2:06d}",
                    "job-0999",
                    max(1, args.jobs // 25 // 2),
                )
            )
        finally:
            daemon.close(grace_s=60)
    print(
        f"\nDashboard on a store of {args.jobs:,} jobs, {args.runs} runs each (medians; a cold cache each run)"
    )
    print(f"{'view':<10} {'first paint':>12} {'data shown':>11} {'weight':>9} {'requests':>9}")
    for view, runs in found.items():
        fcp, data = _median([r["fcp"] for r in runs]), _median([r["data"] for r in runs])
        weight = statistics.median(r["bytes"] for r in runs) / 1024
        requests = statistics.median(r["requests"] for r in runs)
        print(f"{view:<10} {_ms(fcp):>12} {_ms(data):>11} {weight:>6.1f} KB {requests:>9.0f}")
    slowest_api = max((d for runs in found.values() for r in runs for _, d in r["api"]), default=0.0)
    print(f"slowest API request the pages made: {slowest_api:.0f} ms")
    if args.json:
        args.json.write_text(json.dumps({"jobs": args.jobs, "runs": found}, indent=1))


if __name__ == "__main__":
    main()
