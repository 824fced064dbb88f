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
