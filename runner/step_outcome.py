"""How a step ends, from how its workload ended and what it was asked meanwhile: the one place
that maps an exit to `completed`, `error` or `cancelled` with its messages."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.executors.base import ExitStatus
from runner.models import JobStatus, StepRecord


@dataclass(frozen=True)
class StepOutcome:
    status: JobStatus
    details: dict[str, Any]
    errors: dict[str, Any] | None
    stack: str | None  # the tasks' error_stack: the output's last lines, for an error


def step_outcome(
    fresh: StepRecord, status: ExitStatus, *, message: str | None, shutdown: bool, tail: list[str]
) -> StepOutcome:
    """`fresh` is the step as stored now; `message` overrides the exit's own description (a
    failed start); `tail` is the output's last lines."""
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
    stack = "\n".join(tail) if final == JobStatus.ERROR and tail else None
    return StepOutcome(final, details, errors, stack)


def _with_code(status: ExitStatus) -> str:
    return f" with exit code {status.exit_code}" if status.exit_code is not None else ""
