"""How the writer's units of work run on its connection: the unit, its transaction (each in a
savepoint of its own when several share one commit; a lone one needs none), the connection's
settings and the checkpoint. Used by storage/writer.py, on whichever thread holds the connection
at the time."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000


def configure(conn: sqlite3.Connection) -> None:
    """Settings of the write connection (WAL mode, once set, holds for every connection)."""
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode is durable across process crashes; only an OS crash can drop the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    # Savepoints keep the pages they change in a sub-journal: in memory, not in a temp file
    # (measured: ~150 pwrite calls per job to that file otherwise).
    conn.execute("PRAGMA temp_store = MEMORY")
    # Checkpoints are run by WriterThread, on its own thread: SQLite's automatic one would run
    # inside whichever COMMIT crosses its threshold, which may be one on the event loop's thread.
    conn.execute("PRAGMA wal_autocheckpoint = 0")


@dataclass
class Unit:
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    in_transaction: bool
    on_commit: Callable[[Any], None] | None = None
    outcome: tuple[bool, Any] | None = None  # (succeeded, result or exception); None: not run


class TransactionLost(Exception):
    """A failed unit could not be undone alone: the whole batch was rolled back."""


def commit(conn: sqlite3.Connection, units: list[Unit]) -> None:
    """Run the units in one transaction; commit what succeeded."""
    if not units:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        for unit in units:
            unit.outcome = (False, exc)
        return
    commit_begun(conn, units)


def commit_begun(conn: sqlite3.Connection, units: list[Unit]) -> None:
    """Run the units in the transaction just begun, each in a savepoint of its own, so that a
    failing one undoes only its own writes (a lone unit needs none: the rollback of the whole
    transaction undoes just it); commit what succeeded."""
    try:
        if len(units) == 1:
            run_alone(conn, units[0])
            return
        for unit in units:
            run_in_savepoint(conn, unit)
        conn.execute("COMMIT")
    except (sqlite3.Error, TransactionLost) as exc:
        failure = exc.__cause__ if isinstance(exc, TransactionLost) else exc
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")
        for unit in units:
            if unit.outcome is None or unit.outcome[0]:
                unit.outcome = (False, failure)  # its writes were not kept


def run_alone(conn: sqlite3.Connection, unit: Unit) -> None:
    try:
        result = unit.work(conn)
    except BaseException as exc:
        unit.outcome = (False, exc)
        conn.execute("ROLLBACK")  # should this fail, commit_begun rolls back and says so
        return
    conn.execute("COMMIT")
    unit.outcome = (True, result)


def set_busy_timeout(conn: sqlite3.Connection) -> None:
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    except sqlite3.Error as exc:
        log.warning("busy_timeout could not be set back on the writer's thread either: %s", exc)


def checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the committed pages back into the database file, as far as readers allow (PASSIVE:
    it waits for no one). A failure only leaves the WAL longer until the next one."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("checkpoint failed: %s", exc)


def run_in_savepoint(conn: sqlite3.Connection, unit: Unit) -> None:
    conn.execute("SAVEPOINT unit")
    try:
        result = unit.work(conn)
    except BaseException as exc:
        unit.outcome = (False, exc)
        try:
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
        except sqlite3.Error as undo_failure:
            raise TransactionLost() from undo_failure
        return
    conn.execute("RELEASE unit")
    unit.outcome = (True, result)
