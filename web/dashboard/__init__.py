"""The web dashboard (issue #15): a jobs list at `/` and a page per job, served by the daemon.

The pages are static shells; everything they show comes from the JSON API (`/apis/jobs/v2/...`),
fetched by the page's own JavaScript with the session cookie that the login sets (see
web/security.py for what the cookie may do). So there is one way in to the data, one set of access
checks, and no data in any HTML the server renders.

- `login.py`: the session: `?token=` and the login form set the cookie, `/logout` clears it.
- `pages.py`: the HTML pages (the list, a job, the login form) and their security headers.
- `assets.py`: the CSS, JavaScript and icon, shipped in the package (no CDN, no outside request).
"""

from __future__ import annotations

from aiohttp import web

from web.dashboard import assets, login, pages

_ROUTE_TABLES = (login.routes, pages.routes, assets.routes)


def add_dashboard(app: web.Application) -> None:
    for table in _ROUTE_TABLES:
        app.add_routes(table)


def dashboard_routes() -> frozenset[tuple[str, str]]:
    """(path, method) of every route the dashboard adds. Pages and files, not API operations (the
    pages' data comes through the documented API), so `/openapi.json` does not list them."""
    routes = (route for table in _ROUTE_TABLES for route in table)
    return frozenset((r.path, r.method) for r in routes if isinstance(r, web.RouteDef))
