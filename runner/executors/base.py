"""The executor protocol: one module per backend implements it (subprocess, docker)."""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from runner.models import StepRecord


class ExecutorError(Exception):
    """A workload could not be started or controlled; the message is shown to the user."""


@dataclass(frozen=True)
class TaskPaths:
    """Where one task's files live on the host. Output goes to files, not pipes, so it survives
    a daemon crash and a restarted daemon can read on from where it stopped."""

    work_dir: Path
    persistent_dir: Path

    @property
    def scratch_dir(self) -> Path:
        return self.work_dir / "scratch"

    @property
    def config_dir(self) -> Path:
        return self.work_dir / "config"

    @property
    def config_file(self) -> Path:
        return self.config_dir / "job_step_config.json"

    @property
    def stdout_file(self) -> Path:
        return self.work_dir / "stdout.log"

    @property
    def stderr_file(self) -> Path:
        return self.work_dir / "stderr.log"

    @property
    def exit_file(self) -> Path:
        return self.work_dir / "exit_code"


@dataclass(frozen=True)
class VisiblePaths:
    """The task's folders as the workload sees them (host paths, or mount points in a container)."""

    scratch_dir: str
    config_dir: str
    config_file: str
    persistent_dir: str


@dataclass(frozen=True)
class TaskLaunch:
    task_name: str
    env: dict[str, str]
    paths: TaskPaths


@dataclass(frozen=True)
class Launch:
    """Everything an executor needs to start one step: one task per process or container."""

    step: StepRecord
    argv: list[str]
    tasks: list[TaskLaunch]
    labels: dict[str, str] = field(default_factory=dict)


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
