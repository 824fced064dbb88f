"""Output stored per chunk: how raw output is cut (long lines, unfinished lines, secrets), the
task's log file as the one copy on disk, stores from before chunks, and removal with the job."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from runner.log_pages import Cursor, decode_cursor, encode_cursor, scope_hash
from runner.models import LogQuery, line_id
from runner.output_chunks import CONTINUED, MAX_LINE_BYTES, cut_lines, into_chunks
from runner.secrets import Masker
from storage import Repository
from storage.schema import MIGRATIONS
from tests.conftest import Api, shell, step
from tests.helpers import ts

# ------------------------------------------------------------------------------ cutting


def test_whole_lines_are_stored_and_an_unfinished_one_waits() -> None:
    cut = cut_lines(b"one\ntwo\nthr", final=False, masker=Masker())
    assert (cut.stored, cut.consumed, cut.rest) == (b"one\ntwo\n", 8, b"thr")
    last = cut_lines(b"thr", final=True, masker=Masker())
    assert (last.stored, last.consumed, last.rest) == (b"thr\n", 3, b"")


def test_a_line_past_the_bound_is_split_with_a_mark() -> None:
    long = b"x" * (MAX_LINE_BYTES * 2 + 10)
    cut = cut_lines(long + b"\nnext\n", final=False, masker=Masker())
    pieces = cut.stored.split(b"\n")[:-1]
    assert [len(p) for p in pieces] == [MAX_LINE_BYTES + len(CONTINUED)] * 2 + [10, 4]
    assert all(p.endswith(CONTINUED) for p in pieces[:2])
    assert cut.consumed == len(long) + 6
    # Unterminated: the pieces past the bound are stored, the rest waits for its end.
    cut = cut_lines(long, final=False, masker=Masker())
    assert (cut.stored.count(b"\n"), cut.consumed, len(cut.rest)) == (2, 2 * MAX_LINE_BYTES, 10)


def test_masking_keeps_the_lines_of_a_value_that_spans_lines() -> None:
    masker = Masker(["s3cret-value", "first-line\nsecond-line"], within_lines=True)
    cut = cut_lines(b"key=s3cret-value\nfirst-line\nsecond-line\r\nplain\n", final=False, masker=masker)
    assert cut.stored == b"key=********\n********\n********\r\nplain\n"


def test_chunks_are_cut_between_lines() -> None:
    stored = b"".join(b"%05d\n" % i for i in range(50_000))
    chunks = into_chunks(stored, "stdout", 1, 64 * 1024)
    assert sum(c.size for c in chunks) == len(stored)
    assert sum(c.lines for c in chunks) == 50_000
    ends = [sum(c.size for c in chunks[: i + 1]) for i in range(len(chunks))]
    assert all(c.size <= 64 * 1024 for c in chunks) and all(stored[end - 1] == ord("\n") for end in ends)
    # A line longer than a chunk is a chunk of its own.
    big = b"y" * 100 + b"\n"
    assert [c.lines for c in into_chunks(b"a\n" + big + b"b\n", "stdout", 1, 50)] == [1, 1, 1]


# ------------------------------------------------------------------------------ the store


def _version_5_store(path: Path) -> None:
    conn = sqlite3.connect(path)
    for number, script in enumerate(MIGRATIONS[:5], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
    conn.execute(
        "INSERT INTO jobs (pk, id, workspace, name, source, spec, platform_spec, fileset, status,"
        " attempt_id, created_at, updated_at) VALUES (1, 'job-1', 'default', 'old', 'test', '{}', '{}',"
        " 'fs', 'completed', 'att-1', 1, 1)"
    )
    rows = [(1, "stdout", 10, "first"), (1, "stderr", 11, "[stderr] oops"), (1, "stdout", 12, "last")]
    conn.executemany(
        "INSERT INTO log_lines (job_pk, attempt_id, step_name, task_name, stream, ts, message)"
        " VALUES (?, 'att-1', 'main', 'main-task', ?, ?, ?)",
        rows,
    )
    conn.commit()
    conn.close()


async def test_lines_stored_before_chunks_stay_readable_and_their_cursors_valid(tmp_path: Path) -> None:
    db = tmp_path / "localjobs.db"
    _version_5_store(db)
    store = await Repository.open(db)
    try:
        query = LogQuery(job_pk=1)
        lines = await store.log_lines_after(query, 0, 10)
        assert [(line.stream, line.message, line.timestamp) for line in lines] == [
            ("stdout", "first", 10),
            ("stderr", "[stderr] oops", 11),
            ("stdout", "last", 12),
        ]
        assert [line.id for line in lines] == [line_id(n, 0) for n in (1, 2, 3)]
        # A cursor made before the upgrade (version 2, a row id) names the same line.
        legacy = _legacy_cursor("f", 1, scope_hash(query))
        after = decode_cursor(legacy, query)
        assert [line.message for line in await store.log_lines_after(query, after.line_id, 10)] == [
            "[stderr] oops",
            "last",
        ]
        tail = await store.log_lines_before(query, None, 2)
        assert [line.message for line in tail] == ["[stderr] oops", "last"]
    finally:
        await store.close()


def _legacy_cursor(direction: str, row_id: int, scope: str) -> str:
    import json

    from runner.models import base58

    payload = {"v": 2, "d": direction, "id": row_id, "q": scope}
    return base58(json.dumps(payload, separators=(",", ":")).encode())


def test_cursors_round_trip() -> None:
    query = LogQuery(job_pk=3, step_name="s")
    cursor = Cursor("b", line_id(7, 5), scope_hash(query))
    assert decode_cursor(encode_cursor(cursor), query) == cursor


# ------------------------------------------------------------------------------ a real daemon


async def _task_folder(api: Api, job: str) -> Path:
    _, step = await api.request("GET", f"/jobs/{job}/steps/main")
    return Path(step["status_details"]["subprocess_work_dir"])


async def test_output_is_kept_once_on_disk_and_read_back_whole(api: Api, tmp_path: Path) -> None:
    # 4 MB on stdout and some stderr between: every line back, in each stream's order, with the
    # task's own stdout.log given back to the file system once stored.
    script = (
        "import sys\n"
        "for i in range(200_000):\n"
        "    print(f'line {i:07d} ' + 'x' * 6)\n"
        "    if i % 50_000 == 0:\n"
        "        print(f'err {i}', file=sys.stderr)\n"
    )
    await api.create_job([shell("main", f'python3 -c "{script}"')], name="big")
    assert (await api.wait_job("big", timeout_s=120))["status"] == "completed"
    _, page = await api.request("GET", "/jobs/big/logs", params={"limit": 1})
    assert page["total"] == 200_004
    seen = [line["message"] for page in await api.log_pages("big", 1000) for line in page["data"]]
    out = [m for m in seen if m.startswith("line ")]
    assert out == [f"line {i:07d} " + "x" * 6 for i in range(200_000)]
    assert [m for m in seen if m.startswith("[stderr] ")] == [
        f"[stderr] err {i}" for i in range(0, 200_000, 50_000)
    ]
    _, tail = await api.request("GET", "/jobs/big/logs", params={"tail": 3, "step_name": "main"})
    assert [line["message"] for line in tail["data"]] == [
        f"line {i:07d} xxxxxx" for i in (199_997, 199_998, 199_999)
    ]

    output_bytes = 200_000 * 20 + sum(len(f"err {i}\n") for i in range(0, 200_000, 50_000))
    logs = tmp_path / "data" / "logs"
    (job_folder,) = logs.iterdir()
    stored = sum(f.stat().st_blocks * 512 for f in job_folder.iterdir())
    assert stored <= 1.3 * output_bytes, (stored, output_bytes)
    raw = (await _task_folder(api, "big")) / "stdout.log"
    assert raw.stat().st_size == 200_000 * 20  # offsets stay valid ...
    assert raw.stat().st_blocks * 512 < 512 * 1024  # ... and its space is given back

    status, _ = await api.request("DELETE", "/jobs/big")
    assert status in (200, 204)
    assert not job_folder.exists()


# ------------------------------------------------------------------------------ order and time

_ALTERNATE = """
import os, sys, time
def read_so_far(records):  # until the launcher has read what was printed (no race to lose)
    deadline = time.monotonic() + 30
    while os.path.getsize('output.order') < records * 17 and time.monotonic() < deadline:
        time.sleep(0.001)
