"""The Jobs API's operations, one method each: what the web handlers call.

Workload control (starting, stopping, freezing processes) belongs to the scheduler; this module
records intent in the store and tells the scheduler through the `WorkloadControl` protocol.
"""

from __future__ import annotations

import getpass
import re
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Protocol

from runner.allocation import Allocator, GpuUse, Hold, StepRef, Usage, Wait, unfit_reason, wait_reason
from runner.clock import Clock
from runner.errors import BadRequest, Conflict, NotFound, Unprocessable
from runner.log_pages import Cursor, LogPage, decode_cursor, encode_cursor, page_logs, scope_hash
from runner.models import (
    NAME_PATTERN,
    CreateJobRequest,
    JobFilter,
    JobRecord,
    JobSort,
    JobStatus,
    LogLine,
    LogQuery,
    Needs,
    Page,
    ResultRecord,
    StepFilter,
    StepRecord,
    StepSort,
    SubprocessExecutor,
    TaskRecord,
    TaskUpdate,
    base58,
    new_entity_id,
    step_needs,
)
from runner.notify import ChangeSignal
from runner.profiles import ProfileCatalog
from runner.results import Artifact, ResultService
from runner.secrets import SecretService
from runner.transitions import TransitionOutcome, settle_step, transition_step
from storage import AlreadyExists, Repository, WriteTx


class WorkloadControl(Protocol):
    """What the service needs from whoever runs workloads (the scheduler)."""

    def wake(self) -> None:
        """New runnable steps may exist."""

    def is_running(self, step_pk: int) -> bool: ...

    def job_is_live(self, job_pk: int) -> bool: ...

    async def ready(self) -> None:
        """Wait until workloads left by an earlier daemon are adopted again."""

    def request_stop(self, step_pk: int) -> None:
        """End the live workload of a step now in `cancelling` (or being forced terminal)."""

    def request_pause(self, step_pk: int) -> None:
        """Freeze the live workload of a step now in `pausing`."""

    def request_resume(self, step_pk: int) -> None:
        """Thaw the frozen workload of a step now in `resuming`."""

    async def profiles(self) -> list[dict[str, Any]]:
        """The execution profiles on offer, as `GET /execution-profiles` lists them."""


@dataclass
class StatusTree:
    job: JobRecord
    steps: list[StepRecord]
    tasks: dict[int, list[TaskRecord]]


_NON_NAME_CHARS = re.compile(r"[^a-z0-9\-@.+_]+")


def generate_job_name(source: str) -> str:
    """`{source[:20]}-{8 lowercase base58 chars}` like the reference, made to fit NAME_PATTERN."""
    prefix = _NON_NAME_CHARS.sub("-", source[:20].lower())
    prefix = re.sub(r"-{2,}", "-", prefix).strip("-")
    if not prefix or not prefix[0].isalpha():
        prefix = f"job-{prefix}".rstrip("-")
    suffix = base58(secrets.token_bytes(16)).lower()[-8:]
    name = f"{prefix}-{suffix}"
    assert NAME_PATTERN.match(name), name
    return name


