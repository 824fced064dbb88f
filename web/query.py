"""Query-string parsing: paging, and the `filter` of List Jobs and List Steps in every form the
reference accepts.

The reference (`make_filter_dep`, nemo_platform_plugin/api) reads a filter in three forms:

- bracket (deepObject) keys, what the official SDK sends: `filter[status]=active,error`,
  `filter[name][$like]=x`, `filter[created_at][gte]=...` (`$` may be left out of an operator; a
  comma-joined value is a list; a value starting with `{` or `[` is JSON; an empty value is null);
- `filter=<JSON object>`, Mongo style: `{"status": {"$in": ["active"]}, "name": "x"}`, with
  `$and`, `$or` and `$not`;
- `filter=<text>`, its text grammar (`TEXT_GRAMMAR` below): `status:"error" AND name~"train"`.

Each form becomes one expression tree (`Condition` / `Logical`, what the reference calls a
FilterOperation), echoed in the list's `filter` exactly as the reference's `to_dict` echoes its tree.
The tree is then lowered to what the store evaluates (`JobFilter`, `StepFilter`: per field, a set of
statuses, one time range, or a string condition of eq / in / nin / one substring), with the
reference's meaning: `status` and the constant fields (`workspace`, `entity_type`) are evaluated
over their values, so any combination of operators on them is exact. A tree the store cannot
express (an OR across two fields, a NOT of a substring match, ...) is a 422 that says so, never a
different answer.

Where localjobs departs on purpose (README, "Differences"): a bare list (`filter[status]=a,b`,
`{"status": ["a","b"]}`) means any-of, not "equal to the list"; List Steps applies a plain `filter=`
(JSON or text) where the reference ignores it; a plain `filter=` and bracket keys together are both
applied (the reference drops the brackets); `$nin` lets a null through, as the store's NOT IN does
(a job without a project is "not in p1"); a misspelt status is a 422, not an empty page; errors are
422 with a `loc` (the reference answers 400).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from multidict import MultiMapping
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, field_validator

from runner.models import (
    JobFilter,
    JobSort,
    JobStatus,
    StepFilter,
    StepSort,
    StringCondition,
    datetime_to_us,
)
from web import strict_json
from web.errors import InvalidRequest, validation_detail

_MAX_PAGE = 2**31 - 1
MAX_PAGE_SIZE = 10_000

Loc = list[str | int]
_ROOT: Loc = ["query", "filter"]


# --------------------------------------------------------------------------------- paging


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


# --------------------------------------------------------------------------------- the tree

COMPARISONS = frozenset({"$eq", "$like", "$lt", "$lte", "$gt", "$gte", "$in", "$nin"})
# Operators the reference also knows, for array fields and relationships no job has.
_NOT_FOR_JOBS = frozenset({"$contains", "$exists"})
# Operator names that bracket keys may write without `$` (filter[created_at][gte]=...).
_ALIASES = frozenset({"gte", "lte", "gt", "lt", "like", "eq", "in", "nin", "not", "exists"})
_LOGICAL = ("$and", "$or", "$not")


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


def _refuse(
    loc: Iterable[str | int], msg: str, input_: Any = None, type_: str = "value_error"
) -> InvalidRequest:
    return InvalidRequest.single([*_ROOT, *loc], msg, type_, input_)


# --------------------------------------------------------------------------------- bracket keys


def deep_object(query: MultiMapping[str], root: str = "filter") -> dict[str, Any]:
    """`filter[a][b]=v` -> {"a": {"b": v}}, each value read as the reference reads it: JSON when it
    starts with `{` or `[`, null when empty, a list when comma-joined (items stripped) or repeated."""
    result: dict[str, Any] = {}
    prefix = root + "["
    for key in dict.fromkeys(query.keys()):  # each key once, in order
        if not key.startswith(prefix):
            continue
        parts = _bracket_parts(key[len(root) :])
        if parts is None:
            raise InvalidRequest.single(["query", key], "malformed filter key", "value_error", query[key])
        values: list[Any] = []
        for raw in query.getall(key):
            if raw.startswith(("{", "[")):
                try:
                    values.append(strict_json.loads(raw))
                except strict_json.Refused as exc:
                    raise InvalidRequest([exc.detail(["query", key])]) from None
                except ValueError:
                    msg = 'a filter value starting with { or [ must be JSON (e.g. ["a","b"])'
                    raise InvalidRequest.single(["query", key], msg, "json_invalid", raw) from None
            elif raw == "":
                values.append(None)
            elif "," in raw:
                values.extend(item.strip() for item in raw.split(","))
            else:
                values.append(raw)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                # `filter[f]=x` and `filter[f][$op]=y` together: the bare value is the $eq.
                child = node[part] = {"$eq": child}
            node = child
        leaf = parts[-1]
        value = values[0] if len(values) == 1 else values
        existing = node.get(leaf)
        if isinstance(existing, dict):
            # Operators of this field came first (`filter[f][$op]=y`): merge, the bare value as $eq.
            if isinstance(value, dict):
                existing.update(value)
            else:
                existing.setdefault("$eq", value)
        else:
            node[leaf] = value
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


def _with_dollars(value: Any) -> Any:
    """Operator keys written without `$` in brackets get it (at every depth, as the reference)."""
    if not isinstance(value, dict):
        return value
    return {(f"${k}" if k in _ALIASES else k): _with_dollars(v) for k, v in value.items()}


def bracket_tree(query: MultiMapping[str]) -> Expr | None:
    """The bracket keys as a tree: a bare value means $eq (a list: any-of)."""
    deep = deep_object(query)
    if not deep:
        return None
    return document_tree({field: _with_dollars(value) for field, value in deep.items()}, [])


# --------------------------------------------------------------------------------- JSON documents


def document_tree(doc: Any, loc: Loc) -> Expr | None:
    """A JSON filter object as a tree, read as the reference's `_parse_dict_to_operation`."""
    if not isinstance(doc, dict):
        raise _refuse(loc, "a filter must be a JSON object", doc, "dict_type")
    if not doc:
        return None  # `{}`: no condition (the reference refuses it)
    _no_mixed_logic(doc, loc)
    for op in ("$and", "$or"):
        if op in doc:
            items = doc[op]
            if not isinstance(items, list):
                raise _refuse([*loc, op], f"{op} takes a list of filter objects", items, "list_type")
            return Logical(op, tuple(_item_tree(item, [*loc, op, i]) for i, item in enumerate(items)))
    if "$not" in doc:
        return Logical("$not", (_item_tree(doc["$not"], [*loc, "$not"]),))
    parts: list[Expr] = []
    for field, value in doc.items():
        where = [*loc, field]
        if isinstance(value, dict) and any(key.startswith("$") for key in value):
            parts.append(_field_tree(field, value, where))
        elif isinstance(value, list):
            # localjobs: a bare list is any-of (the reference compares the field to the list).
            parts.append(Condition(field, "$in", value, (*where, "$in")))
        else:
            parts.append(Condition(field, "$eq", value, (*where, "$eq")))
    return parts[0] if len(parts) == 1 else Logical("$and", tuple(parts))


