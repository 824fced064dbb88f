"""Errors raised by storage. sqlite3 errors never leave this package untranslated."""

from __future__ import annotations

import sqlite3

# What SQLite's primary result codes mean to someone running the daemon, in words that name no
# file, job or query: these phrases are also what the open /health endpoint tells.
_CAUSES = {
    sqlite3.SQLITE_FULL: "no space left on device",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_BUSY: "the database is locked by another program",
    sqlite3.SQLITE_LOCKED: "the database is locked by another program",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_PERM: "permission denied",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_CORRUPT: "the database file is damaged",
    sqlite3.SQLITE_NOTADB: "the database file is damaged",
}
UNKNOWN_CAUSE = "writes fail (see the daemon's log)"


class StorageError(Exception):
    """Root of every storage error."""


class AlreadyExists(StorageError):
    """A unique name is already taken."""


class StorageUnavailable(StorageError):
    """The database file could not be opened, migrated or written. `cause` says why in plain
    words (e.g. "no space left on device"), fit to be shown to anyone; None when the write's own
    statement was at fault (a bug), which says nothing of the store's health."""

    def __init__(self, message: str, cause: str | None = UNKNOWN_CAUSE) -> None:
        super().__init__(message)
        self.cause = cause


class Gone(StorageError):
    """What a write refers to no longer exists (e.g. its job was deleted meanwhile)."""


def cannot_write(exc: sqlite3.Error) -> StorageUnavailable:
    """A write's sqlite3 failure as the package's error, chained, its cause in plain words."""
    if isinstance(exc, sqlite3.ProgrammingError | sqlite3.InterfaceError | sqlite3.DataError):
        failure = StorageUnavailable(f"write failed: {exc}", None)
        failure.__cause__ = exc
        return failure
    code = getattr(exc, "sqlite_errorcode", None)
    cause = _CAUSES.get(code & 0xFF, UNKNOWN_CAUSE) if isinstance(code, int) else UNKNOWN_CAUSE
    failure = StorageUnavailable(f"write failed: {cause} ({exc})", cause)
    failure.__cause__ = exc
    return failure
