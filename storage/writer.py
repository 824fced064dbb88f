"""The one write connection: a thread of its own that runs each transaction whole.

Reads go through aiosqlite, which sends every statement to its connection's thread separately.
For writes that cost too much: a status change is a read-modify-write of ~7 statements, i.e. ~7
hand-offs between threads, each waiting for the event loop and the GIL, and writes are serial
(one writer). Measured under load (1,000 jobs submitted 16 at a time): the write lock was held
~100% of the time, ~1.9 ms per transaction, which capped throughput. aiosqlite has no public way
to run a function on its thread (omnilib/aiosqlite#19), so the writer is this small owner of a
`sqlite3.Connection`: a transaction is a plain function, run on this thread in one hand-off.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BUSY_TIMEOUT_MS = 5000


def configure(conn: sqlite3.Connection) -> None:
    """Settings shared by every connection of the daemon."""
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode is durable across process crashes; only an OS crash can drop the last commits.
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: transactions are begun and ended explicitly, never implicitly.
    # check_same_thread stays on: a use from any other thread than the writer's is a bug.
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        configure(conn)
    except BaseException:
        conn.close()
        raise
    return conn


class WriterThread:
    """Runs functions of the write connection on one dedicated thread, first come first served."""

    def __init__(self, executor: ThreadPoolExecutor, conn: sqlite3.Connection) -> None:
        self._executor = executor
        self._conn = conn

    @classmethod
    async def open(cls, path: Path) -> WriterThread:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="localjobs-writer")
        try:
            conn = await asyncio.get_running_loop().run_in_executor(executor, connect, path)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(executor, conn)

    async def call[T](self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run `work(connection)` on the writer's thread. Bounded: every statement waits at most
        busy_timeout for a lock. A cancelled caller does not undo work that already started."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, self._conn)

    async def close(self) -> None:
        await self.call(sqlite3.Connection.close)
        self._executor.shutdown(wait=False)  # its queue is empty: the thread ends on its own
