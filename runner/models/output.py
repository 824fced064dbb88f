"""A task's output on its way into the store, and what the store says back.

Output is stored per chunk, not per line: a chunk is a run of whole lines of one stream, written
at one time, kept as bytes in the task's log file and named by one index row. A line's id is its
chunk's id and its place in the chunk (`line_id`), so ids keep the order lines were stored in
and cursors stay plain integers.
"""

from __future__ import annotations

from dataclasses import dataclass

# A chunk holds at most 2**20 lines: chunks are cut at 64 KiB of output, well below that.
LINE_INDEX_BITS = 20
MAX_LINES_PER_CHUNK = 1 << LINE_INDEX_BITS


def line_id(chunk_id: int, index: int) -> int:
    return (chunk_id << LINE_INDEX_BITS) | index


def split_line_id(value: int) -> tuple[int, int]:
    """(chunk id, index in the chunk) of a line id."""
    return value >> LINE_INDEX_BITS, value & (MAX_LINES_PER_CHUNK - 1)


@dataclass(frozen=True, slots=True)
class LogProgress:
    """How far a task's output has been stored: the offsets read in its stdout and stderr files
    and in its order file (runner/output_intake.py), and the end of its log file (where the
    next chunk is written)."""

    stdout: int = 0
    stderr: int = 0
    order: int = 0
    file_end: int = 0


@dataclass(frozen=True, slots=True)
class OutputChunk:
    """`size` bytes of whole lines of one stream, `lines` of them, written at `timestamp` (µs
    since the epoch); the bytes go to the log file in the order of the chunks."""

    size: int
    lines: int
    stream: str
    timestamp: int


@dataclass(frozen=True, slots=True)
class LogAppend:
    """Chunks of one task's output, in the order printed, already written at `file_offset` of
    its log file, to index along with how far its files are now read, in one commit."""

    job_pk: int
    attempt_id: str
    step_name: str
    task_pk: int
    task_name: str
    file_offset: int
    chunks: tuple[OutputChunk, ...]
    progress: LogProgress  # after this append
    max_task_bytes: int = 0

    @property
    def size(self) -> int:
        return sum(c.size for c in self.chunks)


@dataclass(frozen=True, slots=True)
class AppendOutcome:
    """What an append did: lines dropped by the size limit, and the file offset below which
    nothing is kept any more (its space may be given back)."""

    dropped_lines: int = 0
    kept_from: int = 0
