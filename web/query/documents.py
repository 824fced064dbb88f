"""A filter as data: bracket (deepObject) keys, `filter[status]=active,error`, and a JSON object,
`filter={"status": {"$in": ["active"]}}`, each read as a tree, as the reference reads them."""

from __future__ import annotations

from typing import Any

from multidict import MultiMapping

from web import strict_json
from web.errors import InvalidRequest
from web.query.tree import COMPARISONS, Condition, Expr, Loc, Logical, refuse

# Operators the reference also knows, for array fields and relationships no job has.
_NOT_FOR_JOBS = frozenset({"$contains", "$exists"})
# Operator names that bracket keys may write without `$` (filter[created_at][gte]=...).
_ALIASES = frozenset({"gte", "lte", "gt", "lt", "like", "eq", "in", "nin", "not", "exists"})
_LOGICAL = ("$and", "$or", "$not")


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


def document_tree(doc: Any, loc: Loc) -> Expr | None:
    """A JSON filter object as a tree, read as the reference's `_parse_dict_to_operation`."""
    if not isinstance(doc, dict):
        raise refuse(loc, "a filter must be a JSON object", doc, "dict_type")
    if not doc:
        return None  # `{}`: no condition (the reference refuses it)
    _no_mixed_logic(doc, loc)
    for op in ("$and", "$or"):
        if op in doc:
            items = doc[op]
            if not isinstance(items, list):
                raise refuse([*loc, op], f"{op} takes a list of filter objects", items, "list_type")
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
        raise refuse(loc, msg, doc)


def _field_tree(field: str, ops: Any, loc: Loc) -> Expr:
    """`{"$like": "a", "$nin": [...]}` for one field; several operators are an AND."""
    if not isinstance(ops, dict):
        raise refuse(loc, "expected an object of operators", ops, "dict_type")
    _no_mixed_logic(ops, loc)
    for op in ("$or", "$and"):
        if op in ops:
            items = ops[op]
            if not isinstance(items, list):
                raise refuse([*loc, op], f"{op} takes a list of operator objects", items, "list_type")
            return Logical(op, tuple(_field_tree(field, item, [*loc, op, i]) for i, item in enumerate(items)))
    if "$not" in ops:
        return Logical("$not", (_field_tree(field, ops["$not"], [*loc, "$not"]),))
    parts: list[Expr] = []
    for key, operand in ops.items():
        op = key if key.startswith("$") else f"${key}" if key in _ALIASES else key
        if op in _NOT_FOR_JOBS:
            raise refuse([*loc, key], f"{op} applies to no field of a job or step", operand)
        if op not in COMPARISONS:
            raise refuse([*loc, key], f"unknown filter operator {key!r}", operand)
        if op in ("$in", "$nin") and isinstance(operand, str):
            operand = operand.split(",")
        parts.append(Condition(field, op, operand, (*loc, key)))
    return parts[0] if len(parts) == 1 else Logical("$and", tuple(parts))
