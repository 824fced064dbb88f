"""A task's stdout and stderr as the launcher reads them: from two pipes into the task's two
output files, and, per read, one record of which stream grew, to what size, and when, in the
task's order file. The daemon reads the files in the order the records give, with their times
(runner/logs.py): the order a task printed in, across both streams, and the time each line was
written, neither of which two files alone can tell.

Standard library only (the launcher runs without site-packages).

The output files stay the intake: what is read from a pipe is in its file before its record is
written, so a record never names bytes that are not there, and a daemon killed at any moment
reads on from its committed offsets. What a killed launcher means: the pipes' read ends go with
it, and a task that writes afterwards gets SIGPIPE (its earlier output is all in the files).
On a full disk what was read is held, and the pipe left unread, until it can be written: the
task then waits on its writes, losing nothing, and goes on once there is space.
"""

from __future__ import annotations

import contextlib
import os
import struct
import time

# One record: stream (0 stdout, 1 stderr), the stream's file size after the read, and the time
# of the read in microseconds since the epoch. Written with O_APPEND in one write; one that a
# full disk cuts short is truncated away (the reader also skips what it cannot trust).
ORDER_RECORD = struct.Struct("<BQQ")
_READ_BYTES = 64 * 1024
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


def pipes() -> tuple[tuple[int, int], tuple[int, int]]:
    """Two pipes, (read end, write end) each: the read ends non-blocking, all close-on-exec (the
    spawn duplicates the write ends onto the task's 1 and 2)."""
    out, err = os.pipe2(os.O_CLOEXEC), os.pipe2(os.O_CLOEXEC)
    os.set_blocking(out[0], False)
    os.set_blocking(err[0], False)
    return out, err


class OutputCapture:
    def __init__(
        self, stdout_path: str, stderr_path: str, order_path: str, read_ends: tuple[int, int]
    ) -> None:
        self._files = [os.open(path, _FILE_FLAGS, 0o600) for path in (stdout_path, stderr_path)]
        self._sizes = [os.fstat(fd).st_size for fd in self._files]
        self._order = os.open(order_path, _FILE_FLAGS, 0o600)
        self._order_size = os.fstat(self._order).st_size
        self._order_start = self._order_size
        self._first_told = False  # whether the daemon was told that output came
        self.owner: tuple[int, int | None] | None = None  # the task's pid and start ticks, once started
        self._streams = {read_ends[0]: 0, read_ends[1]: 1}
        # Read from a pipe but not yet in its file (the disk is full): the pipe is not read
        # meanwhile, so the task waits on its writes rather than losing them.
        self._held: dict[int, tuple[bytes, int]] = {}

    @property
    def read_ends(self) -> list[int]:
        return list(self._streams)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """The stdout, stderr and order files' sizes: where they end once the task has ended."""
        return self._sizes[0], self._sizes[1], self._order_size

    def first_output(self) -> bool:
        """True once, when the order file first has a record: the daemon is then told, and
        follows the files from there (a task that prints nothing costs it nothing)."""
        if self._first_told or self._order_size == self._order_start:
            return False
        self._first_told = True
        return True

    def holds(self, fd: int) -> bool:
        return fd in self._held

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def read(self, fd: int) -> bool:
        """Copy what the pipe holds (one read); False once the pipe is closed by every writer.
        A pipe whose last read is held is not read (its end would drop what is held)."""
        if fd in self._held:
            return True
        try:
            data = os.read(fd, _READ_BYTES)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            self._close_pipe(fd)
            return False
        self._append(fd, data, time.time_ns() // 1000)
        return True

    def _append(self, fd: int, data: bytes, now_us: int) -> None:
        stream = self._streams[fd]
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._files[stream], view)
                self._sizes[stream] += written
                view = view[written:]
        except OSError:
            self._held[fd] = (bytes(view), now_us)
        if len(view) < len(data):
            self._record(stream, now_us)

    def _record(self, stream: int, now_us: int) -> None:
        """One order record, whole or not at all: a record cut short by a full disk is cut off
        again (sizes only grow, so a record lost is made good by the next one)."""
        try:
            written = os.write(self._order, ORDER_RECORD.pack(stream, self._sizes[stream], now_us))
        except OSError:
            return
        if written == ORDER_RECORD.size:
            self._order_size += written
        else:
            with contextlib.suppress(OSError):
                os.ftruncate(self._order, self._order_size)

    def retry(self) -> list[int]:
        """Try again to write what is held; the pipes whose output is now all written."""
        released = []
        for fd, (data, read_us) in list(self._held.items()):
            del self._held[fd]
            self._append(fd, data, read_us)
            if fd not in self._held:
                released.append(fd)
        return released

    def drain(self) -> None:
        """What the pipes hold now (the task ended: its last output before its end is told)."""
        for fd in list(self._streams):
            for _ in range(1024):  # bounded: a leftover that keeps writing must not hold us here
                if fd not in self._streams or fd in self._held:
                    break
                size = self._sizes[self._streams[fd]]
                if not self.read(fd) or self._sizes[self._streams[fd]] == size:
                    break

    def _close_pipe(self, fd: int) -> None:
        self._streams.pop(fd, None)
        self._held.pop(fd, None)
        with contextlib.suppress(OSError):
            os.close(fd)
        if not self._streams:
            self.close()

    def close(self) -> None:
        for fd in list(self._streams):
            self._streams.pop(fd)
            with contextlib.suppress(OSError):
                os.close(fd)
        for fd in (*self._files, self._order):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._files = []
        self._held.clear()
