"""Safe by default: the token, the browser checks, one daemon per data dir, private files.

Every check goes through real HTTP on a real daemon; a refused request must also leave nothing
done (no job stored, no command run)."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest

from runner.settings import load_settings
from tests.conftest import Api, shell, step
from tests.daemon_process import TEST_TOKEN, DaemonProcess
from tests.helpers import file_mode, wait_status_blocking
from web.app import Server

WS = "/apis/jobs/v2/workspaces/default"
SECRETS = "/apis/secrets/v2/workspaces/default/secrets"


def _job_body(name: str, marker: Path) -> dict[str, Any]:
    return {
        "name": name,
        "source": "test",
        "spec": {},
        "platform_spec": {"steps": [shell("main", f"touch {marker}")]},
    }


async def _raw(
    server: Server, method: str, path: str, *, headers: dict[str, str] | None = None, data: Any = None
) -> tuple[int, Any, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, server.base_url + path, headers=headers or {}, data=data) as resp,
    ):
        body = await resp.read()
        parsed = json.loads(body) if body and resp.content_type == "application/json" else body
        return resp.status, parsed, dict(resp.headers)


def _bearer(token: str = TEST_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _no_jobs(api: Api) -> None:
    status, page = await api.request("GET", "/jobs")
    assert status == 200 and page["data"] == [], page


# ------------------------------------------------------------------------ the token


async def test_api_needs_the_token_and_health_stays_open(server: Server, api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = json.dumps(_job_body("job-a", marker))
    json_type = {"Content-Type": "application/json"}
    for headers in (
        {},
        _bearer("wrong-token-0123456789"),
        {"Authorization": TEST_TOKEN},
        {"Authorization": "Basic x"},
    ):
        status, answer, response_headers = await _raw(
            server, "POST", WS + "/jobs", headers={**json_type, **headers}, data=body
        )
        assert status == 401, answer
        assert isinstance(answer["detail"], str) and "token" in answer["detail"]
        assert response_headers["WWW-Authenticate"].startswith("Bearer")
    for path in (WS + "/jobs", SECRETS, "/apis/jobs/v2/execution-profiles"):
        assert (await _raw(server, "GET", path))[0] == 401
    status, answer, _ = await _raw(server, "GET", "/health")
    assert (status, answer) == (200, {"status": "ok"})
    await _no_jobs(api)
    status, answer, _ = await _raw(
        server, "POST", WS + "/jobs", headers={**json_type, **_bearer()}, data=body
    )
    assert status == 201, answer
    assert (await api.wait_job("job-a"))["status"] == "completed"
    assert marker.exists()


async def test_refused_requests_run_nothing(server: Server, api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = json.dumps(_job_body("job-a", marker))
    await _raw(server, "POST", WS + "/jobs", headers={"Content-Type": "application/json"}, data=body)
    time.sleep(0.3)
    assert not marker.exists()
    await _no_jobs(api)


# ------------------------------------------------------------------------ browser attacks


async def test_a_foreign_host_is_refused_on_every_route(server: Server, api: Api) -> None:
    async with aiohttp.ClientSession() as session:
        url = f"{server.base_url}/apis/secrets/v2/workspaces/default/secrets"
        async with session.post(url, json={"name": "tok", "value": "s3cr3t-value"}, headers=_bearer()) as r:
            assert r.status == 201
    rebinding = {"Host": "evil.example", **_bearer()}
    for method, path in (
        ("GET", "/health"),
        ("GET", WS + "/jobs"),
        ("GET", SECRETS + "/tok/access"),
        ("POST", WS + "/jobs"),
        ("GET", "/apis/auth/discovery"),
    ):
        status, answer, _ = await _raw(server, method, path, headers=rebinding)
        assert status == 403, (method, path, answer)
        assert "s3cr3t" not in json.dumps(answer)
    for host in ("localhost", "127.0.0.1", f"127.0.0.1:{server.base_url.rsplit(':', 1)[1]}", "[::1]:1"):
        status, _, _ = await _raw(server, "GET", "/health", headers={"Host": host})
        assert status == 200, host


async def test_a_foreign_origin_is_refused_for_any_method(server: Server, api: Api, tmp_path: Path) -> None:
    port = server.base_url.rsplit(":", 1)[1]
    marker = tmp_path / "ran"
    json_type = {"Content-Type": "application/json", **_bearer()}
    for origin in ("http://evil.example", "null", f"http://localhost:{int(port) + 1}", "http://127.0.0.1"):
        for method, path in (("GET", WS + "/jobs"), ("POST", WS + "/jobs"), ("GET", "/health")):
            headers = {**json_type, "Origin": origin}
            data = json.dumps(_job_body("job-a", marker)) if method == "POST" else None
            status, answer, _ = await _raw(server, method, path, headers=headers, data=data)
            assert status == 403, (origin, method, answer)
    await _no_jobs(api)
    for own in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        status, _, _ = await _raw(server, "GET", WS + "/jobs", headers={"Origin": own, **_bearer()})
        assert status == 200, own


async def test_bodies_must_be_json(server: Server, api: Api, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    body = json.dumps(_job_body("job-a", marker))
    for content_type in (
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        None,
    ):
        headers = _bearer() if content_type is None else {"Content-Type": content_type, **_bearer()}
        async with (
            aiohttp.ClientSession(skip_auto_headers=["Content-Type"]) as session,
            session.post(server.base_url + WS + "/jobs", data=body.encode(), headers=headers) as resp,
        ):
            assert resp.status == 415, (content_type, await resp.text())
            assert "JSON" in (await resp.json())["detail"]
    time.sleep(0.2)
    assert not marker.exists()
    await _no_jobs(api)
    for content_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        status, _, _ = await _raw(
            server, "POST", WS + "/jobs", headers={"Content-Type": content_type, **_bearer()}, data=body
        )
        assert status == 201, content_type
        await api.wait_job("job-a")
        assert (await api.request("DELETE", "/jobs/job-a"))[0] == 204


async def test_no_cors_and_options_allows_nothing(server: Server, api: Api) -> None:
    preflight = {
        "Origin": server.base_url,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    status, _, headers = await _raw(server, "OPTIONS", WS + "/jobs", headers=preflight)
    assert status == 405
    assert not any(k.lower().startswith("access-control-") for k in headers)
    _, _, headers = await _raw(server, "GET", WS + "/jobs", headers={"Origin": server.base_url, **_bearer()})
    assert not any(k.lower().startswith("access-control-") for k in headers)


# ------------------------------------------------------------------------ the daemon process


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[list[DaemonProcess]]:
    made: list[DaemonProcess] = []
    yield made
    for daemon in made:
        daemon.close()


def _daemon(made: list[DaemonProcess], tmp_path: Path, data_dir: Path, **kwargs: Any) -> DaemonProcess:
    daemon = DaemonProcess(tmp_path / f"logs-{len(made)}", data_dir=data_dir, **kwargs)
    made.append(daemon)
    return daemon


def test_first_start_creates_a_private_token_that_clients_use(
    daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    daemon = _daemon(daemons, tmp_path, data_dir, env={"LOCALJOBS_TOKEN": ""})
    daemon.env.pop("LOCALJOBS_TOKEN")
    url = daemon.start()
    token_file = data_dir / "token"
    token = token_file.read_text().strip()
    assert len(token) >= 32 and file_mode(token_file) == 0o600
    assert file_mode(data_dir) == 0o700
    assert httpx.get(url + WS + "/jobs", timeout=10).status_code == 401
    assert httpx.get(url + WS + "/jobs", headers=_bearer(token), timeout=10).status_code == 200
    assert str(token_file) in daemon.stderr and token not in daemon.stderr + daemon.stdout
    daemon.stop()
    url = daemon.start()  # the same token again
    assert httpx.get(url + WS + "/jobs", headers=_bearer(token), timeout=10).status_code == 200
    daemon.stop()
    other = tmp_path / "my-token"
    other.write_text("a-token-from-a-file-0123\n")
    other.chmod(0o644)
    daemon.args = ["--token-file", str(other)]
    daemon.launch()
    assert daemon.wait(15) != 0 and "chmod 600" in daemon.stderr  # others could read it
    other.chmod(0o600)
    url = daemon.start()
    assert httpx.get(url + WS + "/jobs", headers=_bearer(token), timeout=10).status_code == 401
    ok = httpx.get(url + WS + "/jobs", headers=_bearer("a-token-from-a-file-0123"), timeout=10)
    assert ok.status_code == 200


def test_no_auth_is_loopback_only_and_says_so(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    daemon = _daemon(daemons, tmp_path, tmp_path / "data", args=["--no-auth"])
    url = daemon.start()
    assert "authentication is OFF" in daemon.stderr
    assert httpx.get(url + WS + "/jobs", timeout=10).status_code == 200
    daemon.stop()
    exposed = _daemon(daemons, tmp_path, tmp_path / "data2", host="0.0.0.0", args=["--no-auth"])
    exposed.launch()
    assert exposed.wait(15) != 0
    assert "--no-auth" in exposed.stderr and "loopback" in exposed.stderr


def test_a_second_daemon_on_the_same_data_dir_is_refused(
    daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    first = _daemon(daemons, tmp_path, data_dir)
    url = first.start()
    body = {
        "name": "long",
        "source": "t",
        "spec": {},
        "platform_spec": {"steps": [shell("sleeper", "sleep 3")]},
    }
    assert httpx.post(url + WS + "/jobs", json=body, headers=first.headers, timeout=10).status_code == 201
    _wait_status(url, first.headers, "long", {"active"})
    second = _daemon(daemons, tmp_path, data_dir)
    started = time.monotonic()
    second.launch()
    rc = second.wait(15)
    assert rc != 0
    assert time.monotonic() - started < 5  # "within a second" of its own start-up (imports included)
    assert f"data dir {data_dir} is in use by localjobs pid {first.pid} at {url}" in second.stderr
    assert first.running()
    job = _wait_status(url, first.headers, "long", {"completed", "error", "cancelled"}, timeout_s=20)
    assert job["status"] == "completed", job


def test_a_killed_daemons_launcher_does_not_block_the_next(
    daemons: list[DaemonProcess], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    daemon = _daemon(daemons, tmp_path, data_dir)
    url = daemon.start()
    body = {
        "name": "long",
        "source": "t",
        "spec": {},
        "platform_spec": {"steps": [shell("sleeper", "sleep 4")]},
    }
    assert httpx.post(url + WS + "/jobs", json=body, headers=daemon.headers, timeout=10).status_code == 201
    _wait_status(url, daemon.headers, "long", {"active"})
    assert daemon.task_processes()
    daemon.kill()  # SIGKILL: the launcher and the task live on
    url = daemon.start()
    job = _wait_status(url, daemon.headers, "long", {"completed", "error"}, timeout_s=20)
    assert job["status"] == "completed", job


def test_an_existing_data_dir_keeps_its_mode(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    daemon = _daemon(daemons, tmp_path, shared)
    daemon.start()
    assert file_mode(shared) == 0o777
    assert "writable by other users" in daemon.stderr
    daemon.stop()
    plain = tmp_path / "plain"
    plain.mkdir()
    plain.chmod(0o755)
    daemon = _daemon(daemons, tmp_path, plain)
    daemon.start()
    assert file_mode(plain) == 0o755 and "writable by other users" not in daemon.stderr
    assert file_mode(plain / "token") == 0o600 if (plain / "token").exists() else True


def _wait_status(
    url: str, headers: dict[str, str], name: str, statuses: set[str], timeout_s: float = 15
) -> dict[str, Any]:
    return wait_status_blocking(
        lambda: httpx.get(f"{url}{WS}/jobs/{name}", headers=headers, timeout=10).json(),
        statuses,
        what=f"job {name}",
        timeout_s=timeout_s,
    )


# ------------------------------------------------------------------------ workloads


async def test_workloads_call_back_with_the_token_file(api: Api, tmp_path: Path) -> None:
    script = tmp_path / "callback.py"
    script.write_text(
        "import json, os, stat, sys, urllib.request\n"
        "path = os.environ['NMP_WORKLOAD_IDENTITY_TOKEN_FILE']\n"
        "print('mode', oct(stat.S_IMODE(os.stat(path).st_mode)))\n"
        "token = open(path).read().strip()\n"
        "url = (os.environ['NMP_BASE_URL'] + '/apis/jobs/v2/workspaces/' + os.environ['NEMO_JOB_WORKSPACE']"
        " + '/jobs/' + os.environ['NEMO_JOB_ID'] + '/steps/' + os.environ['NEMO_JOB_STEP'] + '/tasks/'"
        " + os.environ['NEMO_JOB_TASK'])\n"
        "body = json.dumps({'status': 'active', 'status_details': {'percentage_done': 40}}).encode()\n"
        "req = urllib.request.Request(url, data=body, method='PUT', headers={"
        "'content-type': 'application/json', 'authorization': 'Bearer ' + token})\n"
        "print('curl-like', urllib.request.urlopen(req).status)\n"
        "from nemo_platform import NeMoPlatform\n"
        "client = NeMoPlatform(base_url=os.environ['NMP_BASE_URL'], workspace=os.environ['NEMO_JOB_WORKSPACE'])\n"
        "print('sdk', client.jobs.retrieve(os.environ['NEMO_JOB_ID']).name)\n"
    )
    env = [{"name": "HOME", "value": str(tmp_path)}]
    await api.create_job([step("cb", "python", str(script), environment=env)], name="cb")
    job = await api.wait_job("cb", timeout_s=60)
    lines = await api.logs("cb")
    assert job["status"] == "completed", (job, lines)
    assert lines[:3] == ["mode 0o600", "curl-like 200", "sdk cb"], lines
    assert job["status_details"].get("percentage_done") == 40


def test_python_means_the_active_venv(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text("#!/bin/sh\n")
    assert load_settings({}, {}).python_executable == sys.executable
    assert load_settings({}, {"VIRTUAL_ENV": str(venv)}).python_executable != str(python)  # not executable
    python.chmod(0o755)
    assert load_settings({}, {"VIRTUAL_ENV": str(venv)}).python_executable == str(python)
    chosen = load_settings({}, {"VIRTUAL_ENV": str(venv), "LOCALJOBS_PYTHON_EXECUTABLE": "/usr/bin/python3"})
    assert chosen.python_executable == "/usr/bin/python3"


def test_planted_files_in_a_shared_data_dir_are_refused(daemons: list[DaemonProcess], tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    target = tmp_path / "victim-file"
    target.write_text("precious\n")
    (shared / "daemon.lock").symlink_to(target)
    daemon = _daemon(daemons, tmp_path, shared)
    daemon.launch()
    assert daemon.wait(15) != 0
    assert "symbolic link" in daemon.stderr and target.read_text() == "precious\n"
    (shared / "daemon.lock").unlink()
    if os.geteuid() == 0:  # another user's planted token (chosen by them): only root can fake one
        planted = shared / "token"
        planted.write_text("attacker-chosen-token-0123456789\n")
        planted.chmod(0o600)
        os.chown(planted, 65534, 65534)
        daemon.env.pop("LOCALJOBS_TOKEN")
        daemon.launch()
        assert daemon.wait(15) != 0 and "belongs to another user" in daemon.stderr


async def test_odd_host_and_token_bytes_are_refused_not_500(server: Server) -> None:
    for host in ("localhost:1@evil.example", "[::1]evil.example", "127.0.0.1:x"):
        status, _, _ = await _raw(server, "GET", "/apis/auth/discovery", headers={"Host": host})
        assert status == 403, host

    def raw_bytes_token() -> int:
        host, port = server.base_url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.putrequest("GET", "/apis/jobs/v2/workspaces/default/jobs")
            conn.putheader("Authorization", b"Bearer \xff\xfe")
            conn.endheaders()
            return conn.getresponse().status
        finally:
            conn.close()

    assert await asyncio.to_thread(raw_bytes_token) == 401
    form = {"Content-Type": "application/x-www-form-urlencoded; charset=nonexistent"}
    status, answer, _ = await _raw(server, "POST", "/apis/auth/token", headers=form, data=b"a=b")
    assert status == 400, answer
    big = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, _ = await _raw(server, "POST", "/apis/auth/token", headers=big, data=b"a=" + b"x" * 100_000)
    assert status == 413
