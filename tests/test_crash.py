"""Kill the daemon with SIGKILL at random moments while steps of every kind run; restart it each time.

Afterwards every job must reach its true final status and exit code, every log line must be
stored exactly once, and no step may have run twice.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import AUTH_HEADERS as AUTH
from tests.daemon_process import DaemonProcess
from tests.docker_env import TEST_IMAGE, require_docker
from tests.helpers import pid_alive

WS = "/apis/jobs/v2/workspaces/crash"
HEARTBEAT = (
    'curl -s -m 1 -X PUT -H "content-type: application/json" -d \'{"status":"active"}\' '
    '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/steps/$NEMO_JOB_STEP/tasks/$NEMO_JOB_TASK"'
    " >/dev/null 2>&1"
)

# name -> (steps, expected status, expected exit code, expected log lines)
Expected = dict[str, tuple[list[dict[str, Any]], str, int | None, list[str]]]


def _call(base: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        base + path, data=data, method=method, headers={"content-type": "application/json", **AUTH}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"null")


def _shell(name: str, script: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "executor": {"provider": "subprocess", "command": ["sh", "-c", script]}, **extra}


def _jobs(runs_dir: Path) -> Expected:
    """name -> (steps, expected status, expected exit code, expected log lines)."""

    def once(job: str, step: str, rest: str) -> str:
        # Each start leaves a mark: a step that ran twice leaves two.
        return f'echo run >> "{runs_dir}/{job}.{step}"; {rest}'

    counter = "; ".join(f"echo n{i}; sleep 0.05" for i in range(1, 61))
    return {
        "short": (
            [_shell("main", once("short", "main", "echo short-out; sleep 0.3"))],
            "completed",
            0,
            ["short-out"],
        ),
        "long": (
            [_shell("main", once("long", "main", counter))],
            "completed",
            0,
            [f"n{i}" for i in range(1, 61)],
        ),
        "failing": (
            [_shell("main", once("failing", "main", "echo dying; sleep 1.5; exit 5"))],
            "error",
            5,
            ["dying"],
        ),
        "beating": (
            [
                _shell(
                    "main",
                    once(
                        "beating",
                        "main",
                        f"for i in $(seq 1 15); do {HEARTBEAT}; echo beat$i; sleep 0.2; done",
                    ),
                    lifecycle={"staleness_timeout_seconds": 30},
                )
            ],
            "completed",
            0,
            [f"beat{i}" for i in range(1, 16)],
        ),
        "two-steps": (
            [
                _shell("first", once("two-steps", "first", "echo one; sleep 0.8")),
                _shell("second", once("two-steps", "second", "echo two; sleep 0.8")),
            ],
            "completed",
            0,
            ["one", "two"],
        ),
        "queued": ([_shell("main", once("queued", "main", "echo late"))], "completed", 0, ["late"]),
    }


def _all_logs(base: str, job: str) -> list[str]:
    lines: list[str] = []
    cursor = None
    while True:
        path = f"{WS}/jobs/{job}/logs?limit=1000" + (f"&page_cursor={cursor}" if cursor else "")
        status, page = _call(base, "GET", path)
        assert status == 200, page
        lines += [line["message"] for line in page["data"]]
        cursor = page["next_page"]
        if not cursor:
            return lines


def _submit_all(base: str, jobs: Expected) -> None:
    for name, (steps, *_rest) in jobs.items():
        body = {"name": name, "source": "crash", "spec": {}, "platform_spec": {"steps": steps}}
        status, created = _call(base, "POST", f"{WS}/jobs", body)
        assert status == 201, created


def _kill_and_restart(
    daemon: DaemonProcess, rng: random.Random, times: int, up_s: tuple[float, float]
) -> str:
    """SIGKILL the daemon `times` times after a random while up, restarting it each time."""
    base = daemon.base_url
    for _ in range(times):
        time.sleep(rng.uniform(*up_s))
        old_pid = daemon.pid
        daemon.stop(signal.SIGKILL, timeout_s=10)
        assert not pid_alive(old_pid)
        time.sleep(rng.uniform(0.0, 0.5))
        base = daemon.start()
    return base


def _check_outcomes(base: str, daemon: DaemonProcess, jobs: Expected, timeout_s: float) -> None:
    """Every job reaches its expected status and exit code, with every log line exactly once."""
    deadline = time.monotonic() + timeout_s
    results: dict[str, dict[str, Any]] = {}
    while len(results) < len(jobs):
        assert time.monotonic() < deadline, f"not finished: {set(jobs) - set(results)}\n{daemon}"
        for name in jobs:
            status, job = _call(base, "GET", f"{WS}/jobs/{name}")
            assert status == 200
            if job["status"] in ("completed", "error", "cancelled"):
                results[name] = job
        time.sleep(0.1)
    for name, (_steps, expected_status, expected_code, expected_lines) in jobs.items():
        job = results[name]
        assert job["status"] == expected_status, (name, job, daemon)
        if expected_code:
            assert job["error_details"]["exit_code"] == expected_code, (name, job)
        assert _all_logs(base, name) == expected_lines, name


@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_loses_nothing_and_runs_nothing_twice(tmp_path: Path) -> None:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    jobs = _jobs(runs_dir)
    rng = random.Random(int(os.environ.get("LOCALJOBS_CRASH_SEED", "20261128")))
    args = ["--max-running-steps", "4", "--grace-period-s", "1"]
    with DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data", args=args) as daemon:
        _submit_all(daemon.start(), jobs)
        base = _kill_and_restart(daemon, rng, times=4, up_s=(0.2, 0.9))
        _check_outcomes(base, daemon, jobs, timeout_s=90)
        for name, (steps, *_rest) in jobs.items():
            for s in steps:
                marks = (runs_dir / f"{name}.{s['name']}").read_text().splitlines()
                assert marks == ["run"], f"{name}.{s['name']} ran {len(marks)} times"
        assert daemon.task_processes() == []
        assert daemon.stop() == 0


def _container(name: str, script: str) -> dict[str, Any]:
    # Each start leaves a mark in a bind-mounted folder: a step that ran twice leaves two.
    marked = f'echo run >> "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/runs"; {script}'
    executor = {
        "provider": "cpu",
        "container": {"image": TEST_IMAGE, "entrypoint": ["sh", "-c"], "command": [marked]},
    }
    return {"name": name, "executor": executor}


def _runs_of(base: str, job: str) -> list[str]:
    """The marks `_container` steps of `job` left in its job storage."""
    _, s = _call(base, "GET", f"{WS}/jobs/{job}/steps/main")
    storage = Path(s["status_details"]["work_dir"]).parent.parent / "job-storage"
    return (storage / "runs").read_text().splitlines()


@pytest.mark.timeout(240)
def test_container_steps_survive_sigkill_of_the_daemon(tmp_path: Path) -> None:
    require_docker()
    counter = "; ".join(f"echo c{i}; sleep 0.05" for i in range(1, 41))
    jobs: Expected = {
        "c-long": ([_container("main", counter)], "completed", 0, [f"c{i}" for i in range(1, 41)]),
        "c-failing": ([_container("main", "echo bye; sleep 1; exit 6")], "error", 6, ["bye"]),
        "c-short": ([_container("main", "echo quick")], "completed", 0, ["quick"]),
    }
    rng = random.Random(int(os.environ.get("LOCALJOBS_CRASH_SEED", "7")))
    with DaemonProcess(
        tmp_path / "logs", data_dir=tmp_path / "data", args=["--grace-period-s", "1"]
    ) as daemon:
        _submit_all(daemon.start(), jobs)
        base = _kill_and_restart(daemon, rng, times=2, up_s=(0.3, 1.2))
        _check_outcomes(base, daemon, jobs, timeout_s=120)
        for name in jobs:
            assert _runs_of(base, name) == ["run"], f"{name} ran more than once"
        assert daemon.stop() == 0


_CONTAINER_START = re.compile(rb"^POST /[^ ]*containers/[^/ ]+/start[ ?]", re.MULTILINE)


class _EngineProxy:
    """A unix socket in front of the Docker engine's that passes everything on, except the first
    request to start a container: that one calls `instead` and never reaches the engine. So the
    daemon can be killed at an exact moment: its container created, not yet started."""

    def __init__(self, folder: Path, instead: Callable[[], None]) -> None:
        self.path = folder / "engine.sock"
        self.fired = threading.Event()
        self._instead = instead
        engine = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        assert engine.startswith("unix://"), f"this test needs a unix-socket engine, not {engine}"
        self._engine = engine.removeprefix("unix://")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):  # closed
            while True:
                client, _ = self._listener.accept()
                threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with client, engine, contextlib.suppress(OSError):
            engine.connect(self._engine)
            threading.Thread(target=_pipe, args=(engine, client), daemon=True).start()
            while data := client.recv(65536):
                if not self.fired.is_set() and _CONTAINER_START.search(data):
                    self._instead()
                    self.fired.set()
                    return
                engine.sendall(data)


def _pipe(source: socket.socket, target: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := source.recv(65536):
            target.sendall(data)
    with contextlib.suppress(OSError):
        target.shutdown(socket.SHUT_WR)


def _containers_of_job(job: str) -> list[dict[str, Any]]:
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=localjobs.job={job}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.split()
    if not ids:
        return []
    out = subprocess.run(["docker", "inspect", *ids], capture_output=True, text=True, check=True, timeout=30)
    return list(json.loads(out.stdout))


@pytest.mark.timeout(120)
def test_a_container_created_but_never_started_runs_once_after_a_restart(tmp_path: Path) -> None:
    """Killed between creating a step's container and starting it: the next daemon starts it (it
    used to wait on the never-started container, which answers at once with exit code 0: the
    step was `completed` with no output and had never run)."""
    require_docker()
    with tempfile.TemporaryDirectory(prefix="lj-engine-") as folder:  # short: a socket path
        daemon = DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data", env={})
        proxy = _EngineProxy(Path(folder), instead=lambda: os.kill(daemon.pid, signal.SIGKILL))
        daemon.env["DOCKER_HOST"] = f"unix://{proxy.path}"
        lines = [f"c{i}" for i in range(1, 6)]
        jobs: Expected = {
            "c-created": ([_container("main", "; ".join(f"echo {x}" for x in lines))], "completed", 0, lines)
        }
        with daemon:
            _submit_all(daemon.start(), jobs)
            assert proxy.fired.wait(60), f"the daemon never started the container\n{daemon}"
            daemon.wait(timeout_s=10)
            states = [c["State"]["Status"] for c in _containers_of_job("c-created")]
            assert states == ["created"], states
            base = daemon.start()  # the proxy now passes everything on
            _check_outcomes(base, daemon, jobs, timeout_s=60)
            assert _runs_of(base, "c-created") == ["run"]
            assert daemon.stop() == 0
        proxy.close()
