"""Wire parity: what the daemon sends, field by field against what the reference would send.

The judge is the reference itself (nemo-platform 0.6.0's own models and FastAPI): its routes answer
through FastAPI with a response model each (the return annotation), with
`response_model_exclude_none=True` on the three list routes (List Jobs, List Steps, List Secrets)
and FastAPI's defaults elsewhere (by alias, nothing excluded: every unset optional is a `null`, at
every depth). `Reference` mounts those response models with those settings on a FastAPI app of its
own. A daemon answer (after real runs: completed, failed, cancelled) is validated with the reference's
models in strict mode, served back through FastAPI, and the two documents must be equal: a missing
key, an extra key, a different value or key order fails. localjobs' documented additions are listed
in EXTENSIONS (each must be present where listed). Entities (`PlatformJobStep`, `PlatformJobTask`)
keep `id`, `created_at`, `parent`, ... in private attributes behind computed fields, as the
reference's entity store fills them: they are set from the answer, as the store would.

What the judge cannot see from an answer alone, the normalised `platform_spec` (defaults filled in,
nulls where nothing was sent), is checked against the reference's own normalisation of the request.
"""

from __future__ import annotations

import asyncio
import json
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nemo_platform_plugin.schema import Page
from nmp.common.jobs.schemas import (
    PlatformJobListResultResponse,
    PlatformJobLogPage,
    PlatformJobResultResponse,
    PlatformJobStatusResponse,
)
from nmp.core.jobs.api.v2.jobs.schemas import (
    CreatePlatformJobRequest,
    PlatformJobListTaskResponse,
    PlatformJobResponse,
    PlatformJobStepWithContext,
)
from nmp.core.jobs.entities import PlatformJobStep, PlatformJobTask
from nmp.core.secrets.api.v2.secrets.schemas import PlatformSecretAccessResponse, PlatformSecretResponse
from pydantic import BaseModel, TypeAdapter

from runner.models import PlatformJobSpec
from tests.conftest import Api, shell, step
from tests.daemon_process import TEST_TOKEN
from tests.docker_env import TEST_IMAGE, require_docker
from web import serialize
from web.app import Server

# localjobs' documented additions to the reference's shapes (README, "Differences"): where they are.
EXTENSIONS: dict[str, dict[str, set[str]]] = {
    # route kind -> JSON path of an object (`[]` = every item) -> keys added there
    "logs": {"$": {"dropped_lines"}, "$.data[]": {"stream"}},
}

_DATETIME = TypeAdapter(datetime)
_ENTITY_ATTRS = ("created_at", "created_by", "updated_at", "updated_by", "parent", "db_version")


def _entity(model: type[BaseModel], wire: dict[str, Any]) -> BaseModel:
    """An entity as the reference's store hands it over: fields validated, private attributes set."""
    entity = model.model_validate_json(json.dumps(wire), strict=True)
    entity._id = wire["id"]  # type: ignore[attr-defined]
    for name in _ENTITY_ATTRS:
        value = wire[name]
        if name.endswith("_at") and value is not None:
            value = _DATETIME.validate_json(json.dumps(value), strict=True)
        setattr(entity, "_" + name, value)
    return entity


def _entities(model: type[BaseModel], container: BaseModel, wire: dict[str, Any]) -> BaseModel:
    container.data = [_entity(model, item) for item in wire["data"]]  # type: ignore[attr-defined]
    return container


def _plain(model: Any) -> Any:
    return lambda wire: TypeAdapter(model).validate_json(json.dumps(wire), strict=True)


