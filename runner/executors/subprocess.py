"""Host-subprocess executor: each task runs in its own session/process group, output to files.

Tasks are started by the launcher, a small process beside the daemon (runner/executors/launcher.py):
it is their parent, reaps them and writes each one's exit status to a file in its task folder,
and it stays until its last task has ended even when the daemon is gone. So the exit code is
known even when the daemon was down when the task ended. A start too large for one message to
the launcher is made by the daemon itself, under a tiny POSIX-shell wrapper that survives
SIGTERM long enough to write the command's exit status to the same file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
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
from runner.executors.procfs import read_small_file, start_ticks
from runner.executors.spawn import spawn_in_new_session
from runner.models import StepRecord

# $0 is a marker naming the task (visible in `ps`, used to find orphans); $1 the exit-status file;
# $2 the working folder. `trap :` (not `trap ''`) so the workload keeps the default SIGTERM action.
_WRAPPER = (
    'f=$1; cd "$2" || exit 126; shift 2; trap : HUP INT TERM; '
    '"$@"; rc=$?; printf "%s\\n" "$rc" >"$f"; exit "$rc"'
)
MARKER_PREFIX = "localjobs-task:"
# Set in the environment of every task the launcher starts: `<MARKER_PREFIX><owner>:<task name>`.
TASK_MARKER_VARIABLE = "LOCALJOBS_TASK"
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


class SubprocessWorkload:
    """A task process, and how its end is learnt:

    - started by the launcher (runner/executors/launcher.py), its parent: the launcher says when it
      ended and with what status; should the launcher go away first, the process's pidfd (held
      meanwhile) and the exit-status file tell instead;
    - started by this daemon under the `sh` wrapper (a start too large for the launcher), or
      adopted after a restart: the exit watcher (runner/executors/exits.py) watches its pidfd
      and the exit-status file gives the status.
    The constructor does not touch the event loop: any thread may build one."""

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
    ):
        self._pid = pid
        self._start_ticks = start_ticks
        self._exit_file = exit_file
        self._is_child = is_child
        self._watcher = watcher
        self._loop = loop
        self._launched = launched
        self._watch: ProcessWatch | None = None
        if launched is None:
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
        lost = "exit status lost (the process was killed)"
        launched = self._launched
        if launched is not None:
            code = await launched.exited
            if code is not None:
                self._close_pidfd()
                return ExitStatus.from_exit_code(code)
            # The launcher went away first: watch the process through the pidfd held for this.
            # Its parent is gone, so nobody will record its exit status.
            lost = "exit status lost: the task launcher stopped before the task ended"
            pidfd, launched.pidfd = launched.pidfd, -1
            try:
                self._watch = self._watcher.watch(self._loop, self._pid, self._exit_status, pidfd=pidfd)
            except RuntimeError:  # shutting down (the watcher closed the pidfd): nobody waits now
                return ExitStatus(exit_code=None, reason="the daemon stopped watching")
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
        # Grandchildren may have left the group (setsid): remember them before the group dies.
        strays = self._descendants()
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)  # a frozen (paused) group must wake to handle SIGTERM
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

    async def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    async def release(self) -> None:
        if self._watch is not None:
            self._watcher.forget(self._watch)
        self._close_pidfd()


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
            pid, start_ticks(pid), paths.exit_file, watcher=watcher, loop=loop, is_child=True
        )
    except BaseException:  # unwatched, it would run on unseen: end it
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        raise


class SubprocessExecutor:
    def __init__(self, python_executable: str, owner: str, *, launcher_log: Path) -> None:
        self._python = python_executable
        # In every wrapper's argv: which daemon (data dir) and task it belongs to.
        self._marker = f"{MARKER_PREFIX}{owner}:"
        self._exits = ExitWatcher()
        self._launcher = LauncherClient(self._exits, launcher_log)

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
        try:
            return await asyncio.to_thread(
                _prepare_and_spawn, task, launch.step.spec.config, wrapped, self._exits, loop
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
        )

    async def recover(
        self, step: StepRecord, handle: dict[str, Any], task_paths: list[TaskPaths]
    ) -> SubprocessWorkload | ExitStatus | None:
        (paths,) = task_paths
        pid = handle.get("pid")
        if isinstance(pid, int) and handle.get("boot_id") == BOOT_ID:
            started = start_ticks(pid)
            # A bare pid is no identity: it must also be the same process start on the same boot.
            if started is not None and started == handle.get("start_ticks"):
                return self._adopt(pid, started, paths.exit_file)
            # Gone, not even a zombie: its parent wrote its status before reaping it, or never will.
            return read_exit_file(paths.exit_file)
        found = self.task_processes().get(os.path.basename(paths.work_dir))
        if found is not None:
            return self._adopt(found.pid, start_ticks(found.pid), paths.exit_file)
        status = read_exit_file(paths.exit_file)
        if status is None and pid is None and _exists(paths.stdout_file):
            # Spawned (the spawn creates its output file) before its pid was recorded, and ended;
            # a zombie not yet recorded is not found by its environment: give its parent a moment.
            # Never start such a step again (it ran): at most, its status is lost.
            await asyncio.sleep(_UNRECORDED_WAIT_S)
            status = read_exit_file(paths.exit_file)
            return status or ExitStatus(exit_code=None, reason="exit status lost (it ended unseen)")
        return status

    def _adopt(self, pid: int, start_ticks: int | None, exit_file: str) -> SubprocessWorkload:
        return SubprocessWorkload(
            pid, start_ticks, exit_file, watcher=self._exits, loop=asyncio.get_running_loop()
        )

    async def close(self) -> None:
        """Let the launcher go and stop watching (at shut-down): processes left running are for
        the next daemon to adopt."""
        await self._launcher.close()
        self._exits.close()

    def task_processes(self) -> dict[str, psutil.Process]:
        """This daemon's live task processes, by task name: found by the marker in their
        environment (started by the launcher) or in the argv of their `sh` wrapper."""
        found: dict[str, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline", "environ"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info.get("cmdline") or []
                tag = cmdline[3] if len(cmdline) > 3 else ""
                if not tag.startswith(self._marker):
                    tag = (proc.info.get("environ") or {}).get(TASK_MARKER_VARIABLE, "")
                    if not tag.startswith(self._marker):
                        continue
                    # A task's descendants inherit its environment: the task is the session leader.
                    if os.getsid(proc.pid) != proc.pid:
                        continue
                found[tag.removeprefix(self._marker)] = proc
        return found

    def sweep_orphans(self, known_tasks: set[str]) -> int:
        """Kill the process groups of task wrappers that no unfinished step refers to."""
        killed = 0
        for name, proc in self.task_processes().items():
            if name in known_tasks:
                continue
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
                killed += 1
        return killed
