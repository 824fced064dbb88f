"""Moves a task's output from its stdout/stderr files into the store, in chunks of whole lines.

Each read is cut into chunks (runner/output_chunks.py), written to the task's log file at its
committed end, then indexed with the read offset in one commit (storage/logs.py), so a daemon
that crashes and starts again neither loses nor repeats a line. Once stored, the read part of
the task's own files is given back to the file system (they are the intake, not a second copy).

While the task runs the files are read when they change (inotify on the task's folder,
runner/file_events.py: a quiet task costs nothing, a printed line is read at once, a chatty one
every 10 ms at most), or, without inotify, with a short adaptive interval (at most `poll_max_s`
later when it is quiet); once it exits they are drained to the end. A task the launcher started
is followed only once the launcher tells of its first output (`OutputNews`), and its files are
not read again at its end when what is stored already ends where the launcher says they end.

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
from runner.executors.base import OutputNews, TaskPaths
from runner.file_events import FileEvents
from runner.models import LogAppend, LogProgress, OutputChunk
from runner.output_chunks import CHUNK_BYTES, into_chunks
from runner.output_intake import READ_BYTES, OrderFile, StreamFile
from runner.secrets import Masker
from runner.transitions import note_output_error
from storage import Gone, Repository, StorageUnavailable
from storage.health import low_on_space

log = logging.getLogger(__name__)

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


class OutputCollector:
    def __init__(
        self,
        store: Repository,
        clock: Clock,
        target: OutputTarget,
        paths: TaskPaths,
        progress: LogProgress,
        poll_max_s: float,
        *,
        mask_values: list[str] | None = None,
        max_task_bytes: int = 0,
        on_stored: Callable[[int], None] = lambda job_pk: None,
        file_events: FileEvents | None = None,
        news: OutputNews | None = None,
    ) -> None:
        self._store = store
        self._news = news
        self._file_events = file_events
        self._watch: int | None = None
        self._changed: asyncio.Event | None = None  # set by a write to the task's folder
        # Built once: everything the task prints goes through it.
        self._masker = Masker(mask_values or (), within_lines=True)
        self._max_task_bytes = max_task_bytes
        # Small limits get small chunks: the limit drops whole chunks, oldest first.
        self._chunk_bytes = (
            min(CHUNK_BYTES, max(1024, max_task_bytes // 4)) if max_task_bytes else CHUNK_BYTES
        )
        self._log_files = store.log_files
        self._file_end = progress.file_end  # where the next chunk goes in the task's log file
        self._file_freed = 0
        self._on_stored = on_stored
        self._clock = clock
        self._target = target
        self._streams = [
            StreamFile("stdout", paths.stdout_file, progress.stdout),
            StreamFile("stderr", paths.stderr_file, progress.stderr),
        ]
        # Present from the start when the launcher captures the task's output through pipes
        # (always, when it tells of the output: no stat needed then).
        order_file = paths.order_file
        ordered = news is not None or os.path.exists(order_file)
        self._order = OrderFile(order_file, progress.order) if ordered else None
        self._poll_max_s = poll_max_s
        self._stopped = asyncio.Event()
        self._gone = False
        # Since when spells of the store not writing count for this task (store's clock).
        self._since = time.monotonic()
        self._unstored: StorageUnavailable | None = None  # why the last lines read are not stored
        self._task: asyncio.Task[None] | None = None
        self._first_poll: asyncio.Handle | None = None

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        news = self._news
        if news is None:
            # The polling task begins with the first poll: most short tasks end before it is
            # due, and then finish() alone stores their output.
            self._first_poll = loop.call_later(_POLL_MIN_S, self._begin_polling)
        elif news.written.done():
            self._first_poll = loop.call_soon(self._on_written)
        else:
            news.written.add_done_callback(self._on_written)

    def _on_written(self, _: object = None) -> None:
        """The task's first output is in its files, or the launcher went away: follow them,
        unless the task has ended with its files' end told (finish() then reads to there)."""
        self._first_poll = None
        news = self._news
        if news is None or news.end is None:
            self._begin_polling()

    def _begin_polling(self) -> None:
        self._first_poll = None
        if self._stopped.is_set():
            return
        if self._file_events is not None:
            folder = os.path.dirname(self._streams[0].path)
            # With an order file, its writes alone say that output came (one per read of a pipe,
            # after the bytes are in place); identical unread events are merged by the kernel,
            # so a flood wakes the daemon far less than once per write.
            watched_files = self._ordered() or self._streams
            names = frozenset(os.path.basename(f.path) for f in watched_files)
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
        if self._news is not None:
            self._news.written.remove_done_callback(self._on_written)
        if self._task is not None:
            await self._task
        if self._watch is not None and self._file_events is not None:
            self._file_events.unwatch(self._watch)
            self._watch = None
        if not self._all_stored():
            while await self.drain(final=True):
                pass
        await self._tell_of_outages()

    def _all_stored(self) -> bool:
        """Whether what the launcher told of the files' ends is already stored: then no read is
        needed (a task that printed nothing, or whose output was all followed)."""
        end = self._news.end if self._news is not None else None
        if end is None or self._order is None:
            return False
        stdout, stderr = self._streams
        return (
            not stdout.pending
            and not stderr.pending
            and stdout.next == stdout.offset == end.stdout
            and stderr.next == stderr.offset == end.stderr
            and self._order.next == self._order.offset == end.order
        )

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

    def _ordered(self) -> list[OrderFile]:
        return [] if self._order is None else [self._order]

    def _intake(self) -> list[StreamFile | OrderFile]:
        return [*self._streams, *self._ordered()]

    async def drain(self, final: bool) -> int:
        """Store what the task wrote since the last drain (with `final`, all of it); returns the
        number of lines stored."""
        if self._gone:
            return 0
        stored = 0
        while True:
            chunks, stored_bytes, more = self._read(final)
            moved = bool(chunks) or any(f.next != f.offset for f in self._ordered())
            if not moved:
                break
            try:
                await self._keep(chunks, stored_bytes)
            except Gone:
                self._gone = True  # the job was deleted: nothing left to store for
                return stored
            except StorageUnavailable as exc:
                for file in self._intake():
                    file.rollback()  # it stays in the files: the next drain tries it again
                self._unstored = exc
                return stored
            self._unstored = None
            for file in self._intake():
                file.commit()
            stored += sum(c.lines for c in chunks)
            if not more:
                break
        return stored

    def _read(self, final: bool) -> tuple[list[OutputChunk], list[bytes], bool]:
        """The chunks ready to store, in the order written, their bytes, and whether more is
        waiting."""
        chunks: list[OutputChunk] = []
        stored: list[bytes] = []
        budget = READ_BYTES
        more = False
        if self._order is not None:
            segments, more = self._order.segments()
            for segment in segments:
                stream = self._streams[segment.stream]
                cut = stream.read(segment.end, False, self._masker)
                chunks += into_chunks(cut.stored, stream.name, segment.timestamp, self._chunk_bytes)
                stored.append(cut.stored)
                budget -= cut.consumed
                if stream.position < segment.end and not final:
                    return chunks, stored, True  # the rest of it first, at the next read
                self._order.next = segment.records_end
                if budget <= 0:
                    return chunks, stored, True
        if self._order is None or (final and not more):
            now = self._clock.now_us()
            for stream in self._streams:
                cut = stream.read(None, final, self._masker)
                chunks += into_chunks(cut.stored, stream.name, now, self._chunk_bytes)
                stored.append(cut.stored)
                more = more or cut.consumed >= READ_BYTES // 2
        return chunks, stored, more

    async def _keep(self, chunks: list[OutputChunk], stored: list[bytes]) -> None:
        target = self._target
        size = sum(c.size for c in chunks)
        entry = LogAppend(
            job_pk=target.job_pk,
            attempt_id=target.attempt_id,
            step_name=target.step_name,
            task_pk=target.task_pk,
            task_name=target.task_name,
            file_offset=self._file_end,
            chunks=tuple(chunks),
            progress=LogProgress(
                stdout=self._streams[0].next,
                stderr=self._streams[1].next,
                order=self._order.next if self._order is not None else 0,
                file_end=self._file_end + size,
            ),
            max_task_bytes=self._max_task_bytes,
        )
        if size:
            try:
                # At the committed end: what an append that was never committed left there is
                # written over, and never named by the index.
                self._log_files.write_at(target.job_pk, target.task_pk, self._file_end, stored)
            except OSError as exc:
                raise StorageUnavailable(f"cannot write the task's log file: {exc}", exc.strerror) from exc
        outcome = await self._store.write(
            lambda tx: tx.append_log_output(entry),
            patient=True,  # losing output is no better than losing a status
        )
        self._file_end += size
        if outcome.kept_from > self._file_freed:
            self._log_files.free(target.job_pk, target.task_pk, self._file_freed, outcome.kept_from)
            self._file_freed = outcome.kept_from
        if size:
            self._on_stored(target.job_pk)
