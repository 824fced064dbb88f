"""The dashboard in a real browser: headless Chromium (the system's) driven by Playwright.

One daemon and one browser serve the whole module; each test has its own browser context (its
own cookies) and its own workspace (its own list). Every request a page makes is recorded, and
each test ends by checking that all of them went to the daemon's origin and that no script
failed. Every wait is bounded (Playwright's timeouts, or loops with a count)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from tests.browser_env import CHROMIUM, require_browser
from tests.conftest import Api, running_server, shell
from tests.daemon_process import AUTH_HEADERS, TEST_TOKEN
from web.app import Server

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_MS = 20_000  # the longest any single expectation waits (a loaded 2-core machine)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    async with running_server(tmp_path_factory.mktemp("dashboard")) as srv:
        yield srv


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Any]:
    require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(headers=AUTH_HEADERS) as client:
        yield client


def api_in(session: aiohttp.ClientSession, server: Server, workspace: str) -> Api:
    return Api(session=session, base_url=server.base_url, workspace=workspace)


@dataclass
class Visit:
    """A browser context of one test: its page, and everything it asked for."""

    context: Any
    page: Any
    base: str
    requests: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    async def open(self, path: str) -> Any:
        return await self.page.goto(self.base + path)


async def _visit(browser: Any, server: Server, **context_options: Any) -> Visit:
    from playwright.async_api import expect

    expect.set_options(timeout=WAIT_MS)
    context = await browser.new_context(accept_downloads=True, **context_options)
    context.set_default_timeout(WAIT_MS)
    page = await context.new_page()
    visit = Visit(context, page, server.base_url)
    context.on("request", lambda request: visit.requests.append(request.url))
    page.on("pageerror", lambda error: visit.errors.append(str(error)))
    return visit


async def _finish(visit: Visit) -> None:
    await visit.context.close()
    assert visit.requests, "the page made no request at all"
    elsewhere = [url for url in visit.requests if not url.startswith(visit.base + "/")]
    assert elsewhere == [], f"requests that left the daemon's origin: {elsewhere}"
    assert visit.errors == [], f"script errors: {visit.errors}"


@pytest_asyncio.fixture(loop_scope="module")
async def signed_in(browser: Any, server: Server) -> AsyncIterator[Visit]:
    visit = await _visit(browser, server, viewport={"width": 1280, "height": 900})
    await visit.open(f"/?token={TEST_TOKEN}")
    yield visit
    await _finish(visit)


async def _wait_for_log_total(api: Api, name: str, lines: int) -> None:
    for _ in range(400):
        status, page = await api.request("GET", f"/jobs/{name}/logs", params={"tail": 1})
        assert status == 200, page
        if page["total"] >= lines:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {name} did not print {lines} lines")


# --------------------------------------------------------------------------- login


async def test_refused_without_the_token_signed_in_with_it(browser: Any, server: Server) -> None:
    from playwright.async_api import expect

    visit = await _visit(browser, server)
    page = visit.page
    try:
        response = await visit.open("/")
        assert response.status == 401
        await expect(page.locator("form.login-form")).to_be_visible()
        assert await page.locator("table.jobs").count() == 0
        await page.fill("#token", "this-is-not-the-token")
        await page.click("form.login-form button[type=submit]")
        await expect(page.locator(".problem")).to_contain_text("not this daemon's token")
        assert await page.locator("table.jobs").count() == 0

        await page.fill("#token", TEST_TOKEN)
        await page.click("form.login-form button[type=submit]")
        await expect(page.locator("table.jobs")).to_be_visible()
        assert page.url == f"{server.base_url}/"
        (cookie,) = await visit.context.cookies()
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # no script can read it

        # The login URL that `localjobs serve` prints: signed in, the token gone from the address.
        await visit.context.clear_cookies()
        await visit.open(f"/?token={TEST_TOKEN}")
        await expect(page.locator("table.jobs")).to_be_visible()
        assert page.url == f"{server.base_url}/"
        # Logging out ends it.
        await page.click("form.logout button")
        await expect(page.locator("form.login-form")).to_be_visible()
        assert await visit.context.cookies() == []
    finally:
        await _finish(visit)


# --------------------------------------------------------------------------- the list


async def test_jobs_appear_progress_and_finish_without_a_reload(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "live-list")
    page = signed_in.page
    await signed_in.open("/?workspace=live-list")
    await expect(page.locator("#rows")).to_contain_text("No jobs in this workspace yet")
    await page.evaluate("window.sameDocument = true")  # gone if the page reloads

    gate = tmp_path / "go"
    await api.create_job(
        [shell("prepare", "true"), shell("train", f"while [ ! -e {gate} ]; do sleep 0.05; done")],
        name="list-live",
    )
    row = page.locator('tr[data-job="list-live"]')
    await expect(row.locator(".status")).to_have_class(re.compile(r"\bs-active\b"))
    await expect(row.locator("td").nth(2)).to_contain_text("train · 2/2")
    status, _ = await api.request("PATCH", "/jobs/list-live/status-details", json={"percentage_done": 40})
    assert status == 200
    await expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "40")
    gate.touch()
    await expect(row.locator(".status")).to_have_class(re.compile(r"\bs-completed\b"))
    await expect(row.locator(".status")).to_contain_text("completed")  # a word, not only a colour
    assert await page.evaluate("window.sameDocument === true")
    # The job's page is a plain link: it can be bookmarked, shared, opened in a new tab.
    assert await row.locator("a").get_attribute("href") == "/workspaces/live-list/jobs/list-live"


async def test_filters_search_and_pages(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "filters")
    names = [f"batch-{i:02d}" for i in range(11)]
    for name in names:
        await api.create_job([shell("main", "true")], name=name)
    await api.create_job([shell("prepare", "true"), shell("fails", "exit 4")], name="odd-one")
    for name in [*names, "odd-one"]:
        await api.wait_job(name)

    page = signed_in.page
    rows = page.locator("#rows tr[data-job]")
    await signed_in.open("/?workspace=filters&page_size=10")
    await expect(page.locator("#pageinfo")).to_have_text("Page 1 of 2 · 12 jobs")
    await expect(rows).to_have_count(10)
    await expect(rows.first).to_have_attribute("data-job", "odd-one")  # newest first
    # A failed job says which step failed.
    await expect(rows.first.locator("td").nth(2)).to_contain_text("fails · 2/2")
    await page.click("#next")
    await expect(page.locator("#pageinfo")).to_have_text("Page 2 of 2 · 12 jobs")
    await expect(rows).to_have_count(2)
    await expect(rows.last).to_have_attribute("data-job", "batch-00")

    await page.fill("#search", "odd")
    await expect(rows).to_have_count(1)
    await expect(rows.first).to_have_attribute("data-job", "odd-one")
    assert "q=odd" in page.url  # a filtered list can be bookmarked

    await page.fill("#search", "")
    await page.select_option("#status", "error")
    await expect(page.locator("#pageinfo")).to_have_text("Page 1 of 1 · 1 job")
    await expect(rows.first).to_have_attribute("data-job", "odd-one")
    await page.select_option("#status", "completed")
    await expect(page.locator("#pageinfo")).to_have_text("Page 1 of 2 · 11 jobs")

    # The same filters from the address bar.
    await signed_in.open("/?workspace=filters&status=completed&q=batch-0")
    await expect(rows).to_have_count(10)


# --------------------------------------------------------------------------- a job's page


async def test_the_log_opens_on_the_tail_follows_marks_stderr_and_pages_back(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "logs")
    first, second = tmp_path / "first", tmp_path / "second"
    script = (
        "i=1; while [ $i -le 1500 ]; do echo line $i; i=$((i+1)); done; "
        f"while [ ! -e {first} ]; do sleep 0.05; done; echo late out; echo late err >&2; "
        f"while [ ! -e {second} ]; do sleep 0.05; done; echo last line"
    )
    await api.create_job([shell("talk", script)], name="chatty")
    await _wait_for_log_total(api, "chatty", 1500)

    page = signed_in.page
    await signed_in.open("/?workspace=logs")
    await page.click('tr[data-job="chatty"] a')
    await page.wait_for_url(f"{server.base_url}/workspaces/logs/jobs/chatty")
    log = page.locator("#log")
    lines = log.locator(".line")
    await expect(lines.last).to_contain_text("line 1500")
    shown = await lines.count()
    assert shown < 1500  # the tail, never the whole log
    assert await log.locator(".msg", has_text=re.compile(r"^line 1$")).count() == 0

    first.touch()
    await expect(log.locator(".line", has_text="late out")).to_be_visible()
    err = log.locator(".line", has_text="late err")
    await expect(err).to_have_class(re.compile(r"\bstderr\b"))
    await expect(err.locator(".err-tag")).to_have_text("stderr")
    await expect(err.locator(".msg")).to_have_text("late err")  # the prefix is shown as the tag
    await expect(log.locator(".line", has_text="late out")).not_to_have_class(re.compile(r"\bstderr\b"))

    # Scrolled to the top, the view pages back until the log's first line.
    for _ in range(60):
        if await log.locator(".log-start").count():
            break
        await log.evaluate("box => { box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); }")
        await page.wait_for_timeout(200)
    await expect(log.locator(".log-start")).to_be_visible()
    await expect(lines.first.locator(".msg")).to_have_text("line 1")
    assert await log.locator(".msg", has_text=re.compile(r"^line 750$")).count() == 1  # nothing twice

    second.touch()
    await expect(page.locator("#log-state")).to_contain_text("finished")
    await expect(page.locator("#job-status .status")).to_have_class(re.compile(r"\bs-completed\b"))
    await expect(log.locator(".line").last).to_contain_text("last line", timeout=WAIT_MS)


async def test_a_long_followed_log_keeps_the_page_light_and_still_pages_back(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "long")
    gate = tmp_path / "gate"
    script = f"while [ ! -e {gate} ]; do sleep 0.05; done; seq 1 7000 | sed 's/^/row /'"
    await api.create_job([shell("main", script)], name="long-log")
    page = signed_in.page
    await signed_in.open("/workspaces/long/jobs/long-log")
    await expect(page.locator("#log-state")).to_contain_text("following")
    gate.touch()  # 7,000 lines arrive while the page follows
    log = page.locator("#log")
    await expect(log.locator(".line").last).to_contain_text("row 7000")
    assert await log.locator(".line").count() <= 5000  # the oldest went
    assert await log.locator(".msg", has_text=re.compile(r"^row 1$")).count() == 0
    for _ in range(80):
        if await log.locator(".log-start").count():
            break
        await log.evaluate("box => { box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); }")
        await page.wait_for_timeout(200)
    await expect(log.locator(".log-start")).to_be_visible()
    await expect(log.locator(".line").first.locator(".msg")).to_have_text("row 1")
    # Every line once, in order, from the first to where the trimmed view began.
    texts = await log.locator(".msg").all_text_contents()
    numbers = [int(t.split()[1]) for t in texts]
    assert numbers == list(range(1, len(numbers) + 1)) and numbers[-1] == 7000


_SET_HIDDEN = """hidden => {
  Object.defineProperty(document, 'hidden', {value: hidden, configurable: true});
  document.dispatchEvent(new Event('visibilitychange'));
}"""


async def test_a_hidden_tab_lets_go_of_the_log_stream_and_resumes_where_it_stopped(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "hidden")
    gate, done = tmp_path / "gate", tmp_path / "done"
    script = (
        f"echo before; while [ ! -e {gate} ]; do sleep 0.05; done; echo while hidden; "
        f"while [ ! -e {done} ]; do sleep 0.05; done"
    )
    await api.create_job([shell("main", script)], name="background")
    page = signed_in.page
    await signed_in.open("/workspaces/hidden/jobs/background")
    log = page.locator("#log")
    await expect(log.locator(".line", has_text="before")).to_be_visible()
    await page.evaluate(_SET_HIDDEN, True)
    await expect(page.locator("#log-state")).to_contain_text("paused while the tab is hidden")
    gate.touch()
    await _wait_for_log_total(api, "background", 2)
    await page.evaluate(_SET_HIDDEN, False)
    await expect(log.locator(".line", has_text="while hidden")).to_have_count(1)
    await expect(log.locator(".line")).to_have_count(2)  # resumed after its last line: nothing twice
    done.touch()
    await expect(page.locator("#log-state")).to_contain_text("finished")


async def test_the_steps_tree_shows_statuses_and_error_details(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "tree")
    await api.create_job(
        [shell("setup", "echo ready"), shell("crash", "echo going down; echo broken pipe >&2; exit 7")],
        name="crashes",
    )
    await api.wait_job("crashes")
    page = signed_in.page
    await signed_in.open("/workspaces/tree/jobs/crashes")
    steps = page.locator("#steps > li.step")
    await expect(steps).to_have_count(2)
    await expect(steps.nth(0).locator(":scope > .node-head .status")).to_have_class(
        re.compile(r"\bs-completed\b")
    )
    await expect(steps.nth(1).locator(":scope > .node-head .status")).to_have_class(
        re.compile(r"\bs-error\b")
    )
    await expect(steps.nth(1).locator("li.task")).to_have_count(1)
    details = page.locator("#job-details .error-box")
    await expect(details).to_contain_text("Exit code")
    await expect(details).to_contain_text("7")
    await expect(details.locator(".last-lines")).to_contain_text("broken pipe")


async def test_cancel_a_running_job_and_see_the_apis_refusal(
    signed_in: Visit, server: Server, session: aiohttp.ClientSession
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "actions")
    await api.create_job([shell("main", "echo started; exec sleep 300")], name="to-cancel")
    await api.wait_job("to-cancel", {"active"})
    page = signed_in.page
    await signed_in.open("/workspaces/actions/jobs/to-cancel")
    badge = page.locator("#job-status .status")
    await expect(badge).to_have_class(re.compile(r"\bs-active\b"))
    # Deleting a running job: the API says no, and the page says what the API said.
    status, refusal = await api.request("DELETE", "/jobs/to-cancel")
    assert status == 409, refusal
    await page.click('button[data-action="delete"]')
    await page.locator('#confirm-delete button[value="delete"]').click()
    outcome = page.locator("#outcome")
    await expect(outcome).to_have_class(re.compile(r"\bbad\b"))
    await expect(outcome).to_contain_text(f"Not done: 409: {refusal['detail']}")

    await page.click('button[data-action="cancel"]')
    await expect(outcome).to_contain_text("Cancel asked")
    await expect(badge).to_have_class(re.compile(r"\bs-cancelled\b"))
    job = await api.wait_job("to-cancel")
    assert job["status"] == "cancelled"
    # An action that no longer applies changes nothing, and the page says so.
    await page.click('button[data-action="pause"]')
    await expect(outcome).to_have_text("Nothing to pause: the job is cancelled.")


async def test_download_a_result(signed_in: Visit, server: Server, session: aiohttp.ClientSession) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "results")
    make = 'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out" && printf "weights 42" > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/model.bin"'
    await api.create_job([shell("make", make)], name="with-result")
    job = await api.wait_job("with-result")
    body = {
        "artifact_url": f"{api.workspace}/{job['fileset']}#out/model.bin",
        "artifact_storage_type": "fileset",
    }
    status, created = await api.request("POST", "/jobs/with-result/results/model", json=body)
    assert status == 201, created

    page = signed_in.page
    await signed_in.open("/workspaces/results/jobs/with-result")
    link = page.locator("#results a.download")
    await expect(link).to_contain_text("model")
    async with page.expect_download() as started:
        await link.click()
    download = await started.value
    assert download.suggested_filename == "model"
    assert Path(await download.path()).read_bytes() == b"weights 42"


async def test_delete_asks_first(signed_in: Visit, server: Server, session: aiohttp.ClientSession) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "deletes")
    await api.create_job([shell("main", "true")], name="short-lived")
    await api.wait_job("short-lived")
    page = signed_in.page
    await signed_in.open("/workspaces/deletes/jobs/short-lived")
    await expect(page.locator("#job-status .status")).to_have_class(re.compile(r"\bs-completed\b"))
    dialog = page.locator("#confirm-delete")
    await page.click('button[data-action="delete"]')
    await expect(dialog).to_be_visible()
    await expect(dialog).to_contain_text("short-lived")
    await dialog.locator('button[value="keep"]').click()
    await expect(dialog).to_be_hidden()
    assert (await api.request("GET", "/jobs/short-lived"))[0] == 200  # kept

    await page.click('button[data-action="delete"]')
    await dialog.locator('button[value="delete"]').click()
    await expect(page.locator("#outcome")).to_contain_text("Deleted.")
    assert (await api.request("GET", "/jobs/short-lived"))[0] == 404


async def test_a_phone_sized_screen_needs_no_sideways_scrolling(
    browser: Any, server: Server, session: aiohttp.ClientSession
) -> None:
    from playwright.async_api import expect

    api = api_in(session, server, "phone")
    await api.create_job(
        [shell("a-step-with-a-long-name", "echo a fairly long line of output for a narrow screen")],
        name="a-job-with-a-rather-long-name-for-a-phone",
    )
    await api.wait_job("a-job-with-a-rather-long-name-for-a-phone")
    visit = await _visit(browser, server, viewport={"width": 390, "height": 844}, is_mobile=True)
    try:
        page = visit.page
        await visit.open(f"/?token={TEST_TOKEN}&workspace=phone")
        await expect(page.locator("#rows tr[data-job]")).to_have_count(1)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        await page.click("#rows a")
        await expect(page.locator("#log .line")).to_have_count(1)
        assert await page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    finally:
        await _finish(visit)


async def test_the_list_shows_gpus_held_and_why_a_step_waits(
    browser: Any, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    def gpu_step(script: str) -> dict[str, Any]:
        container = {"image": "unused-as-host-process", "entrypoint": ["sh", "-c"], "command": [script]}
        return {"name": "train", "executor": {"provider": "gpu", "container": container}}

    settings = {"gpus": ("0",), "gpu_containers_as_subprocess": True}
    async with running_server(tmp_path / "gpus", **settings) as gpu_server:
        api = api_in(session, gpu_server, "default")
        gate = tmp_path / "go"
        await api.create_job([gpu_step(f"while [ ! -e {gate} ]; do sleep 0.05; done")], name="holder")
        await api.wait_job("holder", {"active"}, timeout_s=60)
        await api.create_job([gpu_step("true")], name="waiter")
        visit = await _visit(browser, gpu_server, viewport={"width": 1280, "height": 900})
        try:
            await visit.open(f"/?token={TEST_TOKEN}")
            page = visit.page
            await expect(page.locator('tr[data-job="holder"] .gpus')).to_have_text("GPU 0")
            waiting = page.locator('tr[data-job="waiter"] .waiting')
            await expect(waiting).to_have_text("waiting for 1 GPU; 0 free")
            gate.touch()
            await expect(page.locator('tr[data-job="waiter"] .status')).to_have_class(
                re.compile(r"\bs-completed\b")
            )
            await expect(page.locator("#rows .waiting")).to_have_count(0)
        finally:
            await _finish(visit)
