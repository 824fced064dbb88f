"""What callers ask storage for: the filters and sort orders of the list endpoints, a page of
results, and which log lines to read."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from runner.models.statuses import JobStatus


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
