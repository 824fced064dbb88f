"""What the daemon says about itself: its API contract (`/openapi.json`) and health probes.

`/openapi.json` is the contract localjobs implements: the reference's own OpenAPI documents (Jobs
v2 and Secrets v2, shipped unchanged in `web/openapi_reference.py`), the fields the reference's
published document leaves without their `null` given it back (nullability is stripped there; the
daemon does send them), the operations localjobs does not serve taken out (the admin key
rotation), and localjobs' additions laid over them (web/contract_extras.py).

`/health/live` and `/health/ready` answer as the reference's platform does: `{"status": "live"}`,
`{"status": "ready"}`, or 503 `{"detail": {"status": "not_ready"}}` when the store cannot write.
All three stay open without a token (web/security.py OPEN_PATHS).
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import metadata
from typing import Any

from aiohttp import web

from web import contract_extras, strict_json
from web.contract_extras import OPENAPI_PATH
from web.routes import SERVICE

routes = web.RouteTableDef()


@routes.get(OPENAPI_PATH)
async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=_contract_bytes(), content_type="application/json")


@routes.get("/health/live")
async def health_live(request: web.Request) -> web.Response:
    return strict_json.response({"status": "live"})


@routes.get("/health/ready")
async def health_ready(request: web.Request) -> web.Response:
    if await request.app[SERVICE].store_problem() is None:
        return strict_json.response({"status": "ready"})
    return strict_json.response({"detail": {"status": "not_ready"}}, status=503)


@cache
def _contract_bytes() -> bytes:
    return json.dumps(contract(), separators=(",", ":")).encode()


def contract() -> dict[str, Any]:
    """The OpenAPI 3.1 document of what this daemon serves (a fresh copy)."""
    from web import openapi_reference  # 120 KB of text: loaded once asked for, not at start

    jobs = json.loads(openapi_reference.JOBS)
    secrets = json.loads(openapi_reference.SECRETS)
    doc: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "localjobs: NeMo Platform Jobs API v2 and Secrets API v2",
            "description": (
                "The contract of a localjobs daemon: the NeMo Platform (nemo-platform 0.6.0) Jobs v2 "
                "and Secrets v2 operations as the reference documents them, with localjobs' additions "
                "(bearer-token security, `follow=true` NDJSON logs, log line `stream`, page "
                "`dropped_lines`, the SDK's auth discovery and token exchange, health probes) and "
                "the `null` of every field the daemon may send as null."
            ),
            "version": _version(),
        },
        "paths": {},
        "components": {"schemas": {}},
    }
    for reference in (jobs, secrets):
        for path, item in reference["paths"].items():
            doc["paths"][path] = item
        for name, schema in reference["components"]["schemas"].items():
            doc["components"]["schemas"].setdefault(name, schema)
    _drop_unused_schemas(doc)
    for name, fields in openapi_reference.NULLABLE.items():
        properties = doc["components"]["schemas"].get(name, {}).get("properties", {})
        for field in fields:
            if field in properties:
                properties[field] = _nullable(properties[field])
    contract_extras.apply_additions(doc)
    return copy.deepcopy(doc)


def _version() -> str:
    try:
        return metadata.version("localjobs")
    except metadata.PackageNotFoundError:  # a checkout that was never installed
        return "0.0.0"


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or null (OpenAPI 3.1: a JSON Schema type list, or an anyOf with null)."""
    schema = {k: v for k, v in schema.items() if k != "nullable"}
    kind = schema.get("type")
    if isinstance(kind, str) and not ({"$ref", "allOf", "anyOf", "oneOf", "enum", "const"} & set(schema)):
        return {**schema, "type": [kind, "null"]}
    if "anyOf" in schema:
        if {"type": "null"} in schema["anyOf"]:
            return schema
        return {**schema, "anyOf": [*schema["anyOf"], {"type": "null"}]}
    annotations: dict[str, Any] = {
        k: schema.pop(k) for k in ("title", "description", "default", "readOnly") if k in schema
    }
    return {**annotations, "anyOf": [schema, {"type": "null"}]}


def _drop_unused_schemas(doc: dict[str, Any]) -> None:
    """Keep the component schemas the served operations reach (the key rotation's go)."""
    schemas = doc["components"]["schemas"]
    reached: set[str] = set()
    pending = [doc["paths"]]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/components/schemas/"):
                name = ref.rsplit("/", 1)[1]
                if name not in reached:
                    reached.add(name)
                    pending.append(schemas[name])
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    doc["components"]["schemas"] = {name: s for name, s in schemas.items() if name in reached}
