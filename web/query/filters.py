"""The filter of List Jobs and of List Steps: every form read, joined, lowered, and turned into the
store's `JobFilter` / `StepFilter`, with the echo the list's `filter` carries."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from multidict import MultiMapping
from pydantic import BaseModel, ValidationError, field_validator

from runner.models import JobFilter, JobStatus, StepFilter, StringCondition
from web import strict_json
from web.errors import InvalidRequest, validation_detail
from web.query.conditions import FAR, FieldCondition, Statuses, Strings, Times
from web.query.documents import bracket_tree, deep_object, document_tree
from web.query.lowering import Fields, lowered, operands
from web.query.text import TextFilterError, parse_text
from web.query.tree import FILTER_LOC, Expr, Logical, refuse, to_echo


def _raw_tree(query: MultiMapping[str]) -> Expr | None:
    """A plain `filter=`: JSON when it starts with `{` (as the reference decides), else text."""
    raw = query.get("filter")
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            return document_tree(strict_json.loads(raw), [])
        except strict_json.Refused as exc:
            raise InvalidRequest([exc.detail(list(FILTER_LOC))]) from None
        except ValueError as exc:
            message = f"filter is not valid JSON: {exc}"
            raise InvalidRequest.single(list(FILTER_LOC), message, "json_invalid", raw) from None
    try:
        tree = parse_text(raw)
    except TextFilterError as exc:
        msg = f"filter is neither a JSON object nor a valid text filter: {exc}"
        raise InvalidRequest.single(list(FILTER_LOC), msg, "value_error", raw) from None
    _no_lone_surrogates(tree)
    return tree


def _no_lone_surrogates(expr: Expr) -> None:
    # A `\ud800` escape decodes to half a character, which neither the store nor JSON can carry.
    if isinstance(expr, Logical):
        for item in expr.items:
            _no_lone_surrogates(item)
        return
    for loc, value in (
        operands(expr) if isinstance(expr.value, list) or expr.op not in ("$in", "$nin") else []
    ):
        if isinstance(value, str) and any("\ud800" <= ch <= "\udfff" for ch in value):
            raise refuse(loc, "a filter value with an unpaired surrogate (\\ud800-\\udfff) escape", None)


def _all_of(*trees: Expr | None) -> Expr | None:
    present = [t for t in trees if t is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Logical("$and", tuple(present))


_JOB_FIELDS = Fields(
    strings=frozenset({"name", "source", "project"}),
    times=frozenset({"created_at", "updated_at"}),
    nullable=frozenset({"project"}),
    refused=(("id", "localjobs does not filter jobs by id; filter by name"),),
)


def parse_jobs_filter(query: MultiMapping[str], workspace: str) -> tuple[JobFilter, dict[str, Any] | None]:
    """List Jobs' filter (every form) and its echo: the reference's tree as a dict, or None."""
    tree = _all_of(_raw_tree(query), bracket_tree(query))
    constants = (("workspace", workspace), ("entity_type", "platform_job"))
    conjunction = lowered(tree, replace(_JOB_FIELDS, constants=constants))
    echo = to_echo(tree) if tree is not None else None
    if conjunction is None:
        # Nothing can match: a name among none.
        return JobFilter(workspace=workspace, name=StringCondition(in_=[])), echo
    statuses = conjunction.get("status")
    created_gte, created_lte = _bounds("created_at", conjunction.get("created_at"))
    updated_gte, updated_lte = _bounds("updated_at", conjunction.get("updated_at"))
    flt = JobFilter(
        workspace=workspace,
        name=_string_condition("name", conjunction.get("name")),
        source=_string_condition("source", conjunction.get("source")),
        project=_string_condition("project", conjunction.get("project")),
        statuses=[s for s in JobStatus if s in statuses.allowed] if isinstance(statuses, Statuses) else None,
        created_gte=created_gte,
        created_lte=created_lte,
        updated_gte=updated_gte,
        updated_lte=updated_lte,
    )
    return flt, echo


def _bounds(field: str, condition: FieldCondition | None) -> tuple[int | None, int | None]:
    if not isinstance(condition, Times):
        return None, None
    if len(condition.ranges) != 1:
        msg = f"localjobs cannot evaluate this filter: {field} in several separate ranges"
        raise InvalidRequest.single([*FILTER_LOC, field], msg, "value_error")
    ((lo, hi),) = condition.ranges
    return (None if lo <= -FAR else lo), (None if hi >= FAR else hi)


def _string_condition(field: str, condition: FieldCondition | None) -> StringCondition | None:
    if not isinstance(condition, Strings):
        return None
    if len(condition.containing) > 1:
        msg = f"localjobs cannot evaluate this filter: more than one substring match (~, $like) on {field}"
        raise InvalidRequest.single([*FILTER_LOC, field], msg, "value_error", list(condition.containing))
    return StringCondition(
        like=condition.containing[0] if condition.containing else None,
        in_=sorted(condition.among) if condition.among is not None else None,
        nin=sorted(condition.excluded) if condition.excluded else None,
    )


# --------------------------------------------------------------------------------- List Steps


class _StepsFilterModel(BaseModel, extra="forbid"):
    """The reference's PlatformJobStepsListFilter: what bracket keys may say on List Steps."""

    job: str | None = None
    status: list[JobStatus] | None = None
    source: str | None = None

    @field_validator("status", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        # A single status is a one-item list: the SDK sends `filter[status]=active` for ["active"];
        # an empty value (null) among others says nothing.
        if value is None:
            return None
        items = [v for v in value if v is not None] if isinstance(value, list) else [value]
        return items or None


_STEP_FIELDS = Fields(strings=frozenset({"job", "source"}))


def parse_steps_filter(
    query: MultiMapping[str], workspace: str, job: str
) -> tuple[StepFilter, dict[str, Any] | None]:
    """List Steps' filter and its echo (the filter's fields without nulls, or None).

    Bracket keys are read as the reference reads them (its filter model: `job`, `source`, `status`
    list, no operators). A plain `filter=` (JSON or text), which the reference ignores here, is
    applied too, with the same grammar and operators as on List Jobs."""
    try:
        model = _StepsFilterModel.model_validate(deep_object(query))
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, list(FILTER_LOC))) from None
    conjunction = lowered(_raw_tree(query), _STEP_FIELDS)
    statuses = model.status
    names = {"job": model.job, "source": model.source}
    if job != "-":
        names["job"] = job  # the path's job wins over any filter on it, as the reference's
        if conjunction:
            conjunction.pop("job", None)
    if conjunction is not None:
        for field in ("job", "source"):
            wanted = conjunction.get(field)
            if isinstance(wanted, Strings):
                if wanted.among is None or len(wanted.among) != 1:
                    msg = f"localjobs cannot evaluate this filter: {field} must name one value (:, $eq)"
                    raise InvalidRequest.single([*FILTER_LOC, field], msg, "value_error")
                (value,) = wanted.among
                if names[field] not in (None, value):
                    conjunction = None
                    break
                names[field] = value
    if conjunction is not None and isinstance(status := conjunction.get("status"), Statuses):
        allowed = status.allowed & frozenset(statuses) if statuses else status.allowed
        statuses = [s for s in (statuses or list(JobStatus)) if s in allowed]
        if not statuses:
            conjunction = None
    if conjunction is None:
        statuses = []
    # As the reference's echo: the filter model's fields, nulls left out.
    shown: dict[str, Any] = {
        "job": names["job"],
        "status": None if statuses is None else [s.value for s in statuses],
        "source": names["source"],
    }
    echo = {key: value for key, value in shown.items() if value is not None}
    flt = StepFilter(
        workspace=None if workspace == "-" else workspace,
        # No step has an empty job name: a filter nothing can match asks for that.
        job="" if conjunction is None else names["job"],
        statuses=statuses or None,
        source=names["source"],
    )
    return flt, (echo or None)
