"""localjobs' additions to the reference's OpenAPI documents, laid over them in code (web/meta_routes.py
builds the document): the bearer-token security scheme, `follow=true` NDJSON logs (and `tail` with
it), the `stream` of a log line and a page's `dropped_lines`, the null answer of PATCH
status-details, and the operations the reference does not have: the health probes, this document,
/capacity and /gpus, and the auth discovery and token exchange the SDK uses inside a workload.
"""

from __future__ import annotations

from typing import Any

OPENAPI_PATH = "/openapi.json"
# Open without a token: every other operation takes the bearer token.
_OPEN = ("/health", "/health/live", "/health/ready", OPENAPI_PATH, "/apis/auth/discovery", "/apis/auth/token")
_METHODS = ("get", "put", "post", "delete", "patch")


def apply_additions(doc: dict[str, Any]) -> None:
    """Lay every addition over `doc`, the reference's documents merged (changed in place)."""
    _logs(doc)
    _status_details(doc)
    _extra_paths(doc)
    _security(doc)


_LOGS = "/apis/jobs/v2/workspaces/{workspace}/jobs/{name}/logs"


def _logs(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    schemas["PlatformJobLog"]["properties"]["stream"] = {
        "type": "string",
        "enum": ["stdout", "stderr"],
        "title": "Stream",
        "description": "localjobs: the stream the line was printed on (stderr lines also keep the "
        "reference's `[stderr] ` prefix in `message`).",
    }
    schemas["PlatformJobLogPage"]["properties"]["dropped_lines"] = {
        "type": "integer",
        "title": "Dropped Lines",
        "description": "localjobs: lines of this scope dropped by the per-task log size limit.",
    }
    schemas["LocaljobsFollowedLogLine"] = {
        "title": "LocaljobsFollowedLogLine",
        "description": "localjobs: one line of `follow=true` output (one JSON object per line). "
        "Reconnect with `page_cursor=<cursor>&follow=true` to resume after it.",
        "type": "object",
        "properties": {
            **schemas["PlatformJobLog"]["properties"],
            "cursor": {"type": "string", "title": "Cursor"},
        },
        "required": [*schemas["PlatformJobLog"]["required"], "stream", "cursor"],
    }
    operation = doc["paths"][_LOGS]["get"]
    operation["description"] = (
        "Get paginated logs for a platform job. localjobs: with `follow=true` the answer is "
        "`application/x-ndjson`, one line per log line as it is printed, ending once the job has "
        "finished and every line was sent."
    )
    parameters = operation["parameters"]
    for parameter in parameters:
        if parameter["name"] == "tail":
            parameter["description"] = parameter["schema"]["description"] = (
                "Number of newest log lines to return (with `follow=true`: the lines to start from)"
            )
        if parameter["name"] == "attempt_id":
            # Attempt ids are strings; localjobs takes the attempt's sequence number or its id.
            parameter["description"] = parameter["schema"]["description"] = (
                "Filter logs by job attempt: its sequence number (0) or its id"
            )
            parameter["schema"] = {**parameter["schema"], "type": "string"}
    parameters.append(
        {
            "name": "follow",
            "in": "query",
            "required": False,
            "schema": {"type": "boolean", "default": False, "title": "Follow"},
            "description": "localjobs: stream the lines (NDJSON) until the job has finished",
        }
    )
    operation["responses"]["200"]["content"]["application/x-ndjson"] = {
        "schema": {"$ref": "#/components/schemas/LocaljobsFollowedLogLine"}
    }


def _status_details(doc: dict[str, Any]) -> None:
    # Documented as any value; the reference (and localjobs) answers JSON null.
    patch = doc["paths"]["/apis/jobs/v2/workspaces/{workspace}/jobs/{name}/status-details"]["patch"]
    patch["responses"]["200"]["content"]["application/json"]["schema"] = {"type": "null"}


def _json(schema: dict[str, Any], description: str = "Successful Response") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _object(required: list[str], **properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required}


_STRING = {"type": "string"}
_STEP_REF = {
    "type": "object",
    "required": ["workspace", "job", "step"],
    "properties": {"workspace": _STRING, "job": _STRING, "step": _STRING},
}
# One kind of resource in /capacity: the machine's total, what running steps hold, what is free.
_AMOUNT = _object(
    ["total", "in_use", "free"], total={"type": "number"}, in_use={"type": "number"}, free={"type": "number"}
)
_NEEDS = _object(
    ["gpus", "cpus", "memory_bytes"],
    gpus={"type": "integer"},
    cpus={"type": "number"},
    memory_bytes={"type": "integer"},
)
_OAUTH_ERROR = _object(["error"], error=_STRING, error_description=_STRING)


def _extra_paths(doc: dict[str, Any]) -> None:
    health = ["Health"]
    doc["paths"].update(
        {
            "/health/live": {
                "get": {
                    "tags": health,
                    "summary": "Liveness",
                    "operationId": "health_live",
                    "responses": {"200": _json(_object(["status"], status={"const": "live"}))},
                }
            },
            "/health/ready": {
                "get": {
                    "tags": health,
                    "summary": "Readiness",
                    "description": "Ready when the daemon's store can take writes.",
                    "operationId": "health_ready",
                    "responses": {
                        "200": _json(_object(["status"], status={"const": "ready"})),
                        "503": _json(
                            _object(["detail"], detail=_object(["status"], status={"const": "not_ready"})),
                            "Not ready",
                        ),
                    },
                }
            },
            "/health": {
                "get": {
                    "tags": health,
                    "summary": "Health",
                    "description": "localjobs: `ok`, or 503 `degraded` with the reason in words.",
                    "operationId": "health",
                    "responses": {
                        "200": _json(_object(["status"], status={"const": "ok"})),
                        "503": _json(
                            _object(["status", "reason"], status={"const": "degraded"}, reason=_STRING),
                            "The store cannot take writes",
                        ),
                    },
                }
            },
            OPENAPI_PATH: {
                "get": {
                    "tags": ["Meta"],
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {"200": _json({"type": "object"})},
                }
            },
            "/apis/localjobs/v1/capacity": {
                "get": {
                    "tags": ["localjobs"],
                    "summary": "What the machine has, what is in use, who waits",
                    "description": "A localjobs extension: the CPUs, memory and GPUs the daemon admits "
                    "steps against (the machine's, or --cpus/--memory/--gpus), what running steps hold, "
                    "and the steps waiting in `created` for GPUs, CPUs or memory, with why. Each item of "
                    "`GET /apis/jobs/v2/execution-profiles` carries the same totals as `capacity`.",
                    "operationId": "localjobs_capacity",
                    "responses": {
                        "200": _json(
                            _object(
                                ["cpus", "memory_bytes", "gpus", "held", "waiting"],
                                cpus=_AMOUNT,
                                memory_bytes=_AMOUNT,
                                gpus=_AMOUNT,
                                held={
                                    "type": "array",
                                    "items": _object(
                                        ["workspace", "job", "step", "needs", "gpus"],
                                        workspace=_STRING,
                                        job=_STRING,
                                        step=_STRING,
                                        needs=_NEEDS,
                                        gpus={
                                            "type": "array",
                                            "items": _object(
                                                ["index", "device_id"],
                                                index={"type": "integer"},
                                                device_id=_STRING,
                                            ),
                                        },
                                    ),
                                },
                                waiting={
                                    "type": "array",
                                    "items": _object(
                                        ["workspace", "job", "step", "needs", "reason"],
                                        workspace=_STRING,
                                        job=_STRING,
                                        step=_STRING,
                                        needs=_NEEDS,
                                        reason=_STRING,
                                    ),
                                },
                            )
                        )
                    },
                }
            },
            "/apis/localjobs/v1/gpus": {
                "get": {
                    "tags": ["localjobs"],
                    "summary": "GPUs and who holds them",
                    "description": "A localjobs extension: the GPUs the daemon schedules on (NVML's, or "
                    "LOCALJOBS_GPUS), the step holding each, and the GPU steps waiting in `created`, "
                    "with why.",
                    "operationId": "localjobs_gpus",
                    "responses": {
                        "200": _json(
                            _object(
                                ["total", "free", "gpus", "waiting"],
                                total={"type": "integer"},
                                free={"type": "integer"},
                                gpus={
                                    "type": "array",
                                    "items": _object(
                                        ["index", "uuid", "device_id", "name", "memory_bytes", "held_by"],
                                        index={"type": "integer"},
                                        uuid=_STRING,
                                        device_id=_STRING,
                                        name=_STRING,
                                        memory_bytes={"type": ["integer", "null"]},
                                        held_by={"anyOf": [_STEP_REF, {"type": "null"}]},
                                    ),
                                },
                                waiting={
                                    "type": "array",
                                    "items": _object(
                                        ["workspace", "job", "step", "gpus_needed", "reason"],
                                        workspace=_STRING,
                                        job=_STRING,
                                        step=_STRING,
                                        gpus_needed={"type": "integer"},
                                        reason=_STRING,
                                    ),
                                },
                            )
                        )
                    },
                }
            },
            "/apis/auth/discovery": {
                "get": {
                    "tags": ["Auth"],
                    "summary": "Auth discovery",
                    "description": "What the official SDK asks inside a workload before it exchanges "
                    "the file named by NMP_WORKLOAD_IDENTITY_TOKEN_FILE for its bearer token.",
                    "operationId": "auth_discovery",
                    "responses": {
                        "200": _json(
                            _object(
                                ["auth_enabled"],
                                auth_enabled={"type": "boolean"},
                                oidc=_object(
                                    ["token_endpoint"],
                                    client_id=_STRING,
                                    token_endpoint=_STRING,
                                    workload_token_exchange_enabled={"type": "boolean"},
                                    workload_client_id=_STRING,
                                    workload_token_endpoint=_STRING,
                                ),
                            )
                        )
                    },
                }
            },
            "/apis/auth/token": {
                "post": {
                    "tags": ["Auth"],
                    "summary": "Token exchange (RFC 8693)",
                    "description": "Exchanges the workload token file's content for the bearer token "
                    "(the daemon's own token: only whoever presents it gets it back).",
                    "operationId": "auth_token_exchange",
                    "requestBody": {
                        "required": True,
                        "content": {
                            "application/x-www-form-urlencoded": {
                                "schema": _object(
                                    ["grant_type", "subject_token"],
                                    grant_type={"const": "urn:ietf:params:oauth:grant-type:token-exchange"},
                                    subject_token=_STRING,
                                    subject_token_type=_STRING,
                                )
                            }
                        },
                    },
                    "responses": {
                        "200": _json(
                            _object(
                                ["access_token", "issued_token_type", "token_type", "expires_in"],
                                access_token=_STRING,
                                issued_token_type=_STRING,
                                token_type={"const": "Bearer"},
                                expires_in={"type": "integer"},
                            )
                        ),
                        "400": _json(_OAUTH_ERROR, "Not a token-exchange request"),
                        "401": _json(_OAUTH_ERROR, "Not this daemon's token"),
                    },
                }
            },
        }
    )


def _security(doc: dict[str, Any]) -> None:
    doc["components"]["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "The daemon owner's token: the file `token` in the data dir (or "
            "LOCALJOBS_TOKEN); a workload reads it from NMP_WORKLOAD_IDENTITY_TOKEN_FILE.",
        }
    }
    doc["security"] = [{"bearer": []}]
    unauthorized = _json(
        _object(["detail"], detail=_STRING), "Missing or wrong `Authorization: Bearer` token"
    )
    for path, item in doc["paths"].items():
        for method in _METHODS:
            if method not in item:
                continue
            if path in _OPEN:
                item[method]["security"] = []
            else:
                item[method]["responses"].setdefault("401", unauthorized)
