"""Benchmark a real `localjobs serve` subprocess over HTTP and print a markdown table.

    python -m scripts.bench [--only jobs,lists,docker,logs,quiet] [--jobs N] [--runs R] [--steps S] [--quick]
    python scripts/bench ...        (the same)

Sections (all by default; `--only` picks some, `--skip-jobs` drops `jobs`):

  jobs    job throughput, submit and spawn latency, RSS (below);
  lists   List Steps latency on a pre-filled store (below);
  docker  per-step overhead of a `cpu` container step running `true` (POST -> follow stream ends,
          i.e. job finished; also by polling GET .../jobs/{name} every 10 ms) against a bare
          `docker run --rm <image> true` and against `docker run` with the daemon's own options
          (--init, host network, 3 bind mounts), interleaved, `--docker-reps` each per run;
  logs    (a) ingestion: one subprocess step writes `--log-mb` MB (`yes <99 chars> | head -n N`),
          POST -> completed, against the same command straight to /dev/null and to a file; submit
          latency while such a step floods its log; (b) `tail=100` p50/p95 on a `--log-gb` GB log
          (written once, on the first `--big-log-runs` runs, with the per-task size limit off) against
          a 1 KB log, plus the DB size on disk; (c) follow latency: a step prints its own
          `date +%s%N` every 100 ms for `--follow-s` s, read through `?follow=true`;
  quiet   `--quiet-steps` sleeping steps (1000), all running: the daemon's and launcher's CPU
          over `--quiet-s` s, as a share of one core (scripts/bench/quiet.py).

Every section starts its own daemon(s) as `<venv>/bin/localjobs serve --port 0 --data-dir <tmpdir>`
and waits for its `localjobs ready http://...` line. The `jobs` section measures, on a fresh empty
store:

  * idle RSS right after start (psutil);
  * submit latency and submit-to-spawn latency on an otherwise idle daemon: jobs run
    `date +%s%N`, so the workload itself prints the wall-clock instant it started (read back via the
    logs API) and that is compared with the instant the POST was sent;
  * end-to-end time for N one-step `true` jobs (first POST sent -> all N jobs `completed`), with the
    submit latency under that load (`--concurrency` POSTs in flight); then the same N jobs
    submitted one POST at a time (each sent once the one before is answered: #13's shape); then,
    in the same run, the physical floor: N `true` processes spawned straight from Python (same
    concurrency as the daemon's max_running_steps, own session, output to files), Debian's
    task-spooler if installed (N `tsp true` one after another, then `tsp -w`), and RSS after
    the run;

and, on a store pre-filled with S steps (written before the daemon starts), List Steps latency for
first / filtered / per-job / deep pages under several sorts (the store is written through
storage/bulk.py).

Medians over R runs are reported. The daemon is always stopped (SIGTERM, then SIGKILL), and gets
SIGTERM too should this script die (PR_SET_PDEATHSIG). Results and methodology: docs/benchmarks.md.

Extras: `--profile-logs FILE` runs py-spy on the daemon while run 1 writes the big log;
`--profile FILE` runs py-spy (if installed in the venv) on the daemon during run 1's N-job
phase (16 in flight) and writes collapsed stacks, `--profile-seq FILE` the same during the
one-POST-at-a-time phase; `--source DIR` benchmarks another source tree (e.g. a
`git archive HEAD` snapshot of this commit or a later one) through PYTHONPATH.

One module per section: `jobs`, `lists`, `containers` (the `docker` section), `logs`; `client`
holds the HTTP calls, `daemon` starts daemons (through tests/daemon_process.py, the helper the
tests use), `common` the constants and process helpers, `report` the table, `cli` the options.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def _source_root() -> Path:
    """`--source DIR`: benchmark the code in DIR (e.g. a `git archive` snapshot) instead of ROOT."""
    for i, arg in enumerate(sys.argv):
        if arg == "--source" and i + 1 < len(sys.argv):
            return Path(sys.argv[i + 1]).resolve()
        if arg.startswith("--source="):
            return Path(arg.split("=", 1)[1]).resolve()
    return ROOT


# Before any module of the project is imported: runner/, storage/ and tests/ then come from SOURCE.
SOURCE = _source_root()
sys.path.insert(0, str(SOURCE))
