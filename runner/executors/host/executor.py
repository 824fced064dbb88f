"""The host (subprocess) executor: each task runs in its own session/process group, output to
files. This module chooses how a task is started and how it is found again after a restart; the
rest of the story is in the package's other modules (see __init__.py).

Tasks are started by the launcher, a small process beside the daemon (launcher.py, talked to
through launcher_client.py): it is their parent, reaps them and writes each one's exit status
to a file in its task folder, and it stays until its last task has ended even when the daemon
is gone. So the exit code is
known even when the daemon was down when the task ended. A start too large for one message to
the launcher is made by the daemon itself, under a tiny POSIX-shell wrapper that survives
SIGTERM long enough to write the command's exit status to the same file.

Nothing is left behind: when a task's main process ends, whatever it left running is ended too
(SIGTERM, the grace period, SIGKILL) and the task counts as ended only once that is gone, so its
output is read to the end. The launcher does it for the tasks it started (leftovers.py); for
the others (the wrapper's, adopted ones, or when the launcher died) the daemon finds them by
their marker (strays.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import psutil

from runner.executors.base import (
    ExecutorError,
    ExitStatus,
    HostHandle,
    Launch,
    TaskLaunch,
    TaskPaths,
    VisiblePaths,
    WorkloadHandle,
    prepare_task_folders,
)
from runner.executors.host.exits import ExitWatcher, read_exit_file
from runner.executors.host.launcher_client import LauncherClient, RequestTooLarge
from runner.executors.host.procfs import start_ticks
from runner.executors.host.protocol import MARKER_PREFIX, TASK_MARKER_VARIABLE, TaskStart
from runner.executors.host.spawn import spawn_in_new_session
from runner.executors.host.strays import LeftoverRule, marked_processes, with_marker
from runner.executors.host.workloads import BOOT_ID, EndedTask, HostTask, LaunchedTask, WatchedTask
from runner.models import StepRecord

# $0 is a marker naming the task (visible in `ps`, used to find orphans); $1 the exit-status file;
# $2 the working folder. `trap :` (not `trap ''`) so the workload keeps the default SIGTERM action.
# The umask is set once the workload has ended (it must not inherit it): the file is 0600.
# (Running wrappers show it in their command line: strays.py finds them by $0.)
_WRAPPER = (
    'f=$1; cd "$2" || exit 126; shift 2; trap : HUP INT TERM; '
    '"$@"; rc=$?; umask 077; printf "%s\\n" "$rc" >"$f"; exit "$rc"'
)
_UNRECORDED_WAIT_S = 0.1


# A subprocess step whose environment sets this runs there instead of its task's folder (what
# `localjobs run` sets to the directory it is called from; the contract has no field for it).
WORKDIR_VARIABLE = "LOCALJOBS_WORKDIR"


def _run_dir(env: dict[str, str]) -> str:
    """The directory a task starts in ("": its own folder); ExecutorError when it cannot."""
    chosen = env.get(WORKDIR_VARIABLE, "")
    if not chosen:
        return ""
    if not os.path.isabs(chosen):
        raise ExecutorError(
            f"Failed to start subprocess: {WORKDIR_VARIABLE} is not an absolute path: {chosen}"
        )
    if not os.path.isdir(chosen):
        raise ExecutorError(
            f"Failed to start subprocess: {WORKDIR_VARIABLE} is not a directory here: {chosen}"
        )
    return chosen


def _exists(path: str) -> bool:
    try:
        os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError:
        return True  # there, but not ours to look at
    return True


def _prepare_and_spawn(
    task: TaskLaunch,
    config: dict[str, Any],
    wrapped: list[str],
    watcher: ExitWatcher,
    loop: asyncio.AbstractEventLoop,
    leftovers: LeftoverRule,
) -> WatchedTask:
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
        return WatchedTask(
            pid, start_ticks(pid), paths.exit_file, watcher=watcher, loop=loop, leftovers=leftovers, reap=True
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
        environment: Mapping[str, str],
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
        self._launcher = LauncherClient(
            self._exits, launcher_log, environment=environment, leftover_grace_s=leftover_grace_s
        )

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

    async def start(self, launch: Launch) -> HostTask:
        (task,) = launch.tasks  # a host subprocess step is always one task
        argv = self._resolve(launch.argv, task.env)
        run_dir = _run_dir(task.env)
        marker = self._marker + task.task_name
        task = TaskLaunch(task.task_name, {**task.env, TASK_MARKER_VARIABLE: marker}, task.paths)
        try:
            return await self._start_by_launcher(task, launch.step.spec.config, argv, run_dir)
        except RequestTooLarge:
            pass
        # Too large for one message to the launcher: the folders and the spawn in a worker thread
        # of the daemon (the spawn blocks until the child has exec'd, and releases the GIL), under
        # the `sh` wrapper that records the exit status.
        paths = task.paths
        wrapped = ["/bin/sh", "-c", _WRAPPER, marker, paths.exit_file, run_dir or paths.work_dir, *argv]
        loop = asyncio.get_running_loop()
        rule = self._rule(task.task_name)
        try:
            return await asyncio.to_thread(
                _prepare_and_spawn, task, launch.step.spec.config, wrapped, self._exits, loop, rule
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise ExecutorError(f"Failed to start subprocess: {exc}") from exc

    async def _start_by_launcher(
        self, task: TaskLaunch, config: dict[str, Any], argv: list[str], run_dir: str
    ) -> LaunchedTask:
        paths = task.paths
        launched = await self._launcher.start(
            TaskStart(
                argv=argv,
                env=task.env,
                work_dir=paths.work_dir,
                folders=paths.folders,
                config_file=paths.config_file,
                config=json.dumps(config),
                stdout=paths.stdout_file,
                stderr=paths.stderr_file,
                exit_file=paths.exit_file,
                order=paths.order_file,
                cwd=run_dir,
            )
        )
        return LaunchedTask(
            launched,
            paths.exit_file,
            watcher=self._exits,
            loop=asyncio.get_running_loop(),
            launcher=self._launcher,
            leftovers=self._rule(task.task_name),  # for when the launcher dies before the task
        )

    def _rule(self, task_name: str) -> LeftoverRule:
        return LeftoverRule(self._marker + task_name, self._leftover_grace_s)

    async def recover(
        self, step: StepRecord, handle: WorkloadHandle | None, task_paths: list[TaskPaths]
    ) -> HostTask | ExitStatus | None:
        (paths,) = task_paths
        name = os.path.basename(paths.work_dir)
        host = handle if isinstance(handle, HostHandle) else HostHandle(None, None, None)
        pid = host.pid
        if pid is not None and host.boot_id == BOOT_ID:
            started = start_ticks(pid)
            # A bare pid is no identity: it must also be the same process start on the same boot.
            if started is not None and started == host.start_ticks:
                return self._adopt(pid, started, paths.exit_file, name)
            # Gone, not even a zombie: its parent wrote its status before reaping it, or never will.
            return await self._after_end(read_exit_file(paths.exit_file), host, name)
        found = self.task_processes().get(name)
        if found is not None:
            return self._adopt(found.pid, start_ticks(found.pid), paths.exit_file, name)
        status = await self._after_end(read_exit_file(paths.exit_file), host, name)
        if status is None and pid is None and _exists(paths.stdout_file):
            # Spawned (the spawn creates its output file) before its pid was recorded, and ended;
            # a zombie not yet recorded is not found by its environment: give its parent a moment.
            # Never start such a step again (it ran): at most, its status is lost.
            await asyncio.sleep(_UNRECORDED_WAIT_S)
            status = read_exit_file(paths.exit_file)
            return status or ExitStatus(exit_code=None, reason="exit status lost (it ended unseen)")
        return status

    def _adopt(self, pid: int, start_ticks: int | None, exit_file: str, name: str) -> WatchedTask:
        return WatchedTask(
            pid,
            start_ticks,
            exit_file,
            watcher=self._exits,
            loop=asyncio.get_running_loop(),
            leftovers=self._rule(name),
        )

    async def _after_end(
        self, status: ExitStatus | None, handle: HostHandle, name: str
    ) -> EndedTask | ExitStatus | None:
        """The main process ended while the daemon was down: if it left processes running, a
        workload that ends them (and reads the output meanwhile) before it reports `status`."""
        rule = self._rule(name)
        if status is None or rule.grace_s is None:
            return status
        if not await asyncio.to_thread(with_marker, rule.marker):
            return status
        return EndedTask(
            handle.pid if handle.pid is not None else 0,
            handle.start_ticks,
            status,
            loop=asyncio.get_running_loop(),
            leftovers=rule,
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
