"""Bad input is a 4xx, never a 500, never stored (issue 10, point 5).

Deep nesting, lone surrogates, NUL characters, NaN/Infinity and names that only match up to a
trailing newline: each is a 422 in the HTTPValidationError shape, nothing of it is stored, and
every answer stays strict JSON, even for a row stored before these checks existed.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from pydantic_core import from_json
from yarl import URL

from tests.conftest import Api, api_for, assert_422, running_server, step
from web.app import Server
from web.strict_json import MAX_DEPTH

SECRETS = "/apis/secrets/v2/workspaces/default/secrets"
JSON = {"Content-Type": "application/json"}


def job_body(**overrides: Any) -> dict[str, Any]:
    return {"source": "test", "spec": {}, "platform_spec": {"steps": [step("only", "true")]}, **overrides}


def strict(raw: bytes) -> Any:
    """Parse as a strict client would: no NaN/Infinity tokens, no lone surrogates, UTF-8 only."""

    def refuse(token: str) -> None:
        raise AssertionError(f"not JSON: {token}")

    from_json(raw, allow_inf_nan=False)  # raises on a lone surrogate escape as well
    return json.loads(raw.decode("utf-8"), parse_constant=refuse)


async def get_strict(api: Api, path: str) -> Any:
    url = path if path.startswith("http") else api.ws + path
    async with api.session.get(url, headers=api.headers) as resp:
        raw = await resp.read()
        assert resp.status == 200, raw
        assert resp.content_type == "application/json"
        return strict(raw)


async def send_raw(api: Api, method: str, path: str, raw: bytes) -> tuple[int, Any]:
    """A hand-built body (bytes exactly as given), as a client other than `json=` would send it."""
    url = path if path.startswith("http") else api.ws + path
    data = io.BytesIO(raw) if len(raw) > 2**20 else raw  # aiohttp warns about big raw bytes
    async with api.session.request(method, url, data=data, headers={**api.headers, **JSON}) as resp:
        body = await resp.read()
        return resp.status, strict(body) if body else None


async def no_jobs(api: Api) -> None:
    page = await get_strict(api, "/jobs")
    assert page["data"] == [], page


async def finished_job(api: Api, name: str = "host") -> None:
    await api.create_job([step("only", "true")], name=name)
    await api.wait_job(name)


def nested(depth: int) -> bytes:
    """An array nested `depth` levels deep."""
    return b"[" * depth + b"]" * depth


# --------------------------------------------------------------------------------- nesting


@pytest.mark.parametrize("depth", [MAX_DEPTH, 10_000, 1_000_000])
async def test_deep_nesting_in_a_job_is_422_and_nothing_is_stored(api: Api, depth: int) -> None:
    # The body object is level 1, so `spec` may hold MAX_DEPTH - 1 levels.
    raw = json.dumps(job_body(spec="SPEC")).encode().replace(b'"SPEC"', nested(depth))
    status, data = await send_raw(api, "POST", "/jobs", raw)
    assert status == 422, data
    (error,) = assert_422(data)
    assert error["type"] == "json_invalid"
    assert error["loc"][:2] == ["body", "spec"] or error["loc"] == ["body"]
    assert f"deeper than {MAX_DEPTH} levels" in error["msg"]
    await no_jobs(api)


async def test_nesting_up_to_the_bound_is_accepted(api: Api) -> None:
    spec: dict[str, Any] = {}
    for _ in range(MAX_DEPTH - 2):  # the body is level 1, so spec may be MAX_DEPTH - 1 deep
        spec = {"a": spec}
    data = await api.create_job([step("only", "true")], name="deep-ok", spec=spec)
    node = data["spec"]
    levels = 1
    while node:
        node, levels = node["a"], levels + 1
    assert levels == MAX_DEPTH - 1
    await api.wait_job("deep-ok")


async def test_deep_nesting_in_task_updates_status_details_and_filters(api: Api) -> None:
    await finished_job(api)
    too_deep = b'{"status_details": {"x": ' + nested(MAX_DEPTH) + b"}}"
    status, data = await send_raw(api, "PUT", "/jobs/host/steps/only/tasks/extra", too_deep)
    assert status == 422, data
    assert assert_422(data)[0]["loc"][:3] == ["body", "status_details", "x"]
    status, data = await send_raw(
        api, "PATCH", "/jobs/host/status-details", b'{"x": ' + nested(10_000) + b"}"
    )
    assert status == 422, data
    assert assert_422(data)[0]["loc"][0] == "body"
    status, _ = await api.request("GET", "/jobs/host/steps/only/tasks/extra")
    assert status == 404
    job = await get_strict(api, "/jobs/host")
    assert "x" not in job["status_details"]
    # The plain `filter=` parameter holds JSON too.
    status, data = await api.request("GET", "/jobs", params={"filter": nested(MAX_DEPTH + 1).decode()})
    assert status == 422, data
    assert assert_422(data)[0]["loc"][:2] == ["query", "filter"]


# --------------------------------------------------------------------------------- surrogates


def with_lone_surrogate(payload: dict[str, Any]) -> bytes:
    # json.dumps writes "\ud800" as the six characters of its escape: what a client sends.
    raw = json.dumps(payload).encode()
    assert b"\\ud800" in raw or b"\\udfff" in raw
    return raw


@pytest.mark.parametrize(
    "raw",
    [
        with_lone_surrogate(job_body(source="\ud800")),
        with_lone_surrogate(job_body(description="tail \udfff")),
        with_lone_surrogate(job_body(spec={"\ud800": 1})),
        with_lone_surrogate(
            job_body(
                platform_spec={
                    "steps": [step("only", "echo", "\ud800", environment=[{"name": "V", "value": "\udfff"}])]
                }
            )
        ),
        # The same character as raw (CESU-style) UTF-8 bytes rather than an escape.
        json.dumps(job_body(source="SURR")).encode().replace(b"SURR", b"\xed\xa0\x80"),
    ],
    ids=["source", "description", "key", "argument-and-env", "raw-bytes"],
)
async def test_a_lone_surrogate_in_a_job_is_422_and_nothing_is_stored(api: Api, raw: bytes) -> None:
    status, data = await send_raw(api, "POST", "/jobs", raw)
    assert status == 422, data
    (error,) = assert_422(data)
    assert error["loc"][0] == "body" and error["type"] == "json_invalid", error
    await no_jobs(api)


async def test_a_surrogate_pair_is_one_character_and_is_fine(api: Api) -> None:
    raw = json.dumps(job_body(name="emoji", source="smile \U0001f600")).encode()
    assert b"\\ud83d\\ude00" in raw
    status, data = await send_raw(api, "POST", "/jobs", raw)
    assert status == 201, data
    assert data["source"] == "smile \U0001f600"
    await api.wait_job("emoji")


async def test_a_lone_surrogate_in_a_secret_is_422_and_nothing_is_stored(api: Api) -> None:
    url = api.base_url + SECRETS
    status, data = await send_raw(api, "POST", url, with_lone_surrogate({"name": "token", "value": "\ud800"}))
    assert status == 422, data
    assert_422(data)
    status, _ = await api.request("GET", f"{url}/token")
    assert status == 404
    status, _ = await api.request("POST", url, json={"name": "token", "value": "good-value"})
    assert status == 201
    status, data = await send_raw(api, "PATCH", f"{url}/token", with_lone_surrogate({"value": "\udfff"}))
    assert status == 422, data
    assert (await get_strict(api, f"{url}/token/access"))["value"] == "good-value"


async def test_a_lone_surrogate_in_a_task_update_is_422_and_nothing_is_stored(api: Api) -> None:
    await finished_job(api)
    raw = with_lone_surrogate({"status": "active", "status_details": {"m": "\ud800"}})
    status, data = await send_raw(api, "PUT", "/jobs/host/steps/only/tasks/extra", raw)
    assert status == 422, data
    assert_422(data)
    status, _ = await api.request("GET", "/jobs/host/steps/only/tasks/extra")
    assert status == 404
    status, data = await send_raw(
        api, "PATCH", "/jobs/host/status-details", with_lone_surrogate({"m": "\udfff"})
    )
    assert status == 422, data
    assert "m" not in (await get_strict(api, "/jobs/host"))["status_details"]


async def test_a_lone_surrogate_in_a_filter_is_422(api: Api) -> None:
    status, data = await api.request("GET", "/jobs", params={"filter": '{"name": "\\ud800"}'})
    assert status == 422, data
    assert assert_422(data)[0]["loc"] == ["query", "filter"]


# --------------------------------------------------------------------------------- NUL


async def test_a_nul_in_artifact_url_is_422_and_nothing_is_stored(api: Api) -> None:
    await finished_job(api)
    job = await get_strict(api, "/jobs/host")
    url = f"default/{job['fileset']}#out\u0000/../../etc/passwd"
    status, data = await api.request(
        "POST", "/jobs/host/results/model", json={"artifact_url": url, "artifact_storage_type": "fileset"}
    )
    assert status == 422, data
    assert [e["loc"] for e in assert_422(data)] == [["body", "artifact_url"]]
    status, _ = await api.request("GET", "/jobs/host/results/model")
    assert status == 404
    assert (await get_strict(api, "/jobs/host/results"))["data"] == []


@pytest.mark.parametrize(
    ("executor", "loc"),
    [
        ({"provider": "cpu", "container": {"image": "busy\u0000box"}}, ["cpu", "container", "image"]),
        (
            {"provider": "cpu", "container": {"image": "b", "entrypoint": ["s\u0000h"]}},
            ["cpu", "container", "entrypoint"],
        ),
        ({"provider": "subprocess", "command": ["tr\u0000ue"]}, ["subprocess", "command"]),
    ],
)
async def test_a_nul_in_what_becomes_an_argument_or_image_is_422(
    api: Api, executor: dict[str, Any], loc: list[str]
) -> None:
    status, data = await api.request(
        "POST", "/jobs", json=job_body(platform_spec={"steps": [{"name": "only", "executor": executor}]})
    )
    assert status == 422, data
    assert ["body", "platform_spec", "steps", 0, "executor", *loc] in [e["loc"] for e in assert_422(data)]
    await no_jobs(api)


async def test_a_nul_in_a_secret_value_is_422_and_nothing_is_stored(api: Api) -> None:
    url = api.base_url + SECRETS
    status, data = await api.request("POST", url, json={"name": "token", "value": "cut\u0000here"})
    assert status == 422, data
    assert [e["loc"] for e in assert_422(data)] == [["body", "value"]]
    status, _ = await api.request("GET", f"{url}/token")
    assert status == 404
    await api.request("POST", url, json={"name": "token", "value": "whole"})
    status, data = await api.request("PATCH", f"{url}/token", json={"value": "\u0000"})
    assert status == 422, data
    assert (await get_strict(api, f"{url}/token/access"))["value"] == "whole"


@pytest.mark.parametrize("name", ["a%00b", "nl%0A", "Upper", "x"])
async def test_task_and_result_names_in_the_path_are_checked(api: Api, name: str) -> None:
    await finished_job(api)
    task_url = URL(f"{api.ws}/jobs/host/steps/only/tasks/{name}", encoded=True)
    async with api.session.put(task_url, json={"status": "active"}, headers=api.headers) as resp:
        assert resp.status == 422
        assert [e["loc"] for e in assert_422(strict(await resp.read()))] == [["path", "name"]]
    tasks = await get_strict(api, "/jobs/host/steps/only/tasks")
    assert len(tasks["data"]) == 1
    result_url = URL(f"{api.ws}/jobs/host/results/{name}", encoded=True)
    body = {"artifact_url": "x", "artifact_storage_type": "fileset"}
    async with api.session.post(result_url, json=body, headers=api.headers) as resp:
        assert resp.status == 422
        assert [e["loc"] for e in assert_422(strict(await resp.read()))] == [["path", "name"]]
    assert (await get_strict(api, "/jobs/host/results"))["data"] == []


# --------------------------------------------------------------------------------- NaN / Infinity


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1E400"]


@pytest.mark.parametrize("token", NON_FINITE)
async def test_non_finite_numbers_in_a_task_update_are_422_and_reads_stay_strict(
    api: Api, token: str
) -> None:
    await finished_job(api)
    raw = b'{"status": "active", "status_details": {"percentage_done": ' + token.encode() + b"}}"
    status, data = await send_raw(api, "PUT", "/jobs/host/steps/only/tasks/extra", raw)
    assert status == 422, data
    (error,) = assert_422(data)
    assert error["loc"][0] == "body"
    if token[-1].isdigit():
        # Well-formed JSON whose value no float holds: located, as pydantic locates errors.
        assert error["type"] == "finite_number"
        assert error["loc"] == ["body", "status_details", "percentage_done"]
    else:
        assert error["type"] == "json_invalid" and "NaN and Infinity" in error["ctx"]["error"]
    status, _ = await api.request("GET", "/jobs/host/steps/only/tasks/extra")
    assert status == 404
    job = await get_strict(api, "/jobs/host")
    assert "percentage_done" not in job["status_details"]
    await get_strict(api, "/jobs")
    await get_strict(api, "/jobs/host/status")
    await get_strict(api, "/jobs/-/steps")


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("POST", "/jobs", json.dumps(job_body(spec="X")).encode().replace(b'"X"', b'{"lr": NaN}')),
        ("POST", "/jobs", json.dumps(job_body(custom_fields="X")).encode().replace(b'"X"', b'{"n": 1e999}')),
        ("PATCH", "/jobs/host/status-details", b'{"loss": Infinity}'),
        (
            "PATCH",
            "/jobs/host/steps/only/status",
            b'{"status": "completed", "status_details": {"x": -Infinity}}',
        ),
    ],
)
async def test_non_finite_numbers_anywhere_are_422(api: Api, method: str, path: str, raw: bytes) -> None:
    await finished_job(api)
    before = await get_strict(api, "/jobs")
    status, data = await send_raw(api, method, path, raw)
    assert status == 422, data
    assert_422(data)
    assert await get_strict(api, "/jobs") == before


async def test_a_stored_row_that_is_not_strict_json_is_still_answered_as_strict_json(
    tmp_path: Path,
) -> None:
    """A row written before these checks existed (NaN, a lone surrogate) does not turn every
    read into invalid JSON: the non-finite number reads as null, the surrogate as U+FFFD."""
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await finished_job(api, "old-row")
        await _write_old_row(srv, '{"loss":NaN,"best":-Infinity,"note":"half \\ud800 pair","ok":1}')
        expected = {"loss": None, "best": None, "note": "half \ufffd pair", "ok": 1}
        job = await get_strict(api, "/jobs/old-row")
        assert job["status_details"] == expected
        (listed,) = (await get_strict(api, "/jobs"))["data"]
        assert listed["status_details"] == expected
        assert (await get_strict(api, "/jobs/old-row/status"))["status_details"] == expected


async def _write_old_row(srv: Server, status_details: str) -> None:
    def write() -> None:
        conn = sqlite3.connect(srv.daemon.settings.db_path, timeout=10)
        try:
            with conn:
                conn.execute("UPDATE jobs SET status_details = ? WHERE name = 'old-row'", (status_details,))
        finally:
            conn.close()

    await asyncio.to_thread(write)


# --------------------------------------------------------------------------------- names


async def test_a_trailing_newline_does_not_make_another_job(api: Api) -> None:
    await api.create_job([step("only", "true")], name="nl")
    for payload, loc in (
        (job_body(name="nl\n"), ["body", "name"]),
        (job_body(output_location="nl\n"), ["body", "output_location"]),
        (
            job_body(platform_spec={"steps": [step("nl\n", "true")]}),
            ["body", "platform_spec", "steps", 0, "name"],
        ),
    ):
        status, data = await api.request("POST", "/jobs", json=payload)
        assert status == 422, data
        assert loc in [e["loc"] for e in assert_422(data)]
    assert [j["name"] for j in (await get_strict(api, "/jobs"))["data"]] == ["nl"]
    status, _ = await api.request("GET", "/jobs/nl%0A")
    assert status == 404
    await api.wait_job("nl")


async def test_a_trailing_newline_does_not_make_another_secret(api: Api) -> None:
    url = api.base_url + SECRETS
    status, data = await api.request("POST", url, json={"name": "nl\n", "value": "v"})
    assert status == 422, data
    assert [e["loc"] for e in assert_422(data)] == [["body", "name"]]
    assert (await get_strict(api, url))["data"] == []


@pytest.mark.parametrize("workspace", [".", "..", "%2E", "%2e%2E", "nl%0A", "a%00b", "w" * 256])
async def test_bad_workspaces_are_refused(server: Server, api: Api, workspace: str) -> None:
    base = f"{api.base_url}/apis/jobs/v2/workspaces/{workspace}"
    async with api.session.post(
        URL(base + "/jobs", encoded=True), json=job_body(name="escape"), headers=api.headers
    ) as resp:
        assert resp.status == 422
        assert [e["loc"] for e in assert_422(strict(await resp.read()))] == [["path", "workspace"]]
    secrets = f"{api.base_url}/apis/secrets/v2/workspaces/{workspace}/secrets"
    async with api.session.post(
        URL(secrets, encoded=True), json={"name": "sx", "value": "v"}, headers=api.headers
    ) as resp:
        assert resp.status == 422
    # No job was made anywhere, and nothing was made beside the workspaces' folders.
    steps = await get_strict(api, f"{api.base_url}/apis/jobs/v2/workspaces/-/jobs/-/steps")
    assert steps["data"] == []
    data_dir = server.daemon.settings.data_dir
    assert not (data_dir / "escape").exists() and not (data_dir / "work" / "escape").exists()


async def test_a_workspace_of_the_longest_allowed_name_works(api: Api) -> None:
    long_ws = replace(api, workspace="w" * 255)
    status, data = await long_ws.request("POST", "/jobs", json=job_body(name="long"))
    assert status == 201, data
    assert (await long_ws.wait_job("long"))["status"] == "completed"


# --------------------------------------------------------------------------------- body size


async def test_an_oversized_body_is_413_in_the_detail_shape(tmp_path: Path) -> None:
    async with running_server(tmp_path, max_body_bytes=1024) as srv, api_for(srv) as api:
        raw = json.dumps(job_body(name="big", spec={"pad": "x" * 2048})).encode()
        status, data = await send_raw(api, "POST", "/jobs", raw)
        assert status == 413, data
        assert isinstance(data, dict) and set(data) == {"detail"} and isinstance(data["detail"], str), data
        assert "1024 bytes" in data["detail"]

        async def chunks() -> Any:  # no Content-Length: the limit holds for a streamed body too
            for start in range(0, len(raw), 256):
                yield raw[start : start + 256]

        async with api.session.post(f"{api.ws}/jobs", data=chunks(), headers={**api.headers, **JSON}) as resp:
            assert resp.status == 413
            assert set(strict(await resp.read())) == {"detail"}
        await no_jobs(api)
        # A body of exactly the limit is fine; one byte more is not.
        at_limit = padded(job_body(name="edge"), 1024)
        status, data = await send_raw(api, "POST", "/jobs", padded(job_body(name="over"), 1025))
        assert status == 413, data
        status, data = await send_raw(api, "POST", "/jobs", at_limit)
        assert status == 201, data
        assert [j["name"] for j in (await get_strict(api, "/jobs"))["data"]] == ["edge"]
        await api.wait_job("edge")


def padded(payload: dict[str, Any], size: int) -> bytes:
    base = json.dumps({**payload, "spec": {"pad": ""}}).encode()
    raw = json.dumps({**payload, "spec": {"pad": "x" * (size - len(base))}}).encode()
    assert len(raw) == size
    return raw


async def test_bad_input_never_answers_500(api: Api) -> None:
    """A sweep over every body-taking route with each kind of bad body: always a 4xx."""
    await finished_job(api)
    await api.request("POST", api.base_url + SECRETS, json={"name": "known", "value": "value"})
    routes = [
        ("POST", "/jobs"),
        ("PATCH", "/jobs/host/status-details"),
        ("PATCH", "/jobs/host/steps/only/status"),
        ("PUT", "/jobs/host/steps/only/tasks/extra"),
        ("POST", "/jobs/host/results/model"),
        ("POST", api.base_url + SECRETS),
        ("PATCH", api.base_url + SECRETS + "/known"),
    ]
    bodies = [
        nested(100_000),
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b'{"a": "\\ud800"}',
        b'{"a": "\xed\xa0\x80"}',
        b"1" * 5000,
        b"\xef\xbb\xbf" + nested(3),
        b"\xff",
    ]
    for method, path in routes:
        for raw in bodies:
            status, data = await send_raw(api, method, path, raw)
            assert 400 <= status < 500, (method, path, raw[:20], data)
            assert isinstance(data, dict) and set(data) == {"detail"}, data
    status, _ = await api.request("GET", "/jobs/host/steps/only/tasks/extra")
    assert status == 404
    assert [r["name"] for r in (await get_strict(api, "/jobs/host/results"))["data"]] == []
