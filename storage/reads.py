"""The async reads: typed queries of every aggregate on the reader connection (aiosqlite),
which in WAL mode never waits for the writer. `Repository` (storage/repository.py) is these
reads plus the write path."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

import aiosqlite

from runner.models import (
    JobFilter,
    JobRecord,
    JobSort,
    JobStatus,
    LogLine,
    LogProgress,
    LogQuery,
    Needs,
    Page,
    ResourceDemand,
    ResultRecord,
    SecretRecord,
    StepFilter,
    StepRecord,
    StepSort,
    TaskRecord,
    WatchedStep,
    needs_of,
)
from storage import logs, queries
from storage.log_files import LogFiles
from storage.rows import job_record, result_record, secret_record, step_record, task_record


class Reads:
    """Typed reads on the reader connection, grouped by aggregate: single records, the lists of
    the API, what the scheduler and the watchdog ask for, logs."""

    def __init__(self, reader: aiosqlite.Connection, log_files: LogFiles) -> None:
        self._conn = reader
        self.log_files = log_files

    async def _run[T](self, query: queries.Query[T]) -> T:
        return query.build(list(await self._conn.execute_fetchall(query.sql, query.args)))

    # execute_fetchall runs the statement and fetches in one trip to aiosqlite's thread: each
    # trip is a cross-thread hand-off, and they dominate the cost of small queries.
    async def _one(self, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
        rows = await self._conn.execute_fetchall(sql, args)
        for row in rows:
            return row
        return None

    async def _all(self, sql: str, args: Sequence[Any]) -> list[sqlite3.Row]:
        return list(await self._conn.execute_fetchall(sql, args))

    # ----------------------------------------------------------------------------- single records

    async def get_job(self, workspace: str, name: str) -> JobRecord | None:
        return await self._run(queries.job_named(workspace, name))

    async def get_job_by_pk(self, pk: int) -> JobRecord | None:
        return await self._run(queries.job_by_pk(pk))

    async def get_step(self, workspace: str, job_name: str, step_name: str) -> StepRecord | None:
        return await self._run(queries.step_named(workspace, job_name, step_name))

    async def get_step_by_pk(self, pk: int) -> StepRecord | None:
        return await self._run(queries.step_by_pk(pk))

    async def steps_of_job(self, job_pk: int) -> list[StepRecord]:
        return await self._run(queries.steps_of_job(job_pk))

    async def tasks_of_step(self, step_pk: int) -> list[TaskRecord]:
        return await self._run(queries.tasks_of_step(step_pk))

    async def tasks_of_steps(self, step_pks: Iterable[int]) -> dict[int, list[TaskRecord]]:
        keys = list(step_pks)
        result: dict[int, list[TaskRecord]] = {pk: [] for pk in keys}
        if keys:
            rows = await self._all(
                f"{queries.TASK_SELECT} WHERE t.step_pk IN ({','.join('?' * len(keys))}) ORDER BY t.pk", keys
            )
            for row in rows:
                result[row["step_pk"]].append(task_record(row))
        return result

    async def get_task(self, step_pk: int, name: str) -> TaskRecord | None:
        return await self._run(queries.task_named(step_pk, name))

    async def get_secret(self, workspace: str, name: str) -> SecretRecord | None:
        return await self._run(queries.secret_named(workspace, name))

    async def get_result(self, job_pk: int, name: str) -> ResultRecord | None:
        return await self._run(queries.result_named(job_pk, name))

    # ----------------------------------------------------------------------------- lists

    async def list_jobs(self, flt: JobFilter, sort: JobSort, page: int, page_size: int) -> Page[JobRecord]:
        clause, args = queries.job_list_where(flt)
        total_row = await self._one(*queries.job_count(flt, clause, args))
        rows = await self._all(
            f"SELECT * FROM jobs WHERE {clause} ORDER BY {queries.JOB_SORT_SQL[sort]} LIMIT ? OFFSET ?",
            [*args, page_size, (page - 1) * page_size],
        )
        return Page(items=[job_record(r) for r in rows], total=total_row[0] if total_row else 0)

    async def list_steps(
        self, flt: StepFilter, sort: StepSort, page: int, page_size: int
    ) -> Page[StepRecord]:
        clause, args = queries.step_list_where(flt)
        total_row = await self._one(*queries.step_count(flt, clause, args))
        total = int(total_row[0]) if total_row else 0
        # Page on the narrow index first, then fetch the wide rows of just that page.
        order = queries.STEP_SORT_SQL[sort]
        rows = await self._all(
            f"SELECT * FROM steps WHERE pk IN (SELECT pk FROM steps {clause}"
            f" ORDER BY {order} LIMIT ? OFFSET ?) ORDER BY {order}",
            [*args, page_size, (page - 1) * page_size],
        )
        return Page(items=[step_record(r) for r in rows], total=total)

    async def list_secrets(self, workspace: str, page: int, page_size: int) -> Page[SecretRecord]:
        total = await self._one("SELECT COUNT(*) FROM secrets WHERE workspace = ?", (workspace,))
        rows = await self._all(
            "SELECT * FROM secrets WHERE workspace = ? ORDER BY created_at DESC, pk DESC LIMIT ? OFFSET ?",
            (workspace, page_size, (page - 1) * page_size),
        )
        return Page(items=[secret_record(r) for r in rows], total=total[0] if total else 0)

    async def list_results(self, job_pk: int, newest_first: bool, by_updated: bool) -> list[ResultRecord]:
        column = "updated_at" if by_updated else "created_at"
        order = "DESC" if newest_first else "ASC"
        rows = await self._all(
            f"SELECT * FROM results WHERE job_pk = ? ORDER BY {column} {order}, pk {order}", (job_pk,)
        )
        return [result_record(r) for r in rows]

    # ------------------------------------------------------- the scheduler's and the watchdog's

    async def finished_steps_with_folders(
        self, finished_before: int, limit: int
    ) -> tuple[list[StepRecord], int | None]:
        """Finished steps (before the given time) whose task folders are still on disk, and when
        the next one still waiting finished."""
        pending = "folders_removed = 0 AND status IN ('completed', 'error', 'cancelled')"
        # The partial index holds only the steps still waiting. Left to itself the planner takes
        # the status index and walks every finished step (100 ms at 50,000 steps, at every check
        # of the watchdog, with List Jobs and List Steps queued behind it on the reader).
        steps = "steps INDEXED BY steps_folders_pending"
        rows = await self._all(
            f"SELECT * FROM {steps} WHERE {pending} AND updated_at <= ? ORDER BY updated_at LIMIT ?",
            (finished_before, limit),
        )
        nxt = await self._one(
            f"SELECT MIN(updated_at) FROM {steps} WHERE {pending} AND updated_at > ?", (finished_before,)
        )
        return [step_record(r) for r in rows], (nxt[0] if nxt else None)

    async def non_terminal_steps(self) -> list[StepRecord]:
        # Named, not negated: `NOT IN` cannot use the status index and scanned every step of
        # history at each start (28 ms at 50,000 steps).
        unfinished = [s.value for s in JobStatus if not s.is_terminal]
        marks = ",".join("?" * len(unfinished))
        rows = await self._all(
            f"SELECT * FROM steps WHERE status IN ({marks}) ORDER BY created_at, pk", unfinished
        )
        return [step_record(r) for r in rows]

    async def watched_steps(self) -> list[WatchedStep]:
        """What the watchdog needs of every step a deadline can apply to: no JSON parsing, no
        paused or finished steps."""
        rows = await self._all(
            "SELECT s.pk, s.status, s.created_at, s.updated_at, s.active_since, s.active_us,"
            " COALESCE(json_extract(s.spec, '$.lifecycle.staleness_timeout_seconds'), 0) AS staleness,"
            " json_extract(s.spec, '$.executor.provider') AS provider,"
            " COALESCE(json_extract(s.spec, '$.executor.profile'), 'default') AS profile,"
            " (SELECT COUNT(*) FROM tasks t WHERE t.step_pk = s.pk AND t.status = 'active') AS active_tasks,"
            " (SELECT MAX(t.heartbeat_at) FROM tasks t WHERE t.step_pk = s.pk AND t.status = 'active')"
            " AS last_beat FROM steps s WHERE s.status IN ('created', 'pending', 'active', 'resuming')",
            (),
        )
        return [
            WatchedStep(
                pk=r["pk"],
                status=JobStatus(r["status"]),
                created_at=r["created_at"],
                updated_at=r["updated_at"],
                active_since=r["active_since"],
                active_us=r["active_us"],
                staleness_timeout_s=r["staleness"],
                active_tasks=r["active_tasks"],
                last_beat=r["last_beat"],
                provider=r["provider"],
                profile=r["profile"],
            )
            for r in rows
        ]

    async def runnable_steps(self, plain_limit: int) -> list[ResourceDemand]:
        """Steps waiting for the scheduler, oldest first (FIFO, as the reference): every one that
        asks for GPUs, CPUs or memory (the allocator decides which fit), and the oldest
        `plain_limit` of those that ask for nothing."""
        # One query (one trip to the reader's thread per scheduler wake-up), two halves.
        rows = await self._all(
            "SELECT * FROM (SELECT pk, created_at, 0 AS demanding, NULL AS provider, NULL AS num_gpus,"
            " NULL AS num_nodes, NULL AS cpu, NULL AS memory"
            " FROM steps WHERE status IN ('created','resuming')"
            f" AND NOT {queries.DEMANDS} ORDER BY created_at, pk LIMIT ?)"
            " UNION ALL"
            f" SELECT * FROM (SELECT pk, created_at, 1 AS demanding, {queries.PROVIDER} AS provider,"
            " json_extract(spec, '$.executor.resources.num_gpus') AS num_gpus,"
            " json_extract(spec, '$.executor.resources.num_nodes') AS num_nodes,"
            f" {queries.REQUEST_CPU} AS cpu, {queries.REQUEST_MEMORY} AS memory"
            f" FROM steps WHERE status IN ('created','resuming') AND {queries.DEMANDS}"
            " ORDER BY created_at, pk LIMIT 10000)",
            (plain_limit,),
        )
        waiting = [
            ResourceDemand(
                r["pk"],
                needs_of(r["provider"], r["num_gpus"], r["num_nodes"], r["cpu"], r["memory"])
                if r["demanding"]
                else Needs(),
                r["created_at"],
            )
            for r in rows
        ]
        waiting.sort(key=lambda d: (d.waiting_since_us, d.step_pk))
        return waiting

    # ----------------------------------------------------------------------------- logs

    async def log_progress(self, task_pk: int) -> LogProgress:
        return await logs.progress(self._conn, task_pk)

    async def log_totals(self, query: LogQuery) -> tuple[int, int]:
        """(lines stored, lines dropped by the size limit) in the scope, from per-task counters."""
        return await logs.totals(self._conn, query)

    async def log_lines_after(self, query: LogQuery, after_id: int, limit: int) -> list[LogLine]:
        return await logs.lines_after(self._conn, self.log_files, query, after_id, limit)

    async def log_lines_before(self, query: LogQuery, before_id: int | None, limit: int) -> list[LogLine]:
        """The `limit` lines just before `before_id` (newest ones when None), in ascending order."""
        return await logs.lines_before(self._conn, self.log_files, query, before_id, limit)
