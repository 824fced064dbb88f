"""The one write connection: a thread of its own that runs each transaction whole, and commits
the transactions that queued up meanwhile together.

Reads go through aiosqlite, which sends every statement to its connection's thread separately.
For writes that cost too much: a status change is a read-modify-write of ~7 statements, i.e. ~7
hand-offs between threads, each waiting for the event loop and the GIL, and writes are serial
(one writer). Measured under load (1,000 jobs submitted 16 at a time): the write lock was held
~100% of the time, ~1.9 ms per transaction, which capped throughput. aiosqlite has no public way
to run a function on its thread (omnilib/aiosqlite#19), so the writer is this small owner of a
`sqlite3.Connection`: a unit of work is a plain function, run on this thread in one hand-off.

Group commit: the units that queued while the previous commit ran share one transaction, each in
a savepoint of its own, so a failing unit undoes only its own writes. A caller hears back only
after the commit that holds its writes; when that commit fails, every unit in it fails.

A small unit asked for while nothing else is being written (one POST at a time, an idle daemon)
skips the thread: it runs at once on the event loop's thread, unless another program holds the
write lock. Measured (docs/benchmarks.md, "A lone small write on the loop's thread"): the trip to
the thread and back, and the GIL waits it brings, were most of a lone submit's wait beyond its
SQL. Checkpoints therefore run on the thread, every _COMMITS_PER_CHECKPOINT commits, never inside
a commit on the loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 5000
# Hand-overs are added to a batch until it holds this many units (one hand-over is never split):
# a batch cannot grow without end while the queue keeps filling.
_MAX_BATCH = 64
# About SQLite's own checkpoint threshold (1,000 pages) at the ~20 pages a job's commit changes.
_COMMITS_PER_CHECKPOINT = 50


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
class _Unit:
    work: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    in_transaction: bool
    on_commit: Callable[[Any], None] | None = None
    outcome: tuple[bool, Any] | None = None  # (succeeded, result or exception); None: not run


class _TransactionLost(Exception):
    """A failed unit could not be undone alone: the whole batch was rolled back."""


_STOP = object()


class WriterThread:
    """Runs units of work on the write connection, on one dedicated thread, in arrival order."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[list[_Unit] | object] = queue.SimpleQueue()
        # Units asked for during the current turn of the event loop, handed over together at
        # its end: one hand-off (and usually one commit) for all of them.
        self._outbox: list[_Unit] = []
        self._conn: sqlite3.Connection | None = None
        # Units handed to the thread whose outcome the event loop has not yet settled: while
        # none are, the thread does not touch the connection, and the loop may use it.
        self._unsettled = 0
        self._commits_since_checkpoint = 0
        self._ran_here_this_turn = False
        self._closed = False
        # A daemon thread: if the event loop dies without close(), it must not hold the process.
        self._thread = threading.Thread(target=self._serve, name="localjobs-writer", daemon=True)

    @classmethod
    async def open(cls, path: Path) -> WriterThread:
        writer = cls(path)
        writer._thread.start()
        try:
            await writer.call(lambda conn: None, in_transaction=False)  # opens the connection
        except BaseException:
            await writer.close()
            raise
        return writer

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def path(self) -> Path:
        return self._path

    async def call[T](
        self,
        work: Callable[[sqlite3.Connection], T],
        *,
        in_transaction: bool = True,
        on_commit: Callable[[T], None] | None = None,
        small: bool = False,
    ) -> T:
        """Run `work(connection)` on the writer's thread, inside the current batch's transaction
        (or alone and outside any, for migrations). A `small` unit (a few rows), when nothing
        else is being written, runs at once on the caller's thread instead, in a transaction of
        its own (_run_here). Bounded: every statement waits at most busy_timeout for a lock. A
        cancelled caller does not undo work that already started; `on_commit(result)`, called
        on the event loop once the work is committed, before the caller resumes, is called even
        then."""
        if self._closed:
            raise sqlite3.OperationalError("the database writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        unit = _Unit(work, future, in_transaction, on_commit)
        quiet = not self._unsettled and not self._ran_here_this_turn
        if small and in_transaction and quiet and self._run_here(unit):
            # The next one this turn goes to the thread: in a burst (many requests read in one
            # turn) the rest then share a commit there, rather than each making its own.
            self._ran_here_this_turn = True
            loop.call_soon(self._new_turn)
            _settle([unit])
            return await future
        if not self._outbox:
            loop.call_soon(self._hand_over)
        self._outbox.append(unit)
        self._unsettled += 1
        return await future

    def _new_turn(self) -> None:
        self._ran_here_this_turn = False

    def _run_here(self, unit: _Unit) -> bool:
        """Run a small unit on the caller's thread, now, in a transaction of its own: nothing
        else is being written, so a trip to the writer's thread and back would only add two
        thread wake-ups (and a wait for the GIL) to the caller's wait. False, nothing done: the
        write lock is held by another program, and the writer's thread, not the event loop,
        waits for it."""
        conn = self._conn
        if conn is None:
            return False
        try:
            conn.execute("PRAGMA busy_timeout = 0")
            try:
                conn.execute("BEGIN IMMEDIATE")
            finally:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error:
            if conn.in_transaction:  # begun, but the timeout not set back: leave nothing open
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            return False
        _commit_begun(conn, [unit])
        self._commits_since_checkpoint += 1
        if self._commits_since_checkpoint >= _COMMITS_PER_CHECKPOINT:
            self._commits_since_checkpoint = 0
            # On the writer's thread: a checkpoint copies pages back (and syncs) for milliseconds.
            checkpoint = _Unit(_checkpoint, unit.future.get_loop().create_future(), in_transaction=False)
            self._unsettled += 1
            self._queue.put([checkpoint])
        return True

    def _hand_over(self) -> None:
        if self._outbox:
            units, self._outbox = self._outbox, []
            self._queue.put(units)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hand_over()
        self._queue.put(_STOP)
        # The thread finishes what is queued, closes the connection and ends: a short wait.
        await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30.0)

    def _settled(self, units: list[_Unit]) -> None:
        self._unsettled -= len(units)
        _settle(units)

    # ----------------------------------------------------------------- the writer's thread

    def _serve(self) -> None:
        try:
            stop = False
            while not stop:
                batch: list[_Unit] = []
                item = self._queue.get()
                while item is not _STOP:
                    assert isinstance(item, list)
                    batch.extend(item)
                    if len(batch) >= _MAX_BATCH:
                        break
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                stop = item is _STOP
                if batch:
                    try:
                        self._run_batch(batch)
                    except BaseException as exc:  # a bug here: fail the batch, never leave it waiting
                        log.exception("the database writer failed")
                        if self._conn is not None and self._conn.in_transaction:
                            with contextlib.suppress(sqlite3.Error):
                                self._conn.execute("ROLLBACK")
                        for unit in batch:
                            if unit.outcome is None or unit.outcome[0]:
                                unit.outcome = (False, sqlite3.OperationalError(f"writer failure: {exc}"))
                    self._commits_since_checkpoint += 1
                    if self._commits_since_checkpoint >= _COMMITS_PER_CHECKPOINT and self._conn is not None:
                        self._commits_since_checkpoint = 0
                        _checkpoint(self._conn)
                    _deliver(batch, self._settled)
        finally:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            # isolation_level=None: transactions are begun and ended explicitly, never implicitly.
            # check_same_thread off: small units run on the event loop's thread too (_run_here),
            # never while this thread uses the connection.
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
            try:
                configure(conn)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _run_batch(self, units: list[_Unit]) -> None:
        try:
            conn = self._connection()
        except BaseException as exc:
            for unit in units:
                unit.outcome = (False, exc)
            return
        together: list[_Unit] = []
        for unit in units:
            if unit.in_transaction:
                together.append(unit)
                continue
            _commit(conn, together)
            together = []
            try:
                unit.outcome = (True, unit.work(conn))
            except BaseException as exc:
                unit.outcome = (False, exc)
        _commit(conn, together)


