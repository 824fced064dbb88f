"""One middleware turns every error into the API's error shape; nothing else builds error bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runner.errors import BadRequest, Conflict, NotFound, RunnerError, Unprocessable
from storage import StorageError

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InvalidRequest(Exception):
    """A request that fails validation: rendered as 422 with the `HTTPValidationError` list shape."""

    def __init__(self, detail: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.detail = detail

    @classmethod
    def single(cls, loc: list[str | int], msg: str, type_: str, input_: Any = None) -> InvalidRequest:
        return cls([{"type": type_, "loc": loc, "msg": msg, "input": input_}])


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def validation_detail(exc: ValidationError, prefix: list[str | int]) -> list[dict[str, Any]]:
    """pydantic's errors in FastAPI's shape: loc prefixed with body/query, everything JSON-safe."""
    detail = []
    for error in exc.errors(include_url=False):
        item: dict[str, Any] = {
            "type": error["type"],
            "loc": [*prefix, *error["loc"]],
            "msg": error["msg"],
            "input": _jsonable(error.get("input")),
        }
        if error.get("ctx"):
            item["ctx"] = {k: _jsonable(v) for k, v in error["ctx"].items()}
        detail.append(item)
    return detail


_STATUS_OF: list[tuple[type[Exception], int]] = [
    (NotFound, 404),
    (Conflict, 409),
    (Unprocessable, 422),
    (BadRequest, 400),
]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except InvalidRequest as exc:
        return web.json_response({"detail": exc.detail}, status=422)
    except RunnerError as exc:
        status = next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 500)
        return web.json_response({"detail": str(exc)}, status=status)
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            return web.json_response({"detail": exc.reason}, status=exc.status, headers=_allow(exc))
        raise
    except ConnectionResetError:
        raise  # the client left mid-response: nothing to answer, nothing to log as an error
    except StorageError as exc:
        log.error("storage failure on %s %s", request.method, request.path, exc_info=exc)
        return web.json_response({"detail": f"storage failure: {exc}"}, status=503)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return web.json_response({"detail": "Internal error; see the daemon's log"}, status=500)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
