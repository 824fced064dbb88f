"""Fill a fresh store with finished jobs in bulk, for benchmarks (scripts/bench, bench_dashboard).

Writing 100,000 steps one by one through `Repository.write()` (insert_job, insert_step,
update_step_state) takes ~37 s on a 2-vCPU box; `executemany` takes a couple of seconds. Rows are
encoded as the repository encodes them, so the daemon reads the store as one it wrote itself. No
daemon may have the store open meanwhile.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.models import JobStatus, PlatformJobSpec, new_entity_id
from storage.repository import Repository
from storage.rows import dump as _dump

__all__ = ["FilledJob", "FilledStep", "bulk_fill"]


@dataclass(frozen=True)
class FilledStep:
    """One step of a `FilledJob`, the i-th of its platform_spec's steps; times in µs."""

    status: JobStatus
    created_at: int
    updated_at: int
    status_details: dict[str, Any] = field(default_factory=dict)
    error_details: dict[str, Any] | None = None
    active_since: int | None = None


@dataclass(frozen=True)
class FilledJob:
    """A job as the store keeps it once it has run; `steps` follow `platform_spec.steps`."""

    workspace: str
    name: str
    source: str
    platform_spec: PlatformJobSpec
    status: JobStatus
    created_at: int
    updated_at: int
    steps: Sequence[FilledStep]
    spec: dict[str, Any] = field(default_factory=dict)
    status_details: dict[str, Any] = field(default_factory=dict)
    error_details: dict[str, Any] | None = None
    auth_context: dict[str, Any] | None = None
    fileset: str | None = None  # default: job-fileset-<name>


async def _migrate(path: Path) -> None:
    repo = await Repository.open(path)  # creates the schema, runs every migration
    await repo.close()


def bulk_fill(path: Path, jobs: Iterable[FilledJob]) -> int:
    """Create the store at `path` if needed and insert `jobs` in one transaction; returns the
    number of steps written. Blocking, and runs its own event loop for the schema: call it where
    no loop is running (e.g. `asyncio.to_thread`)."""
    asyncio.run(_migrate(path))
    conn = sqlite3.connect(path)
    try:
        (last_pk,) = conn.execute("SELECT COALESCE(MAX(pk), 0) FROM jobs").fetchone()
        spec_json: dict[int, tuple[str, list[str]]] = {}  # the same spec object is encoded once
        job_rows: list[tuple[Any, ...]] = []
        step_rows: list[tuple[Any, ...]] = []
        for pk, job in enumerate(jobs, start=last_pk + 1):
            if len(job.steps) != len(job.platform_spec.steps):
                raise ValueError(
                    f"job {job.name!r}: {len(job.steps)} steps for a spec of {len(job.platform_spec.steps)}"
                )
            encoded = spec_json.get(id(job.platform_spec))
            if encoded is None:
                encoded = (
                    job.platform_spec.model_dump_json(),
                    [s.model_dump_json() for s in job.platform_spec.steps],
                )
                spec_json[id(job.platform_spec)] = encoded
            attempt = new_entity_id("platform-job-attempt")
            fileset = job.fileset or f"job-fileset-{job.name}"
            auth = _dump(job.auth_context)
            job_rows.append(
                (
                    pk,
                    new_entity_id("platform-job"),
                    job.workspace,
                    job.name,
                    job.source,
                    _dump(job.spec),
                    encoded[0],
                    fileset,
                    auth,
                    attempt,
                    job.status.value,
                    _dump(job.status_details),
                    _dump(job.error_details),
                    job.created_at,
                    job.updated_at,
                )
            )
            for idx, (step, step_spec) in enumerate(zip(job.steps, job.platform_spec.steps, strict=True)):
                step_rows.append(
                    (
                        new_entity_id("platform-job-step"),
                        job.workspace,
                        pk,
                        job.name,
                        job.source,
                        attempt,
                        fileset,
                        auth,
                        idx,
                        step_spec.name,
                        encoded[1][idx],
                        step.status.value,
                        _dump(step.status_details),
                        _dump(step.error_details),
                        step.created_at,
                        step.updated_at,
                        step.active_since,
                    )
                )
        with conn:
            conn.executemany(
                "INSERT INTO jobs (pk, id, workspace, name, source, spec, platform_spec, fileset,"
                " auth_context, attempt_id, status, status_details, error_details, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                job_rows,
            )
            conn.executemany(
                "INSERT INTO steps (id, workspace, job_pk, job_name, job_source, attempt_id, fileset,"
                " auth_context, idx, name, spec, status, status_details, error_details, created_at,"
                " updated_at, active_since) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                step_rows,
            )
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        # No ANALYZE: the daemon gets the store as a long-running daemon would have left it.
    finally:
        conn.close()
    return len(step_rows)
