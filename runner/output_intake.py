"""A task's output files as the collector reads them: its stdout and stderr files and, when the
launcher captured the output through pipes, its order file (runner/executors/host/capture.py),
whose records say which stream grew, to what size, and when.

With an order file the streams are read record by record: lines keep the order they were
printed in across both streams, and the time they were read from the pipe, a moment after the
task wrote them. Without one (a container's output, a start made by the daemon itself), each
stream is read on its own and a line's time is when the collector read it.

Reads are tentative until the collector has stored what they gave: `commit()` then moves the
offsets on; `rollback()` makes the next read start again where the last commit left off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from runner.executors.host.capture import ORDER_RECORD
from runner.output_chunks import Cut, cut_lines
from runner.secrets import Masker
from storage.log_files import free_range

# At most this much of a stream is read at once (one transaction stores it).
READ_BYTES = 2 * 1024 * 1024
# Consecutive records of one stream this close in time are read as one (a flood is read in
# large pieces); lines keep the time of the first.
_SAME_TIME_US = 2000
_RECORDS_PER_READ = 1024
# Times past this (the year 9999) are not a time the launcher took: such a record is skipped.
_LAST_US = 253402300799 * 1_000_000
# The read part of a file is given back to the file system once this much more has been stored.
_FREE_EVERY_BYTES = 256 * 1024


def _open_read(path: str, length: int, offset: int) -> bytes | None:
    # os-level calls: this runs at least twice per task, and Python's file objects cost more
    # than the read itself for the usual few bytes.
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


class _Intake:
    """A file read on from a committed offset; once committed, the read part is given back."""

    def __init__(self, path: str, offset: int) -> None:
        self.path = path
        self.offset = offset  # committed: what is stored (or, for the order file, applied)
        self.next = offset  # read up to here, not yet committed
        self.freed = 0  # bytes at the file's start given back to the file system

    def commit(self) -> None:
        self.offset = self.next
        if self.offset - self.freed >= _FREE_EVERY_BYTES:
            free_range(self.path, self.freed, self.offset)
            self.freed = self.offset // 4096 * 4096

    def rollback(self) -> None:
        self.next = self.offset


class StreamFile(_Intake):
    def __init__(self, name: str, path: str, offset: int) -> None:
        super().__init__(path, offset)
        self.name = name
        self.pending = b""  # an unfinished line after `next` (which is at whole lines)

    @property
    def position(self) -> int:
        """How far the file has been read (stored, or waiting as an unfinished line)."""
        return self.next + len(self.pending)

    def read(self, end: int | None, final: bool, masker: Masker) -> Cut:
        """What is ready to store after the last read, up to `end` (None: as far as there is,
        up to READ_BYTES); with `final`, an unfinished last line too."""
        position = self.position
        length = READ_BYTES if end is None else min(READ_BYTES, end - position)
        if length <= 0:
            return Cut(b"", 0, self.pending)
        data = _open_read(self.path, length, position)
        if data is None:
            return Cut(b"", 0, self.pending)
        cut = cut_lines(self.pending + data, final=final and len(data) < length, masker=masker)
        self.pending = cut.rest
        self.next += cut.consumed
        return cut

    def rollback(self) -> None:
        super().rollback()
        self.pending = b""

    def bytes_left(self) -> int:
        try:
            return max(0, os.stat(self.path).st_size - self.offset)
        except OSError:
            return 0


@dataclass(frozen=True, slots=True)
class Segment:
    stream: int  # 0 stdout, 1 stderr
    end: int  # the stream's file size after it
    timestamp: int  # when it was read from the pipe (µs since the epoch)
    records_end: int  # the order file's offset just past its records


class OrderFile(_Intake):
    def segments(self) -> tuple[list[Segment], bool]:
        """The records after the last read, consecutive ones of a stream read at about the same
        time joined; and whether more records are waiting."""
        size = ORDER_RECORD.size
        data = _open_read(self.path, size * _RECORDS_PER_READ, self.next) or b""
        count = len(data) // size
        segments: list[Segment] = []
        # One object per segment, not per record: a flood has a record per pipe read (~8 KiB).
        current: list[int] | None = None  # stream, first end, end, timestamp, records_end
        records_end = self.next
        for stream, end, timestamp in ORDER_RECORD.iter_unpack(data[: count * size]):
            records_end += size
            if stream not in (0, 1) or not 0 <= timestamp < _LAST_US:
                continue  # not a record the launcher writes: skipped, not trusted
            if (
                current is not None
                and current[0] == stream
                and timestamp - current[3] <= _SAME_TIME_US
                and end - current[1] < READ_BYTES
            ):
                current[2], current[4] = end, records_end
                continue
            if current is not None:
                segments.append(Segment(current[0], current[2], current[3], current[4]))
            current = [stream, end, end, timestamp, records_end]
        if current is not None:
            segments.append(Segment(current[0], current[2], current[3], current[4]))
        elif count and segments == []:
            # Only records skipped: move past them (no segment carries their end).
            self.next = records_end
        return segments, count == _RECORDS_PER_READ
