"""Domain types shared by every package: statuses, the transition table, job specs, stored records.

This module is the leaf of the import graph: it imports nothing of ours, so `storage`, `runner`
and `web` may all depend on it.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The reference's NAME_PATTERN. Python's `re` is needed: the lookarounds are beyond pydantic's
# Rust regex engine, so names are checked in validators rather than with `pattern=`. Every
# pattern here is anchored with \A...\Z (and used with fullmatch): `$` also matches before a
# trailing newline, which let `nl` and `nl\n` be two jobs (and two task folders).
NAME_PATTERN = re.compile(r"\A[a-z](?!.*--)[a-z0-9\-@.+_]{1,62}(?<!-)\Z")
WORKSPACE_PATTERN = re.compile(r"\A[\w\-\+.@:]+\Z")
# A workspace is a folder name under <data-dir>/work: at most what a file system takes (bytes).
MAX_WORKSPACE_BYTES = 255
NAME_RULE = (
    "must start with a lowercase letter, be 2-63 characters, contain only lowercase letters, digits "
    "and - @ . + _, have no consecutive hyphens and not end with a hyphen"
)


class JobStatus(StrEnum):
    CREATED = "created"
    PENDING = "pending"
    ACTIVE = "active"
    CANCELLED = "cancelled"
    CANCELLING = "cancelling"
    ERROR = "error"
    COMPLETED = "completed"
    PAUSED = "paused"
    PAUSING = "pausing"
    RESUMING = "resuming"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    def can_transition_to(self, new: JobStatus) -> bool:
        return new == self or new in _TRANSITIONS[self]


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.ERROR, JobStatus.CANCELLED})

# The reference's table (api-surface.md 4.1), shared by jobs, steps and tasks.
_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.CREATED: frozenset(
        {
            JobStatus.PENDING,
            JobStatus.ACTIVE,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
            JobStatus.ERROR,
        }
    ),
    JobStatus.PENDING: frozenset(
        {
            JobStatus.ACTIVE,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.ERROR,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
            JobStatus.COMPLETED,
        }
    ),
    JobStatus.ACTIVE: frozenset(
        {
            JobStatus.COMPLETED,
            JobStatus.ERROR,
            JobStatus.CANCELLING,
            JobStatus.CANCELLED,
            JobStatus.PAUSING,
            JobStatus.PAUSED,
        }
    ),
    JobStatus.PAUSED: frozenset({JobStatus.RESUMING, JobStatus.ACTIVE, JobStatus.CANCELLING}),
    JobStatus.CANCELLING: frozenset({JobStatus.CANCELLED, JobStatus.ERROR}),
    JobStatus.PAUSING: frozenset({JobStatus.PAUSED, JobStatus.ERROR}),
    JobStatus.RESUMING: frozenset(
        {JobStatus.PENDING, JobStatus.ACTIVE, JobStatus.ERROR, JobStatus.CANCELLING}
    ),
    JobStatus.COMPLETED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
    JobStatus.ERROR: frozenset(),
}


class StepSort(StrEnum):
    CREATED_AT = "created_at"
    CREATED_AT_DESC = "-created_at"
    UPDATED_AT = "updated_at"
    UPDATED_AT_DESC = "-updated_at"


class JobSort(StrEnum):
    CREATED_AT = "created_at"
    CREATED_AT_DESC = "-created_at"
    UPDATED_AT = "updated_at"
    UPDATED_AT_DESC = "-updated_at"
    SOURCE = "source"
    SOURCE_DESC = "-source"


# ---------------------------------------------------------------------------------------------
# Time and identifiers
# ---------------------------------------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_B58[rem])
    return "".join(reversed(digits)) or _B58[0]


def new_entity_id(entity_type: str) -> str:
    """`platform-job-step-<base58 uuid4>`, the reference's id format."""
    return f"{entity_type}-{base58(uuid.uuid4().bytes)}"


