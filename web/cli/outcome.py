"""What a finished job means to a shell: the exit codes of `localjobs run` and `wait`.

The failed step's own exit code passes through (so `run -- pytest` fails the build as pytest
would); what has no exit code of its own gets a fixed code from the BSD sysexits range, far from
the codes programs usually use.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from typing import Any

COMPLETED = 0
USAGE = 2  # bad flags or arguments (click's own convention)
REFUSED = 65  # the daemon refused the request (422, 404, 409): sysexits EX_DATAERR
UNREACHABLE = 69  # no daemon answers: EX_UNAVAILABLE
ERROR_WITHOUT_CODE = 70  # the job failed with no exit code (time limit, staleness, start failure)
CANCELLED = 75  # the job was cancelled: EX_TEMPFAIL
TIMED_OUT = 124  # `wait --timeout` ran out first, as timeout(1)
INTERRUPTED = 130  # the user pressed Ctrl-C and left

FINISHED = frozenset({"completed", "error", "cancelled"})


def exit_code_of(job: Mapping[str, Any]) -> int:
    status = job.get("status")
    if status == "completed":
        return COMPLETED
    if status == "cancelled":
        return CANCELLED
    details = job.get("error_details") or {}
    code = details.get("exit_code") if isinstance(details, dict) else None
    if isinstance(details, dict) and details.get("signal"):
        code = None  # killed: the signal says more than the runtime's 128+N
    if isinstance(code, int) and not isinstance(code, bool) and 0 < code < 256:
        return code
    name = details.get("signal") if isinstance(details, dict) else None
    if isinstance(name, str) and name in signal.Signals.__members__:
        return 128 + signal.Signals[name].value  # as a shell reports a killed command
    return ERROR_WITHOUT_CODE


def reason_of(job: Mapping[str, Any]) -> str:
    details = job.get("error_details") or {}
    if isinstance(details, dict) and isinstance(details.get("message"), str):
        return str(details["message"])
    status_details = job.get("status_details") or {}
    if isinstance(status_details, dict) and isinstance(status_details.get("message"), str):
        return str(status_details["message"])
    return ""
