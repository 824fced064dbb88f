"""Logs: the index of a task's stored output (log_chunks), its per-task accounting (log_stats)
and read offsets (log_offsets); the writes that append chunks and trim a task's output to its
size limit (on the writer's connection, inside a `WriteTx`), and the reads of pages and totals
(on the reader connection), which fetch the lines themselves from the task's log file
(storage/log_files.py).

A chunk is whole lines of one stream stored at one time: one row, however many lines. Its bytes
are at [offset, offset + length) of the task's log file, or inline in `data` for lines stored
before chunks existed. A line's id is `line_id(chunk id, index in the chunk)`.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any

import aiosqlite

from runner.models import AppendOutcome, LogAppend, LogLine, LogProgress, LogQuery, line_id, split_line_id
from storage.log_files import LogFiles

_CHUNK_SELECT = "SELECT c.*, j.name AS job_name FROM log_chunks c JOIN jobs j ON j.pk = c.job_pk"
# Chunks fetched per query while paging: a page of 100 short lines is usually in one or two.
_CHUNK_BATCH = 8

# ----------------------------------------------------------------- writes (the writer's thread)


def _one(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> sqlite3.Row | None:
    row: sqlite3.Row | None = conn.execute(sql, args).fetchone()
    return row


def append(conn: sqlite3.Connection, entry: LogAppend) -> AppendOutcome:
    """Index chunks already written to the task's log file, with the offsets its output files
    were read up to, in one commit: a crash loses or repeats nothing.

    With `max_task_bytes` > 0 the task keeps only its newest output within that size, dropping
    whole chunks from the front (counted in log_stats)."""
    offset = entry.file_offset
    rows = []
    for chunk in entry.chunks:
        rows.append(
            (
                entry.job_pk,
                entry.attempt_id,
                entry.step_name,
                entry.task_name,
                entry.task_pk,
                chunk.stream,
                chunk.timestamp,
                chunk.lines,
                offset,
                chunk.size,
            )
        )
        offset += chunk.size
    outcome = AppendOutcome()
    if rows:
        conn.executemany(
            "INSERT INTO log_chunks (job_pk, attempt_id, step_name, task_name, task_pk, stream, ts,"
            " lines, offset, length) VALUES (?,?,?,?,?,?,?,?,?,?)",
            rows,
        )
        conn.execute(
            "INSERT INTO log_stats (task_pk, job_pk, attempt_id, step_name, task_name, stored_lines,"
            " stored_bytes, file_end) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (task_pk) DO UPDATE SET"
            " stored_lines = stored_lines + excluded.stored_lines,"
            " stored_bytes = stored_bytes + excluded.stored_bytes, file_end = excluded.file_end",
            (
                entry.task_pk,
                entry.job_pk,
                entry.attempt_id,
                entry.step_name,
                entry.task_name,
                sum(c.lines for c in entry.chunks),
                entry.size,
                entry.progress.file_end,
            ),
        )
        if entry.max_task_bytes > 0:
            outcome = _trim_task_log(conn, entry.task_pk, entry.max_task_bytes)
    progress = entry.progress
    conn.executemany(
        "INSERT INTO log_offsets (task_pk, stream, offset) VALUES (?,?,?)"
        " ON CONFLICT (task_pk, stream) DO UPDATE SET offset = excluded.offset",
        [
            (entry.task_pk, "stdout", progress.stdout),
            (entry.task_pk, "stderr", progress.stderr),
            (entry.task_pk, "order", progress.order),
        ],
    )
    return outcome


def _trim_task_log(conn: sqlite3.Connection, task_pk: int, max_bytes: int) -> AppendOutcome:
    row = _one(conn, "SELECT stored_bytes FROM log_stats WHERE task_pk = ?", (task_pk,))
    excess = (row[0] if row else 0) - max_bytes
    if excess <= 0:
        return AppendOutcome()
    # Drop a little more than needed so trimming happens once per few chunks, not at each one.
    # The cut-off is found by SQLite itself (a running sum over the task's chunks). Chunks from
    # before the upgrade (bytes inline, all older than any in the file) free no file range.
    target = excess + max_bytes // 10
    cut = _one(
        conn,
        "SELECT id, freed, n, kept_from FROM (SELECT id, SUM(length) OVER w AS freed,"
        " SUM(lines) OVER w AS n, CASE WHEN data IS NULL THEN offset + length ELSE 0 END AS kept_from"
        " FROM log_chunks WHERE task_pk = ?"
        " WINDOW w AS (ORDER BY id)) WHERE freed >= ? ORDER BY id LIMIT 1",
        (task_pk, target),
    )
    if cut is None:
        return AppendOutcome()
    conn.execute("DELETE FROM log_chunks WHERE task_pk = ? AND id <= ?", (task_pk, cut["id"]))
    count = int(cut["n"])
    conn.execute(
        "UPDATE log_stats SET stored_lines = stored_lines - ?, stored_bytes = stored_bytes - ?,"
        " dropped_lines = dropped_lines + ? WHERE task_pk = ?",
        (count, cut["freed"], count, task_pk),
    )
    return AppendOutcome(dropped_lines=count, kept_from=int(cut["kept_from"]))


# ----------------------------------------------------------------- reads (the reader connection)


async def progress(conn: aiosqlite.Connection, task_pk: int) -> LogProgress:
    """How far the task's output files have been stored, and where its log file ends."""
    rows = await conn.execute_fetchall("SELECT stream, offset FROM log_offsets WHERE task_pk = ?", (task_pk,))
    offsets = {row["stream"]: row["offset"] for row in rows}
    ends = await conn.execute_fetchall("SELECT file_end FROM log_stats WHERE task_pk = ?", (task_pk,))
    file_end = next((row[0] for row in ends), 0)
    return LogProgress(
        stdout=offsets.get("stdout", 0),
        stderr=offsets.get("stderr", 0),
        order=offsets.get("order", 0),
        file_end=file_end,
    )


