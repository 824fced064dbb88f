"""Stored records -> the wire shapes of jobs-openapi.yaml. Field names and order follow the reference."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from runner.log_pages import LogPage
from runner.models import JobRecord, LogLine, PlatformJobSpec, StepRecord, StepSpec, TaskRecord
from runner.service import StatusTree


def timestamp(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def _spec(spec: PlatformJobSpec | StepSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json", exclude_none=True)


def job(record: JobRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "attempt_id": record.attempt_id,
        "name": record.name,
        "workspace": record.workspace,
        "project": record.project,
        "description": record.description,
        "source": record.source,
        "spec": record.spec,
        "platform_spec": _spec(record.platform_spec),
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
        "step_spec": _spec(record.spec),
        "status": record.status.value,
        "status_details": record.status_details,
        "error_details": record.error_details or {},
        "auth_context": record.auth_context or None,
        "created_at": timestamp(record.created_at),
        "updated_at": timestamp(record.updated_at),
    }
    # Field order is the reference model's; nulls are left out as in the reference's lists.
    return {key: value for key, value in item.items() if value is not None}


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
    items: list[dict[str, Any]], page: int, page_size: int, total: int, sort: str, flt: dict[str, Any] | None
) -> dict[str, Any]:
    return {
        "data": items,
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
