"""`localjobs serve` as a real child process, for tests that need signals, restarts and the CLI.

    daemon = DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data")
    url = daemon.start()            # spawns `localjobs serve --port 0 ...`, waits for the ready line
    ...
    rc = daemon.stop()              # SIGTERM, bounded wait, SIGKILL as a last resort
    daemon.close()                  # always safe: kills what is left (daemon and its task processes)

Every wait is bounded. Output goes to files (never pipes), so a chatty daemon can not block on a
full pipe and the files can be read at any time for assertions and failure messages.

The one helper that runs the daemon as a child process: the tests and the benchmarks
(`scripts/bench/`, `scripts/bench_dashboard.py`) use it. `await daemon.astart()` waits for the
ready line without blocking an event loop; `detached=True` gives the daemon a session of its own
and SIGTERM should this process die (what a benchmark wants: no daemon outlives it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

import psutil

from runner.settings import ENV_PREFIX

# The token every test daemon runs with (LOCALJOBS_TOKEN), unless a test's env says otherwise.
TEST_TOKEN = "test-token-0123456789abcdef"
AUTH_HEADERS = {"Authorization": f"Bearer {TEST_TOKEN}"}
READY = re.compile(r"^localjobs ready (http://\S+)$", re.MULTILINE)
REPO_ROOT = Path(__file__).resolve().parent.parent
TASK_MARKER = "localjobs-task:"


def die_with_parent() -> None:
    # If this process is killed, the daemon gets SIGTERM instead of lingering (Linux only).
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class DaemonError(AssertionError):
    """The daemon did not start, did not stop in time, or died: the message carries its output."""


def localjobs_command() -> list[str]:
    """The console script next to the running interpreter (the venv's), else `python -m web.cli`."""
    script = Path(sys.executable).parent / "localjobs"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "web.cli"]


def clean_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without any LOCALJOBS_* variable, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(extra or {})
    return env


