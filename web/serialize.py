"""Stored records -> the wire shapes of jobs-openapi.yaml, exactly as the reference serializes them.

The reference answers through FastAPI with its pydantic models: a single object is dumped whole, so
every unset optional field is a `null` (nested ones too: `platform_spec.secrets`, an environment
variable's `value`/`from_secret`, `resources.num_gpus`, ...); the list routes (List Jobs, List Steps,
List Secrets) use `response_model_exclude_none`, which leaves out every `null` *model field* at
every depth (the envelope's `filter`, an item's `description`, `resources.requests.cpu`, ...) but
never a `null` inside a free-form dict (`spec`, `config`, `status_details`). `drop_none=True` is
that list form. Field names, order and defaults follow the reference's models.
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime
from typing import Any

from runner.log_pages import LogPage
from runner.models import (
    ComputeResources,
    ComputeResourceSpec,
    EnvironmentVariable,
    JobRecord,
    LogLine,
    Needs,
    PlatformJobSpec,
    StepRecord,
    StepSpec,
    SubprocessExecutorSpec,
    TaskRecord,
    shown_cpus,
)
from runner.service import StatusTree

# Years 1970-9999: what gmtime formats as isoformat does; outside them, datetime's own path.
_LAST_SECOND = 253402300799


def timestamp(us: int) -> str:
    """ISO 8601 in UTC with a `Z`, microseconds only when there are any (as `isoformat`).

    Every answer carries several and a log page one per line: the second's text is formatted
    once (cached), which is ~5x cheaper than building a datetime per value."""
    seconds, micro = divmod(us, 1_000_000)
    if not 0 <= seconds <= _LAST_SECOND:
        return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")
    second = _second_text(seconds)
    return f"{second}.{micro:06d}Z" if micro else f"{second}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _model(fields: dict[str, Any], drop_none: bool) -> dict[str, Any]:
    """One model's fields: with `drop_none`, its null fields are left out (exclude_none)."""
    return {key: value for key, value in fields.items() if value is not None} if drop_none else fields


def _resources(spec: ComputeResourceSpec | None, drop_none: bool) -> dict[str, Any]:
    # The reference's default is an empty ComputeResourceSpec, never null.
    return _model({"cpu": spec.cpu if spec else None, "memory": spec.memory if spec else None}, drop_none)


def _compute(resources: ComputeResources, drop_none: bool) -> dict[str, Any]:
    return _model(
        {
            "requests": _resources(resources.requests, drop_none),
            "limits": _resources(resources.limits, drop_none),
            "num_nodes": resources.num_nodes,
            "num_gpus": resources.num_gpus,
            "shm_size": resources.shm_size,
        },
        drop_none,
    )


def _variable(variable: EnvironmentVariable, drop_none: bool) -> dict[str, Any]:
    secret = variable.from_secret
    return _model(
        {
            "name": variable.name,
            "value": variable.value,
            "from_secret": {"name": secret.name} if secret is not None else None,
        },
        drop_none,
    )


def step_spec(spec: StepSpec, drop_none: bool = False) -> dict[str, Any]:
    """`PlatformJobStepSpec` in the reference's normalised form (defaults filled in)."""
    executor = spec.executor
    if isinstance(executor, SubprocessExecutorSpec):
        shown: dict[str, Any] = {
            "provider": executor.provider,
            "profile": executor.profile,
            "command": executor.command,
        }
    else:
        container = executor.container
        shown = {
            "provider": executor.provider,
            "profile": executor.profile,
            "container": _model(
                {"image": container.image, "entrypoint": container.entrypoint, "command": container.command},
                drop_none,
            ),
            "resources": _compute(executor.resources, drop_none),
        }
    return _model(
        {
            "name": spec.name,
            "environment": None
            if spec.environment is None
            else [_variable(v, drop_none) for v in spec.environment],
            "executor": shown,
            "config": spec.config,
            "lifecycle": {"staleness_timeout_seconds": spec.lifecycle.staleness_timeout_seconds},
        },
        drop_none,
    )


def platform_spec(spec: PlatformJobSpec, drop_none: bool = False) -> dict[str, Any]:
    secrets = None
    if spec.secrets is not None:
        # An inline secret's `value` is never stored, so never shown (README, differences).
        secrets = [
            _model({"name": s.name, "value": None, "ref_id": s.ref_id}, drop_none) for s in spec.secrets
        ]
    return _model({"steps": [step_spec(s, drop_none) for s in spec.steps], "secrets": secrets}, drop_none)


def job(record: JobRecord, drop_none: bool = False) -> dict[str, Any]:
    """`PlatformJobResponse`; `drop_none` for List Jobs."""
    fields = {
        "id": record.id,
        "attempt_id": record.attempt_id,
        "name": record.name,
        "workspace": record.workspace,
        "project": record.project,
        "description": record.description,
        "source": record.source,
        "spec": record.spec,
        "platform_spec": platform_spec(record.platform_spec, drop_none),
        "fileset": record.fileset,
        "output_location": record.output_location,
        "status": record.status.value,
        "status_details": record.status_details,
        "error_details": record.error_details,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
        "ownership": record.ownership,
        "custom_fields": record.custom_fields,
    }
    return _model(fields, drop_none)


