"""The daemon's settings: one frozen object, built once by the entry point from flags and environment."""

from __future__ import annotations

import functools
import hashlib
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType

ENV_PREFIX = "LOCALJOBS_"
EVENT_LOOPS = ("uvloop", "asyncio")


def default_data_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """A per-user state folder: $XDG_STATE_HOME/localjobs, else ~/.local/state/localjobs."""
    base = environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "localjobs"


def venv_python_executable(environ: Mapping[str, str]) -> str:
    """What the reference runs for `python`: the active venv's interpreter when there is one."""
    venv = environ.get("VIRTUAL_ENV")
    if venv:
        candidate = Path(venv) / "bin" / "python"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return sys.executable


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = field(default_factory=default_data_dir)
    # How many steps may run at once across all jobs; the rest wait in `created`.
    max_running_steps: int = 64
    # SIGTERM -> this long -> SIGKILL, for cancel and shutdown.
    grace_period_s: float = 10.0
    # Graceful daemon stop ends running steps; False leaves them running for the next start to adopt.
    stop_steps_on_shutdown: bool = True
    # Per task, the newest output kept in the store; older lines are dropped (and counted). 0: no limit.
    log_max_bytes_per_task: int = 512 * 1024 * 1024
    # How often a running step's output files are read while it prints nothing new (upper bound).
    log_poll_max_s: float = 0.05
    # Time limits of the execution profiles (the reference's defaults).
    ttl_seconds_before_active: int = 1800
    ttl_seconds_active: int = 86400
    ttl_seconds_after_finished: int = 3600
    # Variables passed from the daemon's own environment to subprocess steps; nothing else leaks.
    inherited_env: tuple[str, ...] = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "VIRTUAL_ENV")
    # What a leading `python`/`python3` in a subprocess command runs (the reference does the same).
    python_executable: str = sys.executable
    # Docker: keep finished containers for debugging; run `cpu` container steps as host processes.
    keep_containers: bool = False
    cpu_containers_as_subprocess: bool = False
    gpu_containers_as_subprocess: bool = False
    # GPUs to schedule on: indices or UUIDs (`0,1`); empty: all that NVML finds (runner/gpus.py).
    gpus: tuple[str, ...] = ()
    # CPUs and memory to admit `resources.requests` against (runner/allocation.py): a number of
    # cores, and a quantity such as `16Gi`; 0 / empty: what this process may use.
    cpus: float = 0.0
    memory: str = ""
    # How long the oldest waiting step that needs GPUs, CPUs or memory lets younger ones that fit
    # take what is free (backfill).
    backfill_s: float = 300.0
    # Access: every /apis request needs `Authorization: Bearer <token>`. The token comes from
    # LOCALJOBS_TOKEN, else the file `token_file` (default <data-dir>/token, created at first start).
    token: str = field(default="", repr=False)
    token_file: Path | None = None
    # More execution profiles (YAML, the reference's `jobs.executors` fields): runner/profiles.py.
    profiles_file: Path | None = None
    # The key that seals secret values in the database (default <data-dir>/secrets.key).
    secrets_key_file: Path | None = None
    # No token at all: allowed on a loopback address only (refused at start otherwise).
    no_auth: bool = False
    # Host header values accepted beyond loopback names/addresses and the bound address.
    allowed_hosts: tuple[str, ...] = ()
    # Largest request body accepted (413 above it).
    max_body_bytes: int = 4 * 1024 * 1024
    # When a step's main process ends, whatever it left running is ended too (SIGTERM, grace,
    # SIGKILL); True keeps such processes running, as the reference does.
    keep_leftover_processes: bool = False
    # The event loop: uvloop (libuv, the default: ~15% less daemon CPU per job, measured in
    # docs/benchmarks.md) or asyncio's own (`asyncio`, for debugging with asyncio's tools).
    event_loop: str = "uvloop"
    # The daemon's own environment, read once at start (by load_settings; a Settings built in a
    # test takes this process's): subprocess steps inherit `inherited_env` of it, the launcher all.
    environment: Mapping[str, str] = field(
        default_factory=lambda: dict(os.environ), repr=False, compare=False
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "event_loop", _event_loop_named(self.event_loop))
        object.__setattr__(self, "environment", MappingProxyType(dict(self.environment)))
        # Paths go to other processes (the launcher, tasks) with other working folders: absolute.
        object.__setattr__(self, "data_dir", Path(self.data_dir).absolute())
        if self.token_file is not None:
            object.__setattr__(self, "token_file", Path(self.token_file).absolute())
        if self.profiles_file is not None:
            object.__setattr__(self, "profiles_file", Path(self.profiles_file).absolute())
        if self.secrets_key_file is not None:
            object.__setattr__(self, "secrets_key_file", Path(self.secrets_key_file).absolute())

    @property
    def owner_id(self) -> str:
        """Stable per data dir: labels this daemon's containers and marks its task processes, so
        that it only ever cleans up its own."""
        return hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]

    @functools.cached_property
    def inherited_environment(self) -> Mapping[str, str]:
        """What a subprocess step inherits of the daemon's environment (`inherited_env` only).
        Built once (the settings never change), read-only: every task start reads it."""
        return MappingProxyType({k: self.environment[k] for k in self.inherited_env if k in self.environment})

    @property
    def db_path(self) -> Path:
        return self.data_dir / "localjobs.db"

    @functools.cached_property
    def work_dir(self) -> Path:
        # Once: every task's paths are built from it (one Path, whose text pathlib caches).
        return self.data_dir / "work"

    @property
    def secrets_key_path(self) -> Path:
        return self.secrets_key_file if self.secrets_key_file is not None else self.data_dir / "secrets.key"

    @property
    def token_path(self) -> Path:
        return self.token_file if self.token_file is not None else self.data_dir / "token"


def _event_loop_named(raw: str) -> str:
    name = raw.strip().lower()
    if name not in EVENT_LOOPS:
        raise ValueError(f"event_loop must be one of {', '.join(EVENT_LOOPS)}, not {raw!r}")
    return name


def _convert(name: str, raw: str, default: object) -> object:
    if name == "event_loop":  # checked here too, so that the message names the variable
        return _event_loop_named(raw)
    if isinstance(default, bool):
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError("expected true or false")
    if isinstance(default, int):
        return int(raw)
    if isinstance(default, float):
        return float(raw)
    if isinstance(default, Path) or name.endswith("_file"):
        return Path(raw).expanduser()
    if isinstance(default, tuple):
        return tuple(part for part in raw.split(",") if part)
    return raw


def _reason(exc: ValueError) -> str:
    text = str(exc)
    return "expected a number" if text.startswith(("invalid literal", "could not convert")) else text


def load_settings(overrides: Mapping[str, object], environ: Mapping[str, str]) -> Settings:
    """Flags (non-None `overrides`) beat LOCALJOBS_* variables, which beat the defaults."""
    defaults = Settings()
    values: dict[str, object] = {}
    for f in fields(Settings):
        if f.name == "environment":
            continue
        default = getattr(defaults, f.name)
        if overrides.get(f.name) is not None:
            values[f.name] = _convert(f.name, str(overrides[f.name]), default)
        elif (raw := environ.get(ENV_PREFIX + f.name.upper())) is not None:
            try:
                values[f.name] = _convert(f.name, raw, default)
            except ValueError as exc:
                raise ValueError(f"{ENV_PREFIX}{f.name.upper()}={raw!r}: {_reason(exc)}") from exc
    values.setdefault("python_executable", venv_python_executable(environ))
    values["environment"] = dict(environ)
    return Settings(**values)  # type: ignore[arg-type]
