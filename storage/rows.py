"""Row mapping: sqlite3 rows of the store's tables -> runner.models records, and the JSON
encoding of the columns that hold objects. No SQL here: the statements live in queries.py,
write_tx.py, logs.py and reads.py."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any

from runner.models import (
    JobRecord,
    JobStatus,
    LogLine,
    PlatformJobSpec,
    ResultRecord,
    SecretRecord,
    StepRecord,
    StepSpec,
    TaskRecord,
)
from storage import json_text


def dump(value: Any) -> str | None:
    return None if value is None else json_text.dumps(value)


def load(text: str | None) -> Any:
    return None if text is None else json_text.loads(text)


# Specs never change once stored, and the same one is read at every status change of its job:
# parse each distinct text once. Records are treated as read-only everywhere.
@functools.lru_cache(maxsize=4096)
def _job_spec(text: str) -> PlatformJobSpec:
    return PlatformJobSpec.model_validate_json(text)


@functools.lru_cache(maxsize=4096)
def _step_spec(text: str) -> StepSpec:
    return StepSpec.model_validate_json(text)


# Rows come from the store's own typed columns: built without pydantic's validation (which copied
# every dict again; building step records was ~5% of the daemon's GIL time in a 1,000-job profile).
def job_record(row: sqlite3.Row) -> JobRecord:
    return JobRecord.model_construct(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        project=row["project"],
        description=row["description"],
        source=row["source"],
        spec=json_text.loads(row["spec"]),
        platform_spec=_job_spec(row["platform_spec"]),
        fileset=row["fileset"],
        output_location=row["output_location"],
        ownership=load(row["ownership"]),
        custom_fields=load(row["custom_fields"]),
        auth_context=load(row["auth_context"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        attempt_id=row["attempt_id"],
        attempt_seq=row["attempt_seq"],
        status=JobStatus(row["status"]),
        status_details=json_text.loads(row["status_details"]),
        error_details=load(row["error_details"]),
    )


def step_record(row: sqlite3.Row) -> StepRecord:
    return StepRecord.model_construct(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        job_pk=row["job_pk"],
        job_name=row["job_name"],
        job_source=row["job_source"],
        attempt_id=row["attempt_id"],
        fileset=row["fileset"],
        output_location=row["output_location"],
        auth_context=load(row["auth_context"]),
        index=row["idx"],
        spec=_step_spec(row["spec"]),
        status=JobStatus(row["status"]),
        status_details=json_text.loads(row["status_details"]),
        error_details=load(row["error_details"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        active_since=row["active_since"],
        active_us=row["active_us"],
        handle=load(row["handle"]),
    )


def task_record(row: sqlite3.Row) -> TaskRecord:
    return TaskRecord.model_construct(
        pk=row["pk"],
        id=row["id"],
        name=row["name"],
        workspace=row["workspace"],
        step_pk=row["step_pk"],
        step_id=row["step_id"],
        status=JobStatus(row["status"]),
        status_details=json_text.loads(row["status_details"]),
        error_details=load(row["error_details"]),
        error_stack=row["error_stack"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        heartbeat_at=row["heartbeat_at"],
    )


def log_line(row: sqlite3.Row) -> LogLine:
    return LogLine(
        id=row["id"],
        timestamp=row["ts"],
        job_name=row["job_name"],
        attempt_id=row["attempt_id"],
        step_name=row["step_name"],
        task_name=row["task_name"],
        stream=row["stream"],
        message=row["message"],
    )


def secret_record(row: sqlite3.Row) -> SecretRecord:
    return SecretRecord(
        pk=row["pk"],
        workspace=row["workspace"],
        name=row["name"],
        description=row["description"],
        value=row["value"],
        key_id=row["key_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def result_record(row: sqlite3.Row) -> ResultRecord:
    return ResultRecord(
        pk=row["pk"],
        id=row["id"],
        job_pk=row["job_pk"],
        name=row["name"],
        artifact_url=row["artifact_url"],
        artifact_storage_type=row["artifact_storage_type"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
