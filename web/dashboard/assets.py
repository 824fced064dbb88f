"""The dashboard's CSS, JavaScript and icon: files in `static/`, shipped in the package and read
once into memory (some tens of KB); each is answered with its ETag, and a browser that has it
gets a 304."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from web.dashboard.headers import COMMON

STATIC = Path(__file__).resolve().parent / "static"
PREFIX = "/static/"
_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}

routes = web.RouteTableDef()


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load(folder: Path) -> dict[str, Asset]:
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in _TYPES:
            body = path.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
            found[path.name] = Asset(body, _TYPES[path.suffix], etag)
    return found


ASSETS = load(STATIC)


@routes.get(PREFIX + "{name}")
async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    found = ASSETS.get(name)
    if found is None:
        raise web.HTTPNotFound(reason=f"no dashboard file {name!r}")
    # no-cache: kept, but asked again each time (an upgraded daemon's files are seen at once).
    headers = {**COMMON, "ETag": found.etag, "Cache-Control": "no-cache"}
    if found.etag in request.headers.get("If-None-Match", ""):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.body, headers={**headers, "Content-Type": found.content_type})
