"""Who may talk to the daemon: the checks every request passes before any handler runs.

A job is "run this command on my machine", so the port is guarded in layers, each closing one
way in:

- Host allow-list (DNS rebinding: a page on evil.example whose name now resolves to 127.0.0.1
  sends `Host: evil.example`): loopback names and addresses, this machine's own name and
  addresses, the bound address and `--allowed-host` values; anything else is 403.
- Origin (cross-site requests from a page the user visits): a request that carries an `Origin`
  other than the daemon's own (or an allowed host's on this port) is 403, whatever the method.
- Content type (a cross-site form or `text/plain` POST needs no preflight): a POST, PUT or PATCH
  with a body must say `application/json` (or `*+json`), else 415. No CORS header is ever sent,
  so a browser never lets another origin read an answer or send a preflighted request.
- The owner's token on every `/apis/...` request (`Authorization: Bearer <token>`), compared in
  constant time: 401 without it. `/health` and the SDK's auth discovery stay open and tell nothing.
- The dashboard's session cookie (web/dashboard) stands in for the bearer header, and only on the
  page's own requests: the cookie is HttpOnly and SameSite=Strict (no cross-site request carries
  it); a same-site page on another port of this host does send it, so the Origin check above still
  refuses that page's writes, a write without an `Origin` is refused, and a request the browser
  labels `Sec-Fetch-Site: same-site` or `cross-site` is not let in by the cookie. The cookie holds a
  value derived from the token (HMAC), never the token itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

import psutil
from aiohttp import web

from web import strict_json

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Open without a token: readiness, and what the official SDK asks before it has a token.
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/openapi.json", "/apis/auth/discovery"})
# Takes the RFC 8693 form body (application/x-www-form-urlencoded) that the SDK sends.
TOKEN_EXCHANGE_PATH = "/apis/auth/token"
# The dashboard's login form: a browser form posts application/x-www-form-urlencoded.
LOGIN_PATH = "/login"
_FORM_BODY_PATHS = frozenset({TOKEN_EXCHANGE_PATH, LOGIN_PATH})
_SESSION_CONTEXT = b"localjobs dashboard session v1"
# What a browser says of the page's own requests (`same-origin`) and of what the user typed or
# bookmarked (`none`); `same-site` (another port of this host) and `cross-site` get no cookie access.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})
_SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class AccessPolicy:
    """`token` None: no authentication (--no-auth, loopback only)."""

    token: str | None
    allowed_hosts: frozenset[str]
    port: int

    @classmethod
    def build(cls, token: str | None, bound_host: str, port: int, extra_hosts: Iterable[str]) -> AccessPolicy:
        hosts = {"localhost", "127.0.0.1", "::1", bound_host.strip("[]").lower()}
        hosts.update(h.strip().strip("[]").lower() for h in extra_hosts if h.strip())
        if bound_host in ("0.0.0.0", "::", ""):
            # Listening everywhere: this machine's own names and addresses are its own too (an IP
            # literal cannot be rebound; a name the owner did not list could be).
            hosts.update(_own_addresses())
        hosts.update(_own_names())
        hosts.discard("0.0.0.0")
        hosts.discard("::")
        return cls(token=token, allowed_hosts=frozenset(hosts), port=port)

    def host_allowed(self, host_header: str | None) -> bool:
        if not host_header:
            return False
        host = _host_part(host_header)
        return host in self.allowed_hosts or host.endswith(".localhost")

    def origin_allowed(self, origin: str) -> bool:
        try:
            parts = urlsplit(origin)
            port = parts.port
        except ValueError:
            return False
        if parts.scheme not in ("http", "https") or parts.hostname is None:
            return False  # includes "null" (sandboxed frames, file:// pages)
        if (port or (443 if parts.scheme == "https" else 80)) != self.port:
            return False
        host = parts.hostname.lower()
        return host in self.allowed_hosts or host.endswith(".localhost")

    def token_ok(self, presented: str | None) -> bool:
        if self.token is None:
            return True
        if presented is None:
            return False
        return _same(presented, self.token)

    @property
    def session_cookie(self) -> str:
        # A browser sends a host's cookies to every port of it: the port keeps two daemons apart.
        return f"localjobs_session_{self.port}"

    def session_value(self) -> str | None:
        """What the dashboard's cookie holds: derived from the token, so that the cookie is not the
        token (it opens no bearer header) and a new token ends every session. None without auth."""
        if self.token is None:
            return None
        return hmac.new(self.token.encode(), _SESSION_CONTEXT, hashlib.sha256).hexdigest()

    def session_ok(self, presented: str | None) -> bool:
        expected = self.session_value()
        if expected is None:
            return True
        return presented is not None and _same(presented, expected)


def _same(presented: str, expected: str) -> bool:
    # Constant time; surrogateescape: a header of raw bytes is a wrong value, not an error.
    return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), expected.encode())


# A name or an IPv4 address, or a bracketed IPv6 address, then an optional port: nothing else
# (`localhost:1@evil.example` must not pass as localhost).
_HOST_HEADER = re.compile(r"(\[[0-9a-f:.]+\]|[a-z0-9.-]+)(?::\d{1,5})?")


def _host_part(host_header: str) -> str:
    host = host_header.strip().lower()
    match = _HOST_HEADER.fullmatch(host)
    if match is None:
        return ""
    return match.group(1).strip("[]")


def _own_names() -> set[str]:
    names = set()
    for name in (socket.gethostname(), socket.getfqdn()):
        if name:
            names.add(name.lower())
    return names


def _own_addresses() -> set[str]:
    found = set()
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                found.add(address.address.split("%")[0].lower())
    return found


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def session_allows(request: web.Request, policy: AccessPolicy) -> bool:
    """The dashboard's cookie, on a request its own page made (see the module's docstring)."""
    if not policy.session_ok(request.cookies.get(policy.session_cookie)):
        return False
    if request.headers.get("Sec-Fetch-Site", "same-origin") not in _OWN_FETCH_SITES:
        return False
    # Browsers send Origin with every write; one without it is not the page's (the Origin itself,
    # when present, was checked before).
    return request.method in _SAFE_METHODS or "Origin" in request.headers


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json")
    )


POLICY = web.AppKey("access_policy", AccessPolicy)


def _refuse(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    return strict_json.response({"detail": detail}, status=status, headers=headers)


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    policy = request.app[POLICY]
    if not policy.host_allowed(request.headers.get("Host")):
        return _refuse(403, "this Host is not allowed; start the daemon with --allowed-host to add it")
    origin = request.headers.get("Origin")
    if origin is not None and not policy.origin_allowed(origin):
        return _refuse(403, "cross-origin requests are not allowed")
    if request.method == "OPTIONS":
        # No CORS: nothing is allowed to another origin, so a preflight gets nothing.
        return _refuse(405, "Method Not Allowed")
    path = request.path
    if path in OPEN_PATHS:
        return await handler(request)
    # An empty body carries nothing to act on, whatever its type says (aiohttp's client labels
    # one application/octet-stream): only a body that exists must be JSON.
    body_not_json = request.can_read_body and not _is_json(request.content_type)
    if request.method in _BODY_METHODS and path not in _FORM_BODY_PATHS and body_not_json:
        return _refuse(415, "the request body must be JSON (Content-Type: application/json)")
    if (
        path.startswith("/apis/")
        and path != TOKEN_EXCHANGE_PATH
        and not policy.token_ok(bearer_token(request))
        and not session_allows(request, policy)
    ):
        return _refuse(
            401,
            "missing or wrong token: send 'Authorization: Bearer <token>' (the token is in the "
            "daemon's data dir, file 'token', or LOCALJOBS_TOKEN)",
            {"WWW-Authenticate": 'Bearer realm="localjobs"'},
        )
    return await handler(request)
