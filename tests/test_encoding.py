"""The fast encoders on the per-job path give exactly what the plain ones gave."""

from __future__ import annotations

import json
import os
import random
import uuid
from datetime import UTC, datetime

import pytest

from runner.models.ids import base58, new_entity_id, new_task_name
from storage import json_text
from web import strict_json
from web.serialize import timestamp

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58_one_digit_at_a_time(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rem = divmod(number, 58)
        digits.append(_B58[rem])
    return "".join(reversed(digits)) or _B58[0]


def _isoformat(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat().replace("+00:00", "Z")


def test_timestamps_read_as_isoformat_wrote_them() -> None:
    rng = random.Random(7)
    now = 1_764_630_670_123_457
    values = [0, 1, 999_999, 1_000_000, now, now - now % 1_000_000, -5, -1_000_000]
    values += [rng.randrange(0, 4_102_444_800_000_000) for _ in range(20_000)]  # up to 2100
    values += [now + rng.randrange(-(10**12), 10**12) for _ in range(20_000)]
    for us in values:
        assert timestamp(us) == _isoformat(us), us
    assert timestamp(now - now % 1_000_000).endswith(":10Z")  # no fraction when there is none


def test_ids_keep_the_reference_format() -> None:
    rng = random.Random(11)
    cases = [b"", b"\0", b"\0\0", b"\x01", bytes([57]), bytes([58]), bytes([0, 58]), b"\xff" * 16]
    cases += [rng.randbytes(rng.randrange(0, 40)) for _ in range(5_000)]
    for data in cases:
        assert base58(data) == _base58_one_digit_at_a_time(data), data
    for _ in range(200):
        prefix, _, encoded = new_entity_id("platform-job").rpartition("-")
        assert prefix == "platform-job"
        raw = int.to_bytes(sum(_B58.index(c) * 58**i for i, c in enumerate(reversed(encoded))), 16, "big")
        parsed = uuid.UUID(bytes=raw)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        name = new_task_name()
        assert uuid.UUID(hex=name.removeprefix("task-")).version == 4
    made = {new_entity_id("x") for _ in range(2_000)}  # past several refills of the pool
    assert len(made) == 2_000


def test_a_forked_child_draws_other_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, to the parent
        os.write(write, new_entity_id("x").encode())
        os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 100).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert child and child != new_entity_id("x")


@pytest.mark.parametrize(
    "value",
    [
        {"a": 1, "b": [1.5, None, True, "é"], "c": {"d": "x"}},
        {"big": 2**80 + 1, "small": -(2**70) - 1},  # beyond 64 bits: exact both ways
        {1: "an int key"},  # orjson refuses non-string keys
        "half \ud800 pair",  # a lone surrogate
        [],
    ],
)
def test_stored_json_reads_back_as_the_standard_library_would(value: object) -> None:
    text = json_text.dumps(value)
    assert json.loads(text) == json.loads(json.dumps(value))
    assert json_text.loads(text) == json.loads(json.dumps(value))


def test_rows_stored_before_strict_input_still_read() -> None:
    # NaN and lone surrogates: what orjson refuses to read, the standard library still reads.
    legacy = '{"loss":NaN,"note":"half \\ud800 pair"}'
    read = json_text.loads(legacy)
    assert read["note"] == "half \ud800 pair" and read["loss"] != read["loss"]


def test_responses_stay_strict_json() -> None:
    assert json.loads(strict_json.dumps({"x": 2**80, "y": "é"})) == {"x": 2**80, "y": "é"}
    assert strict_json.dumps({"n": float("nan")}) == b'{"n":null}'
    assert json.loads(strict_json.dumps({"s": "a\ud800b"})) == {"s": "a\ufffdb"}


@pytest.mark.parametrize(
    "value",
    [
        {"name": "callback", "n": [1, 2.5, None, True], "nested": {"é": "ü", "empty": {}}},
        {"big": 2**80 + 1, "text": "tab\there"},  # the json module's path: the same bytes
        [0.1, 1e16, -0.0, 123456789.125],
    ],
)
def test_response_bytes_are_the_references(value: object) -> None:
    from starlette.responses import JSONResponse  # what the reference answers with

    assert strict_json.dumps(value) == JSONResponse(value).body