for i in range(5):
    print(f'progress {i}', flush=True)
    read_so_far(2 * i + 1)
    print(f'warning {i}', file=sys.stderr, flush=True)
    read_so_far(2 * i + 2)
raise RuntimeError('failed after progress')
"""


async def test_stdout_and_stderr_are_stored_in_the_order_printed(api: Api) -> None:
    await api.create_job([step("main", "python3", "-c", _ALTERNATE)], name="mixed")
    job = await api.wait_job("mixed", timeout_s=60)
    assert job["status"] == "error"
    _, page = await api.request("GET", "/jobs/mixed/logs", params={"limit": 1000})
    messages = [line["message"] for line in page["data"]]
    expected = [m for i in range(5) for m in (f"progress {i}", f"[stderr] warning {i}")]
    assert messages[:10] == expected
    # The traceback comes last, after the progress lines it follows.
    assert messages[10] == "[stderr] Traceback (most recent call last):"
    assert messages[-1] == "[stderr] RuntimeError: failed after progress"


async def test_a_line_written_in_pieces_stays_one_line(api: Api) -> None:
    await api.create_job(
        [shell("main", "printf 'par'; sleep 0.3; printf 'tial\\n'; printf 'no end'")], name="pieces"
    )
    assert (await api.wait_job("pieces"))["status"] == "completed"
    assert await api.logs("pieces") == ["partial", "no end"]


async def test_a_line_keeps_the_time_it_was_written_while_the_daemon_was_down(tmp_path: Path) -> None:
    from tests.conftest import api_for, running_server

    script = "sleep 1; echo first; sleep 1; echo second"
    async with running_server(tmp_path, stop_steps_on_shutdown=False) as srv, api_for(srv) as api:
        await api.create_job([shell("main", script)], name="offline")
        await api.wait_job("offline", {"active"}, timeout_s=30)
    await asyncio.sleep(3)  # both lines are printed while no daemon runs
    async with running_server(tmp_path, stop_steps_on_shutdown=False) as srv, api_for(srv) as api:
        assert (await api.wait_job("offline", timeout_s=30))["status"] == "completed"
        _, page = await api.request("GET", "/jobs/offline/logs")
        first, second = page["data"]
        assert (first["message"], second["message"]) == ("first", "second")
        gap_s = (ts(second["timestamp"]) - ts(first["timestamp"])).total_seconds()
        assert 0.7 < gap_s < 2.5, gap_s


def test_order_records_that_cannot_be_trusted_are_skipped(tmp_path: Path) -> None:
    from runner.executors.host.capture import ORDER_RECORD
    from runner.output_intake import OrderFile

    path = tmp_path / "output.order"
    good = [ORDER_RECORD.pack(0, 10, 1_000), ORDER_RECORD.pack(1, 5, 1_100)]
    bad = [ORDER_RECORD.pack(7, 20, 1_200), ORDER_RECORD.pack(0, 30, 2**63 + 5)]
    path.write_bytes(b"".join([good[0], *bad, good[1]]) + b"\x01\x02")  # and a torn tail
    order = OrderFile(str(path), 0)
    segments, more = order.segments()
    assert [(s.stream, s.end, s.timestamp) for s in segments] == [(0, 10, 1_000), (1, 5, 1_100)]
    assert segments[-1].records_end == 4 * ORDER_RECORD.size and not more


async def test_a_short_task_interleaving_many_writes_is_stored_whole(api: Api) -> None:
    # Over a thousand order records read at the task's end in one go (more pieces than one
    # vectored write takes).
    script = "import sys\nfor i in range(1500):\n    print(i, file=sys.stderr if i % 2 else sys.stdout, flush=True)"
    await api.create_job([step("main", "python3", "-c", script)], name="many")
    assert (await api.wait_job("many", timeout_s=60))["status"] == "completed"
    _, page = await api.request("GET", "/jobs/many/logs", params={"limit": 5000})
    out = [line["message"] for line in page["data"] if line["stream"] == "stdout"]
    err = [line["message"] for line in page["data"] if line["stream"] == "stderr"]
    assert out == [str(i) for i in range(0, 1500, 2)]
    assert err == [f"[stderr] {i}" for i in range(1, 1500, 2)]