class DaemonProcess:
    """One daemon configuration; `start()` may be called again after `stop()` (a restart)."""

    def __init__(
        self,
        log_dir: Path,
        *,
        data_dir: Path | None = None,
        host: str | None = "127.0.0.1",
        port: int | None = 0,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        token: str | None = TEST_TOKEN,
        detached: bool = False,
    ) -> None:
        """`token` goes in LOCALJOBS_TOKEN (None: not set); `env` may override it. `detached`: a
        session of its own (SIGKILL then ends the whole process group) and SIGTERM when this
        process dies."""
        self.log_dir = log_dir
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.args = list(args)
        self.env = {**({ENV_PREFIX + "TOKEN": token} if token is not None else {}), **(env or {})}
        self.detached = detached
        self.proc: subprocess.Popen[bytes] | None = None
        self.base_url = ""
        self.returncode: int | None = None
        self.startup_s = float("nan")  # launch -> ready line, of the last start
        self._launched_at = 0.0
        self._runs = 0
        self._stdout_path = log_dir / "stdout.log"
        self._stderr_path = log_dir / "stderr.log"

    # ------------------------------------------------------------------ starting

    def argv(self) -> list[str]:
        argv = [*localjobs_command(), "serve"]
        if self.host is not None:
            argv += ["--host", self.host]
        if self.port is not None:
            argv += ["--port", str(self.port)]
        if self.data_dir is not None:
            argv += ["--data-dir", str(self.data_dir)]
        return [*argv, *self.args]

    def launch(self) -> subprocess.Popen[bytes]:
        """Spawn the process without waiting for anything."""
        if self.proc is not None and self.proc.poll() is None:
            raise DaemonError("the daemon is already running")
        self._runs += 1
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._stdout_path = self.log_dir / f"stdout-{self._runs}.log"
        self._stderr_path = self.log_dir / f"stderr-{self._runs}.log"
        self.base_url = ""
        self.returncode = None
        self.startup_s = float("nan")
        self._launched_at = time.monotonic()
        with self._stdout_path.open("wb") as out, self._stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=clean_environment(self.env),
                cwd=REPO_ROOT,
                start_new_session=self.detached,
                preexec_fn=die_with_parent if self.detached else None,
            )
        return self.proc

    def _ready(self, deadline: float, timeout_s: float) -> bool:
        """One look for the ready line: True once seen; DaemonError if the process exited or
        `deadline` passed (then it is killed)."""
        proc = self._require_proc()
        match = READY.search(self.stdout)
        if match:
            self.base_url = match.group(1)
            self.startup_s = time.monotonic() - self._launched_at
            return True
        if proc.poll() is not None:
            self.returncode = proc.returncode
            raise DaemonError(f"the daemon exited with code {proc.returncode} before it was ready\n{self}")
        if time.monotonic() > deadline:
            self.kill()
            raise DaemonError(f"no ready line within {timeout_s}s\n{self}")
        return False

    def wait_ready(self, timeout_s: float = 20.0) -> str:
        """Wait for the `localjobs ready URL` line; fail (and kill the process) if it never comes."""
        deadline = time.monotonic() + timeout_s
        while not self._ready(deadline, timeout_s):
            time.sleep(0.02)
        return self.base_url

    def start(self, timeout_s: float = 20.0) -> str:
        self.launch()
        return self.wait_ready(timeout_s)

    async def astart(self, timeout_s: float = 20.0, poll_s: float = 0.01) -> str:
        """`start()` for a caller on an event loop: the wait does not block the loop."""
        self.launch()
        deadline = time.monotonic() + timeout_s
        while True:
            if self._ready(deadline, timeout_s):
                return self.base_url
            await asyncio.sleep(poll_s)

    @property
    def token(self) -> str:
        return self.env.get(ENV_PREFIX + "TOKEN", "")

    @property
    def headers(self) -> dict[str, str]:
        """The Authorization header a client of this daemon sends."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    # ------------------------------------------------------------------ stopping

    @property
    def pid(self) -> int:
        return self._require_proc().pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, sig: int) -> None:
        proc = self._require_proc()
        if proc.poll() is None:
            proc.send_signal(sig)

    def wait(self, timeout_s: float = 15.0) -> int:
        """Wait for the process to exit; DaemonError (process left running) on timeout."""
        proc = self._require_proc()
        try:
            self.returncode = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise DaemonError(f"the daemon is still running {timeout_s}s later\n{self}") from None
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        """Send `sig` and wait for the exit code; on timeout SIGKILL it and fail."""
        self.send(sig)
        try:
            return self.wait(timeout_s)
        except DaemonError:
            self.kill()
            raise

    def kill(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if self.detached:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.returncode = self.proc.wait(timeout=10)

    def close(self, grace_s: float = 15.0) -> None:
        """Teardown: end the daemon (gracefully if it is up, SIGTERM then `grace_s` at most) and
        any task process it left behind."""
        if self.running():
            with contextlib.suppress(DaemonError):
                self.stop(timeout_s=grace_s)
        self.kill()
        for proc in self.task_processes():
            with contextlib.suppress(psutil.Error):
                proc.kill()

    def task_processes(self) -> list[psutil.Process]:
        """Live task processes started by daemons of this data dir (their command line names it)."""
        if self.data_dir is None:
            return []
        return task_processes_under(self.data_dir)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ------------------------------------------------------------------ output

    @property
    def stdout(self) -> str:
        return _read(self._stdout_path)

    @property
    def stderr(self) -> str:
        return _read(self._stderr_path)

    def stderr_tail(self, lines: int = 30) -> str:
        return "\n".join(self.stderr.splitlines()[-lines:])

    def rss_mb(self) -> float:
        """The daemon's resident set size now (MiB)."""
        return float(psutil.Process(self.pid).memory_info().rss) / 2**20

    def __str__(self) -> str:
        return (
            f"$ {' '.join(self.argv())}\n--- stdout ---\n{self.stdout[-3000:]}"
            f"\n--- stderr ---\n{self.stderr[-6000:]}"
        )

    def _require_proc(self) -> subprocess.Popen[bytes]:
        if self.proc is None:
            raise DaemonError("the daemon was never started")
        return self.proc


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def task_processes_under(data_dir: Path) -> list[psutil.Process]:
    """Task processes of the daemon of `data_dir`: the task marker and a path inside `data_dir`
    in their environment (started by the launcher) or their command line (`sh` wrapper)."""
    root = str(data_dir)
    found = []
    for proc in psutil.process_iter(["cmdline", "environ", "status"]):
        if proc.info.get("status") == psutil.STATUS_ZOMBIE:
            continue
        environ = proc.info.get("environ") or {}
        for parts in (proc.info.get("cmdline") or [], [f"{k}={v}" for k, v in environ.items()]):
            if any(TASK_MARKER in part for part in parts) and any(root in part for part in parts):
                found.append(proc)
                break
    return found


def launchers_of(pid: int) -> list[psutil.Process]:
    """The task launcher(s) process `pid` started (runner/executors/host/launcher.py)."""
    found = []
    for child in psutil.Process(pid).children():
        with contextlib.suppress(psutil.Error):  # e.g. gone meanwhile
            if "runner.executors.host.launcher" in child.cmdline():
                found.append(child)
    return found
