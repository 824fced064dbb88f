"""The write transaction: `WriteTx`, the typed reads and writes of every aggregate (jobs, steps,
tasks, secrets, results; logs through storage/logs.py) available to a unit of work that
`Repository.write()` runs on the writer's thread, inside `BEGIN IMMEDIATE`."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from runner.models import (
    STARTABLE_STATUSES,
    AppendOutcome,
    JobRecord,
    JobState,
    JobStatus,
    LogAppend,
    PlatformJobSpec,
    StepRecord,
    TaskRecord,
)
from storage import json_text, logs, queries
from storage.errors import AlreadyExists
from storage.rows import dump, load
from storage.secret_writes import SecretAndResultWrites
from storage.step_keys import StepKeys

# A status_details key that a JSON path can name as it is ($.key); others take the slow merge.
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class WriteTx(SecretAndResultWrites):
    """The typed reads and writes available inside one `Repository.write()`: plain (blocking)
    calls, made on the writer's thread."""

    def __init__(self, conn: sqlite3.Connection, step_keys: StepKeys) -> None:
        self._conn = conn
        self._step_keys = step_keys
        # Whether this transaction left a step waiting to be started: see Repository.steps_queued.
        self.left_steps_waiting = False

    def _run[T](self, query: queries.Query[T]) -> T:
        return query.build(self._conn.execute(query.sql, query.args).fetchall())

    def _one(self, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, args).fetchone()
        return row

    def get_job(self, workspace: str, name: str) -> JobRecord | None:
        return self._run(queries.job_named(workspace, name))

    def get_job_by_pk(self, pk: int) -> JobRecord | None:
        return self._run(queries.job_by_pk(pk))

    def job_state(self, pk: int) -> JobState | None:
        """What a status roll-up needs of the job, without parsing the whole row."""
        row = self._one(
            "SELECT status, error_details, json_array_length(platform_spec, '$.steps') FROM jobs"
            " WHERE pk = ?",
            (pk,),
        )
        if row is None:
            return None
        return JobState(pk=pk, status=JobStatus(row[0]), error_details=load(row[1]), step_count=row[2])

    def any_step_waiting(self) -> bool:
        """Whether a step waits for the scheduler to start it (`created` or `resuming`)."""
        return self._one("SELECT 1 FROM steps WHERE status IN ('created','resuming') LIMIT 1", ()) is not None

    def get_step_by_pk(self, pk: int) -> StepRecord | None:
        return self._run(queries.step_by_pk(pk))

    def steps_of_job(self, job_pk: int) -> list[StepRecord]:
        return self._run(queries.steps_of_job(job_pk))

    def tasks_of_step(self, step_pk: int) -> list[TaskRecord]:
        return self._run(queries.tasks_of_step(step_pk))

    def get_task(self, step_pk: int, name: str) -> TaskRecord | None:
        return self._run(queries.task_named(step_pk, name))

    def get_task_by_pk(self, pk: int) -> TaskRecord | None:
        return self._run(queries.task_by_pk(pk))

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
        status: JobStatus = JobStatus.CREATED,
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
                    dump(spec),
                    platform_spec.model_dump_json(),
                    fileset,
                    output_location,
                    dump(ownership),
                    dump(custom_fields),
                    dump(auth_context),
                    attempt_id,
                    status.value,
                    now,
                    now,
                ),
            )
        except sqlite3.IntegrityError as exc:
            raise AlreadyExists(f"a job named {name!r} already exists in workspace {workspace!r}") from exc
        assert cursor.lastrowid is not None
        # Built from what the request's models already validated: no second validation.
        return JobRecord.model_construct(
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
            status=status,
            status_details={},
            error_details=None,
        )

    def insert_step(
        self,
        job: JobRecord,
        index: int,
        step_id: str,
        now: int,
        *,
        pk: int | None = None,
        status: JobStatus = JobStatus.CREATED,
        status_details: dict[str, Any] | None = None,
    ) -> StepRecord:
        """`pk`: a key taken from `Repository.new_step_key` (one is taken here otherwise)."""
        spec = job.platform_spec.steps[index]
        pk = self._step_keys.take() if pk is None else pk
        details = status_details or {}
        self.left_steps_waiting |= status in STARTABLE_STATUSES
        self._conn.execute(
            "INSERT INTO steps (pk, id, workspace, job_pk, job_name, job_source, attempt_id, fileset,"
            " output_location, auth_context, idx, name, spec, status, status_details, created_at,"
            " updated_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                pk,
                step_id,
                job.workspace,
                job.pk,
                job.name,
                job.source,
                job.attempt_id,
                job.fileset,
                job.output_location,
                dump(job.auth_context),
                index,
                spec.name,
                spec.model_dump_json(),
                status.value,
                json_text.dumps(details),
                now,
                now,
            ),
        )
        # Built from what is known already, as insert_job's record.
        return StepRecord.model_construct(
            pk=pk,
            id=step_id,
            name=spec.name,
            workspace=job.workspace,
            job_pk=job.pk,
            job_name=job.name,
            job_source=job.source,
            attempt_id=job.attempt_id,
            fileset=job.fileset,
            output_location=job.output_location,
            auth_context=job.auth_context,
            index=index,
            spec=spec,
            status=status,
            status_details=details,
            error_details=None,
            created_at=now,
            updated_at=now,
            active_since=None,
            active_us=0,
            handle=None,
        )

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
            (status.value, dump(status_details), dump(error_details), now, pk),
        )

    def merge_job_status_details(self, pk: int, details: dict[str, Any]) -> None:
        """Shallow: each key replaces the job's (a nested object is not merged into)."""
        if details and all(_PLAIN_KEY.fullmatch(key) for key in details):
            # One statement, no read back: json_set replaces (or appends) each top-level key.
            paths = ", ".join("?, json(?)" for _ in details)
            args: list[Any] = []
            for key, value in details.items():
                args += [f"$.{key}", dump(value)]
            self._conn.execute(
                f"UPDATE jobs SET status_details = json_set(status_details, {paths}) WHERE pk = ?",
                (*args, pk),
            )
            return
        row = self._conn.execute("SELECT status_details FROM jobs WHERE pk = ?", (pk,)).fetchone()
        if row is None:
            return
        merged = {**json_text.loads(row[0]), **details}
        self._conn.execute("UPDATE jobs SET status_details = ? WHERE pk = ?", (dump(merged), pk))

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
        self.left_steps_waiting |= status in STARTABLE_STATUSES
        self._conn.execute(
            "UPDATE steps SET status = ?, status_details = ?, error_details = ?, active_since = ?,"
            " active_us = ?, updated_at = ?, handle = COALESCE(?, handle) WHERE pk = ?",
            (
                status.value,
                dump(status_details),
                dump(error_details),
                active_since,
                active_us,
                now,
                dump(handle),
                pk,
            ),
        )

    def set_job_status(
        self, pk: int, *, status: JobStatus, error_details: dict[str, Any] | None, now: int
    ) -> None:
        self._conn.execute(
            "UPDATE jobs SET status = ?, error_details = ?, updated_at = ? WHERE pk = ?",
            (status.value, dump(error_details), now, pk),
        )

    def mark_folders_removed(self, pk: int) -> None:
        self._conn.execute("UPDATE steps SET folders_removed = 1 WHERE pk = ?", (pk,))

    def set_step_handle(self, pk: int, handle: dict[str, Any] | None) -> None:
        self._conn.execute("UPDATE steps SET handle = ? WHERE pk = ?", (dump(handle), pk))

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
                dump(status_details),
                dump(error_details),
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
            (*sources, status.value, dump(details), dump(errors), stack, now, pk),
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
                dump(status_details),
                dump(error_details),
                error_stack,
                heartbeat_at,
                now,
                pk,
            ),
        )

    def delete_job(self, pk: int) -> None:
        self._conn.execute("DELETE FROM jobs WHERE pk = ?", (pk,))

    def append_log_output(self, entry: LogAppend) -> AppendOutcome:
        """Index chunks written to the task's log file, with the read offset they end at, in one
        commit (storage/logs.py): a crash loses or repeats nothing."""
        return logs.append(self._conn, entry)
