"""A container's output, as the engine recorded it, into the task's files: both streams from one
multiplexed log stream (`/containers/{id}/logs?stdout&stderr&timestamps`), frame by frame, into
`stdout.log`/`stderr.log`, with one order record per frame (runner/executors/host/capture.py's
format: stream, the stream file's size after it, the time the engine took the line). The
collector then reads a container's streams in the order printed and with the engine's times,
as it reads a host task's.

Everything is written again from the first byte at each attach (the files truncated first),
and frames and their times come from the engine's log, so the files, the order file included,
are byte-identical across daemon restarts and the stored read offsets stay valid.
"""

from __future__ import annotations

import os
from datetime import datetime

from aiodocker.containers import DockerContainer

from runner.executors.base import TaskPaths
from runner.executors.host.capture import ORDER_RECORD

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
_HEADER = 8  # stream (1 stdout, 2 stderr), 3 zero bytes, payload length (big-endian u32)


class ContainerOutput:
    """The task's three files, opened (and truncated) at once: the collector, made right after,
    finds the order file and reads in order."""

    def __init__(self, paths: TaskPaths) -> None:
        self._files = [os.open(path, _FLAGS, 0o600) for path in (paths.stdout_file, paths.stderr_file)]
        self._order = os.open(paths.order_file, _FLAGS, 0o600)
        self._sizes = [0, 0]

    async def copy(self, container: DockerContainer) -> None:
        """Until the container's log ends (it stopped) or the engine goes away."""
        try:
            async with container.docker._query(
                f"containers/{container.id}/logs",
                method="GET",
                params={"stdout": "1", "stderr": "1", "follow": "1", "timestamps": "1"},
                timeout=container.docker._resolve_long_running_timeout(None),
            ) as response:
                pending = b""
                async for data in response.content.iter_any():
                    pending = self._write_frames(pending + data)
        finally:
            for fd in (*self._files, self._order):
                os.close(fd)

    def _write_frames(self, data: bytes) -> bytes:
        """Writes the whole frames in `data` (a write per stream run, the records in one write);
        returns what is left of an unfinished frame."""
        records: list[bytes] = []
        runs: list[tuple[int, list[bytes]]] = []
        start = 0
        while len(data) - start >= _HEADER:
            length = int.from_bytes(data[start + 4 : start + 8], "big")
            if len(data) - start < _HEADER + length:
                break
            stream = 1 if data[start] == 2 else 0
            stamp, _, text = data[start + _HEADER : start + _HEADER + length].partition(b" ")
            start += _HEADER + length
            self._sizes[stream] += len(text)
            records.append(ORDER_RECORD.pack(stream, self._sizes[stream], _engine_time_us(stamp)))
            if runs and runs[-1][0] == stream:
                runs[-1][1].append(text)
            else:
                runs.append((stream, [text]))
        for stream, texts in runs:
            _write_all(self._files[stream], b"".join(texts))
        if records:
            _write_all(self._order, b"".join(records))
        return data[start:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _engine_time_us(stamp: bytes) -> int:
    """RFC 3339 with nanoseconds (`2026-12-01T18:44:00.123456789Z`) -> µs since the epoch."""
    text = stamp.decode("ascii", "replace")
    whole, _, fraction = text.rstrip("Z").partition(".")
    try:
        seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    except ValueError:
        return 0
    digits = "".join(c for c in fraction if c.isdigit())[:6].ljust(6, "0")
    return int(seconds) * 1_000_000 + int(digits)
