"""Strict JSON at the edge: what a request may carry in, and how every response is encoded.

Python's `json` is lenient where that hurts later: it reads `NaN` and `Infinity`, which
`json.dumps` then writes back as tokens no strict parser accepts (every later GET of the job was
invalid JSON); it turns `"\\ud800"` into a lone surrogate, which no UTF-8 store or encoder takes
(SQLite raised UnicodeEncodeError at insert: a 500); it also takes UTF-16/32 and raw surrogate
bytes; and it nests until RecursionError (a 500). Requests are therefore parsed with pydantic's
own JSON parser (jiter, `pydantic_core.from_json`), which refuses all of that and nests at most
200 levels, and then checked for what it lets through: nesting beyond MAX_DEPTH and numbers
beyond a float's range (`1e999` reads as infinity). Nothing refused here is ever stored.

It is also the cheaper parser: it reads the body's bytes directly (json.loads first decodes them
into a str, one more copy of the body) and shares repeated strings (object keys) between values.
"""

from __future__ import annotations

import codecs
import json
import logging
import math
import re
from typing import Any, NoReturn

import orjson
from aiohttp import web
from pydantic_core import from_json

log = logging.getLogger(__name__)

# Deepest nesting of objects and arrays a request may carry (`{}` is 1). The job spec itself uses
# 8 levels (body > platform_spec > steps > [i] > executor > container > command > [i]) and real
# workload configs (Hydra/NeMo trees) stay well under 20, so 64 leaves ample room. The bound is
# what keeps every recursive consumer of a stored document (pydantic, json.dumps in the store,
# secret masking, SQLite's JSON functions, the workload's own config parser) far below Python's
# recursion limit (1000) however deep the caller's stack already is; the parser's own limit
# (200) is an implementation detail of pydantic-core, not a documented promise.
MAX_DEPTH = 64


class Refused(Exception):
    """Well-formed JSON that the API does not accept; `path` locates it inside the document."""

    def __init__(self, path: list[str | int], type_: str, msg: str) -> None:
        super().__init__(msg)
        self.path = path
        self.type = type_
        self.msg = msg

    def detail(self, prefix: list[str | int]) -> dict[str, Any]:
        # No `input`: the offending value is a whole subtree (too deep) or a number not
        # representable in JSON.
        return {"type": self.type, "loc": [*prefix, *self.path], "msg": self.msg}


def loads(raw: bytes | bytearray | str) -> Any:
    """Parse a request's JSON text (UTF-8, RFC 8259). Malformed text raises ValueError with the
    parser's reason and position (lone surrogates, NaN and Infinity are malformed here);
    nesting deeper than MAX_DEPTH and out-of-range numbers raise Refused."""
    if not isinstance(raw, str) and raw.startswith(codecs.BOM_UTF8):
        # RFC 8259 lets a parser ignore it, and json.loads did.
        raw = raw[len(codecs.BOM_UTF8) :]
    try:
        data = from_json(raw, allow_inf_nan=False)
    except ValueError as exc:
        reason = str(exc)
        if reason.startswith("recursion limit exceeded"):
            raise _too_deep(()) from None
        if _NON_FINITE.search(raw if isinstance(raw, str) else raw.decode("utf-8", "replace")):
            reason += " (NaN and Infinity are not JSON numbers)"
        raise ValueError(reason) from None
    _check(data)
    return data


# Only looked for once parsing failed, to say why in plain words.
_NON_FINITE = re.compile(r"(?<![\w\"])-?(?:NaN|Infinity)\b")


_FINITE_MSG = "Input should be a finite number: this one is beyond the range of a 64-bit float"


def _too_deep(where: tuple[str | int, ...]) -> Refused:
    return Refused(list(where), "json_invalid", f"JSON nested deeper than {MAX_DEPTH} levels")


def _check(value: Any) -> None:
    """Walk the tree level by level (no recursion on input an attacker shapes). This visits every
    value of every body, so it is kept to the bare tests and answers only yes or no: the
    location of a problem is found afterwards by `_locate`, which carries paths."""
    if type(value) is float and not math.isfinite(value):
        raise Refused([], "finite_number", _FINITE_MSG)
    level = [value] if type(value) is dict or type(value) is list else []
    depth = 0
    while level:
        depth += 1
        if depth > MAX_DEPTH:
            _locate(value)
        below: list[Any] = []
        for node in level:
            for item in node.values() if type(node) is dict else node:
                kind = type(item)
                if kind is dict or kind is list:
                    below.append(item)
                elif kind is float and not math.isfinite(item):
                    _locate(value)
        level = below


def _locate(value: Any) -> NoReturn:
    """Raise Refused for a problem `_check` found, with its location (the same tests)."""
    stack: list[tuple[Any, int, tuple[str | int, ...]]] = [(value, 1, ())]
    while stack:
        node, depth, where = stack.pop()
        if depth > MAX_DEPTH:
            raise _too_deep(where)
        for key, item in node.items() if type(node) is dict else enumerate(node):
            kind = type(item)
            if kind is dict or kind is list:
                stack.append((item, depth + 1, (*where, key)))
            elif kind is float and not math.isfinite(item):
                raise Refused([*where, key], "finite_number", _FINITE_MSG)
    raise AssertionError("_check found a problem that _locate did not")


# What a stored string may hold that strict JSON cannot: a lone surrogate (only rows stored
# before input was checked).
_SURROGATE = re.compile("[\ud800-\udfff]")


# No spaces after `,` and `:`, as the reference's answers (Starlette's JSONResponse) and orjson.
_COMPACT = (",", ":")


def dumps(data: Any) -> bytes:
    """A response body: strict JSON (RFC 8259) in UTF-8, always, compact like the reference's.

    Input is checked by `loads`, so only a row stored before those checks existed can hold a
    non-finite number or a lone surrogate. Such a row is still answered, with `null` for the
    number and U+FFFD for the surrogate (a surrogate also logs a warning), rather than failing
    every read or list that touches it."""
    try:
        # orjson first (several times faster): it refuses what `json` below refuses, and more
        # (integers beyond 64 bits, non-string keys), all of which takes the path below. It
        # writes NaN as null by itself, which is the repair below, without the warning.
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        pass
    try:
        return json.dumps(data, ensure_ascii=False, allow_nan=False, separators=_COMPACT).encode()
    except ValueError:  # includes UnicodeEncodeError
        log.warning("a stored value was not strict JSON; answered with null / U+FFFD in its place")
        return json.dumps(_repaired(data), ensure_ascii=False, allow_nan=False, separators=_COMPACT).encode()


def _repaired(value: Any) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {_repaired(k): _repaired(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_repaired(v) for v in value]
    return value


def response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """Every JSON answer of the daemon, errors included."""
    return web.Response(
        body=dumps(data), status=status, headers=headers, content_type="application/json", charset="utf-8"
    )
