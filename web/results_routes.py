"""Results: create, list, get and download (a file as is, a folder as a streamed .tar.gz)."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, field_validator

from runner.models import JobRecord, ResultRecord, StepSort
from runner.results import tar_gz_stream
from web.query import parse_paging
from web.routes import SERVICE, W, body_of, name_of, workspace_of
from web.serialize import timestamp
from web.strict_json import response

routes = web.RouteTableDef()


class _CreateResult(BaseModel):
    artifact_url: str
    artifact_storage_type: Literal["fileset"]

    @field_validator("artifact_url")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        # It names a file: the OS takes paths as C strings (a NUL made resolve() raise, a 500).
        if "\x00" in value:
            raise ValueError("artifact_url may not contain a NUL character")
        return value


class _ResultsQuery(BaseModel):
    sort: StepSort = StepSort.CREATED_AT_DESC


def _result(job: JobRecord, result: ResultRecord) -> dict[str, Any]:
    return {
        "name": result.name,
        # As the reference: the job's entity id, not its name.
        "job": job.id,
        "workspace": job.workspace,
        "project": None,  # the reference's result response never sets it
        "created_at": timestamp(result.created_at),
        "updated_at": timestamp(result.updated_at),
        "artifact_url": result.artifact_url,
        "artifact_storage_type": result.artifact_storage_type,
        "download_url": None,
    }


@routes.post(W + "/jobs/{job}/results/{name}")
async def create_result(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    name = name_of(request)
    body = await body_of(request, _CreateResult)
    job, result = await request.app[SERVICE].create_result(
        workspace, request.match_info["job"], name, body.artifact_url, body.artifact_storage_type
    )
    return response(_result(job, result), status=201)


@routes.get(W + "/jobs/{name}/results")
async def list_results(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    query = parse_paging(_ResultsQuery, request.query)
    job, results = await request.app[SERVICE].list_results(workspace, request.match_info["name"], query.sort)
    return response({"data": [_result(job, r) for r in results]})


@routes.get(W + "/jobs/{job}/results/{name}")
async def get_result(request: web.Request) -> web.Response:
    m = request.match_info
    job, result = await request.app[SERVICE].get_result(workspace_of(request), m["job"], m["name"])
    return response(_result(job, result))


@routes.get(W + "/jobs/{job}/results/{name}/download")
async def download_result(request: web.Request) -> web.StreamResponse:
    m = request.match_info
    result, artifact = await request.app[SERVICE].result_artifact(workspace_of(request), m["job"], m["name"])
    if not artifact.is_dir:
        return web.FileResponse(
            artifact.path,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Disposition": f'attachment; filename="{result.name}"',
            },
        )
    response = web.StreamResponse(
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{result.name}.tar.gz"',
        }
    )
    await response.prepare(request)
    # As the reference: the archive holds the artifact folder itself, under its own name.
    async for chunk in tar_gz_stream(artifact.path, artifact.arcname):
        await response.write(chunk)
    await response.write_eof()
    return response
