"""One step's run, from its claim to its final status: start it (or take it over after a
restart), see it active, follow its output, record how it ended; pause, resume and stop it
meanwhile. The scheduler owns the runs; each run owns its own state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from runner.allocation import Allocator
from runner.clock import Clock
from runner.errors import NotFound
from runner.executors.base import ExecutorError, ExitStatus, OutputNews, Workload
from runner.executors.registry import ExecutorRegistry
from runner.file_events import FileEvents
from runner.launching import RunTask, launch_of
from runner.logs import OutputCollector, OutputTarget
from runner.models import (
    JobRecord,
    JobStatus,
    LogProgress,
    LogQuery,
    StepRecord,
)
from runner.notify import ChangeSignal, DeadlineBell
from runner.profiles import ExecutionProfile, ProfileCatalog
from runner.run_writes import Running, active_unit, outcome_unit, requested_status_unit, running_of
from runner.settings import Settings
from runner.start_writes import StartedStep, first_step_started, start_unit
from storage import Repository, StorageUnavailable, WriteTx

log = logging.getLogger(__name__)

_ERROR_TAIL_LINES = 20
# A fresh workload ending sooner goes `pending` -> outcome in one write (docs/design.md, "Running
# steps"); a crash meanwhile leaves a `pending` step, which recovery adopts as it always did.
ACTIVE_WRITE_DELAY_S = 0.05


class SecretSource(Protocol):
    async def resolve(self, step: StepRecord) -> dict[str, str]:
        """Environment variables holding the values of the step's `from_secret` references."""
        ...

    async def values_for(self, step: StepRecord) -> list[str]:
        """Secret values to mask in the step's output."""
        ...


@dataclass(frozen=True)
class RunParts:
    """What every run needs, built once by the scheduler."""

    store: Repository
    clock: Clock
    settings: Settings
    executors: ExecutorRegistry
    secrets: SecretSource
    profiles: ProfileCatalog
    allocator: Allocator
    log_signal: ChangeSignal
    deadlines: DeadlineBell
    file_events: FileEvents
    wake_scheduler: Callable[[], None]

    def profile_of(self, step: StepRecord) -> ExecutionProfile:
        return self.profiles.in_force(step.spec.executor.provider, step.spec.executor.profile)


