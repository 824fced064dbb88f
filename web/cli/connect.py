"""Finding the daemon and talking to it: the client commands' one HTTP client (standard library).

Where the daemon is, in order: --url/LOCALJOBS_URL (with --token/LOCALJOBS_TOKEN), else what the
daemon running on the data dir wrote into `<data-dir>/daemon.lock` (its pid and URL) and
`<data-dir>/workload-token` (its token). A daemon that is still starting (`localjobs serve &`
a moment ago) is waited for, up to a bound.
"""

from __future__ import annotations

import ipaddress
import json
import os
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.client import HTTPResponse
from pathlib import Path
from typing import Any

from runner.datadir import LOCK_NAME, Holder, read_holder
from runner.settings import default_data_dir

# `localjobs serve &` then a client at once: the daemon needs a moment to bind and say where.
DISCOVERY_WAIT_S = 15.0
# ...and before it has even taken the data dir (python's start-up).
START_WAIT_S = 5.0
_REQUEST_TIMEOUT_S = 30.0


class ClientError(Exception):
    """Root of what the client commands report to the user; `exit_code` is the command's."""

    exit_code = 1


class Unreachable(ClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        from web.cli.outcome import UNREACHABLE

        self.exit_code = UNREACHABLE


class ApiError(ClientError):
    """The daemon answered with an error status; `detail` is its body's `detail`."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(format_detail(status, detail))
        from web.cli.outcome import REFUSED, UNREACHABLE

        self.status = status
        self.detail = detail
        self.exit_code = UNREACHABLE if status >= 500 else REFUSED


def format_detail(status: int, detail: Any) -> str:
    """A 422's fields and messages one per line; other errors their message."""
    if isinstance(detail, list):
        lines = [f"refused ({status}):"]
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(part) for part in item.get("loc", []) if part != "body")
                lines.append(f"  {loc or 'request'}: {item.get('msg', item)}")
            else:
                lines.append(f"  {item}")
        return "\n".join(lines)
    if status == 401:
        return f"refused (401): {detail} -- pass --token or LOCALJOBS_TOKEN, or --data-dir of the daemon"
    return f"refused ({status}): {detail}"


@dataclass(frozen=True)
class Target:
    url: str
    token: str | None
    found_in: str


def find_daemon(
    url: str | None,
    token: str | None,
    data_dir: str | None,
    environ: Mapping[str, str],
    wait_s: float = DISCOVERY_WAIT_S,
) -> Target:
    url = url or environ.get("LOCALJOBS_URL") or None
    token = token or environ.get("LOCALJOBS_TOKEN") or None
    folder = Path(data_dir or environ.get("LOCALJOBS_DATA_DIR") or default_data_dir(environ)).expanduser()
    if url:
        # Only a token given with it: the data dir's token is for the data dir's own daemon.
        return Target(url.rstrip("/"), token, "--url/LOCALJOBS_URL")
    started = time.monotonic()
    while True:
        holder = _trusted_holder(folder)
        starting = holder.pid is not None
        if starting and holder.url:
            return Target(holder.url, token or _token_in(folder), f"data dir {folder}")
        # A daemon that holds the dir but has not said its URL yet is waited for the whole bound;
        # with no daemon at all, only for the moment `localjobs serve &` needs to take the dir.
        limit = wait_s if starting else min(wait_s, START_WAIT_S)
        if time.monotonic() - started >= limit:
            break
        time.sleep(0.05)
    if holder.pid is not None:
        why = f"the daemon (pid {holder.pid}) has not said where it listens (on loopback)"
    elif (folder / "daemon.lock").exists():
        why = "no daemon runs there now"
    else:
        why = "no daemon has run there"
    raise Unreachable(
        f"no localjobs daemon found: LOCALJOBS_URL is not set and in data dir {folder} {why} "
        f"(waited {time.monotonic() - started:.0f} s). "
        "Start one with `localjobs serve`, or pass --url/--data-dir."
    )


