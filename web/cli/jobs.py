"""Client commands for jobs: run, wait, ls, status, logs, cancel, pause, resume, rm."""

from __future__ import annotations

import functools
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any

import click

from web.cli import outcome
from web.cli.common import client_options, json_option
from web.cli.connect import Api, ApiError, ClientError, Unreachable
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
_STDERR_PREFIX = "[stderr] "
# A follow stream that ends before the job does (the daemon restarted): reconnect for this long.
_RECONNECT_FOR_S = 60.0
_JOB_FILE_SUFFIXES = (".json", ".yaml", ".yml")


# ------------------------------------------------------------------------------------ run


def _job_from_file(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml  # only for YAML files: keeps the other commands' start-up light

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise click.UsageError(f"{path}: a job file holds one object (the body of POST /jobs)")
    data.setdefault("source", "localjobs-cli")
    data.setdefault("spec", {})
    return data


def _parse_env(pairs: tuple[str, ...]) -> list[dict[str, str]]:
    variables = []
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.UsageError(f"--env {pair!r}: expected NAME=VALUE")
        variables.append({"name": name, "value": value})
    return variables


def _command_job(
    command: tuple[str, ...],
    env: tuple[str, ...],
    image: str | None,
    cpu: str | None,
    memory: str | None,
    gpus: int | None,
) -> dict[str, Any]:
    step: dict[str, Any] = {"name": "main", "environment": _parse_env(env)}
    if image is None:
        if cpu or memory or gpus:
            raise click.UsageError("--cpu, --memory and --gpus go with --image (a container step)")
        step["executor"] = {"provider": "subprocess", "command": list(command)}
    else:
        limits = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v}
        resources: dict[str, Any] = {"limits": limits} if limits else {}
        if gpus:
            resources["num_gpus"] = gpus
        step["executor"] = {
            "provider": "gpu" if gpus else "cpu",
            "container": {"image": image, "command": list(command)},
            **({"resources": resources} if resources else {}),
        }
    return {"source": "localjobs-cli", "spec": {}, "platform_spec": {"steps": [step]}}


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("args", nargs=-1, required=True, type=click.UNPROCESSED)
@click.option("--name", help="the job's name (default: generated)")
@click.option("--env", "-e", multiple=True, metavar="NAME=VALUE", help="a variable for the step (repeatable)")
@click.option("--image", help="run the command in this container image (a `cpu` step; `gpu` with --gpus)")
@click.option("--cpu", help="container CPU limit, e.g. 2 or 500m")
@click.option("--memory", help="container memory limit, e.g. 4Gi")
@click.option("--gpus", type=click.IntRange(min=0), help="GPUs for the container")
@click.option("--detach", "-d", is_flag=True, help="print the job's name and return at once")
@client_options
def run(
    connect: Connect,
    args: tuple[str, ...],
    name: str | None,
    env: tuple[str, ...],
    image: str | None,
    cpu: str | None,
    memory: str | None,
    gpus: int | None,
    detach: bool,
) -> int:
    """Submit a job, stream its logs until it ends, exit with its outcome.

    \b
    localjobs run job.yaml              a job file: the body of POST /jobs (YAML or JSON)
    localjobs run -- python train.py    a one-step subprocess job
    localjobs run --image busybox -- echo hi

    Exit code: 0 completed; the failed step's exit code; 128+N killed by signal N; 70 failed
    without an exit code; 75 cancelled; 65 refused by the daemon; 69 no daemon answers.
    Ctrl-C asks whether to cancel the job or detach; a second Ctrl-C cancels."""
    first = Path(args[0])
    if len(args) == 1 and first.suffix in _JOB_FILE_SUFFIXES and first.is_file():
        body = _job_from_file(first)
        if env or image:
            raise click.UsageError("--env and --image build a job from a command, not from a file")
    else:
        body = _command_job(args, env, image, cpu, memory, gpus)
    if name:
        body["name"] = name
    api = connect()
    try:
        job = api.call("POST", api.jobs_path, body)
    except KeyboardInterrupt:
        click.echo("\nlocaljobs: interrupted while submitting: see `localjobs ls`", err=True)
        return outcome.INTERRUPTED
    job_name = job["name"]
    if detach:
        click.echo(job_name)
        return 0
    return _attach(api, job_name)


def _attach(api: Api, name: str) -> int:
    """Stream the job's logs until it ends; Ctrl-C asks (cancel or detach)."""
    cursor: str | None = None
    cancelled = False
    announced = False
    with _progress(api, name):
        while True:
            try:
                if not announced:
                    click.echo(f"localjobs: job {name} submitted", err=True)
                    announced = True
                cursor = _follow(api, name, cursor)
                job = _job_when_finished(api, name)
                if job is not None:
                    return _report(job)
            except KeyboardInterrupt:
                if cancelled or _choose_cancel(name):
                    if not cancelled:
                        _cancel_quietly(api, name)
                        cancelled = True
                    continue
                click.echo(f"\nlocaljobs: detached; `localjobs logs -f {name}` follows again", err=True)
                return 0


