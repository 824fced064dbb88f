"""Where a task's stored output lives: one file per task, `<data-dir>/logs/<job pk>/<task pk>.log`.

The file holds the task's output as stored (masked, lines whole), and nothing else; what is in it
and where is said by the index rows of `log_chunks` (storage/logs.py): a range of the file that
no committed row names is not part of the log. That is what makes a crash safe without a
journal of our own: bytes written before a commit that never happened are written over by the
next append, which starts at the committed end (`log_stats.file_end`).

Space given back: the ranges the size limit drops, and the task's own output files once stored,
are punched out (`fallocate(PUNCH_HOLE)`), keeping every offset valid; a file system that cannot
punch keeps them, and nothing else changes.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_BLOCK = 4096
_MAX_PIECES = 512  # below IOV_MAX (1024 on Linux): more pieces are written in several calls


def _load_fallocate() -> Any:
    try:
        fallocate = ctypes.CDLL(None, use_errno=True).fallocate64
    except (OSError, AttributeError):
        return None
    fallocate.restype = ctypes.c_int
    fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return fallocate


_FALLOCATE = _load_fallocate()


def free_range(path: str, start: int, end: int) -> bool:
    """Give back the disk blocks wholly inside [start, end) of `path`; the file keeps its size and
    reads zeros there. False when nothing could be given back (no such file, no support)."""
    first = -(-start // _BLOCK) * _BLOCK
    last = end // _BLOCK * _BLOCK
    if _FALLOCATE is None or last <= first:
        return False
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        mode = _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE
        if _FALLOCATE(fd, mode, first, last - first) != 0:
            code = ctypes.get_errno()
            if code not in (errno.EOPNOTSUPP, errno.ENOSYS):
                log.debug("cannot free %s [%d, %d): %s", path, first, last, os.strerror(code))
            return False
        return True
    finally:
        os.close(fd)


class LogFiles:
    """The folder of stored output, and the few file operations the store does on it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, job_pk: int, task_pk: int) -> str:
        return f"{self.root}/{job_pk}/{task_pk}.log"

    def write_at(self, job_pk: int, task_pk: int, offset: int, data: Sequence[bytes]) -> None:
        """Write the pieces of `data`, one after the other, at `offset` of the task's file
        (created 0600, in a 0700 folder)."""
        path = self.path(job_pk, task_pk)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            pieces = [memoryview(piece) for piece in data if piece]
            while pieces:
                written = os.pwritev(fd, pieces[:_MAX_PIECES], offset)
                offset += written
                while pieces and written >= len(pieces[0]):
                    written -= len(pieces[0])
                    pieces.pop(0)
                if pieces and written:
                    pieces[0] = pieces[0][written:]
        finally:
            os.close(fd)

    def read_at(self, job_pk: int, task_pk: int, offset: int, length: int) -> bytes:
        """The bytes at [offset, offset + length); fewer (or none) if the file is shorter or gone."""
        try:
            fd = os.open(self.path(job_pk, task_pk), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return b""
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def free(self, job_pk: int, task_pk: int, start: int, end: int) -> None:
        free_range(self.path(job_pk, task_pk), start, end)

    def remove_job(self, job_pk: int) -> None:
        shutil.rmtree(f"{self.root}/{job_pk}", ignore_errors=True)

    def prepare(self) -> None:
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
