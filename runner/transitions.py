"""Step status changes and how they roll up to the job, applied inside one write transaction
(plain functions: a transaction runs whole on the writer's thread, see `Repository.write`).

Every writer (the API's PATCH, the scheduler, the watchdog) goes through `transition_step`, so the
transition table, the roll-up and the creation of the next step hold for all of them alike. One
exception: a submit that starts its job's first step at once inserts the job and the step
`pending` (`StepRun.record_first_step_started`), as this roll-up would leave them;
tests/test_submit_start.py compares the rows both ways leave.
"""

from __future__ import annotations

import functools
from collections import deque
from dataclasses import dataclass
from typing import Any

from runner.errors import Conflict
from runner.models import JobState, JobStatus, StepRecord, new_entity_id
from storage import WriteTx

# The key of status_details (and, once the step ends in error, of error_details) that says its
# output could not all be stored (e.g. "no space left on device"): see `note_output_error`.
OUTPUT_ERROR = "output_error"

# A step reaching one of these drags the job along to the same status.
_MIRRORED = frozenset(
    {
        JobStatus.CANCELLING,
        JobStatus.CANCELLED,
        JobStatus.ERROR,
        JobStatus.PAUSING,
        JobStatus.PAUSED,
        JobStatus.RESUMING,
    }
)


@dataclass
class TransitionOutcome:
    step: StepRecord
    job: JobState
    # The step created because this one completed, if any: the scheduler must hear of it.
    next_step_pk: int | None = None
    changed: bool = False


def transition_step(
    tx: WriteTx,
    step: StepRecord,
    new_status: JobStatus,
    *,
    now: int,
    status_details: dict[str, Any] | None = None,
    error_details: dict[str, Any] | None = None,
    handle: dict[str, Any] | None = None,
) -> TransitionOutcome:
    """Move `step` to `new_status` (Conflict if the table forbids it) and roll the job up;
    `handle`, when given, is recorded with it."""
    if not step.status.can_transition_to(new_status):
        raise Conflict(
            f"step {step.name!r} of job {step.job_name!r} cannot go from {step.status.value!r} "
            f"to {new_status.value!r}"
        )
    merged = {**step.status_details, **(status_details or {})}
    errors = error_details if error_details else step.error_details
    if new_status == JobStatus.ERROR and OUTPUT_ERROR in merged and OUTPUT_ERROR not in (errors or {}):
        # An error is read first, often alone: it must not hide that the output is incomplete.
        errors = {**(errors or {}), OUTPUT_ERROR: merged[OUTPUT_ERROR]}
    active_since, active_us = step.active_since, step.active_us
    if new_status == JobStatus.ACTIVE and step.status != JobStatus.ACTIVE:
        active_since = now  # first start, or back from a pause: the clocks run again from here
    elif step.status == JobStatus.ACTIVE and new_status != JobStatus.ACTIVE and active_since is not None:
        active_us += now - active_since
    job = tx.job_state(step.job_pk)
    assert job is not None, "a step always has its job (foreign key with cascade)"
    if handle is None and (new_status, merged, errors) == (
        step.status,
        step.status_details,
        step.error_details,
    ):
        return TransitionOutcome(step=step, job=job)
    status_changed = new_status != step.status
    tx.update_step_state(
        step.pk,
        status=new_status,
        status_details=merged,
        error_details=errors,
        active_since=active_since,
        active_us=active_us,
        now=now,
        handle=handle,
    )
    step = step.model_copy(
        update={
            "status": new_status,
            "status_details": merged,
            "error_details": errors,
            "active_since": active_since,
            "active_us": active_us,
            "updated_at": now,
            "handle": handle if handle is not None else step.handle,
        }
    )
    outcome = TransitionOutcome(step=step, job=job, changed=True)
    if status_changed:
        _roll_up(tx, outcome, now)
    return outcome


@functools.cache
def legal_path(source: JobStatus, target: JobStatus) -> tuple[JobStatus, ...]:
    """The shortest chain of statuses the table allows from `source` to `target` (excluding
    `source`), e.g. paused -> active -> completed; empty when `target` cannot be reached."""
    # Among equally short paths, pass through `cancelling` on the way to `cancelled` and through
    # `active` otherwise: the statuses a reader would expect to have been seen.
    via = JobStatus.CANCELLING if target == JobStatus.CANCELLED else JobStatus.ACTIVE
    order = [via, JobStatus.PAUSED, *(s for s in JobStatus if s not in (via, JobStatus.PAUSED))]
    previous: dict[JobStatus, JobStatus] = {}
    queue = deque([source])
    while queue:
        current = queue.popleft()
        if current == target:
            chain = [current]
            while chain[-1] != source:
                chain.append(previous[chain[-1]])
            return tuple(reversed(chain[:-1]))
        for nxt in order:
            if nxt != current and nxt not in previous and nxt != source and current.can_transition_to(nxt):
                previous[nxt] = current
                queue.append(nxt)
    return ()


