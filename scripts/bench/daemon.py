"""The daemon under test, as a child process: tests/daemon_process.py's DaemonProcess (the one
helper the tests use too), started the way every section wants it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import psutil

from scripts.bench.common import ROOT, SOURCE, log
from tests.daemon_process import DaemonProcess, launchers_of

# Every daemon runs with this token and every request sends it, unless --no-auth (an A/B of the
# token's cost) starts the daemons without one.
BENCH_TOKEN = "bench-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {BENCH_TOKEN}"}
NO_AUTH = False  # set from --no-auth (scripts/bench/cli.py)


def bench_daemon(
    data_dir: Path,
    log_dir: Path,
    label: str,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> DaemonProcess:
    """`localjobs serve --port 0 --data-dir DATA_DIR`, output under LOG_DIR/LABEL/, in a session of
    its own, SIGTERM'd should the bench die; with --source, the code comes from SOURCE."""
    env = dict(extra_env or {})
    if SOURCE != ROOT:
        # Ahead of the venv's editable install (its finder comes after sys.path entries).
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), os.environ.get("PYTHONPATH")]))
    return DaemonProcess(
        log_dir / label,
        data_dir=data_dir,
        host=None,
        port=0,
        args=[*(["--no-auth"] if NO_AUTH else []), *extra_args],
        env=env,
        token=None if NO_AUTH else BENCH_TOKEN,
        detached=True,
    )


@contextlib.asynccontextmanager
async def running_daemon(
    data_dir: Path,
    log_dir: Path,
    label: str,
    extra_args: Sequence[str] = (),
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[DaemonProcess]:
    daemon = bench_daemon(data_dir, log_dir, label, extra_args, extra_env)
    try:
        await daemon.astart(timeout_s=60.0)
        yield daemon
    finally:
        daemon.close(grace_s=30.0)
        if daemon.returncode not in (0, None):
            log(f"daemon {label} exited with {daemon.returncode}; stderr tail:\n{daemon.stderr_tail()}")


def launcher(daemon: DaemonProcess) -> psutil.Process | None:
    """The daemon's task launcher (runner/executors/host/launcher.py), while it runs."""
    found = launchers_of(daemon.pid)
    return found[0] if found else None
