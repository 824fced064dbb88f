"""What every client command shares: how to reach the daemon, and how errors end a command."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

import click

from web.cli.connect import Api, ClientError, find_daemon


def client_options(command: Callable[..., int]) -> Callable[..., int]:
    """Adds --url/--token/--data-dir/--workspace and hands the command an `api` (found lazily)."""

    @click.option("--url", envvar="LOCALJOBS_URL", help="the daemon's URL (default: found in the data dir)")
    @click.option(
        "--token",
        envvar="LOCALJOBS_TOKEN",
        help="the API token (default: read from the data dir; prefer LOCALJOBS_TOKEN: a flag shows in ps)",
    )
    @click.option(
        "--data-dir",
        envvar="LOCALJOBS_DATA_DIR",
        type=click.Path(file_okay=False),
        help="the daemon's data dir, where its URL and token are found",
    )
    @click.option("--workspace", "-w", default="default", show_default=True, help="the jobs' workspace")
    @functools.wraps(command)
    def wrapper(
        url: str | None, token: str | None, data_dir: str | None, workspace: str, **kwargs: Any
    ) -> int:
        def connect() -> Api:
            return Api(find_daemon(url, token, data_dir, os.environ), workspace)

        try:
            return command(connect=connect, **kwargs)
        except ClientError as exc:
            click.echo(f"localjobs: {exc}", err=True)
            return exc.exit_code
        except BrokenPipeError:
            # `localjobs logs x | head`: the reader left; nothing more to say.
            sys.stderr.close()
            return 0

    return wrapper


def json_option(command: Callable[..., int]) -> Callable[..., int]:
    return click.option("--json", "as_json", is_flag=True, help="print JSON (for scripts)")(command)