def _item_tree(item: Any, loc: Loc) -> Expr:
    return document_tree(item, loc) or Logical("$and", ())  # `{}` inside: always true


def _no_mixed_logic(doc: dict[str, Any], loc: Loc) -> None:
    if any(key in doc for key in _LOGICAL) and len(doc) > 1:
        msg = (
            f"a filter mixes a logical operator with other keys ({sorted(doc)}); put the other "
            "keys inside the logical operator or under an explicit $and"
        )
        raise _refuse(loc, msg, doc)


def _field_tree(field: str, ops: Any, loc: Loc) -> Expr:
    """`{"$like": "a", "$nin": [...]}` for one field; several operators are an AND."""
    if not isinstance(ops, dict):
        raise _refuse(loc, "expected an object of operators", ops, "dict_type")
    _no_mixed_logic(ops, loc)
    for op in ("$or", "$and"):
        if op in ops:
            items = ops[op]
            if not isinstance(items, list):
                raise _refuse([*loc, op], f"{op} takes a list of operator objects", items, "list_type")
            return Logical(op, tuple(_field_tree(field, item, [*loc, op, i]) for i, item in enumerate(items)))
    if "$not" in ops:
        return Logical("$not", (_field_tree(field, ops["$not"], [*loc, "$not"]),))
    parts: list[Expr] = []
    for key, operand in ops.items():
        op = key if key.startswith("$") else f"${key}" if key in _ALIASES else key
        if op in _NOT_FOR_JOBS:
            raise _refuse([*loc, key], f"{op} applies to no field of a job or step", operand)
        if op not in COMPARISONS:
            raise _refuse([*loc, key], f"unknown filter operator {key!r}", operand)
        if op in ("$in", "$nin") and isinstance(operand, str):
            operand = operand.split(",")
        parts.append(Condition(field, op, operand, (*loc, key)))
    return parts[0] if len(parts) == 1 else Logical("$and", tuple(parts))