class JobService:
    def __init__(
        self,
        store: Repository,
        clock: Clock,
        workloads: WorkloadControl,
        secrets: SecretService,
        results: ResultService,
        log_signal: ChangeSignal,
        profiles: ProfileCatalog,
        allocator: Allocator,
    ) -> None:
        self._store = store
        self._profiles = profiles
        self._allocator = allocator
        self._clock = clock
        self._workloads = workloads
        self.secrets = secrets
        self._results = results
        self._log_signal = log_signal
        self._principal = {"principal_id": getpass.getuser(), "principal_groups": []}

    async def profiles(self) -> list[dict[str, Any]]:
        return await self._workloads.profiles()

    def resources(self) -> tuple[Needs, Needs]:
        """(what the machine has, what running steps hold now): GPUs, CPUs, memory."""
        return self._allocator.capacity, self._allocator.in_use()

    async def usage(self) -> Usage:
        """The machine, what is in use, every GPU with the step holding it, and the steps that
        wait for GPUs, CPUs or memory, with why (the scheduler's own rule, applied to now)."""
        refs: dict[int, StepRef | None] = {}

        async def ref(step_pk: int) -> StepRef | None:
            if step_pk not in refs:
                step = await self._store.get_step_by_pk(step_pk)
                refs[step_pk] = None if step is None else StepRef(step.workspace, step.job_name, step.name)
            return refs[step_pk]

        holdings = self._allocator.holdings()
        holder = {g.device_id: pk for pk, holding in holdings.items() for g in holding.gpus}
        uses = [
            GpuUse(gpu=g, held_by=await ref(holder[g.device_id]) if g.device_id in holder else None)
            for g in self._allocator.machine.gpus
        ]
        waiting = [d for d in await self._store.runnable_steps(0) if d.step_pk not in holdings]
        waits = []
        for decision in self._allocator.plan(waiting, self._clock.now_us()):
            step_ref = await ref(decision.demand.step_pk)
            if step_ref is not None:  # (a step that fits and still waits: for a slot)
                waits.append(
                    Wait(step_ref, decision.demand.needs, wait_reason(decision, self._allocator.backfill_s))
                )
        held = []
        for step_pk, holding in holdings.items():
            if (step_ref := await ref(step_pk)) is not None:
                held.append(Hold(step_ref, holding.needs, holding.gpus))
        return Usage(self._allocator.capacity, self._allocator.in_use(), uses, held, waits)

    async def store_problem(self) -> str | None:
        """Why the store cannot take writes now (None: it can); plain words, no names or paths."""
        return await self._store.health()

    # ------------------------------------------------------------------------------ jobs

    async def create_job(self, workspace: str, request: CreateJobRequest) -> JobRecord:
        await self._check_profiles(request)
        await self.secrets.check_references(workspace, request.platform_spec)
        now = self._clock.now_us()
        name = request.name or generate_job_name(request.source)

        def record_job(tx: WriteTx) -> JobRecord:
            try:
                job = tx.insert_job(
                    id=new_entity_id("platform-job"),
                    workspace=workspace,
                    name=name,
                    project=request.project,
                    description=request.description,
                    source=request.source,
                    spec=request.spec,
                    platform_spec=request.platform_spec,
                    fileset=request.output_location or f"job-fileset-{name}",
                    output_location=request.output_location,
                    ownership=request.ownership,
                    custom_fields=request.custom_fields,
                    auth_context=self._principal,
                    attempt_id=new_entity_id("platform-job-attempt"),
                    now=now,
                )
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
            # Steps are created one at a time, as in the reference: the next when this one completes.
            tx.insert_step(job, 0, new_entity_id("platform-job-step"), now)
            return job

        job = await self._store.write(record_job)
        self._workloads.wake()
        return job

    async def _check_profiles(self, request: CreateJobRequest) -> None:
        """Every step's profile exists (else 422 naming the known ones), a container step has an
        image (its own or its profile's default), and a Docker engine answers if one is needed."""
        offered: set[tuple[str, str]] | None = None
        for step in request.platform_spec.steps:
            executor = step.executor
            needs = step_needs(executor)
            if needs and self._allocator.never_fits(needs):
                # It could never start: refused now rather than left waiting forever.
                why = unfit_reason(needs, self._allocator.capacity)
                raise Unprocessable(f"step {step.name!r} can never start here: {why}")
            profile = self._profiles.get(executor.provider, executor.profile)
            if profile.backend == "subprocess" or isinstance(executor, SubprocessExecutor):
                continue  # always offered; no probe of Docker on the hot path
            if not executor.container.image and not profile.default_task_image:
                raise Unprocessable(
                    f"step {step.name!r}: container.image is required (the profile "
                    f"'{executor.provider}/{executor.profile}' has no default_task_image)"
                )
            if offered is None:
                offered = {(p["provider"], p["profile"]) for p in await self._workloads.profiles()}
            if (executor.provider, executor.profile) not in offered:
                raise Unprocessable(
                    f"step {step.name!r} needs the {executor.provider!r} executor, which needs a Docker "
                    "engine, and none is reachable from this daemon"
                )

    async def get_job(self, workspace: str, name: str) -> JobRecord:
        return await _existing_job(self._store, workspace, name)

    async def list_jobs(self, flt: JobFilter, sort: JobSort, page: int, page_size: int) -> Page[JobRecord]:
        return await self._store.list_jobs(flt, sort, page, page_size)

    async def delete_job(self, workspace: str, name: str) -> None:
        await self._workloads.ready()

        def delete(tx: WriteTx) -> None:
            job = _existing_job_in(tx, workspace, name)
            steps = tx.steps_of_job(job.pk)
            if not job.status.is_terminal or any(not s.status.is_terminal for s in steps):
                raise Conflict(f"job {name!r} is {job.status.value!r}: only a finished job can be deleted")
            if any(self._workloads.is_running(s.pk) for s in steps):
                # Recorded as finished, but its workload is still being stopped and drained.
                raise Conflict(f"job {name!r} is still stopping its workload; try again in a moment")
            tx.delete_job(job.pk)

        await self._store.write(delete)

    async def status_tree(self, workspace: str, name: str) -> StatusTree:
        job = await self.get_job(workspace, name)
        steps = await self._store.steps_of_job(job.pk)
        tasks = await self._store.tasks_of_steps(s.pk for s in steps)
        return StatusTree(job=job, steps=steps, tasks=tasks)

    async def merge_job_status_details(self, workspace: str, name: str, details: dict[str, Any]) -> None:
        # What a client stores must not publish a secret of the job's steps through the API.
        masker = await self.secrets.masker_for_job(await self.get_job(workspace, name))
        details = masker.json(details)
        now = self._clock.now_us()

        def merge(tx: WriteTx) -> None:
            job = _existing_job_in(tx, workspace, name)
            tx.update_job_state(
                job.pk,
                status=job.status,
                status_details={**job.status_details, **details},
                error_details=job.error_details,
                now=now,
            )

        await self._store.write(merge)

    # ------------------------------------------------------------------------------ job control

    async def cancel_job(self, workspace: str, name: str) -> JobRecord:
        await self._workloads.ready()
        now = self._clock.now_us()

        def cancel(tx: WriteTx) -> tuple[JobRecord, int | None]:
            job, step = _current_step(tx, workspace, name)
            if step is None or step.status.is_terminal:
                return job, None
            # settle_step takes the legal path (a pausing or paused step passes through paused
            # and cancelling), so cancel works from every unfinished status.
            if self._workloads.is_running(step.pk):
                settle_step(tx, step, JobStatus.CANCELLING, now=now, status_details={"message": "Cancelling"})
                return _reload_job(tx, job), step.pk
            message = {"message": "Cancelled before it ran"}
            settle_step(tx, step, JobStatus.CANCELLED, now=now, status_details=message)
            return _reload_job(tx, job), None

        job, live_step = await self._store.write(cancel)
        if live_step is not None:
            self._workloads.request_stop(live_step)
        return job

    async def pause_job(self, workspace: str, name: str) -> JobRecord:
        await self._workloads.ready()
        now = self._clock.now_us()

        def pause(tx: WriteTx) -> tuple[JobRecord, int | None]:
            job, step = _current_step(tx, workspace, name)
            if step is None or step.status not in (JobStatus.CREATED, JobStatus.PENDING, JobStatus.ACTIVE):
                return job, None
            live = self._workloads.is_running(step.pk)
            step = transition_step(
                tx, step, JobStatus.PAUSING, now=now, status_details={"message": "Pausing"}
            ).step
            if not live:
                transition_step(tx, step, JobStatus.PAUSED, now=now, status_details={"message": "Paused"})
            return _reload_job(tx, job), step.pk if live else None

        job, live_step = await self._store.write(pause)
        if live_step is not None:
            self._workloads.request_pause(live_step)
        return job

    async def resume_job(self, workspace: str, name: str) -> JobRecord:
        await self._workloads.ready()
        now = self._clock.now_us()

        def resume(tx: WriteTx) -> tuple[JobRecord, int | None, bool]:
            job, step = _current_step(tx, workspace, name)
            if step is None or step.status != JobStatus.PAUSED:
                return job, None, False
            transition_step(tx, step, JobStatus.RESUMING, now=now, status_details={"message": "Resuming"})
            return _reload_job(tx, job), step.pk, self._workloads.is_running(step.pk)

        job, step_pk, live = await self._store.write(resume)
        if step_pk is not None and live:
            self._workloads.request_resume(step_pk)
        elif step_pk is not None:
            self._workloads.wake()
        return job

    # ------------------------------------------------------------------------------ steps

    async def list_steps(
        self, flt: StepFilter, sort: StepSort, page: int, page_size: int
    ) -> Page[StepRecord]:
        return await self._store.list_steps(flt, sort, page, page_size)

    async def get_step(self, workspace: str, job_name: str, step_name: str) -> StepRecord:
        step = await self._store.get_step(workspace, job_name, step_name)
        if step is None:
            await self.get_job(workspace, job_name)
            raise NotFound(f"step {step_name!r} not found in job {job_name!r}")
        return step

    async def update_step_status(
        self,
        workspace: str,
        job_name: str,
        step_name: str,
        status: JobStatus,
        status_details: dict[str, Any],
        error_details: dict[str, Any],
    ) -> StepRecord:
        """A client's PATCH. The daemon acts on it, so the status stays true to the workload."""
        await self._workloads.ready()
        step = await self.get_step(workspace, job_name, step_name)
        masker = await self.secrets.masker_for_job(await self.get_job(workspace, job_name))
        status_details, error_details = masker.json(status_details), masker.json(error_details)
        if "message" not in status_details and status != step.status:
            # The step's old message ("Job is running") would no longer be true.
            status_details = {**status_details, "message": f"Status set to {status.value} through the API"}
        live = self._workloads.is_running(step.pk)
        now = self._clock.now_us()

        def patch(tx: WriteTx) -> TransitionOutcome:
            fresh = tx.get_step_by_pk(step.pk)
            if fresh is None:
                raise NotFound(f"step {step_name!r} not found in job {job_name!r}")
            return transition_step(
                tx, fresh, status, now=now, status_details=status_details, error_details=error_details
            )

        outcome = await self._store.write(patch)
        self._after_transition(outcome, live)
        return outcome.step

    def _after_transition(self, outcome: TransitionOutcome, live: bool) -> None:
        status = outcome.step.status
        if outcome.next_step_pk is not None or status in (JobStatus.CREATED, JobStatus.RESUMING):
            self._workloads.wake()
        if not live:
            return
        if status == JobStatus.CANCELLING or status.is_terminal:
            self._workloads.request_stop(outcome.step.pk)
        elif status in (JobStatus.PAUSING, JobStatus.PAUSED):
            self._workloads.request_pause(outcome.step.pk)
        elif status in (JobStatus.RESUMING, JobStatus.ACTIVE):
            self._workloads.request_resume(outcome.step.pk)  # a no-op unless it was frozen

    # ------------------------------------------------------------------------------ tasks

    async def list_tasks(self, workspace: str, job_name: str, step_name: str) -> list[TaskRecord]:
        step = await self.get_step(workspace, job_name, step_name)
        return await self._store.tasks_of_step(step.pk)

    async def get_task(self, workspace: str, job_name: str, step_name: str, task_name: str) -> TaskRecord:
        step = await self.get_step(workspace, job_name, step_name)
        task = await self._store.get_task(step.pk, task_name)
        if task is None:
            raise NotFound(f"task {task_name!r} not found in step {step_name!r} of job {job_name!r}")
        return task

    async def put_task(
        self, workspace: str, job_name: str, step_name: str, task_name: str, update: TaskUpdate
    ) -> TaskRecord:
        """A PUT from a workload or client: upsert, and count it as the task's heartbeat."""
        step = await self.get_step(workspace, job_name, step_name)
        masker = await self.secrets.masker_for_job(await self.get_job(workspace, job_name))
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

    # ------------------------------------------------------------------------------ logs

    async def page_logs(
        self,
        workspace: str,
        name: str,
        *,
        limit: int | None,
        page_cursor: str | None,
        tail: int | None,
        attempt: str | None,
        step_name: str | None,
        task_name: str | None,
    ) -> LogPage:
        job = await self.get_job(workspace, name)
        query = self._log_query(job, attempt, step_name, task_name)
        return await page_logs(self._store, query, limit=limit, page_cursor=page_cursor, tail=tail)

    def _log_query(
        self, job: JobRecord, attempt: str | None, step_name: str | None, task_name: str | None
    ) -> LogQuery:
        # The reference types attempt_id as an integer yet stores string ids, so an explicit value
        # never matches there. Here an integer is the attempt's sequence number (0 = first).
        if attempt is None or attempt in (job.attempt_id, str(job.attempt_seq)):
            attempt_id = job.attempt_id
        else:
            attempt_id = f"no-such-attempt:{attempt}"
        return LogQuery(job_pk=job.pk, attempt_id=attempt_id, step_name=step_name, task_name=task_name)

    async def follow_logs(
        self,
        workspace: str,
        name: str,
        *,
        page_cursor: str | None,
        attempt: str | None,
        step_name: str | None,
        task_name: str | None,
        tail: int | None = None,
        idle_check_s: float = 1.0,
    ) -> AsyncGenerator[tuple[LogLine, str], None]:
        """Every line after `page_cursor` (or the last `tail` lines) as it arrives, each with the
        cursor to resume after it; ends once the job is finished and everything it printed has
        been sent. The job and the cursor are checked here, before anything is streamed."""
        if tail is not None and page_cursor is not None:
            raise BadRequest("`tail` cannot be combined with `page_cursor`")
        job = await self.get_job(workspace, name)
        query = self._log_query(job, attempt, step_name, task_name)
        after = 0
        if page_cursor:
            cursor = decode_cursor(page_cursor, query)
            after = cursor.line_id if cursor.direction == "f" else max(0, cursor.line_id - 1)
        elif tail is not None:
            last = await self._store.log_lines_before(query, None, tail)
            after = last[0].id - 1 if last else 0
        return self._follow(job, query, after, idle_check_s)

    async def _follow(
        self, job: JobRecord, query: LogQuery, after: int, idle_check_s: float
    ) -> AsyncGenerator[tuple[LogLine, str], None]:
        scope = scope_hash(query)
        while True:
            token = self._log_signal.token(job.pk)
            # Status before lines: the final status is written only after the last line is stored.
            current = await self._store.get_job_by_pk(job.pk)
            # A finished status can precede the last lines (a watchdog or client verdict is
            # recorded before the workload is stopped): also wait for its workload to be let go.
            finished = current is None or (
                current.status.is_terminal and not self._workloads.job_is_live(job.pk)
            )
            lines = await self._store.log_lines_after(query, after, 500)
            for line in lines:
                after = line.id
                yield line, encode_cursor(Cursor("f", after, scope))
            if lines:
                continue
            if finished:
                return
            await self._log_signal.wait(token, idle_check_s)

    # ------------------------------------------------------------------------------ results

    async def create_result(
        self, workspace: str, job_name: str, name: str, artifact_url: str, storage_type: str
    ) -> tuple[JobRecord, ResultRecord]:
        job = await self.get_job(workspace, job_name)
        masker = await self.secrets.masker_for_job(job)
        return job, await self._results.create(job, name, artifact_url, storage_type, masker)

    async def get_result(self, workspace: str, job_name: str, name: str) -> tuple[JobRecord, ResultRecord]:
        job = await self.get_job(workspace, job_name)
        return job, await self._results.get(job, name)

    async def list_results(
        self, workspace: str, job_name: str, sort: StepSort
    ) -> tuple[JobRecord, list[ResultRecord]]:
        job = await self.get_job(workspace, job_name)
        newest_first = sort.value.startswith("-")
        return job, await self._results.list_all(
            job, newest_first, by_updated=sort.value.endswith("updated_at")
        )

    async def result_artifact(
        self, workspace: str, job_name: str, name: str
    ) -> tuple[ResultRecord, Artifact]:
        job, result = await self.get_result(workspace, job_name, name)
        return result, self._results.artifact(job, result)


def _no_such_job(workspace: str, name: str) -> NotFound:
    return NotFound(f"job {name!r} not found in workspace {workspace!r}")


async def _existing_job(store: Repository, workspace: str, name: str) -> JobRecord:
    job = await store.get_job(workspace, name)
    if job is None:
        raise _no_such_job(workspace, name)
    return job


def _existing_job_in(tx: WriteTx, workspace: str, name: str) -> JobRecord:
    job = tx.get_job(workspace, name)
    if job is None:
        raise _no_such_job(workspace, name)
    return job


def _current_step(tx: WriteTx, workspace: str, name: str) -> tuple[JobRecord, StepRecord | None]:
    """The job and its first unfinished step, if any."""
    job = _existing_job_in(tx, workspace, name)
    for step in tx.steps_of_job(job.pk):
        if not step.status.is_terminal:
            return job, step
    return job, None


def _reload_job(tx: WriteTx, job: JobRecord) -> JobRecord:
    fresh = tx.get_job_by_pk(job.pk)
    assert fresh is not None
    return fresh