# route kind -> (response model as the reference's route declares it, exclude_none, how to rebuild it)
ROUTES: dict[str, tuple[Any, bool, Any]] = {
    "job": (PlatformJobResponse, False, _plain(PlatformJobResponse)),
    "jobs": (Page[PlatformJobResponse], True, _plain(Page[PlatformJobResponse])),
    "status": (PlatformJobStatusResponse, False, _plain(PlatformJobStatusResponse)),
    "logs": (PlatformJobLogPage, False, _plain(PlatformJobLogPage)),
    "step": (PlatformJobStep, False, lambda wire: _entity(PlatformJobStep, wire)),
    "steps": (Page[PlatformJobStepWithContext], True, _plain(Page[PlatformJobStepWithContext])),
    "task": (PlatformJobTask, False, lambda wire: _entity(PlatformJobTask, wire)),
    "tasks": (
        PlatformJobListTaskResponse,
        False,
        lambda wire: _entities(PlatformJobTask, PlatformJobListTaskResponse.model_construct(data=[]), wire),
    ),
    "result": (PlatformJobResultResponse, False, _plain(PlatformJobResultResponse)),
    "results": (PlatformJobListResultResponse, False, _plain(PlatformJobListResultResponse)),
    "secret": (PlatformSecretResponse, False, _plain(PlatformSecretResponse)),
    "secrets": (Page[PlatformSecretResponse], True, _plain(Page[PlatformSecretResponse])),
    "access": (PlatformSecretAccessResponse, False, _plain(PlatformSecretAccessResponse)),
}


class Reference:
    """FastAPI serving the reference's response models with the reference's route settings."""

    def __init__(self) -> None:
        self._served: dict[str, Any] = {}
        self.app = FastAPI()
        for kind, (model, exclude_none, _) in ROUTES.items():
            self._route(kind, model, exclude_none)
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://ref")

    def _route(self, kind: str, model: Any, exclude_none: bool) -> None:
        async def endpoint() -> Any:
            return self._served[kind]

        self.app.add_api_route(
            f"/{kind}",
            endpoint,
            methods=["GET"],
            response_model=model,
            response_model_exclude_none=exclude_none,
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def serialize(self, kind: str, wire: Any) -> Any:
        """What the reference sends for the same data: `wire` through its models and FastAPI."""
        _, _, rebuild = ROUTES[kind]
        self._served[kind] = rebuild(without_extensions(kind, wire))
        response = await self._client.get(f"/{kind}")
        assert response.status_code == 200, response.text
        return response.json()

    async def differences(self, kind: str, wire: Any) -> list[str]:
        return diff(without_extensions(kind, wire), await self.serialize(kind, wire))


def without_extensions(kind: str, wire: Any) -> Any:
    """`wire` without localjobs' documented extra keys (each must be present where it is listed)."""
    wire = json.loads(json.dumps(wire))
    for path, keys in EXTENSIONS.get(kind, {}).items():
        for node in _at(wire, path):
            assert keys <= set(node), f"{kind}: {path} lacks the extension keys {keys - set(node)}"
            for key in keys:
                del node[key]
    return wire


def _at(document: Any, path: str) -> list[Any]:
    nodes = [document]
    for part in path.removeprefix("$").split(".")[1:]:
        if part.endswith("[]"):
            nodes = [item for node in nodes for item in node[part[:-2]]]
        else:
            nodes = [node[part] for node in nodes]
    return nodes


def diff(ours: Any, theirs: Any, path: str = "$") -> list[str]:
    """Every way `ours` differs from `theirs`: missing and extra keys, values, types, key order."""
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{path}.{k}: missing (reference sends {theirs[k]!r})" for k in theirs if k not in ours]
        found += [f"{path}.{k}: extra ({ours[k]!r}; not in the reference)" for k in ours if k not in theirs]
        for key in theirs:
            if key in ours:
                found += diff(ours[key], theirs[key], f"{path}.{key}")
        if not found and list(ours) != list(theirs):
            found.append(f"{path}: key order {list(ours)} vs the reference's {list(theirs)}")
        return found
    if isinstance(ours, list) and isinstance(theirs, list):
        if len(ours) != len(theirs):
            return [f"{path}: {len(ours)} items vs the reference's {len(theirs)}"]
        return [
            d for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) for d in diff(a, b, f"{path}[{i}]")
        ]
    if type(ours) is not type(theirs) or ours != theirs:
        return [f"{path}: {ours!r} vs the reference's {theirs!r}"]
    return []


# --------------------------------------------------------------------------------- real runs

SECRETS = "/apis/secrets/v2/workspaces/default/secrets"


def _body(name: str, steps: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "source": "wire",
        "spec": {"k": [1, None]},
        "platform_spec": {"steps": steps},
        **extra,
    }


