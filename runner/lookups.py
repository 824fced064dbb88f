"""Finding a job or step by name, or saying it is not there: shared by the services."""

from __future__ import annotations

from runner.errors import NotFound
from runner.models import JobRecord, StepRecord
from storage import Repository, WriteTx


def no_such_job(workspace: str, name: str) -> NotFound:
    return NotFound(f"job {name!r} not found in workspace {workspace!r}")


async def existing_job(store: Repository, workspace: str, name: str) -> JobRecord:
    job = await store.get_job(workspace, name)
    if job is None:
        raise no_such_job(workspace, name)
    return job


def existing_job_in(tx: WriteTx, workspace: str, name: str) -> JobRecord:
    job = tx.get_job(workspace, name)
    if job is None:
        raise no_such_job(workspace, name)
    return job


def current_step(tx: WriteTx, workspace: str, name: str) -> tuple[JobRecord, StepRecord | None]:
    """The job and its first unfinished step, if any."""
    job = existing_job_in(tx, workspace, name)
    for step in tx.steps_of_job(job.pk):
        if not step.status.is_terminal:
            return job, step
    return job, None


def reload_job(tx: WriteTx, job: JobRecord) -> JobRecord:
    fresh = tx.get_job_by_pk(job.pk)
    assert fresh is not None
    return fresh


async def existing_step(store: Repository, workspace: str, job_name: str, step_name: str) -> StepRecord:
    step = await store.get_step(workspace, job_name, step_name)
    if step is None:
        await existing_job(store, workspace, job_name)
        raise NotFound(f"step {step_name!r} not found in job {job_name!r}")
    return step
