"""After a restart, before anything new starts: take over every step an earlier daemon left
unfinished (its workload found again, or how it ended while no daemon ran), settle those whose
workload is lost, start afresh those recorded but never spawned, and end every task process and
container that no unfinished step knows."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from runner.allocation import unfit_reason
from runner.executors.base import ExecutorError, ExitStatus, StepHandle, Workload
from runner.launching import RunTask, run_tasks
from runner.models import STARTABLE_STATUSES, JobStatus, LogProgress, Needs, StepRecord, step_needs
from runner.step_run import RunParts
from runner.transitions import record_task_status, settle_step
from storage import Repository, WriteTx

log = logging.getLogger(__name__)

# Hands a step to be taken over to the scheduler, which runs it as one of its own.
Adopt = Callable[[StepRecord, list[RunTask], Workload | ExitStatus, dict[int, LogProgress]], None]


class Recovery:
    def __init__(self, parts: RunParts, adopt: Adopt) -> None:
        self._parts = parts
        self._store = parts.store
        self._adopt = adopt

    async def run(self) -> None:
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
        killed = await asyncio.to_thread(self._parts.executors.subprocess.sweep_orphans, known)
        if killed:
            log.warning("killed %d orphaned task process(es) that no unfinished step knows", killed)

    async def _recover_step(self, step: StepRecord) -> set[str]:
        """The names of the tasks handed to a run of this daemon (none when settled here)."""
        parts = self._parts
        if step.status in STARTABLE_STATUSES and not step.handle:
            # Never started: the loop will start it, or, if it can no longer fit the machine,
            # end it in error (settle_unfit, from the loop's admission: one place for both).
            return set()
        handle = StepHandle.from_json(step.handle)
        tasks = run_tasks(parts.settings, step, handle)
        if not tasks:
            if step.status == JobStatus.PAUSED:
                return set()  # paused before it ever ran: resume will start it
            await self._settle_lost(step, [], "no workload was ever recorded for this step")
            return set()
        try:
            executor = await parts.executors.for_provider(step.spec.executor.provider)
            found = await executor.recover(step, handle.workload, [t.paths for t in tasks])
        except ExecutorError as exc:
            await self._settle_lost(step, tasks, str(exc))
            return set()
        if found is None:
            if handle.workload is None:
                await self._restart_unstarted(step, tasks)
            else:
                await self._settle_lost(step, tasks, "the workload vanished while the daemon was down")
            return set()
        progress = {t.pk: await self._store.log_progress(t.pk) for t in tasks}
        # What it holds is its own again before anything new is admitted (recovery runs first).
        parts.allocator.restore(
            step.pk, step_needs(step.spec.executor), [g for t in tasks for g in t.ref.gpus]
        )
        self._adopt(step, tasks, found, progress)
        return {t.name for t in tasks}

    async def _known_task_names(self) -> set[str]:
        return {
            task.name
            for step in await self._store.non_terminal_steps()
            for task in StepHandle.from_json(step.handle).tasks
        }

    async def _restart_unstarted(self, step: StepRecord, tasks: list[RunTask]) -> None:
        """The daemon died between recording the start and spawning: nothing ran, so start afresh."""
        now = self._parts.clock.now_us()

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

    async def _settle_lost(self, step: StepRecord, tasks: list[RunTask], why: str) -> None:
        now = self._parts.clock.now_us()
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


async def settle_unfit(parts: RunParts, step_pk: int, needs: Needs) -> None:
    """End in error a waiting step that can never start here (the machine, or what --gpus,
    --cpus or --memory declare, shrank since it was accepted), saying why."""
    message = f"Job cannot start: {unfit_reason(needs, parts.allocator.capacity, now=True)}"
    now = parts.clock.now_us()

    def record_unfit(tx: WriteTx) -> None:
        fresh = tx.get_step_by_pk(step_pk)
        if fresh is not None and fresh.status in STARTABLE_STATUSES:
            settle_step(
                tx,
                fresh,
                JobStatus.ERROR,
                now=now,
                status_details={"message": message},
                error_details={"message": message},
            )

    await parts.store.write(record_unfit, patient=True)


class ContainerSweep:
    """Removes this daemon's labelled containers of steps that are finished or unknown (left by a
    crash), once a Docker engine first answers."""

    def __init__(self, store: Repository, keep_containers: bool) -> None:
        self._store = store
        self._keep_containers = keep_containers

    async def __call__(self, docker: Any) -> None:
        if self._keep_containers:
            return
        unfinished = {step.id for step in await self._store.non_terminal_steps()}
        removed = await docker.sweep_orphans(unfinished)
        if removed:
            log.warning("removed %d orphaned container(s) that no unfinished step knows", removed)
