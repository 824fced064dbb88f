"""Lowering a tree to one condition per field that must all hold (what the store evaluates), with
the reference's meaning for each operator; a tree the store cannot express is a 422 that says so."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import TypeAdapter, ValidationError

from runner.models import JobStatus, datetime_to_us
from web.errors import InvalidRequest, validation_detail
from web.query.conditions import (
    FAR,
    Conjunction,
    FieldCondition,
    Statuses,
    Strings,
    Times,
    Unsupported,
    contains,
)
from web.query.tree import FILTER_LOC, Condition, Expr, Loc, refuse, to_echo


@dataclass(frozen=True)
class Fields:
    """The fields a list filters on, and how a condition on each one reads."""

    strings: frozenset[str]
    times: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()
    constants: tuple[tuple[str, str], ...] = ()  # one value in every row listed: evaluated at once
    refused: tuple[tuple[str, str], ...] = ()  # taken by the reference, not by localjobs: why

    def names(self) -> list[str]:
        return sorted({"status", *self.strings, *self.times, *(name for name, _ in self.constants)})

    def condition(self, c: Condition) -> Conjunction:
        constants, refused = dict(self.constants), dict(self.refused)
        if c.field == "status":
            return _only("status", _statuses(c))
        if c.field in constants:
            return {} if _holds(c, constants[c.field]) else None
        if c.field in self.times:
            return _only(c.field, _times(c))
        if c.field in self.strings:
            return _only(c.field, _strings(c, c.field in self.nullable))
        if c.field in refused:
            raise refuse(c.loc[:-1], refused[c.field], c.value)
        if "." in c.field:
            msg = f"unknown filter field {c.field!r}: localjobs filters on no nested (data.*) field"
            raise refuse(c.loc[:-1], msg, c.value)
        msg = f"unknown filter field {c.field!r}; valid fields: {', '.join(self.names())}"
        raise refuse(c.loc[:-1], msg, c.value, "extra_forbidden")


def _only(field: str, condition: FieldCondition) -> Conjunction:
    if condition.never:
        return None
    return {} if condition.always else {field: condition}


def _lower(expr: Expr, fields: Fields) -> Conjunction:
    """The tree as one condition per field that must all hold, or Unsupported."""
    if isinstance(expr, Condition):
        return fields.condition(expr)
    parts = [_lower(item, fields) for item in expr.items]
    if expr.op == "$and":
        result: Conjunction = {}
        for part in parts:
            result = _both(result, part)
        return result
    if expr.op == "$or":
        result = None
        for part in parts:
            result = _either(result, part)
        return result
    (inner,) = parts
    if inner is None or not inner:
        return {} if inner is None else None
    if len(inner) > 1:
        raise Unsupported(f"a negation of conditions on several fields ({', '.join(sorted(inner))})")
    ((field, condition),) = inner.items()
    return _only(field, condition.negated())


def _join(a: FieldCondition, b: FieldCondition, how: str) -> FieldCondition:
    joined: FieldCondition = getattr(a, how)(b)
    return joined


def _both(a: Conjunction, b: Conjunction) -> Conjunction:
    if a is None or b is None:
        return None
    result = dict(a)
    for field, condition in b.items():
        joined = _join(result[field], condition, "both") if field in result else condition
        if joined.never:
            return None
        result[field] = joined
    return {field: condition for field, condition in result.items() if not condition.always}


def _either(a: Conjunction, b: Conjunction) -> Conjunction:
    if a is None or b is None:
        return b if a is None else a
    if not a or not b:
        return {}
    if len(a) == 1 and a.keys() == b.keys():
        ((field, condition),) = a.items()
        return _only(field, _join(condition, b[field], "either"))
    raise Unsupported(f"an OR across fields ({', '.join(sorted({*a, *b}))})")


# The reference's in-memory evaluation (nemo_platform_plugin.in_memory_filter), for a field whose
# values are known: the job statuses, and the constant fields.
_ORDERED: dict[str, Callable[[Any, Any], bool]] = {
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
}


def _holds(c: Condition, value: str) -> bool:
    if c.op == "$eq":
        return bool(value == c.value)
    if c.op == "$like":
        return contains(value, str(c.value))
    if c.op in ("$in", "$nin"):
        return (value in _list_operand(c)) == (c.op == "$in")
    try:
        return _ORDERED[c.op](value, c.value)
    except TypeError:
        return False


def _list_operand(c: Condition) -> list[Any]:
    if not isinstance(c.value, list):
        raise refuse(c.loc, f"{c.op} takes a list", c.value, "list_type")
    return c.value


_STATUS = TypeAdapter(JobStatus)
_DATETIME = TypeAdapter(datetime)


def _validated[T](adapter: TypeAdapter[T], value: Any, loc: Iterable[str | int]) -> T:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, [*FILTER_LOC, *loc])) from None


def operands(c: Condition) -> list[tuple[Loc, Any]]:
    """The values a condition names, each with its place (a list's items by index)."""
    if c.op in ("$in", "$nin"):
        return [([*c.loc, i], item) for i, item in enumerate(_list_operand(c))]
    return [(list(c.loc), c.value)]


def _statuses(c: Condition) -> Statuses:
    if c.op in ("$eq", "$in", "$nin"):
        # These name statuses: a misspelt one is a 422, not an empty page.
        for loc, value in operands(c):
            if value is not None:
                _validated(_STATUS, value, loc)
    elif not isinstance(c.value, str):
        raise refuse(c.loc, "Input should be a valid string", c.value, "string_type")
    return Statuses(frozenset(s for s in JobStatus if _holds(c, s.value)))


def _times(c: Condition) -> Times:
    if c.op == "$like":
        raise refuse(c.loc, f"{c.op} does not apply to {c.field}", c.value)
    # A timestamp is never null: nothing equals null, or is ordered against it.
    instants = [
        datetime_to_us(_validated(_DATETIME, value, loc)) for loc, value in operands(c) if value is not None
    ]
    points = Times.of((t, t) for t in instants)
    if c.op in ("$in", "$nin"):
        return points if c.op == "$in" else points.negated()
    if not instants:
        return Times(())
    (t,) = instants
    ranges = {
        "$eq": (t, t),
        "$gte": (t, FAR),
        "$gt": (t + 1, FAR),
        "$lte": (-FAR, t),
        "$lt": (-FAR, t - 1),
    }
    return Times((ranges[c.op],))


def _strings(c: Condition, nullable: bool) -> Strings:
    if c.op in _ORDERED:
        raise refuse(c.loc, f"{c.op} applies to created_at and updated_at only", c.value)
    for loc, value in operands(c):
        if value is not None and not isinstance(value, str):
            raise refuse(loc, "Input should be a valid string", value, "string_type")
    if c.op in ("$in", "$nin"):
        values = frozenset(item for item in c.value if item is not None)
        return Strings(among=values) if c.op == "$in" else Strings(excluded=values)
    if c.value is None:
        if c.op == "$like":  # the reference looks for the text "none"
            return Strings(containing=("none",))
        if nullable:
            raise Unsupported(f"a test for a missing {c.field} ({c.field} equal to null)")
        return Strings(among=frozenset())  # never null
    if c.op == "$like":
        return Strings(containing=(c.value,))
    return Strings(among=frozenset({c.value}))


def lowered(tree: Expr | None, fields: Fields) -> Conjunction:
    """The tree lowered ({} when there is none), or the 422 that says what the store cannot do."""
    if tree is None:
        return {}
    try:
        return _lower(tree, fields)
    except Unsupported as exc:
        msg = (
            f"localjobs cannot evaluate this filter: {exc}; it takes an AND of conditions on one "
            "field each (any combination on status)"
        )
        raise InvalidRequest.single(list(FILTER_LOC), msg, "value_error", to_echo(tree)) from None