# --------------------------------------------------------------------------------- text grammar

TEXT_GRAMMAR = """
expr      := and_expr (OR and_expr)*
and_expr  := unary (AND? unary)*            -- juxtaposition is AND; AND binds tighter than OR
unary     := "-" atom | atom                -- "-" negates
atom      := field IN list | field NOT IN list | field OP value | "(" expr ")"
field     := NAME "[" STRING "]" | NAME ("." NAME)*       -- a["k"] is the field a.k
OP        := ":" (equals) | "~" (contains, any case) | ">=" | ">" | "<=" | "<"
value     := null | STRING | NUMBER
list      := "[" "]" | "[" value ("," value)* "]"
NAME      := [a-zA-Z_][a-zA-Z0-9_]*
NUMBER    := -?[0-9]+(.[0-9]+)?
STRING    := a double-quoted string with Python escapes (\\" \\\\ \\n \\t \\uXXXX ...)
"""
# Keywords (AND, OR, IN, NOT, null) are case-insensitive and, wherever the grammar accepts one,
# tried before a name, with no word boundary: the reference's lexer works so (`a:"x" order:"y"`
# reads as `a:"x" OR der:"y"`), and so does this one. Whitespace separates tokens only.

_TOKENS: dict[str, re.Pattern[str]] = {
    "AND": re.compile(r"AND", re.IGNORECASE),
    "OR": re.compile(r"OR", re.IGNORECASE),
    "IN": re.compile(r"IN", re.IGNORECASE),
    "NOT": re.compile(r"NOT", re.IGNORECASE),
    "NULL": re.compile(r"null", re.IGNORECASE),
    "NAME": re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*"),
    "NUMBER": re.compile(r"-?[0-9]+(?:\.[0-9]+)?"),
    "STRING": re.compile(r'"(?:[^"\\]|\\.)*"'),
    **{
        op: re.compile(re.escape(op))
        for op in (">=", "<=", ">", "<", ":", "~", "(", ")", "[", "]", ",", ".", "-")
    },
}
_BLANK = re.compile(r"[ \t\f\r\n]*")
_OPERATORS = {":": "$eq", "~": "$like", ">=": "$gte", ">": "$gt", "<=": "$lte", "<": "$lt"}
_AFTER_FIELD = (*_OPERATORS, "IN", "NOT")
_UNARY_START = ("-", "NAME", "(")
_AFTER_UNARY = ("AND", "OR", *_UNARY_START, ")", "END")
_VALUE = ("NULL", "STRING", "NUMBER")


class TextFilterError(ValueError):
    def __init__(self, position: int, message: str) -> None:
        super().__init__(f"{message} at position {position}")
        self.position = position


