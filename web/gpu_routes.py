"""`GET /apis/localjobs/v1/gpus`: a localjobs extension showing the machine's GPUs, which step
holds each, and which GPU steps wait and why (the reference has no such route)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runner.gpus import StepRef
from web.routes import SERVICE
from web.strict_json import response

GPUS_PATH = "/apis/localjobs/v1/gpus"
routes = web.RouteTableDef()


def _ref(ref: StepRef | None) -> dict[str, str] | None:
    return None if ref is None else {"workspace": ref.workspace, "job": ref.job, "step": ref.step}


@routes.get(GPUS_PATH)
async def gpus(request: web.Request) -> web.Response:
    usage = await request.app[SERVICE].gpu_usage()
    body: dict[str, Any] = {
        "total": len(usage.gpus),
        "free": usage.free,
        "gpus": [
            {
                "index": use.gpu.index,
                "uuid": use.gpu.uuid,
                "device_id": use.gpu.device_id,
                "name": use.gpu.name,
                "memory_bytes": use.gpu.memory_bytes,
                "held_by": _ref(use.held_by),
            }
            for use in usage.gpus
        ],
        "waiting": [
            {**(_ref(wait.step) or {}), "gpus_needed": wait.needed, "reason": wait.reason}
            for wait in usage.waiting
        ],
    }
    return response(body)