def new_task_name() -> str:
    return f"task-{uuid.uuid4().hex}"


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch: how every timestamp is stored."""
    return time.time_ns() // 1000


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"name {value!r} {NAME_RULE}")
    return value


def check_workspace(value: str) -> str:
    if not WORKSPACE_PATTERN.fullmatch(value):
        raise ValueError("workspace may contain only letters, digits and _ - + . @ :")
    if value in (".", ".."):
        # Task folders live in <data-dir>/work/<workspace>/<job>/...: these would move them up.
        raise ValueError(f"workspace {value!r} is not allowed: it names a folder's parent or itself")
    if len(value.encode()) > MAX_WORKSPACE_BYTES:
        raise ValueError(f"workspace may be at most {MAX_WORKSPACE_BYTES} bytes long (UTF-8)")
    return value


# ---------------------------------------------------------------------------------------------
# Kubernetes quantities (resources.limits/requests, shm_size)
# ---------------------------------------------------------------------------------------------

_QUANTITY = re.compile(r"([+]?(?:\d+|\d*\.\d+)(?:[eE][+-]?\d+)?)(m|k|Ki|M|Mi|G|Gi|T|Ti|P|Pi|E|Ei)?")
_SUFFIX_FACTOR: dict[str, float] = {
    "": 1,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_quantity(text: str) -> float:
    """Parse a Kubernetes quantity ('250m', '1.5', '128Mi', '1Gi', '512M') into a plain number."""
    match = _QUANTITY.fullmatch(text.strip())
    if not match:
        raise ValueError(f"{text!r} is not a Kubernetes quantity (e.g. '250m', '1.5', '128Mi', '1Gi')")
    return float(match.group(1)) * _SUFFIX_FACTOR[match.group(2) or ""]


# ---------------------------------------------------------------------------------------------
# Job specification (request side), mirroring jobs-openapi.yaml
# ---------------------------------------------------------------------------------------------


class _Spec(BaseModel):
    model_config = ConfigDict(extra="ignore")


class SecretRef(_Spec):
    name: str = Field(min_length=1)


class EnvironmentVariable(_Spec):
    name: str = Field(min_length=1)
    value: str | None = None
    from_secret: SecretRef | None = None

    @field_validator("name")
    @classmethod
    def _valid_variable_name(cls, value: str) -> str:
        if "=" in value or "\x00" in value:
            raise ValueError(f"environment variable name {value!r} may not contain '=' or a NUL character")
        return value

    @field_validator("value")
    @classmethod
    def _no_nul_in_value(cls, value: str | None) -> str | None:
        return _without_nul(value, "environment variable value") if value is not None else None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> EnvironmentVariable:
        if (self.value is None) == (self.from_secret is None):
            raise ValueError(
                f"environment variable {self.name!r}: set exactly one of 'value' or 'from_secret'"
            )
        return self


class ContainerSpec(_Spec):
    image: str | None = Field(default=None, min_length=1)
    entrypoint: list[str] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)

    @field_validator("entrypoint", "command")
    @classmethod
    def _no_nul(cls, value: list[str]) -> list[str]:
        return [_without_nul(item, "an argument") for item in value]

    @field_validator("image")
    @classmethod
    def _no_nul_in_image(cls, value: str | None) -> str | None:
        # Goes to the engine's API and into `docker pull` error messages: a C string there too.
        return None if value is None else _without_nul(value, "an image reference")


def _without_nul(value: str, what: str) -> str:
    # A process argument or environment entry is a C string: a NUL would silently cut it.
    if "\x00" in value:
        raise ValueError(f"{what} may not contain a NUL character")
    return value


class ComputeResourceSpec(_Spec):
    cpu: str | None = None
    memory: str | None = None

    @field_validator("cpu", "memory")
    @classmethod
    def _quantity(cls, value: str | None) -> str | None:
        if value is not None:
            parse_quantity(value)
        return value


_SHM_PATTERN = re.compile(r"[+-]?(\d+|\d*\.\d+)([eE][+-]?\d+)?(Mi|Gi|M|G)")


MAX_NODES = 256


class ComputeResources(_Spec):
    requests: ComputeResourceSpec | None = None
    limits: ComputeResourceSpec | None = None
    # One container per node on this one machine: a bound keeps a typo (1e6) from stalling the
    # scheduler while it names a million tasks (the reference has none; README, differences).
    num_nodes: int = Field(default=1, ge=1, le=MAX_NODES)
    num_gpus: int | None = Field(default=None, ge=0)
    shm_size: str | None = None

    @field_validator("shm_size")
    @classmethod
    def _shm(cls, value: str | None) -> str | None:
        if value is not None and not _SHM_PATTERN.fullmatch(value):
            raise ValueError(f"shm_size {value!r} must be a quantity in Mi, Gi, M or G (e.g. '1Gi')")
        return value


class _ContainerExecutor(_Spec):
    profile: str = "default"
    container: ContainerSpec
    resources: ComputeResources = Field(default_factory=ComputeResources)


class CPUExecutor(_ContainerExecutor):
    provider: Literal["cpu"] = "cpu"


class GPUExecutor(_ContainerExecutor):
    provider: Literal["gpu"] = "gpu"


class DistributedGPUExecutor(_ContainerExecutor):
    provider: Literal["gpu_distributed"] = "gpu_distributed"


class SubprocessExecutor(_Spec):
    provider: Literal["subprocess"] = "subprocess"
    profile: str = "default"
    command: list[str]

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("subprocess execution requires command to be set")
        return [_without_nul(item, "an argument") for item in value]


Executor = Annotated[
    CPUExecutor | GPUExecutor | DistributedGPUExecutor | SubprocessExecutor,
    Field(discriminator="provider"),
]


class StepLifecycle(_Spec):
    staleness_timeout_seconds: int = Field(default=0, ge=0)


class StepSpec(_Spec):
    name: str
    # None when not sent (the reference echoes null then, and `[]` for an explicit empty list).
    environment: list[EnvironmentVariable] | None = None
    executor: Executor
    config: dict[str, Any] = Field(default_factory=dict)
    lifecycle: StepLifecycle = Field(default_factory=StepLifecycle)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @property
    def variables(self) -> list[EnvironmentVariable]:
        return self.environment or []

    @field_validator("environment", mode="before")
    @classmethod
    def _empty_mapping_is_empty_list(cls, value: Any) -> Any:
        # The reference coerces `{}` to an empty list.
        return [] if value == {} else value

    @field_validator("config", mode="before")
    @classmethod
    def _null_config(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("lifecycle", mode="before")
    @classmethod
    def _null_lifecycle(cls, value: Any) -> Any:
        return {} if value is None else value


class JobSecret(_Spec):
    name: str
    # Accepted for compatibility but never stored nor echoed back: the reference ignores these
    # inline values too, and a secret must not reappear in any response.
    value: str | None = Field(default=None, exclude=True)
    ref_id: str | None = None


class PlatformJobSpec(_Spec):
    steps: list[StepSpec] = Field(min_length=1)
    secrets: list[JobSecret] | None = None

    @field_validator("steps")
    @classmethod
    def _unique_step_names(cls, steps: list[StepSpec]) -> list[StepSpec]:
        seen: set[str] = set()
        for step in steps:
            if step.name in seen:
                raise ValueError(f"step names must be unique: {step.name!r} appears more than once")
            seen.add(step.name)
        return steps


class CreateJobRequest(_Spec):
    name: str | None = None
    description: str | None = None
    project: str | None = None
    spec: dict[str, Any]
    platform_spec: PlatformJobSpec
    source: str
    ownership: dict[str, Any] | None = None
    custom_fields: dict[str, Any] | None = None
    output_location: str | None = None

    @field_validator("name", "output_location")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)


class StatusUpdate(_Spec):
    status: JobStatus
    status_details: dict[str, Any] = Field(default_factory=dict)
    error_details: dict[str, Any] = Field(default_factory=dict)


class TaskUpdate(_Spec):
    status: JobStatus = JobStatus.PENDING
    status_details: dict[str, Any] | None = None
    error_details: dict[str, Any] | None = None
    error_stack: str | None = None


# ---------------------------------------------------------------------------------------------
# Stored records (what storage returns)
# ---------------------------------------------------------------------------------------------


class JobRecord(BaseModel):
    pk: int
    id: str
    name: str
    workspace: str
    project: str | None
    description: str | None
    source: str
    spec: dict[str, Any]
    platform_spec: PlatformJobSpec
    fileset: str
    output_location: str | None
    ownership: dict[str, Any] | None
    custom_fields: dict[str, Any] | None
    auth_context: dict[str, Any] | None
    created_at: int
    updated_at: int
    # The reference keeps status on a separate "attempt" entity; localjobs has one attempt per job
    # (no rerun), so its id and status live on the job row.
    attempt_id: str
    attempt_seq: int
    status: JobStatus
    status_details: dict[str, Any]
    error_details: dict[str, Any] | None


class StepRecord(BaseModel):
    pk: int
    id: str
    name: str
    workspace: str
    job_pk: int
    job_name: str
    job_source: str
    attempt_id: str
    fileset: str
    output_location: str | None
    index: int
    spec: StepSpec
    status: JobStatus
    status_details: dict[str, Any]
    error_details: dict[str, Any] | None
    auth_context: dict[str, Any] | None
    created_at: int
    updated_at: int
    # When the step last became active, and its active time before that (pauses excluded).
    active_since: int | None
    active_us: int = 0
    # Workload identity persisted by the executor (see runner/executors): survives restarts.
    handle: dict[str, Any] | None


class TaskRecord(BaseModel):
    pk: int
    id: str
    name: str
    workspace: str
    step_pk: int
    step_id: str
    status: JobStatus
    status_details: dict[str, Any]
    error_details: dict[str, Any] | None
    error_stack: str | None
    created_at: int
    updated_at: int
    # Last time the workload itself reported (a PUT from outside the daemon): the heartbeat.
    heartbeat_at: int | None


class LogLine(BaseModel):
    id: int
    timestamp: int
    job_name: str
    attempt_id: str
    step_name: str
    task_name: str
    stream: Literal["stdout", "stderr"]
    message: str


@dataclass(frozen=True, slots=True)
class JobState:
    """The few fields of a job that rolling a step's status up to it depends on."""

    pk: int
    status: JobStatus
    error_details: dict[str, Any] | None
    step_count: int


