"""Query builders: the reads both sides run (a `Query` is used inside write transactions,
sync, and on the reader connection, async), and the filters, sorts and counts of the job and
step lists, as SQL text with its arguments."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from runner.models import (
    JobFilter,
    JobRecord,
    JobSort,
    ResultRecord,
    SecretRecord,
    StepFilter,
    StepRecord,
    StepSort,
    StringCondition,
    TaskRecord,
)
from storage.rows import job_record, result_record, secret_record, step_record, task_record

JOB_SORT_SQL = {
    JobSort.CREATED_AT: "created_at ASC, pk ASC",
    JobSort.CREATED_AT_DESC: "created_at DESC, pk DESC",
    JobSort.UPDATED_AT: "updated_at ASC, pk ASC",
    JobSort.UPDATED_AT_DESC: "updated_at DESC, pk DESC",
    JobSort.SOURCE: "source ASC, pk ASC",
    JobSort.SOURCE_DESC: "source DESC, pk DESC",
}
STEP_SORT_SQL = {
    StepSort.CREATED_AT: "created_at ASC, pk ASC",
    StepSort.CREATED_AT_DESC: "created_at DESC, pk DESC",
    StepSort.UPDATED_AT: "updated_at ASC, pk ASC",
    StepSort.UPDATED_AT_DESC: "updated_at DESC, pk DESC",
}


# GPUs a step's executor asks for, in SQL (runner.models.needs_of is the same rule): `num_gpus`
# (1 by default on the GPU providers), on each of `num_nodes` nodes for a distributed step.
PROVIDER = "json_extract(spec, '$.executor.provider')"
_GPUS_NEEDED = (
    f"(COALESCE(json_extract(spec, '$.executor.resources.num_gpus'),"
    f" CASE WHEN {PROVIDER} IN ('gpu', 'gpu_distributed') THEN 1 ELSE 0 END)"
    f" * CASE WHEN {PROVIDER} = 'gpu_distributed'"
    " THEN COALESCE(json_extract(spec, '$.executor.resources.num_nodes'), 1) ELSE 1 END)"
)
REQUEST_CPU = "json_extract(spec, '$.executor.resources.requests.cpu')"
REQUEST_MEMORY = "json_extract(spec, '$.executor.resources.requests.memory')"
# A step the allocator must admit: one asking for GPUs, or for CPUs or memory.
DEMANDS = f"({_GPUS_NEEDED} > 0 OR {REQUEST_CPU} IS NOT NULL OR {REQUEST_MEMORY} IS NOT NULL)"

TASK_SELECT = (
    "SELECT t.*, s.workspace AS workspace, s.id AS step_id FROM tasks t JOIN steps s ON s.pk = t.step_pk"
)


def string_condition(column: str, cond: StringCondition, where: list[str], args: list[Any]) -> None:
    """A filter's condition on a text column ($eq, $like, $in, $nin), added to `where` and `args`."""
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
class Query[T]:
    """A read used both inside write transactions (sync) and on the reader connection (async)."""

    sql: str
    args: Sequence[Any]
    build: Callable[[list[sqlite3.Row]], T]


def first[R](convert: Callable[[sqlite3.Row], R]) -> Callable[[list[sqlite3.Row]], R | None]:
    return lambda rows: convert(rows[0]) if rows else None


def each[R](convert: Callable[[sqlite3.Row], R]) -> Callable[[list[sqlite3.Row]], list[R]]:
    return lambda rows: [convert(row) for row in rows]


def job_named(workspace: str, name: str) -> Query[JobRecord | None]:
    return Query("SELECT * FROM jobs WHERE workspace = ? AND name = ?", (workspace, name), first(job_record))


def job_by_pk(pk: int) -> Query[JobRecord | None]:
    return Query("SELECT * FROM jobs WHERE pk = ?", (pk,), first(job_record))


