"""Starts runnable steps the moment they appear, and is how the rest of the daemon controls them.

Event-driven: `wake()` (a new job, a completed step, a resume, a freed slot) sets an event the
loop waits on; there is no polling tick between a submission and the spawn. Each claimed step is
a `StepRun` (runner/step_run.py) in a task of its own; what an earlier daemon left is taken over
first (runner/recovery.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from runner.allocation import Allocator
from runner.clock import Clock
from runner.executors.base import ExitStatus, Workload
from runner.executors.registry import ExecutorRegistry
from runner.file_events import FileEvents
from runner.launching import RunTask
from runner.models import LogProgress, ResourceDemand, StepRecord
from runner.notify import ChangeSignal, DeadlineBell
from runner.profiles import ProfileCatalog
from runner.recovery import Recovery, settle_unfit
from runner.settings import Settings
from runner.start_writes import StartedStep
from runner.step_run import RunParts, SecretSource, StepRun, log_failure
from storage import Repository


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
        deadlines: DeadlineBell,
        file_events: FileEvents,
    ):
        self._store = store
        self._clock = clock
        self._settings = settings
        self._executors = executors
        self._profiles = profiles
        self._allocator = allocator
        self._wake = asyncio.Event()
        # Repository.steps_queued when a read last found no step waiting (None: it found some).
        self._none_waiting_at: int | None = None
        self._runs: dict[int, StepRun] = {}
        self._starting: set[int] = set()  # claimed, not yet recorded as pending
        self._settling: set[int] = set()  # can never start here: being ended in error
        self._closing = False
        self._base_url = ""
        # Set once recovery has adopted or settled what an earlier daemon left running.
        self.recovered = asyncio.Event()
        # Rung when a job's logs grow or it ends: log followers wait on it.
        self.log_signal = ChangeSignal()
        self._parts = RunParts(
            store,
            clock,
            settings,
            executors,
            secrets,
            profiles,
            allocator,
            self.log_signal,
            deadlines,
            file_events,
            self.wake,
        )
        self._recovery = Recovery(self._parts, self._adopt)

    # ------------------------------------------------------------------ WorkloadControl

    def wake(self) -> None:
        """New runnable steps may exist, or a slot was freed."""
        self._wake.set()

    def claim_first_step(self) -> StepRun | None:
        """A run, its slot and its step key, for a new job's first step to be recorded started
        by the submit's own transaction (`StepRun.record_first_step_started`) instead of left
        `created` for the loop: one transaction and one read fewer per job. That transaction
        does so only if no step waits to start (FIFO); else it inserts the step `created`, under
        another key, and the claim is dropped. Holding the key before the commit, the claim is
        `is_running` as soon as anyone can find the job (a cancel then stops it, not skips it).
        Then `launch_claimed` or `drop_claim`, whatever happens."""
        if (
            self._closing
            or not self._base_url  # recovery not done: the loop has not begun
            or len(self._runs) >= self._settings.max_running_steps
        ):
            return None
        run = StepRun(self._parts, self._store.new_step_key())
        self._runs[run.step_pk] = run
        return run

    def launch_claimed(self, run: StepRun, started: StartedStep) -> None:
        if self._closing:
            # Recorded `pending` and never spawned, as after a crash: the next start of the
            # daemon starts it afresh (with stop_steps_on_shutdown, the loop's own starts are
            # spawned and stopped instead; a claim is not, the shutdown being past them).
            self._runs.pop(run.step_pk, None)
            return
        run.job_pk = started.step.job_pk  # log followers ask `job_is_live` from now on
        self._claim(run, run.launch(self._base_url, started))

    def drop_claim(self, run: StepRun) -> None:
        """The submit stored no step under the claim (it failed, or others waited first)."""
        if self._runs.get(run.step_pk) is run:
            del self._runs[run.step_pk]
        self.wake()

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
        if (run := self._runs.get(step_pk)) is not None:
            run.request_stop(grace_s)

    def request_pause(self, step_pk: int) -> None:
        if (run := self._runs.get(step_pk)) is not None:
            run.request_pause()

    def request_resume(self, step_pk: int) -> None:
        if (run := self._runs.get(step_pk)) is not None:
            run.request_resume()

    async def profiles(self) -> list[dict[str, Any]]:
        return await self._executors.profiles(self._profiles)

    # ------------------------------------------------------------------ the loop

    async def recover(self) -> None:
        await self._recovery.run()
        self.recovered.set()
        self.wake()

    async def run_forever(self, base_url: str) -> None:
        """Start steps as they become runnable; workloads call back at `base_url`."""
        self._base_url = base_url
        self._wake.set()
        while not self._closing:
            await self._wake.wait()
            self._wake.clear()
            free = self._settings.max_running_steps - len(self._runs)
            if free <= 0:
                continue
            # Most wake-ups are a run's end with nothing queued (a job's first step starts in its
            # submit): no read while no write has left a step waiting since a read found none.
            queued = self._store.steps_queued
            if queued == self._none_waiting_at:
                continue
            # Oldest first across all steps; the allocator says which of those that need GPUs,
            # CPUs or memory fit. Claimed steps still in `created` come back from the query too:
            # ask for that many more of the others.
            found = await self._store.runnable_steps(free + len(self._starting))
            self._none_waiting_at = None if found else queued
            waiting = [d for d in found if d.step_pk not in self._runs]
            admission = self._allocator.admit(waiting, self._clock.now_us(), slots=free)
            for step_pk in admission.started:
                run = StepRun(self._parts, step_pk)
                self._starting.add(step_pk)
                self._claim(run, self._start(run))
            for demand in admission.unfit:  # e.g. a job's next step, after the machine shrank
                if demand.step_pk not in self._settling:
                    self._settling.add(demand.step_pk)
                    task = asyncio.create_task(self._settle_unfit(demand), name=f"unfit-{demand.step_pk}")
                    task.add_done_callback(log_failure)

    async def _settle_unfit(self, demand: ResourceDemand) -> None:
        try:
            await settle_unfit(self._parts, demand.step_pk, demand.needs)
        finally:
            self._settling.discard(demand.step_pk)

    async def _start(self, run: StepRun) -> None:
        await run.start(self._base_url, on_recorded=lambda: self._starting.discard(run.step_pk))

    def _adopt(
        self,
        step: StepRecord,
        tasks: list[RunTask],
        found: Workload | ExitStatus,
        progress: dict[int, LogProgress],
    ) -> None:
        run = StepRun(self._parts, step.pk, job_pk=step.job_pk)
        self._claim(run, run.adopt(step, tasks, found, progress))

    def _claim(self, run: StepRun, coro: Any) -> None:
        step_pk = run.step_pk
        self._runs[step_pk] = run
        run.task = asyncio.create_task(coro, name=f"step-{step_pk}")

        def release(task: asyncio.Task[None]) -> None:
            self._runs.pop(step_pk, None)
            self._starting.discard(step_pk)
            self._allocator.release(step_pk)  # whatever the end: finished, cancelled, failed to start
            if run.job_pk is not None:
                self.log_signal.notify(run.job_pk)  # followers wait for this before they end
            log_failure(task)
            self.wake()

        run.task.add_done_callback(release)

    # ------------------------------------------------------------------ shut-down

    async def shutdown(self) -> None:
        """Stop starting steps; end the running ones (or leave them for the next start)."""
        self._closing = True
        self._wake.set()
        runs = list(self._runs.values())
        if self._settings.stop_steps_on_shutdown:
            for run in runs:
                run.stop_for_shutdown()
            pending = [run.task for run in runs if run.task is not None]
            if pending:
                longest = max([run.stop_grace_s for run in runs], default=self._settings.grace_period_s)
                await asyncio.wait(pending, timeout=longest + 10)
        for run in runs:
            if run.task is not None and not run.task.done():
                run.task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await run.task