def _scope(query: LogQuery, alias: str) -> tuple[str, list[Any]]:
    where = [f"{alias}.job_pk = ?"]
    args: list[Any] = [query.job_pk]
    for column, value in (
        ("attempt_id", query.attempt_id),
        ("step_name", query.step_name),
        ("task_name", query.task_name),
    ):
        if value is not None:
            where.append(f"{alias}.{column} = ?")
            args.append(value)
    return " AND ".join(where), args


async def totals(conn: aiosqlite.Connection, query: LogQuery) -> tuple[int, int]:
    """(lines stored, lines dropped by the size limit) in the scope, from per-task counters."""
    clause, args = _scope(query, "l")
    rows = await conn.execute_fetchall(
        "SELECT COALESCE(SUM(stored_lines), 0), COALESCE(SUM(dropped_lines), 0)"
        f" FROM log_stats l WHERE {clause}",
        args,
    )
    for row in rows:
        return (row[0], row[1])
    return (0, 0)


class _Chunk:
    """One index row and, once read, its lines."""

    __slots__ = ("row",)

    def __init__(self, row: sqlite3.Row) -> None:
        self.row = row

    def lines(self, files: LogFiles) -> list[bytes]:
        row = self.row
        data = row["data"]
        if data is None:
            data = files.read_at(row["job_pk"], row["task_pk"], row["offset"], row["length"])
        lines: list[bytes] = data.split(b"\n")
        if lines and not lines[-1]:
            lines.pop()
        return lines

    def line(self, index: int, text: bytes) -> LogLine:
        row = self.row
        message = text.rstrip(b"\r").decode("utf-8", "replace")
        stream = row["stream"]
        # (The plain constructor: pydantic's model_construct is twice as slow for this model.)
        return LogLine(
            id=line_id(row["id"], index),
            timestamp=row["ts"],
            job_name=row["job_name"],
            attempt_id=row["attempt_id"],
            step_name=row["step_name"],
            task_name=row["task_name"],
            stream=stream,
            message=f"[stderr] {message}" if stream == "stderr" else message,
        )


async def lines_after(
    conn: aiosqlite.Connection, files: LogFiles, query: LogQuery, after_id: int, limit: int
) -> list[LogLine]:
    """Up to `limit` lines after line `after_id`, in ascending order."""
    clause, args = _scope(query, "c")
    first_chunk, first_index = split_line_id(after_id)
    found: list[LogLine] = []
    start = first_chunk
    while len(found) < limit:
        rows = list(
            await conn.execute_fetchall(
                f"{_CHUNK_SELECT} WHERE {clause} AND c.id >= ? ORDER BY c.id ASC LIMIT ?",
                [*args, start, _CHUNK_BATCH],
            )
        )
        for row in rows:
            chunk = _Chunk(row)
            skip = first_index + 1 if row["id"] == first_chunk else 0
            texts = chunk.lines(files)[skip : skip + limit - len(found)]
            found.extend(chunk.line(skip + i, text) for i, text in enumerate(texts))
            if len(found) >= limit:
                break
        if len(rows) < _CHUNK_BATCH:
            break
        start = rows[-1]["id"] + 1
    return found


async def lines_before(
    conn: aiosqlite.Connection, files: LogFiles, query: LogQuery, before_id: int | None, limit: int
) -> list[LogLine]:
    """The `limit` lines just before line `before_id` (the newest ones when None), ascending."""
    clause, args = _scope(query, "c")
    last_chunk, last_index = split_line_id(before_id) if before_id is not None else (2**62, 0)
    batches: list[list[LogLine]] = []  # newest first
    count = 0
    end = last_chunk
    while count < limit:
        rows = list(
            await conn.execute_fetchall(
                f"{_CHUNK_SELECT} WHERE {clause} AND c.id <= ? ORDER BY c.id DESC LIMIT ?",
                [*args, end, _CHUNK_BATCH],
            )
        )
        for row in rows:
            chunk = _Chunk(row)
            texts = chunk.lines(files)
            stop = last_index if before_id is not None and row["id"] == last_chunk else len(texts)
            begin = max(0, stop - (limit - count))
            batches.append([chunk.line(i, texts[i]) for i in range(begin, min(stop, len(texts)))])
            count += len(batches[-1])
            if count >= limit:
                break
        if len(rows) < _CHUNK_BATCH:
            break
        end = rows[-1]["id"] - 1
    return [line for batch in reversed(batches) for line in batch]
