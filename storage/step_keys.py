"""Primary keys of new steps, handed out by the daemon rather than by SQLite."""

from __future__ import annotations

import itertools
import threading


class StepKeys:
    """The next step's primary key, taken on the event loop (a claim) and on the writer's thread
    (every insert). Handed out here so the scheduler can claim a step under its key before the
    transaction that inserts it commits: a job's first step started by its own submit
    (runner/service.py, `create_job`). A key taken and never stored is a gap, as a deleted
    step's; one above the highest stored may be handed out again after a restart, harmlessly."""

    def __init__(self, highest_in_store: int) -> None:
        self._next = itertools.count(highest_in_store + 1)
        self._lock = threading.Lock()  # the GIL alone would do, not so a free-threaded Python

    def take(self) -> int:
        with self._lock:
            return next(self._next)
