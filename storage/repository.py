"""The one repository object over SQLite. All SQL of the project lives in this package.

Single-writer discipline: one write connection on a thread of its own (storage/writer.py) runs each
transaction whole, inside `BEGIN IMMEDIATE`; reads go through a second connection (aiosqlite),
which in WAL mode never waits for writers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from runner.models import (
    JobFilter,
    JobRecord,
    JobSort,
    JobState,
    JobStatus,
    LogLine,
    LogQuery,
    Needs,
    Page,
    PlatformJobSpec,
    ResourceDemand,
    ResultRecord,
    SecretRecord,
    StepFilter,
    StepRecord,
    StepSort,
    StepSpec,
    StringCondition,
    TaskRecord,
    WatchedStep,
    needs_of,
)
from storage.errors import AlreadyExists, Gone, StorageError, StorageUnavailable, cannot_write
from storage.health import OutageSummary, WriteHealth, low_on_space
from storage.schema import MIGRATIONS
from storage.writer import BUSY_TIMEOUT_MS, WriterThread

log = logging.getLogger(__name__)

# How long a patient write is retried: a status must not be lost to a passing hitch (another
# program holding the database a few seconds), and must not be retried forever either.
PATIENT_WRITE_S = 60.0
# /health waits at most this long for its check of the store (a lock held elsewhere would keep
# it busy_timeout long).
_HEALTH_PROBE_S = 1.0

_JOB_SORT_SQL = {
    JobSort.CREATED_AT: "created_at ASC, pk ASC",
    JobSort.CREATED_AT_DESC: "created_at DESC, pk DESC",
    JobSort.UPDATED_AT: "updated_at ASC, pk ASC",
    JobSort.UPDATED_AT_DESC: "updated_at DESC, pk DESC",
    JobSort.SOURCE: "source ASC, pk ASC",
    JobSort.SOURCE_DESC: "source DESC, pk DESC",
}
_STEP_SORT_SQL = {
    StepSort.CREATED_AT: "created_at ASC, pk ASC",
    StepSort.CREATED_AT_DESC: "created_at DESC, pk DESC",
    StepSort.UPDATED_AT: "updated_at ASC, pk ASC",
    StepSort.UPDATED_AT_DESC: "updated_at DESC, pk DESC",
}


def _dump(value: Any) -> str | None:
    return None if value is None else json.dumps(value, separators=(",", ":"))


def _load(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# Specs never change once stored, and the same one is read at every status change of its job:
# parse each distinct text once. Records are treated as read-only everywhere.
@functools.lru_cache(maxsize=4096)
def _job_spec(text: str) -> PlatformJobSpec:
    return PlatformJobSpec.model_validate_json(text)


@functools.lru_cache(maxsize=4096)
def _step_spec(text: str) -> StepSpec:
    return StepSpec.model_validate_json(text)


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        project=row["project"],
        description=row["description"],
        source=row["source"],
        spec=json.loads(row["spec"]),
        platform_spec=_job_spec(row["platform_spec"]),
        fileset=row["fileset"],
        output_location=row["output_location"],
        ownership=_load(row["ownership"]),
        custom_fields=_load(row["custom_fields"]),
        auth_context=_load(row["auth_context"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempt_id=row["attempt_id"],
        attempt_seq=row["attempt_seq"],
        status=JobStatus(row["status"]),
        status_details=json.loads(row["status_details"]),
        error_details=_load(row["error_details"]),
    )


def _step(row: sqlite3.Row) -> StepRecord:
    return StepRecord(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        job_pk=row["job_pk"],
        job_name=row["job_name"],
        job_source=row["job_source"],
        attempt_id=row["attempt_id"],
        fileset=row["fileset"],
        output_location=row["output_location"],
        auth_context=_load(row["auth_context"]),
        index=row["idx"],
        spec=_step_spec(row["spec"]),
        status=JobStatus(row["status"]),
        status_details=json.loads(row["status_details"]),
        error_details=_load(row["error_details"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        active_since=row["active_since"],
        active_us=row["active_us"],
        handle=_load(row["handle"]),
    )


def _task(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        step_pk=row["step_pk"],
        step_id=row["step_id"],
        status=JobStatus(row["status"]),
        status_details=json.loads(row["status_details"]),
        error_details=_load(row["error_details"]),
        error_stack=row["error_stack"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        heartbeat_at=row["heartbeat_at"],
    )


def _log(row: sqlite3.Row) -> LogLine:
    return LogLine(
        id=row["id"],
        timestamp=row["ts"],
        job_name=row["job_name"],
        attempt_id=row["attempt_id"],
        step_name=row["step_name"],
        task_name=row["task_name"],
        stream=row["stream"],
        message=row["message"],
    )


# GPUs a step's executor asks for, in SQL (runner.models.needs_of is the same rule): `num_gpus`
# (1 by default on the GPU providers), on each of `num_nodes` nodes for a distributed step.
_PROVIDER = "json_extract(spec, '$.executor.provider')"
_GPUS_NEEDED = (
    f"(COALESCE(json_extract(spec, '$.executor.resources.num_gpus'),"
    f" CASE WHEN {_PROVIDER} IN ('gpu', 'gpu_distributed') THEN 1 ELSE 0 END)"
    f" * CASE WHEN {_PROVIDER} = 'gpu_distributed'"
    " THEN COALESCE(json_extract(spec, '$.executor.resources.num_nodes'), 1) ELSE 1 END)"
)
_REQUEST_CPU = "json_extract(spec, '$.executor.resources.requests.cpu')"
_REQUEST_MEMORY = "json_extract(spec, '$.executor.resources.requests.memory')"
# A step the allocator must admit: one asking for GPUs, or for CPUs or memory.
_DEMANDS = f"({_GPUS_NEEDED} > 0 OR {_REQUEST_CPU} IS NOT NULL OR {_REQUEST_MEMORY} IS NOT NULL)"


def _secret(row: sqlite3.Row) -> SecretRecord:
    return SecretRecord(
        pk=row["pk"],
        workspace=row["workspace"],
        name=row["name"],
        description=row["description"],
        value=row["value"],
        key_id=row["key_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _result(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        pk=row["pk"],
        id=row["id"],
        job_pk=row["job_pk"],
        name=row["name"],
        artifact_url=row["artifact_url"],
        artifact_storage_type=row["artifact_storage_type"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


_TASK_SELECT = (
    "SELECT t.*, s.workspace AS workspace, s.id AS step_id FROM tasks t JOIN steps s ON s.pk = t.step_pk"
)
_LOG_SELECT = "SELECT l.*, j.name AS job_name FROM log_lines l JOIN jobs j ON j.pk = l.job_pk"


def _string_condition(column: str, cond: StringCondition, where: list[str], args: list[Any]) -> None:
    if cond.eq is not None:
        where.append(f"{column} = ?")
        args.append(cond.eq)
    if cond.like is not None:
        # The reference's $like is a case-insensitive substring match.
        escaped = cond.like.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(f"{column} LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    if cond.in_ is not None:
        where.append(f"{column} IN ({','.join('?' * len(cond.in_))})")
        args.extend(cond.in_)
    if cond.nin is not None:
        where.append(f"({column} IS NULL OR {column} NOT IN ({','.join('?' * len(cond.nin))}))")
        args.extend(cond.nin)


@dataclass(frozen=True, slots=True)
class _Query[T]:
    """A read used both inside write transactions (sync) and on the reader connection (async)."""

    sql: str
    args: Sequence[Any]
    build: Callable[[list[sqlite3.Row]], T]


def _first[R](convert: Callable[[sqlite3.Row], R]) -> Callable[[list[sqlite3.Row]], R | None]:
    return lambda rows: convert(rows[0]) if rows else None


def _each[R](convert: Callable[[sqlite3.Row], R]) -> Callable[[list[sqlite3.Row]], list[R]]:
    return lambda rows: [convert(row) for row in rows]


def _job_named(workspace: str, name: str) -> _Query[JobRecord | None]:
    return _Query("SELECT * FROM jobs WHERE workspace = ? AND name = ?", (workspace, name), _first(_job))


def _job_by_pk(pk: int) -> _Query[JobRecord | None]:
    return _Query("SELECT * FROM jobs WHERE pk = ?", (pk,), _first(_job))


def _step_named(workspace: str, job_name: str, step_name: str) -> _Query[StepRecord | None]:
    return _Query(
        "SELECT * FROM steps WHERE workspace = ? AND job_name = ? AND name = ?",
        (workspace, job_name, step_name),
        _first(_step),
    )


def _step_by_pk(pk: int) -> _Query[StepRecord | None]:
    return _Query("SELECT * FROM steps WHERE pk = ?", (pk,), _first(_step))


def _steps_of_job(job_pk: int) -> _Query[list[StepRecord]]:
    return _Query("SELECT * FROM steps WHERE job_pk = ? ORDER BY idx", (job_pk,), _each(_step))


def _tasks_of_step(step_pk: int) -> _Query[list[TaskRecord]]:
    return _Query(f"{_TASK_SELECT} WHERE t.step_pk = ? ORDER BY t.pk", (step_pk,), _each(_task))


def _task_named(step_pk: int, name: str) -> _Query[TaskRecord | None]:
    return _Query(f"{_TASK_SELECT} WHERE t.step_pk = ? AND t.name = ?", (step_pk, name), _first(_task))


def _task_by_pk(pk: int) -> _Query[TaskRecord | None]:
    return _Query(f"{_TASK_SELECT} WHERE t.pk = ?", (pk,), _first(_task))


def _secret_named(workspace: str, name: str) -> _Query[SecretRecord | None]:
    return _Query(
        "SELECT * FROM secrets WHERE workspace = ? AND name = ?", (workspace, name), _first(_secret)
    )


def _result_named(job_pk: int, name: str) -> _Query[ResultRecord | None]:
    return _Query("SELECT * FROM results WHERE job_pk = ? AND name = ?", (job_pk, name), _first(_result))


class WriteTx:
    """The typed reads and writes available inside one `Repository.write()`: plain (blocking)
    calls, made on the writer's thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def _run[T](self, query: _Query[T]) -> T:
        return query.build(self._conn.execute(query.sql, query.args).fetchall())

    def _one(self, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
        return row

    def get_job(self, workspace: str, name: str) -> JobRecord | None:
        return self._run(_job_named(workspace, name))

    def get_job_by_pk(self, pk: int) -> JobRecord | None:
        return self._run(_job_by_pk(pk))

    def job_state(self, pk: int) -> JobState | None:
        """What a status roll-up needs of the job, without parsing the whole row."""
        row = self._one(
            "SELECT status, error_details, json_array_length(platform_spec, '$.steps') FROM jobs"
            " WHERE pk = ?",
            (pk,),
        )
        if row is None:
            return None
        return JobState(pk=pk, status=JobStatus(row[0]), error_details=_load(row[1]), step_count=row[2])

    def get_step_by_pk(self, pk: int) -> StepRecord | None:
        return self._run(_step_by_pk(pk))

    def steps_of_job(self, job_pk: int) -> list[StepRecord]:
        return self._run(_steps_of_job(job_pk))

    def tasks_of_step(self, step_pk: int) -> list[TaskRecord]:
        return self._run(_tasks_of_step(step_pk))

    def get_task(self, step_pk: int, name: str) -> TaskRecord | None:
        return self._run(_task_named(step_pk, name))

    def get_task_by_pk(self, pk: int) -> TaskRecord | None:
        return self._run(_task_by_pk(pk))

    def get_secret(self, workspace: str, name: str) -> SecretRecord | None:
        return self._run(_secret_named(workspace, name))

    def get_result(self, job_pk: int, name: str) -> ResultRecord | None:
        return self._run(_result_named(job_pk, name))

    def insert_job(
        self,
        *,
        id: str,
        workspace: str,
        name: str,
        project: str | None,
        description: str | None,
        source: str,
        spec: dict[str, Any],
        platform_spec: PlatformJobSpec,
        fileset: str,
        output_location: str | None,
        ownership: dict[str, Any] | None,
        custom_fields: dict[str, Any] | None,
        auth_context: dict[str, Any] | None,
        attempt_id: str,
        now: int,
    ) -> JobRecord:
        try:
            cursor = self._conn.execute(
                "INSERT INTO jobs (id, workspace, name, project, description, source, spec, platform_spec,"
                " fileset, output_location, ownership, custom_fields, auth_context, attempt_id, status,"
                " created_at, updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    id,
                    workspace,
                    name,
                    project,
                    description,
                    source,
                    _dump(spec),
                    platform_spec.model_dump_json(),
                    fileset,
                    output_location,
                    _dump(ownership),
                    _dump(custom_fields),
                    _dump(auth_context),
                    attempt_id,
                    JobStatus.CREATED.value,
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"a job named {name!r} already exists in workspace {workspace!r}") from exc
        assert cursor.lastrowid is not None
        return JobRecord(
            pk=cursor.lastrowid,
            id=id,
            name=name,
            workspace=workspace,
            project=project,
            description=description,
            source=source,
            spec=spec,
            platform_spec=platform_spec,
            fileset=fileset,
            output_location=output_location,
            ownership=ownership,
            custom_fields=custom_fields,
            auth_context=auth_context,
            created_at=now,
            updated_at=now,
            attempt_id=attempt_id,
            attempt_seq=0,
            status=JobStatus.CREATED,
            status_details={},
            error_details=None,
        )

    def insert_step(self, job: JobRecord, index: int, step_id: str, now: int) -> int:
        spec = job.platform_spec.steps[index]
        cursor = self._conn.execute(
            "INSERT INTO steps (id, workspace, job_pk, job_name, job_source, attempt_id, fileset,"
            " output_location, auth_context, idx, name, spec, status, created_at, updated_at)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                step_id,
                job.workspace,
                job.pk,
                job.name,
                job.source,
                job.attempt_id,
                job.fileset,
                job.output_location,
                _dump(job.auth_context),
                index,
                spec.name,
                spec.model_dump_json(),
                JobStatus.CREATED.value,
                now,
                now,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def update_job_state(
        self,
        pk: int,
        *,
        status: JobStatus,
        status_details: dict[str, Any],
        error_details: dict[str, Any] | None,
        now: int,
    ) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, status_details = ?, error_details = ?, updated_at = ? WHERE pk = ?",
            (status.value, _dump(status_details), _dump(error_details), now, pk),
        )

    def merge_job_status_details(self, pk: int, details: dict[str, Any]) -> None:
        """Shallow: each key replaces the job's (a nested object is not merged into)."""
        row = self._conn.execute("SELECT status_details FROM jobs WHERE pk = ?", (pk,)).fetchone()
        if row is None:
            return
        merged = {**json.loads(row[0]), **details}
        self._conn.execute("UPDATE jobs SET status_details = ? WHERE pk = ?", (_dump(merged), pk))

    def update_step_state(
        self,
        pk: int,
        *,
        status: JobStatus,
        status_details: dict[str, Any],
        error_details: dict[str, Any] | None,
        active_since: int | None,
        now: int,
        active_us: int = 0,
        handle: dict[str, Any] | None = None,
    ) -> None:
        """`handle`, when given, is recorded in the same statement (None leaves it as it is)."""
        self._conn.execute(
            "UPDATE steps SET status = ?, status_details = ?, error_details = ?, active_since = ?,"
            " active_us = ?, updated_at = ?, handle = COALESCE(?, handle) WHERE pk = ?",
            (
                status.value,
                _dump(status_details),
                _dump(error_details),
                active_since,
                active_us,
                now,
                _dump(handle),
                pk,
            ),
        )

    def set_job_status(
        self, pk: int, *, status: JobStatus, error_details: dict[str, Any] | None, now: int
    ) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, error_details = ?, updated_at = ? WHERE pk = ?",
            (status.value, _dump(error_details), now, pk),
        )

    def mark_folders_removed(self, pk: int) -> None:
        self._conn.execute("UPDATE steps SET folders_removed = 1 WHERE pk = ?", (pk,))

    def set_step_handle(self, pk: int, handle: dict[str, Any] | None) -> None:
        self._conn.execute("UPDATE steps SET handle = ? WHERE pk = ?", (_dump(handle), pk))

    def insert_task(
        self,
        *,
        id: str,
        step_pk: int,
        name: str,
        status: JobStatus,
        status_details: dict[str, Any],
        error_details: dict[str, Any] | None,
        error_stack: str | None,
        heartbeat_at: int | None,
        now: int,
    ) -> int:
        cursor = self._conn.execute(
            "INSERT INTO tasks (id, step_pk, name, status, status_details, error_details, error_stack,"
            " created_at, updated_at, heartbeat_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                id,
                step_pk,
                name,
                status.value,
                _dump(status_details),
                _dump(error_details),
                error_stack,
                now,
                now,
                heartbeat_at,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def record_task_outcome(
        self,
        pk: int,
        *,
        status: JobStatus,
        allowed_from: Iterable[JobStatus],
        details: dict[str, Any],
        errors: dict[str, Any] | None,
        stack: str | None,
        now: int,
    ) -> None:
        """One statement: the status changes only from `allowed_from`, details merge shallowly
        (json_patch on flat objects), errors and stack replace only when given. Never a heartbeat."""
        sources = [s.value for s in allowed_from]
        self._conn.execute(
            f"UPDATE tasks SET status = CASE WHEN status IN ({','.join('?' * len(sources))}) THEN ?"
            " ELSE status END, status_details = json_patch(status_details, ?),"
            " error_details = COALESCE(?, error_details), error_stack = COALESCE(?, error_stack),"
            " updated_at = ? WHERE pk = ?",
            (*sources, status.value, _dump(details), _dump(errors), stack, now, pk),
        )

    def update_task(
        self,
        pk: int,
        *,
        status: JobStatus,
        status_details: dict[str, Any],
        error_details: dict[str, Any] | None,
        error_stack: str | None,
        heartbeat_at: int | None,
        now: int,
    ) -> None:
        self._conn.execute(
            "UPDATE tasks SET status = ?, status_details = ?, error_details = ?, error_stack = ?,"
            " heartbeat_at = ?, updated_at = ? WHERE pk = ?",
            (
                status.value,
                _dump(status_details),
                _dump(error_details),
                error_stack,
                heartbeat_at,
                now,
                pk,
            ),
        )

    def delete_job(self, pk: int) -> None:
        self._conn.execute("DELETE FROM jobs WHERE pk = ?", (pk,))

    def append_log_lines(
        self,
        *,
        job_pk: int,
        attempt_id: str,
        step_name: str,
        task_pk: int,
        task_name: str,
        stream: str,
        lines: Sequence[tuple[int, str]],
        new_offset: int,
        max_task_bytes: int = 0,
    ) -> int:
        """Store lines and the file offset they end at in one commit: a crash loses or repeats nothing.

        With `max_task_bytes` > 0 the task keeps only its newest output within that size; the
        number of lines dropped is returned (and counted in log_stats)."""
        dropped = 0
        if lines:
            self._conn.executemany(
                "INSERT INTO log_lines (job_pk, attempt_id, step_name, task_name, stream, ts, message)"
                " VALUES (?,?,?,?,?,?,?)",
                [(job_pk, attempt_id, step_name, task_name, stream, ts, msg) for ts, msg in lines],
            )
            added = sum(len(msg.encode("utf-8", "replace")) for _, msg in lines)
            self._conn.execute(
                "INSERT INTO log_stats (task_pk, job_pk, attempt_id, step_name, task_name, stored_lines,"
                " stored_bytes) VALUES (?,?,?,?,?,?,?) ON CONFLICT (task_pk) DO UPDATE SET"
                " stored_lines = stored_lines + excluded.stored_lines,"
                " stored_bytes = stored_bytes + excluded.stored_bytes",
                (task_pk, job_pk, attempt_id, step_name, task_name, len(lines), added),
            )
            if max_task_bytes > 0:
                dropped = self._trim_task_log(job_pk, step_name, task_pk, task_name, max_task_bytes)
        self._conn.execute(
            "INSERT INTO log_offsets (task_pk, stream, offset) VALUES (?,?,?)"
            " ON CONFLICT (task_pk, stream) DO UPDATE SET offset = excluded.offset",
            (task_pk, stream, new_offset),
        )
        return dropped

    def _trim_task_log(
        self, job_pk: int, step_name: str, task_pk: int, task_name: str, max_bytes: int
    ) -> int:
        row = self._one("SELECT stored_bytes FROM log_stats WHERE task_pk = ?", (task_pk,))
        excess = (row[0] if row else 0) - max_bytes
        if excess <= 0:
            return 0
        # Drop a little more than needed so trimming happens once per chunk, not once per line.
        # The cut-off is found by SQLite itself (a running sum), not by shipping rows to Python.
        target = excess + max_bytes // 10
        cut = self._one(
            "SELECT id, freed, n FROM (SELECT id, SUM(length(CAST(message AS BLOB))) OVER w AS freed,"
            " ROW_NUMBER() OVER w AS n FROM log_lines WHERE job_pk = ? AND step_name = ? AND task_name = ?"
            " WINDOW w AS (ORDER BY id)) WHERE freed >= ? ORDER BY id LIMIT 1",
            (job_pk, step_name, task_name, target),
        )
        if cut is None:
            return 0
        cutoff, freed, count = cut["id"], cut["freed"], cut["n"]
        self._conn.execute(
            "DELETE FROM log_lines WHERE job_pk = ? AND step_name = ? AND task_name = ? AND id <= ?",
            (job_pk, step_name, task_name, cutoff),
        )
        self._conn.execute(
            "UPDATE log_stats SET stored_lines = stored_lines - ?, stored_bytes = stored_bytes - ?,"
            " dropped_lines = dropped_lines + ? WHERE task_pk = ?",
            (count, freed, count, task_pk),
        )
        return int(count)

    # ------------------------------------------------------------------------- secrets

    def insert_secret(
        self, workspace: str, name: str, description: str | None, value: str, key_id: str, now: int
    ) -> None:
        try:
            self._conn.execute(
                "INSERT INTO secrets (workspace, name, description, value, key_id, created_at, updated_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (workspace, name, description, value, key_id, now, now),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"a secret named {name!r} already exists in workspace {workspace!r}") from exc

    def update_secret(
        self, pk: int, description: str | None, value: str, key_id: str | None, now: int
    ) -> None:
        self._conn.execute(
            "UPDATE secrets SET description = ?, value = ?, key_id = ?, updated_at = ? WHERE pk = ?",
            (description, value, key_id, now, pk),
        )

    def reseal_secret(self, pk: int, value: str, key_id: str) -> None:
        """A new sealed form of the same value: not a change a client sees (updated_at stays)."""
        self._conn.execute("UPDATE secrets SET value = ?, key_id = ? WHERE pk = ?", (value, key_id, pk))

    def all_secrets(self) -> list[SecretRecord]:
        return [_secret(r) for r in self._conn.execute("SELECT * FROM secrets ORDER BY pk")]

    def delete_secret(self, pk: int) -> None:
        self._conn.execute("DELETE FROM secrets WHERE pk = ?", (pk,))

    # ------------------------------------------------------------------------- results

    def insert_result(
        self, *, id: str, job_pk: int, name: str, artifact_url: str, storage_type: str, now: int
    ) -> None:
        try:
            self._conn.execute(
                "INSERT INTO results (id, job_pk, name, artifact_url, artifact_storage_type, created_at,"
                " updated_at) VALUES (?,?,?,?,?,?,?)",
                (id, job_pk, name, artifact_url, storage_type, now, now),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"a result named {name!r} already exists for this job") from exc


def _make_private(path: Path) -> None:
    """The database holds secret values: its file is made 0600 before SQLite opens it. SQLite
    would create it 0644 (less the umask) and gives its -wal and -shm files the database file's
    mode when it creates them, so this covers all three. Files left with wider modes (by an
    older version) are narrowed: nothing but this daemon has any business opening them."""
    for suffix, create in (("", os.O_CREAT), ("-wal", 0), ("-shm", 0)):  # these two: after a crash
        try:
            fd = os.open(f"{path}{suffix}", os.O_RDONLY | os.O_CLOEXEC | create, 0o600)
        except FileNotFoundError:
            continue
        try:
            mode = stat.S_IMODE(os.fstat(fd).st_mode)
            if mode & 0o077:
                os.fchmod(fd, mode & 0o700)
        except PermissionError:  # not ours: say so, and use it as it is
            log.warning("%s%s is open to other users (mode %o), not ours to change", path, suffix, mode)
        finally:
            os.close(fd)


class Repository:
    """Typed access to the store: reads on a reader connection (aiosqlite), writes through
    `write()` on the writer's own thread."""

    def __init__(self, reader: aiosqlite.Connection, writer: WriterThread) -> None:
        self._conn = reader
        self._writer = writer
        self._health = WriteHealth()

    @classmethod
    async def open(cls, path: Path) -> Repository:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
            writer = await WriterThread.open(path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open the database at {path}: {exc}") from exc
        try:
            await writer.call(_migrate, in_transaction=False)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await _configure_reader(reader)
        except (OSError, sqlite3.Error) as exc:
            await writer.close()
            raise StorageUnavailable(f"cannot open the database at {path}: {exc}") from exc
        except BaseException:
            await writer.close()
            raise
        return cls(reader, writer)

    async def close(self) -> None:
        await self._conn.close()
        await self._writer.close()

    async def write[T](
        self, work: Callable[[WriteTx], T], *, patient: bool = False, until_stored: bool = False
    ) -> T:
        """Run `work` in a `BEGIN IMMEDIATE` transaction on the writer's thread (possibly along
        with other callers' work, each in a savepoint of its own): its writes are committed when
        it returns, undone when it raises. Whatever it reads is current and stays so until the
        commit. It runs off the event loop: it may use the store and its own data, and at most
        read single values of the daemon's state (a dict lookup, atomic under the GIL); it must not
        change that state or touch asyncio objects.

        `patient` writes (what a workload did: its status, its output) are tried again, with
        growing pauses, for about PATIENT_WRITE_S when the store could not take them
        (StorageUnavailable: e.g. locked by another program beyond busy_timeout, or a failed
        commit, which keeps nothing). `work` must then be safe to run again: it re-reads what it
        decides on. `until_stored` writes (a step's final status, which nothing would write again)
        are tried so until they are stored, the store is closed, or the caller is cancelled."""
        patience = math.inf if until_stored else PATIENT_WRITE_S if patient else 0.0
        deadline = time.monotonic() + patience
        pause = 0.1
        retrying = False
        try:
            while True:
                try:
                    result = await self._writer.call(functools.partial(_unit_of_work, work))
                except sqlite3.Error as exc:  # the batch's own BEGIN or COMMIT, or a closed writer
                    failure = cannot_write(exc)
                except StorageUnavailable as exc:
                    failure = exc
                else:
                    self._health.succeeded()
                    return result
                if self._writer.closed or failure.cause is None:
                    raise failure  # shutting down, or a bug of this write: the store is well
                self._health.failed(failure.cause)
                if time.monotonic() + pause > deadline:
                    raise failure
                if not retrying:
                    retrying = True
                    self._health.retry_began()
                log.warning("write failed (%s); trying again in %.1f s", failure, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 5.0)
        finally:
            if retrying:
                self._health.retry_ended()

    async def health(self) -> str | None:
        """Why the store cannot take writes now, in words fit for anyone (None: it can). While
        no write is waiting to try again, the cause of the last failure is checked afresh with an
        empty write (is the lock free again?); and a file system with almost no space left
        cannot take the next writes, whether or not one has failed yet."""
        if self._health.cause is not None and not self._health.retrying:
            try:
                await asyncio.wait_for(self.write(_nothing), _HEALTH_PROBE_S)
            except (StorageError, TimeoutError):
                pass  # still failing: the state says so
        cause = self._health.cause
        if cause is None and await asyncio.to_thread(low_on_space, self._writer.path.parent):
            cause = "no space left on device"
        return cause

    def write_outages_since(self, since: float) -> OutageSummary | None:
        """How long writes failed since `since` (time.monotonic()), and why: what the record of
        a step that ran meanwhile should say."""
        return self._health.outages_since(since)

    async def _run[T](self, query: _Query[T]) -> T:
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

    async def get_job(self, workspace: str, name: str) -> JobRecord | None:
        return await self._run(_job_named(workspace, name))

    async def get_job_by_pk(self, pk: int) -> JobRecord | None:
        return await self._run(_job_by_pk(pk))

    async def get_step(self, workspace: str, job_name: str, step_name: str) -> StepRecord | None:
        return await self._run(_step_named(workspace, job_name, step_name))

    async def get_step_by_pk(self, pk: int) -> StepRecord | None:
        return await self._run(_step_by_pk(pk))

    async def steps_of_job(self, job_pk: int) -> list[StepRecord]:
        return await self._run(_steps_of_job(job_pk))

    async def tasks_of_step(self, step_pk: int) -> list[TaskRecord]:
        return await self._run(_tasks_of_step(step_pk))

    async def tasks_of_steps(self, step_pks: Iterable[int]) -> dict[int, list[TaskRecord]]:
        keys = list(step_pks)
        result: dict[int, list[TaskRecord]] = {pk: [] for pk in keys}
        if keys:
            rows = await self._all(
                f"{_TASK_SELECT} WHERE t.step_pk IN ({','.join('?' * len(keys))}) ORDER BY t.pk", keys
            )
            for row in rows:
                result[row["step_pk"]].append(_task(row))
        return result

    async def get_task(self, step_pk: int, name: str) -> TaskRecord | None:
        return await self._run(_task_named(step_pk, name))

    async def get_secret(self, workspace: str, name: str) -> SecretRecord | None:
        return await self._run(_secret_named(workspace, name))

    async def get_result(self, job_pk: int, name: str) -> ResultRecord | None:
        return await self._run(_result_named(job_pk, name))

    # ----------------------------------------------------------------------------- lists

    async def list_jobs(self, flt: JobFilter, sort: JobSort, page: int, page_size: int) -> Page[JobRecord]:
        where = ["workspace = ?"]
        args: list[Any] = [flt.workspace]
        for column, cond in (("name", flt.name), ("source", flt.source), ("project", flt.project)):
            if cond is not None:
                _string_condition(column, cond, where, args)
        if flt.statuses:
            where.append(f"status IN ({','.join('?' * len(flt.statuses))})")
            args.extend(s.value for s in flt.statuses)
        for column, op, bound in (
            ("created_at", ">=", flt.created_gte),
            ("created_at", "<=", flt.created_lte),
            ("updated_at", ">=", flt.updated_gte),
            ("updated_at", "<=", flt.updated_lte),
        ):
            if bound is not None:
                where.append(f"{column} {op} ?")
                args.append(bound)
        clause = " AND ".join(where)
        total_row = await self._one(f"SELECT COUNT(*) FROM jobs WHERE {clause}", args)
        rows = await self._all(
            f"SELECT * FROM jobs WHERE {clause} ORDER BY {_JOB_SORT_SQL[sort]} LIMIT ? OFFSET ?",
            [*args, page_size, (page - 1) * page_size],
        )
        return Page(items=[_job(r) for r in rows], total=total_row[0] if total_row else 0)

    async def list_steps(
        self, flt: StepFilter, sort: StepSort, page: int, page_size: int
    ) -> Page[StepRecord]:
        where: list[str] = []
        args: list[Any] = []
        if flt.workspace is not None:
            where.append("workspace = ?")
            args.append(flt.workspace)
        if flt.job is not None:
            where.append("job_name = ?")
            args.append(flt.job)
        if flt.statuses:
            where.append(f"status IN ({','.join('?' * len(flt.statuses))})")
            args.extend(s.value for s in flt.statuses)
        if flt.source is not None:
            where.append("job_source = ?")
            args.append(flt.source)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        total = await self._count_steps(flt, clause, args)
        # Page on the narrow index first, then fetch the wide rows of just that page.
        rows = await self._all(
            f"SELECT * FROM steps WHERE pk IN (SELECT pk FROM steps {clause}"
            f" ORDER BY {_STEP_SORT_SQL[sort]} LIMIT ? OFFSET ?) ORDER BY {_STEP_SORT_SQL[sort]}",
            [*args, page_size, (page - 1) * page_size],
        )
        return Page(items=[_step(r) for r in rows], total=total)

    async def _count_steps(self, flt: StepFilter, clause: str, args: list[Any]) -> int:
        """From the trigger-kept counters: the cost depends on the number of jobs or statuses
        involved, not on how many steps the store holds."""
        where: list[str] = []
        params: list[Any] = []
        if flt.job is not None and flt.source is not None:
            row = await self._one(f"SELECT COUNT(*) FROM steps {clause}", args)  # one job: few rows
            return int(row[0]) if row else 0
        table = "step_counts_job" if flt.job is not None else "step_counts_ws"
        if flt.workspace is not None:
            where.append("workspace = ?")
            params.append(flt.workspace)
        if flt.job is not None:
            where.append("job_name = ?")
            params.append(flt.job)
        if flt.source is not None:
            where.append("source = ?")
            params.append(flt.source)
        if flt.statuses:
            where.append(f"status IN ({','.join('?' * len(flt.statuses))})")
            params.extend(s.value for s in flt.statuses)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        row = await self._one(f"SELECT COALESCE(SUM(n), 0) FROM {table} {condition}", params)
        return int(row[0]) if row else 0

    async def finished_steps_with_folders(
        self, finished_before: int, limit: int
    ) -> tuple[list[StepRecord], int | None]:
        """Finished steps (before the given time) whose task folders are still on disk, and when
        the next one still waiting finished."""
        pending = "folders_removed = 0 AND status IN ('completed', 'error', 'cancelled')"
        rows = await self._all(
            f"SELECT * FROM steps WHERE {pending} AND updated_at <= ? ORDER BY updated_at LIMIT ?",
            (finished_before, limit),
        )
        nxt = await self._one(
            f"SELECT MIN(updated_at) FROM steps WHERE {pending} AND updated_at > ?", (finished_before,)
        )
        return [_step(r) for r in rows], (nxt[0] if nxt else None)

    async def non_terminal_steps(self) -> list[StepRecord]:
        rows = await self._all(
            "SELECT * FROM steps WHERE status NOT IN ('completed','error','cancelled')"
            " ORDER BY created_at, pk",
            (),
        )
        return [_step(r) for r in rows]

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
        plain = await self._all(
            f"SELECT pk, created_at FROM steps WHERE status IN ('created','resuming') AND NOT {_DEMANDS}"
            " ORDER BY created_at, pk LIMIT ?",
            (plain_limit,),
        )
        demanding = await self._all(
            f"SELECT pk, created_at, {_PROVIDER} AS provider,"
            " json_extract(spec, '$.executor.resources.num_gpus') AS num_gpus,"
            " json_extract(spec, '$.executor.resources.num_nodes') AS num_nodes,"
            f" {_REQUEST_CPU} AS cpu, {_REQUEST_MEMORY} AS memory"
            f" FROM steps WHERE status IN ('created','resuming') AND {_DEMANDS}"
            " ORDER BY created_at, pk LIMIT 10000",
            (),
        )
        waiting = [ResourceDemand(r["pk"], Needs(), r["created_at"]) for r in plain]
        for r in demanding:
            needs = needs_of(r["provider"], r["num_gpus"], r["num_nodes"], r["cpu"], r["memory"])
            waiting.append(ResourceDemand(r["pk"], needs, r["created_at"]))
        waiting.sort(key=lambda d: (d.waiting_since_us, d.step_pk))
        return waiting

    # ----------------------------------------------------------------------------- logs

    async def log_offsets(self, task_pk: int) -> dict[str, int]:
        rows = await self._all("SELECT stream, offset FROM log_offsets WHERE task_pk = ?", (task_pk,))
        return {row["stream"]: row["offset"] for row in rows}

    def _log_scope(self, query: LogQuery) -> tuple[str, list[Any]]:
        where = ["l.job_pk = ?"]
        args: list[Any] = [query.job_pk]
        if query.attempt_id is not None:
            where.append("l.attempt_id = ?")
            args.append(query.attempt_id)
        if query.step_name is not None:
            where.append("l.step_name = ?")
            args.append(query.step_name)
        if query.task_name is not None:
            where.append("l.task_name = ?")
            args.append(query.task_name)
        return " AND ".join(where), args

    async def log_totals(self, query: LogQuery) -> tuple[int, int]:
        """(lines stored, lines dropped by the size limit) in the scope, from per-task counters."""
        clause, args = self._log_scope(query)
        row = await self._one(
            "SELECT COALESCE(SUM(stored_lines), 0), COALESCE(SUM(dropped_lines), 0)"
            f" FROM log_stats l WHERE {clause}",
            args,
        )
        return (row[0], row[1]) if row else (0, 0)

    async def list_secrets(self, workspace: str, page: int, page_size: int) -> Page[SecretRecord]:
        total = await self._one("SELECT COUNT(*) FROM secrets WHERE workspace = ?", (workspace,))
        rows = await self._all(
            "SELECT * FROM secrets WHERE workspace = ? ORDER BY created_at DESC, pk DESC LIMIT ? OFFSET ?",
            (workspace, page_size, (page - 1) * page_size),
        )
        return Page(items=[_secret(r) for r in rows], total=total[0] if total else 0)

    async def list_results(self, job_pk: int, newest_first: bool, by_updated: bool) -> list[ResultRecord]:
        column = "updated_at" if by_updated else "created_at"
        order = "DESC" if newest_first else "ASC"
        rows = await self._all(
            f"SELECT * FROM results WHERE job_pk = ? ORDER BY {column} {order}, pk {order}", (job_pk,)
        )
        return [_result(r) for r in rows]

    async def log_lines_after(self, query: LogQuery, after_id: int, limit: int) -> list[LogLine]:
        clause, args = self._log_scope(query)
        rows = await self._all(
            f"{_LOG_SELECT} WHERE {clause} AND l.id > ? ORDER BY l.id ASC LIMIT ?", [*args, after_id, limit]
        )
        return [_log(r) for r in rows]

    async def log_lines_before(self, query: LogQuery, before_id: int | None, limit: int) -> list[LogLine]:
        """The `limit` lines just before `before_id` (newest ones when None), in ascending order."""
        clause, args = self._log_scope(query)
        if before_id is not None:
            clause += " AND l.id < ?"
            args.append(before_id)
        rows = await self._all(f"{_LOG_SELECT} WHERE {clause} ORDER BY l.id DESC LIMIT ?", [*args, limit])
        return [_log(r) for r in reversed(rows)]


def _unit_of_work[T](work: Callable[[WriteTx], T], conn: sqlite3.Connection) -> T:
    try:
        return work(WriteTx(conn))
    except sqlite3.IntegrityError as exc:
        # e.g. a row whose job was deleted meanwhile (foreign key)
        raise Gone(f"the record changed under this write: {exc}") from exc
    except sqlite3.Error as exc:
        raise cannot_write(exc) from exc


def _nothing(tx: WriteTx) -> None:
    """A write of nothing: it still takes the write lock and commits."""


async def _configure_reader(conn: aiosqlite.Connection) -> None:
    conn.row_factory = sqlite3.Row
    await conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await conn.execute("PRAGMA foreign_keys = ON")


def _migrate(conn: sqlite3.Connection) -> None:
    row = conn.execute("PRAGMA user_version").fetchone()
    version = row[0] if row else 0
    if version > len(MIGRATIONS):
        raise StorageUnavailable(
            f"the database is at schema version {version}, newer than this localjobs ({len(MIGRATIONS)})"
        )
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits on its own; the version bump is part of the same script.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
