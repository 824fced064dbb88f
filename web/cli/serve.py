"""`localjobs serve`: starts the daemon. The only place that reads its flags and the environment.

The daemon's modules are imported when `serve` runs, not when the `localjobs` program starts, so
that the client commands start fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from runner.datadir import DataDirLock
    from runner.settings import Settings

log = logging.getLogger("localjobs")

_FLAG_HELP = (
    "Every flag can also be set as LOCALJOBS_<NAME> (flags win); "
    "--keep-steps-running-on-shutdown as LOCALJOBS_STOP_STEPS_ON_SHUTDOWN=false."
)


@click.command(help=f"Start the daemon. {_FLAG_HELP}")
@click.option("--host", help="address to listen on (default 127.0.0.1)")
@click.option("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
@click.option("--data-dir", help="where the database, the token and task folders live")
@click.option("--max-running-steps", type=int, help="steps running at once (default 64)")
@click.option("--grace-period-s", type=float, help="SIGTERM to SIGKILL, for cancel and shutdown")
@click.option(
    "--keep-steps-running-on-shutdown",
    "keep_running",
    is_flag=True,
    default=None,
    help="leave running steps alive on SIGTERM, for the next start to adopt",
)
@click.option(
    "--token-file",
    help="file holding the API token (default: <data-dir>/token, created at first start;"
    " LOCALJOBS_TOKEN gives the token itself)",
)
@click.option(
    "--no-auth",
    is_flag=True,
    default=None,
    help="no token (loopback addresses only): every local user can then run commands as you",
)
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    metavar="HOST",
    help="a Host header value to accept besides loopback and this machine's names (repeatable)",
)
@click.option("--max-body-bytes", type=int, help="largest request body (default 4 MiB)")
@click.option(
    "--profiles",
    "profiles_file",
    metavar="FILE",
    help="more execution profiles (YAML, the reference's jobs.executors fields); see the README",
)
@click.option(
    "--keep-leftover-processes",
    is_flag=True,
    default=None,
    help="leave running what a step's main process leaves behind (default: SIGTERM, grace, SIGKILL)",
)
@click.option(
    "--gpus",
    "gpus",
    metavar="LIST",
    help="the GPUs to schedule on: indices or UUIDs, `0,1` (default: all that NVML finds)",
)
@click.option("--cpus", type=float, help="CPUs to admit resource requests against (default: this machine's)")
@click.option(
    "--memory",
    metavar="QUANTITY",
    help="memory to admit requests against, e.g. 16Gi (default: this machine's)",
)
@click.option("--log-level", envvar="LOCALJOBS_LOG_LEVEL", default="INFO", show_default=True)
def serve(log_level: str, keep_running: bool | None, allowed_hosts: tuple[str, ...], **flags: Any) -> int:
    from runner.settings import load_settings

    _keep_inherited_descriptors()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides: dict[str, object] = dict(flags)
    if keep_running:
        overrides["stop_steps_on_shutdown"] = False
    if allowed_hosts:
        overrides["allowed_hosts"] = ",".join(allowed_hosts)
    try:
        settings = load_settings(overrides, os.environ)
    except ValueError as exc:
        click.echo(f"localjobs: {exc}", err=True)
        return 2
    from runner import datadir
    from runner.errors import CannotStart

    # Before the daemon's modules load: a second `serve` on this data dir is refused at once.
    try:
        datadir.prepare(settings.data_dir)
        lock = datadir.DataDirLock.claim(settings.data_dir)
    except (CannotStart, OSError) as exc:
        click.echo(f"localjobs: cannot start: {exc}", err=True)
        return 1
    try:
        factory = _loop_factory(settings.event_loop)
    except ImportError:
        click.echo(
            "localjobs: uvloop is not installed: install it, or set LOCALJOBS_EVENT_LOOP=asyncio", err=True
        )
        lock.release()
        return 2
    return asyncio.run(_serve(settings, lock), loop_factory=factory)


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


async def _serve(settings: Settings, lock: DataDirLock) -> int:
    from runner.daemon import Daemon
    from runner.errors import CannotStart, StorageError
    from web.app import Server

    server = Server(Daemon(settings, lock=lock))
    # Handlers first: a signal that arrives while steps are being adopted still stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    log.info("event loop: %s", "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio")
    # SIGHUP too (its terminal closed): a clean stop releases the data dir and ends the steps.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (StorageError, OSError, CannotStart) as exc:
        log.error("cannot start: %s", exc)
        print(f"localjobs: cannot start: {exc}", file=sys.stderr, flush=True)
        await server.stop()
        return 1
    log.info("localjobs listening on %s (data in %s)", server.base_url, settings.data_dir)
    if server.token is not None:
        source = "LOCALJOBS_TOKEN" if settings.token else str(settings.token_path)
        log.info("API token: %s (clients send 'Authorization: Bearer <token>')", source)
    # Printed on stdout for scripts and tests that start the daemon on port 0.
    print(f"localjobs ready {server.base_url}", flush=True)
    _tell_dashboard(server.base_url, server.token)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(server.daemon.failed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    log.info("stopping")
    await server.stop()
    return 1 if server.daemon.failed.is_set() else 0


def _tell_dashboard(base_url: str, token: str | None) -> None:
    """The dashboard's login URL on stderr, with the token in it only when stderr is a terminal:
    the owner's own screen (as Jupyter's), never a file or a journal that keeps what a redirected
    stderr says. Printed, not logged: no log handler ever sees it."""
    from web.cli.dashboard_url import login_url

    if token is None or sys.stderr.isatty():
        print(f"localjobs dashboard: {login_url(base_url, token)}", file=sys.stderr, flush=True)
    else:
        print(
            f"localjobs dashboard: {login_url(base_url, None)} "
            "(log in with the token; `localjobs dashboard` prints a login URL)",
            file=sys.stderr,
            flush=True,
        )


def _keep_inherited_descriptors() -> None:
    """What our own parent let us inherit (beyond stdin/stdout/stderr) must not reach the tasks:
    a task holding, say, a CI runner's pipe would keep its reader waiting."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # e.g. the listing's own, already closed
                os.set_inheritable(int(name), False)
