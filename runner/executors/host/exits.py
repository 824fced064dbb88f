"""Learning that a process has ended, and with what status.

One thread waits for every watched task process to end and tells the event loop in batches.

Each process is watched through a pidfd (no polling; works for processes the daemon did not
start, e.g. those adopted after a restart). The registration, the reaping and the reading of the
exit-status file all happen off the event loop: done on it they cost about a fifth of its time per
one-line job (two epoll_ctl calls, a waitpid, a file read), and a burst of exits now wakes the
loop once instead of once per task.

The status itself is in the task's exit-status file (`exit_code`, one line: the code as a shell
reports it, `128+S` for signal S), written by the task's parent (the launcher, or the `sh`
wrapper) before it is reaped, so a restarted daemon reads it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import threading
from collections.abc import Callable
from typing import Any

from runner.executors.base import ExitStatus
from runner.executors.host.procfs import read_small_file

log = logging.getLogger(__name__)

_POLL_S = 5.0  # the thread re-checks that it should still run at least this often
_JOIN_S = 5.0


class ProcessWatch:
    """One watched process. `ended` turns true (in the watcher thread) just before the process is
    reaped: from then on its pid may belong to someone else and must not be signalled."""

    __slots__ = ("collect", "ended", "future", "pidfd")

    def __init__(self, future: asyncio.Future[Any], collect: Callable[[], Any]) -> None:
        self.pidfd: int | None = None
        self.future = future
        self.collect = collect
        self.ended = False


class ExitWatcher:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watches: dict[int, ProcessWatch] = {}
        self._epoll: select.epoll | None = None
        self._wake_r = self._wake_w = -1
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(
        self,
        loop: asyncio.AbstractEventLoop,
        pid: int,
        collect: Callable[[], Any],
        *,
        pidfd: int | None = None,
    ) -> ProcessWatch:
        """Watch `pid` (through `pidfd` when given: the watcher then owns it); once it has ended,
        `collect()` runs in the watcher thread (it may reap the process) and its result or
        exception settles `watch.future` on `loop`. Callable from any thread."""
        # A future is only created here, never touched: it is settled on its loop's thread.
        watch = ProcessWatch(loop.create_future(), collect)
        if pidfd is None:
            try:
                pidfd = os.pidfd_open(pid)
            except ProcessLookupError:  # already gone, and reaped by someone else
                self._deliver([(watch, _outcome(watch))])
                return watch
        with self._lock:
            if self._closed:
                os.close(pidfd)
                raise RuntimeError("the exit watcher is closed")
            epoll = self._ensure_thread()
            watch.pidfd = pidfd
            self._watches[pidfd] = watch
            epoll.register(pidfd, select.EPOLLIN)
        return watch

    def forget(self, watch: ProcessWatch) -> None:
        """Stop watching (the process is left alone); its future is never settled after this."""
        with self._lock:
            if watch.pidfd is not None and self._watches.get(watch.pidfd) is watch:
                self._drop(watch)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            for watch in list(self._watches.values()):
                self._drop(watch)
            if thread is not None:
                os.write(self._wake_w, b"x")
        if thread is not None:
            thread.join(_JOIN_S)
        if self._epoll is not None and (thread is None or not thread.is_alive()):
            self._epoll.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # ------------------------------------------------------------------ the thread

    def _ensure_thread(self) -> select.epoll:
        """Called with the lock held."""
        if self._epoll is None:
            self._epoll = select.epoll()
            self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self._epoll.register(self._wake_r, select.EPOLLIN)
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name="localjobs-exits", daemon=True)
            self._thread.start()
        return self._epoll

    def _drop(self, watch: ProcessWatch) -> None:
        """Called with the lock held."""
        assert self._epoll is not None and watch.pidfd is not None
        del self._watches[watch.pidfd]
        with contextlib.suppress(OSError):
            self._epoll.unregister(watch.pidfd)
        os.close(watch.pidfd)
        watch.pidfd = None

    def _serve(self) -> None:
        assert self._epoll is not None
        try:
            while not self._closed:
                events = self._epoll.poll(_POLL_S)
                batch = []
                for fd, _ in events:
                    watch = self._take_ended(fd)
                    if watch is not None:
                        batch.append((watch, _outcome(watch)))
                if batch:
                    self._deliver(batch)
        except BaseException as exc:  # settle every waiter rather than leave it waiting forever
            log.critical("the task exit watcher failed; failing every watched task", exc_info=True)
            with self._lock:
                orphaned = list(self._watches.values())
                for watch in orphaned:
                    self._drop(watch)
            self._deliver([(watch, exc) for watch in orphaned])

    def _take_ended(self, fd: int) -> ProcessWatch | None:
        with self._lock:
            watch = self._watches.get(fd)
            # The number may have been closed and reused since the event was queued: only a
            # readable pidfd means that this process has ended.
            if watch is None or not _has_ended(fd):
                return None
            self._drop(watch)
            return watch

    def _deliver(self, batch: list[tuple[ProcessWatch, Any]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[ProcessWatch, Any]]] = {}
        for watch, outcome in batch:
            by_loop.setdefault(watch.future.get_loop(), []).append((watch, outcome))
        for loop, settled in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(_settle, settled)


def _has_ended(pidfd: int) -> bool:
    """A pidfd is readable once its process has ended (poll: select() refuses fds >= 1024)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


def _outcome(watch: ProcessWatch) -> Any:
    watch.ended = True  # before collect(), which may reap it
    try:
        return watch.collect()
    except Exception as exc:
        return exc


def _settle(settled: list[tuple[ProcessWatch, Any]]) -> None:
    for watch, outcome in settled:
        if watch.future.done():
            continue
        if isinstance(outcome, BaseException):
            watch.future.set_exception(outcome)
        else:
            watch.future.set_result(outcome)


def read_exit_file(path: str) -> ExitStatus | None:
    data = read_small_file(path)
    text = data.decode("ascii", "replace").strip() if data is not None else ""
    if not text.lstrip("-").isdigit():
        return None
    return ExitStatus.from_exit_code(int(text))


async def exit_file_within(path: str, limit_s: float) -> ExitStatus | None:
    """The exit-status file's status, waiting for it up to `limit_s` (its writer may still be
    about to write it); None if it never came."""
    delay, waited = 0.005, 0.0
    while waited < limit_s:
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.25)
        status = read_exit_file(path)
        if status is not None:
            return status
    return None
