"""The clock every timeout reads, injectable so tests of time limits need no long sleeps."""

from __future__ import annotations

import time
from typing import Protocol

from runner.models import now_us


class Clock(Protocol):
    def now_us(self) -> int:
        """Wall-clock time in microseconds since the epoch (what is stored and shown)."""
        ...


class SystemClock:
    def now_us(self) -> int:
        return now_us()


class ManualClock:
    """A clock that moves only when told to: for tests."""

    def __init__(self, start_us: int | None = None) -> None:
        self._now = start_us if start_us is not None else int(time.time() * 1_000_000)

    def now_us(self) -> int:
        return self._now

    def advance(self, seconds: float) -> None:
        self._now += int(seconds * 1_000_000)
