"""Ends steps that went silent (staleness) or ran past their time limits, on every executor.

No polling tick: the watchdog computes the earliest deadline among unfinished steps and sleeps
until then. Heartbeats only push deadlines later, so they need not wake it; a step becoming
active (which may bring a deadline closer) does, through `wake()`. The clock is injected, so
tests move time forward and call `check()` instead of sleeping.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass

from runner.clock import Clock
from runner.environment import task_paths
from runner.errors import Conflict
from runner.executors.base import StepHandle
from runner.models import JobStatus, StepRecord, WatchedStep
from runner.notify import DeadlineBell
from runner.profiles import ExecutionProfile, ProfileCatalog
from runner.settings import Settings
from runner.transitions import record_task_status, transition_step
from storage import Repository, WriteTx

log = logging.getLogger(__name__)

_US = 1_000_000
# Upper bound on one sleep: a safety net should a wake-up ever be missed.
_MAX_SLEEP_S = 60.0
_CLEANUP_BATCH = 100
_COALESCE_S = 0.05
_BEFORE_ACTIVE = (JobStatus.CREATED, JobStatus.PENDING, JobStatus.RESUMING)


@dataclass(frozen=True)
class Verdict:
    deadline: int  # microseconds since the epoch
    message: str


def verdicts(step: WatchedStep, profile: ExecutionProfile, daemon_started: int = 0) -> list[Verdict]:
    """Every deadline that applies to the step now, each with the message it ends the step with."""
    found: list[Verdict] = []
    if step.status == JobStatus.ACTIVE and step.active_since is not None:
        timeout = step.staleness_timeout_s
        if timeout > 0 and step.active_tasks > 0:
            # A step that never sent a heartbeat is measured from when it became active; and
            # no workload could report while the daemon was down, so not before it started.
            since = max(step.last_beat or 0, step.active_since, daemon_started)
            found.append(
                Verdict(since + timeout * _US, f"Job terminated: no task updates received within {timeout} s")
            )
        limit = profile.ttl_seconds_active
        if limit > 0:  # 0: no limit, as staleness_timeout_seconds 0 is no staleness check
            found.append(
                Verdict(
                    step.active_since + limit * _US - step.active_us,
                    f"Job timed out: active for more than ttl_seconds_active={limit} s",
                )
            )
    elif step.status in _BEFORE_ACTIVE and step.active_since is None:
        limit = profile.ttl_seconds_before_active
        if limit > 0:
            found.append(
                Verdict(
                    step.created_at + limit * _US,
                    f"Job timed out: not active within ttl_seconds_before_active={limit} s",
                )
            )
    return found


class Watchdog:
    def __init__(
        self,
        store: Repository,
        clock: Clock,
        settings: Settings,
        profiles: ProfileCatalog,
        deadlines: DeadlineBell,
        stop_workload: Callable[[int], None],
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._profiles = profiles
        self._deadlines = deadlines
        self._stop_workload = stop_workload
        self._started = clock.now_us()

    async def run_forever(self) -> None:
        while True:
            next_deadline = await self.check()
            delay = _MAX_SLEEP_S
            if next_deadline is not None:
                delay = min(delay, max(0.0, (next_deadline - self._clock.now_us()) / _US))
            await self._deadlines.sleep_until(self._clock.now_us() + int(delay * _US), delay)
            # A burst of steps becoming active costs one look at the store, not one each. Deadlines
            # are seconds away at the least, so this short delay changes no outcome.
            await asyncio.sleep(_COALESCE_S)

    async def check(self) -> int | None:
        """End every step past a deadline; return the earliest deadline still ahead."""
        now = self._clock.now_us()
        earliest = await self._remove_old_folders(now)
        for step in await self._store.watched_steps():
            profile = self._profiles.in_force(step.provider, step.profile)
            for verdict in verdicts(step, profile, self._started):
                if verdict.deadline <= now:
                    if not await self._terminate(step, verdict.message):
                        earliest = now  # the step moved meanwhile: look again at once
                    break
                earliest = verdict.deadline if earliest is None else min(earliest, verdict.deadline)
        return earliest

    async def _remove_old_folders(self, now: int) -> int | None:
        """Delete task folders of steps finished more than ttl_seconds_after_finished ago.

        The job's own storage (its fileset, where results live) and the stored logs stay."""
        keep_us = self._settings.ttl_seconds_after_finished * _US
        batch, next_finished = await self._store.finished_steps_with_folders(now - keep_us, _CLEANUP_BATCH)
        for step in batch:
            for task in StepHandle.from_json(step.handle).tasks:
                folder = task_paths(self._settings.work_dir, step, task.name).work_dir
                await asyncio.to_thread(shutil.rmtree, folder, True)
            await self._store.write(functools.partial(WriteTx.mark_folders_removed, pk=step.pk))
        if len(batch) == _CLEANUP_BATCH:
            return now  # more may wait: come back at once
        return None if next_finished is None else next_finished + keep_us

    async def _terminate(self, step: WatchedStep, message: str) -> bool:
        now = self._clock.now_us()
        errors = {"message": message}

        def record_verdict(tx: WriteTx) -> StepRecord | bool:
            """The step ended in error, or whether it needs no verdict any more (True: finished
            meanwhile; False: changed meanwhile, look again)."""
            fresh = tx.get_step_by_pk(step.pk)
            if fresh is None or fresh.status.is_terminal:
                return True
            if fresh.status != step.status or fresh.updated_at != step.updated_at:
                return False
            try:
                transition_step(tx, fresh, JobStatus.ERROR, now=now, error_details=errors)
            except Conflict:
                return False
            for task in tx.tasks_of_step(step.pk):
                if not task.status.is_terminal:
                    record_task_status(
                        tx, task.pk, JobStatus.ERROR, errors, errors, None, now, job_pk=fresh.job_pk
                    )
            return fresh

        verdict = await self._store.write(record_verdict)
        if isinstance(verdict, bool):
            return verdict
        log.warning("step %s of job %s: %s", verdict.name, verdict.job_name, message)
        # The verdict is recorded first; the workload (whole process tree or containers) goes next.
        self._stop_workload(step.pk)
        return True
