"""What a task leaves running when its main process ends: the launcher finds it and ends it.

The launcher is a child subreaper (prctl PR_SET_CHILD_SUBREAPER): a process whose parent dies is
handed to it rather than to init, so every process a task leaves behind, whether it stayed in the
task's group and session or left both (setsid, a double fork), ends up under a child of the
launcher. When a task's main process ends, its leftovers are therefore all under the launcher's
children that are not running tasks, and one read of the launcher's own children list
(/proc/self/task/PID/children, a pread and a count) after each batch of reaped tasks tells that
none of them left anything: the usual end of a task costs a share of that read, no scan of /proc.

A child that is not a task (a "root") belongs to the task whose marker (LOCALJOBS_TASK) is in its
environment, else to the task whose session or group it is in (a session or group id cannot name
another process while a member is alive). A root with neither (it left the session and cleared its
environment) is suspected of every task running when it was first seen, and is ended once none of
those runs any more: it is never taken for a running task's.

Ending, as GitHub Actions' runner and Kubernetes do: SIGTERM (and SIGCONT, for a frozen one) to
every process under the task's roots, never twice to one process; after the grace period SIGKILL,
again as killed parents hand their children over, until no root of the task is left. Only then is
the task's exit reported, so that the daemon reads its output up to the last leftover's end.
A process that SIGKILL does not end (it waits in the kernel) holds the report at most GIVE_UP_S.

Standard library only (the launcher runs it); the daemon's side of leftovers is strays.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import time
from collections.abc import Callable, Iterable

from runner.executors.host.procfs import OwnChildren, descendants, environ_value, group_and_session
from runner.executors.host.protocol import TASK_MARKER_VARIABLE

_MARKER = TASK_MARKER_VARIABLE.encode()
_PR_SET_CHILD_SUBREAPER = 36
GIVE_UP_S = 5.0


def become_child_subreaper() -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return int(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0


class _Task:
    __slots__ = ("code", "deadline", "marker", "pid", "start_ticks", "termed")

    def __init__(self, pid: int, start_ticks: int | None, marker: bytes | None) -> None:
        self.pid = pid
        self.start_ticks = start_ticks
        self.marker = marker
        self.code: int | None = None  # set once its main process has ended
        self.deadline: float | None = None  # from then on, SIGKILL for whatever is left
        self.termed: set[int] = set()  # got SIGTERM already: never a second one


class _Root:
    """A child of the launcher that is no task's main process: something a task left behind."""

    __slots__ = ("deadline", "owner", "suspects")

    def __init__(self, owner: _Task | None, suspects: frozenset[_Task] = frozenset()) -> None:
        self.owner = owner
        self.suspects = suspects
        self.deadline: float | None = None  # an unowned root's own, once its suspects have ended


