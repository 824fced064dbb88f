"""The repository on a real SQLite file: migrations, counters kept by triggers, atomic writes."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from runner.models import (
    CreateJobRequest,
    JobFilter,
    JobSort,
    JobStatus,
    StepFilter,
    StepSort,
    new_entity_id,
)
from storage import AlreadyExists, Repository, StorageUnavailable, WriteTx
from storage.schema import MIGRATIONS


def _request(name: str, source: str, steps: int) -> CreateJobRequest:
    return CreateJobRequest.model_validate(
        {
            "name": name,
            "source": source,
            "spec": {},
            "platform_spec": {
                "steps": [
                    {"name": f"step-{i}", "executor": {"provider": "subprocess", "command": ["true"]}}
                    for i in range(steps)
                ]
            },
        }
    )


def _insert_job(
    tx: WriteTx,
    workspace: str,
    name: str,
    source: str,
    steps: int,
    now: int,
    status: JobStatus = JobStatus.CREATED,
) -> None:
    request = _request(name, source, steps)
    job = tx.insert_job(
        id=new_entity_id("platform-job"),
        workspace=workspace,
        name=name,
        project=None,
        description=None,
        source=source,
        spec={},
        platform_spec=request.platform_spec,
        fileset=f"job-fileset-{name}",
        output_location=None,
        ownership=None,
        custom_fields=None,
        auth_context=None,
        attempt_id=new_entity_id("platform-job-attempt"),
        now=now,
    )
    for index in range(steps):
        tx.insert_step(job, index, new_entity_id("platform-job-step"), now + index, status=status)


async def _add_job(store: Repository, workspace: str, name: str, source: str, steps: int, now: int) -> None:
    await store.write(lambda tx: _insert_job(tx, workspace, name, source, steps, now))


async def test_migrations_are_recorded_and_reopening_is_a_no_op(tmp_path: Path) -> None:
    path = tmp_path / "db" / "localjobs.db"
    store = await Repository.open(path)
    await store.close()
    store = await Repository.open(path)
    await store.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_a_failed_transaction_leaves_nothing_behind(store: Repository) -> None:
    await _add_job(store, "ws", "first", "src", 1, 1_000)
    with pytest.raises(AlreadyExists):
        await _add_job(store, "ws", "first", "src", 1, 2_000)

    def two_jobs_then_a_failure(tx: WriteTx) -> None:
        _insert_job(tx, "ws", "second", "src", 2, 3_000)
        _insert_job(tx, "ws", "third", "src", 1, 4_000)
        raise RuntimeError("the work fails after its writes")

    with pytest.raises(RuntimeError):
        await store.write(two_jobs_then_a_failure)
    page = await store.list_steps(StepFilter(workspace="ws"), StepSort.CREATED_AT, 1, 10)
    assert page.total == 1 and len(page.items) == 1
    assert await store.get_job("ws", "second") is None
    # The writer is still usable after a rollback.
    await _add_job(store, "ws", "fourth", "src", 1, 5_000)
    assert await store.get_job("ws", "fourth") is not None


async def _behind_a_busy_writer(store: Repository, *writes: Awaitable[Any]) -> list[Any]:
    """Run `writes` queued up while the writer is held busy, so that they share one batch; their
    outcomes (results or exceptions), in order."""
    gate = threading.Event()
    busy = asyncio.ensure_future(store.write(lambda tx: gate.wait(10)))
    await asyncio.sleep(0.05)  # the writer is now inside `busy`: what follows queues up
    queued = [asyncio.ensure_future(write) for write in writes]
    await asyncio.sleep(0.05)
    gate.set()
    outcomes = await asyncio.wait_for(asyncio.gather(busy, *queued, return_exceptions=True), 10)
    assert outcomes[0] is True
    return outcomes[1:]


async def test_writes_committed_together_still_fail_alone(store: Repository) -> None:
    """Writes queued while the writer is busy share one commit; a failing one undoes only itself."""

    def half_then_a_failure(tx: WriteTx) -> None:
        _insert_job(tx, "ws", "doomed", "src", 2, 3_000)
        raise RuntimeError("fails after its writes")

    outcomes = await _behind_a_busy_writer(
        store,
        _add_job(store, "ws", "job-a", "src", 1, 1_000),
        store.write(half_then_a_failure),
        _add_job(store, "ws", "job-a", "src", 1, 1_500),  # duplicate name
        _add_job(store, "ws", "job-b", "src", 2, 2_000),
    )
    assert outcomes[0] is None and outcomes[3] is None
    assert isinstance(outcomes[1], RuntimeError)
    assert isinstance(outcomes[2], AlreadyExists)
    names = {
        job.name
        for job in (await store.list_jobs(JobFilter(workspace="ws"), JobSort.CREATED_AT, 1, 10)).items
    }
    assert names == {"job-a", "job-b"}
    steps = await store.list_steps(StepFilter(workspace="ws"), StepSort.CREATED_AT, 1, 10)
    assert steps.total == 3 and len(steps.items) == 3


async def test_a_unit_raising_stopiteration_fails_alone_and_wakes_everyone(store: Repository) -> None:
    """A future refuses StopIteration: the writer must still settle that unit and the rest."""
    outcomes = await _behind_a_busy_writer(
        store,
        store.write(lambda tx: next(iter([]))),
        _add_job(store, "ws", "after-bad", "src", 1, 1_000),
    )
    assert isinstance(outcomes[0], RuntimeError) and outcomes[1] is None
    assert await store.get_job("ws", "after-bad") is not None


async def test_close_finishes_the_writes_already_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "localjobs.db"
    store = await Repository.open(path)
    pending = [asyncio.ensure_future(_add_job(store, "ws", f"job-{i}", "src", 1, i)) for i in range(5)]
    await asyncio.sleep(0)  # asked for (perhaps still in the outbox), not yet committed
    await store.close()
    await asyncio.wait_for(asyncio.gather(*pending), 10)
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 5


async def test_writes_after_close_are_refused(tmp_path: Path) -> None:
    store = await Repository.open(tmp_path / "localjobs.db")
    await store.close()
    with pytest.raises(StorageUnavailable):
        await _add_job(store, "ws", "late", "src", 1, 1_000)


async def test_step_counters_match_the_rows_under_every_filter(store: Repository, tmp_path: Path) -> None:
    now = 1_000_000
    for i in range(12):
        await _add_job(store, f"ws{i % 2}", f"job-{i}", f"src{i % 3}", 1 + i % 3, now + i * 10)
    # Move some steps through statuses, then delete a job: the counters must follow.
    statuses = itertools.cycle([JobStatus.ACTIVE, JobStatus.ERROR, JobStatus.COMPLETED, JobStatus.CANCELLED])
    everything = await store.list_steps(StepFilter(), StepSort.CREATED_AT, 1, 1000)

    def move_and_delete(tx: WriteTx) -> None:
        for step in everything.items[::2]:
            tx.update_step_state(
                step.pk,
                status=next(statuses),
                status_details={},
                error_details=None,
                active_since=None,
                now=now + 999,
            )
        doomed = tx.get_job("ws0", "job-4")
        assert doomed is not None
        tx.delete_job(doomed.pk)

    await store.write(move_and_delete)
    with sqlite3.connect(tmp_path / "localjobs.db") as conn:
        rows = conn.execute("SELECT workspace, job_name, job_source, status FROM steps").fetchall()
    filters = [
        StepFilter(),
        StepFilter(workspace="ws0"),
        StepFilter(workspace="ws1", statuses=[JobStatus.ERROR, JobStatus.CREATED]),
        StepFilter(workspace="ws0", source="src1"),
        StepFilter(source="src2", statuses=[JobStatus.COMPLETED]),
        StepFilter(workspace="ws1", job="job-5"),
        StepFilter(workspace="ws1", job="job-5", statuses=[JobStatus.CREATED]),
        StepFilter(workspace="ws0", job="job-4"),
        StepFilter(workspace="ws0", job="job-2", source="src2"),
        StepFilter(workspace="ws0", job="job-2", source="src0"),
    ]
    for flt in filters:
        expected = sum(
            1
            for ws, job, source, status in rows
            if (flt.workspace is None or ws == flt.workspace)
            and (flt.job is None or job == flt.job)
            and (flt.source is None or source == flt.source)
            and (not flt.statuses or status in {s.value for s in flt.statuses})
        )
        page = await store.list_steps(flt, StepSort.CREATED_AT, 1, 1000)
        assert (page.total, len(page.items)) == (expected, expected), flt


async def test_job_counters_match_the_rows_under_every_filter(store: Repository, tmp_path: Path) -> None:
    now = 1_000_000
    for i in range(12):
        await _add_job(store, f"ws{i % 2}", f"job-{i}", f"src{i % 3}", 1, now + i * 10)
    statuses = itertools.cycle([JobStatus.PENDING, JobStatus.ERROR, JobStatus.COMPLETED, JobStatus.ACTIVE])

    def move_and_delete(tx: WriteTx) -> None:
        for i in range(0, 12, 2):
            job = tx.get_job(f"ws{i % 2}", f"job-{i}")
            assert job is not None
            status = next(statuses)
            tx.set_job_status(job.pk, status=status, error_details=None, now=now + 999)
            # The same status again: no change to count.
            tx.set_job_status(job.pk, status=status, error_details=None, now=now + 1000)
        doomed = tx.get_job("ws1", "job-5")
        assert doomed is not None
        tx.delete_job(doomed.pk)

    await store.write(move_and_delete)
    with sqlite3.connect(tmp_path / "localjobs.db") as conn:
        rows = conn.execute("SELECT workspace, status FROM jobs").fetchall()
    filters = [
        JobFilter(workspace="ws0"),
        JobFilter(workspace="ws1"),
        JobFilter(workspace="nowhere"),
        JobFilter(workspace="ws0", statuses=[JobStatus.CREATED]),
        JobFilter(workspace="ws0", statuses=[JobStatus.ERROR, JobStatus.CREATED, JobStatus.ERROR]),
        JobFilter(workspace="ws1", statuses=[JobStatus.COMPLETED, JobStatus.PAUSED]),
    ]
    for flt in filters:
        expected = sum(
            1
            for ws, status in rows
            if ws == flt.workspace and (not flt.statuses or status in {s.value for s in flt.statuses})
        )
        page = await store.list_jobs(flt, JobSort.CREATED_AT, 1, 1000)
        assert (page.total, len(page.items)) == (expected, expected), flt


async def test_job_counters_start_from_the_rows_already_there(tmp_path: Path) -> None:
    """The job counters' migration on a store that already holds jobs counts them once."""
    number = next(i for i, script in enumerate(MIGRATIONS, start=1) if "CREATE TABLE job_counts" in script)
    made = tmp_path / "made.db"
    store = await Repository.open(made)
    try:
        for i in range(5):
            await _add_job(store, "ws", f"job-{i}", "src", 1, 1_000 + i)
    finally:
        await store.close()
    path = tmp_path / "localjobs.db"
    with sqlite3.connect(path) as conn:  # a store as the version before the counters, with jobs
        for version, script in enumerate(MIGRATIONS[: number - 1], start=1):
            conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {version};\nCOMMIT;")
        columns = ", ".join(row[1] for row in conn.execute("PRAGMA table_info(jobs)"))
        conn.execute("ATTACH DATABASE ? AS made", (str(made),))
        conn.execute(f"INSERT INTO jobs ({columns}) SELECT {columns} FROM made.jobs")
        conn.commit()
        conn.execute("DETACH DATABASE made")
    store = await Repository.open(path)
    try:
        page = await store.list_jobs(JobFilter(workspace="ws"), JobSort.CREATED_AT, 1, 2)
        assert (page.total, len(page.items)) == (5, 2)
    finally:
        await store.close()