@dataclass(frozen=True, slots=True)
class Needs:
    """What a step takes from the machine while it runs, all its tasks together: GPUs, CPUs
    (cores, from `resources.requests.cpu`) and memory (bytes, from `resources.requests.memory`)."""

    gpus: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.gpus or self.cpus or self.memory_bytes)

    def __add__(self, other: Needs) -> Needs:
        return Needs(self.gpus + other.gpus, self.cpus + other.cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Needs) -> Needs:
        return Needs(self.gpus - other.gpus, self.cpus - other.cpus, self.memory_bytes - other.memory_bytes)

    def fits_in(self, room: Needs) -> bool:
        # A small tolerance: requests such as 0.1 + 0.2 CPUs must fit in 0.3.
        return (
            self.gpus <= room.gpus
            and self.cpus <= room.cpus + 1e-9
            and self.memory_bytes <= room.memory_bytes
        )


def needs_of(
    provider: str,
    num_gpus: int | None = None,
    num_nodes: int | None = None,
    cpu: str | None = None,
    memory: str | None = None,
) -> Needs:
    """The one rule for what a step takes (storage applies it to stored specs, the service and the
    scheduler to parsed ones): per node, `num_gpus` (1 by default on the GPU providers) and the
    requests; a distributed step has `num_nodes` nodes, every other one node."""
    if provider == "subprocess":
        return Needs()
    per_node_gpus = num_gpus if num_gpus is not None else (1 if provider in ("gpu", "gpu_distributed") else 0)
    nodes = (num_nodes or 1) if provider == "gpu_distributed" else 1
    return Needs(
        gpus=per_node_gpus * nodes,
        cpus=(parse_quantity(cpu) if cpu else 0.0) * nodes,
        memory_bytes=math.ceil(parse_quantity(memory) * nodes) if memory else 0,
    )


