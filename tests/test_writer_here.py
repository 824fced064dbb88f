"""Small writes run on the event loop's thread when nothing else is being written
(storage/writer.py, `_run_here`), on a real SQLite file: where each one runs, in what order,
what a failure undoes, another program's lock, and the checkpoints that then fall to the
writer's thread."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from storage import Repository, WriteTx
from tests.test_storage import _insert_job


def _thread_of_insert(workspace: str, name: str, order: list[str] | None = None) -> Callable[[WriteTx], int]:
    """A unit inserting one job; it returns the thread it ran on."""

    def work(tx: WriteTx) -> int:
        _insert_job(tx, workspace, name, "src", 1, 1_000)
        if order is not None:
            order.append(name)
        return threading.get_ident()

    return work


async def test_a_small_write_alone_runs_on_the_loops_thread_and_others_on_the_writers(
    store: Repository,
) -> None:
    here = threading.get_ident()
    assert await store.write(_thread_of_insert("ws", "small-one"), small=True) == here
    assert await store.write(_thread_of_insert("ws", "big-one")) != here
    assert await store.get_job("ws", "small-one") is not None
    assert await store.get_job("ws", "big-one") is not None


async def test_one_small_write_a_turn_runs_here_the_rest_share_the_thread_in_order(
    store: Repository,
) -> None:
    """A burst (many requests read in one turn) must still share commits on the thread."""
    here = threading.get_ident()
    order: list[str] = []
    threads = await asyncio.gather(
        *(store.write(_thread_of_insert("ws", f"burst-{i}", order), small=True) for i in range(4))
    )
    assert threads[0] == here
    assert all(thread != here for thread in threads[1:])
    assert order == [f"burst-{i}" for i in range(4)]


async def test_a_small_write_behind_a_busy_writer_waits_its_turn_on_the_thread(store: Repository) -> None:
    here = threading.get_ident()
    order: list[str] = []
    gate = threading.Event()

    def busy(tx: WriteTx) -> None:
        gate.wait(10)
        order.append("busy")

    first = asyncio.ensure_future(store.write(busy))
    await asyncio.sleep(0.05)  # the writer's thread is inside `busy`
    small = asyncio.ensure_future(store.write(_thread_of_insert("ws", "behind", order), small=True))
    await asyncio.sleep(0.05)
    assert not small.done()
    gate.set()
    await asyncio.wait_for(first, 10)
    assert await asyncio.wait_for(small, 10) != here
    assert order == ["busy", "behind"]


async def test_a_failing_small_write_undoes_only_itself(store: Repository) -> None:
    await store.write(_thread_of_insert("ws", "before"))
    ran_on: list[int] = []

    def half_then_a_failure(tx: WriteTx) -> None:
        ran_on.append(threading.get_ident())
        _insert_job(tx, "ws", "doomed", "src", 2, 3_000)
        raise RuntimeError("fails after its writes")

    await asyncio.sleep(0)  # a turn of its own
    with pytest.raises(RuntimeError):
        await store.write(half_then_a_failure, small=True)
    assert ran_on == [threading.get_ident()]  # it ran here, in a transaction of its own
    assert await store.get_job("ws", "doomed") is None
    assert await store.get_job("ws", "before") is not None
    await asyncio.sleep(0)
    assert await store.write(_thread_of_insert("ws", "after"), small=True) == threading.get_ident()
    assert await store.get_job("ws", "after") is not None


async def test_a_small_write_waits_for_another_programs_lock_on_the_thread_not_the_loop(
    tmp_path: Path,
) -> None:
    path = tmp_path / "localjobs.db"
    store = await Repository.open(path)
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # another program holds the write lock
        write = asyncio.ensure_future(store.write(_thread_of_insert("ws", "patient"), small=True))
        longest = 0.0
        for _ in range(10):  # the loop keeps turning while the write waits (busy_timeout is 5 s)
            before = time.monotonic()
            await asyncio.sleep(0.02)
            longest = max(longest, time.monotonic() - before)
        assert longest < 1.0 and not write.done()
        other.execute("COMMIT")
        assert await asyncio.wait_for(write, 10) != threading.get_ident()
        assert await store.get_job("ws", "patient") is not None
    finally:
        other.close()
        await store.close()


def _wal_frames(path: Path) -> int:
    """Frames in the WAL now (a PASSIVE checkpoint from another connection reports them)."""
    with sqlite3.connect(path, isolation_level=None) as conn:
        busy, frames, _ = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0
        return int(frames)


async def test_writes_on_the_loops_thread_still_get_checkpoints(tmp_path: Path) -> None:
    """SQLite's own checkpoint is off (it would run inside a commit on the loop's thread): the
    writer's thread runs one every so many commits, so the WAL does not grow without end."""
    path = tmp_path / "localjobs.db"
    store = await Repository.open(path)
    try:
        await store.write(_thread_of_insert("ws", "first"), small=True)
        _wal_frames(path)  # all checkpointed now: the WAL starts afresh at the next write
        await store.write(_thread_of_insert("ws", "second"), small=True)
        one_commit = _wal_frames(path)
        here = 0
        for i in range(400):
            await asyncio.sleep(0)  # a turn of its own, as each request is
            here += (
                await store.write(_thread_of_insert("ws", f"job-{i}"), small=True) == threading.get_ident()
            )
        await store.write(lambda tx: None)  # behind the last checkpoint handed to the thread
        assert here > 300
        # Without checkpoints: ~400 commits' frames; with one every 50 commits, at most ~50's.
        assert _wal_frames(path) < 100 * one_commit
    finally:
        await store.close()
