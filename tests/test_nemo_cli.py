"""The official `nemo` CLI (nemo-platform==0.6.0) against a real daemon: the commands a user of
the reference runs, configured only by NMP_BASE_URL and NMP_ACCESS_TOKEN."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Api, shell
from tests.daemon_process import TEST_TOKEN
from web.app import Server

_NEMO = Path(os.environ.get("VIRTUAL_ENV", ".venv")) / "bin" / "nemo"


@pytest.fixture
def nemo_bin() -> Path:
    path = _NEMO if _NEMO.exists() else Path(shutil.which("nemo") or "")
    if not path.is_file():
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail("the nemo CLI is missing (scripts/setup.sh installs nemo-platform==0.6.0)")
        pytest.skip("the nemo CLI is not installed")
    return path


class Nemo:
    def __init__(self, binary: Path, server: Server, home: Path) -> None:
        self._binary = binary
        self._env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),  # nothing of the user's own nemo config is read or written
            "NMP_BASE_URL": server.base_url,
            "NMP_ACCESS_TOKEN": TEST_TOKEN,
            "NEMO_TELEMETRY_ENABLED": "false",
        }

    async def __call__(self, *args: str, stdin: bytes | None = None) -> tuple[int, str]:
        proc = await asyncio.create_subprocess_exec(
            str(self._binary),
            *args,
            env=self._env,
            stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 120)
        return proc.returncode or 0, out.decode(errors="replace")

    async def json(self, *args: str) -> Any:
        code, out = await self("-f", "json", *args)
        assert code == 0, out
        return json.loads(out[out.index(next(c for c in out if c in "[{")) :])


async def test_the_main_nemo_commands_work_against_localjobs(
    nemo_bin: Path, server: Server, api: Api, tmp_path: Path
) -> None:
    nemo = Nemo(nemo_bin, server, tmp_path)
    code, out = await nemo("secrets", "create", "api-key", "--value", "nemo-cli-Value-123")
    assert code == 0, out
    assert [s["name"] for s in (await nemo.json("secrets", "list"))["data"]] == ["api-key"]
    assert (await nemo.json("secrets", "access", "api-key"))["value"] == "nemo-cli-Value-123"

    publish = 'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out" && echo weights > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/model.bin"'
    step = shell("work", f'echo "key=$KEY"; {publish}; echo done')
    step["environment"] = [{"name": "KEY", "from_secret": {"name": "api-key"}}]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps({"source": "nemo-cli", "spec": {}, "platform_spec": {"steps": [step]}}))
    code, out = await nemo("jobs", "create", "from-nemo", "--input-file", str(job_file), "--wait")
    assert code == 0, out
    assert (await nemo.json("jobs", "get-status", "from-nemo"))["status"] == "completed"
    listed = await nemo.json("jobs", "list")
    assert [j["name"] for j in listed["data"]] == ["from-nemo"]
    logs = await nemo.json("jobs", "get-logs", "from-nemo")
    assert [line["message"] for line in logs["data"]] == ["key=********", "done"]

    fileset = (await api.request("GET", "/jobs/from-nemo"))[1]["fileset"]
    code, out = await nemo(
        "jobs", "results", "create", "model", "--job", "from-nemo",
        "--artifact-url", f"default/{fileset}#out/model.bin", "--artifact-storage-type", "fileset",
    )  # fmt: skip
    assert code == 0, out
    target = tmp_path / "model.bin"
    code, out = await nemo("jobs", "results", "download", "model", "--job", "from-nemo", "-o", str(target))
    assert code == 0, out
    assert target.read_bytes() == b"weights\n"

    await api.create_job([shell("hold", "sleep 60")], name="to-cancel")
    await api.wait_job("to-cancel", {"active"}, timeout_s=60)
    code, out = await nemo("jobs", "cancel", "to-cancel")
    assert code == 0, out
    assert (await api.wait_job("to-cancel", timeout_s=60))["status"] == "cancelled"
    code, out = await nemo("jobs", "delete", "to-cancel")
    assert code == 0, out
    assert (await api.request("GET", "/jobs/to-cancel"))[0] == 404

    code, out = await nemo("jobs", "get-status", "no-such-job")
    assert code == 3, out  # the CLI's "remote/API error"
    code, out = await nemo("secrets", "delete", "api-key")
    assert code == 0, out
    assert (await nemo.json("secrets", "list"))["data"] == []
