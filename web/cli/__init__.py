"""The `localjobs` command: `serve` starts the daemon; the other commands are its clients.

Client commands import nothing of the daemon (no aiohttp, no SQLite), so `localjobs ls` answers
in about a tenth of a second. Each command returns its exit code (web/cli/outcome.py lists them).
"""

from __future__ import annotations

import sys

import click

from web.cli.jobs import COMMANDS as JOB_COMMANDS
from web.cli.outcome import INTERRUPTED, USAGE
from web.cli.results import results
from web.cli.secrets import secrets
from web.cli.serve import serve


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="localjobs", message="localjobs %(version)s")
def cli() -> None:
    """A local NeMo Platform Jobs API v2 daemon (`serve`) and its command line.

    Client commands find the daemon by themselves: --url/LOCALJOBS_URL and --token/LOCALJOBS_TOKEN
    when given, else the daemon running on --data-dir/LOCALJOBS_DATA_DIR (default: the same as
    `serve`'s)."""


cli.add_command(serve)
for command in (*JOB_COMMANDS, results, secrets):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    try:
        code = cli.main(args=argv, prog_name="localjobs", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return INTERRUPTED
    except click.UsageError as exc:
        exc.show()
        return USAGE
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