class StepRun:
    """A step this daemon has claimed: being started, running, or being wound down."""

    def __init__(self, parts: RunParts, step_pk: int, job_pk: int | None = None) -> None:
        self._parts = parts
        self.step_pk = step_pk
        self.job_pk = job_pk
        self.workload: Workload | None = None
        self.stop_requested = False
        self.pause_requested = False
        self.frozen = False
        self.shutdown = False
        self.stop_grace_s = parts.settings.grace_period_s
        self.task: asyncio.Task[None] | None = None
        self._control_tasks: set[asyncio.Task[None]] = set()
        self._active_retry: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------ control

    def request_stop(self, grace_s: float | None = None) -> None:
        self.stop_requested = True
        if grace_s is not None:
            self.stop_grace_s = grace_s
        if self.workload is not None:
            self._control(self.workload.stop(self.stop_grace_s))

    def request_pause(self) -> None:
        self.pause_requested = True
        if self.workload is not None:
            self._control(self._pause())

    def request_resume(self) -> None:
        if self.pause_requested or self.frozen:
            self.pause_requested = False
            self._control(self._resume())

    def stop_for_shutdown(self) -> None:
        """End it because the daemon stops, with its profile's grace (set when it started)."""
        self.shutdown = True
        self.stop_requested = True
        if self.workload is not None:
            self._control(self.workload.stop(self.stop_grace_s))

    def _control(self, coro: Coroutine[Any, Any, None]) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=f"control-step-{self.step_pk}")
        self._control_tasks.add(task)
        task.add_done_callback(self._control_tasks.discard)
        task.add_done_callback(log_failure)

    # ------------------------------------------------------------------ a fresh start

    async def start(self, base_url: str, on_recorded: Callable[[], None] = lambda: None) -> None:
        """Record the start (its tasks, `pending`), spawn it, follow it to its end. `on_recorded`
        is told once the start is recorded (the step is no longer `created`)."""
        parts = self._parts
        unit = start_unit(self.step_pk, parts.clock.now_us(), parts.allocator, parts.settings.work_dir)
        started = await parts.store.write(unit, small=True)
        on_recorded()
        if started is not None:
            await self.launch(base_url, started)

    def record_first_step_started(self, tx: WriteTx, job: JobRecord, now: int) -> StartedStep:
        """Inside the transaction that inserts `job` (as `pending`): its first step, under this
        run's key, started (runner/start_writes.py). On the writer's thread: changes nothing."""
        parts = self._parts
        return first_step_started(tx, job, self.step_pk, now, parts.allocator, parts.settings.work_dir)

    async def launch(self, base_url: str, started: StartedStep) -> None:
        """Spawn a step whose start is recorded, and follow it to its end."""
        parts = self._parts
        step, tasks = started.step, started.tasks
        self.job_pk = step.job_pk
        profile = parts.profile_of(step)
        if not self.stop_requested:  # a stop asked for already keeps the grace it was given
            self.stop_grace_s = profile.graceful_shutdown_timeout_seconds
        try:
            executor = await parts.executors.for_provider(step.spec.executor.provider)
            secrets = await parts.secrets.resolve(step)
            workload = await executor.start(
                launch_of(step, tasks, executor, profile, base_url, parts.settings, secrets)
            )
        except Exception as exc:  # whatever stops a start ends the step in error, never stuck
            if not isinstance(exc, ExecutorError | OSError | NotFound):
                log.exception("unexpected failure starting step %s of job %s", step.name, step.job_name)
            failure = ExitStatus(exit_code=None, reason=str(exc) or type(exc).__name__)
            await self._finish(step, tasks, failure, message=str(exc), with_output=False)
            return
        self.workload = workload
        await self._follow(step, tasks, workload, progress={}, masked=list(secrets.values()), fresh=True)

    async def _mark_active(
        self, step: StepRecord, tasks: list[RunTask], workload: Workload, *, until_stored: bool = False
    ) -> None:
        parts = self._parts
        now = parts.clock.now_us()
        unit = active_unit(step, tasks, running_of(step, tasks, workload), now)
        await parts.store.write(unit, patient=not until_stored, until_stored=until_stored, small=True)
        limits = [parts.profile_of(step).ttl_seconds_active, step.spec.lifecycle.staleness_timeout_seconds]
        positive = [limit for limit in limits if limit > 0]
        parts.deadlines.ring(now + min(positive) * 1_000_000 if positive else None)

    async def _active_or_ended(
        self, step: StepRecord, tasks: list[RunTask], workload: Workload, ended: asyncio.Future[ExitStatus]
    ) -> Running | None:
        """Write `active` unless the fresh workload ends within ACTIVE_WRITE_DELAY_S. What was not
        written (it ended first, or the store could not take it) is returned for the outcome."""
        done, _ = await asyncio.wait({ended}, timeout=ACTIVE_WRITE_DELAY_S)
        if done:
            return running_of(step, tasks, workload)
        try:
            await self._mark_active(step, tasks, workload)
        except StorageUnavailable as exc:
            # It runs all the same: keep trying (a step left `pending` would meet its
            # before-active deadline), and the outcome carries it should the end come first.
            log.warning("step %s of job %s: could not record it active: %s", step.name, step.job_name, exc)
            self._active_retry = asyncio.create_task(
                self._mark_active(step, tasks, workload, until_stored=True), name=f"active-{step.pk}"
            )
            return running_of(step, tasks, workload)
        return None

    async def _stop_active_retry(self) -> None:
        retry, self._active_retry = self._active_retry, None
        if retry is not None:
            retry.cancel()  # the outcome, written next, carries what it would have
            await asyncio.gather(retry, return_exceptions=True)

    # ------------------------------------------------------------------ after a restart

    async def adopt(
        self,
        step: StepRecord,
        tasks: list[RunTask],
        found: Workload | ExitStatus,
        progress: dict[int, LogProgress],
    ) -> None:
        """Carry on with a step an earlier daemon started: its workload, or how it ended."""
        self.stop_grace_s = self._parts.profile_of(step).graceful_shutdown_timeout_seconds
        masked = await self._parts.secrets.values_for(step)
        if isinstance(found, ExitStatus):
            for task in tasks:
                await self._collector(step, task, progress.get(task.pk, LogProgress()), masked).finish()
            await self._finish(step, tasks, found, message=None)
            return
        self.workload = found
        if step.status == JobStatus.PENDING:
            await self._mark_active(step, tasks, found)
        elif step.status == JobStatus.CANCELLING:
            self.stop_requested = True
        elif step.status == JobStatus.PAUSING:
            self.pause_requested = True
        elif step.status == JobStatus.PAUSED:
            self.frozen = True  # it stayed frozen while no daemon ran: a resume must thaw it
        elif step.status == JobStatus.RESUMING:
            self._control(self._resume())
        await self._follow(step, tasks, found, progress, masked)

    # ------------------------------------------------------------------ running, and the end

    async def _follow(
        self,
        step: StepRecord,
        tasks: list[RunTask],
        workload: Workload,
        progress: dict[int, LogProgress],
        masked: list[str],
        *,
        fresh: bool = False,
    ) -> None:
        """Follow the workload to its end and record it. `fresh`: just started here, its `active`
        not yet written (see ACTIVE_WRITE_DELAY_S)."""
        if self.stop_requested:
            self._control(workload.stop(self.stop_grace_s))
        elif self.pause_requested:
            self._control(self._pause())
        news = workload.output_news() if len(tasks) == 1 else None
        collectors = [
            self._collector(step, task, progress.get(task.pk, LogProgress()), masked, news) for task in tasks
        ]
        for collector in collectors:
            collector.start()
        ended = asyncio.ensure_future(workload.wait())
        running: Running | None = None
        try:
            try:
                if fresh:
                    running = await self._active_or_ended(step, tasks, workload, ended)
                status = await _exit_of(ended, step)
            finally:
                await self._stop_active_retry()
                await _finish_collecting(collectors, step)
            if self._control_tasks:
                await asyncio.gather(*self._control_tasks, return_exceptions=True)
            await self._finish(step, tasks, status, message=None, shutdown=self.shutdown, running=running)
        finally:
            if ended.done() and not ended.cancelled():
                ended.exception()  # seen (by _exit_of, or not needed any more)
            ended.cancel()  # when cancelled meanwhile: nothing waits for it any more (wait() is shielded)
            # A run cancelled by a shutdown that keeps steps running must leave its workload be.
            current = asyncio.current_task()
            left_running = current is not None and current.cancelling() > 0
            if not self._parts.settings.keep_containers and not left_running:
                await workload.release()

    def _collector(
        self,
        step: StepRecord,
        task: RunTask,
        progress: LogProgress,
        masked: list[str],
        news: OutputNews | None = None,
    ) -> OutputCollector:
        parts = self._parts
        return OutputCollector(
            parts.store,
            parts.clock,
            OutputTarget(step.job_pk, step.attempt_id, step.name, task.pk, task.name),
            task.paths,
            progress,
            parts.settings.log_poll_max_s,
            mask_values=masked,
            max_task_bytes=parts.settings.log_max_bytes_per_task,
            on_stored=parts.log_signal.notify,
            file_events=parts.file_events,
            news=news,
        )

    async def _finish(
        self,
        step: StepRecord,
        tasks: list[RunTask],
        status: ExitStatus,
        *,
        message: str | None,
        shutdown: bool = False,
        with_output: bool = True,
        running: Running | None = None,
    ) -> None:
        """Record how the workload ended, mapped against what the step was asked to do meanwhile.
        `running`: its `active` is not written (it ended first, or failed); it goes in too."""
        parts = self._parts
        now = parts.clock.now_us()
        tail = await self._output_tail(step) if with_output and not status.succeeded else []

        # Until stored: a disk full for longer than a patient write waits must not leave the step
        # `active` for ever once space returns (shut-down cancels the wait).
        outcome = outcome_unit(
            step, tasks, status, message=message, shutdown=shutdown, tail=tail, running=running, now=now
        )
        await parts.store.write(outcome, until_stored=True, small=True)
        parts.log_signal.notify(step.job_pk)
        parts.wake_scheduler()

    async def _output_tail(self, step: StepRecord) -> list[str]:
        query = LogQuery(job_pk=step.job_pk, attempt_id=step.attempt_id, step_name=step.name)
        lines = await self._parts.store.log_lines_before(query, None, _ERROR_TAIL_LINES)
        return [line.message for line in lines]

    async def _pause(self) -> None:
        if self.workload is None:
            return
        await self.workload.pause()
        self.frozen = True
        now = self._parts.clock.now_us()
        unit = requested_status_unit(self.step_pk, JobStatus.PAUSING, JobStatus.PAUSED, "Paused", now)
        await self._parts.store.write(unit, patient=True)

    async def _resume(self) -> None:
        if self.workload is None:
            return
        await self.workload.resume()
        self.frozen = False
        now = self._parts.clock.now_us()
        unit = requested_status_unit(
            self.step_pk, JobStatus.RESUMING, JobStatus.ACTIVE, "Job is running", now
        )
        await self._parts.store.write(unit, patient=True)
        self._parts.deadlines.ring(None)  # its deadlines run again from now


async def _exit_of(ended: asyncio.Future[ExitStatus], step: StepRecord) -> ExitStatus:
    try:
        return await ended
    except Exception as exc:  # lost track of it: say so, rather than leave it active
        log.exception("lost track of step %s of job %s", step.name, step.job_name)
        return ExitStatus(exit_code=None, reason=f"lost track of the workload: {exc}")


async def _finish_collecting(collectors: list[OutputCollector], step: StepRecord) -> None:
    """Store the rest of each task's output. A failure to store (e.g. the disk is full) is
    logged and must not keep the step from getting its final status."""
    for collector in collectors:
        try:
            await collector.finish()
        except Exception:
            log.exception("could not store the output of step %s of job %s", step.name, step.job_name)


def log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background task %s failed", task.get_name(), exc_info=task.exception())
