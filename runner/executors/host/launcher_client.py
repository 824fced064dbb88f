"""The daemon's side of the launcher process (launcher.py): starts it when first needed, sends it
start and stop requests (protocol.py) and matches its answers and reports to them.

The launcher is replaceable at any moment: if it dies, the starts it had not answered fail (their
steps end in error, with the reason), running tasks go on (the daemon watches them through the
pidfds it holds, though their exit status is lost with their parent), and the next start brings
up a new launcher.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import functools
import itertools
import logging
import os
import signal
import socket
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner.executors.base import ExecutorError, OutputEnd, OutputNews
from runner.executors.host import launcher as launcher_module
from runner.executors.host.exits import ExitWatcher
from runner.executors.host.protocol import (
    LAUNCHER_FD,
    MAX_MESSAGE,
    BadMessage,
    Exited,
    Idle,
    LauncherArgs,
    StartedReply,
    StartFailed,
    StartRequest,
    StopRequest,
    TaskStart,
    Wrote,
    decode_report,
)
from storage import json_text

log = logging.getLogger(__name__)

_ANSWER_TIMEOUT_S = 30.0
_EXIT_WAIT_S = 5.0
_LOG_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
# Run as `python -m <its module>`: `runner.executors.host.launcher` in a checkout,
# `localjobs.runner.executors.host.launcher` when installed from the wheel.
LAUNCHER_MODULE = launcher_module.__name__
# The folder holding the top package, so that `python -S` finds it wherever it is installed.
_IMPORT_ROOT = str(Path(launcher_module.__file__).resolve().parents[LAUNCHER_MODULE.count(".")])


def signal_task_group(pid: int, pidfd: int, sig: int) -> None:
    """`sig` to the task's process group, if the task itself is still there: its parent (the
    launcher) may have reaped it already, and its pidfd, unlike its pid, cannot name another."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if pidfd >= 0:
            signal.pidfd_send_signal(pidfd, 0)
        os.killpg(pid, sig)