class _Text:
    """A recursive-descent parser for TEXT_GRAMMAR that reads each token in the context the grammar
    gives it (what may come next), as the reference's LALR parser with its contextual lexer does."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> Expr:
        expr = self._or()
        self._take(("END",))
        return expr

    def _peek(self, accepted: tuple[str, ...]) -> tuple[str, str, int]:
        start = _BLANK.match(self.text, self.pos)
        pos = start.end() if start else self.pos
        if pos == len(self.text):
            if "END" in accepted:
                return "END", "", pos
            raise TextFilterError(pos, "unexpected end of filter")
        for kind in _TOKENS:  # keywords first, then names and literals, then `>=` before `>`
            if kind in accepted:
                match = _TOKENS[kind].match(self.text, pos)
                if match:
                    return kind, match.group(), match.end()
        expected = ", ".join("end" if kind == "END" else kind for kind in accepted)
        raise TextFilterError(pos, f"unexpected {self.text[pos : pos + 12]!r} (expected {expected})")

    def _take(self, accepted: tuple[str, ...]) -> tuple[str, str]:
        kind, text, end = self._peek(accepted)
        self.pos = end
        return kind, text

    def _or(self) -> Expr:
        items = [self._and()]
        while self._peek(_AFTER_UNARY)[0] == "OR":
            self._take(("OR",))
            items.append(self._and())
        return items[0] if len(items) == 1 else Logical("$or", tuple(items))

    def _and(self) -> Expr:
        items = [self._unary()]
        while True:
            kind = self._peek(_AFTER_UNARY)[0]
            if kind == "AND":
                self._take(("AND",))
            elif kind not in _UNARY_START:
                break
            items.append(self._unary())
        return items[0] if len(items) == 1 else Logical("$and", tuple(items))

    def _unary(self) -> Expr:
        if self._peek(_UNARY_START)[0] == "-":
            self._take(("-",))
            return Logical("$not", (self._atom(),))
        return self._atom()

    def _atom(self) -> Expr:
        kind, name = self._take(("NAME", "("))
        if kind == "(":
            expr = self._or()
            self._take((")",))
            return expr
        field = self._field(name)
        kind, token = self._take(_AFTER_FIELD)
        if kind in ("IN", "NOT"):
            if kind == "NOT":
                self._take(("IN",))
            op = "$in" if kind == "IN" else "$nin"
            return Condition(field, op, self._list(), (field, op))
        op = _OPERATORS[token]
        return Condition(field, op, self._value(self._take(_VALUE)), (field, op))

    def _field(self, name: str) -> str:
        kind = self._peek(("[", ".", *_AFTER_FIELD))[0]
        if kind == "[":
            self._take(("[",))
            key = unquote(self._take(("STRING",))[1])
            self._take(("]",))
            return f"{name}.{key}"
        parts = [name]
        while kind == ".":
            self._take((".",))
            parts.append(self._take(("NAME",))[1])
            kind = self._peek((".", *_AFTER_FIELD))[0]
        return ".".join(parts)

    def _list(self) -> list[Any]:
        self._take(("[",))
        if self._peek(("]", *_VALUE))[0] == "]":
            self._take(("]",))
            return []
        items = [self._value(self._take(_VALUE))]
        while self._take((",", "]"))[0] == ",":
            items.append(self._value(self._take(_VALUE)))
        return items

    @staticmethod
    def _value(token: tuple[str, str]) -> Any:
        kind, text = token
        if kind == "NULL":
            return None
        if kind == "STRING":
            return unquote(text)
        return float(text) if "." in text else int(text)


def parse_text(text: str) -> Expr:
    """A text filter (TEXT_GRAMMAR) as a tree; TextFilterError when it does not parse."""
    text = text.strip()
    if not text:
        raise TextFilterError(0, "empty filter")
    return _Text(text).parse()


_SIMPLE_ESCAPES = {
    "\\": "\\",
    "'": "'",
    '"': '"',
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
}
_OCTAL = re.compile(r"[0-7]{1,3}")
_HEX_DIGITS = {"x": 2, "u": 4, "U": 8}


def unquote(token: str) -> str:
    """A STRING token's text: its escapes decoded as a Python string literal's. When the token is not
    a valid Python literal (a raw line break, a NUL, a bad `\\x`/`\\u`/`\\N` escape), the reference
    falls back to dropping the quotes and turning `\\"` into `"`; so does this."""
    try:
        return _decode(token[1:-1])
    except (ValueError, KeyError):  # KeyError: an unknown \N{name}
        return token[1:-1].replace('\\"', '"')


def _decode(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char in "\r\n\x00":
            raise ValueError("not a one-line string")
        if char != "\\":
            out.append(char)
            i += 1
            continue
        nxt = body[i + 1]  # a token never ends in a lone backslash
        i += 2
        if nxt in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[nxt])
        elif nxt in "\r\n":  # a backslash and a line break: both are left out
            i += 1 if nxt == "\r" and body[i : i + 1] == "\n" else 0
        elif nxt in _HEX_DIGITS:
            digits = body[i : i + _HEX_DIGITS[nxt]]
            if len(digits) != _HEX_DIGITS[nxt] or not all(c in "0123456789abcdefABCDEF" for c in digits):
                raise ValueError("truncated escape")
            code = int(digits, 16)
            if code > 0x10FFFF:
                raise ValueError("escape out of range")
            out.append(chr(code))
            i += len(digits)
        elif nxt == "N" and body[i : i + 1] == "{" and "}" in body[i:]:
            end = body.index("}", i)
            out.append(unicodedata.lookup(body[i + 1 : end]))
            i = end + 1
        elif nxt == "N":
            raise ValueError("malformed \\N escape")
        elif octal := _OCTAL.match(body, i - 1):
            out.append(chr(int(octal.group(), 8)))
            i = octal.end()
        else:
            out.append("\\" + nxt)  # unknown escapes stay as written
    return "".join(out)


# --------------------------------------------------------------------------------- lowering


class _Unsupported(Exception):
    """A filter the store cannot evaluate exactly: answered with a 422 that says why."""


_ALL_STATUSES = frozenset(JobStatus)
_FAR = 10**30  # beyond any timestamp in µs: the open ends of a range


@dataclass(frozen=True, slots=True)
class _Statuses:
    """A condition on `status`: the statuses it lets through (exact for any expression)."""

    allowed: frozenset[JobStatus]

    def both(self, other: _Statuses) -> _Statuses:
        return _Statuses(self.allowed & other.allowed)

    def either(self, other: _Statuses) -> _Statuses:
        return _Statuses(self.allowed | other.allowed)

    def negated(self) -> _Statuses:
        return _Statuses(_ALL_STATUSES - self.allowed)

    @property
    def always(self) -> bool:
        return self.allowed == _ALL_STATUSES

    @property
    def never(self) -> bool:
        return not self.allowed


@dataclass(frozen=True, slots=True)
class _Times:
    """A condition on a timestamp: disjoint inclusive µs ranges, in order (exact for any expression;
    the store takes one range)."""

    ranges: tuple[tuple[int, int], ...]

    @staticmethod
    def of(ranges: Iterable[tuple[int, int]]) -> _Times:
        merged: list[tuple[int, int]] = []
        for lo, hi in sorted(r for r in ranges if r[0] <= r[1]):
            if merged and lo <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
            else:
                merged.append((lo, hi))
        return _Times(tuple(merged))

    def negated(self) -> _Times:
        gaps, start = [], -_FAR
        for lo, hi in self.ranges:
            gaps.append((start, lo - 1))
            start = hi + 1
        gaps.append((start, _FAR))
        return _Times.of(gaps)

    def either(self, other: _Times) -> _Times:
        return _Times.of([*self.ranges, *other.ranges])

    def both(self, other: _Times) -> _Times:
        return self.negated().either(other.negated()).negated()

    @property
    def always(self) -> bool:
        return self.ranges == ((-_FAR, _FAR),)

    @property
    def never(self) -> bool:
        return not self.ranges


@dataclass(frozen=True, slots=True)
class _Strings:
    """A condition on a string column: `x in among` (when set) and `x not in excluded` and every one
    of `containing` a substring of x in any case. A NULL (a job without a project) fails `among` and
    `containing` and passes `excluded`, as the store's NOT IN does."""

    among: frozenset[str] | None = None
    excluded: frozenset[str] = frozenset()
    containing: tuple[str, ...] = ()

    def both(self, other: _Strings) -> _Strings:
        if self.among is None:
            among = other.among
        else:
            among = self.among if other.among is None else self.among & other.among
        excluded = self.excluded | other.excluded
        containing = (*self.containing, *other.containing)
        if among is None:
            return _Strings(None, excluded, containing)
        # A known set of values: the other conditions are evaluated on it.
        return _Strings(
            among=frozenset(
                v for v in among if v not in excluded and all(_contains(v, c) for c in containing)
            )
        )

    def either(self, other: _Strings) -> _Strings:
        if self.never or other.always or self == other:
            return other
        if other.never or self.always:
            return self
        if self.containing or other.containing:
            raise _Unsupported("an OR with a substring match (~, $like) on one side")
        if self.among is not None and other.among is not None:
            return _Strings(among=self.among | other.among)
        if self.among is None and other.among is None:
            return _Strings(excluded=self.excluded & other.excluded)
        among = self.among if self.among is not None else other.among
        excluded = other.excluded if self.among is not None else self.excluded
        return _Strings(excluded=excluded - (among or frozenset()))

    def negated(self) -> _Strings:
        if self.containing:
            raise _Unsupported("a negated substring match (~, $like)")
        if self.among is not None:
            return _Strings(excluded=self.among)
        return _Strings(among=self.excluded)

    @property
    def always(self) -> bool:
        return self.among is None and not self.excluded and not self.containing

    @property
    def never(self) -> bool:
        return self.among is not None and not self.among


