"""The dashboard's access rules without a browser: the login URL and form, the session cookie
(HttpOnly, SameSite=Strict, refused off the page's own requests), no data before a login, the
pages' security headers, and assets that all ship in the package.

Requests are raw HTTP on a real daemon; cookies are sent by hand (aiohttp's jar keeps none for an
IP address), redirects are never followed."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import subprocess
import time
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import Api, running_server, shell
from tests.daemon_process import REPO_ROOT, TEST_TOKEN, DaemonProcess, clean_environment, localjobs_command
from web.app import Server
from web.dashboard.assets import ASSETS, STATIC
from web.dashboard.templates import TEMPLATES

WS = "/apis/jobs/v2/workspaces/default"
SECRET_NAME = "only-for-the-signed-in"


async def _raw(
    server: Server,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    data: Any = None,
) -> tuple[int, bytes, aiohttp.typedefs.LooseHeaders]:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, server.base_url + path, headers=headers or {}, data=data, allow_redirects=False
        ) as resp,
    ):
        return resp.status, await resp.read(), resp.headers


def _session_cookie(headers: Any) -> tuple[str, str, str]:
    """(name, value, the whole Set-Cookie line) of the one cookie a login sets."""
    (line,) = headers.getall("Set-Cookie")
    jar: SimpleCookie = SimpleCookie()
    jar.load(line)
    ((name, morsel),) = jar.items()
    return name, morsel.value, line


async def _signed_in(server: Server, path: str = "/") -> tuple[str, str]:
    status, _, headers = await _raw(server, "GET", f"{path}?token={TEST_TOKEN}")
    assert status == 303
    name, value, _ = _session_cookie(headers)
    return name, value


def _origin(server: Server) -> dict[str, str]:
    return {"Origin": server.base_url}


async def test_no_login_shows_the_form_and_no_data(server: Server, api: Api) -> None:
    await api.create_job([shell("main", "true")], name=SECRET_NAME)
    for path in ("/", f"/workspaces/default/jobs/{SECRET_NAME}"):
        status, body, headers = await _raw(server, "GET", path)
        assert status == 401, path
        page = body.decode()
        assert 'action="/login"' in page and 'name="token"' in page
        assert SECRET_NAME.encode() not in body or path.endswith(SECRET_NAME)
        assert "Set-Cookie" not in headers
    # The API itself, without the cookie or the header, says nothing either.
    status, body, _ = await _raw(server, "GET", f"{WS}/jobs")
    assert status == 401 and SECRET_NAME.encode() not in body


async def test_the_login_url_sets_an_httponly_samesite_strict_cookie_and_drops_the_token(
    server: Server,
) -> None:
    status, _, headers = await _raw(server, "GET", f"/?token={TEST_TOKEN}&workspace=team-a")
    assert status == 303
    assert headers["Location"] == "/?workspace=team-a"  # the same page, the token left out
    assert headers["Cache-Control"] == "no-store" and headers["Referrer-Policy"] == "same-origin"
    name, value, line = _session_cookie(headers)
    port = server.base_url.rsplit(":", 1)[1]
    assert name == f"localjobs_session_{port}"
    attributes = {part.strip().lower() for part in line.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert value and TEST_TOKEN not in value  # derived from the token, not the token
    # The job page's own login URL goes back to the job page.
    status, _, headers = await _raw(server, "GET", f"/workspaces/default/jobs/j1?token={TEST_TOKEN}")
    assert (status, headers["Location"]) == (303, "/workspaces/default/jobs/j1")
    # Signed in, the page is the app, not the form.
    status, body, headers = await _raw(server, "GET", "/", headers={"Cookie": f"{name}={value}"})
    assert status == 200 and b'src="/static/jobs.js"' in body and b'name="token"' not in body


async def test_a_wrong_token_is_refused_everywhere(server: Server) -> None:
    status, body, headers = await _raw(server, "GET", "/?token=not-the-token-at-all")
    assert status == 401 and b"not this daemon" in body and "Set-Cookie" not in headers
    form = {"token": "not-the-token-at-all", "next": "/"}
    status, body, headers = await _raw(server, "POST", "/login", data=form, headers=_origin(server))
    assert status == 401 and b"not this daemon" in body and "Set-Cookie" not in headers
    bad = {"Cookie": f"localjobs_session_{server.base_url.rsplit(':', 1)[1]}=forged"}
    status, body, _ = await _raw(server, "GET", "/", headers=bad)
    assert status == 401 and b'name="token"' in body
    assert (await _raw(server, "GET", f"{WS}/jobs", headers=bad))[0] == 401


async def test_the_login_form(server: Server) -> None:
    form = {"token": TEST_TOKEN, "next": "/workspaces/default/jobs/j1?x=1"}
    status, _, headers = await _raw(server, "POST", "/login", data=form, headers=_origin(server))
    assert (status, headers["Location"]) == (303, "/workspaces/default/jobs/j1?x=1")
    name, value = _session_cookie(headers)[:2]
    assert (name, value) == await _signed_in(server)
    # `next` may only name one of the dashboard's own pages: never another site.
    for elsewhere in (
        "//evil.example/",
        "http://evil.example/",
        "/\\evil.example",
        "/apis/x",
        "/x\r\nSet-Cookie: a=b",
    ):
        form = {"token": TEST_TOKEN, "next": elsewhere}
        status, _, headers = await _raw(server, "POST", "/login", data=form, headers=_origin(server))
        assert (status, headers["Location"]) == (303, "/"), elsewhere
    # A form from another site is refused before the token is looked at.
    status, _, headers = await _raw(
        server, "POST", "/login", data={"token": TEST_TOKEN}, headers={"Origin": "http://evil.example"}
    )
    assert status == 403 and "Set-Cookie" not in headers
    status, body, _ = await _raw(
        server,
        "POST",
        "/login",
        data=json.dumps({"token": TEST_TOKEN}),
        headers={"Content-Type": "application/json"},
    )
    assert status == 415 and b"login form" in body
    status, _, _ = await _raw(server, "POST", "/login", data={"token": "x" * 20_000, "next": "/"})
    assert status == 413


async def test_the_cookie_opens_the_api_only_for_the_pages_own_requests(server: Server, api: Api) -> None:
    await api.create_job([shell("main", "sleep 30")], name="held")
    name, value = await _signed_in(server)
    cookie = {"Cookie": f"{name}={value}"}
    page_get = {**cookie, "Sec-Fetch-Site": "same-origin"}
    status, body, _ = await _raw(server, "GET", f"{WS}/jobs", headers=page_get)
    assert status == 200 and b'"held"' in body
    assert (await _raw(server, "GET", f"{WS}/jobs", headers=cookie))[0] == 200  # an older browser
    assert (await _raw(server, "GET", f"{WS}/jobs", headers={**cookie, "Sec-Fetch-Site": "none"}))[0] == 200
    # Another port of this host (same-site) or another site: the cookie opens nothing.
    for site in ("same-site", "cross-site"):
        status, body, _ = await _raw(server, "GET", f"{WS}/jobs", headers={**cookie, "Sec-Fetch-Site": site})
        assert status == 401 and b"held" not in body, site
    # A write needs the page's Origin: without one the cookie is not enough, another one is 403.
    assert (await _raw(server, "POST", f"{WS}/jobs/held/pause", headers=cookie))[0] == 401
    foreign = {**cookie, "Origin": f"http://127.0.0.1:{_other_port(server)}"}
    assert (await _raw(server, "POST", f"{WS}/jobs/held/pause", headers=foreign))[0] == 403
    text_body = {**cookie, **_origin(server), "Content-Type": "text/plain"}
    assert (await _raw(server, "POST", f"{WS}/jobs", headers=text_body, data="{}"))[0] == 415
    # The page's own write goes through.
    status, body, _ = await _raw(
        server,
        "POST",
        f"{WS}/jobs/held/cancel",
        headers={**cookie, **_origin(server), "Sec-Fetch-Site": "same-origin"},
    )
    assert status == 200, body
    job = await api.wait_job("held")
    assert job["status"] == "cancelled"


def _other_port(server: Server) -> int:
    port = int(server.base_url.rsplit(":", 1)[1])
    return port + 1 if port < 65535 else port - 1


async def test_logout_clears_the_cookie(server: Server) -> None:
    name, _ = await _signed_in(server)
    status, _, headers = await _raw(server, "POST", "/logout", headers=_origin(server))
    assert (status, headers["Location"]) == (303, "/")
    cleared, value, line = _session_cookie(headers)
    assert cleared == name and value == "" and "max-age=0" in line.lower()


async def test_pages_say_what_the_browser_may_load(server: Server) -> None:
    name, value = await _signed_in(server)
    for path in ("/", "/workspaces/default/jobs/any"):
        status, _, headers = await _raw(server, "GET", path, headers={"Cookie": f"{name}={value}"})
        assert status == 200
        policy = headers["Content-Security-Policy"]
        for rule in (
            "default-src 'none'",
            "script-src 'self'",
            "connect-src 'self'",
            "frame-ancestors 'none'",
        ):
            assert rule in policy
        assert headers["X-Frame-Options"] == "DENY" and headers["Cache-Control"] == "no-store"
        assert headers["Content-Type"].startswith("text/html")


async def test_assets_are_served_from_the_package_with_etags(server: Server) -> None:
    assert {"dashboard.css", "common.js", "jobs.js", "job.js", "logview.js", "favicon.svg"} <= set(ASSETS)
    status, body, headers = await _raw(server, "GET", "/static/jobs.js")
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert body == (STATIC / "jobs.js").read_bytes()
    status, _, _ = await _raw(server, "GET", "/static/jobs.js", headers={"If-None-Match": headers["ETag"]})
    assert status == 304
    for missing in ("/static/nope.js", "/static/..%2Fassets.py", "/static/"):
        status, body, _ = await _raw(server, "GET", missing)
        assert status == 404 and json.loads(body)["detail"], missing


def test_nothing_the_pages_load_comes_from_elsewhere() -> None:
    """Every URL in the pages and assets is the daemon's own (no CDN, no outside font or script)."""
    outside = re.compile(r"""(?:https?:)?//[a-z0-9.-]+\.[a-z]""", re.IGNORECASE)
    for folder in (STATIC, TEMPLATES):
        for path in folder.iterdir():
            text = path.read_text()
            if path.suffix == ".svg":
                text = text.replace('xmlns="http://www.w3.org/2000/svg"', "")
            assert outside.search(text) is None, f"{path.name}: {outside.search(text)}"
            assert "@import" not in text and "url(" not in text, path.name