def _reap(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


class RequestTooLarge(Exception):
    """The request does not fit in one message (a huge environment or config): start in-process."""


def _send_error(exc: OSError) -> Exception:
    if exc.errno == errno.EMSGSIZE:
        return RequestTooLarge()
    return ExecutorError(f"Failed to start subprocess: the task launcher cannot be reached: {exc}")


class Launched:
    """A task the launcher started. `exited` gets its exit status (as a shell reports it), or
    None if the launcher went away first: the pidfd (owned by the receiver) then tells the end.
    `output`: what the launcher tells of the task's output as it captures it."""

    __slots__ = ("exited", "output", "pid", "pidfd", "start_ticks")

    def __init__(self, pid: int, start_ticks: int | None, pidfd: int, loop: asyncio.AbstractEventLoop):
        self.pid = pid
        self.start_ticks = start_ticks
        self.pidfd = pidfd
        self.exited: asyncio.Future[int | None] = loop.create_future()
        self.output = OutputNews(loop.create_future())

    def tell_written(self) -> None:
        if not self.output.written.done():
            self.output.written.set_result(None)

    def tell_exited(self, code: int | None, output: tuple[int, int, int] | None) -> None:
        if output is not None:
            self.output.end = OutputEnd(*output)
        if not self.exited.done():
            self.exited.set_result(code)
        self.tell_written()  # nothing waits for it any more


class LauncherClient:
    def __init__(
        self,
        exits: ExitWatcher,
        log_file: Path,
        idle_s: float = 30.0,
        *,
        environment: Mapping[str, str],
        leftover_grace_s: float | None = None,
    ) -> None:
        """`leftover_grace_s`: what a task leaves running when its main process ends gets SIGTERM,
        this long, then SIGKILL, and its exit is told only once they are gone (the launcher sees
        them: leftovers.py); None leaves them running."""
        self._exits = exits
        self._environment = environment  # the daemon's (Settings.environment): the launcher's own
        self._log_file = log_file
        self._idle_s = idle_s
        self._leftover_grace_s = leftover_grace_s
        self._sock: socket.socket | None = None
        self._launcher_ended: asyncio.Future[Any] | None = None
        self._launching: asyncio.Task[socket.socket] | None = None
        self._answers: dict[int, asyncio.Future[Launched]] = {}
        # Sent and not answered yet, whether or not their requester still waits.
        self._unanswered: set[int] = set()
        self._all_answered = asyncio.Event()
        self._outbox: collections.deque[tuple[int, bytes]] = collections.deque()
        # By pid and start ticks: a task is told ended only once its leftovers are gone, by
        # which time the launcher may have started another under the same pid.
        self._running: dict[tuple[int, int | None], Launched] = {}
        self._ids = itertools.count(1)
        self._closed = False

    async def start(self, task: TaskStart) -> Launched:
        """Ask the launcher to start a task; the caller owns the returned pidfd."""
        if self._closed:
            raise ExecutorError("the daemon is shutting down")
        request_id = next(self._ids)
        data = StartRequest(request_id, task).encode(json_text.dumps_bytes)
        if len(data) > MAX_MESSAGE:
            raise RequestTooLarge()
        sock = await self._connected()
        answer: asyncio.Future[Launched] = asyncio.get_running_loop().create_future()
        self._answers[request_id] = answer
        try:
            self._unanswered.add(request_id)
            self._all_answered.clear()
            self._send(sock, request_id, data)
            return await asyncio.wait_for(asyncio.shield(answer), _ANSWER_TIMEOUT_S)
        except TimeoutError as exc:
            self._abandon_if_answered(answer)
            raise ExecutorError(f"the task launcher did not answer within {_ANSWER_TIMEOUT_S:.0f} s") from exc
        except asyncio.CancelledError:
            self._abandon_if_answered(answer)
            raise
        finally:
            # An answer that comes after this is given up is handled in _on_answer.
            self._answers.pop(request_id, None)

    def stop(self, started: Launched, grace_s: float) -> bool:
        """Ask the launcher to end the task's whole tree: SIGTERM now, SIGKILL after `grace_s`.
        False when it cannot (it does not end leftovers, or this task is no longer its own)."""
        sock = self._sock
        key = (started.pid, started.start_ticks)
        if self._leftover_grace_s is None or sock is None or key not in self._running:
            return False
        message = StopRequest(started.pid, started.start_ticks, grace_s)
        try:
            self._send(sock, 0, message.encode())  # 0: no request waits for an answer
        except (ExecutorError, RequestTooLarge):
            return False
        return True

    @staticmethod
    def _abandon_if_answered(answer: asyncio.Future[Launched]) -> None:
        """Given up on (cancelled, timed out) after the answer came: nobody would watch the task."""
        if answer.done() and not answer.cancelled() and answer.exception() is None:
            started = answer.result()
            signal_task_group(started.pid, started.pidfd, signal.SIGKILL)
            os.close(started.pidfd)
            started.pidfd = -1

    def _send(self, sock: socket.socket, request_id: int, data: bytes) -> None:
        """In order, never blocking: the launcher's queue holds only ~10 messages
        (net.unix.max_dgram_qlen), the rest waits here. One writer callback for all of them:
        concurrent loop.sock_sendall calls on one socket would replace each other's."""
        if not self._outbox:
            try:
                sock.send(data)
                return
            except BlockingIOError:
                asyncio.get_running_loop().add_writer(sock.fileno(), self._flush, sock)
            except OSError as exc:
                self._answered(request_id)  # never sent: nothing will come back
                raise _send_error(exc) from exc
        self._outbox.append((request_id, data))

    def _flush(self, sock: socket.socket) -> None:
        while self._outbox:
            request_id, data = self._outbox[0]
            try:
                sock.send(data)
            except BlockingIOError:
                return
            except OSError as exc:
                self._answered(request_id)
                waiting = self._answers.get(request_id)
                if waiting is not None and not waiting.done():
                    waiting.set_exception(_send_error(exc))
            self._outbox.popleft()
        asyncio.get_running_loop().remove_writer(sock.fileno())

    async def _connected(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        if self._launching is None or self._launching.done():
            # A task of its own: a requester cancelled meanwhile must not orphan the launcher.
            self._launching = asyncio.create_task(self._launch(), name="start-task-launcher")
        launching = self._launching
        try:
            return await asyncio.shield(launching)
        finally:
            if launching.done() and self._launching is launching:
                self._launching = None

    async def _launch(self) -> socket.socket:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        search_path = os.pathsep.join(filter(None, [_IMPORT_ROOT, self._environment.get("PYTHONPATH")]))
        env = {**self._environment, "PYTHONPATH": search_path}
        # -S: no site (fast start, small); -P: the daemon's working folder is not on its path.
        argv = [
            sys.executable,
            "-S",
            "-P",
            "-m",
            LAUNCHER_MODULE,
            *LauncherArgs(LAUNCHER_FD, self._idle_s, self._leftover_grace_s).to_argv(),
        ]
        try:
            # Only its end of the pair, as fd 3 (dup2 clears close-on-exec; every other fd of the
            # daemon is close-on-exec). Own session: a Ctrl-C for the daemon's terminal is the
            # daemon's to handle. posix_spawn, not subprocess: this is no Popen to be waited for.
            theirs_fd = theirs.fileno() if theirs.fileno() != LAUNCHER_FD else os.dup(theirs.fileno())
            try:
                pid = await asyncio.to_thread(
                    os.posix_spawn,
                    sys.executable,
                    argv,
                    env,
                    # Not the daemon's stdout/stderr: it may outlive the daemon, and whoever reads
                    # those would wait for it.
                    file_actions=[
                        (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                        (os.POSIX_SPAWN_OPEN, 2, str(self._log_file), _LOG_FLAGS, 0o600),
                        (os.POSIX_SPAWN_DUP2, theirs_fd, LAUNCHER_FD),
                    ],
                    setsid=True,
                )
            finally:
                if theirs_fd != theirs.fileno():
                    os.close(theirs_fd)
        except OSError as exc:
            mine.close()
            raise ExecutorError(f"cannot start the task launcher: {exc}") from exc
        finally:
            theirs.close()
        mine.setblocking(False)
        loop = asyncio.get_running_loop()
        loop.add_reader(mine.fileno(), self._on_readable, mine)
        self._sock = mine
        # Reaped by the exit watcher; its end while the daemon runs is worth a line in the log.
        self._launcher_ended = self._exits.watch(loop, pid, functools.partial(_reap, pid)).future
        self._launcher_ended.add_done_callback(lambda f: self._on_launcher_exit(mine, f))
        return mine

    def _on_readable(self, sock: socket.socket) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data, fds = b"", []
            if not data:
                self._lost(sock, "the task launcher stopped")
                return
            try:
                message = decode_report(data, json_text.loads)
            except BadMessage as exc:  # (never expected) a launcher not speaking our protocol
                for fd in fds:
                    os.close(fd)
                self._lost(sock, f"the task launcher said something unreadable: {exc}")
                return
            if isinstance(message, Idle):
                # Nothing in flight (checked here, on the loop that sends): let it go. A start
                # asked for later brings up a new one.
                if not (self._answers or self._unanswered or self._running or self._outbox):
                    self._lost(sock, "idle", quietly=True)
                    return
            elif isinstance(message, Wrote):
                running = self._running.get((message.pid, message.start_ticks))
                if running is not None:
                    running.tell_written()
            elif isinstance(message, Exited):
                ended = self._running.pop((message.pid, message.start_ticks), None)
                if ended is not None:
                    ended.tell_exited(message.code, message.output)
            else:
                self._on_answer(message, fds)

    def _on_answer(self, answer: StartedReply | StartFailed, fds: list[int]) -> None:
        if answer.id is not None:
            self._answered(answer.id)
        waiting = self._answers.pop(answer.id, None) if answer.id is not None else None
        started = answer if isinstance(answer, StartedReply) else None
        if waiting is None or waiting.done():
            # Its requester gave up waiting: a task nobody watches must not run on unseen.
            if started is not None and fds:
                signal_task_group(started.pid, fds[0], signal.SIGKILL)
            for fd in fds:
                os.close(fd)
            return
        if started is None or not fds:
            for fd in fds:
                os.close(fd)
            if started is not None:  # started, but its pidfd did not come: it cannot be watched
                with contextlib.suppress(OSError):
                    os.killpg(started.pid, signal.SIGKILL)
            error = answer.error if isinstance(answer, StartFailed) else "no pidfd"
            waiting.set_exception(ExecutorError(f"Failed to start subprocess: {error}"))
            return
        launched = Launched(started.pid, started.start_ticks, fds[0], asyncio.get_running_loop())
        self._running[(started.pid, started.start_ticks)] = launched
        waiting.set_result(launched)

    def _answered(self, request_id: int) -> None:
        self._unanswered.discard(request_id)
        if not self._unanswered:
            self._all_answered.set()

    def _lost(self, sock: socket.socket, why: str, *, quietly: bool = False) -> None:
        if self._sock is not sock:
            return
        self._sock = None
        loop = asyncio.get_running_loop()
        loop.remove_reader(sock.fileno())
        loop.remove_writer(sock.fileno())
        self._outbox.clear()
        sock.close()
        self._unanswered.clear()
        self._all_answered.set()
        answers, self._answers = self._answers, {}
        for waiting in answers.values():
            if not waiting.done():
                waiting.set_exception(ExecutorError(f"Failed to start subprocess: {why}"))
        running, self._running = self._running, {}
        for ended in running.values():
            ended.tell_exited(None, None)  # its pidfd tells the end now, its files its output
        if not self._closed and not quietly:
            log.warning("%s; a new one starts with the next step", why)

    def _on_launcher_exit(self, sock: socket.socket, ended: asyncio.Future[Any]) -> None:
        if not ended.cancelled():
            code = ended.result() if ended.exception() is None else ended.exception()
            self._lost(sock, f"the task launcher ended ({code})")

    async def close(self) -> None:
        """Let the launcher go. With no task left it exits at once (a short, bounded wait for
        it); otherwise it stays until those (left running for the next daemon) have ended."""
        self._closed = True
        if self._launching is not None and not self._launching.done():
            await asyncio.wait([self._launching], timeout=_EXIT_WAIT_S)  # then closed below
        # Answers still on their way (starts given up at shut-down): let them come, so that
        # _on_answer ends their tasks rather than the launcher running them unseen. Bounded.
        if self._unanswered:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_answered.wait(), _EXIT_WAIT_S)
        sock, idle = self._sock, not self._running
        if sock is not None:
            self._lost(sock, "the daemon is shutting down", quietly=True)
        if idle and self._launcher_ended is not None:
            await asyncio.wait([self._launcher_ended], timeout=_EXIT_WAIT_S)  # never raises
