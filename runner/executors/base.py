"""The executor protocol: one module per backend implements it (subprocess, docker)."""

from __future__ import annotations

import asyncio
import json
import signal
from dataclasses import dataclass
from typing import Any, Protocol

from runner.executors.folders import make_task_folders
from runner.models import StepRecord


class ExecutorError(Exception):
    """A workload could not be started or controlled; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class TaskPaths:
    """Where one task's files live on the host. Output lands in files (written by the task, or by
    the launcher from its pipes), so it survives a daemon crash and a restarted daemon can read
    on from where it stopped.

    Plain strings, joined once: on the start path of every step, pathlib's joins and str()
    conversions cost as much as the rest of its bookkeeping (measured with py-spy)."""

    work_dir: str
    persistent_dir: str
    scratch_dir: str
    config_dir: str
    config_file: str
    stdout_file: str
    stderr_file: str
    exit_file: str
    # Which of stdout and stderr grew, to what size and when, read by read, when the task
    # writes through the launcher's pipes (runner/executors/host/capture.py); else absent.
    order_file: str

    @property
    def folders(self) -> list[str]:
        """Made for every task, inside or beside its folder (which comes first)."""
        return [self.scratch_dir, self.config_dir, self.persistent_dir]

    @classmethod
    def under(cls, work_dir: str, persistent_dir: str) -> TaskPaths:
        config_dir = f"{work_dir}/config"
        return cls(
            work_dir=work_dir,
            persistent_dir=persistent_dir,
            scratch_dir=f"{work_dir}/scratch",
            config_dir=config_dir,
            config_file=f"{config_dir}/job_step_config.json",
            stdout_file=f"{work_dir}/stdout.log",
            stderr_file=f"{work_dir}/stderr.log",
            exit_file=f"{work_dir}/exit_code",
            order_file=f"{work_dir}/output.order",
        )


def prepare_task_folders(paths: TaskPaths, config: dict[str, object]) -> None:
    """The task's folders and config file (see runner/executors/folders.py)."""
    make_task_folders(paths.work_dir, paths.folders, paths.config_file, json.dumps(config))


@dataclass(frozen=True)
class VisiblePaths:
    """The task's folders as the workload sees them (host paths, or mount points in a container)."""

    scratch_dir: str
    config_dir: str
    config_file: str
    persistent_dir: str
    # The owner's token, for the workload's calls back (None: the API needs no token).
    token_file: str | None = None


@dataclass(frozen=True)
class TaskLaunch:
    task_name: str
    env: dict[str, str]
    paths: TaskPaths
    gpus: tuple[str, ...] = ()  # device ids of the GPUs this task was given


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one step: one task per process or container."""

    step: StepRecord
    argv: list[str]
    tasks: list[TaskLaunch]
    # Containers: the step's image, or its profile's default_task_image.
    image: str | None = None


# --------------------------------------------------------------------------- the stored handle
# What is stored of a started step so that a restarted daemon finds its workload again. The JSON
# is the same as before these types existed ({kind, ...the workload's fields, tasks: [...]}), so
# stores written by earlier versions read the same.


@dataclass(frozen=True)
class HostHandle:
    """A host process: its pid, told apart from a later process with the same pid by its start
    time (clock ticks since boot) and the boot it ran in."""

    pid: int | None
    start_ticks: int | None
    boot_id: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "subprocess",
            "pid": self.pid,
            "start_ticks": self.start_ticks,
            "boot_id": self.boot_id,
        }


@dataclass(frozen=True)
class ContainerHandle:
    """A step's containers (one per node) and the network joining them (multi-node steps)."""

    containers: tuple[str, ...]
    network: str | None

    def to_json(self) -> dict[str, Any]:
        return {"kind": "docker", "containers": list(self.containers), "network": self.network}


WorkloadHandle = HostHandle | ContainerHandle


