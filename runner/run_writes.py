"""What a step's run writes when its workload is seen running, paused or resumed, and when it
ends: units of work (plain functions of a write transaction, run on the writer's thread), kept
apart from the run's own sequencing in runner/step_run.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.executors.base import ExitStatus, Workload
from runner.launching import RunTask, folder_details, handle_of
from runner.models import JobStatus, StepRecord
from runner.step_outcome import step_outcome
from runner.transitions import record_task_status, settle_step, tell_tasks_and_job, transition_step
from storage import WriteTx


@dataclass(frozen=True)
class Running:
    """What the `active` write records: the step's details while it runs and its workload's handle.
    An outcome written without an `active` before it (a short workload) carries them instead."""

    details: dict[str, Any]
    handle: dict[str, Any]


def running_of(step: StepRecord, tasks: list[RunTask], workload: Workload) -> Running:
    details = {"message": "Job is running", **workload.details, **folder_details(step, tasks[0].paths)}
    return Running(details, handle_of(tasks, workload).to_json())


def _task_details(running: Running, task: RunTask) -> dict[str, Any]:
    if not task.ref.gpus:
        return running.details
    return {**running.details, "gpus": list(task.ref.gpus)}


def _job_as_if_seen_active(tx: WriteTx, step: StepRecord, now: int) -> None:
    """What the skipped `active` write would have done to the job: take it to `active`. Skipped
    where going straight to the outcome is legal and says the same: a `pending` job's last step.
    Otherwise a resumed job would stay `resuming` (it cannot go to `completed` directly), and a
    multi-step job `pending` while its next step waits."""
    job = tx.job_state(step.job_pk)
    if job is None or job.status == JobStatus.ACTIVE or not job.status.can_transition_to(JobStatus.ACTIVE):
        return
    if job.status == JobStatus.PENDING and step.index + 1 >= job.step_count:
        return
    tx.set_job_status(job.pk, status=JobStatus.ACTIVE, error_details=job.error_details, now=now)


def active_unit(
    step: StepRecord, tasks: list[RunTask], running: Running, now: int
) -> Callable[[WriteTx], None]:
    def record_active(tx: WriteTx) -> None:
        fresh = tx.get_step_by_pk(step.pk)
        if fresh is None or fresh.status.is_terminal:
            return  # deleted, or ended (its outcome, written first, carries all this)
        if fresh.status in (JobStatus.PENDING, JobStatus.RESUMING):
            transition_step(
                tx, fresh, JobStatus.ACTIVE, now=now, status_details=running.details, handle=running.handle
            )
        else:  # cancelling or pausing meanwhile: the status waits, the handle must not
            tx.set_step_handle(step.pk, running.handle)
        for task in tasks:
            record_task_status(
                tx,
                task.pk,
                JobStatus.ACTIVE,
                _task_details(running, task),
                None,
                None,
                now,
                job_pk=step.job_pk,
            )

    return record_active


def outcome_unit(
    step: StepRecord,
    tasks: list[RunTask],
    status: ExitStatus,
    *,
    message: str | None,
    shutdown: bool,
    tail: list[str],
    running: Running | None,
    now: int,
) -> Callable[[WriteTx], None]:
    """How the workload ended, mapped against what the step was asked to do meanwhile. `running`:
    the `active` write was not made (it ended first, or the write failed); what it would have said
    goes in with the outcome, so the stored details are the same either way."""

    def record_outcome(tx: WriteTx) -> None:
        fresh = tx.get_step_by_pk(step.pk)
        if fresh is None:
            return  # the job was deleted meanwhile
        end = step_outcome(fresh, status, message=message, shutdown=shutdown, tail=tail)
        details = end.details if running is None else {**running.details, **end.details}
        if running is not None and fresh.status in (JobStatus.PENDING, JobStatus.RESUMING):
            _job_as_if_seen_active(tx, fresh, now)
        if fresh.status.is_terminal:  # a client or the watchdog ended it meanwhile
            if running is not None:
                tx.set_step_handle(step.pk, running.handle)
        else:
            settle_step(
                tx,
                fresh,
                end.status,
                now=now,
                status_details=details,
                error_details=end.errors,
                handle=None if running is None else running.handle,
            )
        for task in tasks:
            task_details = details if running is None else {**_task_details(running, task), **end.details}
            record_task_status(
                tx, task.pk, end.status, task_details, end.errors, end.stack, now, job_pk=step.job_pk
            )

    return record_outcome


# What a step's tasks and job say once a pause or resume is done (the reference's wording).
_TOLD = {JobStatus.PAUSED: "Job is paused", JobStatus.ACTIVE: "Job is running"}


def requested_status_unit(
    step_pk: int, asked: JobStatus, reached: JobStatus, message: str, now: int
) -> Callable[[WriteTx], None]:
    """A pause or resume done: the step goes from `asked` (pausing, resuming) to `reached`,
    unless something else moved it meanwhile."""

    def record_reached(tx: WriteTx) -> None:
        step = tx.get_step_by_pk(step_pk)
        if step is not None and step.status == asked:
            transition_step(tx, step, reached, now=now, status_details={"message": message})
            tell_tasks_and_job(tx, step, _TOLD.get(reached, message), now=now)

    return record_reached
