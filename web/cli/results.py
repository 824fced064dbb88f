"""`localjobs results NAME [get RESULT -o PATH]`: a job's results, and downloading one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from web.cli.common import client_options, json_option
from web.cli.connect import Api
from web.cli.render import console, print_json, table


@click.command()
@click.argument("name")
@click.argument("action", required=False, type=click.Choice(["get"]))
@click.argument("result", required=False)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    help="where `get` writes (a folder: the daemon's file name inside it; default: the current folder)",
)
@json_option
@client_options
def results(
    connect: Callable[[], Api],
    name: str,
    action: str | None,
    result: str | None,
    output: Path | None,
    as_json: bool,
) -> int:
    """List job NAME's results, or download one: `results NAME get RESULT [-o PATH]`.

    A file downloads as is; a folder as a .tar.gz."""
    api = connect()
    base = api.job_path(name) + "/results"
    if action == "get":
        if not result:
            raise click.UsageError("results NAME get RESULT: which result?")
        written, where = api.download(f"{base}/{result}/download", output or Path.cwd())
        click.echo(f"{where} ({written} bytes)", err=True)
        return 0
    data = api.get(base).get("data", [])
    if as_json:
        print_json(data)
        return 0
    grid = table("NAME", "ARTIFACT", "CREATED")
    for item in data:
        grid.add_row(item.get("name", ""), item.get("artifact_url", ""), item.get("created_at", ""))
    console().print(grid if data else f"job {name} has no results")
    return 0
