"""A per-key change signal: log followers sleep on it instead of polling the store."""

from __future__ import annotations

import asyncio
import contextlib


class ChangeSignal:
    def __init__(self) -> None:
        self._events: dict[int, asyncio.Event] = {}

    def token(self, key: int) -> asyncio.Event:
        """Take this before reading, then `wait` on it: a change in between is never missed."""
        return self._events.setdefault(key, asyncio.Event())

    def notify(self, key: int) -> None:
        event = self._events.pop(key, None)
        if event is not None:
            event.set()

    @staticmethod
    async def wait(token: asyncio.Event, timeout_s: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(token.wait(), timeout_s)


class DeadlineBell:
    """Rung by the scheduler when a step becomes active with a deadline (µs since the epoch; None:
    not known, e.g. a resumed step whose deadlines run again); the watchdog sleeps on it until its
    planned wake-up, and is woken only when a deadline comes before that: most activations then
    cost the watchdog no look at the store."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._planned_us: int | None = None

    def ring(self, at_us: int | None) -> None:
        if at_us is None or self._planned_us is None or at_us < self._planned_us:
            self._event.set()

    async def sleep_until(self, planned_us: int, timeout_s: float) -> None:
        """Sleep for `timeout_s` (the watchdog's plan: up to `planned_us`), or until rung earlier."""
        self._planned_us = planned_us
        self._event.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), timeout_s)
