"""A host task as the scheduler sees it (runner.executors.base.Workload): one class per way of
learning that its main process has ended.

- `LaunchedTask`: started by the launcher, its parent, which reaps it, writes its status and
  tells the daemon (Exited). Should the launcher go away first, the task's pidfd (held
  meanwhile) tells the end instead, through the exit watcher; its status is then lost.
- `WatchedTask`: the exit watcher (exits.py) sees the end through a pidfd, the exit-status file
  gives the status. A task this daemon spawned itself under the `sh` wrapper (a start too large
  for a message to the launcher), or one adopted after a restart.
- `EndedTask`: the main process ended while no daemon ran, leaving processes behind: the status
  is known already, what is left is to end those.

Whatever the way, the end comes once what the task left running is gone too: the launcher ends
that itself when it saw the end; otherwise the processes are found by their marker (strays.py).
No constructor touches the event loop: any thread may build one.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
from typing import Any

import psutil

from runner.executors.base import ExitStatus, HostHandle, OutputNews
from runner.executors.host.exits import ExitWatcher, ProcessWatch, exit_file_within, read_exit_file
from runner.executors.host.launcher_client import Launched, LauncherClient, signal_task_group
from runner.executors.host.leftovers import GIVE_UP_S
from runner.executors.host.strays import LeftoverRule, end_leftovers

_KILL_WAIT_S = 5.0
_EXIT_FILE_WAIT_S = 2.0
_FREEZE_WAIT_S = 2.0
_NOT_WATCHED = "the daemon stopped watching"
_FROZEN = frozenset(
    {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
)


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as file:
            return file.read().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


class HostTask:
    """What every way shares: the stored handle, signals to the task's group, pause and resume,
    the daemon's own stop, and the end of what no launcher saw left behind."""

    def __init__(
        self,
        pid: int,
        start_ticks: int | None,
        *,
        loop: asyncio.AbstractEventLoop,
        leftovers: LeftoverRule | None,
    ) -> None:
        self._pid = pid
        self._start_ticks = start_ticks
        self._loop = loop
        self._leftovers = leftovers
        self._stop_deadline: float | None = None  # loop time, once a stop is under way
        self._final: asyncio.Future[ExitStatus] | None = None

    def output_news(self) -> OutputNews | None:
        return None  # its files are watched (started by the daemon itself, or adopted)

    # ------------------------------------------------------------------ each way its own

    def _ended(self) -> bool:
        """True from the moment the process may have been reaped: its pid is then not ours."""
        raise NotImplementedError

    async def _main_status(self) -> ExitStatus:
        """Once the main process has ended: its status."""
        raise NotImplementedError

    def _launcher_saw_end(self) -> bool:
        """The launcher saw the end, and so ended what the task left running."""
        return False

    def _pidfd(self) -> int:
        """A pidfd of the task held by the daemon, or -1."""
        return -1

    async def release(self) -> None:
        """Free what the workload held once its outcome is stored."""

    # ------------------------------------------------------------------ shared

    @property
    def handle(self) -> HostHandle:
        return HostHandle(self._pid, self._start_ticks, BOOT_ID)

    @property
    def details(self) -> dict[str, Any]:
        return {"pid": self._pid, "pgid": self._pid}

    def _settled(self) -> asyncio.Future[ExitStatus]:
        if self._final is None:
            self._final = asyncio.ensure_future(self._settle())
        return self._final

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._settled())

    async def _settle(self) -> ExitStatus:
        status = await self._main_status()
        if status.reason == _NOT_WATCHED:
            return status
        rule = self._leftovers
        if rule is not None and rule.grace_s is not None and not self._launcher_saw_end():
            # No launcher of this daemon saw the end: what it left is found by its marker.
            grace_s, term = rule.grace_s, True
            if self._stop_deadline is not None:  # its group had its SIGTERM from stop()
                grace_s, term = max(0.0, self._stop_deadline - self._loop.time()), False
            await end_leftovers(rule.marker, grace_s, term=term)
        return status

    def _signal_group(self, sig: int) -> None:
        if self._ended():  # reaped, or about to be: the pid may be someone else's by now
            return
        signal_task_group(self._pid, self._pidfd(), sig)

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._pid).children(recursive=True)
        except psutil.Error:
            return []

    async def stop(self, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; returns once it is gone."""
        if self._ended():
            return
        deadline = self._loop.time() + grace_s
        self._stop_deadline = deadline if self._stop_deadline is None else min(self._stop_deadline, deadline)
        await self._stop(grace_s)

    async def _stop(self, grace_s: float, *, termed: bool = False) -> None:
        """The daemon's own stop (`termed`: the group had its SIGTERM already)."""
        # Grandchildren may have left the group (setsid): remember them before the group dies.
        strays = self._descendants()
        if not termed:  # never a second SIGTERM
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a frozen (paused) group must wake to handle it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._settled()), grace_s)
        self._signal_group(signal.SIGKILL)
        for proc in strays + self._descendants():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._settled()), _KILL_WAIT_S)

    async def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)
        # A stop signal takes effect when the process next runs in user mode: one blocked in the
        # kernel (a write to a busy disk) can still print a line. Paused means frozen, so wait for
        # it (bounded; after that the pause is reported anyway).
        # (Read in a worker thread: walking /proc for a large group must not stall the loop.)
        deadline = self._loop.time() + _FREEZE_WAIT_S
        while not await asyncio.to_thread(self._group_frozen) and self._loop.time() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)

    def _group_frozen(self) -> bool:
        if self._ended():  # the pid may be someone else's by now
            return True
        try:
            leader = psutil.Process(self._pid)
            group = [leader, *leader.children(recursive=True)]
        except psutil.Error:
            return True  # gone: nothing left to print
        return all(_frozen(proc, self._pid) for proc in group)

    async def resume(self) -> None:
        self._signal_group(signal.SIGCONT)


