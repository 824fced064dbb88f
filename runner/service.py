"""The Jobs API's operations, one method each: what the web handlers call.

Workload control (starting, stopping, freezing processes) belongs to the scheduler; this module
records intent in the store and tells the scheduler through the `WorkloadControl` protocol.
"""

from __future__ import annotations

import asyncio
import getpass
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from runner.allocation import unfit_reason
from runner.capacity_view import CapacityView
from runner.clock import Clock
from runner.errors import Conflict, NotFound, Unprocessable
from runner.log_service import LogService
from runner.lookups import current_step, existing_job, existing_job_in, existing_step, reload_job
from runner.models import (
    NAME_PATTERN,
    CreateJobRequest,
    JobFilter,
    JobRecord,
    JobSort,
    JobStatus,
    Page,
    ResultRecord,
    StepFilter,
    StepRecord,
    StepSort,
    SubprocessExecutorSpec,
    TaskRecord,
    base58,
    new_entity_id,
    step_needs,
)
from runner.notify import ChangeSignal
from runner.profiles import ProfileCatalog
from runner.results import Artifact, ResultService
from runner.secrets import SecretService
from runner.start_writes import StartedStep
from runner.step_run import StepRun
from runner.task_service import TaskService
from runner.transitions import TransitionOutcome, settle_step, tell_tasks_and_job, transition_step
from runner.workload_control import WorkloadControl
from storage import AlreadyExists, Repository, WriteTx


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
        capacity: CapacityView,
        logs: LogService,
        tasks: TaskService,
    ) -> None:
        self._store = store
        self._profiles = profiles
        # The operations on a job's parts, each service its own room (web calls them as these).
        self.capacity = capacity
        self.logs = logs
        self.tasks = tasks
        self._clock = clock
        self._workloads = workloads
        self.secrets = secrets
        self._results = results
        self._log_signal = log_signal
        self._principal = {"principal_id": getpass.getuser(), "principal_groups": []}

    async def profiles(self) -> list[dict[str, Any]]:
        return await self._workloads.profiles()

    async def store_problem(self) -> str | None:
        """Why the store cannot take writes now (None: it can); plain words, no names or paths."""
        return await self._store.health()

    # ------------------------------------------------------------------------------ jobs

    async def create_job(self, workspace: str, request: CreateJobRequest) -> JobRecord:
        await self._check_profiles(request)
        await self.secrets.check_references(workspace, request.platform_spec)
        now = self._clock.now_us()
        name = request.name or generate_job_name(request.source)

        # The first step starts in this very transaction when the scheduler has a slot and no
        # other step waits (see Scheduler.claim_first_step); else the scheduler's loop starts it.
        first = request.platform_spec.steps[0]
        run = self._workloads.claim_first_step() if not step_needs(first.executor) else None

        def record_job(tx: WriteTx) -> tuple[JobRecord, StartedStep | None]:
            starts_now = run is not None and not tx.any_step_waiting()
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
                    status=JobStatus.PENDING if starts_now else JobStatus.CREATED,
                )
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
            if starts_now and run is not None:
                return job, run.record_first_step_started(tx, job, now)
            # Steps are created one at a time, as in the reference: the next when this one completes.
            tx.insert_step(job, 0, new_entity_id("platform-job-step"), now)
            return job, None

        if run is None:
            job, _ = await self._store.write(record_job, small=True)
            self._workloads.wake()
            return job
        # Shielded: a submit whose client goes away must still spawn what its commit recorded.
        # Eager: when its write runs at once (storage/writer.py), the answer leaves in this turn.
        loop = asyncio.get_running_loop()
        job = await asyncio.shield(
            asyncio.Task(self._record_and_launch(record_job, run), loop=loop, eager_start=True)
        )
        # Answered as the reference answers a submit: the job as created, before its start.
        return job.model_copy(update={"status": JobStatus.CREATED})

    async def _record_and_launch(
        self, record_job: Callable[[WriteTx], tuple[JobRecord, StartedStep | None]], run: StepRun
    ) -> JobRecord:
        try:
            job, started = await self._store.write(record_job, small=True)
        except BaseException:
            self._workloads.drop_claim(run)
            raise
        if started is None:
            self._workloads.drop_claim(run)  # and the loop, woken, starts what waits in order
        else:
            self._workloads.launch_claimed(run, started)
        return job

    async def _check_profiles(self, request: CreateJobRequest) -> None:
        """Every step's profile exists (else 422 naming the known ones), a container step has an
        image (its own or its profile's default), and a Docker engine answers if one is needed."""
        offered: set[tuple[str, str]] | None = None
        for step in request.platform_spec.steps:
            executor = step.executor
            needs = step_needs(executor)
            if needs and self.capacity.never_fits(needs):
                # It could never start: refused now rather than left waiting forever.
                why = unfit_reason(needs, self.capacity.machine())
                raise Unprocessable(f"step {step.name!r} can never start here: {why}")
            profile = self._profiles.get(executor.provider, executor.profile)
            if profile.backend == "subprocess" or isinstance(executor, SubprocessExecutorSpec):
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
        return await existing_job(self._store, workspace, name)

    async def list_jobs(self, flt: JobFilter, sort: JobSort, page: int, page_size: int) -> Page[JobRecord]:
        return await self._store.list_jobs(flt, sort, page, page_size)

    async def delete_job(self, workspace: str, name: str) -> None:
        await self._workloads.ready()

        def delete(tx: WriteTx) -> None:
            job = existing_job_in(tx, workspace, name)
            steps = tx.steps_of_job(job.pk)
            if not job.status.is_terminal or any(not s.status.is_terminal for s in steps):
                raise Conflict(f"job {name!r} is {job.status.value!r}: only a finished job can be deleted")
            if any(self._workloads.is_running(s.pk) for s in steps):
                # Recorded as finished, but its workload is still being stopped and drained.
                raise Conflict(f"job {name!r} is still stopping its workload; try again in a moment")
            # Before the rows go: a crash in between leaves a job without its output (deleted
            # again at the next try), never output no job owns.
            self._store.log_files.remove_job(job.pk)
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
            job = existing_job_in(tx, workspace, name)
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
            job, step = current_step(tx, workspace, name)
            if step is None or step.status.is_terminal:
                return job, None
            # settle_step takes the legal path (a pausing or paused step passes through paused
            # and cancelling), so cancel works from every unfinished status.
            if self._workloads.is_running(step.pk):
                settle_step(tx, step, JobStatus.CANCELLING, now=now, status_details={"message": "Cancelling"})
                tell_tasks_and_job(tx, step, "Job is cancelling", now=now)
                return reload_job(tx, job), step.pk
            message = {"message": "Cancelled before it ran"}
            settle_step(tx, step, JobStatus.CANCELLED, now=now, status_details=message)
            return reload_job(tx, job), None

        job, live_step = await self._store.write(cancel)
        if live_step is not None:
            self._workloads.request_stop(live_step)
        return job

    async def pause_job(self, workspace: str, name: str) -> JobRecord:
        await self._workloads.ready()
        now = self._clock.now_us()

        def pause(tx: WriteTx) -> tuple[JobRecord, int | None]:
            job, step = current_step(tx, workspace, name)
            if step is None or step.status not in (JobStatus.CREATED, JobStatus.PENDING, JobStatus.ACTIVE):
                return job, None
            live = self._workloads.is_running(step.pk)
            step = transition_step(
                tx, step, JobStatus.PAUSING, now=now, status_details={"message": "Pausing"}
            ).step
            if not live:
                transition_step(tx, step, JobStatus.PAUSED, now=now, status_details={"message": "Paused"})
            tell_tasks_and_job(tx, step, "Job is pausing" if live else "Job is paused", now=now)
            return reload_job(tx, job), step.pk if live else None

        job, live_step = await self._store.write(pause)
        if live_step is not None:
            self._workloads.request_pause(live_step)
        return job

    async def resume_job(self, workspace: str, name: str) -> JobRecord:
        await self._workloads.ready()
        now = self._clock.now_us()

        def resume(tx: WriteTx) -> tuple[JobRecord, int | None, bool]:
            job, step = current_step(tx, workspace, name)
            if step is None or step.status != JobStatus.PAUSED:
                return job, None, False
            transition_step(tx, step, JobStatus.RESUMING, now=now, status_details={"message": "Resuming"})
            tell_tasks_and_job(tx, step, "Job is resuming", now=now)
            return reload_job(tx, job), step.pk, self._workloads.is_running(step.pk)

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
        return await existing_step(self._store, workspace, job_name, step_name)

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
