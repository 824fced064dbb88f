"""Every `artifact_url` form the reference's fileset parser reads, served; the forms it does not
read, or that name another fileset, refused at creation (422), never found wrong at download."""

from __future__ import annotations

import io
import sqlite3
import tarfile
from pathlib import Path, PurePosixPath

import pytest
from filesets import parse_fileset_ref as reference_parse

from runner.errors import Unprocessable
from runner.fileset_ref import parse_fileset_ref
from tests.conftest import Api, api_for, running_server, shell

_MAKE = (
    'd="$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH"; mkdir -p "$d/out/report" '
    '&& echo model > "$d/out/model.bin" && echo hello > "$d/out/report/a.txt"'
)

FORMS = [
    "fileset://default/fs#out/model.bin",
    "fileset://default/fs",
    "fileset://default/fs#",
    "default/fs#out/model.bin",
    "default/fs#/out/model.bin",
    "fs#out/model.bin",
    "default/fs",
    "fs",
    "default/fs#",
    "default/fs/out/model.bin",
    "/default/fs#out",
    "fileset:///default/fs#out/report/a.txt",
    "ws/nested/fs#x",
]


@pytest.mark.parametrize("ref", FORMS)
def test_the_parser_reads_each_form_as_the_reference_does(ref: str) -> None:
    ours = parse_fileset_ref(ref, "default")
    workspace, fileset, path = reference_parse(ref, workspace_fallback="default")
    assert (ours.workspace, ours.fileset) == (workspace, fileset)
    assert ours.path == PurePosixPath(path or ".")


@pytest.mark.parametrize("ref", ["", "fileset://", "#x", "default/#x", "fileset:///#path"])
def test_references_without_a_fileset_are_refused(ref: str) -> None:
    with pytest.raises(Unprocessable):
        parse_fileset_ref(ref, "default")


async def _download(api: Api, job: str, name: str) -> tuple[int, str, bytes]:
    async with api.session.get(f"{api.ws}/jobs/{job}/results/{name}/download") as resp:
        return resp.status, resp.headers.get("Content-Disposition", ""), await resp.read()


async def test_every_form_naming_the_jobs_fileset_is_served(api: Api) -> None:
    await api.create_job([shell("make", _MAKE)], name="forms")
    job = await api.wait_job("forms")
    assert job["status"] == "completed"
    fs = job["fileset"]
    files = {
        f"fileset://default/{fs}#out/model.bin": b"model\n",
        f"default/{fs}#/out/model.bin": b"model\n",
        f"{fs}#out/model.bin": b"model\n",
        f"default/{fs}/out/model.bin": b"model\n",  # legacy: three segments, no '#'
    }
    for i, (url, content) in enumerate(files.items()):
        body = {"artifact_url": url, "artifact_storage_type": "fileset"}
        status, result = await api.request("POST", f"/jobs/forms/results/file-{i}", json=body)
        assert status == 201, (url, result)
        assert result["artifact_url"] == url  # stored as given
        assert await _download(api, "forms", f"file-{i}") == (
            200,
            f'attachment; filename="file-{i}"',
            content,
        )
    for i, url in enumerate([f"default/{fs}", f"fileset://default/{fs}", f"default/{fs}#", fs]):
        body = {"artifact_url": url, "artifact_storage_type": "fileset"}
        status, result = await api.request("POST", f"/jobs/forms/results/all-{i}", json=body)
        assert status == 201, (url, result)
        status, disposition, data = await _download(api, "forms", f"all-{i}")
        assert status == 200 and f'filename="all-{i}.tar.gz"' in disposition
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            names = set(tar.getnames())
        # The whole fileset, under the fileset's name.
        assert {fs, f"{fs}/out/model.bin", f"{fs}/out/report/a.txt"} <= names, names


async def test_other_forms_are_refused_at_creation(api: Api) -> None:
    await api.create_job([shell("make", _MAKE)], name="refused")
    job = await api.wait_job("refused")
    fs = job["fileset"]
    for url in (
        "other-ws/other-fs#out/model.bin",  # not this job's fileset
        f"other-ws/{fs}#out/model.bin",
        "out/model.bin",  # the reference reads this as fileset 'model.bin' in workspace 'out'
        f"default/{fs}#../../etc/passwd",
        "fileset://",
        "#out/model.bin",
    ):
        body = {"artifact_url": url, "artifact_storage_type": "fileset"}
        status, answer = await api.request("POST", "/jobs/refused/results/bad", json=body)
        assert status == 422, (url, answer)
        assert isinstance(answer["detail"], str)
    _, listed = await api.request("GET", "/jobs/refused/results")
    assert listed["data"] == []
    # Nothing there yet is not refused (a step may name a result before writing it): the
    # download then says so.
    body = {"artifact_url": f"default/{fs}/later/file.bin", "artifact_storage_type": "fileset"}
    assert (await api.request("POST", "/jobs/refused/results/later", json=body))[0] == 201
    assert (await _download(api, "refused", "later"))[0] == 404


async def test_a_bare_path_stored_by_an_older_localjobs_still_downloads(tmp_path: Path) -> None:
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        await api.create_job([shell("make", _MAKE)], name="older")
        assert (await api.wait_job("older"))["status"] == "completed"
    with sqlite3.connect(tmp_path / "data" / "localjobs.db") as conn:  # as the older one stored it
        (job_pk,) = conn.execute("SELECT pk FROM jobs WHERE name = 'older'").fetchone()
        conn.execute(
            "INSERT INTO results (id, job_pk, name, artifact_url, artifact_storage_type, created_at, updated_at)"
            " VALUES ('platform-job-result-old', ?, 'model', 'out/model.bin', 'fileset', 1, 1)",
            (job_pk,),
        )
    async with running_server(tmp_path) as srv, api_for(srv) as api:
        assert await _download(api, "older", "model") == (200, 'attachment; filename="model"', b"model\n")
