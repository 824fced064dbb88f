"""Whether the store can write: what /health tells, and what a step's record says of the spells
during its run when it could not.

An outage begins with the first failed write and ends when writes go through again: the latest
write succeeded and no patient write is still waiting to try again. The second condition keeps a
disk that is nearly full from looking well while small writes fit and a large one keeps failing.
All of it runs on the event loop's thread (Repository.write), so it needs no lock.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

# Less free space than this and a file system cannot take the next writes: one transaction of
# output alone may be 256 KiB, and SQLite needs room for its journal as well as for the data.
_LOW_SPACE_BYTES = 1024 * 1024
# Outages remembered for the records of steps that ran through them: the longest-running step
# is told of at most this many (the latest ones).
_REMEMBERED = 64


@dataclass(frozen=True)
class Outage:
    start: float  # time.monotonic()
    end: float | None  # None: still going on
    cause: str


@dataclass(frozen=True)
class OutageSummary:
    """The outages that overlapped a span of time: how long they lasted within it, the latest cause."""

    seconds: float
    cause: str


class WriteHealth:
    def __init__(self) -> None:
        self._start: float | None = None  # of the current outage
        self._cause = ""
        self._last_failed = False
        self._retrying = 0  # patient writes that failed and will try again
        self._past: deque[Outage] = deque(maxlen=_REMEMBERED)

    @property
    def cause(self) -> str | None:
        """Why the store cannot write now; None when it can."""
        return self._cause if self._start is not None else None

    @property
    def retrying(self) -> bool:
        """Some write will try again on its own (so the state moves without being probed)."""
        return self._retrying > 0

    def failed(self, cause: str) -> None:
        if self._start is None:
            self._start = time.monotonic()
            log.error("the store cannot write: %s", cause)
        self._cause = cause
        self._last_failed = True

    def succeeded(self) -> None:
        self._last_failed = False
        self._end_if_over()

    def retry_began(self) -> None:
        self._retrying += 1

    def retry_ended(self) -> None:
        self._retrying -= 1
        self._end_if_over()

    def _end_if_over(self) -> None:
        if self._start is None or self._last_failed or self._retrying:
            return
        now = time.monotonic()
        self._past.append(Outage(self._start, now, self._cause))
        log.warning("the store can write again (it could not for %.1f s: %s)", now - self._start, self._cause)
        self._start = None

    def outages_since(self, since: float) -> OutageSummary | None:
        """The outages from `since` (time.monotonic()) until now; None when there was none."""
        if self._start is None and not self._past:
            return None  # the usual answer, asked once per finished task
        spells = list(self._past)
        if self._start is not None:
            spells.append(Outage(self._start, None, self._cause))
        now = time.monotonic()
        overlapping = [o for o in spells if (o.end or now) > since]
        if not overlapping:
            return None
        seconds = sum((o.end or now) - max(o.start, since) for o in overlapping)
        return OutageSummary(seconds=seconds, cause=overlapping[-1].cause)


def low_on_space(path: str | os.PathLike[str]) -> bool:
    """Whether the file system holding `path` has (almost) no space left for this process."""
    try:
        fs = os.statvfs(path)
    except OSError:
        return False  # not ours to judge: writes will tell
    # root may use the blocks the file system keeps in reserve; others may not.
    free_blocks = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
    return free_blocks * fs.f_frsize < _LOW_SPACE_BYTES