def _bodies() -> list[dict[str, Any]]:
    return [
        _body(
            "done",
            [
                shell(
                    "one",
                    'echo out; echo err >&2; echo "{}" > /dev/null',
                    environment=[{"name": "A", "value": "1"}],
                    config={"k": "v", "nothing": None},
                    lifecycle={"staleness_timeout_seconds": 30},
                ),
                step("two", "true", environment=[]),  # an explicit empty list comes back as []
            ],
            project="p",
            description="d",
            ownership={"team": "t"},
            custom_fields={"c": None},
        ),
        _body(
            "failed",
            [
                shell(
                    "boom",
                    "echo bad >&2; exit 3",
                    environment=[{"name": "KEY", "from_secret": {"name": "key"}}],
                )
            ],
        ),
        {
            **_body("cancelled", [shell("hold", "sleep 30")]),
            "platform_spec": {
                "steps": [shell("hold", "sleep 30")],
                "secrets": [{"name": "inline", "value": "never-shown"}, {"name": "ref", "ref_id": "r-1"}],
            },
        },
    ]


async def _run(api: Api) -> list[dict[str, Any]]:
    """Three real runs (completed, failed, cancelled), a result and a secret; the request bodies."""
    status, _ = await api.request("POST", api.base_url + SECRETS, json={"name": "key", "value": "v4lue-1"})
    assert status == 201
    status, _ = await api.request(
        "POST", api.base_url + SECRETS, json={"name": "described", "value": "x" * 8, "description": "d"}
    )
    assert status == 201
    bodies = _bodies()
    for body in bodies:
        status, created = await api.request("POST", "/jobs", json=body)
        assert status == 201, created
    await api.wait_job("cancelled", {"active"})
    assert (await api.request("POST", "/jobs/cancelled/cancel"))[0] == 200
    outcomes = {name: (await api.wait_job(name))["status"] for name in ("done", "failed", "cancelled")}
    assert outcomes == {"done": "completed", "failed": "error", "cancelled": "cancelled"}
    done = await api.wait_job("done")
    result = {"artifact_url": f"default/{done['fileset']}#out", "artifact_storage_type": "fileset"}
    assert (await api.request("POST", "/jobs/done/results/model", json=result))[0] == 201
    return bodies


async def _get(api: Api, path: str) -> Any:
    status, body = await api.request("GET", path)
    assert status == 200, (path, body)
    return body


@pytest.fixture
async def reference() -> Any:
    judge = Reference()
    yield judge
    await judge.close()


async def test_every_answer_after_real_runs_is_the_references(api: Api, reference: Reference) -> None:
    await _run(api)
    checks: list[tuple[str, str]] = [
        ("jobs", "/jobs"),
        ("jobs", "/jobs?page_size=1&page=2&sort=created_at"),
        ("jobs", "/jobs?filter%5Bstatus%5D=error%2Ccancelled"),
        ("jobs", '/jobs?filter=status:"completed" AND name~"do"'),
        ("steps", "/jobs/-/steps"),
        ("steps", "/jobs/-/steps?filter%5Bstatus%5D=error"),
        ("secrets", SECRETS),
        ("secret", SECRETS + "/described"),
        ("secret", SECRETS + "/key"),
        ("access", SECRETS + "/key/access"),
    ]
    for job, steps in (("done", ("one", "two")), ("failed", ("boom",)), ("cancelled", ("hold",))):
        checks += [
            ("job", f"/jobs/{job}"),
            ("status", f"/jobs/{job}/status"),
            ("logs", f"/jobs/{job}/logs"),
            ("logs", f"/jobs/{job}/logs?tail=1"),
            ("logs", f"/jobs/{job}/logs?limit=1"),
            ("steps", f"/jobs/{job}/steps"),
            ("results", f"/jobs/{job}/results"),
        ]
        for name in steps:
            tasks = await _get(api, f"/jobs/{job}/steps/{name}/tasks")
            checks += [("step", f"/jobs/{job}/steps/{name}"), ("tasks", f"/jobs/{job}/steps/{name}/tasks")]
            checks += [("task", f"/jobs/{job}/steps/{name}/tasks/{t['name']}") for t in tasks["data"]]
    checks.append(("result", "/jobs/done/results/model"))
    found: list[str] = []
    for kind, path in checks:
        answer = await _get(api, path if path.startswith("/jobs") else api.base_url + path)
        found += [f"{path}: {d}" for d in await reference.differences(kind, answer)]
    assert found == [], "\n".join(found)


