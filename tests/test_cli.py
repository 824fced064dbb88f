"""`localjobs serve` as a real process: readiness, configuration, signals, restarts."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.daemon_process import (
    AUTH_HEADERS as AUTH,
)
from tests.daemon_process import (
    DaemonProcess,
    launchers_of,
    task_processes_under,
)
from tests.helpers import TERMINAL, pid_alive, until_blocking, wait_status_blocking

WS = "/apis/jobs/v2/workspaces/default"

MakeDaemon = Callable[..., DaemonProcess]


@pytest.fixture
def make_daemon(tmp_path: Path) -> Iterator[MakeDaemon]:
    """Builds DaemonProcess objects (not started); every one is closed at teardown."""
    made: list[DaemonProcess] = []

    def make(data_dir: Path | None = None, **kwargs: Any) -> DaemonProcess:
        daemon = DaemonProcess(tmp_path / f"logs-{len(made)}", data_dir=data_dir, **kwargs)
        made.append(daemon)
        return daemon

    yield make
    for daemon in made:
        daemon.close()


def _get(base_url: str, path: str) -> httpx.Response:
    return httpx.get(base_url + path, timeout=10, headers=AUTH)


def _create_job(base_url: str, name: str, *command: str) -> dict[str, Any]:
    body = {
        "name": name,
        "source": "test",
        "spec": {},
        "platform_spec": {
            "steps": [{"name": "main", "executor": {"provider": "subprocess", "command": list(command)}}]
        },
    }
    resp = httpx.post(f"{base_url}{WS}/jobs", json=body, timeout=10, headers=AUTH)
    assert resp.status_code == 201, resp.text
    return resp.json()  # type: ignore[no-any-return]


def _wait_job(daemon: DaemonProcess, name: str, statuses: set[str], timeout_s: float = 20) -> dict[str, Any]:
    def fetch() -> dict[str, Any]:
        resp = _get(daemon.base_url, f"{WS}/jobs/{name}")
        assert resp.status_code == 200, resp.text
        return resp.json()  # type: ignore[no-any-return]

    def detail(job: dict[str, Any]) -> str:
        return f"{_get(daemon.base_url, f'{WS}/jobs/{name}/status').json()}\n{daemon}"

    return wait_status_blocking(fetch, statuses, what=f"job {name}", timeout_s=timeout_s, detail=detail)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ------------------------------------------------------------------------------------ startup


def test_health_answers_once_ready(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "data")
    url = daemon.start()
    assert url.startswith("http://127.0.0.1:")
    assert not url.endswith(":0")
    resp = _get(url, "/health")
    assert resp.status_code == 200
    assert resp.json() == {"status": "ok"}
    assert daemon.stop() == 0


def test_data_dir_and_port_from_environment(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    data_dir = tmp_path / "from-env"
    port = _free_port()
    daemon = make_daemon(
        None, port=None, env={"LOCALJOBS_DATA_DIR": str(data_dir), "LOCALJOBS_PORT": str(port)}
    )
    url = daemon.start()
    assert url == f"http://127.0.0.1:{port}"
    assert (data_dir / "localjobs.db").is_file()
    assert _get(url, "/health").status_code == 200
    assert daemon.stop() == 0


def test_flags_beat_environment(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    env_dir, flag_dir = tmp_path / "env-dir", tmp_path / "flag-dir"
    daemon = make_daemon(
        flag_dir,
        env={
            "LOCALJOBS_DATA_DIR": str(env_dir),
            "LOCALJOBS_HOST": "0.0.0.0",
            # Never read: the flag wins, so an unusable value here must not matter.
            "LOCALJOBS_PORT": "abc",
        },
    )
    url = daemon.start()
    assert url.startswith("http://127.0.0.1:")
    assert (flag_dir / "localjobs.db").is_file()
    assert not env_dir.exists()
    assert daemon.stop() == 0


@pytest.mark.parametrize("event_loop", ["uvloop", "asyncio"])
def test_either_event_loop_runs_jobs(make_daemon: MakeDaemon, tmp_path: Path, event_loop: str) -> None:
    # No variable for uvloop: it is the default.
    env = {"LOCALJOBS_EVENT_LOOP": event_loop} if event_loop == "asyncio" else {}
    daemon = make_daemon(tmp_path / "data", env=env)
    url = daemon.start()
    _create_job(url, "loop", "sh", "-c", "echo on the loop")
    assert _wait_job(daemon, "loop", TERMINAL)["status"] == "completed"
    assert f"event loop: {event_loop}" in daemon.stderr, daemon
    assert daemon.stop() == 0


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LOCALJOBS_PORT", "abc"),
        ("LOCALJOBS_GRACE_PERIOD_S", "soon"),
        ("LOCALJOBS_KEEP_CONTAINERS", "maybe"),
        ("LOCALJOBS_EVENT_LOOP", "twisted"),
    ],
)
def test_bad_environment_value_exits_with_a_clear_message(
    make_daemon: MakeDaemon, tmp_path: Path, variable: str, value: str
) -> None:
    # No --port flag for the port case, so the variable is what gets read.
    daemon = make_daemon(tmp_path / "data", port=None, env={variable: value})
    daemon.launch()
    rc = daemon.wait(timeout_s=15)
    assert rc != 0, daemon
    assert variable in daemon.stderr, daemon
    assert value in daemon.stderr, daemon
    assert "Traceback" not in daemon.stderr, daemon
    assert "localjobs ready" not in daemon.stdout


def test_unusable_port_exits_non_zero(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        daemon = make_daemon(tmp_path / "data", port=busy.getsockname()[1])
        daemon.launch()
        rc = daemon.wait(timeout_s=15)
    assert rc != 0, daemon
    assert "cannot start" in daemon.stderr, daemon
    assert "localjobs ready" not in daemon.stdout


# ------------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_running_steps_and_records_why(
    make_daemon: MakeDaemon, tmp_path: Path, sig: signal.Signals
) -> None:
    data_dir = tmp_path / "data"
    # A long grace period, so that a prompt stop (the step ends on SIGTERM, nothing waits the
    # grace period out) is told apart from a loaded machine's slow one.
    daemon = make_daemon(data_dir, args=["--grace-period-s", "60"])
    url = daemon.start()
    _create_job(url, "sleeper", "sleep", "300")
    _wait_job(daemon, "sleeper", {"active"})
    step = _get(url, f"{WS}/jobs/sleeper/steps/main").json()
    assert step["status"] == "active"
    pid = step["status_details"]["pid"]
    assert pid_alive(pid)
    # The recorded pid is the task process (its process group leader); children run in its group.
    tree = [pid, *(child.pid for child in psutil.Process(pid).children(recursive=True))]
    assert any("sleep" in psutil.Process(p).name() for p in tree)
    assert task_processes_under(data_dir)

    started = time.monotonic()
    rc = daemon.stop(sig, timeout_s=90)
    took = time.monotonic() - started
    assert rc == 0, daemon
    assert took < 30, f"shutdown took {took:.1f}s\n{daemon}"  # not the 60 s grace period
    assert not [p for p in tree if pid_alive(p)], f"left running: {tree}"
    assert not task_processes_under(data_dir)

    url = daemon.start()
    step = _get(url, f"{WS}/jobs/sleeper/steps/main").json()
    assert step["status"] == "error", step
    assert "daemon shut down" in step["error_details"]["message"], step
    assert "daemon shut down" in step["status_details"]["message"], step
    job = _get(url, f"{WS}/jobs/sleeper").json()
    assert job["status"] == "error", job
    assert daemon.stop() == 0


def test_jobs_persist_across_a_restart(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    daemon = make_daemon(tmp_path / "data")
    url = daemon.start()
    created = _create_job(url, "keeper", "echo", "kept")
    done = _wait_job(daemon, "keeper", TERMINAL)
    assert done["status"] == "completed", done
    assert daemon.stop() == 0

    url = daemon.start()
    resp = _get(url, f"{WS}/jobs/keeper")
    assert resp.status_code == 200
    job = resp.json()
    assert job["id"] == created["id"]
    assert job["status"] == "completed"
    logs = _get(url, f"{WS}/jobs/keeper/logs").json()
    assert [line["message"] for line in logs["data"]] == ["kept"]
    listed = _get(url, f"{WS}/jobs").json()
    assert [j["name"] for j in listed["data"]] == ["keeper"]
    assert daemon.stop() == 0


def test_keep_steps_running_on_shutdown_then_adopt_them(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    daemon = make_daemon(data_dir, args=["--keep-steps-running-on-shutdown", "--grace-period-s", "1"])
    url = daemon.start()
    script = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.05; done"
    _create_job(url, "survivor", "sh", "-c", script)
    _wait_job(daemon, "survivor", {"active"})
    pid = _get(url, f"{WS}/jobs/survivor/steps/main").json()["status_details"]["pid"]
    assert daemon.stop() == 0
    assert pid_alive(pid), "the step should outlive a graceful stop with this setting"
    time.sleep(0.3)  # output written while no daemon runs must not be lost

    url = daemon.start()
    step = _get(url, f"{WS}/jobs/survivor/steps/main").json()
    assert step["status"] == "active" and step["status_details"]["pid"] == pid
    resp = httpx.post(f"{url}{WS}/jobs/survivor/cancel", timeout=10, headers=AUTH)
    assert resp.status_code == 200
    job = _wait_job(daemon, "survivor", TERMINAL)
    assert job["status"] == "cancelled", job
    assert not pid_alive(pid)
    logs = _get(url, f"{WS}/jobs/survivor/logs?limit=10000").json()["data"]
    lines = [line["message"] for line in logs if line["stream"] == "stdout"]
    assert lines == [f"tick{i}" for i in range(1, len(lines) + 1)]  # every line once, none missing
    assert daemon.stop() == 0


def test_a_step_that_ends_while_the_daemon_is_down_gets_its_true_exit_code(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    daemon = make_daemon(tmp_path / "data", args=["--keep-steps-running-on-shutdown"])
    url = daemon.start()
    _create_job(url, "ends-alone", "sh", "-c", "echo going; sleep 1; echo gone; exit 7")
    _wait_job(daemon, "ends-alone", {"active"})
    pid = _get(url, f"{WS}/jobs/ends-alone/steps/main").json()["status_details"]["pid"]
    assert daemon.stop() == 0
    until_blocking(lambda: not pid_alive(pid), what=f"step process {pid} ending", timeout_s=10)
    url = daemon.start()
    job = _wait_job(daemon, "ends-alone", TERMINAL)
    assert job["status"] == "error"
    assert job["error_details"]["exit_code"] == 7
    lines = [line["message"] for line in _get(url, f"{WS}/jobs/ends-alone/logs").json()["data"]]
    assert lines == ["going", "gone"]
    assert daemon.stop() == 0


def test_a_step_that_ends_after_the_daemon_was_killed_gets_its_true_exit_code(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """SIGKILL leaves no time to clean up: the launcher, the task's parent, outlives the daemon,
    records the exit status when the task ends, and only then exits."""
    daemon = make_daemon(tmp_path / "data")
    url = daemon.start()
    # The task ends only once the daemon is gone (a fixed sleep had to outlast killing it).
    go = tmp_path / "go"
    wait = f'i=0; while [ ! -e "{go}" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'
    _create_job(url, "orphaned", "sh", "-c", f"{wait}; exit 5")
    _wait_job(daemon, "orphaned", {"active"})
    pid = _get(url, f"{WS}/jobs/orphaned/steps/main").json()["status_details"]["pid"]
    launchers = launchers_of(daemon.pid)
    assert len(launchers) == 1
    daemon.stop(signal.SIGKILL)
    assert pid_alive(pid) and launchers[0].is_running()
    go.touch()
    launchers[0].wait(timeout=30)  # it leaves once its last task has ended and is recorded
    assert not pid_alive(pid)
    daemon.start()
    job = _wait_job(daemon, "orphaned", TERMINAL)
    assert (job["status"], job["error_details"]["exit_code"]) == ("error", 5)
    assert daemon.stop() == 0


def test_steps_whose_processes_died_with_the_daemon_are_settled_at_start(
    make_daemon: MakeDaemon, tmp_path: Path
) -> None:
    """Everything killed at once (as a service manager may do): nothing is left to record an
    exit status, and the restarted daemon says so right away, without waiting for any."""
    daemon = make_daemon(tmp_path / "data")
    url = daemon.start()
    names = [f"gone-{i}" for i in range(3)]
    for name in names:
        _create_job(url, name, "sleep", "300")
    pids = []
    for name in names:
        _wait_job(daemon, name, {"active"})
        pids.append(_get(url, f"{WS}/jobs/{name}/steps/main").json()["status_details"]["pid"])
    (launcher,) = launchers_of(daemon.pid)
    daemon.stop(signal.SIGKILL)
    launcher.kill()
    for pid in pids:
        os.killpg(pid, signal.SIGKILL)
    launcher.wait(10)
    url = daemon.start()
    for name in names:
        job = _wait_job(daemon, name, TERMINAL)
        assert job["status"] == "error" and "vanished" in job["error_details"]["message"], job
    _create_job(url, "after", "true")
    assert _wait_job(daemon, "after", TERMINAL)["status"] == "completed"
    assert daemon.stop() == 0


def test_orphaned_task_processes_are_killed_at_start(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    import subprocess

    from runner.settings import Settings

    data_dir = tmp_path / "data"
    owner = Settings(data_dir=data_dir).owner_id
    # A task wrapper of this data dir that no step in the store knows (as a crash could leave).
    orphan = subprocess.Popen(
        ["/bin/sh", "-c", "sleep 300", f"localjobs-task:{owner}:task-orphan", "x", "y"],
        start_new_session=True,
    )
    try:
        daemon = make_daemon(data_dir)
        daemon.start()
        orphan.wait(timeout=10)
        assert orphan.returncode == -signal.SIGKILL
        assert daemon.stop() == 0
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


def test_data_dir_is_private_to_the_daemon_user(make_daemon: MakeDaemon, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    daemon = make_daemon(data_dir)
    daemon.start()
    assert daemon.stop() == 0
    assert data_dir.stat().st_mode & 0o777 == 0o700