def _entity(pk_id: str, created_at: int, updated_at: int, parent: str) -> dict[str, Any]:
    return {
        "id": pk_id,
        "created_at": timestamp(created_at),
        "created_by": None,
        "updated_at": timestamp(updated_at),
        "updated_by": None,
        "entity_id": pk_id,
        "parent": parent,
        "db_version": 1,
    }


def step(record: StepRecord) -> dict[str, Any]:
    """`PlatformJobStep`, the entity returned by GET and PATCH of one step."""
    return {
        "name": record.name,
        "workspace": record.workspace,
        "project": None,
        "attempt_id": record.attempt_id,
        "config": {**record.spec.config, "_step_spec_name": record.name},
        "status": record.status.value,
        "status_details": record.status_details,
        "error_details": record.error_details,
        **_entity(record.id, record.created_at, record.updated_at, record.attempt_id),
    }


def step_with_context(record: StepRecord) -> dict[str, Any]:
    """`PlatformJobStepWithContext`, the List Steps item (nulls left out, as the reference's lists)."""
    item: dict[str, Any] = {
        "id": record.id,
        "job": record.job_name,
        "attempt_id": record.attempt_id,
        "fileset": record.fileset,
        "artifact_base_path": f"jobs/{record.job_name}" if record.output_location else None,
        "workspace": record.workspace,
        "name": record.name,
        "step_spec": step_spec(record.spec, drop_none=True),
        "status": record.status.value,
        "status_details": record.status_details,
        "error_details": record.error_details or {},
        "auth_context": record.auth_context or None,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    }
    # Field order is the reference model's; nulls are left out as in the reference's lists.
    return _model(item, drop_none=True)


def task(record: TaskRecord) -> dict[str, Any]:
    return {
        "name": record.name,
        "workspace": record.workspace,
        "project": None,
        "step_id": record.step_id,
        "status": record.status.value,
        "status_details": record.status_details,
        "error_details": record.error_details,
        "error_stack": record.error_stack,
        **_entity(record.id, record.created_at, record.updated_at, record.step_id),
    }


def status_tree(tree: StatusTree) -> dict[str, Any]:
    return {
        "id": tree.job.id,
        "name": tree.job.name,
        "status": tree.job.status.value,
        "status_details": tree.job.status_details,
        "error_details": tree.job.error_details,
        "steps": [
            {
                "id": s.id,
                "name": s.name,
                "status": s.status.value,
                "status_details": s.status_details,
                "error_details": s.error_details or {},
                "tasks": [
                    {
                        "id": t.id,
                        "name": t.name,
                        "status": t.status.value,
                        "status_details": t.status_details,
                        "error_details": t.error_details or {},
                        "error_stack": t.error_stack,
                        "created_at": timestamp(t.created_at),
                        "updated_at": timestamp(t.updated_at),
                    }
                    for t in tree.tasks.get(s.pk, [])
                ],
                "created_at": timestamp(s.created_at),
                "updated_at": timestamp(s.updated_at),
            }
            for s in tree.steps
        ],
        "created_at": timestamp(tree.job.created_at),
        "updated_at": timestamp(tree.job.updated_at),
    }


def log_line(line: LogLine) -> dict[str, Any]:
    return {
        "timestamp": timestamp(line.timestamp),
        "job": line.job_name,
        "job_step": line.step_name,
        "job_task": line.task_name,
        "message": line.message,
        # Not in the reference schema (clients ignore unknown fields): the stream, so a reader
        # need not parse the "[stderr] " prefix.
        "stream": line.stream,
    }


def log_page(page: LogPage) -> dict[str, Any]:
    return {
        "data": [log_line(line) for line in page.lines],
        "total": page.total,
        "next_page": page.next_page,
        "prev_page": page.prev_page,
        # Not in the reference schema: lines dropped by the per-task size limit in this scope.
        "dropped_lines": page.dropped,
    }


def page_envelope(
    items: list[dict[str, Any]],
    page: int,
    page_size: int,
    total: int,
    sort: str | None,
    flt: dict[str, Any] | None,
) -> dict[str, Any]:
    """The list routes' `Page`, with exclude_none as the reference's: a null `sort` or `filter` is
    left out, and so is every null field of an item (serialized items drop their nested ones)."""
    envelope = {
        "data": [_model(item, drop_none=True) for item in items],
        "pagination": {
            "page": page,
            "page_size": page_size,
            "current_page_size": len(items),
            "total_pages": max(1, -(-total // page_size)),
            "total_results": total,
        },
        "sort": sort,
        "filter": flt,
    }
    return _model(envelope, drop_none=True)


def capacity_body(capacity: Needs, in_use: Needs) -> dict[str, Any]:
    """Totals, in use and free, per kind: also what each execution profile carries as `capacity`."""
    free = capacity - in_use
    return {
        "cpus": {"total": capacity.cpus, "in_use": shown_cpus(in_use.cpus), "free": shown_cpus(free.cpus)},
        "memory_bytes": {
            "total": capacity.memory_bytes,
            "in_use": in_use.memory_bytes,
            "free": free.memory_bytes,
        },
        "gpus": {"total": capacity.gpus, "in_use": in_use.gpus, "free": free.gpus},
    }
