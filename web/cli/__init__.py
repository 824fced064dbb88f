"""The `localjobs` command: `serve` starts the daemon; the other commands are its clients.

Client commands import nothing of the daemon (no aiohttp, no SQLite), so `localjobs ls` answers
in about a tenth of a second. Each command returns its exit code (web/cli/outcome.py lists them).
"""

from __future__ import annotations

import importlib
import sys

import click

from web.cli.outcome import INTERRUPTED, USAGE

# The job commands, by module; each of these modules maps its commands' names to them in `BY_NAME`.
_JOB_MODULES = {
    "web.cli.run": ("run", "wait"),
    "web.cli.listing": ("ls", "status"),
    "web.cli.logs": ("logs",),
    "web.cli.control": ("cancel", "pause", "resume", "rm"),
}
_JOBS = tuple(name for names in _JOB_MODULES.values() for name in names)
# Each command's module is imported only when that command runs: `serve` loads no client code,
# a client command no daemon code.
_MODULES = {
    "serve": "web.cli.serve",
    "results": "web.cli.results",
    "secrets": "web.cli.secrets",
    "dashboard": "web.cli.dashboard",
    "gpus": "web.cli.capacity",
    "capacity": "web.cli.capacity",
}
_MODULES.update({name: module for module, names in _JOB_MODULES.items() for name in names})


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in _MODULES:
            return None
        module = importlib.import_module(_MODULES[cmd_name].replace("web.", f"{_ROOT}.", 1))
        command: click.Command = module.BY_NAME[cmd_name] if cmd_name in _JOBS else getattr(module, cmd_name)
        return command


# `web` in a checkout, `localjobs.web` when installed from the wheel.
_ROOT = __name__.rsplit(".", 1)[0]


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="localjobs", message="localjobs %(version)s")
def cli() -> None:
    """A local NeMo Platform Jobs API v2 daemon (`serve`) and its command line.

    Client commands find the daemon by themselves: --url/LOCALJOBS_URL and --token/LOCALJOBS_TOKEN
    when given, else the daemon running on --data-dir/LOCALJOBS_DATA_DIR (default: the same as
    `serve`'s)."""


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
