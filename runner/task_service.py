"""A step's tasks: listed, read, and upserted by a workload's or a client's PUT (its heartbeat)."""

from __future__ import annotations

from runner.clock import Clock
from runner.errors import NotFound
from runner.lookups import existing_job, existing_step
from runner.models import TaskRecord, TaskUpdate, new_entity_id
from runner.secrets import SecretService
from storage import Repository, WriteTx


class TaskService:
    def __init__(self, store: Repository, clock: Clock, secrets: SecretService) -> None:
        self._store = store
        self._clock = clock
        self.secrets = secrets

    async def list(self, workspace: str, job_name: str, step_name: str) -> list[TaskRecord]:
        step = await existing_step(self._store, workspace, job_name, step_name)
        return await self._store.tasks_of_step(step.pk)

    async def get(self, workspace: str, job_name: str, step_name: str, task_name: str) -> TaskRecord:
        step = await existing_step(self._store, workspace, job_name, step_name)
        task = await self._store.get_task(step.pk, task_name)
        if task is None:
            raise NotFound(f"task {task_name!r} not found in step {step_name!r} of job {job_name!r}")
        return task

    async def put(
        self, workspace: str, job_name: str, step_name: str, task_name: str, update: TaskUpdate
    ) -> TaskRecord:
        """A PUT from a workload or client: upsert, and count it as the task's heartbeat."""
        step = await existing_step(self._store, workspace, job_name, step_name)
        masker = await self.secrets.masker_for_job(await existing_job(self._store, workspace, job_name))
        if masker:
            # A workload reporting its own secret must not publish it through the API. Only the
            # free-form fields: `status` is checked against the table as sent.
            update = update.model_copy(
                update={
                    "status_details": masker.json(update.status_details),
                    "error_details": masker.json(update.error_details),
                    "error_stack": masker.json(update.error_stack),
                }
            )
        now = self._clock.now_us()

        def upsert(tx: WriteTx) -> TaskRecord | None:
            task = tx.get_task(step.pk, task_name)
            if task is None:
                pk = tx.insert_task(
                    id=new_entity_id("platform-job-task"),
                    step_pk=step.pk,
                    name=task_name,
                    status=update.status,
                    status_details=update.status_details or {},
                    error_details=update.error_details or None,
                    error_stack=update.error_stack or None,
                    heartbeat_at=now,
                    now=now,
                )
            else:
                pk = task.pk
                # An invalid task transition is ignored (reference behaviour), but it still counts
                # as a sign of life.
                allowed = task.status.can_transition_to(update.status)
                tx.update_task(
                    pk,
                    status=update.status if allowed else task.status,
                    status_details={**task.status_details, **(update.status_details or {})}
                    if allowed
                    else task.status_details,
                    error_details=(update.error_details or task.error_details)
                    if allowed
                    else task.error_details,
                    error_stack=(update.error_stack or task.error_stack) if allowed else task.error_stack,
                    heartbeat_at=now,
                    now=now,
                )
            if update.status_details:
                job = tx.get_job_by_pk(step.job_pk)
                assert job is not None
                tx.update_job_state(
                    job.pk,
                    status=job.status,
                    status_details={**job.status_details, **update.status_details},
                    error_details=job.error_details,
                    now=job.updated_at,
                )
            return tx.get_task_by_pk(pk)

        fresh = await self._store.write(upsert)
        assert fresh is not None
        return fresh