def _choose_cancel(name: str) -> bool:
    """True: cancel. On a terminal, ask; a second Ctrl-C (or no terminal to ask on) cancels."""
    if not sys.stdin.isatty():
        return True
    try:
        answer = click.prompt(
            f"\ncancel job {name}? [c]ancel / [d]etach (Ctrl-C again: cancel)",
            default="c",
            show_default=False,
            err=True,
        )
    except (KeyboardInterrupt, click.exceptions.Abort):
        return True
    return not str(answer).strip().lower().startswith("d")


def _cancel_quietly(api: Api, name: str) -> None:
    click.echo(f"localjobs: cancelling {name}...", err=True)
    try:
        api.call("POST", api.job_path(name) + "/cancel")
    except ClientError as exc:
        click.echo(f"localjobs: {exc}", err=True)


def _follow(
    api: Api,
    name: str,
    cursor: str | None,
    printer: Callable[[dict[str, Any]], None] | None = None,
    **params: Any,
) -> str | None:
    """Print the job's lines as they come, until the daemon ends the stream (the job ended, or
    the daemon went away); returns the last cursor, to resume from without repeating a line."""
    query: dict[str, Any] = {"follow": "true", **{k: v for k, v in params.items() if v is not None}}
    if cursor:
        query["page_cursor"] = cursor
    deadline = time.monotonic() + _RECONNECT_FOR_S
    while True:
        try:
            for line in api.stream_lines(api.job_path(name) + "/logs", query):
                cursor = line.get("cursor", cursor)
                (printer or _echo_line)(line)
            return cursor
        except (OSError, HTTPException):
            return cursor  # cut mid-stream: the caller looks at the job, then resumes
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


def _job_when_finished(api: Api, name: str) -> dict[str, Any] | None:
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


def _report(job: dict[str, Any]) -> int:
    _, duration = job_times(job)
    status = job.get("status", "?")
    reason = outcome.reason_of(job) if status != "completed" else ""
    line = f"localjobs: job {job.get('name')} {status} in {human_duration(duration)}"
    click.echo(line + (f": {reason}" if reason else ""), err=True)
    return outcome.exit_code_of(job)


class _progress:
    """A progress bar from the job's `percentage_done`, on a terminal only, refreshed every second."""

    def __init__(self, api: Api, name: str) -> None:
        self._api = api
        self._name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _progress:
        if sys.stderr.isatty():
            self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        from rich.progress import BarColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            console=console(stderr=True),
            transient=True,
            # The job's stdout stays on stdout when that is a file or a pipe (`run ... > out`);
            # through the bar's console only when both are the same terminal.
            redirect_stdout=sys.stdout.isatty(),
            redirect_stderr=False,
        ) as bar:
            task = None
            while not self._stop.wait(1.0):
                try:
                    job = self._api.get(self._api.job_path(self._name))
                except ClientError:
                    continue
                done = percentage(job)
                if done is None:
                    continue
                if task is None:
                    task = bar.add_task(self._name, total=100)
                bar.update(task, completed=done)


# ------------------------------------------------------------------------------------ wait


@click.command()
@click.argument("name")
@click.option("--timeout", type=click.FloatRange(min=0), help="give up after this many seconds (exit 124)")
@json_option
@client_options
def wait(connect: Connect, name: str, timeout: float | None, as_json: bool) -> int:
    """Wait until job NAME ends; exit with its outcome (the codes of `run`)."""
    api = connect()
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.05
    while True:
        job = api.get(api.job_path(name))
        if job.get("status") in outcome.FINISHED:
            if as_json:
                print_json(job)
                return outcome.exit_code_of(job)
            return _report(job)
        if deadline is not None and time.monotonic() >= deadline:
            click.echo(f"localjobs: job {name} still {job.get('status')} after {timeout:g} s", err=True)
            return outcome.TIMED_OUT
        pause = delay if deadline is None else min(delay, max(0.0, deadline - time.monotonic()))
        time.sleep(pause)
        delay = min(delay * 2, 1.0)


# ------------------------------------------------------------------------------------ ls


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
    current = _current_steps(api) if unfinished else {}
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
            progress_text(percentage(job)),
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


# ------------------------------------------------------------------------------------ status


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


# ------------------------------------------------------------------------------------ logs


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
        cursor = None
        printer = functools.partial(_print_line, as_json=as_json)
        while True:
            first = cursor is None
            cursor = _follow(api, name, cursor, printer, step_id=step, tail=tail if first else None)
            if _job_when_finished(api, name) is not None:
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


# ------------------------------------------------------------------------------------ control


def _control(action: str, verb: str) -> click.Command:
    @click.command(name=action, help=f"{verb.capitalize()} the named jobs.")
    @click.argument("names", nargs=-1, required=True)
    @client_options
    def command(connect: Connect, names: tuple[str, ...]) -> int:
        api = connect()
        failed = 0
        for name in names:
            try:
                if action == "rm":
                    api.call("DELETE", api.job_path(name))
                    click.echo(f"{name} deleted")
                else:
                    job = api.call("POST", f"{api.job_path(name)}/{action}")
                    click.echo(f"{name} {job.get('status')}")
            except ApiError as exc:
                click.echo(f"localjobs: {name}: {exc}", err=True)
                failed = exc.exit_code
        return failed

    return command


COMMANDS = (
    run,
    wait,
    ls,
    status,
    logs,
    _control("cancel", "cancel"),
    _control("pause", "pause"),
    _control("resume", "resume"),
    _control("rm", "delete"),
)
BY_NAME = {command.name: command for command in COMMANDS}
