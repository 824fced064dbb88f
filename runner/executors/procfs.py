"""Small reads of /proc and of tiny files, at os level: they run for every task, and Python's
file objects cost more than the read itself. Standard library only (the launcher uses them)."""

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
    stat = read_small_file(f"/proc/{pid}/stat")
    if not stat:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[19])
