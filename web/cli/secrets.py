"""`localjobs secrets set/ls/rm`: the local secrets store that steps read with `from_secret`."""

from __future__ import annotations

import sys
from collections.abc import Callable

import click

from web.cli.common import client_options, json_option
from web.cli.connect import Api, ApiError
from web.cli.render import console, print_json, table


@click.group()
def secrets() -> None:
    """Secrets for steps (`environment: [{name: X, from_secret: {name: S}}]`)."""


@secrets.command(name="set")
@click.argument("name")
@click.argument("value", required=False)
@click.option("--description", help="what the secret is for")
@client_options
def set_secret(connect: Callable[[], Api], name: str, value: str | None, description: str | None) -> int:
    """Create or replace secret NAME. Without VALUE it is read from stdin (kept out of the shell's
    history and of `ps`)."""
    if value is None:
        value = (
            sys.stdin.read().removesuffix("\n")
            if not sys.stdin.isatty()
            else click.prompt(f"value of {name}", hide_input=True, err=True)
        )
    api = connect()
    body = {"name": name, "value": value, **({"description": description} if description else {})}
    try:
        api.call("POST", api.secrets_path, body)
    except ApiError as exc:
        if exc.status != 409:
            raise
        update = {"value": value, **({"description": description} if description else {})}
        api.call("PATCH", f"{api.secrets_path}/{name}", update)
    click.echo(f"secret {name} set")
    return 0


@secrets.command(name="ls")
@json_option
@client_options
def list_secrets(connect: Callable[[], Api], as_json: bool) -> int:
    """The workspace's secrets (names and descriptions; values never)."""
    api = connect()
    data = api.get(api.secrets_path, page_size=1000).get("data", [])
    if as_json:
        print_json(data)
        return 0
    grid = table("NAME", "DESCRIPTION", "UPDATED")
    for item in data:
        grid.add_row(item.get("name", ""), item.get("description") or "", item.get("updated_at", ""))
    console().print(grid if data else "no secrets")
    return 0


@secrets.command(name="rm")
@click.argument("names", nargs=-1, required=True)
@client_options
def remove_secrets(connect: Callable[[], Api], names: tuple[str, ...]) -> int:
    """Delete the named secrets."""
    api = connect()
    for name in names:
        api.call("DELETE", f"{api.secrets_path}/{name}")
        click.echo(f"secret {name} deleted")
    return 0