async def test_writes_answer_as_the_reference(api: Api, reference: Reference) -> None:
    created = await api.create_job([shell("hold", "sleep 30")], name="writes")
    assert await reference.differences("job", created) == []
    await api.wait_job("writes", {"active"})
    for kind, method, path, body, then in (
        ("job", "POST", "/jobs/writes/pause", None, {"paused"}),
        ("job", "POST", "/jobs/writes/resume", None, {"active"}),
        (
            "task",
            "PUT",
            "/jobs/writes/steps/hold/tasks/extra",
            {"status": "active", "status_details": {"p": 1}},
            None,
        ),
        ("step", "PATCH", "/jobs/writes/steps/hold/status", {"status": "active"}, None),
        ("job", "POST", "/jobs/writes/cancel", None, {"cancelled"}),
    ):
        status, answer = await api.request(method, path, json=body)
        assert status == 200, (path, answer)
        assert await reference.differences(kind, answer) == [], path
        if then:
            await api.wait_job("writes", then)


def _reference_spec(body: dict[str, Any], drop_none: bool) -> dict[str, Any]:
    """The reference's normalised platform_spec of a request (an inline secret's value not shown)."""
    spec = CreatePlatformJobRequest.model_validate(body).platform_spec
    for secret in spec.secrets or []:
        secret.value = None
    dumped: dict[str, Any] = spec.model_dump(mode="json", exclude_none=drop_none)
    return dumped


async def _assert_specs_match(api: Api, body: dict[str, Any]) -> None:
    name = body["name"]
    single = (await _get(api, f"/jobs/{name}"))["platform_spec"]
    assert diff(single, _reference_spec(body, drop_none=False)) == [], name
    (listed,) = (await _get(api, f"/jobs?filter%5Bname%5D={name}"))["data"]
    assert diff(listed["platform_spec"], _reference_spec(body, drop_none=True)) == [], name
    for item in (await _get(api, f"/jobs/{name}/steps"))["data"]:
        index = [s["name"] for s in body["platform_spec"]["steps"]].index(item["name"])
        assert diff(item["step_spec"], _reference_spec(body, drop_none=True)["steps"][index]) == [], name


async def test_platform_spec_is_the_references_normalisation_of_the_request(api: Api) -> None:
    bodies = await _run(api)
    for body in bodies:
        await _assert_specs_match(api, body)
    # Without variables: the reference's default, null (not an empty list); an explicit [] stays.
    assert (await _get(api, "/jobs/cancelled"))["platform_spec"]["steps"][0]["environment"] is None
    assert (await _get(api, "/jobs/done"))["platform_spec"]["steps"][1]["environment"] == []


async def test_a_result_carries_no_project_as_the_references(api: Api) -> None:
    await _run(api)
    assert (await _get(api, "/jobs/done"))["project"] == "p"
    # The reference's result response leaves `project` unset, whatever the job's.
    assert (await _get(api, "/jobs/done/results/model"))["project"] is None
    assert (await _get(api, "/jobs/done/results"))["data"][0].get("project") is None


async def test_container_steps_match_the_reference(api: Api) -> None:
    require_docker()
    body = _body(
        "in-docker",
        [
            {
                "name": "box",
                "executor": {
                    "provider": "cpu",
                    "container": {"image": TEST_IMAGE, "command": ["true"]},
                    "resources": {"limits": {"cpu": "500m"}},
                },
            }
        ],
    )
    status, created = await api.request("POST", "/jobs", json=body)
    assert status == 201, created
    assert (await api.wait_job("in-docker", timeout_s=60))["status"] == "completed"
    await _assert_specs_match(api, body)
    single = (await _get(api, "/jobs/in-docker"))["platform_spec"]["steps"][0]["executor"]
    assert single["resources"]["requests"] == {"cpu": None, "memory": None}
    assert single["resources"]["num_gpus"] is None and single["resources"]["shm_size"] is None
    listed = (await _get(api, "/jobs/in-docker/steps"))["data"][0]["step_spec"]["executor"]
    assert listed["resources"] == {"requests": {}, "limits": {"cpu": "500m"}, "num_nodes": 1}