def test_the_pages_weigh_well_under_200_kb() -> None:
    """Each page with everything it loads (the browser test measures the same over the wire)."""
    shared = ["dashboard.css", "common.js", "favicon.svg"]
    for template, scripts in (("jobs.html", ["jobs.js"]), ("job.html", ["job.js", "logview.js"])):
        total = (TEMPLATES / template).stat().st_size + sum(len(ASSETS[n].body) for n in shared + scripts)
        assert total < 200 * 1024, (template, total)


async def test_without_auth_the_pages_open_directly(tmp_path: Path) -> None:
    async with running_server(tmp_path, token=None, no_auth=True) as srv:
        status, body, _ = await _raw(srv, "GET", "/")
        assert status == 200 and b'data-auth="off"' in body
        # A login URL changes nothing and sets no cookie.
        status, _, headers = await _raw(srv, "GET", "/?token=whatever")
        assert status == 303 and "Set-Cookie" not in headers


# --------------------------------------------------------------------------- the login URL at start


def test_serve_prints_the_login_url_only_on_a_terminal(tmp_path: Path) -> None:
    # Not a terminal (a file, as a service manager or CI keeps it): the address, never the token.
    daemon = DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data")
    try:
        url = daemon.start()
        daemon.stop()
        said = daemon.stdout + daemon.stderr
    finally:
        daemon.close()
    assert f"localjobs dashboard: {url}/ (log in with the token" in said
    assert TEST_TOKEN not in said
    # On a terminal: the login URL with the token.
    primary, secondary = pty.openpty()
    env = clean_environment({"LOCALJOBS_TOKEN": TEST_TOKEN, "LOCALJOBS_DATA_DIR": str(tmp_path / "data2")})
    proc = subprocess.Popen(
        [*localjobs_command(), "serve", "--port", "0", "--host", "127.0.0.1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=secondary,
        env=env,
        cwd=REPO_ROOT,
    )
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 60
        while b"?token=" not in seen and time.monotonic() < deadline and proc.poll() is None:
            ready, _, _ = select.select([primary], [], [], 0.5)
            if ready:
                try:
                    seen += os.read(primary, 65536)
                except OSError:
                    break
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        os.close(primary)
    assert re.search(rb"localjobs dashboard: http://127\.0\.0\.1:\d+/\?token=" + TEST_TOKEN.encode(), seen), (
        seen
    )


def test_localjobs_dashboard_prints_a_login_url(tmp_path: Path) -> None:
    daemon = DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data")
    try:
        url = daemon.start()
        env = clean_environment({"LOCALJOBS_DATA_DIR": str(tmp_path / "data")})
        out = subprocess.run(
            [*localjobs_command(), "dashboard", "-w", "team a"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == f"{url}/?workspace=team%20a&token={TEST_TOKEN}"
    finally:
        daemon.close()
