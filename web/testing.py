"""Start and stop a localjobs daemon from Python code: for test suites, notebooks and scripts.

    from localjobs import LocalJobs          # installed from the wheel (`web.testing` in a checkout)

    with LocalJobs() as daemon:              # a fresh data dir, a free port, its own token
        job = daemon.run("python", "-c", "print('hi')")
        assert job["status"] == "completed"
        assert daemon.logs(job["name"]) == ["hi"]

    async with AsyncLocalJobs() as daemon:   # the same, for asyncio code
        ...

The daemon runs as a child process (`localjobs serve`), so it shares nothing with the caller's
imports (a project's own `storage/` or `web/` packages do not matter) and its end is clean:
`stop()` asks it to stop its steps (SIGTERM, bounded), then kills whatever is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from web.cli.connect import Api, Target
from web.cli.outcome import FINISHED

_READY = re.compile(r"^localjobs ready (http://\S+)$", re.MULTILINE)
# `python -m <this package>.cli`: `web.cli` in a checkout, `localjobs.web.cli` when installed.
_CLI_MODULE = __name__.rsplit(".", 1)[0] + ".cli"


class DaemonFailed(RuntimeError):
    """The daemon did not start (or did not stop) in time; the message carries its output."""


class JobTimeout(TimeoutError):
    pass


class LocalJobs:
    """One daemon. `url`, `token`, `data_dir` and `headers` are what a client needs."""

    def __init__(
        self,
        data_dir: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        workspace: str = "default",
        env: Mapping[str, str] | None = None,
        args: Sequence[str] = (),
        startup_timeout_s: float = 30.0,
        stop_timeout_s: float = 30.0,
    ) -> None:
        self._own_dir = data_dir is None
        self.data_dir = (
            Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="localjobs-"))
        )
        self.host = host
        self.port = port
        self.token = token or secrets.token_urlsafe(32)
        self.workspace = workspace
        self._env = dict(env or {})
        self._args = list(args)
        self._startup_timeout_s = startup_timeout_s
        self._stop_timeout_s = stop_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    # -------------------------------------------------------------- life

    def start(self) -> LocalJobs:
        if self._proc is not None and self._proc.poll() is None:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALJOBS_")}
        env.update({"LOCALJOBS_TOKEN": self.token, **self._env})
        argv = [sys.executable, "-m", _CLI_MODULE, "serve", "--host", self.host, "--port", str(self.port)]
        argv += ["--data-dir", str(self.data_dir), *self._args]
        with open(self._stdout, "wb") as out, open(self._stderr, "wb") as err:
            self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env)
        deadline = time.monotonic() + self._startup_timeout_s
        while True:
            match = _READY.search(self._stdout.read_text(errors="replace"))
            if match:
                self.url = match.group(1)
                return self
            if self._proc.poll() is not None:
                raise DaemonFailed(f"localjobs exited with {self._proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                self._kill()
                raise DaemonFailed(f"localjobs not ready in {self._startup_timeout_s} s:\n{self.output()}")
            time.sleep(0.02)

    def stop(self) -> int | None:
        """Stop the daemon (it ends its running steps first); returns its exit code."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self._stop_timeout_s)
            except subprocess.TimeoutExpired:
                self._kill()
        self._kill_tasks_left()
        self._proc = None
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
        return proc.returncode

    def _kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout=10)

    def _kill_tasks_left(self) -> None:
        """Belt and braces after a daemon that had to be killed: its tasks carry its data dir."""
        import psutil

        root = str(self.data_dir)
        for proc in psutil.process_iter(["environ"]):
            with contextlib.suppress(psutil.Error):
                environ = proc.info.get("environ") or {}
                if environ.get("LOCALJOBS_TASK") and any(root in v for v in environ.values()):
                    proc.kill()

    def __enter__(self) -> LocalJobs:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def _stdout(self) -> Path:
        return self.data_dir / "serve.stdout"

    @property
    def _stderr(self) -> Path:
        return self.data_dir / "serve.stderr"

    def output(self) -> str:
        """What the daemon printed (its log), for failure messages."""
        text = []
        for path in (self._stdout, self._stderr):
            with contextlib.suppress(OSError):
                text.append(path.read_text(errors="replace")[-8000:])
        return "\n".join(text)

    # -------------------------------------------------------------- client helpers

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def jobs_url(self) -> str:
        return f"{self.url}/apis/jobs/v2/workspaces/{self.workspace}/jobs"

    def in_workspace(self, workspace: str) -> LocalJobs:
        """The same daemon, with the helpers defaulting to `workspace` (the pytest plugin gives
        each test one); stopping either stops the daemon."""
        view = copy.copy(self)
        view.workspace = workspace
        return view

    def api(self, workspace: str | None = None) -> Api:
        if not self.url:
            raise DaemonFailed("LocalJobs.start() first")
        return Api(Target(self.url, self.token, "LocalJobs"), workspace or self.workspace)

    def submit(
        self,
        steps: Sequence[Mapping[str, Any]] | Mapping[str, Any],
        *,
        name: str | None = None,
        workspace: str | None = None,
    ) -> dict[str, Any]:
        """POST a job: a whole body (a mapping with `platform_spec`), or a list of steps."""
        if isinstance(steps, Mapping):
            body = dict(steps)
        else:
            body = {"platform_spec": {"steps": [dict(s) for s in steps]}}
        body.setdefault("source", "localjobs-python")
        body.setdefault("spec", {})
        if name:
            body["name"] = name
        api = self.api(workspace)
        job: dict[str, Any] = api.call("POST", api.jobs_path, body)
        return job

    def run(
        self,
        *command: str,
        name: str | None = None,
        env: Mapping[str, str] | None = None,
        workspace: str | None = None,
        timeout_s: float = 120.0,
    ) -> dict[str, Any]:
        """A one-step subprocess job, waited for; returns the finished job."""
        step = {
            "name": "main",
            "executor": {"provider": "subprocess", "command": list(command)},
            "environment": [{"name": k, "value": v} for k, v in (env or {}).items()],
        }
        job = self.submit([step], name=name, workspace=workspace)
        return self.wait(job["name"], timeout_s=timeout_s, workspace=workspace)

    def job(self, name: str, workspace: str | None = None) -> dict[str, Any]:
        api = self.api(workspace)
        job: dict[str, Any] = api.get(api.job_path(name))
        return job

    def wait(self, name: str, *, timeout_s: float = 120.0, workspace: str | None = None) -> dict[str, Any]:
        """The job once it has finished; JobTimeout if it has not within `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        delay = 0.02
        while True:
            job = self.job(name, workspace)
            if job.get("status") in FINISHED:
                return job
            if time.monotonic() > deadline:
                raise JobTimeout(f"job {name} still {job.get('status')} after {timeout_s} s")
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def logs(self, name: str, *, workspace: str | None = None) -> list[str]:
        """Every line the job printed, in order (stderr lines keep the `[stderr] ` prefix)."""
        api = self.api(workspace)
        params: dict[str, Any] = {"limit": 10_000}
        lines: list[str] = []
        while True:
            page = api.get(api.job_path(name) + "/logs", **params)
            lines += [str(line.get("message", "")) for line in page.get("data", [])]
            if not page.get("next_page"):
                return lines
            params["page_cursor"] = page["next_page"]

    def cancel_unfinished(self, workspace: str | None = None) -> None:
        """Cancel every unfinished job of the workspace (a test's teardown)."""
        api = self.api(workspace)
        page = api.get(api.jobs_path, page_size=1000)
        for job in page.get("data", []):
            if job.get("status") not in FINISHED:
                with contextlib.suppress(Exception):
                    api.call("POST", api.job_path(job["name"]) + "/cancel")

    def sdk(self, workspace: str | None = None) -> Any:
        """The official SDK's client for this daemon (`pip install nemo-platform`)."""
        from nemo_platform import NeMoPlatform

        return NeMoPlatform(
            base_url=self.url,
            workspace=workspace or self.workspace,
            default_headers=self.headers,
            max_retries=0,
        )


class AsyncLocalJobs:
    """`LocalJobs` for asyncio code: the same settings; start, stop and the helpers are awaitable
    (they run in a worker thread, so the event loop never blocks on the daemon)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.daemon = LocalJobs(*args, **kwargs)

    @property
    def url(self) -> str:
        return self.daemon.url

    @property
    def token(self) -> str:
        return self.daemon.token

    @property
    def data_dir(self) -> Path:
        return self.daemon.data_dir

    @property
    def headers(self) -> dict[str, str]:
        return self.daemon.headers

    async def start(self) -> AsyncLocalJobs:
        await asyncio.to_thread(self.daemon.start)
        return self

    async def stop(self) -> int | None:
        return await asyncio.to_thread(self.daemon.stop)

    async def submit(self, steps: Any, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.daemon.submit, steps, **kwargs)

    async def run(self, *command: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.daemon.run, *command, **kwargs)

    async def wait(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return await asyncio.to_thread(self.daemon.wait, name, **kwargs)

    async def logs(self, name: str, **kwargs: Any) -> list[str]:
        return await asyncio.to_thread(self.daemon.logs, name, **kwargs)

    async def job(self, name: str, workspace: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self.daemon.job, name, workspace)

    async def __aenter__(self) -> AsyncLocalJobs:
        return await self.start()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
