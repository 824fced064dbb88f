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


def add_dashboard(app: web.Application) -> None:
    app.add_routes(login.routes)
    app.add_routes(pages.routes)
    app.add_routes(assets.routes)