class LaunchedTask(HostTask):
    """Started by the launcher: the launcher tells the end (once what the task left running is
    gone) and ends the whole tree on stop. If it goes away first, the pidfd it sent tells."""

    def __init__(
        self,
        launched: Launched,
        exit_file: str,
        *,
        watcher: ExitWatcher,
        loop: asyncio.AbstractEventLoop,
        launcher: LauncherClient,
        leftovers: LeftoverRule | None = None,  # for when the launcher dies before the task
    ) -> None:
        super().__init__(launched.pid, launched.start_ticks, loop=loop, leftovers=leftovers)
        self._launched = launched
        self._launcher = launcher
        self._exit_file = exit_file
        self._watcher = watcher
        self._watch: ProcessWatch | None = None  # only once the launcher went away first

    def output_news(self) -> OutputNews | None:
        return self._launched.output

    def _ended(self) -> bool:
        if self._watch is not None:
            return self._watch.ended
        return self._launched.exited.done()

    def _pidfd(self) -> int:
        return self._launched.pidfd

    def _launcher_saw_end(self) -> bool:
        return self._watch is None

    async def _main_status(self) -> ExitStatus:
        launched = self._launched
        code = await launched.exited
        if code is not None:
            # Told once what it left running was ended too: the launcher saw to that.
            self._close_pidfd()
            return ExitStatus.from_exit_code(code)
        # The launcher went away first: watch the process through the pidfd held for this.
        # Its parent is gone, so nobody will record its exit status.
        pidfd, launched.pidfd = launched.pidfd, -1
        collect = functools.partial(_collect, self._pid, self._exit_file, reap=False)
        try:
            self._watch = self._watcher.watch(self._loop, self._pid, collect, pidfd=pidfd)
        except RuntimeError:  # shutting down (the watcher closed the pidfd): nobody waits now
            return ExitStatus(exit_code=None, reason=_NOT_WATCHED)
        lost = "exit status lost: the task launcher stopped before the task ended"
        return await _watched_status(self._watch, self._exit_file, lost)

    async def _stop(self, grace_s: float, *, termed: bool = False) -> None:
        launched, deadline = self._launched, self._loop.time() + grace_s
        if not self._launcher.stop(launched, grace_s):
            await super()._stop(grace_s)
            return
        # The launcher ends the whole tree (what left the group and session too: it sees
        # them) and tells the end once all of it is gone.
        settled = self._settled()
        either: list[asyncio.Future[Any]] = [settled, launched.exited]
        await asyncio.wait(either, timeout=grace_s + GIVE_UP_S + 1.0, return_when=asyncio.FIRST_COMPLETED)
        told = launched.exited.done() and not launched.exited.cancelled()
        if settled.done() or (told and launched.exited.result() is not None):
            return
        # The launcher went away meanwhile (or is stuck): the rest is the daemon's to do.
        await super()._stop(max(0.0, deadline - self._loop.time()), termed=True)

    def _close_pidfd(self) -> None:
        if self._launched.pidfd >= 0:
            os.close(self._launched.pidfd)
            self._launched.pidfd = -1

    async def release(self) -> None:
        if self._watch is not None:
            self._watcher.forget(self._watch)
        self._close_pidfd()


