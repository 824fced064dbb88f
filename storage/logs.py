"""Logs: the tables of a task's output (log_lines, log_stats, log_offsets), the writes that
append lines and trim a task's output to its size limit (on the writer's connection, inside a
`WriteTx`), and the reads of pages and totals (on the reader connection)."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from runner.models import LogLine, LogQuery
from storage.rows import log_line

_LOG_SELECT = "SELECT l.*, j.name AS job_name FROM log_lines l JOIN jobs j ON j.pk = l.job_pk"

# ----------------------------------------------------------------- writes (the writer's thread)


def _one(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    return row


def append_lines(
    conn: sqlite3.Connection,
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
        conn.executemany(
            "INSERT INTO log_lines (job_pk, attempt_id, step_name, task_name, stream, ts, message)"
            " VALUES (?,?,?,?,?,?,?)",
            [(job_pk, attempt_id, step_name, task_name, stream, ts, msg) for ts, msg in lines],
        )
        added = sum(len(msg.encode("utf-8", "replace")) for _, msg in lines)
        conn.execute(
            "INSERT INTO log_stats (task_pk, job_pk, attempt_id, step_name, task_name, stored_lines,"
            " stored_bytes) VALUES (?,?,?,?,?,?,?) ON CONFLICT (task_pk) DO UPDATE SET"
            " stored_lines = stored_lines + excluded.stored_lines,"
            " stored_bytes = stored_bytes + excluded.stored_bytes",
            (task_pk, job_pk, attempt_id, step_name, task_name, len(lines), added),
        )
        if max_task_bytes > 0:
            dropped = _trim_task_log(conn, job_pk, step_name, task_pk, task_name, max_task_bytes)
    conn.execute(
        "INSERT INTO log_offsets (task_pk, stream, offset) VALUES (?,?,?)"
        " ON CONFLICT (task_pk, stream) DO UPDATE SET offset = excluded.offset",
        (task_pk, stream, new_offset),
    )
    return dropped


def _trim_task_log(
    conn: sqlite3.Connection, job_pk: int, step_name: str, task_pk: int, task_name: str, max_bytes: int
) -> int:
    row = _one(conn, "SELECT stored_bytes FROM log_stats WHERE task_pk = ?", (task_pk,))
    excess = (row[0] if row else 0) - max_bytes
    if excess <= 0:
        return 0
    # Drop a little more than needed so trimming happens once per chunk, not once per line.
    # The cut-off is found by SQLite itself (a running sum), not by shipping rows to Python.
    target = excess + max_bytes // 10
    cut = _one(
        conn,
        "SELECT id, freed, n FROM (SELECT id, SUM(length(CAST(message AS BLOB))) OVER w AS freed,"
        " ROW_NUMBER() OVER w AS n FROM log_lines WHERE job_pk = ? AND step_name = ? AND task_name = ?"
        " WINDOW w AS (ORDER BY id)) WHERE freed >= ? ORDER BY id LIMIT 1",
        (job_pk, step_name, task_name, target),
    )
    if cut is None:
        return 0
    cutoff, freed, count = cut["id"], cut["freed"], cut["n"]
    conn.execute(
        "DELETE FROM log_lines WHERE job_pk = ? AND step_name = ? AND task_name = ? AND id <= ?",
        (job_pk, step_name, task_name, cutoff),
    )
    conn.execute(
        "UPDATE log_stats SET stored_lines = stored_lines - ?, stored_bytes = stored_bytes - ?,"
        " dropped_lines = dropped_lines + ? WHERE task_pk = ?",
        (count, freed, count, task_pk),
    )
    return int(count)


# ----------------------------------------------------------------- reads (the reader connection)


async def offsets(conn: aiosqlite.Connection, task_pk: int) -> dict[str, int]:
    """How far each of the task's output files has been stored, by stream."""
    rows = await conn.execute_fetchall("SELECT stream, offset FROM log_offsets WHERE task_pk = ?", (task_pk,))
    return {row["stream"]: row["offset"] for row in rows}


def _scope(query: LogQuery) -> tuple[str, list[Any]]:
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


async def totals(conn: aiosqlite.Connection, query: LogQuery) -> tuple[int, int]:
    """(lines stored, lines dropped by the size limit) in the scope, from per-task counters."""
    clause, args = _scope(query)
    rows = await conn.execute_fetchall(
        "SELECT COALESCE(SUM(stored_lines), 0), COALESCE(SUM(dropped_lines), 0)"
        f" FROM log_stats l WHERE {clause}",
        args,
    )
    for row in rows:
        return (row[0], row[1])
    return (0, 0)


async def lines_after(
    conn: aiosqlite.Connection, query: LogQuery, after_id: int, limit: int
) -> list[LogLine]:
    clause, args = _scope(query)
    rows = await conn.execute_fetchall(
        f"{_LOG_SELECT} WHERE {clause} AND l.id > ? ORDER BY l.id ASC LIMIT ?", [*args, after_id, limit]
    )
    return [log_line(r) for r in rows]


async def lines_before(
    conn: aiosqlite.Connection, query: LogQuery, before_id: int | None, limit: int
) -> list[LogLine]:
    """The `limit` lines just before `before_id` (newest ones when None), in ascending order."""
    clause, args = _scope(query)
    if before_id is not None:
        clause += " AND l.id < ?"
        args.append(before_id)
    rows = await conn.execute_fetchall(
        f"{_LOG_SELECT} WHERE {clause} ORDER BY l.id DESC LIMIT ?", [*args, limit]
    )
    return [log_line(r) for r in reversed(list(rows))]
