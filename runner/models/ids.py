"""Identifiers, names and time: the id and task-name formats, the name and workspace rules, and
timestamps as integer microseconds."""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import UTC, datetime

# The reference's NAME_PATTERN. Python's `re` is needed: the lookarounds are beyond pydantic's
# Rust regex engine, so names are checked in validators rather than with `pattern=`. Every
# pattern here is anchored with \A...\Z (and used with fullmatch): `$` also matches before a
# trailing newline, which let `nl` and `nl\n` be two jobs (and two task folders).
NAME_PATTERN = re.compile(r"\A[a-z](?!.*--)[a-z0-9\-@.+_]{1,62}(?<!-)\Z")
WORKSPACE_PATTERN = re.compile(r"\A[\w\-\+.@:]+\Z")
# A workspace is a folder name under <data-dir>/work: at most what a file system takes (bytes).
MAX_WORKSPACE_BYTES = 255
NAME_RULE = (
    "must start with a lowercase letter, be 2-63 characters, contain only lowercase letters, digits "
    "and - @ . + _, have no consecutive hyphens and not end with a hyphen"
)


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


# Two digits per division: a job's life makes three ids, and this halves their cost.
_B58_PAIRS = [a + b for a in _B58 for b in _B58]


def base58(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    pairs = []
    while number:
        number, rem = divmod(number, 3364)
        pairs.append(_B58_PAIRS[rem])
    text = "".join(reversed(pairs))
    # The top pair may carry a leading zero digit that one-digit division would not write.
    return (text[1:] if text[0] == _B58[0] else text) if text else _B58[0]


class _RandomPool:
    """os.urandom read 4 KiB at a time: a job's life takes four 16-byte draws, each a getrandom
    call otherwise. The bytes are the same kernel randomness; a forked child starts afresh."""

    _SIZE = 4096

    def __init__(self) -> None:
        self._lock = threading.Lock()  # ids are made on the event loop and the writer's thread
        self._bytes = b""
        self._at = 0

    def take(self, count: int) -> bytes:
        assert count <= self._SIZE
        with self._lock:
            if self._at + count > len(self._bytes):
                self._bytes, self._at = os.urandom(self._SIZE), 0
            at = self._at
            self._at = at + count
            return self._bytes[at : at + count]

    def forget(self) -> None:
        # A fresh lock too: another thread of the parent may have held it at the fork.
        self._lock = threading.Lock()
        self._bytes, self._at = b"", 0


_random = _RandomPool()
os.register_at_fork(after_in_child=_random.forget)


def _uuid4_bytes() -> bytes:
    """What `uuid.uuid4().bytes` is (version 4, RFC 4122 variant), without building the object."""
    raw = bytearray(_random.take(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def new_entity_id(entity_type: str) -> str:
    """`platform-job-step-<base58 uuid4>`, the reference's id format."""
    return f"{entity_type}-{base58(_uuid4_bytes())}"


def new_task_name() -> str:
    return f"task-{_uuid4_bytes().hex()}"


def now_us() -> int:
    """Wall-clock time in integer microseconds since the epoch: how every timestamp is stored."""
    return time.time_ns() // 1000


def datetime_to_us(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1_000_000)


def check_name(value: str) -> str:
    if not NAME_PATTERN.fullmatch(value):
        raise ValueError(f"name {value!r} {NAME_RULE}")
    return value


def check_workspace(value: str) -> str:
    if not WORKSPACE_PATTERN.fullmatch(value):
        raise ValueError("workspace may contain only letters, digits and _ - + . @ :")
    if value in (".", ".."):
        # Task folders live in <data-dir>/work/<workspace>/<job>/...: these would move them up.
        raise ValueError(f"workspace {value!r} is not allowed: it names a folder's parent or itself")
    if len(value.encode()) > MAX_WORKSPACE_BYTES:
        raise ValueError(f"workspace may be at most {MAX_WORKSPACE_BYTES} bytes long (UTF-8)")
    return value
