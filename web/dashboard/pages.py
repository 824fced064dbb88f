"""The dashboard's two pages: the jobs list at `/`, and a job at a URL of its own
(`/workspaces/{workspace}/jobs/{name}`, what the list links to), each the login form until the
browser is signed in."""

from __future__ import annotations

from aiohttp import web

from web.dashboard import login
from web.dashboard.templates import page, render
from web.security import POLICY

JOB_PAGE = "/workspaces/{workspace}/jobs/{name}"

routes = web.RouteTableDef()


def _shell(request: web.Request, template: str) -> web.Response:
    if "token" in request.query:
        return login.from_link(request)
    if not login.signed_in(request):
        return login.login_form(request)
    auth = "off" if request.app[POLICY].token is None else "on"
    return page(render(template, auth=auth))


@routes.get("/")
async def jobs_list(request: web.Request) -> web.Response:
    return _shell(request, "jobs.html")


@routes.get(JOB_PAGE)
async def job(request: web.Request) -> web.Response:
    # The workspace and the name are read by the page's script from its own URL, and checked by the
    # API it asks: a job that does not exist is told there.
    return _shell(request, "job.html")
