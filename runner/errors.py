"""Errors raised by the runner. The web layer maps each class to one HTTP status in one middleware.

The web layer reaches storage's errors only through this module: `StorageError` (the root of
storage/errors.py; the store failed, HTTP 503) is re-exported here, as it is raised through the
runner untranslated (a caller can only try again later)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from storage.errors import StorageError as StorageError


class RunnerError(Exception):
    """Root of every error the runner reports to its callers."""


class NotFound(RunnerError):
    """The job, step, task or result does not exist (HTTP 404)."""


class Conflict(RunnerError):
    """The request clashes with the current state: a taken name, a forbidden transition (HTTP 409)."""


class Unprocessable(RunnerError):
    """The request is well-formed but cannot be honoured, e.g. an unknown profile (HTTP 422)."""


class BadRequest(RunnerError):
    """Parameters that contradict each other, e.g. `tail` with `page_cursor` (HTTP 400)."""


class CannotStart(RunnerError):
    """The daemon must not start: its data dir is in use, its token cannot be read, an unsafe setting."""


def __getattr__(name: str) -> Any:
    """`StorageError`, imported on first use: client commands import this module (through
    runner/datadir.py) and must not load the store (aiosqlite, the models) to print a job list."""
    if name == "StorageError":
        from storage.errors import StorageError

        return StorageError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
