"""The job specification (request side), mirroring jobs-openapi.yaml: steps, executors, resources,
environment, secrets; and the status updates a client or a task sends."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runner.models.ids import check_name
from runner.models.quantities import parse_quantity
from runner.models.statuses import JobStatus


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


class _ContainerExecutorSpec(_Spec):
    profile: str = "default"
    container: ContainerSpec
    resources: ComputeResources = Field(default_factory=ComputeResources)


class CPUExecutorSpec(_ContainerExecutorSpec):
    provider: Literal["cpu"] = "cpu"


class GPUExecutorSpec(_ContainerExecutorSpec):
    provider: Literal["gpu"] = "gpu"


class DistributedGPUExecutorSpec(_ContainerExecutorSpec):
    provider: Literal["gpu_distributed"] = "gpu_distributed"


class SubprocessExecutorSpec(_Spec):
    provider: Literal["subprocess"] = "subprocess"
    profile: str = "default"
    command: list[str]

    @field_validator("command")
    @classmethod
    def _non_empty(cls, value: list[str]) -> list[str]:
        if not value or not value[0]:
            raise ValueError("subprocess execution requires command to be set")
        return [_without_nul(item, "an argument") for item in value]


ExecutorSpec = Annotated[
    CPUExecutorSpec | GPUExecutorSpec | DistributedGPUExecutorSpec | SubprocessExecutorSpec,
    Field(discriminator="provider"),
]


class StepLifecycle(_Spec):
    staleness_timeout_seconds: int = Field(default=0, ge=0)


class StepSpec(_Spec):
    name: str
    # None when not sent (the reference echoes null then, and `[]` for an explicit empty list).
    environment: list[EnvironmentVariable] | None = None
    executor: ExecutorSpec
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