def step_needs(executor: Executor) -> Needs:
    if isinstance(executor, SubprocessExecutor):
        return Needs()
    resources = executor.resources
    requests = resources.requests
    return needs_of(
        executor.provider,
        resources.num_gpus,
        resources.num_nodes,
        requests.cpu if requests else None,
        requests.memory if requests else None,
    )


@dataclass(frozen=True, slots=True)
class ResourceDemand:
    """A step waiting to start: what it needs (nothing, for most), and since when it waits (µs)."""

    step_pk: int
    needs: Needs
    waiting_since_us: int


@dataclass(frozen=True, slots=True)
class WatchedStep:
    """The few fields of an unfinished step that its deadlines depend on."""

    pk: int
    status: JobStatus
    created_at: int
    updated_at: int
    active_since: int | None
    active_us: int
    staleness_timeout_s: int
    active_tasks: int
    last_beat: int | None
    # Which profile's time limits apply.
    provider: str = "subprocess"
    profile: str = "default"


class SecretRecord(BaseModel):
    pk: int
    workspace: str
    name: str
    description: str | None
    # Sealed under key `key_id` (runner/secret_keys.py); None: stored before values were sealed.
    value: str
    key_id: str | None = None
    created_at: int
    updated_at: int


class ResultRecord(BaseModel):
    pk: int
    id: str
    job_pk: int
    name: str
    artifact_url: str
    artifact_storage_type: str
    created_at: int
    updated_at: int


class Page[T](BaseModel):
    items: list[T]
    total: int


class StepFilter(BaseModel):
    workspace: str | None = None  # None: every workspace
    job: str | None = None
    statuses: list[JobStatus] | None = None
    source: str | None = None


class StringCondition(BaseModel):
    eq: str | None = None
    like: str | None = None
    in_: list[str] | None = None
    nin: list[str] | None = None


class JobFilter(BaseModel):
    workspace: str
    name: StringCondition | None = None
    source: StringCondition | None = None
    project: StringCondition | None = None
    statuses: list[JobStatus] | None = None
    created_gte: int | None = None
    created_lte: int | None = None
    updated_gte: int | None = None
    updated_lte: int | None = None


class LogQuery(BaseModel):
    job_pk: int
    attempt_id: str | None = None
    step_name: str | None = None
    task_name: str | None = None