def _contains(value: str, part: str) -> bool:
    # The reference's $like: a substring, in any case; `%` and `_` are plain characters.
    return part.lower() in value.lower()


_FieldCondition = _Statuses | _Times | _Strings
# Per field, what a row must satisfy (all of them); {}: every row; None: no row.
_Conjunction = dict[str, _FieldCondition] | None


@dataclass(frozen=True)
class _Fields:
    """The fields a list filters on, and how a condition on each one reads."""

    strings: frozenset[str]
    times: frozenset[str] = frozenset()
    nullable: frozenset[str] = frozenset()
    constants: tuple[tuple[str, str], ...] = ()  # one value in every row listed: evaluated at once
    refused: tuple[tuple[str, str], ...] = ()  # taken by the reference, not by localjobs: why

    def names(self) -> list[str]:
        return sorted({"status", *self.strings, *self.times, *(name for name, _ in self.constants)})

    def condition(self, c: Condition) -> _Conjunction:
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
            raise _refuse(c.loc[:-1], refused[c.field], c.value)
        if "." in c.field:
            msg = f"unknown filter field {c.field!r}: localjobs filters on no nested (data.*) field"
            raise _refuse(c.loc[:-1], msg, c.value)
        msg = f"unknown filter field {c.field!r}; valid fields: {', '.join(self.names())}"
        raise _refuse(c.loc[:-1], msg, c.value, "extra_forbidden")


