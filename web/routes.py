"""Thin handlers: parse and validate, one call into the runner, serialize."""

from __future__ import annotations

from contextlib import aclosing
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from runner.models import CreateJobRequest, StatusUpdate, TaskUpdate, check_name, check_workspace
from runner.service import JobService
from web import serialize, strict_json
from web.errors import InvalidRequest, validation_detail
from web.query import JobsQuery, StepsQuery, parse_jobs_filter, parse_paging, parse_steps_filter

SERVICE = web.AppKey("service", JobService)
V2 = "/apis/jobs/v2"
W = V2 + "/workspaces/{workspace}"

routes = web.RouteTableDef()


def _service(request: web.Request) -> JobService:
    return request.app[SERVICE]


def workspace_of(request: web.Request, allow_all: bool = False) -> str:
    workspace = request.match_info["workspace"]
    if workspace == "-":
        if allow_all:
            return workspace
        raise InvalidRequest.single(
            ["path", "workspace"],
            "'-' means every workspace and is only valid for listing steps",
            "value_error",
            workspace,
        )
    try:
        return check_workspace(workspace)
    except ValueError as exc:
        raise InvalidRequest.single(
            ["path", "workspace"], str(exc), "string_pattern_mismatch", workspace
        ) from None


def name_of(request: web.Request, key: str = "name") -> str:
    """A path parameter that names something about to be created (a task, a result)."""
    value = request.match_info[key]
    try:
        return check_name(value)
    except ValueError as exc:
        raise InvalidRequest.single(["path", key], str(exc), "string_pattern_mismatch", value) from None


async def _read_body(request: web.Request) -> bytearray:
    """The body, at most `client_max_size` (max_body_bytes) bytes, else 413 — as
    `request.read()` would, without its two extra costs: a second copy of the body (it copies its
    buffer into a bytes object) and holding that copy until the response is sent. The caller
    parses this buffer and drops it, so a request in flight keeps only what was parsed."""
    limit = request.client_max_size
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if limit and len(body) > limit:
            # Told as the 413's reason, which the error middleware makes the `detail`.
            reason = f"Request body larger than {limit} bytes (the daemon's max_body_bytes)"
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body), reason=reason)
    return body


async def _json_body(request: web.Request) -> Any:
    raw = await _read_body(request)
    if not raw:
        return None
    try:
        return strict_json.loads(raw)
    except strict_json.Refused as exc:
        raise InvalidRequest([exc.detail(["body"])]) from None
    except ValueError as exc:  # malformed JSON, not UTF-8, an integer beyond the digits limit
        raise InvalidRequest(
            [
                {
                    "type": "json_invalid",
                    "loc": ["body"],
                    "msg": "JSON decode error",
                    "input": {},
                    "ctx": {"error": str(exc)},
                }
            ]
        ) from None


async def body_of[M: BaseModel](request: web.Request, model: type[M]) -> M:
    data = await _json_body(request)
    if data is None:
        raise InvalidRequest.single(["body"], "Field required", "missing", None)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["body"])) from None


def _json(data: Any, status: int = 200) -> web.Response:
    return strict_json.response(data, status)


# --------------------------------------------------------------------------------- daemon


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    # Open without a token: it tells readiness and why not, in words that name nothing of the jobs.
    problem = await _service(request).store_problem()
    if problem is None:
        return _json({"status": "ok"})
    return _json({"status": "degraded", "reason": f"the store cannot write: {problem}"}, status=503)


@routes.get(V2 + "/execution-profiles")
async def execution_profiles(request: web.Request) -> web.Response:
    service = _service(request)
    # A localjobs extension on each item: the machine's capacity and what is in use (all profiles
    # share the one machine). The reference's models and the SDK ignore keys they do not know.
    capacity = serialize.capacity_body(*await service.capacity.resources())
    return _json([{**profile, "capacity": capacity} for profile in await service.profiles()])


# --------------------------------------------------------------------------------- jobs


