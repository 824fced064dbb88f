"""JSON text of the store's columns: compiled parsers where they can, the standard library where
they cannot.

A one-step job's life encodes about sixteen small documents for the store and decodes as many
when its rows are read back. orjson encodes several times faster than `json`, and pydantic-core's
parser (jiter) reads about 2.5x faster (4.7 -> 1.9 us for a step's details, docs/benchmarks.md).
Reading is not left to orjson: it turns integers beyond 64 bits into floats, where jiter keeps
them exact, as `json` does. Where a compiled one refuses (integers beyond 64 bits, non-string
keys or a lone surrogate when writing; a lone surrogate escape when reading) the call falls back
to `json`, so every value stored before reads back as it did. Two differences, both for values
the API refuses at its edge: NaN / Infinity are written as null (they were the invalid tokens
`NaN` / `Infinity`), and text is written as UTF-8 rather than `\\uXXXX` escapes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from pydantic_core import from_json

_COMPACT = json.JSONEncoder(separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON text."""
    return dumps_bytes(value).decode()


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (the fallback's text is ASCII: `json` escapes the rest)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _COMPACT.encode(value).encode()


def loads(text: str | bytes) -> Any:
    try:
        # allow_inf_nan: a row stored before input was checked may hold NaN (json wrote it).
        return from_json(text, allow_inf_nan=True)
    except ValueError:
        return json.loads(text)
