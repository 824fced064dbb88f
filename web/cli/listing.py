"""`localjobs ls` (the jobs, with their current step, progress and what they hold or wait for) and
`localjobs status` (one job's steps and tasks)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

from web.cli import outcome
from web.cli.common import client_options, json_option
from web.cli.connect import Api, ApiError
from web.cli.render import (
    console,
    human_duration,
    job_times,
    percentage,
    print_json,
    progress_text,
    styled_status,
    table,
)

Connect = Callable[[], Api]


def _pages(api: Api, path: str, params: dict[str, Any], limit: int | None) -> Iterator[dict[str, Any]]:
    page, seen = 1, 0
    while True:
        data = api.get(path, **params, page=page)
        for item in data.get("data", []):
            yield item
            seen += 1
            if limit is not None and seen >= limit:
                return
        pagination = data.get("pagination") or {}
        if page >= int(pagination.get("total_pages") or 1):
            return
        page += 1


def _current_steps(api: Api) -> dict[str, str]:
    """Job name -> its unfinished step, in one request."""
    unfinished = "created,pending,active,pausing,paused,resuming,cancelling"
    path = api.jobs_path + "/-/steps"
    steps = _pages(api, path, {"filter[status]": unfinished, "page_size": 1000}, None)
    return {step.get("job", ""): step.get("name", "") for step in steps}


# `ls --all` over a long history asks for at most this many failed jobs' steps (one request each).
_FAILED_STEPS_LOOKED_UP = 100


def _failed_steps(api: Api, jobs: list[dict[str, Any]]) -> dict[str, str]:
    """Job name -> the step it failed or was cancelled in (as the dashboard shows it)."""
    failed = [j.get("name", "") for j in jobs if j.get("status") in ("error", "cancelled")]
    found: dict[str, str] = {}
    for name in failed[:_FAILED_STEPS_LOOKED_UP]:
        try:
            query = {"filter[status]": "error,cancelled", "page_size": 1}
            page = api.get(api.job_path(name) + "/steps", **query)
        except ApiError:
            continue  # deleted meanwhile: the row stays without its step
        if page.get("data"):
            found[name] = str(page["data"][0].get("name", ""))
    return found


def _progress_shown(job: dict[str, Any]) -> float | None:
    """What the workload last reported; a completed job that never said is done, as the
    dashboard shows it."""
    done = percentage(job)
    return 100.0 if done is None and job.get("status") == "completed" else done


@dataclass(frozen=True)
class _Holding:
    """What `ls` adds from the capacity route: GPUs each job's running step holds, and why a
    waiting step waits (for GPUs, CPUs or memory)."""

    machine_has_gpus: bool = False
    gpus: dict[str, str] = field(default_factory=dict)  # job name -> "0,1"
    waiting: dict[str, str] = field(default_factory=dict)  # job name -> reason

    @classmethod
    def of(cls, api: Api) -> _Holding:
        try:
            usage = api.get(_CAPACITY_PATH)
        except ApiError:
            return cls()  # an older daemon without the route: the list without the extras

        def ours(entry: dict[str, Any]) -> bool:
            return entry.get("workspace") == api.workspace

        return cls(
            machine_has_gpus=bool(usage.get("gpus", {}).get("total")),
            gpus={
                h["job"]: ",".join(str(g["index"]) for g in h["gpus"])
                for h in usage.get("held", [])
                if ours(h) and h["gpus"]
            },
            waiting={w["job"]: w["reason"] for w in usage.get("waiting", []) if ours(w)},
        )


_CAPACITY_PATH = "/apis/localjobs/v1/capacity"


@click.command(name="ls")
@click.option("--status", "-s", "statuses", multiple=True, help="only jobs with this status (repeatable)")
@click.option("--all", "-a", "show_all", is_flag=True, help="every job (default: the 20 newest)")
@json_option
@client_options
def ls(connect: Connect, statuses: tuple[str, ...], show_all: bool, as_json: bool) -> int:
    """List jobs, newest first: status, current step, progress, age, duration."""
    api = connect()
    params: dict[str, Any] = {"sort": "-created_at", "page_size": 100 if show_all else 20}
    if statuses:
        params["filter[status]"] = ",".join(statuses)
    jobs = list(_pages(api, api.jobs_path, params, None if show_all else 20))
    if as_json:
        print_json(jobs)
        return 0
    unfinished = any(j.get("status") not in outcome.FINISHED for j in jobs)
    current = {**_failed_steps(api, jobs), **(_current_steps(api) if unfinished else {})}
    holding = _Holding.of(api) if unfinished else _Holding()
    columns = ["NAME", "STATUS", "STEP", "PROGRESS", "AGE", "DURATION"]
    grid = table(*columns, *(["GPUS"] if holding.machine_has_gpus else []))
    for job in jobs:
        age, duration = job_times(job)
        name = job.get("name", "")
        row = [
            name,
            styled_status(str(job.get("status", ""))),
            current.get(name, ""),
            progress_text(_progress_shown(job)),
            human_duration(age),
            human_duration(duration),
        ]
        grid.add_row(*row, *([holding.gpus.get(name, "")] if holding.machine_has_gpus else []))
    out = console()
    if jobs:
        out.print(grid)
        for job in jobs:  # under the table: a reason is too long for a column
            if (reason := holding.waiting.get(job.get("name", ""))) is not None:
                out.print(f"{job['name']}: {reason}")
    else:
        out.print("no jobs" + (f" with status {', '.join(statuses)}" if statuses else ""))
    return 0


@click.command()
@click.argument("name")
@json_option
@client_options
def status(connect: Connect, name: str, as_json: bool) -> int:
    """The job's steps and tasks, with their messages and errors."""
    api = connect()
    tree = api.get(api.job_path(name) + "/status")
    if as_json:
        print_json(tree)
        return 0
    out = console()
    out.print(f"[bold]{tree.get('name')}[/] {styled_status(str(tree.get('status')))}{_detail_text(tree)}")
    for step in tree.get("steps", []):
        out.print(f"  step {step.get('name')} {styled_status(str(step.get('status')))}{_detail_text(step)}")
        for task in step.get("tasks", []):
            line = f"    task {task.get('name')} {styled_status(str(task.get('status')))}"
            out.print(line + _detail_text(task))
            for last in ((task.get("error_details") or {}).get("last_lines") or [])[-5:]:
                out.print(f"      | {last}", markup=False)
    return 0


def _detail_text(node: dict[str, Any]) -> str:
    parts = []
    details = node.get("status_details") or {}
    error = node.get("error_details") or {}
    message = error.get("message") or details.get("message")
    if message:
        parts.append(str(message))
    done = percentage(node)
    if done is not None:
        parts.append(f"{done:.0f}%")
    from rich.markup import escape

    return f" - {escape('; '.join(parts))}" if parts else ""


BY_NAME = {command.name: command for command in (ls, status)}
