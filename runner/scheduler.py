"""Starts runnable steps the moment they appear and carries each one to its final status.

Event-driven: `wake()` (a new job, a completed step, a resume, a freed slot) sets an event the
loop waits on; there is no polling tick between a submission and the spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.allocation import Allocator, unfit_reason
from runner.clock import Clock
from runner.environment import task_environment, task_paths
from runner.errors import NotFound
from runner.executors.base import ExecutorError, ExitStatus, Launch, TaskLaunch, TaskPaths, Workload
from runner.executors.registry import ExecutorRegistry
from runner.gpus import Gpu
from runner.logs import OutputCollector, OutputTarget
from runner.models import JobStatus, LogQuery, Needs, StepRecord, new_entity_id, new_task_name, step_needs
from runner.notify import ChangeSignal
from runner.profiles import ExecutionProfile, ProfileCatalog
from runner.settings import Settings
from runner.transitions import record_task_status, settle_step, transition_step
from storage import Repository, WriteTx

log = logging.getLogger(__name__)

_ERROR_TAIL_LINES = 20
_STARTABLE = (JobStatus.CREATED, JobStatus.RESUMING)
_SETTLES_UNSTARTED = {JobStatus.CANCELLING: JobStatus.CANCELLED, JobStatus.PAUSING: JobStatus.PAUSED}


@dataclass(frozen=True)
class _TaskRef:
    pk: int
    name: str
    paths: TaskPaths
    gpus: tuple[str, ...] = ()  # device ids (UUIDs) this task holds


def _handle(workload: Workload | None, tasks: list[_TaskRef]) -> dict[str, Any]:
    refs = [{"task_pk": t.pk, "task_name": t.name, "gpus": list(t.gpus)} for t in tasks]
    return {**(workload.handle if workload is not None else {}), "tasks": refs}


@dataclass
class _Run:
    """A step this daemon has claimed: being started, running, or being wound down."""

    step_pk: int
    job_pk: int | None = None
    workload: Workload | None = None
    stop_requested: bool = False
    frozen: bool = False
    stop_grace_s: float = 10.0
    pause_requested: bool = False
    shutdown: bool = False
    task: asyncio.Task[None] | None = None
    control: set[asyncio.Task[None]] = field(default_factory=set)


class SecretSource(Protocol):
    async def resolve(self, step: StepRecord) -> dict[str, str]:
        """Environment variables holding the values of the step's `from_secret` references."""
        ...

    async def values_for(self, step: StepRecord) -> list[str]:
        """Secret values to mask in the step's output."""
        ...