def _commit(conn: sqlite3.Connection, units: list[_Unit]) -> None:
    """Run the units in one transaction; commit what succeeded."""
    if not units:
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        for unit in units:
            unit.outcome = (False, exc)
        return
    _commit_begun(conn, units)


def _commit_begun(conn: sqlite3.Connection, units: list[_Unit]) -> None:
    """Run the units in the transaction just begun, each in a savepoint of its own, so that a
    failing one undoes only its own writes (a lone unit needs none: the rollback of the whole
    transaction undoes just it); commit what succeeded."""
    try:
        if len(units) == 1:
            _run_alone(conn, units[0])
            return
        for unit in units:
            _run_in_savepoint(conn, unit)
        conn.execute("COMMIT")
    except (sqlite3.Error, _TransactionLost) as exc:
        failure = exc.__cause__ if isinstance(exc, _TransactionLost) else exc
        if conn.in_transaction:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                log.exception("rollback failed")
        for unit in units:
            if unit.outcome is None or unit.outcome[0]:
                unit.outcome = (False, failure)  # its writes were not kept


def _run_alone(conn: sqlite3.Connection, unit: _Unit) -> None:
    try:
        result = unit.work(conn)
    except BaseException as exc:
        unit.outcome = (False, exc)
        conn.execute("ROLLBACK")  # should this fail, _commit_begun rolls back and says so
        return
    conn.execute("COMMIT")
    unit.outcome = (True, result)


def _checkpoint(conn: sqlite3.Connection) -> None:
    """Copy the committed pages back into the database file, as far as readers allow (PASSIVE:
    it waits for no one). A failure only leaves the WAL longer until the next one."""
    try:
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
    except sqlite3.Error as exc:
        log.warning("checkpoint failed: %s", exc)


def _run_in_savepoint(conn: sqlite3.Connection, unit: _Unit) -> None:
    conn.execute("SAVEPOINT unit")
    try:
        result = unit.work(conn)
    except BaseException as exc:
        unit.outcome = (False, exc)
        try:
            conn.execute("ROLLBACK TO unit")
            conn.execute("RELEASE unit")
        except sqlite3.Error as undo_failure:
            raise _TransactionLost() from undo_failure
        return
    conn.execute("RELEASE unit")
    unit.outcome = (True, result)


def _deliver(units: list[_Unit], settle: Callable[[list[_Unit]], None]) -> None:
    """Hand the outcomes to their event loops: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Unit]] = {}
    for unit in units:
        by_loop.setdefault(unit.future.get_loop(), []).append(unit)
    for loop, mine in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle, mine)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting any more


def _settle(units: list[_Unit]) -> None:
    for unit in units:
        succeeded, value = unit.outcome or (False, RuntimeError("the write was never run"))
        if succeeded and unit.on_commit is not None:
            try:
                unit.on_commit(value)
            except Exception:  # a bug of the hook: logged; the write stands and its caller gets its result
                log.exception("a commit hook failed")
        if unit.future.done():
            continue  # its caller was cancelled
        if succeeded:
            unit.future.set_result(value)
            continue
        try:
            unit.future.set_exception(value)
        except TypeError:  # e.g. StopIteration, which a future refuses to carry
            unit.future.set_exception(RuntimeError(f"the write failed: {value!r}"))
