"""One middleware turns every error into the API's error shape; nothing else builds error bodies."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runner.errors import BadRequest, Conflict, NotFound, RunnerError, StorageError, Unprocessable
from web import strict_json

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


# The official SDK (its _base_client._should_retry) retries 408, 409, 429 and every 5xx twice, with
# backoff, unless the answer carries `x-should-retry`. A 4xx of this daemon tells a fact about the
# request or the state it finds (a name taken, a missing secret, a transition the status machine
# refuses, a bad body, an unknown job): asked again at once, the answer is the same, and the two
# retries only cost the caller ~1.3 s per ConflictError. 429 and 408 (and 503, the store busy, and
# 500) stay retryable: those may change.
_MAY_CHANGE = frozenset({408, 429})


def _settled[R: web.StreamResponse](response: R) -> R:
    if 400 <= response.status < 500 and response.status not in _MAY_CHANGE:
        response.headers["x-should-retry"] = "false"
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except InvalidRequest as exc:
        return _settled(strict_json.response({"detail": exc.detail}, status=422))
    except RunnerError as exc:
        status = next((code for kind, code in _STATUS_OF if isinstance(exc, kind)), 500)
        return _settled(strict_json.response({"detail": str(exc)}, status=status))
    except web.HTTPException as exc:
        if exc.status >= 400 and exc.content_type != "application/json":
            response = strict_json.response({"detail": exc.reason}, status=exc.status, headers=_allow(exc))
            return _settled(response)
        _settled(exc)
        raise
    except ConnectionResetError:
        raise  # the client left mid-response: nothing to answer, nothing to log as an error
    except StorageError as exc:
        log.error("storage failure on %s %s", request.method, request.path, exc_info=exc)
        return strict_json.response({"detail": f"storage failure: {exc}"}, status=503)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return strict_json.response({"detail": "Internal error; see the daemon's log"}, status=500)
    # A 4xx a handler answered itself (the token exchange's OAuth errors), unless already sent.
    return response if response.prepared else _settled(response)


def _allow(exc: web.HTTPException) -> dict[str, str]:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else {}
