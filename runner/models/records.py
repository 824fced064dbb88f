"""Stored records, what storage returns: jobs, steps, tasks, log lines, secrets, results, and the
small views of a job or a step that the roll-up and the watchdog read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel

from runner.models.specs import PlatformJobSpec, StepSpec
from runner.models.statuses import JobStatus


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
