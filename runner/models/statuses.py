"""The status every job, step and task carries, and the reference's transition table between them."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    CREATED = "created"
    PENDING = "pending"
    ACTIVE = "active"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    ERROR = "error"
    COMPLETED = "completed"
    PAUSED = "paused"
    PAUSING = "pausing"
    RESUMING = "resuming"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def can_transition_to(self, new: JobStatus) -> bool:
        return new == self or new in _TRANSITIONS[self]


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.ERROR, JobStatus.CANCELLED})
# A step in these waits for the scheduler to start it (what storage's runnable_steps asks for).
STARTABLE_STATUSES = frozenset({JobStatus.CREATED, JobStatus.RESUMING})

# The reference's table (api-surface.md 4.1), shared by jobs, steps and tasks.
_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset(
        {
            JobStatus.PENDING,
            JobStatus.ACTIVE,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
            JobStatus.ERROR,
        }
    ),
    JobStatus.PENDING: frozenset(
        {
            JobStatus.ACTIVE,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.ERROR,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
            JobStatus.COMPLETED,
        }
    ),
    JobStatus.ACTIVE: frozenset(
        {
            JobStatus.COMPLETED,
            JobStatus.ERROR,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
        }
    ),
    JobStatus.PAUSED: frozenset({JobStatus.RESUMING, JobStatus.ACTIVE, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.ERROR}),
    JobStatus.PAUSING: frozenset({JobStatus.PAUSED, JobStatus.ERROR}),
    JobStatus.RESUMING: frozenset(
        {JobStatus.PENDING, JobStatus.ACTIVE, JobStatus.ERROR, JobStatus.CANCELLING}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.ERROR: frozenset(),
}