def _only(field: str, condition: _FieldCondition) -> _Conjunction:
    if condition.never:
        return None
    return {} if condition.always else {field: condition}


def _lower(expr: Expr, fields: _Fields) -> _Conjunction:
    """The tree as one condition per field that must all hold, or _Unsupported."""
    if isinstance(expr, Condition):
        return fields.condition(expr)
    parts = [_lower(item, fields) for item in expr.items]
    if expr.op == "$and":
        result: _Conjunction = {}
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
        raise _Unsupported(f"a negation of conditions on several fields ({', '.join(sorted(inner))})")
    ((field, condition),) = inner.items()
    return _only(field, condition.negated())


def _join(a: _FieldCondition, b: _FieldCondition, how: str) -> _FieldCondition:
    joined: _FieldCondition = getattr(a, how)(b)
    return joined


def _both(a: _Conjunction, b: _Conjunction) -> _Conjunction:
    if a is None or b is None:
        return None
    result = dict(a)
    for field, condition in b.items():
        joined = _join(result[field], condition, "both") if field in result else condition
        if joined.never:
            return None
        result[field] = joined
    return {field: condition for field, condition in result.items() if not condition.always}


def _either(a: _Conjunction, b: _Conjunction) -> _Conjunction:
    if a is None or b is None:
        return b if a is None else a
    if not a or not b:
        return {}
    if len(a) == 1 and a.keys() == b.keys():
        ((field, condition),) = a.items()
        return _only(field, _join(condition, b[field], "either"))
    raise _Unsupported(f"an OR across fields ({', '.join(sorted({*a, *b}))})")


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
        return _contains(value, str(c.value))
    if c.op in ("$in", "$nin"):
        return (value in _list_operand(c)) == (c.op == "$in")
    try:
        return _ORDERED[c.op](value, c.value)
    except TypeError:
        return False


