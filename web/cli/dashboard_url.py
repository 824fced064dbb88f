"""The dashboard's login URL, shared by `localjobs serve` (at start) and `localjobs dashboard`;
standard library only, so that `serve` loads no client code for it."""

from __future__ import annotations

from urllib.parse import quote, urlsplit, urlunsplit

# A daemon listening on every address is reached by a browser on this machine at loopback.
_ANY_ADDRESS = {"0.0.0.0": "127.0.0.1", "[::]": "[::1]"}


def login_url(base_url: str, token: str | None, workspace: str = "default") -> str:
    """The dashboard's address; with `?token=` when the daemon has one."""
    parts = urlsplit(base_url)
    host = parts.hostname or ""
    shown = f"[{host}]" if ":" in host else host
    shown = _ANY_ADDRESS.get(shown, shown)
    netloc = f"{shown}:{parts.port}" if parts.port else shown
    query = []
    if workspace != "default":
        query.append(f"workspace={quote(workspace, safe='')}")
    if token is not None:
        query.append(f"token={quote(token, safe='')}")
    return urlunsplit((parts.scheme, netloc, "/", "&".join(query), ""))
