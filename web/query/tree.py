"""The filter's expression tree, what every form of a filter becomes (`Condition` / `Logical`, the
reference's FilterOperation), its echo in a list's `filter`, and the 422 a filter's error is."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from web.errors import InvalidRequest

Loc = list[str | int]
FILTER_LOC: Loc = ["query", "filter"]

COMPARISONS = frozenset({"$eq", "$like", "$lt", "$lte", "$gt", "$gte", "$in", "$nin"})


@dataclass(frozen=True, slots=True)
class Condition:
    """`field op value`: op one of COMPARISONS; `loc` is where it came from, for a 422."""

    field: str
    op: str
    value: Any
    loc: tuple[str | int, ...] = ()


@dataclass(frozen=True, slots=True)
class Logical:
    """`$and` / `$or` of its items, or `$not` of its one item."""

    op: str
    items: tuple[Expr, ...]


Expr = Condition | Logical


def to_echo(expr: Expr) -> dict[str, Any]:
    """The tree as the reference echoes it in a list's `filter`."""
    if isinstance(expr, Condition):
        return {expr.field: {expr.op: expr.value}}
    if expr.op == "$not":
        return {"$not": to_echo(expr.items[0])}
    return {expr.op: [to_echo(item) for item in expr.items]}


def refuse(
    loc: Iterable[str | int], msg: str, input_: Any = None, type_: str = "value_error"
) -> InvalidRequest:
    return InvalidRequest.single([*FILTER_LOC, *loc], msg, type_, input_)