class Scheduler:
    def __init__(
        self,
        store: Repository,
        clock: Clock,
        settings: Settings,
        executors: ExecutorRegistry,
        secrets: SecretSource,
        profiles: ProfileCatalog,
        allocator: Allocator,
    ):
        self._store = store
        self._profiles = profiles
        self._allocator = allocator
        self._secrets = secrets
        self._owner = owner_id(settings)
        executors.on_docker_connected = self.sweep_containers
        self._clock = clock
        self._settings = settings
        self._executors = executors
        self._wake = asyncio.Event()
        self._runs: dict[int, _Run] = {}
        self._starting: set[int] = set()  # claimed, not yet recorded as pending
        self._closing = False
        # Set once recovery has adopted or settled what an earlier daemon left running.
        self.recovered = asyncio.Event()
        # Rung when a job's logs grow or it ends: log followers wait on it.
        self.log_signal = ChangeSignal()
        # Told whenever a step becomes active: a new deadline may now be the nearest one.
        self.on_active: Callable[[int | None], None] = lambda deadline_us: None
        self.base_url = f"http://{settings.host}:{settings.port}"
        self._inherited = {k: os.environ[k] for k in settings.inherited_env if k in os.environ}

    # ------------------------------------------------------------------ WorkloadControl

    def wake(self) -> None:
        """New runnable steps may exist, or a slot was freed."""
        self._wake.set()

    def is_running(self, step_pk: int) -> bool:
        return step_pk in self._runs

    def job_is_live(self, job_pk: int) -> bool:
        """Whether a workload of the job is still held (running, or being stopped and drained)."""
        return any(run.job_pk == job_pk for run in self._runs.values())

    async def ready(self) -> None:
        """Returns once steps left by an earlier daemon are adopted (bounded: 60 s)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.recovered.wait(), 60)

    def request_stop(self, step_pk: int, grace_s: float | None = None) -> None:
        run = self._runs.get(step_pk)
        if run is None:
            return
        run.stop_requested = True
        if grace_s is not None:
            run.stop_grace_s = grace_s
        if run.workload is not None:
            self._control(run, run.workload.stop(run.stop_grace_s))

    def request_pause(self, step_pk: int) -> None:
        run = self._runs.get(step_pk)
        if run is None:
            return
        run.pause_requested = True
        if run.workload is not None:
            self._control(run, self._pause(run))

    def request_resume(self, step_pk: int) -> None:
        run = self._runs.get(step_pk)
        if run is not None and (run.pause_requested or run.frozen):
            run.pause_requested = False
            self._control(run, self._resume(run))

    async def profiles(self) -> list[dict[str, Any]]:
        return await self._executors.profiles(self._profiles)

    def _profile_of(self, step: StepRecord) -> ExecutionProfile:
        return self._profiles.in_force(step.spec.executor.provider, step.spec.executor.profile)

    def _control(self, run: _Run, coro: Any) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"control-step-{run.step_pk}")
        run.control.add(task)
        task.add_done_callback(run.control.discard)
        task.add_done_callback(_log_failure)

    # ------------------------------------------------------------------ the loop

    async def run_forever(self) -> None:
        self._wake.set()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            free = self._settings.max_running_steps - len(self._runs)
            if free <= 0:
                continue
            # Oldest first across all steps; the allocator says which of those that need GPUs,
            # CPUs or memory fit. Claimed steps still in `created` come back from the query too:
            # ask for that many more of the others.
            waiting = [
                d
                for d in await self._store.runnable_steps(free + len(self._starting))
                if d.step_pk not in self._runs
            ]
            for step_pk in self._allocator.admit(waiting, self._clock.now_us(), slots=free):
                self._claim(step_pk, self._run_step(step_pk))

    def _claim(self, step_pk: int, coro: Any, job_pk: int | None = None) -> _Run:
        run = _Run(step_pk=step_pk, job_pk=job_pk, stop_grace_s=self._settings.grace_period_s)
        self._runs[step_pk] = run
        if job_pk is None:  # a fresh start (adopted runs are past starting)
            self._starting.add(step_pk)
        run.task = asyncio.create_task(coro, name=f"step-{step_pk}")

        def release(task: asyncio.Task[None]) -> None:
            self._runs.pop(step_pk, None)
            self._starting.discard(step_pk)
            self._allocator.release(step_pk)  # whatever the end: finished, cancelled, failed to start
            if run.job_pk is not None:
                self.log_signal.notify(run.job_pk)  # followers wait for this before they end
            _log_failure(task)
            self.wake()

        run.task.add_done_callback(release)
        return run

    async def _run_step(self, step_pk: int) -> None:
        run = self._runs[step_pk]
        now = self._clock.now_us()

        def record_start(tx: WriteTx) -> tuple[StepRecord, list[_TaskRef]] | None:
            fresh = tx.get_step_by_pk(step_pk)
            if fresh is None or fresh.status not in _STARTABLE:
                # Cancelled or paused between the claim and now: nothing ran, so settle it here.
                if fresh is not None and fresh.status in _SETTLES_UNSTARTED:
                    final = _SETTLES_UNSTARTED[fresh.status]
                    settle_step(tx, fresh, final, now=now, status_details={"message": final.title()})
                return None
            executor_spec = fresh.spec.executor
            count = executor_spec.resources.num_nodes if executor_spec.provider == "gpu_distributed" else 1
            names = [new_task_name() for _ in range(count)]
            per_task = _split(self._allocator.gpus_of(step_pk), count)
            tasks = [
                _TaskRef(
                    tx.insert_task(
                        id=new_entity_id("platform-job-task"),
                        step_pk=fresh.pk,
                        name=name,
                        status=JobStatus.PENDING,
                        status_details={"message": "Starting"},
                        error_details=None,
                        error_stack=None,
                        heartbeat_at=None,
                        now=now,
                    ),
                    name,
                    task_paths(self._settings.work_dir, fresh, name),
                    tuple(g.device_id for g in gpus),
                )
                for name, gpus in zip(names, per_task, strict=True)
            ]
            # Recorded before the spawn: after a crash the next daemon knows where to look, and
            # never starts the step a second time.
            outcome = transition_step(
                tx,
                fresh,
                JobStatus.PENDING,
                now=now,
                status_details={"message": "Starting"},
                handle=_handle(None, tasks),
            )
            return outcome.step, tasks

        started = await self._store.write(record_start)
        if started is None:
            return
        step, tasks = started
        run.job_pk = step.job_pk
        executor_spec = step.spec.executor
        profile = self._profile_of(step)
        if not run.stop_requested:  # a stop asked for already keeps the grace it was given
            run.stop_grace_s = profile.graceful_shutdown_timeout_seconds
        self._starting.discard(step.pk)
        try:
            executor = await self._executors.for_provider(executor_spec.provider)
            secrets = await self._secrets.resolve(step)
            launches = []
            for task in tasks:
                env = task_environment(
                    step=step,
                    task_name=task.name,
                    paths=executor.visible_paths(task.paths),
                    base_url=executor.callback_url(self.base_url),
                    inherited=self._inherited if executor_spec.provider == "subprocess" else {},
                    profile_env=profile.env,
                    secrets=secrets,
                )
                if task.gpus:  # exactly the GPUs it was given (host processes; Docker gets DeviceIDs)
                    env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(task.gpus)
                launches.append(TaskLaunch(task_name=task.name, env=env, paths=task.paths, gpus=task.gpus))
            workload = await executor.start(
                Launch(
                    step=step,
                    argv=_argv(step),
                    tasks=launches,
                    labels=self._labels(step),
                    image=_image(step, profile),
                )
            )
        except Exception as exc:  # whatever stops a start ends the step in error, never stuck
            if not isinstance(exc, ExecutorError | OSError | NotFound):
                log.exception("unexpected failure starting step %s of job %s", step.name, step.job_name)
            failure = ExitStatus(exit_code=None, reason=str(exc) or type(exc).__name__)
            await self._finish(step, tasks, failure, message=str(exc), with_output=False)
            return
        run.workload = workload
        await self._mark_active(step, tasks, workload)
        await self._follow(run, step, tasks, workload, offsets={}, masked=list(secrets.values()))

    def _labels(self, step: StepRecord) -> dict[str, str]:
        return {
            "localjobs.owner": self._owner,
            "localjobs.workspace": step.workspace,
            "localjobs.job": step.job_name,
            "localjobs.attempt": step.attempt_id,
            "localjobs.step": step.name,
            "localjobs.step-id": step.id,
        }

    async def _mark_active(self, step: StepRecord, tasks: list[_TaskRef], workload: Workload) -> None:
        now = self._clock.now_us()
        details = {"message": "Job is running", **workload.details, **_folder_details(step, tasks[0].paths)}
        handle = _handle(workload, tasks)

        def record_active(tx: WriteTx) -> None:
            fresh = tx.get_step_by_pk(step.pk)
            assert fresh is not None
            if fresh.status in (JobStatus.PENDING, JobStatus.RESUMING):
                transition_step(tx, fresh, JobStatus.ACTIVE, now=now, status_details=details, handle=handle)
            else:  # cancelling or pausing meanwhile: the status waits, the handle must not
                tx.set_step_handle(step.pk, handle)
            for task in tasks:
                task_details = {**details, "gpus": list(task.gpus)} if task.gpus else details
                record_task_status(
                    tx, task.pk, JobStatus.ACTIVE, task_details, None, None, now, job_pk=step.job_pk
                )

        await self._store.write(record_active, patient=True)
        limits = [self._profile_of(step).ttl_seconds_active, step.spec.lifecycle.staleness_timeout_seconds]
        positive = [limit for limit in limits if limit > 0]
        self.on_active(now + min(positive) * 1_000_000 if positive else None)

    async def _follow(
        self,
        run: _Run,
        step: StepRecord,
        tasks: list[_TaskRef],
        workload: Workload,
        offsets: dict[int, dict[str, int]],
        masked: list[str],
    ) -> None:
        if run.stop_requested:
            self._control(run, workload.stop(run.stop_grace_s))
        elif run.pause_requested:
            self._control(run, self._pause(run))
        collectors = [self._collector(step, task, offsets.get(task.pk, {}), masked) for task in tasks]
        for collector in collectors:
            collector.start()
        try:
            try:
                status = await workload.wait()
            except Exception as exc:  # lost track of it: say so, rather than leave it active
                log.exception("lost track of step %s of job %s", step.name, step.job_name)
                status = ExitStatus(exit_code=None, reason=f"lost track of the workload: {exc}")
            finally:
                await _finish_collecting(collectors, step)
            if run.control:
                await asyncio.gather(*run.control, return_exceptions=True)
            await self._finish(step, tasks, status, message=None, shutdown=run.shutdown)
        finally:
            # A run cancelled by a shutdown that keeps steps running must leave its workload be.
            current = asyncio.current_task()
            left_running = current is not None and current.cancelling() > 0
            if not self._settings.keep_containers and not left_running:
                await workload.release()

    def _collector(
        self, step: StepRecord, task: _TaskRef, offsets: dict[str, int], masked: list[str]
    ) -> OutputCollector:
        return OutputCollector(
            self._store,
            self._clock,
            OutputTarget(step.job_pk, step.attempt_id, step.name, task.pk, task.name),
            task.paths,
            offsets,
            self._settings.log_poll_max_s,
            mask_values=masked,
            max_task_bytes=self._settings.log_max_bytes_per_task,
            on_stored=self.log_signal.notify,
        )

    async def _finish(
        self,
        step: StepRecord,
        tasks: list[_TaskRef],
        status: ExitStatus,
        *,
        message: str | None,
        shutdown: bool = False,
        with_output: bool = True,
    ) -> None:
        """Record how the workload ended, mapped against what the step was asked to do meanwhile."""
        now = self._clock.now_us()
        tail = await self._output_tail(step) if with_output and not status.succeeded else []

        def record_outcome(tx: WriteTx) -> None:
            fresh = tx.get_step_by_pk(step.pk)
            if fresh is None:
                return  # the job was deleted meanwhile
            details = {**status.as_details()}
            errors: dict[str, Any] | None = None
            if fresh.status.is_terminal:
                final = fresh.status  # a client or the watchdog already decided
                errors = fresh.error_details
            elif fresh.status == JobStatus.CANCELLING:
                final = JobStatus.CANCELLED
                details["message"] = "Job was cancelled" + _with_code(status)
            elif shutdown:
                final = JobStatus.ERROR
                details["message"] = "Stopped because the localjobs daemon shut down"
                errors = {"message": details["message"], **status.as_details()}
            elif status.succeeded:
                final = JobStatus.COMPLETED
                details["message"] = "Job completed successfully with exit code 0"
            else:
                final = JobStatus.ERROR
                details["message"] = message or status.describe()
                errors = {"message": message or status.describe(), **status.as_details()}
                if tail:
                    errors["last_lines"] = tail
            if not fresh.status.is_terminal:
                settle_step(tx, fresh, final, now=now, status_details=details, error_details=errors)
            stack = "\n".join(tail) if final == JobStatus.ERROR and tail else None
            for task in tasks:
                record_task_status(tx, task.pk, final, details, errors, stack, now, job_pk=step.job_pk)

        # Until stored: a disk full for longer than a patient write waits must not leave the step
        # `active` for ever once space returns (shut-down cancels the wait).
        await self._store.write(record_outcome, until_stored=True)
        self.log_signal.notify(step.job_pk)
        self.wake()

    async def _output_tail(self, step: StepRecord) -> list[str]:
        query = LogQuery(job_pk=step.job_pk, attempt_id=step.attempt_id, step_name=step.name)
        lines = await self._store.log_lines_before(query, None, _ERROR_TAIL_LINES)
        return [line.message for line in lines]

    async def _pause(self, run: _Run) -> None:
        if run.workload is None:
            return
        await run.workload.pause()
        run.frozen = True
        now = self._clock.now_us()

        def record_paused(tx: WriteTx) -> None:
            step = tx.get_step_by_pk(run.step_pk)
            if step is not None and step.status == JobStatus.PAUSING:
                transition_step(tx, step, JobStatus.PAUSED, now=now, status_details={"message": "Paused"})

        await self._store.write(record_paused, patient=True)

    async def _resume(self, run: _Run) -> None:
        if run.workload is None:
            return
        await run.workload.resume()
        run.frozen = False
        now = self._clock.now_us()

        def record_running(tx: WriteTx) -> None:
            step = tx.get_step_by_pk(run.step_pk)
            if step is not None and step.status == JobStatus.RESUMING:
                transition_step(
                    tx, step, JobStatus.ACTIVE, now=now, status_details={"message": "Job is running"}
                )

        await self._store.write(record_running, patient=True)
        self.on_active(None)  # its deadlines run again from now

    # ------------------------------------------------------------------ start-up and shut-down

    async def recover(self) -> None:
        """Re-attach to, or settle, every step an earlier daemon left unfinished; then kill every
        task process (and whatever a task left running) that no unfinished step knows."""
        adopted: set[str] = set()
        for step in await self._store.non_terminal_steps():
            try:
                adopted |= await self._recover_step(step)
            except Exception as exc:  # one odd step must not keep the daemon from starting
                log.exception("could not re-attach step %s of job %s", step.name, step.job_name)
                await self._settle_lost(step, [], f"could not re-attach after a restart: {exc}")
        # Adopted runs may have finished meanwhile: what their tasks left is theirs to end (after
        # the grace period, with its output read), not the sweep's.
        known = adopted | await self._known_task_names()
        killed = await asyncio.to_thread(self._executors.subprocess.sweep_orphans, known)
        if killed:
            log.warning("killed %d orphaned task process(es) that no unfinished step knows", killed)
        self.recovered.set()
        self.wake()

    async def _recover_step(self, step: StepRecord) -> set[str]:
        """The names of the tasks handed to a run of this daemon (none when settled here)."""
        if step.status in _STARTABLE and not step.handle:
            needs = step_needs(step.spec.executor)
            if needs and self._allocator.never_fits(needs):  # the machine (or a declaration) shrank
                await self._settle_unfit(step, needs)
            return set()  # never started: the loop will start it
        handle = step.handle or {}
        tasks = [
            _TaskRef(
                t["task_pk"],
                t["task_name"],
                task_paths(self._settings.work_dir, step, t["task_name"]),
                tuple(t.get("gpus", ())),
            )
            for t in handle.get("tasks", [])
        ]
        if not tasks:
            if step.status == JobStatus.PAUSED:
                return set()  # paused before it ever ran: resume will start it
            await self._settle_lost(step, [], "no workload was ever recorded for this step")
            return set()
        try:
            executor = await self._executors.for_provider(step.spec.executor.provider)
            found = await executor.recover(step, handle, [t.paths for t in tasks])
        except ExecutorError as exc:
            await self._settle_lost(step, tasks, str(exc))
            return set()
        if found is None:
            if handle.get("kind") is None:
                await self._restart_unstarted(step, tasks)
            else:
                await self._settle_lost(step, tasks, "the workload vanished while the daemon was down")
            return set()
        offsets = {t.pk: await self._store.log_offsets(t.pk) for t in tasks}
        # What it holds is its own again before anything new is admitted (recovery runs first).
        self._allocator.restore(
            step.pk, step_needs(step.spec.executor), [gpu for t in tasks for gpu in t.gpus]
        )
        run = self._claim(step.pk, self._adopt(step, tasks, found, offsets), job_pk=step.job_pk)
        run.stop_grace_s = self._profile_of(step).graceful_shutdown_timeout_seconds
        return {t.name for t in tasks}

    async def _known_task_names(self) -> set[str]:
        return {
            t["task_name"]
            for step in await self._store.non_terminal_steps()
            for t in (step.handle or {}).get("tasks", [])
        }

    async def sweep_containers(self, docker: Any) -> None:
        """Remove labelled containers of steps that are finished or unknown (left by a crash)."""
        if self._settings.keep_containers:
            return
        unfinished = {step.id for step in await self._store.non_terminal_steps()}
        removed = await docker.sweep_orphans(unfinished)
        if removed:
            log.warning("removed %d orphaned container(s) that no unfinished step knows", removed)

    async def _adopt(
        self,
        step: StepRecord,
        tasks: list[_TaskRef],
        found: Workload | ExitStatus,
        offsets: dict[int, dict[str, int]],
    ) -> None:
        run = self._runs[step.pk]
        masked = await self._secrets.values_for(step)
        if isinstance(found, ExitStatus):
            for task in tasks:
                await self._collector(step, task, offsets.get(task.pk, {}), masked).finish()
            await self._finish(step, tasks, found, message=None)
            return
        run.workload = found
        if step.status == JobStatus.PENDING:
            await self._mark_active(step, tasks, found)
        elif step.status == JobStatus.CANCELLING:
            run.stop_requested = True
        elif step.status == JobStatus.PAUSING:
            run.pause_requested = True
        elif step.status == JobStatus.RESUMING:
            self._control(run, self._resume(run))
        await self._follow(run, step, tasks, found, offsets, masked)

    async def _restart_unstarted(self, step: StepRecord, tasks: list[_TaskRef]) -> None:
        """The daemon died between recording the start and spawning: nothing ran, so start afresh."""
        now = self._clock.now_us()

        def record_restart(tx: WriteTx) -> None:
            for task in tasks:
                message = {"message": "Never started: the daemon stopped first"}
                record_task_status(tx, task.pk, JobStatus.ERROR, message, None, None, now, job_pk=step.job_pk)
            tx.set_step_handle(step.pk, None)
            tx.update_step_state(
                step.pk,
                status=JobStatus.CREATED,
                status_details={**step.status_details, "message": "Restarting after a daemon restart"},
                error_details=step.error_details,
                active_since=None,
                now=now,
            )

        await self._store.write(record_restart, patient=True)

    async def _settle_unfit(self, step: StepRecord, needs: Needs) -> None:
        message = f"Job cannot start: {unfit_reason(needs, self._allocator.capacity, now=True)}"
        now = self._clock.now_us()

        def record_unfit(tx: WriteTx) -> None:
            fresh = tx.get_step_by_pk(step.pk)
            if fresh is not None and fresh.status in _STARTABLE:
                settle_step(
                    tx,
                    fresh,
                    JobStatus.ERROR,
                    now=now,
                    status_details={"message": message},
                    error_details={"message": message},
                )

        await self._store.write(record_unfit, patient=True)

    async def _settle_lost(self, step: StepRecord, tasks: list[_TaskRef], why: str) -> None:
        now = self._clock.now_us()
        final = JobStatus.CANCELLED if step.status == JobStatus.CANCELLING else JobStatus.ERROR
        errors = None if final == JobStatus.CANCELLED else {"message": f"Workload lost: {why}"}

        def record_lost(tx: WriteTx) -> None:
            fresh = tx.get_step_by_pk(step.pk)
            if fresh is None or fresh.status.is_terminal:
                return
            settle_step(tx, fresh, final, now=now, error_details=errors)
            for task in tasks:
                record_task_status(
                    tx, task.pk, final, {"message": why}, errors, None, now, job_pk=step.job_pk
                )

        await self._store.write(record_lost, patient=True)

    async def shutdown(self) -> None:
        """Stop starting steps; end the running ones (or leave them for the next start)."""
        self._closing = True
        self._wake.set()
        runs = list(self._runs.values())
        if self._settings.stop_steps_on_shutdown:
            for run in runs:
                run.shutdown = True
                run.stop_requested = True
                if run.workload is not None:  # each with its profile's grace (set when it started)
                    self._control(run, run.workload.stop(run.stop_grace_s))
            pending = [run.task for run in runs if run.task is not None]
            if pending:
                longest = max([run.stop_grace_s for run in runs], default=self._settings.grace_period_s)
                await asyncio.wait(pending, timeout=longest + 10)
        for run in runs:
            if run.task is not None and not run.task.done():
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task


def owner_id(settings: Settings) -> str:
    """Stable per data dir: labels this daemon's containers so that it only ever cleans up its own."""
    return hashlib.sha256(str(settings.data_dir.resolve()).encode()).hexdigest()[:16]


