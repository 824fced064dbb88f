"""Execution profiles: the named sets of limits a step's `executor.profile` picks.

The daemon's settings make one `default` profile per provider. A profiles file (`--profiles
FILE`, YAML) adds more, or changes a default, with the field names of the reference's
`jobs.executors` configuration:

    executors:                       # or a bare list, or under `jobs:` as in a platform config
      - provider: subprocess
        profile: long
        backend: subprocess
        config:
          ttl_seconds_active: 604800
          graceful_shutdown_timeout_seconds: 60
          env: {HF_HOME: /data/hf}
      - provider: gpu
        profile: a100
        backend: docker
        config: {default_task_image: "nvcr.io/nvidia/pytorch:24.05-py3"}

Read once at start; a file that does not parse, names an unknown field or pairs a provider with
a backend localjobs does not have refuses the start with a message saying where.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from runner.errors import CannotStart, Unprocessable
from runner.settings import Settings

CONTAINER_PROVIDERS = ("cpu", "gpu", "gpu_distributed")
PROVIDERS = ("subprocess", *CONTAINER_PROVIDERS)
# Set by the platform for every task: a profile may not change them (as the reference refuses).
_RESERVED_PREFIXES = ("NEMO_JOB_", "NMP_")


@dataclass(frozen=True)
class ExecutionProfile:
    provider: str
    profile: str
    backend: Literal["subprocess", "docker"]
    ttl_seconds_before_active: int
    ttl_seconds_active: int
    ttl_seconds_after_finished: int
    graceful_shutdown_timeout_seconds: float
    env: dict[str, str] = field(default_factory=dict)
    default_task_image: str | None = None


class _ProfileConfig(BaseModel):
    """A profile's `config`, as the reference names its fields. The reference's Docker and
    subprocess fields that have no meaning here (its volume, network and launcher settings)
    are read and left unused, so a reference config file loads as it is."""

    model_config = ConfigDict(extra="forbid")

    ttl_seconds_before_active: int | None = Field(default=None, ge=0)
    ttl_seconds_active: int | None = Field(default=None, ge=0)
    graceful_shutdown_timeout_seconds: float | None = Field(default=None, ge=0)
    env: dict[str, str] = Field(default_factory=dict)
    default_task_image: str | None = Field(default=None, min_length=1)
    # Read, not used (task folders go after the daemon-wide ttl_seconds_after_finished):
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    cleanup_completed_jobs_immediately: bool | None = None
    launcher_tool_path: str | None = None
    working_directory: str | None = None
    storage: dict[str, Any] | None = None
    networking: dict[str, Any] | None = None

    @field_validator("env")
    @classmethod
    def _not_reserved(cls, value: dict[str, str]) -> dict[str, str]:
        reserved = sorted(k for k in value if k.startswith(_RESERVED_PREFIXES))
        if reserved:
            raise ValueError(f"env may not set the platform's own variables: {reserved}")
        bad = sorted(k for k in value if not k or "=" in k or "\x00" in k or "\x00" in value[k])
        if bad:
            raise ValueError(f"env names may not be empty or contain '=' or NUL: {bad}")
        return value


class _ProfileEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    provider: Literal["subprocess", "cpu", "gpu", "gpu_distributed"]
    profile: str = Field(default="default", min_length=1, max_length=63)
    backend: Literal["subprocess", "docker"]
    config: _ProfileConfig = Field(default_factory=_ProfileConfig)


class ProfileCatalog:
    """Every profile on offer, by provider and name."""

    def __init__(self, profiles: list[ExecutionProfile]) -> None:
        self._by_key = {(p.provider, p.profile): p for p in profiles}

    @classmethod
    def defaults(cls, settings: Settings) -> ProfileCatalog:
        return cls([_default(settings, provider) for provider in PROVIDERS])

    @classmethod
    def load(cls, settings: Settings) -> ProfileCatalog:
        """The defaults, with the profiles file's entries added (or replacing a default)."""
        catalog = cls.defaults(settings)
        if settings.profiles_file is None:
            return catalog
        for entry in _read_entries(settings.profiles_file, settings):
            base = catalog._by_key.get((entry.provider, "default")) or _default(settings, entry.provider)
            catalog._by_key[(entry.provider, entry.profile)] = _merged(base, entry)
        return catalog

    def all(self) -> list[ExecutionProfile]:
        return list(self._by_key.values())

    def get(self, provider: str, profile: str) -> ExecutionProfile:
        found = self._by_key.get((provider, profile))
        if found is None:
            known = sorted(name for p, name in self._by_key if p == provider)
            raise Unprocessable(
                f"The execution profile '{provider}/{profile}' does not exist; "
                f"known profiles for {provider!r}: {', '.join(known) or 'none'}"
            )
        return found

    def find(self, provider: str, profile: str) -> ExecutionProfile | None:
        return self._by_key.get((provider, profile))

    def in_force(self, provider: str, profile: str) -> ExecutionProfile:
        """The profile a stored step runs under: its own, or, when a later start no longer has
        it (the file changed), its provider's default. The file is configuration; the step is
        data and keeps running."""
        return self.find(provider, profile) or self.get(provider, "default")


