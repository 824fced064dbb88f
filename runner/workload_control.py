"""What the jobs' operations (runner/service.py) need from whoever runs workloads: the
scheduler (runner/scheduler.py) is the one implementation."""

from __future__ import annotations

from typing import Any, Protocol

from runner.start_writes import StartedStep
from runner.step_run import StepRun


class WorkloadControl(Protocol):
    """What the service needs from whoever runs workloads (the scheduler)."""

    def wake(self) -> None:
        """New runnable steps may exist."""

    def is_running(self, step_pk: int) -> bool: ...

    def claim_first_step(self) -> StepRun | None:
        """A run (and its slot) for a new job's first step, if it may start right away."""

    def launch_claimed(self, run: StepRun, started: StartedStep) -> None:
        """Spawn and follow the claimed step its submit recorded started."""

    def drop_claim(self, run: StepRun) -> None:
        """Give back a claim whose submit stored nothing."""

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