class WatchedTask(HostTask):
    """Its end seen by the exit watcher through a pidfd, its status read from the exit-status
    file. `reap`: this daemon is its parent (it spawned the `sh` wrapper itself) and reaps it;
    otherwise it was adopted after a restart, and its parent (an earlier daemon's launcher)
    writes the file."""

    def __init__(
        self,
        pid: int,
        start_ticks: int | None,
        exit_file: str,
        *,
        watcher: ExitWatcher,
        loop: asyncio.AbstractEventLoop,
        leftovers: LeftoverRule | None,
        reap: bool = False,
    ) -> None:
        super().__init__(pid, start_ticks, loop=loop, leftovers=leftovers)
        self._exit_file = exit_file
        self._watcher = watcher
        self._watch = watcher.watch(loop, pid, functools.partial(_collect, pid, exit_file, reap=reap))

    def _ended(self) -> bool:
        return self._watch.ended

    async def _main_status(self) -> ExitStatus:
        lost = "exit status lost (the process was killed)"
        return await _watched_status(self._watch, self._exit_file, lost)

    async def release(self) -> None:
        self._watcher.forget(self._watch)


class EndedTask(HostTask):
    """Its main process ended while no daemon ran (`status` read from its exit-status file),
    leaving processes running: the end comes once those are ended too."""

    def __init__(
        self,
        pid: int,
        start_ticks: int | None,
        status: ExitStatus,
        *,
        loop: asyncio.AbstractEventLoop,
        leftovers: LeftoverRule,
    ) -> None:
        super().__init__(pid, start_ticks, loop=loop, leftovers=leftovers)
        self._status = status

    def _ended(self) -> bool:
        return True

    async def _main_status(self) -> ExitStatus:
        return self._status


def _collect(pid: int, exit_file: str, *, reap: bool) -> ExitStatus | None:
    """Runs in the watcher thread once the process has ended; None: not known yet."""
    returncode = None
    if reap:
        # Already dead (the pidfd said so): this reaps it without blocking.
        with contextlib.suppress(ChildProcessError):
            returncode = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    status = read_exit_file(exit_file)
    if status is not None:
        return status
    # The wrapper itself was killed (SIGKILL to the group): the workload went with it.
    if returncode is not None and returncode < 0:
        return ExitStatus(exit_code=None, signal=-returncode)
    if returncode is not None:
        return ExitStatus(exit_code=returncode)
    return None


async def _watched_status(watch: ProcessWatch, exit_file: str, lost: str) -> ExitStatus:
    status = await watch.future
    if status is None:
        # The parent of an adopted process (a launcher of an earlier daemon) writes its
        # status just after the pidfd said it ended: wait a little for that.
        status = await exit_file_within(exit_file, _EXIT_FILE_WAIT_S)
    return status or ExitStatus(exit_code=None, reason=lost)


def _frozen(proc: psutil.Process, group: int) -> bool:
    """Whether a member of the task's group can run no more. Members that left the group are not
    the stop signal's to freeze. A shell that vforked (dash does) waits in the kernel, in `D`,
    until its child execs: with that child stopped, it is as frozen as a stopped process."""
    try:
        if os.getpgid(proc.pid) != group:
            return True
        status = proc.status()
        if status in _FROZEN:
            return True
        return status == psutil.STATUS_DISK_SLEEP and any(
            child.status() in _FROZEN for child in proc.children()
        )
    except (psutil.Error, ProcessLookupError):
        return True  # gone meanwhile
