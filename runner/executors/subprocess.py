"""Host-subprocess executor: each task runs in its own session/process group, output to files.

The command runs under a tiny POSIX-shell wrapper that survives SIGTERM long enough to write the
command's exit status to a file. So the exit code is known even when the daemon was down when the
task ended, and the daemon never depends on being the parent to learn it.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from runner.executors.spawn import spawn_in_new_session
from runner.models import StepRecord

# $0 is a marker naming the task (visible in `ps`, used to find orphans); $1 the exit-status file;
# $2 the working folder. `trap :` (not `trap ''`) so the workload keeps the default SIGTERM action.
_WRAPPER = (
    'f=$1; cd "$2" || exit 126; shift 2; trap : HUP INT TERM; '
    '"$@"; rc=$?; printf "%s\\n" "$rc" >"$f"; exit "$rc"'
)
MARKER_PREFIX = "localjobs-task:"
_KILL_WAIT_S = 5.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


BOOT_ID = _boot_id()


def _read_small_file(path: str) -> bytes | None:
    # os-level calls: this runs for every task, and Python's file objects cost more than the read.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def read_exit_file(path: str) -> ExitStatus | None:
    data = _read_small_file(path)
    text = data.decode("ascii", "replace").strip() if data is not None else ""
    if not text.lstrip("-").isdigit():
        return None
    return ExitStatus.from_exit_code(int(text))


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22): with the
    pid and the boot id, an identity that a reused pid cannot fake."""
    stat = _read_small_file(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])


class SubprocessWorkload:
    """A task's wrapper process, watched through a pidfd (no polling, works for non-children)."""

    def __init__(self, pid: int, start_ticks: int | None, exit_file: str, is_child: bool):
        self._pid = pid
        self._start_ticks = start_ticks
        self._exit_file = exit_file
        self._is_child = is_child
        self._loop = asyncio.get_running_loop()
        self._exit: asyncio.Future[ExitStatus] = self._loop.create_future()
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone (and reaped by someone else)
            self._pidfd = None
            self._loop.call_soon(self._on_exit)
        else:
            self._loop.add_reader(self._pidfd, self._on_exit)

    @property
    def handle(self) -> dict[str, Any]:
        return {"kind": "subprocess", "pid": self._pid, "start_ticks": self._start_ticks, "boot_id": BOOT_ID}

    @property
    def details(self) -> dict[str, Any]:
        return {"pid": self._pid, "pgid": self._pid}

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def _on_exit(self) -> None:
        self._close_pidfd()
        if self._exit.done():
            return
        try:
            self._exit.set_result(self._exit_status())
        except Exception as exc:
            self._exit.set_exception(exc)

    def _exit_status(self) -> ExitStatus:
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
        return ExitStatus(exit_code=None, reason="exit status lost (the process was killed)")

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._pid, sig)

    def _descendants(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self._pid).children(recursive=True)
        except psutil.Error:
            return []

    async def stop(self, grace_s: float) -> None:
        if self._exit.done():
            return
        # Grandchildren may have left the group (setsid): remember them before the group dies.
        strays = self._descendants()
        self._signal_group(signal.SIGTERM)
        self._signal_group(signal.SIGCONT)  # a frozen (paused) group must wake to handle SIGTERM
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exit), grace_s)
        self._signal_group(signal.SIGKILL)
        for proc in strays + self._descendants():
            with contextlib.suppress(psutil.Error):
                proc.kill()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._exit), _KILL_WAIT_S)

    async def pause(self) -> None:
        self._signal_group(signal.SIGSTOP)

    async def resume(self) -> None:
        self._signal_group(signal.SIGCONT)

    async def release(self) -> None:
        self._close_pidfd()


def _prepare_and_spawn(
    task: TaskLaunch, config: dict[str, Any], wrapped: list[str]
) -> tuple[int, int | None]:
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
    return pid, _start_ticks(pid)


class SubprocessExecutor:
    def __init__(self, python_executable: str, owner: str) -> None:
        self._python = python_executable
        # In every wrapper's argv: which daemon (data dir) and task it belongs to.
        self._marker = f"{MARKER_PREFIX}{owner}:"

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
        paths = task.paths
        wrapped = [
            "/bin/sh",
            "-c",
            _WRAPPER,
            self._marker + task.task_name,
            paths.exit_file,
            paths.work_dir,
            *argv,
        ]
        # One trip to a worker thread for the file-system calls and the spawn, which blocks until
        # the child has exec'd (vfork semantics; ~0.3-1.5 ms under load): the event loop serves
        # other jobs meanwhile. The spawn releases the GIL while it waits (runner/executors/spawn.py).
        try:
            pid, ticks = await asyncio.to_thread(_prepare_and_spawn, task, launch.step.spec.config, wrapped)
        except (OSError, ValueError) as exc:
            raise ExecutorError(f"Failed to start subprocess: {exc}") from exc
        return SubprocessWorkload(pid, ticks, paths.exit_file, is_child=True)

    async def recover(
        self, step: StepRecord, handle: dict[str, Any], task_paths: list[TaskPaths]
    ) -> SubprocessWorkload | ExitStatus | None:
        (paths,) = task_paths
        pid = handle.get("pid")
        if isinstance(pid, int) and handle.get("boot_id") == BOOT_ID:
            started = _start_ticks(pid)
            # A bare pid is no identity: it must also be the same process start on the same boot.
            if started is not None and started == handle.get("start_ticks"):
                return SubprocessWorkload(pid, started, paths.exit_file, is_child=False)
        else:
            found = self.task_processes().get(os.path.basename(paths.work_dir))
            if found is not None:
                return SubprocessWorkload(found.pid, _start_ticks(found.pid), paths.exit_file, is_child=False)
        return read_exit_file(paths.exit_file)

    def task_processes(self) -> dict[str, psutil.Process]:
        """This daemon's live task wrappers, by task name (found by the marker in their argv)."""
        found: dict[str, psutil.Process] = {}
        for proc in psutil.process_iter(["cmdline"]):
            with contextlib.suppress(psutil.Error):
                cmdline = proc.info.get("cmdline") or []
                if len(cmdline) > 3 and cmdline[3].startswith(self._marker):
                    found[cmdline[3].removeprefix(self._marker)] = proc
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
