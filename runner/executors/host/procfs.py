"""Process helpers: small reads of /proc and of tiny files, at os level (they run for every
task, and Python's file objects cost more than the read itself). Standard library only: the
launcher uses them, and so does the daemon."""

from __future__ import annotations

import os


def read_small_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        return os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)


def start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (/proc/PID/stat field 22): with the
    pid and the boot id, an identity that a reused pid cannot fake."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/PID/stat from field 3 (state) on: index 1 is the parent, 2 the group, 3 the session.
    The command name (field 2) may hold spaces and parentheses: split after its closing one."""
    stat = read_small_file(f"/proc/{pid}/stat")
    if not stat:
        return None
    return stat[stat.rindex(b")") + 2 :].split()


def group_and_session(pid: int) -> tuple[int, int] | None:
    fields = _stat_fields(pid)
    return (int(fields[2]), int(fields[3])) if fields else None


def environ_value(pid: int, name: bytes, limit: int = 1 << 20) -> bytes | None:
    """The value of `name` in the environment `pid` was started with (None: absent or not ours
    to read). The environment is read whole (up to `limit`): a variable may be anywhere in it."""
    try:
        fd = os.open(f"/proc/{pid}/environ", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    chunks: list[bytes] = []
    try:
        size = 0
        while size < limit:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    prefix = name + b"="
    for entry in b"".join(chunks).split(b"\0"):
        if entry.startswith(prefix):
            return entry[len(prefix) :]
    return None


def _own_children_file() -> bool:
    """Whether the kernel lists children in /proc (CONFIG_PROC_CHILDREN, on in common kernels)."""
    pid = os.getpid()
    return os.path.exists(f"/proc/{pid}/task/{pid}/children")


_CHILDREN_FILES = _own_children_file()


def children_of(pid: int) -> list[int]:
    """`pid`'s children. Each thread lists the children it forked (and the ones re-parented to it)
    in its own file. Without those files (an unusual kernel), a scan of /proc."""
    if not _CHILDREN_FILES:
        return [child for child, parent in _parents().items() if parent == pid]
    threads = _listdir(f"/proc/{pid}/task")
    found: list[int] = []
    for tid in threads:
        data = read_small_file(f"/proc/{pid}/task/{tid}/children")
        if data and len(data) == 4096:  # more than one read holds
            data = _read_all(f"/proc/{pid}/task/{tid}/children")
        if data:
            found.extend(int(part) for part in data.split())
    return found


class OwnChildren:
    """This process's children, as the main thread lists them (the launcher has no other thread),
    through one descriptor kept open: a look is one pread, and `count()` parses nothing."""

    def __init__(self) -> None:
        pid = os.getpid()
        self._pid = pid
        self._fd = -1
        if _CHILDREN_FILES:
            self._fd = os.open(f"/proc/{pid}/task/{pid}/children", os.O_RDONLY | os.O_CLOEXEC)

    def _raw(self) -> bytes:
        if self._fd < 0:
            return b"".join(b"%d " % child for child in children_of(self._pid))
        chunks, offset = [], 0
        while True:
            chunk = os.pread(self._fd, 65536, offset)  # a seq_file: read afresh from the offset
            chunks.append(chunk)
            offset += len(chunk)
            if len(chunk) < 65536:
                return b"".join(chunks)

    def count(self) -> tuple[int, bytes]:
        """How many, and the raw list ("PID PID ... "), for parse()."""
        raw = self._raw()
        return raw.count(b" "), raw

    @staticmethod
    def parse(raw: bytes) -> list[int]:
        return [int(part) for part in raw.split()]


def descendants(roots: list[int]) -> list[int]:
    """`roots` and every process under them, parents before children. A pid read here names that
    process until its parent reaps it: signalled microseconds later it could, at worst, have
    died and been replaced, as with any walk of the process tree (psutil's too)."""
    if not _CHILDREN_FILES:
        parents = _parents()
        below: dict[int, list[int]] = {}
        for child, parent in parents.items():
            below.setdefault(parent, []).append(child)
    found, seen = list(roots), set(roots)
    for pid in found:  # grows while it is walked: breadth first
        for child in children_of(pid) if _CHILDREN_FILES else below.get(pid, []):
            if child not in seen:
                seen.add(child)
                found.append(child)
    return found


def _parents() -> dict[int, int]:
    parents = {}
    for name in _listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields:
                parents[int(name)] = int(fields[1])
    return parents


def _listdir(path: str) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _read_all(path: str) -> bytes:
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError:
        return b""
