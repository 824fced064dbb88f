"""What a step's start writes, before its workload is spawned: its tasks and its `pending`, either
as a transaction of its own (the scheduler's loop) or inside the submit that inserts its job
(a first step started at once). Units of work: plain functions of a write transaction, run on
the writer's thread; the run's sequencing is in runner/step_run.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.allocation import Allocator
from runner.environment import task_paths
from runner.executors.base import TaskRef
from runner.launching import RunTask, handle_of, split_gpus
from runner.models import STARTABLE_STATUSES, JobRecord, JobStatus, StepRecord, new_entity_id, new_task_name
from runner.transitions import settle_step, transition_step
from storage import WriteTx

_SETTLES_UNSTARTED = {JobStatus.CANCELLING: JobStatus.CANCELLED, JobStatus.PAUSING: JobStatus.PAUSED}
# What a step and its tasks say from their start being recorded until they are seen running;
# copied where used (records are shared, never changed).
STARTING = {"message": "Starting"}


@dataclass(frozen=True)
class StartedStep:
    """A step whose start is recorded (`pending`, its tasks inserted), not yet spawned."""

    step: StepRecord
    tasks: list[RunTask]


def start_unit(
    step_pk: int, now: int, allocator: Allocator, work_dir: Path
) -> Callable[[WriteTx], StartedStep | None]:
    """The loop's start of a claimed step, if it is still to start (None: it was not)."""

    def record_start(tx: WriteTx) -> StartedStep | None:
        fresh = tx.get_step_by_pk(step_pk)
        if fresh is None or fresh.status not in STARTABLE_STATUSES:
            # Cancelled or paused between the claim and now: nothing ran, so settle it here.
            if fresh is not None and fresh.status in _SETTLES_UNSTARTED:
                final = _SETTLES_UNSTARTED[fresh.status]
                settle_step(tx, fresh, final, now=now, status_details={"message": final.title()})
            return None
        tasks = _insert_tasks(tx, fresh, now, allocator, work_dir)
        # Recorded before the spawn: after a crash the next daemon knows where to look, and
        # never starts the step a second time.
        outcome = transition_step(
            tx,
            fresh,
            JobStatus.PENDING,
            now=now,
            status_details=dict(STARTING),
            handle=handle_of(tasks).to_json(),
        )
        return StartedStep(outcome.step, tasks)

    return record_start


def first_step_started(
    tx: WriteTx, job: JobRecord, step_pk: int, now: int, allocator: Allocator, work_dir: Path
) -> StartedStep:
    """Inside the transaction that inserts `job` (as `pending`): its first step, under the key a
    claim holds, left as `start_unit` leaves a step (`pending`, its tasks, their handle)."""
    step = tx.insert_step(
        job,
        0,
        new_entity_id("platform-job-step"),
        now,
        pk=step_pk,
        status=JobStatus.PENDING,
        status_details=dict(STARTING),
    )
    tasks = _insert_tasks(tx, step, now, allocator, work_dir)
    handle = handle_of(tasks).to_json()
    tx.set_step_handle(step.pk, handle)
    return StartedStep(step.model_copy(update={"handle": handle}), tasks)


def _insert_tasks(
    tx: WriteTx, step: StepRecord, now: int, allocator: Allocator, work_dir: Path
) -> list[RunTask]:
    executor_spec = step.spec.executor
    count = executor_spec.resources.num_nodes if executor_spec.provider == "gpu_distributed" else 1
    names = [new_task_name() for _ in range(count)]
    per_task = split_gpus(allocator.gpus_of(step.pk), count)
    return [
        RunTask(
            TaskRef(
                tx.insert_task(
                    id=new_entity_id("platform-job-task"),
                    step_pk=step.pk,
                    name=name,
                    status=JobStatus.PENDING,
                    status_details=dict(STARTING),
                    error_details=None,
                    error_stack=None,
                    heartbeat_at=None,
                    now=now,
                ),
                name,
                tuple(g.device_id for g in gpus),
            ),
            task_paths(work_dir, step, name),
        )
        for name, gpus in zip(names, per_task, strict=True)
    ]
