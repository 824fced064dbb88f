"""The Secrets API (secrets-openapi.yaml): values go out only through `access`."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, Field, field_validator

from runner.models import SecretRecord, check_name
from web.query import MAX_PAGE_SIZE, Paging, parse_paging
from web.routes import SERVICE, body_of, workspace_of
from web.serialize import page_envelope, timestamp
from web.strict_json import response

S = "/apis/secrets/v2/workspaces/{workspace}/secrets"
routes = web.RouteTableDef()


def _env_value(value: str) -> str:
    # A value becomes an environment variable of the steps that use it: a C string, where a NUL
    # would cut it short (or fail the start of every such step).
    if "\x00" in value:
        raise ValueError("a secret value may not contain a NUL character")
    return value


class _CreateSecret(BaseModel):
    name: str = Field(max_length=63)
    value: str
    description: str | None = None

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("value")
    @classmethod
    def _valid_value(cls, value: str) -> str:
        return _env_value(value)


class _UpdateSecret(BaseModel):
    value: str | None = None
    description: str | None = None

    @field_validator("value")
    @classmethod
    def _valid_value(cls, value: str | None) -> str | None:
        return None if value is None else _env_value(value)


class _SecretsQuery(Paging):
    page_size: int = Field(default=10, gt=0, le=MAX_PAGE_SIZE)


def _secret(secret: SecretRecord) -> dict[str, Any]:
    return {
        "name": secret.name,
        "workspace": secret.workspace,
        "description": secret.description,
        "created_at": timestamp(secret.created_at),
        "updated_at": timestamp(secret.updated_at),
    }


@routes.post(S)
async def create_secret(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    body = await body_of(request, _CreateSecret)
    secret = await request.app[SERVICE].secrets.create(workspace, body.name, body.value, body.description)
    return response(_secret(secret), status=201)


@routes.get(S)
async def list_secrets(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    q = parse_paging(_SecretsQuery, request.query)
    page = await request.app[SERVICE].secrets.list_page(workspace, q.page, q.page_size)
    items = [_secret(s) for s in page.items]
    # As the reference's List Secrets: no sort, no filter (so neither key is sent).
    return response(page_envelope(items, q.page, q.page_size, page.total, None, None))


@routes.get(S + "/{name}")
async def get_secret(request: web.Request) -> web.Response:
    secret = await request.app[SERVICE].secrets.get(workspace_of(request), request.match_info["name"])
    return response(_secret(secret))


@routes.patch(S + "/{name}")
async def update_secret(request: web.Request) -> web.Response:
    workspace = workspace_of(request)
    body = await body_of(request, _UpdateSecret)
    secret = await request.app[SERVICE].secrets.update(
        workspace, request.match_info["name"], body.value, body.description
    )
    return response(_secret(secret))


@routes.delete(S + "/{name}")
async def delete_secret(request: web.Request) -> web.Response:
    await request.app[SERVICE].secrets.delete(workspace_of(request), request.match_info["name"])
    return web.Response(status=204)


@routes.get(S + "/{name}/access")
async def access_secret(request: web.Request) -> web.Response:
    secret = await request.app[SERVICE].secrets.get(workspace_of(request), request.match_info["name"])
    return response({"name": secret.name, "workspace": secret.workspace, "value": secret.value})


@routes.post("/apis/secrets/v2/rotate-encryption-keys")
async def rotate_encryption_keys(request: web.Request) -> web.Response:
    # The reference's admin routine; the owner's token is the only identity, so the owner may.
    rotated = await request.app[SERVICE].secrets.rotate_keys()
    return response({"rotated_secrets": rotated, "success": True}, status=202)