def _list_operand(c: Condition) -> list[Any]:
    if not isinstance(c.value, list):
        raise _refuse(c.loc, f"{c.op} takes a list", c.value, "list_type")
    return c.value


_STATUS = TypeAdapter(JobStatus)
_DATETIME = TypeAdapter(datetime)


def _validated[T](adapter: TypeAdapter[T], value: Any, loc: Iterable[str | int]) -> T:
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, [*_ROOT, *loc])) from None


def _operands(c: Condition) -> list[tuple[Loc, Any]]:
    """The values a condition names, each with its place (a list's items by index)."""
    if c.op in ("$in", "$nin"):
        return [([*c.loc, i], item) for i, item in enumerate(_list_operand(c))]
    return [(list(c.loc), c.value)]


def _statuses(c: Condition) -> _Statuses:
    if c.op in ("$eq", "$in", "$nin"):
        # These name statuses: a misspelt one is a 422, not an empty page.
        for loc, value in _operands(c):
            if value is not None:
                _validated(_STATUS, value, loc)
    elif not isinstance(c.value, str):
        raise _refuse(c.loc, "Input should be a valid string", c.value, "string_type")
    return _Statuses(frozenset(s for s in JobStatus if _holds(c, s.value)))


def _times(c: Condition) -> _Times:
    if c.op == "$like":
        raise _refuse(c.loc, f"{c.op} does not apply to {c.field}", c.value)
    # A timestamp is never null: nothing equals null, or is ordered against it.
    instants = [
        datetime_to_us(_validated(_DATETIME, value, loc)) for loc, value in _operands(c) if value is not None
    ]
    points = _Times.of((t, t) for t in instants)
    if c.op in ("$in", "$nin"):
        return points if c.op == "$in" else points.negated()
    if not instants:
        return _Times(())
    (t,) = instants
    ranges = {
        "$eq": (t, t),
        "$gte": (t, _FAR),
        "$gt": (t + 1, _FAR),
        "$lte": (-_FAR, t),
        "$lt": (-_FAR, t - 1),
    }
    return _Times((ranges[c.op],))


def _strings(c: Condition, nullable: bool) -> _Strings:
    if c.op in _ORDERED:
        raise _refuse(c.loc, f"{c.op} applies to created_at and updated_at only", c.value)
    for loc, value in _operands(c):
        if value is not None and not isinstance(value, str):
            raise _refuse(loc, "Input should be a valid string", value, "string_type")
    if c.op in ("$in", "$nin"):
        values = frozenset(item for item in c.value if item is not None)
        return _Strings(among=values) if c.op == "$in" else _Strings(excluded=values)
    if c.value is None:
        if c.op == "$like":  # the reference looks for the text "none"
            return _Strings(containing=("none",))
        if nullable:
            raise _Unsupported(f"a test for a missing {c.field} ({c.field} equal to null)")
        return _Strings(among=frozenset())  # never null
    if c.op == "$like":
        return _Strings(containing=(c.value,))
    return _Strings(among=frozenset({c.value}))


# --------------------------------------------------------------------------------- List Jobs


def _raw_tree(query: MultiMapping[str]) -> Expr | None:
    """A plain `filter=`: JSON when it starts with `{` (as the reference decides), else text."""
    raw = query.get("filter")
    if not raw:
        return None
    if raw.startswith("{"):
        try:
            return document_tree(strict_json.loads(raw), [])
        except strict_json.Refused as exc:
            raise InvalidRequest([exc.detail(list(_ROOT))]) from None
        except ValueError as exc:
            message = f"filter is not valid JSON: {exc}"
            raise InvalidRequest.single(list(_ROOT), message, "json_invalid", raw) from None
    try:
        tree = parse_text(raw)
    except TextFilterError as exc:
        msg = f"filter is neither a JSON object nor a valid text filter: {exc}"
        raise InvalidRequest.single(list(_ROOT), msg, "value_error", raw) from None
    _no_lone_surrogates(tree)
    return tree


