"""The owner's token: who may use the API, and what a workload is given to call back.

A job is "run this command on my machine", so the API is closed by default. The token is, in
order: LOCALJOBS_TOKEN, the file named by --token-file, or `<data-dir>/token` (created at first
start, 256 random bits, mode 0600). The effective token is also written to
`<data-dir>/workload-token` at every start: tasks get that file's path in
NMP_WORKLOAD_IDENTITY_TOKEN_FILE, which the official SDK reads before each request.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from runner.errors import CannotStart
from runner.settings import Settings

log = logging.getLogger(__name__)

_TOKEN_BYTES = 32
_MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class Access:
    """None as the token: no authentication (--no-auth, loopback only)."""

    token: str | None
    workload_token_file: Path | None


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_access(settings: Settings) -> Access:
    if settings.no_auth:
        if not is_loopback_host(settings.host):
            raise CannotStart(
                f"--no-auth with --host {settings.host}: anyone who can reach that address could run "
                "commands as this user; without a token localjobs listens on loopback only"
            )
        log.warning(
            "authentication is OFF (--no-auth): every local user and program that reaches %s:%s "
            "can run commands as this user",
            settings.host,
            settings.port,
        )
        return Access(None, None)
    token = _token(settings)
    if len(token) < _MIN_TOKEN_LENGTH:
        raise CannotStart(f"the token must be at least {_MIN_TOKEN_LENGTH} characters long")
    workload_file = settings.data_dir / "workload-token"
    write_private(workload_file, token)
    return Access(token, workload_file)


def _token(settings: Settings) -> str:
    if settings.token:
        return settings.token.strip()
    if settings.token_file is not None:
        token = _read_private(settings.token_file)
        if not token:
            raise CannotStart(f"the token file {settings.token_file} is empty")
        return token
    path = settings.token_path
    token = secrets.token_urlsafe(_TOKEN_BYTES)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        existing = _read_private(path)
        if existing:
            return existing
        write_private(path, token)  # an empty file (a crash mid-creation): make a new token
        return token
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def _read_private(path: Path) -> str:
    """A token file's content, if it is a real file of ours that nobody else can read or write
    (else another user may know the token, or have chosen it)."""
    text = read_private(path, "token file")
    if text is None:
        raise CannotStart(f"cannot read the token file {path}: it does not exist")
    return text.strip()


def read_private(path: Path, what: str) -> str | None:
    """The content of a private file of ours (None if there is none); one that another user
    could read or write, or a symlink, refuses the start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CannotStart(f"cannot read the {what} {path}: {exc}") from exc
    with os.fdopen(fd) as source:
        info = os.fstat(source.fileno())
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            raise CannotStart(f"the {what} {path} must belong to this user and be private (chmod 600 {path})")
        return source.read()


def write_private(path: Path, text: str) -> None:
    """Replace `path` with a 0600 file holding `text`, atomically (readers never see half)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of ours; O_EXCL below refuses anything planted meanwhile
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())  # on disk before it replaces the old file (a key file's keys)
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(dir_fd)  # and the rename too
        finally:
            os.close(dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