def _trusted_holder(folder: Path) -> Holder:
    """Who holds the data dir, only if that can be trusted with our token: the lock file is a real
    file of ours, a process really holds its lock now (not a stale pid that may have been reused),
    and the URL is on this machine's loopback."""
    path = folder / LOCK_NAME
    try:
        info = os.lstat(path)
    except OSError:
        return Holder(None, None)
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.geteuid():
        return Holder(None, None)
    holder = read_holder(folder)
    if holder.pid is None or holder.pid not in _flock_holders(info.st_dev, info.st_ino):
        return Holder(None, None)
    if holder.url is not None and not _loopback_http(holder.url):
        return Holder(holder.pid, None)
    return holder


def _flock_holders(device: int, inode: int) -> set[int]:
    """Pids holding a flock on that file, from /proc/locks (reading it takes no lock itself)."""
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    pids = set()
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                parts = line.split()
                # "1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF"
                if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == wanted and parts[4].isdigit():
                    pids.add(int(parts[4]))
    except OSError:
        pass
    return pids


def _loopback_http(url: str) -> bool:
    parts = urllib.parse.urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    if parts.scheme != "http":
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _token_in(folder: Path) -> str | None:
    """The data dir's token, only from a private file of ours (another user's could be a trap)."""
    for name in ("workload-token", "token"):
        try:
            fd = os.open(folder / name, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError:
            continue
        with os.fdopen(fd) as source:
            info = os.fstat(source.fileno())
            if info.st_uid != os.geteuid() or info.st_mode & 0o077:
                continue
            token = source.read().strip()
        if token:
            return token
    return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """The daemon never redirects; following one would hand the token to another host."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


class Api:
    """JSON over HTTP to one daemon; every call is bounded by a timeout."""

    def __init__(self, target: Target, workspace: str = "default") -> None:
        self.target = target
        self.workspace = workspace

    @property
    def jobs_path(self) -> str:
        return f"/apis/jobs/v2/workspaces/{_quote(self.workspace)}/jobs"

    @property
    def secrets_path(self) -> str:
        return f"/apis/secrets/v2/workspaces/{_quote(self.workspace)}/secrets"

    def job_path(self, name: str) -> str:
        return f"{self.jobs_path}/{_quote(name)}"

    def _headers(self, body: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self.target.token:
            headers["Authorization"] = f"Bearer {self.target.token}"
        return headers

    def open(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout_s: float | None = _REQUEST_TIMEOUT_S,
    ) -> HTTPResponse:
        query = f"?{urllib.parse.urlencode(params, doseq=True)}" if params else ""
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.target.url + path + query, data=data, method=method, headers=self._headers(data is not None)
        )
        try:
            response: HTTPResponse = urllib.request.urlopen(request, timeout=timeout_s)
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise ApiError(exc.code, detail) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise Unreachable(
                f"the daemon at {self.target.url} (from {self.target.found_in}) does not answer: {reason}"
            ) from None
        return response

    def call(self, method: str, path: str, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        with self.open(method, path, body, params) as response:
            raw = response.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, **params: Any) -> Any:
        return self.call("GET", path, params={k: v for k, v in params.items() if v is not None})

    def stream_lines(self, path: str, params: Mapping[str, Any]) -> Iterator[dict[str, Any]]:
        """An NDJSON stream (follow=true), one object per line, until the daemon ends it."""
        with self.open("GET", path, params=params, timeout_s=None) as response:
            for raw in response:
                if raw.strip():
                    yield json.loads(raw)

    def download(self, path: str, out: Path) -> tuple[int, str]:
        """Streams to `out`; returns bytes written and the name the daemon suggests."""
        with self.open("GET", path, timeout_s=None) as response:
            disposition = response.headers.get("Content-Disposition", "")
            suggested = ""
            if "filename=" in disposition:
                suggested = disposition.split("filename=", 1)[1].strip().strip('"')
            written = 0
            # Only a plain file name: never a path the server chose (../, /etc/...).
            name = Path(suggested).name
            target = out / name if out.is_dir() and name not in ("", ".", "..") else out
            if out.is_dir() and target == out:
                raise ApiError(500, "the daemon sent no usable file name; pass -o FILE")
            with open(target, "wb") as sink:
                while chunk := response.read(1 << 16):
                    sink.write(chunk)
                    written += len(chunk)
        return written, str(target)


def _quote(part: str) -> str:
    return urllib.parse.quote(part, safe="")
