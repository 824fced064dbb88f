"""The data dir: created private, claimed by one daemon at a time.

The claim is an exclusive `flock` on `<data-dir>/daemon.lock`, held for the daemon's life on a
close-on-exec descriptor: neither the task launcher (which may outlive a killed daemon) nor any
task inherits it, so a daemon killed with -9 never blocks the next one. The lock file also says
who holds it (pid, URL), for the refusal message and for clients that look for the daemon.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from runner.errors import CannotStart

log = logging.getLogger(__name__)

LOCK_NAME = "daemon.lock"


@dataclass(frozen=True)
class Holder:
    pid: int | None
    url: str | None


def read_holder(data_dir: Path) -> Holder:
    """Who wrote the lock file last (the running daemon, when it is locked)."""
    try:
        info = json.loads((data_dir / LOCK_NAME).read_text())
    except (OSError, ValueError):
        return Holder(None, None)
    if not isinstance(info, dict):
        return Holder(None, None)
    pid, url = info.get("pid"), info.get("url")
    return Holder(pid if isinstance(pid, int) else None, url if isinstance(url, str) else None)


# What the daemon reads or writes in its data dir. In a folder others can write into, any of these
# could have been planted (a chosen token, a database of jobs to run, a symlink to a file of ours).
_OWN_ENTRIES = (
    LOCK_NAME,
    "token",
    "workload-token",
    "localjobs.db",
    "localjobs.db-wal",
    "localjobs.db-shm",
    "launcher.log",
    "logs",
    "work",
)


def prepare(data_dir: Path) -> None:
    """A data dir we create is 0700. One that exists is left as it is (it may be shared, like
    /tmp); it gets a warning when others may write into it, and then each of the daemon's own
    entries in it must be a real file of ours (not a symlink, not another user's), or the
    daemon refuses to start."""
    if not data_dir.exists():
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):
            data_dir.mkdir(mode=0o700)
    info = data_dir.stat()
    if not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and info.st_uid == os.geteuid():
        return
    log.warning(
        "data dir %s is writable by other users (mode %o, owner uid %d): they could tamper with "
        "jobs and secrets; use a private folder",
        data_dir,
        stat.S_IMODE(info.st_mode),
        info.st_uid,
    )
    for name in _OWN_ENTRIES:
        check_own(data_dir / name)


def check_own(path: Path) -> None:
    """`path` is absent, or a real file or folder owned by this user and not writable by others."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise CannotStart(f"{path} is a symbolic link: refusing to follow it in a shared data dir")
    if info.st_uid != os.geteuid():
        raise CannotStart(f"{path} belongs to another user (uid {info.st_uid}): refusing to use it")
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CannotStart(f"{path} is writable by other users: refusing to use it")


class DataDirLock:
    """Held from `claim()` to `release()`; `announce(url)` records where the daemon answers."""

    def __init__(self, data_dir: Path, fd: int) -> None:
        self._data_dir = data_dir
        self._fd = fd

    @classmethod
    def claim(cls, data_dir: Path) -> DataDirLock:
        path = data_dir / LOCK_NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_holder(data_dir)
            who = f"localjobs pid {holder.pid}" if holder.pid else "another localjobs"
            where = f" at {holder.url}" if holder.url else ""
            raise CannotStart(f"data dir {data_dir} is in use by {who}{where}") from None
        except OSError:
            os.close(fd)
            raise
        lock = cls(data_dir, fd)
        lock._write({"pid": os.getpid(), "url": None})
        return lock

    def announce(self, url: str) -> None:
        self._write({"pid": os.getpid(), "url": url})

    def _write(self, info: dict[str, object]) -> None:
        data = json.dumps(info).encode() + b"\n"
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            self._write({"pid": None, "url": None})
        os.close(self._fd)  # closing the only descriptor releases the flock
        self._fd = -1
