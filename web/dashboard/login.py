"""The dashboard's session: the login URL and the login form set the cookie, `/logout` clears it.

`localjobs serve` prints `http://host:port/?token=...`: opened, it sets the session cookie and
redirects to the same page without the token (so the token stays out of the address bar and of
what is bookmarked). The form posts the token to `/login` (a browser form is urlencoded: the only
form body the access middleware lets through besides the SDK's token exchange). Both compare the
token in constant time (AccessPolicy.token_ok). The cookie is HttpOnly (no script reads it),
SameSite=Strict (no request from another site carries it) and holds AccessPolicy.session_value(),
not the token.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

from aiohttp import web

from web import strict_json
from web.dashboard.templates import page, render
from web.security import LOGIN_PATH, POLICY

LOGOUT_PATH = "/logout"
# A login form is a few hundred bytes.
_MAX_FORM_BYTES = 16 * 1024
# Where a login may send the browser next: one of the dashboard's own pages, with a query; no
# scheme, no host, no `//` (an open redirect would make the login URL a way to another site).
# Printable ASCII only (it becomes a Location header).
_SEGMENT = r"[A-Za-z0-9._~%!$&'()*+,;=:@-]+"
_NEXT = re.compile(rf"/(?:workspaces/{_SEGMENT}/jobs/{_SEGMENT})?(?:\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]*)?")
_WRONG_TOKEN = "That is not this daemon's token."

routes = web.RouteTableDef()


def signed_in(request: web.Request) -> bool:
    policy = request.app[POLICY]
    return policy.session_ok(request.cookies.get(policy.session_cookie))


def login_form(request: web.Request, problem: str = "", status: int = 401) -> web.Response:
    return page(render("login.html", problem=problem, next=_here_without_token(request)), status)


def _here_without_token(request: web.Request) -> str:
    query = [(key, value) for key, value in request.query.items() if key != "token"]
    # The path as sent (percent-encoded), the query encoded anew without the token.
    here = request.raw_path.partition("?")[0] + (f"?{urlencode(query)}" if query else "")
    return here if _NEXT.fullmatch(here) else "/"


def _signed_in_redirect(request: web.Request, location: str) -> web.Response:
    policy = request.app[POLICY]
    response = _see_other(location)
    value = policy.session_value()
    if value is not None:
        # No Max-Age: a browser-session cookie; `localjobs dashboard` prints a new login URL.
        response.set_cookie(policy.session_cookie, value, path="/", httponly=True, samesite="Strict")
    return response


def from_link(request: web.Request) -> web.Response:
    """A page asked with `?token=`: the right token signs in and drops it from the address."""
    policy = request.app[POLICY]
    if not policy.token_ok(request.query.get("token", "")):
        return login_form(request, _WRONG_TOKEN)
    return _signed_in_redirect(request, _here_without_token(request))


@routes.post(LOGIN_PATH)
async def login(request: web.Request) -> web.Response:
    if request.content_type != "application/x-www-form-urlencoded":
        return _plain(415, "send the login form (application/x-www-form-urlencoded)")
    if request.content_length is None or request.content_length > _MAX_FORM_BYTES:
        return _plain(413, f"a login form is at most {_MAX_FORM_BYTES} bytes")
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError, ValueError):
        return _plain(400, "the login form is not valid UTF-8")
    token, wanted = form.get("token"), form.get("next", "/")
    location = wanted if isinstance(wanted, str) and _NEXT.fullmatch(wanted) else "/"
    policy = request.app[POLICY]
    if not isinstance(token, str) or not policy.token_ok(token.strip()):
        return page(render("login.html", problem=_WRONG_TOKEN, next=location), 401)
    return _signed_in_redirect(request, location)


@routes.post(LOGOUT_PATH)
async def logout(request: web.Request) -> web.Response:
    policy = request.app[POLICY]
    response = _see_other("/")
    response.del_cookie(policy.session_cookie, path="/")
    return response


def _see_other(location: str) -> web.Response:
    headers = {"Location": location, "Cache-Control": "no-store", "Referrer-Policy": "same-origin"}
    return web.Response(status=303, headers=headers)


def _plain(status: int, detail: str) -> web.Response:
    return strict_json.response({"detail": detail}, status=status)
