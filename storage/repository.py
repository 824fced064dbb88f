"""The one repository object over SQLite: opening and closing the store, the write path (one
transaction per unit of work, patient retries, the store's health) and, inherited from
storage/reads.py, every async read. All SQL of the project lives in this package:

- storage/schema.py: the schema, as migrations, and running them;
- storage/rows.py: sqlite rows -> runner.models records;
- storage/queries.py: query builders (single records; list filters, sorts and counts);
- storage/write_tx.py: `WriteTx`, the reads and writes of a unit of work (storage/secret_writes.py:
  those of secrets and results); storage/step_keys.py: steps' primary keys;
- storage/logs.py: the log tables' writes, trimming and reads;
- storage/reads.py: the async reads;
- storage/writer.py: the write connection's thread (storage/units.py: how a unit runs in its
  transaction); storage/health.py: whether writes go through;
- storage/errors.py: the package's errors.

Single-writer discipline: one write connection on a thread of its own (storage/writer.py) runs each
transaction whole, inside `BEGIN IMMEDIATE`; reads go through a second connection (aiosqlite),
which in WAL mode never waits for writers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import aiosqlite

from storage.errors import Gone, StorageError, StorageUnavailable, cannot_write
from storage.health import OutageSummary, WriteHealth, low_on_space
from storage.log_files import LogFiles
from storage.reads import Reads
from storage.schema import migrate
from storage.step_keys import StepKeys
from storage.units import BUSY_TIMEOUT_MS
from storage.write_tx import WriteTx
from storage.writer import WriterThread

log = logging.getLogger(__name__)

# How long a patient write is retried: a status must not be lost to a passing hitch (another
# program holding the database a few seconds), and must not be retried forever either.
PATIENT_WRITE_S = 60.0
# /health waits at most this long for its check of the store (a lock held elsewhere would keep
# it busy_timeout long).
_HEALTH_PROBE_S = 1.0


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


class Repository(Reads):
    """Typed access to the store: reads on a reader connection (aiosqlite, the methods of
    `Reads`), writes through `write()` on the writer's own thread."""

    def __init__(
        self, reader: aiosqlite.Connection, writer: WriterThread, log_files: LogFiles, step_keys: StepKeys
    ) -> None:
        super().__init__(reader, log_files)
        self._writer = writer
        self._health = WriteHealth()
        self._step_keys = step_keys
        self._steps_queued = 0

    @classmethod
    async def open(cls, path: Path) -> Repository:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _make_private(path)
            writer = await WriterThread.open(path)
        except (OSError, sqlite3.Error) as exc:
            raise StorageUnavailable(f"cannot open the database at {path}: {exc}") from exc
        try:
            await writer.call(migrate, in_transaction=False)
            step_keys = StepKeys(await writer.call(_highest_step_pk, in_transaction=False))
            reader = await aiosqlite.connect(path, isolation_level=None)
            await _configure_reader(reader)
        except (OSError, sqlite3.Error) as exc:
            await writer.close()
            raise StorageUnavailable(f"cannot open the database at {path}: {exc}") from exc
        except BaseException:
            await writer.close()
            raise
        log_files = LogFiles(path.parent / "logs")
        try:
            log_files.prepare()
        except OSError as exc:
            await reader.close()
            await writer.close()
            raise StorageUnavailable(f"cannot create the log folder {log_files.root}: {exc}") from exc
        return cls(reader, writer, log_files, step_keys)

    async def close(self) -> None:
        await self._conn.close()
        await self._writer.close()

    async def write[T](
        self,
        work: Callable[[WriteTx], T],
        *,
        patient: bool = False,
        until_stored: bool = False,
        small: bool = False,
    ) -> T:
        """Run `work` in a `BEGIN IMMEDIATE` transaction on the writer's thread (possibly along
        with other callers' work, each in a savepoint of its own): its writes are committed when
        it returns, undone when it raises. Whatever it reads is current and stays so until the
        commit. It runs off the event loop (or, `small`, maybe on it): it may use the store and
        its own data, and at most read single values of the daemon's state (a dict lookup, atomic
        under the GIL); it must not change that state or touch asyncio objects.

        `patient` writes (what a workload did: its status, its output) are tried again, with
        growing pauses, for about PATIENT_WRITE_S when the store could not take them
        (StorageUnavailable: e.g. locked by another program beyond busy_timeout, or a failed
        commit, which keeps nothing). `work` must then be safe to run again: it re-reads what it
        decides on. `until_stored` writes (a step's final status, which nothing would write again)
        are tried so until they are stored, the store is closed, or the caller is cancelled.

        `small` writes (a few rows: a submit, a status change) may run at once on the event
        loop's thread when nothing else is being written (WriterThread.call)."""
        patience = math.inf if until_stored else PATIENT_WRITE_S if patient else 0.0
        deadline = time.monotonic() + patience
        pause = 0.1
        retrying = False
        try:
            while True:
                try:
                    result, _ = await self._writer.call(
                        functools.partial(_unit_of_work, work, self._step_keys),
                        on_commit=self._count_queued,
                        small=small,
                    )
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

    @property
    def steps_queued(self) -> int:
        """How many commits so far left a step waiting to be started (inserted or set `created`
        or `resuming`), counted on the event loop as each commit is delivered, before its caller
        resumes (and so before it can wake the scheduler), and also when that caller was
        cancelled meanwhile. A reader that found no step waiting need not look again while this
        stays the same (Scheduler.run_forever)."""
        return self._steps_queued

    def _count_queued(self, outcome: tuple[object, bool]) -> None:
        if outcome[1]:
            self._steps_queued += 1

    def new_step_key(self) -> int:
        """A primary key no step has nor will be given by anyone else (see StepKeys)."""
        return self._step_keys.take()


def _highest_step_pk(conn: sqlite3.Connection) -> int:
    highest: int = conn.execute("SELECT COALESCE(MAX(pk), 0) FROM steps").fetchone()[0]
    return highest


def _unit_of_work[T](
    work: Callable[[WriteTx], T], step_keys: StepKeys, conn: sqlite3.Connection
) -> tuple[T, bool]:
    """`work`'s result, and whether it left a step waiting to start."""
    tx = WriteTx(conn, step_keys)
    try:
        return work(tx), tx.left_steps_waiting
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