def _split(gpus: list[Gpu], tasks: int) -> list[list[Gpu]]:
    """A distributed step's GPUs, the same number for each of its tasks (nodes)."""
    each = len(gpus) // tasks if tasks else 0
    return [gpus[i * each : (i + 1) * each] for i in range(tasks)]


def _image(step: StepRecord, profile: ExecutionProfile) -> str | None:
    executor = step.spec.executor
    if executor.provider == "subprocess":
        return None
    return executor.container.image or profile.default_task_image


def _argv(step: StepRecord) -> list[str]:
    executor = step.spec.executor
    if executor.provider == "subprocess":
        return list(executor.command)
    return [*executor.container.entrypoint, *executor.container.command]


async def _finish_collecting(collectors: list[OutputCollector], step: StepRecord) -> None:
    """Store the rest of each task's output. A failure to store (e.g. the disk is full) is
    logged and must not keep the step from getting its final status."""
    for collector in collectors:
        try:
            await collector.finish()
        except Exception:
            log.exception("could not store the output of step %s of job %s", step.name, step.job_name)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())


def _folder_details(step: StepRecord, paths: TaskPaths) -> dict[str, str]:
    """Where the task's files are, under the keys the reference's subprocess backend uses."""
    if step.spec.executor.provider == "subprocess":
        return {
            "subprocess_work_dir": paths.work_dir,
            "subprocess_persistent_storage_path": paths.persistent_dir,
        }
    return {"work_dir": paths.work_dir}


def _with_code(status: ExitStatus) -> str:
    return f" with exit code {status.exit_code}" if status.exit_code is not None else ""