@routes.post(W + "/jobs")
async def create_job(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    body = await body_of(request, CreateJobRequest)
    return _json(serialize.job(await _service(request).create_job(workspace, body)), status=201)


@routes.get(W + "/jobs")
async def list_jobs(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    paging = parse_paging(JobsQuery, request.query)
    flt, echo = parse_jobs_filter(request.query, workspace)
    page = await _service(request).list_jobs(flt, paging.sort, paging.page, paging.page_size)
    # As the reference's List Jobs (response_model_exclude_none): no null field at any depth.
    items = [serialize.job(j, drop_none=True) for j in page.items]
    return _json(
        serialize.page_envelope(items, paging.page, paging.page_size, page.total, paging.sort.value, echo)
    )


@routes.get(W + "/jobs/{name}")
async def get_job(request: web.Request) -> web.Response:
    job = await _service(request).get_job(workspace_of(request), request.match_info["name"])
    return _json(serialize.job(job))


@routes.delete(W + "/jobs/{name}")
async def delete_job(request: web.Request) -> web.Response:
    await _service(request).delete_job(workspace_of(request), request.match_info["name"])
    return web.Response(status=204)


@routes.post(W + "/jobs/{name}/cancel")
async def cancel_job(request: web.Request) -> web.Response:
    job = await _service(request).cancel_job(workspace_of(request), request.match_info["name"])
    return _json(serialize.job(job))


@routes.post(W + "/jobs/{name}/pause")
async def pause_job(request: web.Request) -> web.Response:
    job = await _service(request).pause_job(workspace_of(request), request.match_info["name"])
    return _json(serialize.job(job))


@routes.post(W + "/jobs/{name}/resume")
async def resume_job(request: web.Request) -> web.Response:
    job = await _service(request).resume_job(workspace_of(request), request.match_info["name"])
    return _json(serialize.job(job))


@routes.get(W + "/jobs/{name}/status")
async def job_status(request: web.Request) -> web.Response:
    tree = await _service(request).status_tree(workspace_of(request), request.match_info["name"])
    return _json(serialize.status_tree(tree))


@routes.patch(W + "/jobs/{name}/status-details")
async def patch_status_details(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    body = await _json_body(request)
    if not isinstance(body, dict):
        raise InvalidRequest.single(["body"], "Input should be a valid dictionary", "dict_type", body)
    await _service(request).merge_job_status_details(workspace, request.match_info["name"], body)
    return _json(None)


class _LogsQuery(BaseModel):
    follow: bool = False
    limit: int | None = Field(default=None, gt=0, le=10_000)
    page_cursor: str | None = None
    tail: int | None = Field(default=None, gt=0, le=10_000)
    attempt_id: str | None = None
    step_id: str | None = None
    task_id: str | None = None


@routes.get(W + "/jobs/{name}/logs")
async def job_logs(request: web.Request) -> web.StreamResponse:
    workspace = workspace_of(request)
    q = parse_paging(_LogsQuery, request.query)
    if q.follow:
        return await _follow_logs(request, workspace, q)
    page = await _service(request).logs.page(
        workspace,
        request.match_info["name"],
        limit=q.limit,
        page_cursor=q.page_cursor,
        tail=q.tail,
        attempt=q.attempt_id,
        step_name=q.step_id,
        task_name=q.task_id,
    )
    return _json(serialize.log_page(page))


# --------------------------------------------------------------------------------- steps


@routes.get(W + "/jobs/{name}/steps")
async def list_steps(request: web.Request) -> web.Response:
    workspace = workspace_of(request, allow_all=True)
    paging = parse_paging(StepsQuery, request.query)
    flt, echo = parse_steps_filter(request.query, workspace, request.match_info["name"])
    page = await _service(request).list_steps(flt, paging.sort, paging.page, paging.page_size)
    items = [serialize.step_with_context(s) for s in page.items]
    return _json(
        serialize.page_envelope(items, paging.page, paging.page_size, page.total, paging.sort.value, echo)
    )


@routes.get(W + "/jobs/{job}/steps/{name}")
async def get_step(request: web.Request) -> web.Response:
    m = request.match_info
    step = await _service(request).get_step(workspace_of(request), m["job"], m["name"])
    return _json(serialize.step(step))


@routes.patch(W + "/jobs/{job}/steps/{name}/status")
async def update_step_status(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    body = await body_of(request, StatusUpdate)
    m = request.match_info
    step = await _service(request).update_step_status(
        workspace, m["job"], m["name"], body.status, body.status_details, body.error_details
    )
    return _json(serialize.step(step))


@routes.get(W + "/jobs/{job}/steps/{name}/tasks")
async def list_tasks(request: web.Request) -> web.Response:
    m = request.match_info
    tasks = await _service(request).tasks.list(workspace_of(request), m["job"], m["name"])
    return _json({"data": [serialize.task(t) for t in tasks]})


@routes.put(W + "/jobs/{job}/steps/{step}/tasks/{name}")
async def put_task(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    task_name = name_of(request)  # a PUT may create the task: its name is checked as any other
    data = await _json_body(request)
    try:
        update = TaskUpdate.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["body"])) from None
    m = request.match_info
    task = await _service(request).tasks.put(workspace, m["job"], m["step"], task_name, update)
    return _json(serialize.task(task))


@routes.get(W + "/jobs/{job}/steps/{step}/tasks/{name}")
async def get_task(request: web.Request) -> web.Response:
    m = request.match_info
    task = await _service(request).tasks.get(workspace_of(request), m["job"], m["step"], m["name"])
    return _json(serialize.task(task))


async def _follow_logs(request: web.Request, workspace: str, q: _LogsQuery) -> web.StreamResponse:
    """`?follow=true`: NDJSON, one line per log line with the cursor to resume after it."""
    lines = await _service(request).logs.follow(
        workspace,
        request.match_info["name"],
        page_cursor=q.page_cursor,
        attempt=q.attempt_id,
        step_name=q.step_id,
        task_name=q.task_id,
        tail=q.tail,
    )
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async with aclosing(lines):
        try:
            async for line, cursor in lines:
                item = {**serialize.log_line(line), "cursor": cursor}
                await response.write(strict_json.dumps(item) + b"\n")
            # In the try too: a follower (a closed dashboard tab) may leave after the last line.
            await response.write_eof()
        except ConnectionResetError:
            return response  # the follower went away; it resumes with its last cursor
    return response
