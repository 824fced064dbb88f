"""Tells a task's output collector the moment its folder's files change (Linux inotify, through
libc; one descriptor for the whole daemon, read by the event loop), so that a quiet task costs
nothing between writes and a printed line is read within a millisecond or so, instead of each
task's files being read on a timer.

Without inotify (another OS, no libc symbol, the watch limit reached) `watch` returns None and
the collector reads on a timer as before; a lost event (the kernel's queue overflowed) wakes
every watcher, and the collectors also read on a slow timer as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import errno
import logging
import os
import struct

log = logging.getLogger(__name__)

_IN_MODIFY = 0x00000002
_IN_CLOSE_WRITE = 0x00000008
_IN_MOVED_TO = 0x00000080
_IN_CREATE = 0x00000100
_IN_Q_OVERFLOW = 0x00004000
_IN_IGNORED = 0x00008000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
_MASK = _IN_MODIFY | _IN_CLOSE_WRITE | _IN_CREATE | _IN_MOVED_TO
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len (then `len` bytes of name)


class FileEvents:
    """One inotify descriptor; `watch(folder)` gives an asyncio.Event set whenever a file directly
    in `folder` is created or written. Owned by the event loop's thread."""

    def __init__(self) -> None:
        self._libc: ctypes.CDLL | None = None
        self._fd = -1
        self._unavailable = False  # said once in the log, not tried again for every task
        self._warned_limit = False
        # Per watch: its event, the file names that matter, and how many collectors hold it.
        self._events: dict[int, asyncio.Event] = {}
        self._names: dict[int, frozenset[bytes]] = {}
        self._holders: dict[int, int] = {}
        self._reading = False

    def _open(self) -> bool:
        if self._fd >= 0:
            return True
        if self._unavailable:
            return False
        self._unavailable = True  # until it opens
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        except (OSError, AttributeError) as exc:
            log.info("no inotify (%s): task output is read on a timer", exc)
            return False
        if fd < 0:
            log.info(
                "inotify_init1 failed (%s): task output is read on a timer", os.strerror(ctypes.get_errno())
            )
            return False
        self._libc, self._fd = libc, fd
        self._unavailable = False
        return True

    def watch(self, folder: str, names: frozenset[str]) -> tuple[int, asyncio.Event] | None:
        """(a key for `unwatch`, the event set whenever one of the files `names` directly in
        `folder` is created or written), or None when this folder cannot be watched. Writes to
        other files there (a task's own files in its working folder) do not set it."""
        if not self._open():
            return None
        assert self._libc is not None
        wd = self._libc.inotify_add_watch(self._fd, os.fsencode(folder), _MASK)
        if wd < 0:
            if ctypes.get_errno() == errno.ENOSPC and not self._warned_limit:
                self._warned_limit = True
                log.warning("inotify watch limit reached (fs.inotify.max_user_watches): reading on a timer")
            return None
        if not self._reading:
            asyncio.get_running_loop().add_reader(self._fd, self._read)
            self._reading = True
        # Two collectors of one folder (a restart's adoption racing a late one) share its watch.
        event = self._events.setdefault(wd, asyncio.Event())
        self._names[wd] = self._names.get(wd, frozenset()) | {os.fsencode(n) for n in names}
        self._holders[wd] = self._holders.get(wd, 0) + 1
        return wd, event

    def unwatch(self, key: int) -> None:
        held = self._holders.get(key, 0) - 1
        if held > 0:
            self._holders[key] = held
            return
        self._holders.pop(key, None)
        self._names.pop(key, None)
        if self._events.pop(key, None) is not None and self._libc is not None:
            self._libc.inotify_rm_watch(self._fd, key)  # an already removed folder: EINVAL, fine

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 64 * 1024)
            except BlockingIOError:
                return
            except OSError as exc:
                log.warning("reading inotify events failed: %s", exc)
                return
            if not data:
                return
            offset = 0
            while offset + _HEADER.size <= len(data):
                wd, mask, _cookie, length = _HEADER.unpack_from(data, offset)
                name = data[offset + _HEADER.size : offset + _HEADER.size + length].rstrip(b"\0")
                offset += _HEADER.size + length
                if mask & _IN_Q_OVERFLOW:
                    for event in self._events.values():  # which ones changed is lost: all look
                        event.set()
                elif mask & _IN_IGNORED:
                    self._events.pop(wd, None)  # the folder is gone
                    self._names.pop(wd, None)
                    self._holders.pop(wd, None)
                elif (changed := self._events.get(wd)) is not None and name in self._names.get(wd, ()):
                    changed.set()

    def close(self) -> None:
        if self._fd >= 0:
            if self._reading:
                with contextlib.suppress(Exception):
                    asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1
            self._events.clear()
            self._names.clear()
            self._holders.clear()
            self._reading = False