def step_named(workspace: str, job_name: str, step_name: str) -> Query[StepRecord | None]:
    return Query(
        "SELECT * FROM steps WHERE workspace = ? AND job_name = ? AND name = ?",
        (workspace, job_name, step_name),
        first(step_record),
    )


def step_by_pk(pk: int) -> Query[StepRecord | None]:
    return Query("SELECT * FROM steps WHERE pk = ?", (pk,), first(step_record))


def steps_of_job(job_pk: int) -> Query[list[StepRecord]]:
    return Query("SELECT * FROM steps WHERE job_pk = ? ORDER BY idx", (job_pk,), each(step_record))


def tasks_of_step(step_pk: int) -> Query[list[TaskRecord]]:
    return Query(f"{TASK_SELECT} WHERE t.step_pk = ? ORDER BY t.pk", (step_pk,), each(task_record))


def task_named(step_pk: int, name: str) -> Query[TaskRecord | None]:
    return Query(f"{TASK_SELECT} WHERE t.step_pk = ? AND t.name = ?", (step_pk, name), first(task_record))


def task_by_pk(pk: int) -> Query[TaskRecord | None]:
    return Query(f"{TASK_SELECT} WHERE t.pk = ?", (pk,), first(task_record))


def secret_named(workspace: str, name: str) -> Query[SecretRecord | None]:
    return Query(
        "SELECT * FROM secrets WHERE workspace = ? AND name = ?", (workspace, name), first(secret_record)
    )


def result_named(job_pk: int, name: str) -> Query[ResultRecord | None]:
    return Query("SELECT * FROM results WHERE job_pk = ? AND name = ?", (job_pk, name), first(result_record))


def job_list_where(flt: JobFilter) -> tuple[str, list[Any]]:
    """The WHERE clause (without the keyword) of List Jobs, and its arguments."""
    where = ["workspace = ?"]
    args: list[Any] = [flt.workspace]
    for column, cond in (("name", flt.name), ("source", flt.source), ("project", flt.project)):
        if cond is not None:
            string_condition(column, cond, where, args)
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
    return " AND ".join(where), args


def step_list_where(flt: StepFilter) -> tuple[str, list[Any]]:
    """The WHERE clause (with the keyword; empty when nothing filters) of List Steps, and its
    arguments."""
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
    return clause, args


def step_count(flt: StepFilter, clause: str, args: list[Any]) -> tuple[str, list[Any]]:
    """How List Steps counts its total (one row, one number), given the clause and arguments of
    `step_list_where`: from the trigger-kept counters, so the cost depends on the number of jobs
    or statuses involved, not on how many steps the store holds."""
    where: list[str] = []
    params: list[Any] = []
    if flt.job is not None and flt.source is not None:
        return f"SELECT COUNT(*) FROM steps {clause}", args  # one job: few rows
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
    return f"SELECT COALESCE(SUM(n), 0) FROM {table} {condition}", params


def job_count(flt: JobFilter, clause: str, args: list[Any]) -> tuple[str, list[Any]]:
    """How List Jobs counts its total, given the clause and arguments of `job_list_where`: with
    only a workspace and statuses, from the trigger-kept counters (migration 5), whose cost
    depends on the number of statuses, not on how many jobs the store holds (a COUNT(*) over the
    workspace's index took 90 ms at 1,000,000 jobs); any other filter counts the rows."""
    bounds = (flt.created_gte, flt.created_lte, flt.updated_gte, flt.updated_lte)
    if flt.name is not None or flt.source is not None or flt.project is not None or bounds != (None,) * 4:
        return f"SELECT COUNT(*) FROM jobs WHERE {clause}", args
    where, params = ["workspace = ?"], [flt.workspace]
    if flt.statuses:
        where.append(f"status IN ({','.join('?' * len(flt.statuses))})")
        params.extend(s.value for s in flt.statuses)
    return f"SELECT COALESCE(SUM(n), 0) FROM job_counts WHERE {' AND '.join(where)}", params
