"""Query-string parsing: deepObject filters (`filter[status]=a,b`, `filter[name][$like]=x`) and paging.

Accepts what the official SDK sends (brackets, comma-joined lists) and also a JSON object in a plain
`filter=` parameter, as the reference does.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from multidict import MultiMapping
from pydantic import BaseModel, Field, ValidationError, field_validator

from runner.models import (
    JobFilter,
    JobSort,
    JobStatus,
    StepFilter,
    StepSort,
    StringCondition,
    datetime_to_us,
)
from web.errors import InvalidRequest, validation_detail

_MAX_PAGE = 2**31 - 1
MAX_PAGE_SIZE = 10_000


def parse_deep_object(query: MultiMapping[str], root: str) -> dict[str, Any]:
    """`filter[a][b]=v` -> {"a": {"b": "v"}}; a plain `filter=` holding a JSON object is merged in."""
    result: dict[str, Any] = {}
    raw = query.get(root)
    if raw:
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError as exc:
            message = f"filter is not valid JSON: {exc}"
            raise InvalidRequest.single(["query", root], message, "json_invalid", raw) from None
        if not isinstance(parsed, dict):
            raise InvalidRequest.single(["query", root], "filter must be a JSON object", "dict_type", raw)
        result.update(parsed)
    prefix = root + "["
    for key, value in query.items():
        if not key.startswith(prefix):
            continue
        parts = _bracket_parts(key[len(root) :])
        if parts is None:
            raise InvalidRequest.single(["query", key], "malformed filter key", "value_error", value)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                child = node[part] = {"$eq": child}
            node = child
        leaf = parts[-1]
        if value == "":
            # As the reference: an empty value is None, i.e. no condition (the SDK never sends one).
            node.setdefault(leaf, None)
        elif node.get(leaf) is None:
            node[leaf] = value
        elif isinstance(node[leaf], list):
            node[leaf].extend(_split(value))
        else:
            node[leaf] = [*_as_list(node[leaf]), *_split(value)]
    return result


def _bracket_parts(text: str) -> list[str] | None:
    parts: list[str] = []
    while text:
        if not text.startswith("[") or "]" not in text:
            return None
        end = text.index("]")
        parts.append(text[1:end])
        text = text[end + 1 :]
    return parts or None


def _split(value: str) -> list[str]:
    return [item for item in value.split(",") if item != ""]


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    if isinstance(value, str):
        return _split(value)
    return [value]


class Paging(BaseModel):
    page: int = Field(default=1, gt=0, le=_MAX_PAGE)
    page_size: int = Field(default=25, gt=0, le=MAX_PAGE_SIZE)


class StepsQuery(Paging):
    sort: StepSort = StepSort.CREATED_AT


class JobsQuery(Paging):
    page_size: int = Field(default=10, gt=0, le=MAX_PAGE_SIZE)
    sort: JobSort = JobSort.CREATED_AT_DESC


def parse_paging[Q: BaseModel](model: type[Q], query: MultiMapping[str]) -> Q:
    values = {name: query[name] for name in model.model_fields if name in query}
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["query"])) from None


class _StepsFilterModel(BaseModel, extra="forbid"):
    job: str | None = None
    status: list[JobStatus] | None = None
    source: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # A single status is a one-item list: the SDK sends `filter[status]=active` for ["active"].
        return (_as_list(value) or None) if value is not None else None


def parse_steps_filter(
    query: MultiMapping[str], workspace: str, job: str
) -> tuple[StepFilter, dict[str, Any]]:
    raw = parse_deep_object(query, "filter")
    try:
        model = _StepsFilterModel.model_validate(raw)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["query", "filter"])) from None
    if job != "-":
        model.job = job
    echo = model.model_dump(mode="json", exclude_none=True)
    return (
        StepFilter(
            workspace=None if workspace == "-" else workspace,
            job=model.job,
            statuses=model.status,
            source=model.source,
        ),
        echo,
    )


_OPERATORS = {"eq", "like", "in", "nin", "gte", "lte"}


def _normalise_ops(field: str, value: Any) -> dict[str, Any] | None:
    """A bare value means $eq (a list means $in); operator keys may omit the `$`; None is no condition."""
    if value is None:
        return None
    if not isinstance(value, dict):
        if isinstance(value, list) or (isinstance(value, str) and "," in value):
            return {"$in": _as_list(value)}
        return {"$eq": value}
    ops: dict[str, Any] = {}
    for key, operand in value.items():
        op = key.removeprefix("$")
        if op not in _OPERATORS:
            raise InvalidRequest.single(
                ["query", "filter", field, key], f"unknown filter operator {key!r}", "value_error", operand
            )
        if operand is not None:
            ops["$" + op] = _as_list(operand) if op in ("in", "nin") else operand
    return ops or None


class _JobsFilterModel(BaseModel, extra="forbid"):
    name: dict[str, Any] | None = None
    source: dict[str, Any] | None = None
    project: dict[str, Any] | None = None
    workspace: dict[str, Any] | None = None
    status: dict[str, Any] | None = None
    created_at: dict[str, Any] | None = None
    updated_at: dict[str, Any] | None = None


class _StringOps(BaseModel, extra="forbid"):
    eq: str | None = Field(default=None, alias="$eq")
    like: str | None = Field(default=None, alias="$like")
    in_: list[str] | None = Field(default=None, alias="$in")
    nin: list[str] | None = Field(default=None, alias="$nin")


class _StatusOps(BaseModel, extra="forbid"):
    eq: JobStatus | None = Field(default=None, alias="$eq")
    in_: list[JobStatus] | None = Field(default=None, alias="$in")


class _DateOps(BaseModel, extra="forbid"):
    gte: datetime | None = Field(default=None, alias="$gte")
    lte: datetime | None = Field(default=None, alias="$lte")


def parse_jobs_filter(query: MultiMapping[str], workspace: str) -> tuple[JobFilter, dict[str, Any] | None]:
    raw = parse_deep_object(query, "filter")
    normalised = {field: _normalise_ops(field, value) for field, value in raw.items()}
    try:
        fields = _JobsFilterModel.model_validate(normalised)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["query", "filter"])) from None
    strings = {
        name: _ops(_StringOps, name, ops)
        for name, ops in (("name", fields.name), ("source", fields.source), ("project", fields.project))
        if ops is not None
    }
    status = _ops(_StatusOps, "status", fields.status) if fields.status is not None else None
    created = _ops(_DateOps, "created_at", fields.created_at) if fields.created_at is not None else None
    updated = _ops(_DateOps, "updated_at", fields.updated_at) if fields.updated_at is not None else None
    if fields.workspace is not None and fields.workspace.get("$eq") not in (None, workspace):
        # The path already names the workspace; a different one in the filter can match nothing.
        strings["name"] = _StringOps.model_validate({"$in": []})
    statuses: list[JobStatus] | None = None
    if status is not None:
        statuses = [*(status.in_ or []), *([status.eq] if status.eq else [])]
    flt = JobFilter(
        workspace=workspace,
        name=_condition(strings.get("name")),
        source=_condition(strings.get("source")),
        project=_condition(strings.get("project")),
        statuses=statuses,
        created_gte=datetime_to_us(created.gte) if created and created.gte else None,
        created_lte=datetime_to_us(created.lte) if created and created.lte else None,
        updated_gte=datetime_to_us(updated.gte) if updated and updated.gte else None,
        updated_lte=datetime_to_us(updated.lte) if updated and updated.lte else None,
    )
    echo = {field: ops for field, ops in normalised.items() if ops is not None}
    return flt, (echo or None)


def _ops[O: BaseModel](model: type[O], field: str, ops: dict[str, Any]) -> O:
    """One field's operators; errors are located at `filter.<field>.<operator>`."""
    try:
        return model.model_validate(ops)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["query", "filter", field])) from None


def _condition(ops: _StringOps | None) -> StringCondition | None:
    if ops is None:
        return None
    return StringCondition(eq=ops.eq, like=ops.like, in_=ops.in_, nin=ops.nin)
