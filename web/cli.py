"""`localjobs serve`: the entry point. The only place that reads flags and the environment."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from runner.daemon import Daemon
from runner.settings import ENV_PREFIX, Settings, load_settings
from storage import StorageError
from web.app import Server

log = logging.getLogger("localjobs")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localjobs", description="A local NeMo Platform Jobs API v2 daemon."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="start the daemon (every flag can also be set as LOCALJOBS_<NAME>;"
        " --keep-steps-running-on-shutdown as LOCALJOBS_STOP_STEPS_ON_SHUTDOWN=false)",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080; 0 picks a free one)")
    serve.add_argument("--data-dir", dest="data_dir", help="where the database and task folders live")
    serve.add_argument("--max-running-steps", dest="max_running_steps", type=int)
    serve.add_argument("--grace-period-s", dest="grace_period_s", type=float)
    serve.add_argument(
        "--keep-steps-running-on-shutdown",
        dest="stop_steps_on_shutdown",
        action="store_const",
        const=False,
        help="leave running steps alive on SIGTERM, for the next start to adopt",
    )
    serve.add_argument("--log-level", default=os.environ.get(ENV_PREFIX + "LOG_LEVEL", "INFO"))
    return parser


async def serve(settings: Settings) -> int:
    server = Server(Daemon(settings))
    # Handlers first: a signal that arrives while steps are being adopted still stops cleanly.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await server.start()
    except (StorageError, OSError) as exc:
        log.error("cannot start: %s", exc)
        await server.stop()
        return 1
    log.info("localjobs listening on %s (data in %s)", server.base_url, settings.data_dir)
    # Printed on stdout for scripts and tests that start the daemon on port 0.
    print(f"localjobs ready {server.base_url}", flush=True)
    waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(server.daemon.failed.wait())]
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    log.info("stopping")
    await server.stop()
    return 1 if server.daemon.failed.is_set() else 0


def _keep_inherited_descriptors() -> None:
    """What our own parent let us inherit (beyond stdin/stdout/stderr) must not reach the tasks:
    a task holding, say, a CI runner's pipe would keep its reader waiting."""
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # e.g. the listing's own, already closed
                os.set_inheritable(int(name), False)


def main(argv: list[str] | None = None) -> int:
    _keep_inherited_descriptors()
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    overrides = {k: v for k, v in vars(args).items() if k not in ("command", "log_level")}
    try:
        settings = load_settings(overrides, os.environ)
    except ValueError as exc:
        print(f"localjobs: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