def _no_lone_surrogates(expr: Expr) -> None:
    # A `\ud800` escape decodes to half a character, which neither the store nor JSON can carry.
    if isinstance(expr, Logical):
        for item in expr.items:
            _no_lone_surrogates(item)
        return
    for loc, value in (
        _operands(expr) if isinstance(expr.value, list) or expr.op not in ("$in", "$nin") else []
    ):
        if isinstance(value, str) and any("\ud800" <= ch <= "\udfff" for ch in value):
            raise _refuse(loc, "a filter value with an unpaired surrogate (\\ud800-\\udfff) escape", None)


def _all_of(*trees: Expr | None) -> Expr | None:
    present = [t for t in trees if t is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else Logical("$and", tuple(present))


def _lowered(tree: Expr | None, fields: _Fields) -> _Conjunction:
    if tree is None:
        return {}
    try:
        return _lower(tree, fields)
    except _Unsupported as exc:
        msg = (
            f"localjobs cannot evaluate this filter: {exc}; it takes an AND of conditions on one "
            "field each (any combination on status)"
        )
        raise InvalidRequest.single(list(_ROOT), msg, "value_error", to_echo(tree)) from None


_JOB_FIELDS = _Fields(
    strings=frozenset({"name", "source", "project"}),
    times=frozenset({"created_at", "updated_at"}),
    nullable=frozenset({"project"}),
    refused=(("id", "localjobs does not filter jobs by id; filter by name"),),
)


def parse_jobs_filter(query: MultiMapping[str], workspace: str) -> tuple[JobFilter, dict[str, Any] | None]:
    """List Jobs' filter (every form) and its echo: the reference's tree as a dict, or None."""
    tree = _all_of(_raw_tree(query), bracket_tree(query))
    constants = (("workspace", workspace), ("entity_type", "platform_job"))
    conjunction = _lowered(tree, replace(_JOB_FIELDS, constants=constants))
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
        statuses=[s for s in JobStatus if s in statuses.allowed] if isinstance(statuses, _Statuses) else None,
        created_gte=created_gte,
        created_lte=created_lte,
        updated_gte=updated_gte,
        updated_lte=updated_lte,
    )
    return flt, echo


def _bounds(field: str, condition: _FieldCondition | None) -> tuple[int | None, int | None]:
    if not isinstance(condition, _Times):
        return None, None
    if len(condition.ranges) != 1:
        msg = f"localjobs cannot evaluate this filter: {field} in several separate ranges"
        raise InvalidRequest.single([*_ROOT, field], msg, "value_error")
    ((lo, hi),) = condition.ranges
    return (None if lo <= -_FAR else lo), (None if hi >= _FAR else hi)


def _string_condition(field: str, condition: _FieldCondition | None) -> StringCondition | None:
    if not isinstance(condition, _Strings):
        return None
    if len(condition.containing) > 1:
        msg = f"localjobs cannot evaluate this filter: more than one substring match (~, $like) on {field}"
        raise InvalidRequest.single([*_ROOT, field], msg, "value_error", list(condition.containing))
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


_STEP_FIELDS = _Fields(strings=frozenset({"job", "source"}))


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
        raise InvalidRequest(validation_detail(exc, list(_ROOT))) from None
    conjunction = _lowered(_raw_tree(query), _STEP_FIELDS)
    statuses = model.status
    names = {"job": model.job, "source": model.source}
    if job != "-":
        names["job"] = job  # the path's job wins over any filter on it, as the reference's
        if conjunction:
            conjunction.pop("job", None)
    if conjunction is not None:
        for field in ("job", "source"):
            wanted = conjunction.get(field)
            if isinstance(wanted, _Strings):
                if wanted.among is None or len(wanted.among) != 1:
                    msg = f"localjobs cannot evaluate this filter: {field} must name one value (:, $eq)"
                    raise InvalidRequest.single([*_ROOT, field], msg, "value_error")
                (value,) = wanted.among
                if names[field] not in (None, value):
                    conjunction = None
                    break
                names[field] = value
    if conjunction is not None and isinstance(status := conjunction.get("status"), _Statuses):
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