def settle_step(
    tx: WriteTx,
    step: StepRecord,
    final: JobStatus,
    *,
    now: int,
    status_details: dict[str, Any] | None = None,
    error_details: dict[str, Any] | None = None,
    handle: dict[str, Any] | None = None,
) -> TransitionOutcome:
    """Record how a step really ended, whatever it was asked meanwhile: walk the legal path to
    `final` (a workload that died while paused goes paused -> active -> error), so every move
    still obeys the table and rolls up to the job. `handle`, when given, is recorded with it."""
    if step.status == final or step.status.is_terminal:
        return transition_step(tx, step, step.status, now=now, handle=handle)
    path = legal_path(step.status, final)
    if not path:
        raise Conflict(f"step {step.name!r} cannot reach {final.value!r} from {step.status.value!r}")
    for status in path[:-1]:
        step = transition_step(tx, step, status, now=now).step
    return transition_step(
        tx, step, final, now=now, status_details=status_details, error_details=error_details, handle=handle
    )


def _roll_up(tx: WriteTx, outcome: TransitionOutcome, now: int) -> None:
    step, job = outcome.step, outcome.job
    target: JobStatus | None = None
    job_errors = job.error_details
    if step.status == JobStatus.PENDING:
        # Only the first step's `pending` shows on the job; later ones leave it `active`.
        target = JobStatus.PENDING if step.index == 0 else None
    elif step.status == JobStatus.ACTIVE:
        target = JobStatus.ACTIVE
    elif step.status == JobStatus.COMPLETED:
        if step.index + 1 < job.step_count:
            full = tx.get_job_by_pk(job.pk)
            assert full is not None
            outcome.next_step_pk = tx.insert_step(
                full, step.index + 1, new_entity_id("platform-job-step"), now
            ).pk
        else:
            target = JobStatus.COMPLETED
    elif step.status in _MIRRORED:
        target = step.status
        if step.status == JobStatus.ERROR:
            job_errors = step.error_details
    if target is None or target == job.status or not job.status.can_transition_to(target):
        # The reference skips a forbidden job transition silently: it guards against stale writers.
        return
    tx.set_job_status(job.pk, status=target, error_details=job_errors, now=now)
    outcome.job = JobState(pk=job.pk, status=target, error_details=job_errors, step_count=job.step_count)


def record_task_status(
    tx: WriteTx,
    task_pk: int,
    status: JobStatus,
    details: dict[str, Any],
    errors: dict[str, Any] | None,
    stack: str | None,
    now: int,
    *,
    job_pk: int,
) -> None:
    """The daemon's own bookkeeping write: it never counts as a heartbeat. A task whose status
    cannot move to `status` (the table forbids it) keeps its status; details still merge, into
    the task and (as every task update does in the reference) into the job's status_details."""
    kept = {k: v for k, v in details.items() if v is not None}
    tx.record_task_outcome(
        task_pk,
        status=status,
        allowed_from=[s for s in JobStatus if s.can_transition_to(status)],
        details=kept,
        errors=errors or None,
        stack=stack,
        now=now,
    )
    if kept:
        tx.merge_job_status_details(job_pk, kept)


def tell_tasks_and_job(tx: WriteTx, step: StepRecord, message: str, *, now: int) -> None:
    """The daemon moved a step (pausing, paused, resuming, running again, cancelling): its
    unfinished tasks' and its job's `message` say so, as the reference's reconciler says "Job is
    pausing" through its task PUTs, or they would go on saying "Job is running". Statuses stay."""
    said = {"message": message}
    for task in tx.tasks_of_step(step.pk):
        if not task.status.is_terminal:
            tx.record_task_outcome(
                task.pk,
                status=task.status,
                allowed_from=[task.status],
                details=said,
                errors=None,
                stack=None,
                now=now,
            )
    tx.merge_job_status_details(step.job_pk, said)


def note_output_error(tx: WriteTx, task_pk: int, note: str, *, now: int) -> None:
    """Say in the task's and its step's status_details (and error_details, for a step that ended
    in error) that their output could not all be stored, whatever their status meanwhile."""
    task = tx.get_task_by_pk(task_pk)
    if task is None:
        return  # the job was deleted meanwhile
    step = tx.get_step_by_pk(task.step_pk)
    if step is None:
        return
    transition_step(tx, step, step.status, now=now, status_details={OUTPUT_ERROR: note})
    record_task_status(tx, task_pk, task.status, {OUTPUT_ERROR: note}, None, None, now, job_pk=step.job_pk)
