"""JSON text on the hot paths: orjson where it can, the standard library where it cannot.

A one-step job's life encodes about sixteen small documents for the store and decodes as many
when its rows are read back, and orjson does each several times faster than `json` (measured in
docs/benchmarks.md). orjson is stricter than `json` in a few corners: it refuses integers beyond
64 bits, strings holding a lone surrogate, non-string keys, and NaN / Infinity tokens when
reading; there each call falls back to `json`, so what can be stored and read stays exactly
what it was. Encoding writes UTF-8 as is (no `\\uXXXX` escapes), which every reader takes.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

_COMPACT = json.JSONEncoder(separators=(",", ":"))


def dumps(value: Any) -> str:
    """Compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return _COMPACT.encode(value)


def dumps_bytes(value: Any) -> bytes:
    """Compact JSON as UTF-8 bytes (messages on a socket)."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return _COMPACT.encode(value).encode()


def loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)
