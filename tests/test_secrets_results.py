"""Secrets that never leak, and results that round-trip byte for byte."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

from tests.conftest import Api, shell

SECRETS = "/apis/secrets/v2/workspaces/default/secrets"
VALUE = "s3cr3t-Value-9f8e7d"


async def _secret_api(api: Api, method: str, path: str = "", **kwargs: Any) -> tuple[int, Any]:
    return await api.request(method, f"{api.base_url}{SECRETS}{path}", **kwargs)


async def test_secrets_api_crud_and_access(api: Api) -> None:
    status, created = await _secret_api(
        api, "POST", json={"name": "db-password", "value": VALUE, "description": "d"}
    )
    assert status == 201
    assert created["name"] == "db-password" and "value" not in created
    status, _ = await _secret_api(api, "POST", json={"name": "db-password", "value": "x"})
    assert status == 409
    status, _ = await _secret_api(api, "POST", json={"name": "Bad_Name", "value": "x"})
    assert status == 422
    _, page = await _secret_api(api, "GET")
    assert [s["name"] for s in page["data"]] == ["db-password"]
    assert page["pagination"]["total_results"] == 1
    assert VALUE not in json.dumps(page)
    _, got = await _secret_api(api, "GET", "/db-password")
    assert "value" not in got
    _, accessed = await _secret_api(api, "GET", "/db-password/access")
    assert accessed == {"name": "db-password", "workspace": "default", "value": VALUE}
    status, updated = await _secret_api(api, "PATCH", "/db-password", json={"value": "other-value"})
    assert status == 200 and "value" not in updated
    _, accessed = await _secret_api(api, "GET", "/db-password/access")
    assert accessed["value"] == "other-value"
    status, _ = await _secret_api(api, "DELETE", "/db-password")
    assert status == 204
    status, _ = await _secret_api(api, "GET", "/db-password")
    assert status == 404


async def test_secret_reaches_the_step_masked_and_nowhere_else(api: Api) -> None:
    await _secret_api(api, "POST", json={"name": "token", "value": VALUE})
    report = (
        'curl -s -X PUT -H "content-type: application/json" '
        '-d "{\\"status\\":\\"active\\",\\"status_details\\":{\\"leak\\":\\"$API_TOKEN\\"}}" '
        '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/steps/$NEMO_JOB_STEP/tasks/$NEMO_JOB_TASK"'
        " >/dev/null"
    )
    script = f'echo "token is $API_TOKEN"; echo "len=${{#API_TOKEN}}"; echo "$API_TOKEN" >&2; {report}; echo "refs=$NEMO_JOB_SECRETS"'
    step = shell("use", script, environment=[{"name": "API_TOKEN", "from_secret": {"name": "token"}}])
    created = await api.create_job([step], name="uses-secret")
    job = await api.wait_job("uses-secret")
    assert job["status"] == "completed", job
    lines = await api.logs("uses-secret")
    assert lines[0] == "token is ********"
    assert lines[1] == f"len={len(VALUE)}"  # the real value reached the environment
    assert "[stderr] ********" in lines
    assert "refs=API_TOKEN=default/token" in lines
    responses = [created, job]
    for path in (
        "/jobs/uses-secret",
        "/jobs/uses-secret/status",
        "/jobs",
        "/jobs/uses-secret/steps",
        "/jobs/-/steps",
        "/jobs/uses-secret/steps/use",
        "/jobs/uses-secret/steps/use/tasks",
        "/jobs/uses-secret/logs",
    ):
        status, body = await api.request("GET", path)
        assert status == 200, path
        responses.append(body)
    assert VALUE not in json.dumps(responses)


async def test_missing_secret_is_refused_at_submission(api: Api) -> None:
    step = shell("use", "true", environment=[{"name": "X", "from_secret": {"name": "nope"}}])
    body = {"name": "no-secret", "source": "t", "spec": {}, "platform_spec": {"steps": [step]}}
    status, err = await api.request("POST", "/jobs", json=body)
    assert status == 409
    assert "default/nope" in err["detail"]


async def test_secret_deleted_before_the_step_runs_fails_the_step(api: Api) -> None:
    await _secret_api(api, "POST", json={"name": "short-lived", "value": "value-123"})
    # The first step ends only once the secret is deleted (a fixed sleep had to outlast the DELETE).
    wait = 'i=0; while [ ! -e "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/go" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i+1)); done'
    first = shell("first", wait)
    second = shell("second", "echo $X", environment=[{"name": "X", "from_secret": {"name": "short-lived"}}])
    await api.create_job([first, second], name="vanishing")
    await api.wait_job("vanishing", {"active"})
    _, s = await api.request("GET", "/jobs/vanishing/steps/first")
    storage = Path(s["status_details"]["subprocess_work_dir"]).parent.parent / "job-storage"
    status, _ = await _secret_api(api, "DELETE", "/short-lived")
    assert status == 204
    (storage / "go").touch()
    job = await api.wait_job("vanishing")
    assert job["status"] == "error"
    assert "short-lived" in job["error_details"]["message"]


def _publish(kind: str) -> str:
    if kind == "file":
        return 'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out" && head -c 300000 /dev/urandom > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/model.bin"'
    return (
        'd="$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/report"; mkdir -p "$d/sub" && echo hello > "$d/a.txt" '
        '&& head -c 5000 /dev/urandom > "$d/sub/b.bin"'
    )


async def test_result_file_round_trip(api: Api) -> None:
    await api.create_job([shell("make", _publish("file"))], name="res-file")
    job = await api.wait_job("res-file")
    assert job["status"] == "completed"
    url = f"default/{job['fileset']}#out/model.bin"
    status, result = await api.request(
        "POST", "/jobs/res-file/results/model", json={"artifact_url": url, "artifact_storage_type": "fileset"}
    )
    assert status == 201, result
    assert result["job"] == job["id"] and result["name"] == "model" and result["artifact_url"] == url
    status, _ = await api.request(
        "POST", "/jobs/res-file/results/model", json={"artifact_url": url, "artifact_storage_type": "fileset"}
    )
    assert status == 409
    _, listed = await api.request("GET", "/jobs/res-file/results")
    assert [r["name"] for r in listed["data"]] == ["model"]
    _, got = await api.request("GET", "/jobs/res-file/results/model")
    assert got == result
    async with api.session.get(f"{api.ws}/jobs/res-file/results/model/download") as resp:
        assert resp.status == 200
        assert 'filename="model"' in resp.headers["Content-Disposition"]
        body = await resp.read()
    _, step = await api.request("GET", "/jobs/res-file/steps/make")
    storage = os.path.join(
        os.path.dirname(os.path.dirname(step["status_details"]["subprocess_work_dir"])), "job-storage"
    )
    with open(os.path.join(storage, "out", "model.bin"), "rb") as original:
        assert body == original.read()


async def test_result_folder_downloads_as_tar_gz(api: Api) -> None:
    await api.create_job([shell("make", _publish("folder"))], name="res-dir")
    job = await api.wait_job("res-dir")
    body = {"artifact_url": f"default/{job['fileset']}#out/report", "artifact_storage_type": "fileset"}
    status, _ = await api.request("POST", "/jobs/res-dir/results/report", json=body)
    assert status == 201
    async with api.session.get(f"{api.ws}/jobs/res-dir/results/report/download") as resp:
        assert resp.status == 200
        assert 'filename="report.tar.gz"' in resp.headers["Content-Disposition"]
        data = await resp.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == ["report", "report/a.txt", "report/sub", "report/sub/b.bin"]
        a_txt = tar.extractfile("report/a.txt")
        assert a_txt is not None and a_txt.read() == b"hello\n"


async def test_a_folder_result_keeps_the_folders_own_name_inside(api: Api) -> None:
    await api.create_job([shell("make", _publish("folder"))], name="res-named")
    job = await api.wait_job("res-named")
    body = {"artifact_url": f"default/{job['fileset']}#out/report", "artifact_storage_type": "fileset"}
    assert (await api.request("POST", "/jobs/res-named/results/bundle", json=body))[0] == 201
    async with api.session.get(f"{api.ws}/jobs/res-named/results/bundle/download") as resp:
        assert 'filename="bundle.tar.gz"' in resp.headers["Content-Disposition"]
        data = await resp.read()
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        assert sorted(tar.getnames())[0] == "report"  # the folder's name, not the result's


async def test_result_paths_that_leave_the_fileset_are_refused(api: Api) -> None:
    script = 'ln -s /etc "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/escape"; ln -s /etc/passwd "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/pw"'
    await api.create_job([shell("links", script)], name="escapes")
    job = await api.wait_job("escapes")
    fs = f"default/{job['fileset']}"
    for url in (
        f"{fs}#../../etc/passwd",
        f"{fs}#escape/passwd",
        f"{fs}#pw",
        "other/fileset#x",
    ):
        status, body = await api.request(
            "POST",
            "/jobs/escapes/results/bad",
            json={"artifact_url": url, "artifact_storage_type": "fileset"},
        )
        assert status == 422, (url, body)
        assert isinstance(body["detail"], str)
    # A leading slash is dropped, as the reference's parser does: still inside the fileset.
    body = {"artifact_url": f"{fs}#/etc/passwd", "artifact_storage_type": "fileset"}
    assert (await api.request("POST", "/jobs/escapes/results/abs", json=body))[0] == 201
    async with api.session.get(f"{api.ws}/jobs/escapes/results/abs/download") as resp:
        assert resp.status == 404  # the fileset has no etc/passwd; /etc/passwd is never served
    status, _ = await api.request(
        "POST", "/jobs/escapes/results/bad", json={"artifact_url": "x", "artifact_storage_type": "s3"}
    )
    assert status == 422
    status, _ = await api.request("GET", "/jobs/escapes/results/nope/download")
    assert status == 404


async def test_inline_platform_spec_secret_values_are_never_echoed(api: Api) -> None:
    body = {
        "name": "inline-secret",
        "source": "t",
        "spec": {},
        "platform_spec": {"steps": [shell("noop", "true")], "secrets": [{"name": "inline", "value": VALUE}]},
    }
    status, created = await api.request("POST", "/jobs", json=body)
    assert status == 201
    _, fetched = await api.request("GET", "/jobs/inline-secret")
    # Its fields as the reference's model has them, the value never shown (null).
    assert created["platform_spec"]["secrets"] == [{"name": "inline", "value": None, "ref_id": None}]
    assert VALUE not in json.dumps([created, fetched])


async def test_stalled_folder_downloads_do_not_hold_up_new_steps(api: Api) -> None:
    make = 'd="$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/big"; mkdir -p "$d" && head -c 8000000 /dev/urandom > "$d/blob"'
    await api.create_job([shell("make", make)], name="big-result")
    job = await api.wait_job("big-result")
    body = {"artifact_url": f"default/{job['fileset']}#big", "artifact_storage_type": "fileset"}
    assert (await api.request("POST", "/jobs/big-result/results/big", json=body))[0] == 201
    stalled = []
    try:
        for _ in range(10):  # more than the default worker pool has threads on a small machine
            resp = await api.session.get(f"{api.ws}/jobs/big-result/results/big/download")
            assert resp.status == 200
            stalled.append(resp)  # never read: its producer blocks on a full pipe
        await api.create_job([shell("quick", "echo still-starting")], name="meanwhile")
        assert (await api.wait_job("meanwhile", timeout_s=15))["status"] == "completed"
    finally:
        for resp in stalled:
            resp.close()
