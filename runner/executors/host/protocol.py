"""What the daemon and the launcher say to each other: the launcher's command line, the messages
over their SOCK_SEQPACKET pair, and the marker every task carries. Both ends import this module:
the daemon's client (launcher_client.py) and the launcher program (launcher.py), which runs under
`python -S` and so may import the standard library only (tests/test_launcher.py checks it). It
imports nothing of localjobs.

The wire format is one JSON object per message (a datagram never splits or joins them):

  daemon -> launcher  StartRequest  {"id", "argv", "env", "work_dir", "folders", "config_file",
                                     "config", "stdout", "stderr", "exit_file", "order", "cwd"}
                      StopRequest   {"stop": pid, "start_ticks", "grace_s"}: SIGTERM to the task's
                                    whole tree, SIGKILL after grace_s (no answer)
  launcher -> daemon  StartedReply  {"id", "pid", "start_ticks"}, with a pidfd of the process
                                    attached (SCM_RIGHTS: no pid-reuse race)
                      StartFailed   {"id", "error"} (id None: the request could not be read)
                      Wrote         {"wrote": pid, "start_ticks"}: the task's first output is in its
                                    files (once per task: the daemon follows them from then on)
                      Exited        {"exited": pid, "start_ticks", "code", "output"}: `code` is in
                                    the task's exit-status file and what the task left running is
                                    gone; `output`: [stdout, stderr, order] sizes of its output
                                    files as the launcher left them (null: it did not capture it)
                      Idle          {"idle": true}: no task and no request for IDLE seconds

Exit codes are as a shell reports them (`128+S` for signal S).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

# Below the default socket buffer (net.core.wmem_default: 208 KiB). A larger start request is
# made by the daemon itself.
MAX_MESSAGE = 192 * 1024
# Set in the environment of every task (and so of what it starts): `localjobs-task:<owner>:<task>`.
TASK_MARKER_VARIABLE = "LOCALJOBS_TASK"
MARKER_PREFIX = "localjobs-task:"
# The launcher's file descriptor for its end of the pair, in its command line.
LAUNCHER_FD = 3
_KEEP = "keep"


def _stdlib_json(value: object) -> bytes:
    return json.dumps(value).encode()


class BadMessage(ValueError):
    """A message that is not what the protocol says; `request_id` when it could be read."""

    def __init__(self, why: str, request_id: int | None = None) -> None:
        super().__init__(why)
        self.request_id = request_id


# ------------------------------------------------------------------ the command line


@dataclass(frozen=True, slots=True)
class LauncherArgs:
    """`FD IDLE [GRACE]`: FD its end of the pair; IDLE seconds before it says it is idle; GRACE
    seconds from SIGTERM to SIGKILL for what a task leaves running (`keep`, or absent: such
    processes are left alone, as the reference does)."""

    fd: int
    idle_s: float
    leftover_grace_s: float | None

    def to_argv(self) -> list[str]:
        grace = _KEEP if self.leftover_grace_s is None else str(self.leftover_grace_s)
        return [str(self.fd), str(self.idle_s), grace]

    @classmethod
    def from_argv(cls, args: list[str]) -> LauncherArgs:
        grace = args[2] if len(args) > 2 else _KEEP
        return cls(int(args[0]), float(args[1]), None if grace == _KEEP else float(grace))


# ------------------------------------------------------------------ daemon -> launcher


@dataclass(frozen=True, slots=True)
class TaskStart:
    """What to start: make the task's folders and config file, then start `argv` in a new
    session, in `cwd` (empty: `work_dir`, the task's folder), with `env`, stdin /dev/null and
    stdout/stderr appended to files (through the launcher's pipes when `order` is given)."""

    argv: list[str]
    env: dict[str, str]
    work_dir: str
    folders: list[str]
    config_file: str
    config: str  # the config file's text
    stdout: str
    stderr: str
    exit_file: str  # where the exit status is written
    # Where the launcher records the order of the task's output (capture.py), the task writing
    # through pipes to it; empty: the task writes to the output files itself.
    order: str = ""
    cwd: str = ""

    @property
    def marker(self) -> str | None:
        return self.env.get(TASK_MARKER_VARIABLE)


@dataclass(frozen=True, slots=True)
class StartRequest:
    id: int  # repeated in the answer
    task: TaskStart

    def encode(self, dumps: Callable[[object], bytes] = _stdlib_json) -> bytes:
        """`dumps`: the daemon passes a faster encoder (the launcher decodes any JSON); the
        task's environment is most of a request."""
        task = self.task
        return dumps(
            {
                "argv": task.argv,
                "env": task.env,
                "work_dir": task.work_dir,
                "folders": task.folders,
                "config_file": task.config_file,
                "config": task.config,
                "stdout": task.stdout,
                "stderr": task.stderr,
                "exit_file": task.exit_file,
                "order": task.order,
                "cwd": task.cwd,
                "id": self.id,
            }
        )


@dataclass(frozen=True, slots=True)
class StopRequest:
    pid: int
    start_ticks: int | None
    grace_s: float

    def encode(self) -> bytes:
        message = {"stop": self.pid, "start_ticks": self.start_ticks, "grace_s": self.grace_s}
        return json.dumps(message).encode()


def decode_request(data: bytes) -> StartRequest | StopRequest:
    """Raises BadMessage."""
    message = _object(data)
    try:
        if "stop" in message:
            return StopRequest(_int(message["stop"]), _ticks(message), _float(message["grace_s"]))
        request_id = _int(message["id"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"bad request: {exc!r}") from exc
    try:
        task = TaskStart(
            argv=_strings(message["argv"]),
            env=_env(message["env"]),
            work_dir=_string(message["work_dir"]),
            folders=_strings(message["folders"]),
            config_file=_string(message["config_file"]),
            config=_string(message["config"]),
            stdout=_string(message["stdout"]),
            stderr=_string(message["stderr"]),
            exit_file=_string(message["exit_file"]),
            order=_string(message.get("order", "")),
            cwd=_string(message.get("cwd", "")),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"bad start request: {exc!r}", request_id) from exc
    if not task.argv:
        raise BadMessage("bad start request: no argv", request_id)
    return StartRequest(request_id, task)


# ------------------------------------------------------------------ launcher -> daemon


@dataclass(frozen=True, slots=True)
class StartedReply:
    id: int
    pid: int
    start_ticks: int | None

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "pid": self.pid, "start_ticks": self.start_ticks}).encode()


@dataclass(frozen=True, slots=True)
class StartFailed:
    id: int | None
    error: str

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "error": self.error}).encode()


