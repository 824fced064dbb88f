"""Cursor paging over a job's log lines: forward pages, `tail`, and walking back from a tail.

Cursors are opaque base58(JSON) strings, as in the reference. Each names a line id and a
direction, and is bound to the filter scope it was made for: reusing it with other filters is a
422 "Invalid page cursor" (what the official SDK's watcher expects), never a 500.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Literal

from runner.errors import BadRequest, Unprocessable
from runner.models import LogLine, LogQuery, base58, line_id
from storage import Repository

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_MAX_CURSOR_CHARS = 512


@dataclass(frozen=True)
class Cursor:
    direction: Literal["f", "b"]
    line_id: int
    scope: str


@dataclass
class LogPage:
    lines: list[LogLine]
    total: int
    next_page: str | None
    prev_page: str | None
    dropped: int = 0


def scope_hash(query: LogQuery) -> str:
    key = f"{query.job_pk}|{query.attempt_id}|{query.step_name}|{query.task_name}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def encode_cursor(cursor: Cursor) -> str:
    payload = {"v": 3, "d": cursor.direction, "id": cursor.line_id, "q": cursor.scope}
    return base58(json.dumps(payload, separators=(",", ":")).encode())


def chunk_line(row_id: int) -> int:
    """The id now of the line that was row `row_id` before output was stored per chunk."""
    return line_id(row_id, 0)


def decode_cursor(text: str, query: LogQuery) -> Cursor:
    invalid = Unprocessable("Invalid page cursor")
    if not text or len(text) > _MAX_CURSOR_CHARS or any(c not in _B58_INDEX for c in text):
        raise invalid
    number = 0
    for char in text:
        number = number * 58 + _B58_INDEX[char]
    try:
        payload = json.loads(number.to_bytes((number.bit_length() + 7) // 8, "big"))
        direction, line_id, scope = payload["d"], payload["id"], payload["q"]
        version = payload.get("v", 2)
    except (ValueError, KeyError, TypeError):
        raise invalid from None
    if version == 2 and isinstance(line_id, int):
        # Made when a line was a row: that line is now a chunk of its own, at index 0.
        line_id = chunk_line(line_id)
    if direction not in ("f", "b") or not isinstance(line_id, int) or not 0 <= line_id < 2**63:
        raise invalid
    if scope != scope_hash(query):
        raise invalid
    return Cursor(direction=direction, line_id=line_id, scope=scope)


async def page_logs(
    store: Repository,
    query: LogQuery,
    *,
    limit: int | None,
    page_cursor: str | None,
    tail: int | None,
) -> LogPage:
    if tail is not None and (limit is not None or page_cursor is not None):
        raise BadRequest("`tail` cannot be combined with `limit` or `page_cursor`")
    scope = scope_hash(query)
    total, dropped = await store.log_totals(query)
    if tail is not None:
        lines = await store.log_lines_before(query, None, tail + 1)
        older = len(lines) > tail
        lines = lines[1:] if older else lines
        prev = encode_cursor(Cursor("b", lines[0].id, scope)) if older and lines else None
        return LogPage(lines=lines, total=total, next_page=None, prev_page=prev, dropped=dropped)
    size = limit if limit is not None else 100
    cursor = decode_cursor(page_cursor, query) if page_cursor else None
    if cursor is not None and cursor.direction == "b":
        lines = await store.log_lines_before(query, cursor.line_id, size + 1)
        older = len(lines) > size
        lines = lines[1:] if older else lines
        prev = encode_cursor(Cursor("b", lines[0].id, scope)) if older and lines else None
        nxt = encode_cursor(Cursor("f", lines[-1].id, scope)) if lines else None
        return LogPage(lines=lines, total=total, next_page=nxt, prev_page=prev, dropped=dropped)
    after = cursor.line_id if cursor is not None else 0
    lines = await store.log_lines_after(query, after, size + 1)
    newer = len(lines) > size
    lines = lines[:size]
    nxt = encode_cursor(Cursor("f", lines[-1].id, scope)) if newer else None
    prev = encode_cursor(Cursor("b", lines[0].id, scope)) if after > 0 and lines else None
    return LogPage(lines=lines, total=total, next_page=nxt, prev_page=prev, dropped=dropped)
