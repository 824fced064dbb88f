"""Thin handlers: parse and validate, one call into the runner, serialize."""

from __future__ import annotations

import json
from contextlib import aclosing
from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from runner.models import WORKSPACE_PATTERN, CreateJobRequest, StatusUpdate, TaskUpdate
from runner.service import JobService
from web import serialize
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
    if not WORKSPACE_PATTERN.match(workspace):
        raise InvalidRequest.single(
            ["path", "workspace"],
            "workspace may contain only letters, digits and _ - + . @ :",
            "string_pattern_mismatch",
            workspace,
        )
    return workspace


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        return json.loads(raw) if raw else None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
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
    return web.json_response(data, status=status)


# --------------------------------------------------------------------------------- daemon


@routes.get("/health")
async def health(request: web.Request) -> web.Response:
    return _json({"status": "ok"})


@routes.get(V2 + "/execution-profiles")
async def execution_profiles(request: web.Request) -> web.Response:
    return _json(await _service(request).profiles())


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
    items = [_strip_nones(serialize.job(j)) for j in page.items]
    return _json(
        serialize.page_envelope(items, paging.page, paging.page_size, page.total, paging.sort.value, echo)
    )


def _strip_nones(item: dict[str, Any]) -> dict[str, Any]:
    # The reference's list routes use response_model_exclude_none.
    return {k: v for k, v in item.items() if v is not None}


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
    page = await _service(request).page_logs(
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
    tasks = await _service(request).list_tasks(workspace_of(request), m["job"], m["name"])
    return _json({"data": [serialize.task(t) for t in tasks]})


@routes.put(W + "/jobs/{job}/steps/{step}/tasks/{name}")
async def put_task(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    data = await _json_body(request)
    try:
        update = TaskUpdate.model_validate(data if data is not None else {})
    except ValidationError as exc:
        raise InvalidRequest(validation_detail(exc, ["body"])) from None
    m = request.match_info
    task = await _service(request).put_task(workspace, m["job"], m["step"], m["name"], update)
    return _json(serialize.task(task))


@routes.get(W + "/jobs/{job}/steps/{step}/tasks/{name}")
async def get_task(request: web.Request) -> web.Response:
    m = request.match_info
    task = await _service(request).get_task(workspace_of(request), m["job"], m["step"], m["name"])
    return _json(serialize.task(task))


async def _follow_logs(request: web.Request, workspace: str, q: _LogsQuery) -> web.StreamResponse:
    """`?follow=true`: NDJSON, one line per log line with the cursor to resume after it."""
    lines = await _service(request).follow_logs(
        workspace,
        request.match_info["name"],
        page_cursor=q.page_cursor,
        attempt=q.attempt_id,
        step_name=q.step_id,
        task_name=q.task_id,
    )
    response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
    await response.prepare(request)
    async with aclosing(lines):
        try:
            async for line, cursor in lines:
                await response.write(
                    json.dumps({**serialize.log_line(line), "cursor": cursor}).encode() + b"\n"
                )
        except ConnectionResetError:
            return response  # the follower went away; it resumes with its last cursor
    await response.write_eof()
    return response