@dataclass(frozen=True)
class TaskRef:
    """A task of a started step: its row, its name (its folder), the GPUs (device ids) it holds."""

    pk: int
    name: str
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True)
class StepHandle:
    """The tasks of a started step (recorded before the spawn) and, once spawned, its workload's
    handle: `workload is None` means "recorded, never spawned"."""

    tasks: tuple[TaskRef, ...] = ()
    workload: WorkloadHandle | None = None

    def spawned(self, workload: WorkloadHandle) -> StepHandle:
        return StepHandle(self.tasks, workload)

    def to_json(self) -> dict[str, Any]:
        tasks = [{"task_pk": t.pk, "task_name": t.name, "gpus": list(t.gpus)} for t in self.tasks]
        return {**(self.workload.to_json() if self.workload is not None else {}), "tasks": tasks}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> StepHandle:
        data = data or {}
        tasks = tuple(
            TaskRef(int(t["task_pk"]), str(t["task_name"]), tuple(t.get("gpus") or ()))
            for t in data.get("tasks", [])
        )
        workload: WorkloadHandle | None = None
        if data.get("kind") == "subprocess":
            workload = HostHandle(
                _int(data.get("pid")), _int(data.get("start_ticks")), _str(data.get("boot_id"))
            )
        elif data.get("kind") == "docker":
            network = _str(data.get("network"))
            workload = ContainerHandle(tuple(str(c) for c in data.get("containers") or ()), network)
        return cls(tasks, workload)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_SIGNAL_NUMBERS = frozenset(s.value for s in signal.Signals)


@dataclass(frozen=True)
class ExitStatus:
    exit_code: int | None
    signal: int | None = None
    reason: str | None = None  # e.g. "OOMKilled"

    @classmethod
    def from_exit_code(cls, code: int) -> ExitStatus:
        """A shell or container runtime reports "killed by signal N" as 128+N."""
        if code > 128 and (code - 128) in _SIGNAL_NUMBERS:
            return cls(exit_code=code, signal=code - 128)
        return cls(exit_code=code)

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0 and self.signal is None and self.reason is None

    def describe(self) -> str:
        if self.reason:
            return f"Job ended: {self.reason} (exit code {self.exit_code})"
        if self.signal is not None:
            return f"Job was killed by signal {signal.Signals(self.signal).name}"
        return f"Job exited with code {self.exit_code}"

    def as_details(self) -> dict[str, Any]:
        details: dict[str, Any] = {"exit_code": self.exit_code}
        if self.signal is not None:
            details["signal"] = signal.Signals(self.signal).name
        if self.reason:
            details["reason"] = self.reason
        return details


@dataclass(frozen=True, slots=True)
class OutputEnd:
    """Where a task's stdout, stderr and order files end, as the process that wrote them (the
    launcher) left them when the task ended."""

    stdout: int
    stderr: int
    order: int


class OutputNews:
    """What the process capturing a task's output tells of it: when the task first wrote
    something (`written` done; also when that process went away, so that the files are then
    watched as they would be without it), and, with its end, where the files end (`end`).
    A task that prints nothing then costs its output collector nothing (runner/logs.py)."""

    __slots__ = ("end", "written")

    def __init__(self, written: asyncio.Future[None]) -> None:
        self.written = written
        self.end: OutputEnd | None = None


class Workload(Protocol):
    """A started step. `handle` is stored so that a restarted daemon can find the workload again."""

    @property
    def handle(self) -> WorkloadHandle: ...

    @property
    def details(self) -> dict[str, Any]:
        """What to show in status_details (pid, container id...)."""
        ...

    async def wait(self) -> ExitStatus: ...

    def output_news(self) -> OutputNews | None:
        """News of its (single) task's output files, or None: nobody tells, they are watched."""
        ...

    async def stop(self, grace_s: float) -> None:
        """SIGTERM (or docker stop), then SIGKILL after `grace_s`; returns once it is gone."""

    async def pause(self) -> None: ...

    async def resume(self) -> None: ...

    async def release(self) -> None:
        """Free what the workload held once its outcome is stored (e.g. remove containers)."""


class Executor(Protocol):
    def visible_paths(self, paths: TaskPaths) -> VisiblePaths: ...

    def callback_url(self, base_url: str) -> str:
        """The daemon's URL as the workload can reach it."""
        ...

    async def start(self, launch: Launch) -> Workload: ...

    async def recover(
        self, step: StepRecord, handle: WorkloadHandle | None, paths: list[TaskPaths]
    ) -> Workload | ExitStatus | None:
        """Re-attach to a workload started by an earlier daemon: the live workload, its final
        status if it ended meanwhile, or None when it cannot be found at all."""
        ...
