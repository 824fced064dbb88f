"""Logs: cursor paging, tail, follow with reconnects, size limit, big output."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.conftest import Api, api_for, running_server, shell


async def _follow(
    api: Api, job: str, cursor: str | None = None, max_lines: int | None = None
) -> list[dict[str, Any]]:
    params = {"follow": "true"}
    if cursor:
        params["page_cursor"] = cursor
    got: list[dict[str, Any]] = []
    async with api.session.get(f"{api.ws}/jobs/{job}/logs", params=params) as resp:
        assert resp.status == 200, await resp.text()
        assert resp.content_type == "application/x-ndjson"
        async for raw in resp.content:
            got.append(json.loads(raw))
            if max_lines is not None and len(got) >= max_lines:
                break
    return got


async def test_forward_pages_tail_and_walking_back(api: Api) -> None:
    await api.create_job([shell("count", "seq 1 250")], name="paged")
    await api.wait_job("paged")
    pages = await api.log_pages("paged", 100)
    assert [page["total"] for page in pages] == [250] * len(pages)
    seen = [line["message"] for page in pages for line in page["data"]]
    assert seen == [str(i) for i in range(1, 251)]
    _, tail = await api.request("GET", "/jobs/paged/logs", params={"tail": 10})
    assert [line["message"] for line in tail["data"]] == [str(i) for i in range(241, 251)]
    assert tail["next_page"] is None
    _, older = await api.request(
        "GET", "/jobs/paged/logs", params={"page_cursor": tail["prev_page"], "limit": 5}
    )
    assert [line["message"] for line in older["data"]] == [str(i) for i in range(236, 241)]


async def test_log_parameter_errors_are_clear(api: Api) -> None:
    await api.create_job([shell("one", "echo x")], name="errs")
    await api.wait_job("errs")
    status, body = await api.request("GET", "/jobs/errs/logs", params={"tail": 5, "limit": 5})
    assert status == 400 and "tail" in body["detail"]
    status, body = await api.request("GET", "/jobs/errs/logs", params={"page_cursor": "not-a-cursor!"})
    assert (status, body) == (422, {"detail": "Invalid page cursor"})
    status, body = await api.request("GET", "/jobs/errs/logs", params={"page_cursor": "3mJr7AoUXx2Wqd"})
    assert (status, body["detail"]) == (422, "Invalid page cursor")
    status, _ = await api.request("GET", "/jobs/errs/logs", params={"limit": 0})
    assert status == 422
    status, _ = await api.request("GET", "/jobs/missing/logs")
    assert status == 404
    # A cursor is bound to its filters.
    await api.create_job([shell("many", "seq 1 5")], name="scoped")
    await api.wait_job("scoped")
    _, page = await api.request("GET", "/jobs/scoped/logs", params={"limit": 2})
    status, body = await api.request(
        "GET", "/jobs/scoped/logs", params={"page_cursor": page["next_page"], "step_id": "many"}
    )
    assert (status, body["detail"]) == (422, "Invalid page cursor")


async def test_step_and_task_filters(api: Api) -> None:
    await api.create_job([shell("aa", "echo from-a"), shell("bb", "echo from-b")], name="filters")
    await api.wait_job("filters")
    assert await api.logs("filters", step_id="bb") == ["from-b"]
    _, tasks = await api.request("GET", "/jobs/filters/steps/aa/tasks")
    assert await api.logs("filters", task_id=tasks["data"][0]["name"]) == ["from-a"]
    assert await api.logs("filters", attempt_id=0) == ["from-a", "from-b"]
    assert await api.logs("filters", attempt_id=7) == []


async def test_follow_streams_live_and_resumes_after_reconnects(api: Api) -> None:
    script = "for i in $(seq 1 30); do echo n$i; sleep 0.03; done"
    await api.create_job([shell("talk", script)], name="follow")
    received: list[str] = []
    cursor = None
    for _ in range(3):  # disconnect twice part-way, resuming from the last cursor each time
        part = await _follow(api, "follow", cursor, max_lines=7)
        received += [line["message"] for line in part]
        cursor = part[-1]["cursor"]
    rest = await _follow(api, "follow", cursor)  # ends by itself when the job is finished
    received += [line["message"] for line in rest]
    assert received == [f"n{i}" for i in range(1, 31)]
    assert (await api.wait_job("follow"))["status"] == "completed"


async def test_follow_of_a_finished_job_returns_everything_and_ends(api: Api) -> None:
    await api.create_job([shell("done", "echo a; echo b >&2")], name="finished")
    await api.wait_job("finished")
    lines = await _follow(api, "finished")
    assert [(line["message"], line["stream"]) for line in lines] == [
        ("a", "stdout"),
        ("[stderr] b", "stderr"),
    ]


async def test_size_limit_keeps_the_newest_output(tmp_path: Path) -> None:
    async with running_server(tmp_path, log_max_bytes_per_task=20_000) as srv, api_for(srv) as api:
        await api.create_job([shell("flood", "seq 1 20000")], name="flood")
        job = await api.wait_job("flood")
        assert job["status"] == "completed"
        _, page = await api.request("GET", "/jobs/flood/logs", params={"tail": 3})
        assert [line["message"] for line in page["data"]] == ["19998", "19999", "20000"]
        assert page["dropped_lines"] > 0
        assert page["total"] + page["dropped_lines"] == 20000
        assert page["total"] * 4 < 20_000  # what is kept fits the limit


@pytest.mark.timeout(300)
async def test_200_mb_of_output(tmp_path: Path) -> None:
    """The API stays responsive while a step prints 200 MB; tail is fast; memory stays flat."""
    line = "x" * 99  # 100 bytes with the newline
    script = f"yes {line} | head -n 2000000"
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        me = psutil.Process()
        rss_before = me.memory_info().rss
        await api.create_job([shell("big", script)], name="big")
        slowest = 0.0
        while True:
            started = time.perf_counter()
            status, page = await api.request("GET", "/jobs/big/logs", params={"tail": 5})
            slowest = max(slowest, time.perf_counter() - started)
            assert status == 200
            _, job = await api.request("GET", "/jobs/big")
            if job["status"] in ("completed", "error"):
                break
            await asyncio.sleep(0.2)
        # Ingestion finishes before the final status is written.
        assert job["status"] == "completed", job
        _, page = await api.request("GET", "/jobs/big/logs", params={"tail": 5})
        assert page["total"] == 2_000_000
        assert [entry["message"] for entry in page["data"]] == [line] * 5
        growth_mb = (me.memory_info().rss - rss_before) / 2**20
        assert growth_mb < 150, f"daemon memory grew by {growth_mb:.0f} MB for 200 MB of output"
        print(f"slowest tail request while ingesting: {slowest * 1000:.0f} ms; rss growth {growth_mb:.0f} MB")
