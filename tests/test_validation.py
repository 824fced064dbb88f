"""Request validation and error shapes: 422 lists, 404/409 strings, unknown routes and methods."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import replace
from typing import Any

import pytest
from yarl import URL

from tests.conftest import Api, assert_422, shell, step

NAME_PATTERN = re.compile(r"^[a-z](?!.*--)[a-z0-9\-@.+_]{1,62}(?<!-)$")


def body(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": "test",
        "spec": {},
        "platform_spec": {"steps": [step("only", "true")]},
    }
    base.update(overrides)
    return base


def with_step(**fields: Any) -> dict[str, Any]:
    return body(platform_spec={"steps": [{**step("only", "true"), **fields}]})


def assert_string_detail(data: Any) -> str:
    assert isinstance(data, dict) and set(data) == {"detail"}, data
    assert isinstance(data["detail"], str) and data["detail"], data
    return data["detail"]  # type: ignore[no-any-return]


async def post_422(api: Api, payload: Any) -> list[dict[str, Any]]:
    status, data = await api.request("POST", "/jobs", json=payload)
    assert status == 422, data
    detail = assert_422(data)
    # Nothing was created.
    status, page = await api.request("GET", "/jobs")
    assert status == 200 and page["data"] == [], page
    return detail


def locs(detail: list[dict[str, Any]]) -> list[list[str | int]]:
    return [error["loc"] for error in detail]


STEP0 = ["body", "platform_spec", "steps", 0]


# --------------------------------------------------------------------------------- POST body


@pytest.mark.parametrize("field", ["spec", "platform_spec", "source"])
async def test_missing_required_field(api: Api, field: str) -> None:
    payload = body()
    del payload[field]
    detail = await post_422(api, payload)
    assert ["body", field] in locs(detail)
    assert next(e for e in detail if e["loc"] == ["body", field])["type"] == "missing"


async def test_missing_steps(api: Api) -> None:
    detail = await post_422(api, body(platform_spec={}))
    assert ["body", "platform_spec", "steps"] in locs(detail)


async def test_empty_steps(api: Api) -> None:
    detail = await post_422(api, body(platform_spec={"steps": []}))
    assert locs(detail) == [["body", "platform_spec", "steps"]]
    assert detail[0]["type"] == "too_short"


@pytest.mark.parametrize(
    "name", ["Upper", "a", "a--b", "trailing-", "a" * 64, "1abc", "-abc", "has space", "slash/x", ""]
)
async def test_bad_step_name(api: Api, name: str) -> None:
    detail = await post_422(api, body(platform_spec={"steps": [step(name, "true")]}))
    assert [*STEP0, "name"] in locs(detail)


@pytest.mark.parametrize("name", ["ab", "a" * 63, "a-b", "a.b@c+d_e", "s1"])
async def test_good_step_names(api: Api, name: str) -> None:
    status, data = await api.request(
        "POST", "/jobs", json=body(platform_spec={"steps": [step(name, "true")]})
    )
    assert status == 201, data
    await api.wait_job(data["name"])


async def test_duplicate_step_names(api: Api) -> None:
    detail = await post_422(
        api,
        body(platform_spec={"steps": [step("same", "true"), step("other", "true"), step("same", "true")]}),
    )
    assert locs(detail) == [["body", "platform_spec", "steps"]]
    assert "same" in detail[0]["msg"]


@pytest.mark.parametrize("command", [[], [""]])
async def test_subprocess_with_empty_command(api: Api, command: list[str]) -> None:
    detail = await post_422(api, with_step(executor={"provider": "subprocess", "command": command}))
    assert [*STEP0, "executor", "subprocess", "command"] in locs(detail)
    assert any("command" in e["msg"] for e in detail)


async def test_subprocess_without_command(api: Api) -> None:
    detail = await post_422(api, with_step(executor={"provider": "subprocess"}))
    assert [*STEP0, "executor", "subprocess", "command"] in locs(detail)


@pytest.mark.parametrize(
    ("executor", "field"),
    [
        ({"provider": "subprocess", "command": ["echo", "cut\u0000here"]}, ["subprocess", "command"]),
        (
            {"provider": "cpu", "container": {"image": "x", "command": ["a\u0000"]}},
            ["cpu", "container", "command"],
        ),
        (
            {"provider": "cpu", "container": {"image": "x", "entrypoint": ["\u0000"]}},
            ["cpu", "container", "entrypoint"],
        ),
    ],
)
async def test_a_nul_in_an_argument_is_refused(api: Api, executor: dict[str, Any], field: list[str]) -> None:
    # A process argument is a C string: a NUL would silently run a different command.
    detail = await post_422(api, with_step(executor=executor))
    assert [*STEP0, "executor", *field] in locs(detail)
    assert any("NUL" in e["msg"] for e in detail)


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ({"name": "A=B", "value": "1"}, "name"),
        ({"name": "N\u0000", "value": "1"}, "name"),
        ({"name": "V", "value": "x\u0000y"}, "value"),
    ],
)
async def test_env_var_names_and_values_must_be_c_strings(
    api: Api, variable: dict[str, Any], field: str
) -> None:
    detail = await post_422(api, with_step(environment=[variable]))
    assert [*STEP0, "environment", 0, field] in locs(detail)


async def test_missing_executor(api: Api) -> None:
    detail = await post_422(api, body(platform_spec={"steps": [{"name": "only"}]}))
    assert [*STEP0, "executor"] in locs(detail)


@pytest.mark.parametrize(
    "variable",
    [
        {"name": "BOTH", "value": "v", "from_secret": {"name": "s"}},
        {"name": "NEITHER"},
        {"name": "NULLS", "value": None, "from_secret": None},
    ],
)
async def test_env_var_needs_exactly_one_source(api: Api, variable: dict[str, Any]) -> None:
    detail = await post_422(api, with_step(environment=[{"name": "OK", "value": "1"}, variable]))
    assert [*STEP0, "environment", 1] in locs(detail)
    assert any("exactly one" in e["msg"] for e in detail)


async def test_env_var_without_name(api: Api) -> None:
    detail = await post_422(api, with_step(environment=[{"value": "1"}]))
    assert [*STEP0, "environment", 0, "name"] in locs(detail)


@pytest.mark.parametrize("name", ["Bad", "x", "a--b", "end-", "a" * 64, "9lives", "with space"])
async def test_bad_job_name(api: Api, name: str) -> None:
    detail = await post_422(api, body(name=name))
    assert locs(detail) == [["body", "name"]]


async def test_malformed_json(api: Api) -> None:
    status, data = await api.request(
        "POST", "/jobs", data=b'{"source": "x",', headers={"Content-Type": "application/json"}
    )
    assert status == 422
    detail = assert_422(data)
    assert locs(detail) == [["body"]]
    assert detail[0]["type"] == "json_invalid"


async def test_not_utf8_body(api: Api) -> None:
    status, data = await api.request(
        "POST", "/jobs", data=b"\xff\xfe{", headers={"Content-Type": "application/json"}
    )
    assert status == 422
    assert locs(assert_422(data)) == [["body"]]


async def test_empty_body(api: Api) -> None:
    status, data = await api.request("POST", "/jobs")
    assert status == 422
    detail = assert_422(data)
    assert locs(detail) == [["body"]]
    assert detail[0]["type"] == "missing"


@pytest.mark.parametrize("payload", [[body()], "a string", 42, None])
async def test_body_that_is_not_an_object(api: Api, payload: Any) -> None:
    status, data = await api.request(
        "POST", "/jobs", data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    assert status == 422, data
    assert locs(assert_422(data)) == [["body"]]


@pytest.mark.parametrize("provider", ["quantum", "", "CPU"])
async def test_unknown_provider(api: Api, provider: str) -> None:
    detail = await post_422(api, with_step(executor={"provider": provider, "command": ["true"]}))
    assert [*STEP0, "executor"] in locs(detail)
    assert detail[0]["type"] == "union_tag_invalid"


async def test_executor_without_provider(api: Api) -> None:
    detail = await post_422(api, with_step(executor={"command": ["true"]}))
    assert [*STEP0, "executor"] in locs(detail)


@pytest.mark.parametrize(
    ("resources", "loc"),
    [
        ({"limits": {"cpu": "abc"}}, ["limits", "cpu"]),
        ({"requests": {"memory": "1 GB"}}, ["requests", "memory"]),
        ({"limits": {"memory": "12Q"}}, ["limits", "memory"]),
        ({"shm_size": "1Ki"}, ["shm_size"]),
        ({"num_nodes": 0}, ["num_nodes"]),
        ({"num_gpus": -1}, ["num_gpus"]),
    ],
)
async def test_bad_resources(api: Api, resources: dict[str, Any], loc: list[str]) -> None:
    executor = {"provider": "cpu", "container": {"image": "busybox"}, "resources": resources}
    detail = await post_422(api, with_step(executor=executor))
    assert [*STEP0, "executor", "cpu", "resources", *loc] in locs(detail)


async def test_container_executor_needs_container(api: Api) -> None:
    detail = await post_422(api, with_step(executor={"provider": "gpu"}))
    assert [*STEP0, "executor", "gpu", "container"] in locs(detail)


async def test_wrong_types(api: Api) -> None:
    detail = await post_422(api, body(spec="not-an-object", source=7))
    assert ["body", "spec"] in locs(detail)
    assert ["body", "source"] in locs(detail)


async def test_several_errors_are_all_reported(api: Api) -> None:
    payload = body(name="Bad", platform_spec={"steps": [step("X", "true"), step("ok", *[])]})
    detail = await post_422(api, payload)
    found = locs(detail)
    assert ["body", "name"] in found
    assert [*STEP0, "name"] in found
    assert ["body", "platform_spec", "steps", 1, "executor", "subprocess", "command"] in found


async def test_negative_staleness(api: Api) -> None:
    detail = await post_422(api, with_step(lifecycle={"staleness_timeout_seconds": -1}))
    assert [*STEP0, "lifecycle", "staleness_timeout_seconds"] in locs(detail)


# --------------------------------------------------------------------------------- names and conflicts


async def test_duplicate_job_name_is_409(api: Api) -> None:
    await api.create_job([step("only", "true")], name="taken")
    status, data = await api.request("POST", "/jobs", json=body(name="taken"))
    assert status == 409
    assert "taken" in assert_string_detail(data)
    # The same name in another workspace is fine.
    other = replace(api, workspace="elsewhere")
    status, data = await other.request("POST", "/jobs", json=body(name="taken"))
    assert status == 201, data
    await api.wait_job("taken")
    await other.wait_job("taken")


@pytest.mark.parametrize(
    ("source", "prefix"),
    [
        ("test", "test-"),
        ("My Service", "my-service-"),
        ("customization", "customization-"),
        ("a-very-long-source-name-beyond-twenty", "a-very-long-source-n"),
        ("--weird__Source!!", "weird__source-"),
        ("123", "job-123-"),
        ("!!!", "job-"),
    ],
)
async def test_generated_name(api: Api, source: str, prefix: str) -> None:
    status, data = await api.request("POST", "/jobs", json=body(source=source))
    assert status == 201, data
    name = data["name"]
    assert NAME_PATTERN.match(name), name
    assert name.startswith(prefix), name
    assert data["source"] == source
    assert data["fileset"] == f"job-fileset-{name}"
    status, fetched = await api.request("GET", f"/jobs/{name}")
    assert status == 200 and fetched["id"] == data["id"]
    await api.wait_job(name)


async def test_generated_names_are_unique(api: Api) -> None:
    created = set()
    for _ in range(5):
        status, data = await api.request("POST", "/jobs", json=body())
        assert status == 201
        created.add(data["name"])
    assert len(created) == 5
    for name in created:
        await api.wait_job(name)


@pytest.mark.parametrize("workspace", ["bad!ws", "sp%20ace", "a%2Fb", "semi;colon"])
async def test_invalid_workspace_in_path(api: Api, workspace: str) -> None:
    url = f"{api.base_url}/apis/jobs/v2/workspaces/{workspace}/jobs"
    async with api.session.post(URL(url, encoded=True), json=body()) as resp:
        data = await resp.json()
        if resp.status == 404:
            # An encoded slash splits the path: no such route, still JSON.
            assert workspace == "a%2Fb"
            assert_string_detail(data)
            return
        assert resp.status == 422, data
    detail = assert_422(data)
    assert locs(detail) == [["path", "workspace"]]
    for path in ("/jobs", "/jobs/x", "/jobs/x/steps/y", "/jobs/x/steps/y/tasks/z"):
        async with api.session.get(
            URL(f"{api.base_url}/apis/jobs/v2/workspaces/bad!ws{path}", encoded=True)
        ) as r:
            assert r.status == 422, path
            assert locs(assert_422(await r.json())) == [["path", "workspace"]]


# --------------------------------------------------------------------------------- 404 / 409 / tasks


async def test_missing_resources_are_404_with_string_detail(api: Api) -> None:
    await api.create_job([step("only", "true")], name="real")
    await api.wait_job("real")
    for method, path in (
        ("GET", "/jobs/ghost"),
        ("GET", "/jobs/ghost/status"),
        ("GET", "/jobs/ghost/logs"),
        ("DELETE", "/jobs/ghost"),
        ("POST", "/jobs/ghost/cancel"),
        ("GET", "/jobs/ghost/steps/only"),
        ("GET", "/jobs/real/steps/ghost"),
        ("GET", "/jobs/ghost/steps/only/tasks"),
        ("GET", "/jobs/real/steps/ghost/tasks"),
        ("GET", "/jobs/real/steps/only/tasks/ghost"),
        ("GET", "/jobs/real/steps/ghost/tasks/ghost"),
        ("GET", "/jobs/ghost/steps/only/tasks/ghost"),
        ("PUT", "/jobs/real/steps/ghost/tasks/new"),
        ("PATCH", "/jobs/real/steps/ghost/status"),
    ):
        kwargs: dict[str, Any] = {"json": {"status": "active"}} if method in ("PUT", "PATCH") else {}
        status, data = await api.request(method, path, **kwargs)
        assert status == 404, (method, path, data)
        assert_string_detail(data)
    # A job of another workspace is not found either.
    status, data = await replace(api, workspace="other").request("GET", "/jobs/real")
    assert status == 404
    assert_string_detail(data)


async def test_forbidden_step_transition_is_409(api: Api) -> None:
    await api.create_job([step("only", "true")], name="finished")
    assert (await api.wait_job("finished"))["status"] == "completed"
    for target in ("active", "pending", "created", "error"):
        status, data = await api.request("PATCH", "/jobs/finished/steps/only/status", json={"status": target})
        assert status == 409, (target, data)
        assert_string_detail(data)
    status, step_now = await api.request("GET", "/jobs/finished/steps/only")
    assert status == 200 and step_now["status"] == "completed"
    # The same status is always allowed.
    status, data = await api.request(
        "PATCH", "/jobs/finished/steps/only/status", json={"status": "completed"}
    )
    assert status == 200, data


async def test_step_status_body_is_validated(api: Api) -> None:
    await api.create_job([step("only", "true")], name="finished")
    await api.wait_job("finished")
    for payload, loc in (
        ({}, ["body", "status"]),
        ({"status": "running"}, ["body", "status"]),
        ({"status": "active", "status_details": "x"}, ["body", "status_details"]),
    ):
        status, data = await api.request("PATCH", "/jobs/finished/steps/only/status", json=payload)
        assert status == 422, data
        assert loc in locs(assert_422(data))


async def test_put_task_upserts_and_ignores_invalid_transitions(api: Api) -> None:
    await api.create_job([step("only", "true")], name="host")
    await api.wait_job("host")
    path = "/jobs/host/steps/only/tasks/task-extra"
    status, created = await api.request("PUT", path, json={})
    assert status == 200, created
    assert created["name"] == "task-extra"
    assert created["status"] == "pending"
    assert created["status_details"] == {}
    status, fetched = await api.request("GET", path)
    assert status == 200 and fetched["id"] == created["id"] and fetched["status"] == "pending"

    status, done = await api.request("PUT", path, json={"status": "completed", "status_details": {"k": 1}})
    assert status == 200 and done["status"] == "completed" and done["status_details"]["k"] == 1

    status, ignored = await api.request("PUT", path, json={"status": "active", "status_details": {"k": 2}})
    assert status == 200, ignored
    assert ignored["status"] == "completed"
    assert ignored["status_details"]["k"] == 1
    status, fetched = await api.request("GET", path)
    assert fetched["status"] == "completed"

    status, listing = await api.request("GET", "/jobs/host/steps/only/tasks")
    assert status == 200
    assert "task-extra" in [t["name"] for t in listing["data"]]


async def test_put_task_body_is_validated(api: Api) -> None:
    await api.create_job([step("only", "true")], name="host")
    await api.wait_job("host")
    for payload in ({"status": "bogus"}, [1, 2], {"status_details": "x"}):
        status, data = await api.request("PUT", "/jobs/host/steps/only/tasks/t1", json=payload)
        assert status == 422, (payload, data)
        assert all(loc[0] == "body" for loc in locs(assert_422(data)))
    status, data = await api.request("GET", "/jobs/host/steps/only/tasks/t1")
    assert status == 404


async def test_delete_of_running_job_is_409(api: Api) -> None:
    await api.create_job([shell("hold", "sleep 30")], name="busy")
    await api.wait_job("busy", {"active"})
    status, data = await api.request("DELETE", "/jobs/busy")
    assert status == 409
    assert_string_detail(data)
    status, _ = await api.request("POST", "/jobs/busy/cancel")
    assert status == 200
    assert (await api.wait_job("busy"))["status"] == "cancelled"


# --------------------------------------------------------------------------------- routing


@pytest.mark.parametrize(
    "url",
    ["/nope", "/apis/jobs/v2/nope", "/apis/jobs/v1/workspaces/default/jobs", "/apis/jobs/v2/workspaces"],
)
async def test_unknown_route_is_404_json(api: Api, url: str) -> None:
    async with api.session.get(api.base_url + url) as resp:
        assert resp.status == 404
        assert resp.content_type == "application/json"
        assert_string_detail(await resp.json())


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/jobs"),
        ("DELETE", "/jobs"),
        ("POST", "/jobs/x/steps"),
        ("PUT", "/jobs/x"),
        ("GET", "/jobs/x/cancel"),
        ("POST", "/jobs/x/steps/y/tasks/z"),
    ],
)
async def test_wrong_method_is_405_json(api: Api, method: str, path: str) -> None:
    async with api.session.request(method, api.ws + path) as resp:
        assert resp.status == 405, await resp.text()
        assert resp.content_type == "application/json"
        assert_string_detail(await resp.json())
        assert resp.headers.get("Allow")


async def test_create_echoes_the_normalised_spec_and_leaves_the_request_alone(api: Api) -> None:
    payload = body(platform_spec={"steps": [step("only", "true")]})
    original = copy.deepcopy(payload)
    status, data = await api.request("POST", "/jobs", json=payload)
    assert status == 201
    assert payload == original
    # The echoed spec is normalised, with defaults filled in (as the reference's: no variables is null).
    assert data["platform_spec"]["steps"][0] == {
        "name": "only",
        "environment": None,
        "executor": {"provider": "subprocess", "profile": "default", "command": ["true"]},
        "config": {},
        "lifecycle": {"staleness_timeout_seconds": 0},
    }
    await api.wait_job(data["name"])
