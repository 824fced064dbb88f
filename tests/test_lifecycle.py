"""End to end over HTTP: steps run in order as real processes and every read endpoint tells the truth."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path

from tests.conftest import Api, api_for, running_server, shell, step


async def test_steps_run_in_order_and_job_completes(api: Api) -> None:
    job = await api.create_job([shell("first", "echo one"), shell("second", "echo two")], name="ordered")
    assert job["status"] == "created"
    done = await api.wait_job("ordered")
    assert done["status"] == "completed"
    assert await api.logs("ordered") == ["one", "two"]
    status, tree = await api.request("GET", "/jobs/ordered/status")
    assert status == 200
    assert [s["name"] for s in tree["steps"]] == ["first", "second"]
    assert all(s["status"] == "completed" for s in tree["steps"])
    assert all(t["status"] == "completed" for s in tree["steps"] for t in s["tasks"])
    assert tree["steps"][0]["created_at"] <= tree["steps"][1]["created_at"]
    assert done["updated_at"] > done["created_at"]


async def test_failing_step_ends_job_in_error_and_later_steps_never_start(api: Api) -> None:
    await api.create_job(
        [shell("fails", "echo before; echo bad >&2; exit 3"), step("never", "true")], name="failing"
    )
    job = await api.wait_job("failing")
    assert job["status"] == "error"
    assert job["error_details"]["exit_code"] == 3
    assert "code 3" in job["error_details"]["message"]
    assert job["error_details"]["last_lines"] == ["before", "[stderr] bad"]
    status, _ = await api.request("GET", "/jobs/failing/steps/never")
    assert status == 404
    status, s = await api.request("GET", "/jobs/failing/steps/fails")
    assert s["status"] == "error" and s["status_details"]["exit_code"] == 3


async def test_signal_death_is_reported(api: Api) -> None:
    await api.create_job([shell("killed", "kill -9 $$")], name="signalled")
    job = await api.wait_job("signalled")
    assert job["status"] == "error"
    assert job["error_details"]["signal"] == "SIGKILL"


async def test_missing_executable_is_a_clear_error(api: Api) -> None:
    await api.create_job([step("nope", "definitely-not-a-command-xyz")], name="missing-exe")
    job = await api.wait_job("missing-exe")
    assert job["status"] == "error"
    assert "executable not found: definitely-not-a-command-xyz" in job["error_details"]["message"]


async def test_task_environment_config_and_folders(api: Api) -> None:
    script = (
        'echo "id=$NEMO_JOB_ID step=$NEMO_JOB_STEP ws=$NEMO_JOB_WORKSPACE task=$NEMO_JOB_TASK"; '
        'echo "mine=$MY_VAR url=$NMP_BASE_URL"; cat "$NEMO_JOB_STEP_CONFIG_FILE_PATH"; echo; '
        'test -d "$NEMO_JOB_EPHEMERAL_TASK_STORAGE_PATH" && test -d "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH" '
        '&& echo folders-ok; pwd; echo "attempt=$NEMO_JOB_ATTEMPT_ID"; echo "secrets=[$NEMO_JOB_SECRETS]"'
    )
    created = await api.create_job(
        [shell("env", script, environment=[{"name": "MY_VAR", "value": "42"}], config={"lr": 0.1})],
        name="envjob",
    )
    job = await api.wait_job("envjob")
    assert job["status"] == "completed", job
    lines = await api.logs("envjob")
    status, tasks = await api.request("GET", "/jobs/envjob/steps/env/tasks")
    task_name = tasks["data"][0]["name"]
    assert lines[0] == f"id=envjob step=env ws=default task={task_name}"
    assert lines[1] == f"mine=42 url={api.base_url}"
    assert json.loads(lines[2]) == {"lr": 0.1}
    assert lines[3] == "folders-ok"
    assert Path(lines[4]).name == task_name
    assert lines[5] == f"attempt={created['attempt_id']}"
    assert lines[6] == "secrets=[]"


async def test_daemon_environment_does_not_leak(api: Api, monkeypatch: object) -> None:
    import os

    os.environ["LEAKY_SECRET_FOR_TEST"] = "x"
    try:
        await api.create_job([shell("env", "env")], name="noleak")
        await api.wait_job("noleak")
        lines = await api.logs("noleak")
    finally:
        del os.environ["LEAKY_SECRET_FOR_TEST"]
    assert not any(line.startswith("LEAKY_SECRET_FOR_TEST") for line in lines)
    assert any(line.startswith("PATH=") for line in lines)


async def test_status_details_are_truthful_while_running(api: Api) -> None:
    await api.create_job([shell("slow", "echo started; sleep 30")], name="running")
    await api.wait_job("running", {"active"})
    status, s = await api.request("GET", "/jobs/running/steps/slow")
    assert s["status"] == "active"
    pid = s["status_details"]["pid"]
    import os

    os.kill(pid, 0)  # the recorded pid is a live process
    status, job = await api.request("POST", "/jobs/running/cancel")
    assert status == 200
    job = await api.wait_job("running")
    assert job["status"] == "cancelled"


async def test_task_put_is_a_heartbeat_and_feeds_job_status_details(api: Api) -> None:
    script = (
        'curl -s -X PUT -H "content-type: application/json" -H "Authorization: Bearer $(cat "$NMP_WORKLOAD_IDENTITY_TOKEN_FILE")" '
        '-d \'{"status":"active","status_details":{"percentage_done":50}}\' '
        '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/steps/$NEMO_JOB_STEP/tasks/$NEMO_JOB_TASK"'
        " >/dev/null; echo reported"
    )
    await api.create_job([shell("progress", script)], name="progress")
    job = await api.wait_job("progress")
    assert job["status"] == "completed", job
    assert job["status_details"]["percentage_done"] == 50


async def test_job_status_details_patch_merges(api: Api) -> None:
    await api.create_job([step("s1", "true")], name="details")
    status, body = await api.request("PATCH", "/jobs/details/status-details", json={"a": 1})
    assert (status, body) == (200, None)
    await api.request("PATCH", "/jobs/details/status-details", json={"b": 2})
    status, job = await api.request("GET", "/jobs/details")
    assert job["status_details"]["a"] == 1 and job["status_details"]["b"] == 2


async def test_delete_requires_terminal_job(api: Api) -> None:
    await api.create_job([shell("slow", "sleep 30")], name="deleteme")
    await api.wait_job("deleteme", {"active"})
    status, body = await api.request("DELETE", "/jobs/deleteme")
    assert status == 409 and "detail" in body
    await api.request("POST", "/jobs/deleteme/cancel")
    await api.wait_job("deleteme")
    status, body = await api.request("DELETE", "/jobs/deleteme")
    assert (status, body) == (204, None)
    status, _ = await api.request("GET", "/jobs/deleteme")
    assert status == 404


async def test_workload_gets_default_signal_handling(api: Api) -> None:
    # The daemon (Python) ignores SIGPIPE; its children must not inherit that.
    await api.create_job([shell("pipe", "yes | head -n 3")], name="sigpipe")
    job = await api.wait_job("sigpipe")
    assert job["status"] == "completed"
    assert await api.logs("sigpipe") == ["y", "y", "y"]


async def test_a_database_locked_by_another_program_delays_the_record_but_loses_nothing(
    tmp_path: Path,
) -> None:
    """Another program holds the write lock longer than busy_timeout while a step prints and ends:
    its output and final status are written once the lock is gone, not lost to the hitch."""
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([shell("only", "sleep 0.5; echo printed while locked")], name="locked")
        await api.wait_job("locked", {"active"})
        db = srv.daemon.settings.db_path

        def hold_the_lock(seconds: float) -> None:
            conn = sqlite3.connect(db, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                time.sleep(seconds)
                conn.execute("ROLLBACK")
            finally:
                conn.close()

        holder = asyncio.create_task(asyncio.to_thread(hold_the_lock, 6.5))  # busy_timeout is 5 s
        job = await api.wait_job("locked", timeout_s=30)
        await holder
        assert job["status"] == "completed"
        assert await api.logs("locked") == ["printed while locked"]


async def test_the_jobs_status_details_carry_its_tasks_details_and_true_messages(api: Api) -> None:
    await api.create_job([shell("fail", "exit 7")], name="seven")
    job = await api.wait_job("seven")
    details = job["status_details"]
    assert details["exit_code"] == 7 and details["message"] == "Job exited with code 7"
    assert isinstance(details["pid"], int) and "/seven/" in details["subprocess_work_dir"]
    assert details["subprocess_persistent_storage_path"].endswith("job-storage")
    await api.create_job([shell("ok", "true")], name="fine")
    assert (await api.wait_job("fine"))["status_details"][
        "message"
    ] == "Job completed successfully with exit code 0"
    await api.create_job([shell("long", "sleep 30")], name="patched")
    await api.wait_job("patched", {"active"})
    status, step = await api.request("PATCH", "/jobs/patched/steps/long/status", json={"status": "error"})
    assert status == 200, step
    assert step["status_details"]["message"] == "Status set to error through the API"


async def test_a_short_step_skips_active_yet_keeps_what_active_would_have_recorded(tmp_path: Path) -> None:
    """A workload that ends within ACTIVE_WRITE_DELAY_S goes from `pending` straight to its outcome
    (one write fewer); one that runs longer is seen `active` first. Either way the step, its task
    and the job end with the same details: pid, pgid, the task's folders, the exit code."""
    from runner.step_run import ACTIVE_WRITE_DELAY_S

    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([step("main", "true")], name="short")
        await api.create_job([shell("main", f"sleep {ACTIVE_WRITE_DELAY_S * 10}")], name="long")
        status, long_step = 0, {}
        for _ in range(200):  # the long one is seen active while it sleeps
            status, long_step = await api.request("GET", "/jobs/long/steps/main")
            if long_step.get("status") in ("active", "completed"):
                break
            await asyncio.sleep(0.01)
        assert status == 200 and long_step["status"] == "active", long_step
        assert long_step["status_details"]["message"] == "Job is running"
        for name in ("short", "long"):
            job = await api.wait_job(name)
            assert job["status"] == "completed", job
            status, s = await api.request("GET", f"/jobs/{name}/steps/main")
            details = s["status_details"]
            assert status == 200 and s["status"] == "completed"
            assert details["exit_code"] == 0 and details["pid"] == details["pgid"] > 0, details
            assert Path(details["subprocess_work_dir"]).is_dir(), details
            assert "subprocess_persistent_storage_path" in details
            status, tree = await api.request("GET", f"/jobs/{name}/status")
            task = tree["steps"][0]["tasks"][0]
            assert task["status"] == "completed" and task["status_details"]["pid"] == details["pid"], task
            assert job["status_details"]["pid"] == details["pid"], job
        # Which way each went: only a step recorded `active` has a time it became active (unless
        # the machine stalled the short one's exit past the delay, which the path also allows).
        conn = sqlite3.connect(srv.daemon.settings.db_path)
        try:
            rows = dict(conn.execute("SELECT job_name, active_since IS NOT NULL FROM steps").fetchall())
        finally:
            conn.close()
        assert rows["long"] == 1, rows
