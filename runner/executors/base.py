"""The executor protocol: one module per backend implements it (subprocess, docker)."""

from __future__ import annotations

import json
import signal
from dataclasses import dataclass, field
from typing import Any, Protocol

from runner.executors.folders import make_task_folders
from runner.models import StepRecord


class ExecutorError(Exception):
    """A workload could not be started or controlled; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class TaskPaths:
    """Where one task's files live on the host. Output goes to files, not pipes, so it survives
    a daemon crash and a restarted daemon can read on from where it stopped.

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
    labels: dict[str, str] = field(default_factory=dict)
    # Containers: the step's image, or its profile's default_task_image.
    image: str | None = None


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


class Workload(Protocol):
    """A started step. `handle` is stored so that a restarted daemon can find the workload again."""

    @property
    def handle(self) -> dict[str, Any]: ...

    @property
    def details(self) -> dict[str, Any]:
        """What to show in status_details (pid, container id...)."""
        ...

    async def wait(self) -> ExitStatus: ...

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
        self, step: StepRecord, handle: dict[str, Any], paths: list[TaskPaths]
    ) -> Workload | ExitStatus | None:
        """Re-attach to a workload started by an earlier daemon: the live workload, its final
        status if it ended meanwhile, or None when it cannot be found at all."""
        ...
