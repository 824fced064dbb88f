"""localjobs extensions showing what the machine has and who holds it (the reference has no such
routes): `GET /apis/localjobs/v1/capacity` (CPUs, memory, GPUs; in use; the steps waiting for
them, with why) and `GET /apis/localjobs/v1/gpus` (each GPU and the step holding it)."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runner.allocation import StepRef
from runner.models import Needs
from web.routes import SERVICE
from web.serialize import capacity_body
from web.strict_json import response

GPUS_PATH = "/apis/localjobs/v1/gpus"
CAPACITY_PATH = "/apis/localjobs/v1/capacity"
routes = web.RouteTableDef()


def _ref(ref: StepRef | None) -> dict[str, str] | None:
    return None if ref is None else {"workspace": ref.workspace, "job": ref.job, "step": ref.step}


def _needs(needs: Needs) -> dict[str, Any]:
    return {"gpus": needs.gpus, "cpus": needs.cpus, "memory_bytes": needs.memory_bytes}


@routes.get(CAPACITY_PATH)
async def capacity(request: web.Request) -> web.Response:
    usage = await request.app[SERVICE].capacity.usage()
    body = {
        **capacity_body(usage.capacity, usage.in_use),
        "held": [
            {
                **(_ref(hold.step) or {}),
                "needs": _needs(hold.needs),
                "gpus": [{"index": g.index, "device_id": g.device_id} for g in hold.gpus],
            }
            for hold in usage.held
        ],
        "waiting": [
            {**(_ref(wait.step) or {}), "needs": _needs(wait.needs), "reason": wait.reason}
            for wait in usage.waiting
        ],
    }
    return response(body)


@routes.get(GPUS_PATH)
async def gpus(request: web.Request) -> web.Response:
    usage = await request.app[SERVICE].capacity.usage()
    body: dict[str, Any] = {
        "total": len(usage.gpus),
        "free": usage.free_gpus,
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
            {**(_ref(wait.step) or {}), "gpus_needed": wait.needs.gpus, "reason": wait.reason}
            for wait in usage.waiting
            if wait.needs.gpus
        ],
    }
    return response(body)
