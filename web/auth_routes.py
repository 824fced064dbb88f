"""What the official SDK asks before it sends a token from inside a workload.

A task gets NMP_WORKLOAD_IDENTITY_TOKEN_FILE; the SDK then reads `/apis/auth/discovery` and
exchanges the file's content at the token endpoint (RFC 8693) for the Bearer token it sends. Here
the file holds the owner's token itself, so the exchange hands back what was presented, and
only when it is the token: nothing is learnt from it that was not already known.
"""

from __future__ import annotations

from aiohttp import web

from web import strict_json
from web.security import POLICY, TOKEN_EXCHANGE_PATH

CLIENT_ID = "localjobs"
_TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
# The SDK exchanges again this long before it ends; the token itself does not expire.
_EXPIRES_IN_S = 3600
_MAX_GRANT_BYTES = 16 * 1024

routes = web.RouteTableDef()


@routes.get("/apis/auth/discovery")
async def discovery(request: web.Request) -> web.Response:
    if request.app[POLICY].token is None:
        return strict_json.response({"auth_enabled": False})
    endpoint = f"{request.scheme}://{request.host}{TOKEN_EXCHANGE_PATH}"
    return strict_json.response(
        {
            "auth_enabled": True,
            "oidc": {
                "client_id": CLIENT_ID,
                "token_endpoint": endpoint,
                "workload_token_exchange_enabled": True,
                "workload_client_id": CLIENT_ID,
                "workload_token_endpoint": endpoint,
            },
        }
    )


def _oauth_error(error: str, description: str, status: int = 400) -> web.Response:
    return strict_json.response({"error": error, "error_description": description}, status=status)


@routes.post(TOKEN_EXCHANGE_PATH)
async def token_exchange(request: web.Request) -> web.Response:
    policy = request.app[POLICY]
    if policy.token is None:
        return _oauth_error("unsupported_grant_type", "authentication is off", 400)
    if request.content_type != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request", "send the grant as application/x-www-form-urlencoded")
    # The one open route that reads a body: a grant is a few hundred bytes.
    if request.content_length is None or request.content_length > _MAX_GRANT_BYTES:
        return _oauth_error("invalid_request", f"a grant is at most {_MAX_GRANT_BYTES} bytes", 413)
    try:
        form = await request.post()
    except (UnicodeDecodeError, LookupError):
        return _oauth_error("invalid_request", "the form is not valid UTF-8")
    if form.get("grant_type") != _TOKEN_EXCHANGE:
        return _oauth_error("unsupported_grant_type", f"only {_TOKEN_EXCHANGE} is supported")
    subject = form.get("subject_token")
    if not isinstance(subject, str) or not policy.token_ok(subject.strip()):
        return _oauth_error("invalid_grant", "the subject token is not this daemon's token", 401)
    return strict_json.response(
        {
            "access_token": policy.token,
            "issued_token_type": _ACCESS_TOKEN_TYPE,
            "token_type": "Bearer",
            "expires_in": _EXPIRES_IN_S,
        }
    )
