"""Task processes found by the marker in their environment, for what no launcher of this daemon
sees (leftovers.py, in the launcher, ends the rest): the start-up sweep, and the leftovers of a
task that this daemon started itself under the `sh` wrapper, adopted after a restart, or whose
launcher died. Each search is a scan of /proc: it runs off the event loop, and only on those
paths, never on the usual end of a task.

Every process of a task carries `LOCALJOBS_TASK=localjobs-task:<owner>:<task>` in its environment
(inherited by its descendants, unless one clears it); the `sh` wrapper also has it as its `$0`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

import psutil

from runner.executors.host import launcher
from runner.executors.host.leftovers import GIVE_UP_S
from runner.executors.host.protocol import TASK_MARKER_VARIABLE

KILL_WAIT_S = 5.0
# How a launcher shows in `ps`: `-m` and its module, `runner.executors.host.launcher` (under
# `localjobs.` when installed). Before the host executor had a package of its own the module was
# `runner.executors.launcher`: a launcher started by a daemon of that version is still the
# parent of its tasks' leftovers after an upgrade and a restart, and still ends them itself.
_LAUNCHER_MODULES = frozenset({launcher.__name__, launcher.__name__.replace(".host.launcher", ".launcher")})
_POLL_MIN_S = 0.05
_POLL_MAX_S = 0.5


@dataclass(frozen=True, slots=True)
class LeftoverRule:
    """What to do with what a task leaves running, when no launcher of this daemon does it."""

    marker: str  # the task's LOCALJOBS_TASK value: how its processes are found
    grace_s: float | None  # SIGTERM to SIGKILL; None: they are kept


def marked_processes(prefix: str) -> dict[str, list[psutil.Process]]:
    """Live processes whose marker starts with `prefix`, by the rest of the marker (the task
    name when `prefix` names an owner). Each has `.info` with its cmdline and environ."""
    found: dict[str, list[psutil.Process]] = {}
    for proc in psutil.process_iter(["cmdline", "environ"]):
        with contextlib.suppress(psutil.Error):
            cmdline = proc.info.get("cmdline") or []
            tag = cmdline[3] if len(cmdline) > 3 else ""
            if not tag.startswith(prefix):
                tag = (proc.info.get("environ") or {}).get(TASK_MARKER_VARIABLE, "")
                if not tag.startswith(prefix):
                    continue
            found.setdefault(tag.removeprefix(prefix), []).append(proc)
    return found


def with_marker(marker: str) -> list[psutil.Process]:
    """The live processes of one task."""
    return marked_processes(marker).get("", [])


def _ended_by_a_launcher(procs: list[psutil.Process]) -> bool:
    """A launcher that ends leftovers is a subreaper: theirs are re-parented to it, and it sends
    SIGTERM and SIGKILL itself (a second SIGTERM is not ours to send)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            parent = proc.parent()
            if parent is not None and not _LAUNCHER_MODULES.isdisjoint(parent.cmdline()):
                return True
    return False


async def end_leftovers(marker: str, grace_s: float, *, term: bool = True) -> int:
    """End the processes carrying `marker`: SIGTERM (unless `term` is false: sent already),
    `grace_s`, then SIGKILL; returns once they are gone (bounded: grace_s + KILL_WAIT_S, more
    when a launcher ends them). Returns how many there were."""
    found = await asyncio.to_thread(with_marker, marker)
    if not found:
        return 0
    if await asyncio.to_thread(_ended_by_a_launcher, found):
        # Give it its grace and its give-up time; SIGKILL is then ours, should it have gone.
        term, grace_s = False, grace_s + GIVE_UP_S + 1.0
    if term:
        for proc in found:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(signal.SIGTERM)
                proc.send_signal(signal.SIGCONT)  # a frozen (paused) one must wake to handle it
    if not await _gone_within(marker, grace_s, kill=False):
        await _gone_within(marker, KILL_WAIT_S, kill=True)
    return len(found)


async def _gone_within(marker: str, limit_s: float, *, kill: bool) -> bool:
    deadline = time.monotonic() + limit_s
    delay = _POLL_MIN_S
    while True:
        left = await asyncio.to_thread(with_marker, marker)
        for proc in left if kill else ():
            with contextlib.suppress(psutil.Error):
                proc.kill()  # psutil checks first that the pid is still this process
        if not left:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        await asyncio.sleep(min(delay, remaining))
        delay = min(delay * 2, _POLL_MAX_S)