async def test_step_keys_claimed_before_a_write_are_not_taken_by_its_inserts_nor_after_a_reopen(
    tmp_path: Path,
) -> None:
    path = tmp_path / "localjobs.db"
    store = await Repository.open(path)
    claimed = store.new_step_key()  # taken before the write that uses it, as a submit does
    await _add_job(store, "ws", "first", "src", 2, 1_000)
    await store.close()
    store = await Repository.open(path)
    try:
        after_reopen = store.new_step_key()
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:
        stored = [pk for (pk,) in conn.execute("SELECT pk FROM steps ORDER BY pk")]
    assert claimed not in stored  # the inserts took keys of their own
    assert len(stored) == 2 and after_reopen > max(stored)


async def test_steps_queued_counts_the_commits_that_leave_a_step_waiting(store: Repository) -> None:
    """What lets the scheduler skip its read: it must change after every commit that leaves a
    step `created` or `resuming`, and may stay the same otherwise."""
    before = store.steps_queued
    await _add_job(store, "ws", "queued", "src", 1, 1_000)  # its step inserted `created`
    assert store.steps_queued == before + 1

    def failing(tx: WriteTx) -> None:
        _insert_job(tx, "ws", "undone", "src", 1, 2_000)
        raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await store.write(failing)
    assert store.steps_queued == before + 1  # nothing of it was kept

    job = await store.get_job("ws", "queued")
    assert job is not None
    (step,) = (await store.list_steps(StepFilter(workspace="ws"), StepSort.CREATED_AT, 1, 10)).items

    def set_status(status: JobStatus) -> Any:
        return lambda tx: tx.update_step_state(
            step.pk, status=status, status_details={}, error_details=None, active_since=None, now=3_000
        )

    await store.write(set_status(JobStatus.PENDING))
    await store.write(set_status(JobStatus.PAUSED))
    assert store.steps_queued == before + 1
    await store.write(set_status(JobStatus.RESUMING))
    assert store.steps_queued == before + 2
    await store.write(lambda tx: _insert_job(tx, "ws", "started", "src", 1, 4_000, JobStatus.PENDING))
    assert store.steps_queued == before + 2


async def test_a_write_whose_caller_was_cancelled_still_counts_the_step_it_queued(store: Repository) -> None:
    """Its work was handed over and committed: the scheduler must still learn of the step."""
    before = store.steps_queued
    gate = threading.Event()
    busy = asyncio.ensure_future(store._writer.call(lambda conn: gate.wait(10), in_transaction=False))
    await asyncio.sleep(0.05)  # the writer is now inside `busy`: the next write queues up
    queued = asyncio.ensure_future(_add_job(store, "ws", "orphaned", "src", 1, 1_000))
    await asyncio.sleep(0.05)  # handed over
    queued.cancel()
    gate.set()
    await asyncio.wait_for(busy, 10)
    with pytest.raises(asyncio.CancelledError):
        await queued
    await _add_job(store, "ws", "after", "src", 1, 2_000)  # behind the cancelled one
    assert await store.get_job("ws", "orphaned") is not None  # committed all the same
    assert store.steps_queued == before + 2
