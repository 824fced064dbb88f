"""Errors raised by the runner. The web layer maps each class to one HTTP status in one middleware."""

from __future__ import annotations


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