class Leftovers:
    def __init__(
        self,
        grace_s: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        send: Callable[[int, int], None] = os.kill,
    ) -> None:
        self.grace_s = grace_s
        self._clock = clock
        self._send = send
        self._children = OwnChildren()
        self._running: dict[int, _Task] = {}  # by the pid of its live (or unreaped) main process
        self._by_marker: dict[bytes, _Task] = {}
        self._stopping: set[_Task] = set()  # running, with a deadline the daemon asked for
        self._just_ended: list[_Task] = []  # main process reaped, not looked at yet (step())
        self._ending: set[_Task] = set()  # main process ended, leftovers being ended
        self._roots: dict[int, _Root] = {}
        self._given_up: set[int] = set()  # SIGKILL did not end them in time: left to end alone

    @property
    def busy(self) -> bool:
        """Leftovers are being ended: the launcher stays for that, daemon or not."""
        roots = self._roots.values()
        return bool(self._ending) or any(r.owner is None and r.deadline is not None for r in roots)

    def started(self, pid: int, start_ticks: int | None, marker: str | None) -> None:
        task = _Task(pid, start_ticks, marker.encode() if marker else None)
        self._running[pid] = task
        if task.marker:
            self._by_marker[task.marker] = task

    def stop(self, pid: int, start_ticks: int | None, grace_s: float) -> None:
        """The daemon stops the task: SIGTERM to its whole tree now, SIGKILL after `grace_s`."""
        task = self._running.get(pid) or self._ended(pid)
        if task is None or task.start_ticks != start_ticks:
            return  # ended and reported already (the pid may be another's by now)
        deadline = self._clock() + max(grace_s, 0.0)
        task.deadline = deadline if task.deadline is None else min(task.deadline, deadline)
        self._survey()
        roots = self._owned(task)
        if task.code is None:
            roots.insert(0, pid)  # not reaped yet: its pid is surely its own
            self._stopping.add(task)
        self._term(task, roots)

    def main_ended(self, pid: int, code: int) -> None:
        """The main process has ended (it is reaped next); step() reports it, at once when it
        left nothing, else once its leftovers are gone."""
        task = self._running.pop(pid, None)
        if task is not None:
            task.code = code
            self._stopping.discard(task)
            self._just_ended.append(task)

    def reaped(self, pid: int) -> None:
        """A child that was no main process has been reaped."""
        self._roots.pop(pid, None)
        self._given_up.discard(pid)

    def step(self) -> list[tuple[int, int | None, int]]:
        """After reaping, and on every turn of the launcher's loop: signal what is due; returns
        (pid, start ticks, exit code) of each task whose leftovers are all gone now."""
        if not (self._just_ended or self._ending or self._roots or self._stopping):
            return []
        # After the batch's main processes were reaped: their orphans are re-parented already
        # (before an ended process can be waited for), and they are no children any more.
        self._survey()
        now = self._clock()
        owned: dict[_Task, list[int]] = {}
        for pid, root in list(self._roots.items()):
            if root.owner is not None:
                owned.setdefault(root.owner, []).append(pid)
            else:
                self._unowned(pid, root, now)
        finished = []
        for task in self._just_ended:
            if task not in owned:  # the usual case: it left nothing
                self._forget(task)
                assert task.code is not None
                finished.append((task.pid, task.start_ticks, task.code))
                continue
            deadline = now + self.grace_s
            task.deadline = deadline if task.deadline is None else min(task.deadline, deadline)
            self._ending.add(task)
        self._just_ended.clear()
        for task in list(self._ending):
            roots = owned.get(task, [])
            assert task.deadline is not None and task.code is not None
            if roots and now < task.deadline + GIVE_UP_S:
                self._advance(task, roots, now)
                continue
            self._ending.discard(task)
            self._forget(task)
            for pid in roots:  # given up on: reaped when they end, like any other child
                del self._roots[pid]
                self._given_up.add(pid)
            finished.append((task.pid, task.start_ticks, task.code))
        for task in self._stopping:
            assert task.deadline is not None
            if now >= task.deadline:
                self._kill([task.pid, *owned.get(task, [])])
        return finished

    def due_in(self) -> float | None:
        """Seconds until the next deadline (or give-up), None when nothing waits for one."""
        if not (self._ending or self._roots or self._stopping):
            return None
        times = [t.deadline for t in self._stopping | self._ending if t.deadline is not None]
        times += [t.deadline + GIVE_UP_S for t in self._ending if t.deadline is not None]
        times += [r.deadline + GIVE_UP_S for r in self._roots.values() if r.deadline is not None]
        times += [r.deadline for r in self._roots.values() if r.deadline is not None]
        now = self._clock()
        future = [t - now for t in times if t > now]
        return min(future) if future else None

    # ------------------------------------------------------------------ inside

    def _advance(self, task: _Task, roots: list[int], now: float) -> None:
        assert task.deadline is not None
        if now < task.deadline:
            self._term(task, [pid for pid in roots if pid not in task.termed])
        else:
            self._kill(roots)

    def _unowned(self, pid: int, root: _Root, now: float) -> None:
        if root.deadline is None:
            if any(task.code is None for task in root.suspects):
                return  # one of them still runs: it may be that one's
            root.deadline = now + self.grace_s
            self._terminate(descendants([pid]))
        elif now < root.deadline + GIVE_UP_S:
            if now >= root.deadline:
                self._kill([pid])
        else:
            del self._roots[pid]
            self._given_up.add(pid)

    def _survey(self) -> None:
        """Attribute the launcher's children that are new since the last look. Every task, root
        and given-up one is still a child (none is reaped unseen): when the count matches,
        nothing is new, and that is the usual end of a task: one pread, no parsing."""
        count, raw = self._children.count()
        if count == len(self._running) + len(self._roots) + len(self._given_up):
            return
        present = OwnChildren.parse(raw)
        for pid in present:
            if pid not in self._running and pid not in self._roots and pid not in self._given_up:
                self._roots[pid] = self._attribute(pid)
        if len(present) < len(self._running) + len(self._roots) + len(self._given_up):
            gone = (set(self._roots) | self._given_up) - set(present)  # (never expected)
            for pid in gone:
                self.reaped(pid)

    def _attribute(self, pid: int) -> _Root:
        marker = environ_value(pid, _MARKER)
        task = self._by_marker.get(marker) if marker else None
        if task is None:
            ids = group_and_session(pid)
            for leader in reversed(ids) if ids else ():  # the session, then the group
                task = self._running.get(leader) or self._ended(leader)
                if task is not None:
                    break
        if task is not None:
            return _Root(task)
        return _Root(None, frozenset(self._running.values()))

    def _ended(self, pid: int) -> _Task | None:
        """The task whose main process was `pid` and whose leftovers are not all gone."""
        return next((t for t in [*self._just_ended, *self._ending] if t.pid == pid), None)

    def _owned(self, task: _Task) -> list[int]:
        return [pid for pid, root in self._roots.items() if root.owner is task]

    def _forget(self, task: _Task) -> None:
        if task.marker and self._by_marker.get(task.marker) is task:
            del self._by_marker[task.marker]

    def _term(self, task: _Task, roots: list[int]) -> None:
        fresh = [pid for pid in descendants(roots) if pid not in task.termed]
        task.termed.update(fresh)
        self._terminate(fresh)

    def _kill(self, roots: list[int]) -> None:
        for pid in descendants(roots):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self._send(pid, signal.SIGKILL)

    def _terminate(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                self._send(pid, signal.SIGTERM)
                self._send(pid, signal.SIGCONT)  # a frozen (paused) one must wake to handle it
