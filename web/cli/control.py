"""`localjobs cancel`, `pause`, `resume` and `rm`: one request per named job."""

from __future__ import annotations

from collections.abc import Callable

import click

from web.cli.common import client_options
from web.cli.connect import Api, ApiError

Connect = Callable[[], Api]


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
    _control("cancel", "cancel"),
    _control("pause", "pause"),
    _control("resume", "resume"),
    _control("rm", "delete"),
)
BY_NAME = {command.name: command for command in COMMANDS}
