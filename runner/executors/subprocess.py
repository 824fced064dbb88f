"""Host-subprocess executor: each task runs in its own session/process group, output to files.

Tasks are started by the launcher, a small process beside the daemon (runner/executors/launcher.py):
it is their parent, reaps them and writes each one's exit status to a file in its task folder,
and it stays until its last task has ended even when the daemon is gone. So the exit code is
known even when the daemon was down when the task ended. A start too large for one message to
the launcher is made by the daemon itself, under a tiny POSIX-shell wrapper that survives
SIGTERM long enough to write the command's exit status to the same file.

Nothing is left behind: when a task's main process ends, whatever it left running is ended too
(SIGTERM, the grace period, SIGKILL) and the task counts as ended only once that is gone, so its
output is read to the end. The launcher does it for the tasks it started
(runner/executors/leftovers.py); for the others (the wrapper's, adopted ones, or when the launcher
died) the daemon finds them by their marker (runner/executors/strays.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from runner.executors.base import (
    ExecutorError,
    ExitStatus,
    Launch,
    TaskLaunch,
    TaskPaths,
    VisiblePaths,
    prepare_task_folders,
)
from runner.executors.exits import ExitWatcher, ProcessWatch
from runner.executors.launch_client import LauncherClient, RequestTooLarge, Started, signal_task_group
from runner.executors.leftovers import GIVE_UP_S, TASK_MARKER_VARIABLE
from runner.executors.procfs import read_small_file, start_ticks
from runner.executors.spawn import spawn_in_new_session
from runner.executors.strays import MARKER_PREFIX, end_leftovers, marked_processes, with_marker
from runner.models import StepRecord

# $0 is a marker naming the task (visible in `ps`, used to find orphans); $1 the exit-status file;
# $2 the working folder. `trap :` (not `trap ''`) so the workload keeps the default SIGTERM action.
# The umask is set once the workload has ended (it must not inherit it): the file is 0600.
_WRAPPER = (
    'f=$1; cd "$2" || exit 126; shift 2; trap : HUP INT TERM; '
    '"$@"; rc=$?; umask 077; printf "%s\\n" "$rc" >"$f"; exit "$rc"'
)
_KILL_WAIT_S = 5.0
_EXIT_FILE_WAIT_S = 2.0
_UNRECORDED_WAIT_S = 0.1


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


def read_exit_file(path: str) -> ExitStatus | None:
    data = read_small_file(path)
    text = data.decode("ascii", "replace").strip() if data is not None else ""
    if not text.lstrip("-").isdigit():
        return None
    return ExitStatus.from_exit_code(int(text))


@dataclass(frozen=True, slots=True)
class LeftoverRule:
    """What to do with what a task leaves running, when no launcher of this daemon does it."""

    marker: str  # the task's LOCALJOBS_TASK value: how its processes are found
    grace_s: float | None  # SIGTERM to SIGKILL; None: they are kept


class SubprocessWorkload:
    """A task process, and how its end is learnt:

    - started by the launcher (runner/executors/launcher.py), its parent: the launcher says when it
      ended and with what status; should the launcher go away first, the process's pidfd (held
      meanwhile) and the exit-status file tell instead;
    - started by this daemon under the `sh` wrapper (a start too large for the launcher), or
      adopted after a restart: the exit watcher (runner/executors/exits.py) watches its pidfd
      and the exit-status file gives the status;
    - its main process ended before this daemon started (`ended`), leaving processes running.
    The end comes once what it left running is gone too (`leftovers` says how, when no launcher
    saw the end). The constructor does not touch the event loop: any thread may build one."""

    def __init__(
        self,
        pid: int,
        start_ticks: int | None,
        exit_file: str,
        *,
        watcher: ExitWatcher,
        loop: asyncio.AbstractEventLoop,
        is_child: bool = False,
        launched: Started | None = None,
        launcher: LauncherClient | None = None,
        leftovers: LeftoverRule | None = None,
        ended: ExitStatus | None = None,
    ):
        self._pid = pid
        self._start_ticks = start_ticks
        self._exit_file = exit_file
        self._is_child = is_child
        self._watcher = watcher
        self._loop = loop
        self._launched = launched
        self._launcher = launcher
        self._leftovers = leftovers
        self._ended_status = ended
        self._stop_deadline: float | None = None  # loop time, once a stop is under way
        self._watch: ProcessWatch | None = None
        if launched is None and ended is None:
            self._watch = watcher.watch(loop, pid, self._exit_status)
        self._final: asyncio.Future[ExitStatus] | None = None

    @property
    def handle(self) -> dict[str, Any]:
        return {"kind": "subprocess", "pid": self._pid, "start_ticks": self._start_ticks, "boot_id": BOOT_ID}

    @property
    def details(self) -> dict[str, Any]:
        return {"pid": self._pid, "pgid": self._pid}

    def _ended(self) -> bool:
        """True from the moment the process may have been reaped: its pid is then not ours."""
        if self._ended_status is not None:
            return True
        if self._watch is not None:
            return self._watch.ended
        return self._launched is not None and self._launched.exited.done()

    def _exit_status(self) -> ExitStatus | None:
        """Runs in the watcher thread once the process has ended; None: not known yet."""
        returncode = None
        if self._is_child:
            # Already dead (the pidfd said so): this reaps it without blocking.
            with contextlib.suppress(ChildProcessError):
                returncode = os.waitstatus_to_exitcode(os.waitpid(self._pid, 0)[1])
        status = read_exit_file(self._exit_file)
        if status is not None:
            return status
        # The wrapper itself was killed (SIGKILL to the group): the workload went with it.
        if returncode is not None and returncode < 0:
            return ExitStatus(exit_code=None, signal=-returncode)
        if returncode is not None:
            return ExitStatus(exit_code=returncode)
        return None

    def _settled(self) -> asyncio.Future[ExitStatus]:
        if self._final is None:
            self._final = asyncio.ensure_future(self._settle())
        return self._final

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._settled())

    async def _settle(self) -> ExitStatus:
        ended = self._ended_status
        status = ended if ended is not None else await self._main_status()
        if status.reason == _NOT_WATCHED:
            return status
        rule = self._leftovers
        seen_by_launcher = self._watch is None and self._ended_status is None
        if rule is not None and rule.grace_s is not None and not seen_by_launcher:
            # No launcher of this daemon saw the end: what it left is found by its marker.
            grace_s, term = rule.grace_s, True
            if self._stop_deadline is not None:  # its group had its SIGTERM from stop()
                grace_s, term = max(0.0, self._stop_deadline - self._loop.time()), False
            await end_leftovers(rule.marker, grace_s, term=term)
        return status

    async def _main_status(self) -> ExitStatus:
        lost = "exit status lost (the process was killed)"
        launched = self._launched
        if launched is not None:
            code = await launched.exited
            if code is not None:
                # Told once what it left running was ended too: the launcher saw to that.
                self._close_pidfd()
                return ExitStatus.from_exit_code(code)
            # The launcher went away first: watch the process through the pidfd held for this.
            # Its parent is gone, so nobody will record its exit status.
            lost = "exit status lost: the task launcher stopped before the task ended"
            pidfd, launched.pidfd = launched.pidfd, -1
            try:
                self._watch = self._watcher.watch(self._loop, self._pid, self._exit_status, pidfd=pidfd)
            except RuntimeError:  # shutting down (the watcher closed the pidfd): nobody waits now
                return ExitStatus(exit_code=None, reason=_NOT_WATCHED)
        assert self._watch is not None
        status = await self._watch.future
        if status is None:
            # The parent of an adopted process (a launcher of an earlier daemon) writes its
            # status just after the pidfd said it ended: wait a little for that.
            status = await _exit_file_within(self._exit_file, _EXIT_FILE_WAIT_S)
        return status or ExitStatus(exit_code=None, reason=lost)

    def _close_pidfd(self) -> None:
        if self._launched is not None and self._launched.pidfd >= 0:
            os.close(self._launched.pidfd)
            self._launched.pidfd = -1

    def _signal_group(self, sig: int) -> None:
        if self._ended():  # reaped, or about to be: the pid may be someone else's by now
            return
        signal_task_group(self._pid, self._launched.pidfd if self._launched is not None else -1, sig)

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._pid).children(recursive=True)
        except psutil.Error:
            return []

    async def stop(self, grace_s: float) -> None:
        if self._ended():
            return
        deadline = self._loop.time() + grace_s
        self._stop_deadline = deadline if self._stop_deadline is None else min(self._stop_deadline, deadline)
        launched = self._launched
        termed = False
        if launched is not None and self._launcher is not None and self._launcher.stop(launched, grace_s):
            # The launcher ends the whole tree (what left the group and session too: it sees
            # them) and tells the end once all of it is gone.
            settled = self._settled()
            either: list[asyncio.Future[Any]] = [settled, launched.exited]
            await asyncio.wait(
                either,
                timeout=grace_s + GIVE_UP_S + 1.0,
                return_when=asyncio.FIRST_COMPLETED,
            )
            told = launched.exited.done() and not launched.exited.cancelled()
            if settled.done() or (told and launched.exited.result() is not None):
                return
            # The launcher went away meanwhile (or is stuck): the rest is the daemon's to do.
            grace_s, termed = max(0.0, deadline - self._loop.time()), True
        # Grandchildren may have left the group (setsid): remember them before the group dies.
        strays = self._descendants()
        if not termed:  # (by the launcher) never a second SIGTERM
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

    async def release(self) -> None:
        if self._watch is not None:
            self._watcher.forget(self._watch)
        self._close_pidfd()


_NOT_WATCHED = "the daemon stopped watching"
_FREEZE_WAIT_S = 2.0
_FROZEN = frozenset(
    {psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD}
)


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


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but not ours to look at
    return True


async def _exit_file_within(path: str, limit_s: float) -> ExitStatus | None:
    delay, waited = 0.005, 0.0
    while waited < limit_s:
        await asyncio.sleep(delay)
        waited += delay
        delay = min(delay * 2, 0.25)
        status = read_exit_file(path)
        if status is not None:
            return status
    return None


def _prepare_and_spawn(
    task: TaskLaunch,
    config: dict[str, Any],
    wrapped: list[str],
    watcher: ExitWatcher,
    loop: asyncio.AbstractEventLoop,
    leftovers: LeftoverRule,
) -> SubprocessWorkload:
    paths = task.paths
    prepare_task_folders(paths, config)
    # posix_spawn, not asyncio's subprocess: nothing ties the child's life to this event loop,
    # so a step can outlive the daemon (to be adopted by the next start) when asked to. SIGPIPE
    # goes back to its default action (as subprocess's restore_signals does), or `yes | head`
    # would end in an EPIPE error.
    pid = spawn_in_new_session(
        "/bin/sh",
        wrapped,
        task.env,
        stdin=os.devnull,
        stdout=paths.stdout_file,
        stderr=paths.stderr_file,
        output_flags=os.O_WRONLY | os.O_CREAT | os.O_APPEND,
    )
    try:
        return SubprocessWorkload(
            pid,
            start_ticks(pid),
            paths.exit_file,
            watcher=watcher,
            loop=loop,
            is_child=True,
            leftovers=leftovers,
        )
    except BaseException:  # unwatched, it would run on unseen: end it
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise


class SubprocessExecutor:
    def __init__(
        self,
        python_executable: str,
        owner: str,
        *,
        launcher_log: Path,
        token_file: Path | None,
        leftover_grace_s: float | None = None,
    ) -> None:
        """`leftover_grace_s`: what a task leaves running when its main process ends gets
        SIGTERM, this long, then SIGKILL; None keeps it running (as the reference does)."""
        self._python = python_executable
        self._token_file = str(token_file) if token_file is not None else None
        # In every wrapper's argv: which daemon (data dir) and task it belongs to.
        self._marker = f"{MARKER_PREFIX}{owner}:"
        self._leftover_grace_s = leftover_grace_s
        self._exits = ExitWatcher()
        self._launcher = LauncherClient(self._exits, launcher_log, leftover_grace_s=leftover_grace_s)

    def _resolve(self, argv: list[str], env: dict[str, str]) -> list[str]:
        program = argv[0]
        if program in ("python", "python3"):
            return [self._python, *argv[1:]]
        if "/" in program:
            return argv
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        if found is None:
            raise ExecutorError(f"Failed to start subprocess: executable not found: {program}")
        return [found, *argv[1:]]

    def visible_paths(self, paths: TaskPaths) -> VisiblePaths:
        return VisiblePaths(
            scratch_dir=paths.scratch_dir,
            config_dir=paths.config_dir,
            config_file=paths.config_file,
            persistent_dir=paths.persistent_dir,
            token_file=self._token_file,
        )

    def callback_url(self, base_url: str) -> str:
        return base_url

    async def start(self, launch: Launch) -> SubprocessWorkload:
        (task,) = launch.tasks  # a host subprocess step is always one task
        argv = self._resolve(launch.argv, task.env)
        marker = self._marker + task.task_name
        task = TaskLaunch(task.task_name, {**task.env, TASK_MARKER_VARIABLE: marker}, task.paths)
        try:
            return await self._start_by_launcher(task, launch.step.spec.config, argv)
        except RequestTooLarge:
            pass
        # Too large for one message to the launcher: the folders and the spawn in a worker thread
        # of the daemon (the spawn blocks until the child has exec'd, and releases the GIL), under
        # the `sh` wrapper that records the exit status.
        paths = task.paths
        wrapped = ["/bin/sh", "-c", _WRAPPER, marker, paths.exit_file, paths.work_dir, *argv]
        loop = asyncio.get_running_loop()
        rule = self._rule(task.task_name)
        try:
            return await asyncio.to_thread(
                _prepare_and_spawn, task, launch.step.spec.config, wrapped, self._exits, loop, rule
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExecutorError(f"Failed to start subprocess: {exc}") from exc

    async def _start_by_launcher(
        self, task: TaskLaunch, config: dict[str, Any], argv: list[str]
    ) -> SubprocessWorkload:
        paths = task.paths
        started = await self._launcher.start(
            {
                "argv": argv,
                "env": task.env,
                "work_dir": paths.work_dir,
                "folders": paths.folders,
                "config_file": paths.config_file,
                "config": json.dumps(config),
                "stdout": paths.stdout_file,
                "stderr": paths.stderr_file,
                "exit_file": paths.exit_file,
            }
        )
        return SubprocessWorkload(
            started.pid,
            started.start_ticks,
            paths.exit_file,
            watcher=self._exits,
            loop=asyncio.get_running_loop(),
            launched=started,
            launcher=self._launcher,
            leftovers=self._rule(task.task_name),  # for when the launcher dies before the task
        )

    def _rule(self, task_name: str) -> LeftoverRule:
        return LeftoverRule(self._marker + task_name, self._leftover_grace_s)

    async def recover(
        self, step: StepRecord, handle: dict[str, Any], task_paths: list[TaskPaths]
    ) -> SubprocessWorkload | ExitStatus | None:
        (paths,) = task_paths
        name = os.path.basename(paths.work_dir)
        pid = handle.get("pid")
        if isinstance(pid, int) and handle.get("boot_id") == BOOT_ID:
            started = start_ticks(pid)
            # A bare pid is no identity: it must also be the same process start on the same boot.
            if started is not None and started == handle.get("start_ticks"):
                return self._adopt(pid, started, paths.exit_file, name)
            # Gone, not even a zombie: its parent wrote its status before reaping it, or never will.
            return await self._after_end(read_exit_file(paths.exit_file), handle, paths.exit_file, name)
        found = self.task_processes().get(name)
        if found is not None:
            return self._adopt(found.pid, start_ticks(found.pid), paths.exit_file, name)
        status = await self._after_end(read_exit_file(paths.exit_file), handle, paths.exit_file, name)
        if status is None and pid is None and _exists(paths.stdout_file):
            # Spawned (the spawn creates its output file) before its pid was recorded, and ended;
            # a zombie not yet recorded is not found by its environment: give its parent a moment.
            # Never start such a step again (it ran): at most, its status is lost.
            await asyncio.sleep(_UNRECORDED_WAIT_S)
            status = read_exit_file(paths.exit_file)
            return status or ExitStatus(exit_code=None, reason="exit status lost (it ended unseen)")
        return status

    def _adopt(self, pid: int, start_ticks: int | None, exit_file: str, name: str) -> SubprocessWorkload:
        return SubprocessWorkload(
            pid,
            start_ticks,
            exit_file,
            watcher=self._exits,
            loop=asyncio.get_running_loop(),
            leftovers=self._rule(name),
        )

    async def _after_end(
        self, status: ExitStatus | None, handle: dict[str, Any], exit_file: str, name: str
    ) -> SubprocessWorkload | ExitStatus | None:
        """The main process ended while the daemon was down: if it left processes running, a
        workload that ends them (and reads the output meanwhile) before it reports `status`."""
        rule = self._rule(name)
        if status is None or rule.grace_s is None:
            return status
        if not await asyncio.to_thread(with_marker, rule.marker):
            return status
        pid = handle.get("pid")
        return SubprocessWorkload(
            pid if isinstance(pid, int) else 0,
            handle.get("start_ticks"),
            exit_file,
            watcher=self._exits,
            loop=asyncio.get_running_loop(),
            leftovers=rule,
            ended=status,
        )

    async def close(self) -> None:
        """Let the launcher go and stop watching (at shut-down): processes left running are for
        the next daemon to adopt."""
        await self._launcher.close()
        self._exits.close()

    def task_processes(self) -> dict[str, psutil.Process]:
        """This daemon's live task processes, by task name: found by the marker in their
        environment (started by the launcher) or in the argv of their `sh` wrapper. A task's
        descendants carry its marker too: the task is the session leader that started first."""
        found: dict[str, psutil.Process] = {}
        for name, procs in marked_processes(self._marker).items():
            leaders = [(_started_at(p), p) for p in procs if _leads_session(p)]
            if leaders:
                found[name] = min(leaders, key=lambda pair: pair[0])[1]
        return found

    def sweep_orphans(self, known_tasks: set[str]) -> int:
        """SIGKILL every process of this daemon's tasks that no unfinished step knows: task
        processes and whatever they left running, in their group or session or not (a session
        leader's whole group goes too: a member may have cleared its environment). With
        leftovers kept, those of a task whose main process has ended stay. Returns how many."""
        killed = 0
        for name, procs in marked_processes(self._marker).items():
            if name in known_tasks or (self._leftover_grace_s is None and _main_has_ended(procs)):
                continue
            for proc in procs:
                with contextlib.suppress(psutil.Error, OSError):
                    leader = _leads_session(proc)
                    proc.kill()
                    killed += 1
                    if leader:  # a zombie until reaped: the group's number is still its own
                        os.killpg(proc.pid, signal.SIGKILL)
        return killed


def _leads_session(proc: psutil.Process) -> bool:
    try:
        return os.getsid(proc.pid) == proc.pid
    except OSError:
        return False


def _started_at(proc: psutil.Process) -> float:
    try:
        return float(proc.create_time())
    except psutil.Error:
        return float("inf")


def _main_has_ended(procs: list[psutil.Process]) -> bool:
    """Its exit status is in its folder (which every process of the task has in its environment):
    what carries the marker is then what it left behind."""
    for proc in procs:
        config_dir = (proc.info.get("environ") or {}).get("NEMO_JOB_STEP_CONFIG_STORAGE_PATH")
        if config_dir:
            return _exists(os.path.join(os.path.dirname(config_dir), "exit_code"))
    return False
