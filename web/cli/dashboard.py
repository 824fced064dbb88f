"""`localjobs dashboard`: the dashboard's login URL, for the daemon found as every client finds it.

The URL holds the token (opened, it signs the browser in and drops the token from the address),
so it is printed to the terminal of whoever asked, as `localjobs serve` does when it starts on one.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from web.cli.common import client_options
from web.cli.connect import Api
from web.cli.dashboard_url import login_url


@click.command()
@client_options
def dashboard(connect: Callable[[], Api]) -> int:
    """Print the web dashboard's login URL (it holds the token: keep it to yourself)."""
    api = connect()
    click.echo(login_url(api.target.url, api.target.token, api.workspace))
    return 0