def runs_as_host_process(settings: Settings, provider: str) -> bool:
    """`subprocess` steps always; `cpu` and `gpu` container steps when the settings say so
    (entrypoint + command on the host, as the reference's local mode)."""
    return (
        provider == "subprocess"
        or (provider == "cpu" and settings.cpu_containers_as_subprocess)
        or (provider == "gpu" and settings.gpu_containers_as_subprocess)
    )


def _default(settings: Settings, provider: str) -> ExecutionProfile:
    as_host = runs_as_host_process(settings, provider)
    return ExecutionProfile(
        provider=provider,
        profile="default",
        backend="subprocess" if as_host else "docker",
        ttl_seconds_before_active=settings.ttl_seconds_before_active,
        ttl_seconds_active=settings.ttl_seconds_active,
        ttl_seconds_after_finished=settings.ttl_seconds_after_finished,
        graceful_shutdown_timeout_seconds=settings.grace_period_s,
    )


def _merged(base: ExecutionProfile, entry: _ProfileEntry) -> ExecutionProfile:
    given = entry.config.model_dump(
        include={
            "ttl_seconds_before_active",
            "ttl_seconds_active",
            "graceful_shutdown_timeout_seconds",
            "default_task_image",
        },
        exclude_none=True,
    )
    return replace(base, profile=entry.profile, backend=entry.backend, env=dict(entry.config.env), **given)


def _read_entries(path: Path, settings: Settings) -> list[_ProfileEntry]:
    import yaml  # only with a profiles file: ~1 MB of RSS otherwise not needed

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CannotStart(f"cannot read the profiles file {path}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("jobs"), dict):
        data = data["jobs"]
    if isinstance(data, dict):
        data = data.get("executors")
    if not isinstance(data, list):
        raise CannotStart(f"the profiles file {path} must hold a list of profiles under `executors:`")
    entries, seen = [], set()
    for index, raw in enumerate(data):
        try:
            entry = _ProfileEntry.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'entry'}: {e['msg']}" for e in exc.errors()
            )
            raise CannotStart(f"the profiles file {path}, profile #{index + 1}: {problems}") from None
        wanted = "subprocess" if runs_as_host_process(settings, entry.provider) else "docker"
        if entry.backend != wanted:
            raise CannotStart(
                f"the profiles file {path}, profile #{index + 1}: provider {entry.provider!r} runs on the "
                f"{wanted!r} backend here, not {entry.backend!r}"
            )
        key = (entry.provider, entry.profile)
        if key in seen:
            raise CannotStart(f"the profiles file {path}: profile {entry.provider}/{entry.profile} twice")
        seen.add(key)
        entries.append(entry)
    return entries
