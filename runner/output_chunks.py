"""Cutting a task's raw output into what is stored: whole lines, a line past the bound split with
a mark, secrets masked, grouped in chunks of a bounded size. Work per chunk, not per line: the
scans (newlines, over-long lines, secrets) are the C loops of `bytes` and `str`.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.models import OutputChunk
from runner.secrets import Masker

# A "line" longer than this is stored in pieces, each but the last ending with CONTINUED: one
# unterminated write must not grow without bound, and a reader must see where it was cut.
MAX_LINE_BYTES = 64 * 1024
CONTINUED = b" [...]"
# Stored chunks are at most this large (a page of the log reads one or two of them).
CHUNK_BYTES = 64 * 1024
_HALF = MAX_LINE_BYTES // 2


def _may_have_long_line(text: bytes) -> bool:
    """Whether `text` may hold a line over MAX_LINE_BYTES: such a line covers a whole aligned
    window of half that size, so one newline search per window tells (a line of more than half
    the bound may say yes too; the exact split that follows keeps it whole)."""
    return any(text.find(b"\n", start, start + _HALF) < 0 for start in range(0, len(text), _HALF))


@dataclass(frozen=True, slots=True)
class Cut:
    stored: bytes  # whole lines, each ending with b"\n"
    consumed: int  # raw bytes these lines came from
    rest: bytes  # an unfinished line, kept for the next read


def _split_long(text: bytes) -> bytes:
    """`text` (whole lines) with every line over MAX_LINE_BYTES cut into marked pieces."""
    out: list[bytes] = []
    for line in text.split(b"\n")[:-1]:
        while len(line) > MAX_LINE_BYTES:
            out.append(line[:MAX_LINE_BYTES] + CONTINUED)
            line = line[MAX_LINE_BYTES:]
        out.append(line)
    out.append(b"")
    return b"\n".join(out)


def cut_lines(buffer: bytes, *, final: bool, masker: Masker) -> Cut:
    """What of `buffer` is ready to store: its whole lines; of an unfinished line, the pieces past
    the bound; with `final` (the task ended, the file is read to its end) the unfinished line too."""
    end = buffer.rfind(b"\n") + 1
    whole, rest = buffer[:end], buffer[end:]
    pieces: list[bytes] = []
    while len(rest) > MAX_LINE_BYTES:
        pieces.append(rest[:MAX_LINE_BYTES] + CONTINUED + b"\n")
        end += MAX_LINE_BYTES
        rest = rest[MAX_LINE_BYTES:]
    if final and rest:
        pieces.append(rest + b"\n")
        end += len(rest)
        rest = b""
    if masker and whole:
        whole = masker.text(whole.decode("utf-8", "replace")).encode()
    if len(whole) > MAX_LINE_BYTES and _may_have_long_line(whole):
        whole = _split_long(whole)
    if masker and pieces:
        pieces = [masker.text(p.decode("utf-8", "replace")).encode() for p in pieces]
    return Cut(stored=whole + b"".join(pieces), consumed=end, rest=rest)


def into_chunks(
    stored: bytes, stream: str, timestamp: int, chunk_bytes: int = CHUNK_BYTES
) -> list[OutputChunk]:
    """How `stored` (whole lines of `stream`) is cut in chunks of at most `chunk_bytes`, between
    lines (a single longer line is a chunk of its own). The bytes themselves stay in `stored`
    (written as they are, in one call, not copied per chunk)."""
    chunks: list[OutputChunk] = []
    start = 0
    size = len(stored)
    while start < size:
        if size - start <= chunk_bytes:
            end = size
        else:
            end = stored.rfind(b"\n", start, start + chunk_bytes) + 1
            if end <= start:
                end = stored.find(b"\n", start + chunk_bytes) + 1 or size
        chunks.append(OutputChunk(end - start, stored.count(b"\n", start, end), stream, timestamp))
        start = end
    return chunks