@dataclass(frozen=True, slots=True)
class Wrote:
    pid: int
    start_ticks: int | None

    def encode(self) -> bytes:
        return json.dumps({"wrote": self.pid, "start_ticks": self.start_ticks}).encode()


@dataclass(frozen=True, slots=True)
class Exited:
    pid: int
    start_ticks: int | None
    code: int
    # Sizes of the task's stdout, stderr and order files once the launcher is done with them.
    output: tuple[int, int, int] | None = None

    def encode(self) -> bytes:
        message = {
            "exited": self.pid,
            "start_ticks": self.start_ticks,
            "code": self.code,
            "output": None if self.output is None else list(self.output),
        }
        return json.dumps(message).encode()


@dataclass(frozen=True, slots=True)
class Idle:
    def encode(self) -> bytes:
        return b'{"idle": true}'


def decode_report(
    data: bytes, loads: Callable[[bytes], object] = json.loads
) -> StartedReply | StartFailed | Wrote | Exited | Idle:
    """Raises BadMessage. `loads`: the daemon passes a compiled parser (storage/json_text.py:
    the standard library's took ~6% of its event loop's time for `true` jobs)."""
    message = _object(data, loads)
    try:
        if message.get("idle"):
            return Idle()
        if "wrote" in message:
            return Wrote(_int(message["wrote"]), _ticks(message))
        if "exited" in message:
            output = _sizes(message.get("output"))
            return Exited(_int(message["exited"]), _ticks(message), _int(message["code"]), output)
        if "error" in message:
            request_id = message.get("id")
            return StartFailed(request_id if isinstance(request_id, int) else None, str(message["error"]))
        return StartedReply(_int(message["id"]), _int(message["pid"]), _ticks(message))
    except (KeyError, TypeError, ValueError) as exc:
        raise BadMessage(f"bad report: {exc!r}") from exc


# ------------------------------------------------------------------ inside


def _object(data: bytes, loads: Callable[[bytes], object] = json.loads) -> dict[str, object]:
    try:
        message = loads(data)
    except ValueError as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise BadMessage("not a JSON object")
    return message


def _ticks(message: dict[str, object]) -> int | None:
    ticks = message["start_ticks"]
    return None if ticks is None else _int(ticks)


def _int(value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError(f"not an integer: {value!r}")


def _sizes(value: object) -> tuple[int, int, int] | None:
    if value is None:
        return None
    if isinstance(value, list) and len(value) == 3:
        stdout, stderr, order = (_int(item) for item in value)
        if min(stdout, stderr, order) >= 0:
            return stdout, stderr, order
    raise TypeError(f"not three sizes: {value!r}")


def _float(value: object) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"not a number: {value!r}")


def _string(value: object) -> str:
    if isinstance(value, str):
        return value
    raise TypeError(f"not a string: {value!r}")


def _strings(value: object) -> list[str]:
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    raise TypeError(f"not a list of strings: {value!r}")


def _env(value: object) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return value
    raise TypeError(f"not an environment: {value!r}")
