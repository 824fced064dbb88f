"""Moves a task's output from its stdout/stderr files into the store, line by line, in order.

The read offset is committed with the lines, so a daemon that crashes and starts again neither
loses nor repeats a line. While the task runs the files are read when they change (inotify on
the task's folder, runner/file_events.py: a quiet task costs nothing, a printed line is read at
once, a chatty one every 10 ms at most), or, without inotify, with a short adaptive interval (at
most `poll_max_s` later when it is quiet); once it exits they are drained to the end.

When the store cannot take lines (a full disk, a lock held elsewhere), they stay in the file and
are tried again at the next read, so nothing is lost to a spell that ends while the task runs;
the task's and step's records then say that their output could not be stored for a while, and
why (`note_output_error`). Only when the last lines still cannot be stored after the task ended
(after the store's patient retries) are they given up, and the records say how much is missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from runner.clock import Clock
from runner.executors.base import TaskPaths
from runner.file_events import FileEvents
from runner.secrets import Masker
from runner.transitions import note_output_error
from storage import Gone, Repository, StorageUnavailable, WriteTx
from storage.health import low_on_space

log = logging.getLogger(__name__)

# Lines are stored in transactions of at most this much output: a flood of output then holds the
# single writer only briefly, and other writes (submissions, status changes) get their turn.
_CHUNK = 256 * 1024
# A "line" longer than this is stored in pieces: one unterminated write must not grow without bound.
MAX_LINE_BYTES = 64 * 1024
_POLL_MIN_S = 0.01
# With file events, a read now and then all the same: a safety net for an event lost or missed.
_SAFETY_POLL_S = 30.0


@dataclass(frozen=True)
class OutputTarget:
    job_pk: int
    attempt_id: str
    step_name: str
    task_pk: int
    task_name: str


class _Stream:
    def __init__(self, name: str, path: str, offset: int) -> None:
        self.name = name
        self.path = path
        self.offset = offset  # bytes consumed up to the end of the last stored line
        self.pending = b""

    def read_lines(self, final: bool) -> tuple[list[bytes], int]:
        """Complete lines available after `offset`, and the offset just past them."""
        # os-level calls: this runs at least twice per task, and Python's file objects cost more
        # than the read itself for the usual few bytes.
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return [], self.offset
        try:
            data = os.pread(fd, _CHUNK, self.offset + len(self.pending))
        finally:
            os.close(fd)
        buffer = self.pending + data
        lines: list[bytes] = []
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            lines.append(buffer[start:end])
            start = end + 1
        rest = buffer[start:]
        while len(rest) >= MAX_LINE_BYTES:
            lines.append(rest[:MAX_LINE_BYTES])
            start += MAX_LINE_BYTES
            rest = rest[MAX_LINE_BYTES:]
        if final and rest and len(data) < _CHUNK:
            lines.append(rest)
            start += len(rest)
            rest = b""
        self.pending = rest
        new_offset = self.offset + start
        return lines, new_offset

    def more_buffered(self, previous_offset: int) -> bool:
        return self.offset - previous_offset >= _CHUNK // 2

    def unread(self) -> None:
        """The lines last read were not stored: the next read starts again at `offset`."""
        self.pending = b""

    def bytes_left(self) -> int:
        try:
            return max(0, os.stat(self.path).st_size - self.offset)
        except OSError:
            return 0


class OutputCollector:
    def __init__(
        self,
        store: Repository,
        clock: Clock,
        target: OutputTarget,
        paths: TaskPaths,
        offsets: dict[str, int],
        poll_max_s: float,
        *,
        mask_values: list[str] | None = None,
        max_task_bytes: int = 0,
        on_stored: Callable[[int], None] = lambda job_pk: None,
        file_events: FileEvents | None = None,
    ) -> None:
        self._store = store
        self._file_events = file_events
        self._watch: int | None = None
        self._changed: asyncio.Event | None = None  # set by a write to the task's folder
        # Built once: every line of the task goes through it.
        self._masker = Masker(mask_values or ())
        self._max_task_bytes = max_task_bytes
        self._on_stored = on_stored
        self._clock = clock
        self._target = target
        self._streams = [
            _Stream("stdout", paths.stdout_file, offsets.get("stdout", 0)),
            _Stream("stderr", paths.stderr_file, offsets.get("stderr", 0)),
        ]
        self._poll_max_s = poll_max_s
        self._stopped = asyncio.Event()
        self._gone = False
        # Since when spells of the store not writing count for this task (store's clock).
        self._since = time.monotonic()
        self._unstored: StorageUnavailable | None = None  # why the last lines read are not stored
        self._task: asyncio.Task[None] | None = None
        self._first_poll: asyncio.TimerHandle | None = None

    def start(self) -> None:
        # The polling task begins with the first poll: most short tasks end before it is due,
        # and then finish() alone stores their output.
        self._first_poll = asyncio.get_running_loop().call_later(_POLL_MIN_S, self._begin_polling)

    def _begin_polling(self) -> None:
        self._first_poll = None
        if self._stopped.is_set():
            return
        if self._file_events is not None:
            folder = os.path.dirname(self._streams[0].path)
            names = frozenset(os.path.basename(stream.path) for stream in self._streams)
            watched = self._file_events.watch(folder, names)
            if watched is not None:
                self._watch, self._changed = watched
        self._task = asyncio.create_task(self._run(), name=f"logs-{self._target.task_name}")

    async def _run(self) -> None:
        if self._changed is not None:
            await self._follow_events(self._changed)
            return
        interval = _POLL_MIN_S
        while not self._stopped.is_set():
            got = await self.drain(final=False)
            interval = _POLL_MIN_S if got else min(self._poll_max_s, interval * 2)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), interval)

    async def _follow_events(self, changed: asyncio.Event) -> None:
        """Read when the task's output files change (finish() sets the event too), at most every
        `_POLL_MIN_S` while the task writes (a flood, or a progress bar redrawing an unfinished
        line, is read in chunks, not per write). Lines the store could not take are tried again
        after `poll_max_s`, whether or not the task writes more."""
        while not self._stopped.is_set():
            changed.clear()  # before reading: a write during the read sets it again
            await self.drain(final=False)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopped.wait(), _POLL_MIN_S)
            wait_s = self._poll_max_s if self._unstored is not None else _SAFETY_POLL_S
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), wait_s)

    async def finish(self) -> None:
        """Stop following and store everything the task wrote, including an unterminated last line."""
        self._stopped.set()
        if self._changed is not None:
            self._changed.set()
        if self._first_poll is not None:
            self._first_poll.cancel()
        if self._task is not None:
            await self._task
        if self._watch is not None and self._file_events is not None:
            self._file_events.unwatch(self._watch)
            self._watch = None
        while await self.drain(final=True):
            pass
        await self._tell_of_outages()

    async def _tell_of_outages(self) -> None:
        if self._gone:
            return
        if self._unstored is not None:
            missing = sum(stream.bytes_left() for stream in self._streams)
            cause = self._unstored.cause or "a write failed (see the daemon's log)"
            note = f"output could not be stored: {cause}; its last {missing} bytes are missing"
        elif outages := self._store.write_outages_since(self._since):
            note = f"output could not be stored for {outages.seconds:.1f} s while it ran: {outages.cause}"
        elif low_on_space(os.path.dirname(self._streams[0].path)):
            # The store never failed, but the task's own writes to its output files likely did
            # (what ends a step in `error: exit code 1` with no other word of it). One statvfs,
            # on the file system the files were just read from.
            note = "output could not be stored: no space left on device (the disk was full when it ended)"
        else:
            return
        write = functools.partial(
            note_output_error, task_pk=self._target.task_pk, note=note, now=self._clock.now_us()
        )
        try:
            await self._store.write(write, patient=True)
        except Gone:
            pass
        except StorageUnavailable as exc:
            log.error("task %s: could not record that %s (%s)", self._target.task_name, note, exc)

    async def drain(self, final: bool) -> int:
        if self._gone:
            return 0
        stored = 0
        for stream in self._streams:
            while True:
                before = stream.offset
                lines, new_offset = stream.read_lines(final)
                if new_offset == before:
                    break
                try:
                    await self._store_lines(stream.name, lines, new_offset)
                except Gone:
                    self._gone = True  # the job was deleted: nothing left to store for
                    return stored
                except StorageUnavailable as exc:
                    stream.unread()  # they stay in the file: the next drain tries them again
                    self._unstored = exc
                    return stored
                self._unstored = None
                stream.offset = new_offset
                stored += len(lines)
                if not stream.more_buffered(before):
                    break
        return stored

    async def _store_lines(self, stream: str, lines: list[bytes], new_offset: int) -> None:
        now = self._clock.now_us()
        target = self._target
        prefix = "[stderr] " if stream == "stderr" else ""
        decoded = [(now, prefix + line.rstrip(b"\r").decode("utf-8", "replace")) for line in lines]
        if self._masker:
            decoded = [(ts, self._masker.text(text)) for ts, text in decoded]
        await self._store.write(
            functools.partial(
                WriteTx.append_log_lines,
                job_pk=target.job_pk,
                attempt_id=target.attempt_id,
                step_name=target.step_name,
                task_pk=target.task_pk,
                task_name=target.task_name,
                stream=stream,
                lines=decoded,
                new_offset=new_offset,
                max_task_bytes=self._max_task_bytes,
            ),
            patient=True,  # losing lines is no better than losing a status
        )
        if decoded:
            self._on_stored(target.job_pk)
