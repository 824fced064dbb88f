"""`localjobs run` (submit, stream the logs with a progress bar, exit with the outcome) and `wait`."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from web.cli import outcome
from web.cli.common import client_options, json_option
from web.cli.connect import Api, ClientError
from web.cli.logs import FollowPosition, follow_lines, job_when_finished
from web.cli.render import (
    console,
    human_duration,
    job_times,
    percentage,
    print_json,
)

Connect = Callable[[], Api]
_JOB_FILE_SUFFIXES = (".json", ".yaml", ".yml")


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


# Read by the daemon's host executor: a subprocess step starts there, not in its task's folder.
_WORKDIR_VARIABLE = "LOCALJOBS_WORKDIR"


def _current_directory() -> Path:
    try:
        return Path.cwd()
    except OSError as exc:  # e.g. deleted under the shell
        gone = f"the current directory is gone ({exc}): use -C DIR or --in-task-folder"
        raise click.UsageError(gone) from exc


def _command_job(
    command: tuple[str, ...],
    env: tuple[str, ...],
    image: str | None,
    cpu: str | None,
    memory: str | None,
    gpus: int | None,
    workdir: Path | None,
) -> dict[str, Any]:
    variables = _parse_env(env)
    step: dict[str, Any] = {"name": "main", "environment": variables}
    if image is None:
        if cpu or memory or gpus:
            raise click.UsageError("--cpu, --memory and --gpus go with --image (a container step)")
        if workdir is not None and not any(v["name"] == _WORKDIR_VARIABLE for v in variables):
            # Where task-spooler and Slurm run a job: where it was submitted. The task's own
            # folder (the API's default) would not hold `train.py` or `./nightly.sh`.
            variables.append({"name": _WORKDIR_VARIABLE, "value": str(workdir.resolve())})
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
@click.option(
    "--workdir",
    "-C",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="directory a command runs in (default: the current one)",
)
@click.option(
    "--in-task-folder",
    is_flag=True,
    help="run the command in the task's own folder, as a job submitted over the API runs",
)
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
    workdir: Path | None,
    in_task_folder: bool,
    detach: bool,
) -> int:
    """Submit a job, stream its logs until it ends, exit with its outcome.

    \b
    localjobs run job.yaml              a job file: the body of POST /jobs (YAML or JSON)
    localjobs run -- python train.py    a one-step subprocess job, run in this directory
    localjobs run --image busybox -- echo hi

    Exit code: 0 completed; the failed step's exit code; 128+N killed by signal N; 70 failed
    without an exit code; 75 cancelled; 65 refused by the daemon; 69 no daemon answers.
    Ctrl-C asks whether to cancel the job or detach; a second Ctrl-C cancels."""
    first = Path(args[0])
    if len(args) == 1 and first.suffix in _JOB_FILE_SUFFIXES:
        if not first.is_file():
            raise click.UsageError(f"{first}: no such job file")
        if env or image or workdir or in_task_folder:
            raise click.UsageError("--env, --image and --workdir build a job from a command, not from a file")
        body = _job_from_file(first)
    else:
        if workdir is not None and (in_task_folder or image):
            raise click.UsageError("--workdir goes with a host command: not with --in-task-folder or --image")
        chosen = None if in_task_folder or image else (workdir or _current_directory())
        body = _command_job(args, env, image, cpu, memory, gpus, chosen)
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
    position = FollowPosition()
    cancelled = False
    announced = False
    with _progress(api, name):
        while True:
            try:
                if not announced:
                    click.echo(f"localjobs: job {name} submitted", err=True)
                    announced = True
                follow_lines(api, name, position)
                job = job_when_finished(api, name)
                if job is not None:
                    return _report(job)
            except KeyboardInterrupt:
                if cancelled or _choose_cancel(name):
                    if not cancelled:
                        # Asked again at the next Ctrl-C if the daemon did not take it.
                        cancelled = _cancel_quietly(api, name)
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


def _cancel_quietly(api: Api, name: str) -> bool:
    """Whether the daemon took the cancel."""
    click.echo(f"localjobs: cancelling {name}...", err=True)
    try:
        api.call("POST", api.job_path(name) + "/cancel")
    except ClientError as exc:
        click.echo(f"localjobs: {exc}", err=True)
        return False
    return True


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


BY_NAME = {command.name: command for command in (run, wait)}
