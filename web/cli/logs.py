"""`localjobs logs`, and following a job's log stream (what `run` prints too)."""

from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.client import HTTPException
from typing import Any

import click

from web.cli import outcome
from web.cli.common import client_options, json_option
from web.cli.connect import Api, Unreachable

Connect = Callable[[], Api]
_STDERR_PREFIX = "[stderr] "
# A follow stream that ends before the job does (the daemon restarted): reconnect for this long.
_RECONNECT_FOR_S = 60.0


@click.command()
@click.argument("name")
@click.option("--follow", "-f", is_flag=True, help="keep printing new lines until the job ends")
@click.option("--tail", "-n", type=click.IntRange(1, 10_000), help="only the last N lines")
@click.option("--step", help="only this step's lines")
@json_option
@client_options
def logs(connect: Connect, name: str, follow: bool, tail: int | None, step: str | None, as_json: bool) -> int:
    """Print the job's output (stderr lines to stderr); with -f, until the job ends."""
    api = connect()
    if follow:
        position = FollowPosition()
        printer = functools.partial(_print_line, as_json=as_json)
        while True:
            first = position.cursor is None
            follow_lines(api, name, position, printer, step_id=step, tail=tail if first else None)
            if job_when_finished(api, name) is not None:
                return 0
    path = api.job_path(name) + "/logs"
    params: dict[str, Any] = {"step_id": step}
    if tail is not None:
        params["tail"] = tail
        for line in api.get(path, **params).get("data", []):
            _print_line(line, as_json)
        return 0
    params["limit"] = 10_000
    while True:
        page = api.get(path, **params)
        for line in page.get("data", []):
            _print_line(line, as_json)
        if not page.get("next_page"):
            return 0
        params["page_cursor"] = page["next_page"]


def _print_line(line: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(line) + "\n")
        sys.stdout.flush()
    else:
        _echo_line(line)


@dataclass
class FollowPosition:
    """How far a follow has printed: the cursor of the last line shown (None: from the start).
    Moved on as each line is printed, so a follow cut anywhere, by Ctrl-C too, resumes after
    the last line shown instead of printing the log again."""

    cursor: str | None = None


def follow_lines(
    api: Api,
    name: str,
    position: FollowPosition,
    printer: Callable[[dict[str, Any]], None] | None = None,
    **params: Any,
) -> None:
    """Print the job's lines as they come, from `position` on, until the daemon ends the stream
    (the job ended, or the daemon went away)."""
    query: dict[str, Any] = {"follow": "true", **{k: v for k, v in params.items() if v is not None}}
    if position.cursor:
        query["page_cursor"] = position.cursor
    deadline = time.monotonic() + _RECONNECT_FOR_S
    while True:
        try:
            for line in api.stream_lines(api.job_path(name) + "/logs", query):
                cursor = line.get("cursor", position.cursor)
                try:
                    (printer or _echo_line)(line)
                finally:
                    # Stored even when a Ctrl-C lands in the printing: it is most often raised as
                    # the flush returns, the line shown. (Raised before the write, it costs that
                    # one line, where not storing it would print the whole log again.)
                    position.cursor = cursor
            return
        except (OSError, HTTPException):
            return  # cut mid-stream: the caller looks at the job, then resumes
        except Unreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)  # restarting: wait for it, within the bound


def _echo_line(line: dict[str, Any]) -> None:
    message = str(line.get("message", ""))
    if line.get("stream") == "stderr" or message.startswith(_STDERR_PREFIX):
        sys.stderr.write(message.removeprefix(_STDERR_PREFIX) + "\n")
        sys.stderr.flush()
    else:
        sys.stdout.write(message + "\n")
        sys.stdout.flush()


def job_when_finished(api: Api, name: str) -> dict[str, Any] | None:
    """The job once finished; None if it still runs (the stream ended early: reconnect)."""
    deadline = time.monotonic() + _RECONNECT_FOR_S
    while True:
        try:
            job: dict[str, Any] = api.get(api.job_path(name))
        except Unreachable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
            continue
        return job if job.get("status") in outcome.FINISHED else None


BY_NAME = {command.name: command for command in (logs,)}