EXECUTORS: list[dict[str, Any]] = [
    {"provider": "subprocess", "command": ["true"]},
    {"provider": "subprocess", "profile": "other", "command": ["a", "b"]},
    {"provider": "cpu", "container": {"image": "busybox"}},
    {"provider": "cpu", "container": {}, "resources": {}},
    {"provider": "cpu", "container": {"image": "i", "entrypoint": ["sh"], "command": ["-c", "x"]}},
    {
        "provider": "cpu",
        "container": {"image": "i"},
        "resources": {"requests": {}, "limits": {"memory": "1Gi"}},
    },
    {
        "provider": "gpu",
        "profile": "p",
        "container": {"image": "i"},
        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}, "num_gpus": 2, "shm_size": "4Gi"},
    },
    {
        "provider": "gpu_distributed",
        "container": {"image": "i"},
        "resources": {"num_nodes": 3, "num_gpus": 0},
    },
]


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("drop_none", [False, True])
def test_every_executor_shape_serializes_as_the_reference(executor: dict[str, Any], drop_none: bool) -> None:
    steps = [
        {"name": "only", "executor": executor},
        {
            "name": "env",
            "executor": executor,
            "environment": [{"name": "A", "value": ""}],
            "config": {"n": None},
        },
        {
            "name": "secret",
            "executor": executor,
            "environment": [{"name": "B", "from_secret": {"name": "s"}}],
        },
    ]
    for secrets in (None, [], [{"name": "x"}, {"name": "y", "value": "v", "ref_id": "r"}]):
        body = _body(
            "shape",
            steps,
            **({"platform_spec": {"steps": steps, "secrets": secrets}} if secrets is not None else {}),
        )
        ours = serialize.platform_spec(PlatformJobSpec.model_validate(body["platform_spec"]), drop_none)
        assert diff(ours, _reference_spec(body, drop_none)) == []


# --------------------------------------------------------------------------------- retries


async def test_answers_that_cannot_change_tell_the_sdk_not_to_retry(api: Api) -> None:
    await api.create_job([step("only", "true")], name="once")
    await api.wait_job("once")
    async with api.session.post(f"{api.ws}/jobs", json=_body("once", [step("only", "true")])) as resp:
        assert resp.status == 409 and resp.headers["x-should-retry"] == "false"
    for path in ("/jobs/nobody", "/jobs/once/steps/nothing"):
        async with api.session.get(api.ws + path) as resp:
            assert resp.status == 404 and resp.headers["x-should-retry"] == "false"
    async with api.session.get(api.ws + "/jobs?page=0") as resp:
        assert resp.status == 422 and resp.headers["x-should-retry"] == "false"
    async with api.session.get(api.ws + "/jobs/once") as resp:
        assert resp.status == 200 and "x-should-retry" not in resp.headers
    async with api.session.get(api.base_url + "/no/such/route") as resp:
        assert resp.status == 404 and resp.headers["x-should-retry"] == "false"


async def test_sdk_raises_a_conflict_at_once(server: Server) -> None:
    nemo_platform = pytest.importorskip("nemo_platform")
    # The SDK's default: 2 retries (~0.5 s then ~1 s) for a 409 that does not say otherwise.
    client = nemo_platform.NeMoPlatform(
        base_url=server.base_url, workspace="default", access_token=TEST_TOKEN, timeout=30
    )
    try:
        create = {"source": "sdk", "spec": {}, "platform_spec": {"steps": [step("only", "true")]}}
        await asyncio.to_thread(client.jobs.create, name="dup", **create)
        started = time.monotonic()
        with pytest.raises(nemo_platform.ConflictError):
            await asyncio.to_thread(client.jobs.create, name="dup", **create)
        assert time.monotonic() - started < 0.4
    finally:
        await asyncio.to_thread(client.close)
