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
SQL. Checkpoints therefore run on the thread, every _UNITS_PER_CHECKPOINT units, never inside a
commit on the loop's thread; so does the first commit after one (it restarts the WAL and, with
synchronous=NORMAL, syncs its header).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from storage.units import (
    BUSY_TIMEOUT_MS,
    Unit,
    checkpoint,
    commit,
    commit_begun,
    configure,
    set_busy_timeout,
)

log = logging.getLogger(__name__)

# Hand-overs are added to a batch until it holds this many units (one hand-over is never split):
# a batch cannot grow without end while the queue keeps filling.
_MAX_BATCH = 64
# About SQLite's own checkpoint threshold (1,000 pages) at the ~20 pages a unit alone changes
# (units sharing a commit share pages: under load a checkpoint comes sooner than SQLite's).
_UNITS_PER_CHECKPOINT = 50


_STOP = object()


class WriterThread:
    """Runs units of work on the write connection, on one dedicated thread, in arrival order."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._queue: queue.SimpleQueue[list[Unit] | object] = queue.SimpleQueue()
        # Units asked for during the current turn of the event loop, handed over together at
        # its end: one hand-off (and usually one commit) for all of them.
        self._outbox: list[Unit] = []
        self._conn: sqlite3.Connection | None = None
        # Units asked for (in the outbox, handed to the thread, or done there) whose outcome the
        # event loop has not yet settled, a cancelled caller's too: while none are, the thread
        # does not touch the connection, and the loop may use it. A loop closed with some
        # undelivered keeps writes on the thread for good (safe).
        self._unsettled = 0
        self._units_since_checkpoint = 0
        self._ran_here_this_turn = False
        # Set by a checkpoint: the next commit restarts the WAL and syncs its header, on the thread.
        self._wal_restarts_next = False
        # Set for good should the connection's busy_timeout fail to be set back after a write here.
        self._here_refused = False
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
        else is being written and none ran so yet this turn of the loop, runs at once on the
        caller's thread instead, in a transaction of its own (_run_here). Bounded: every
        statement waits at most busy_timeout for a lock. A cancelled caller does not undo work
        that already started; `on_commit(result)`, called on the event loop once the work is
        committed, before the caller resumes, is called even then."""
        if self._closed:
            raise sqlite3.OperationalError("the database writer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        unit = Unit(work, future, in_transaction, on_commit)
        quiet = not (
            self._unsettled or self._ran_here_this_turn or self._wal_restarts_next or self._here_refused
        )
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

    def _run_here(self, unit: Unit) -> bool:
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
        except sqlite3.Error:
            return False
        try:
            conn.execute("BEGIN IMMEDIATE")
            begun = True
        except sqlite3.Error:
            begun = False
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        except sqlite3.Error as exc:
            # The thread's writes would no longer wait for another program's lock: set back
            # there, and no write runs here any more.
            log.warning("busy_timeout could not be set back (%s): writes stay on the writer's thread", exc)
            self._here_refused = True
            if begun:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            self._unsettled += 1
            self._queue.put([Unit(set_busy_timeout, unit.future.get_loop().create_future(), False)])
            return False
        if not begun:
            return False
        commit_begun(conn, [unit])
        self._units_since_checkpoint += 1
        if self._units_since_checkpoint >= _UNITS_PER_CHECKPOINT:
            self._units_since_checkpoint = 0
            # On the writer's thread: a checkpoint copies pages back (and syncs) for milliseconds.
            checkpoint = Unit(self._checkpoint, unit.future.get_loop().create_future(), in_transaction=False)
            self._unsettled += 1
            self._queue.put([checkpoint])
        return True

    def _checkpoint(self, conn: sqlite3.Connection) -> None:
        """On the writer's thread, while the loop leaves the connection alone (a unit unsettled)."""
        checkpoint(conn)
        self._wal_restarts_next = True

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

    def _settled(self, units: list[Unit]) -> None:
        self._unsettled -= len(units)
        _settle(units)

    # ----------------------------------------------------------------- the writer's thread

    def _serve(self) -> None:
        try:
            stop = False
            while not stop:
                batch: list[Unit] = []
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
                    if any(unit.in_transaction for unit in batch):
                        self._wal_restarts_next = False  # restarted by this batch's commit, if due
                    self._units_since_checkpoint += len(batch)
                    if self._units_since_checkpoint >= _UNITS_PER_CHECKPOINT and self._conn is not None:
                        self._units_since_checkpoint = 0
                        self._checkpoint(self._conn)
                    # Last: once delivered, the loop may use the connection (see _unsettled).
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

    def _run_batch(self, units: list[Unit]) -> None:
        try:
            conn = self._connection()
        except BaseException as exc:
            for unit in units:
                unit.outcome = (False, exc)
            return
        together: list[Unit] = []
        for unit in units:
            if unit.in_transaction:
                together.append(unit)
                continue
            commit(conn, together)
            together = []
            try:
                unit.outcome = (True, unit.work(conn))
            except BaseException as exc:
                unit.outcome = (False, exc)
        commit(conn, together)


def _deliver(units: list[Unit], settle: Callable[[list[Unit]], None]) -> None:
    """Hand the outcomes to their event loops: one wake-up per loop per batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Unit]] = {}
    for unit in units:
        by_loop.setdefault(unit.future.get_loop(), []).append(unit)
    for loop, mine in by_loop.items():
        try:
            loop.call_soon_threadsafe(settle, mine)
        except RuntimeError:
            pass  # that loop is closed: nobody is waiting any more


def _settle(units: list[Unit]) -> None:
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
