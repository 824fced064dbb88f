"""The Python API (`LocalJobs`, `AsyncLocalJobs`) and the pytest plugin's `localjobs` fixture,
each against the real daemon it starts."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from tests.daemon_process import task_processes_under
from web.testing import AsyncLocalJobs, JobTimeout, LocalJobs

pytest_plugins = ["pytester"]


def test_sync_context_manager_runs_jobs_and_leaves_nothing(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with LocalJobs(data_dir) as daemon:
        assert httpx.get(daemon.url + "/health", timeout=10).json() == {"status": "ok"}
        jobs = daemon.url + "/apis/jobs/v2/workspaces/default/jobs"
        assert httpx.get(jobs, timeout=10).status_code == 401
        assert httpx.get(jobs, headers=daemon.headers, timeout=10).status_code == 200
        job = daemon.run("sh", "-c", "echo hi; echo err >&2; exit 0", name="py-job")
        assert job["status"] == "completed"
        assert daemon.logs("py-job") == ["hi", "[stderr] err"]
        long = daemon.submit(
            [{"name": "sleeper", "executor": {"provider": "subprocess", "command": ["sleep", "60"]}}]
        )
        with pytest.raises(JobTimeout):
            daemon.wait(long["name"], timeout_s=0.3)
        pid = daemon._proc.pid if daemon._proc else 0
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert task_processes_under(data_dir) == []  # the sleep was ended with the daemon


async def test_async_context_manager() -> None:
    async with AsyncLocalJobs() as daemon:
        job = await daemon.run("echo", "from asyncio")
        assert job["status"] == "completed"
        assert await daemon.logs(job["name"]) == ["from asyncio"]
        data_dir = daemon.data_dir
    assert not data_dir.exists()  # its own temporary data dir is removed


def test_the_plugin_fixture_in_a_project(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_user="""
        def test_one(localjobs):
            job = localjobs.run("echo", "one")
            assert job["status"] == "completed"
            assert localjobs.logs(job["name"]) == ["one"]
            assert localjobs.workspace.startswith("t")

        def test_two_has_its_own_workspace(localjobs):
            assert localjobs.job  # helpers are there
            listed = __import__("httpx").get(localjobs.jobs_url, headers=localjobs.headers).json()
            assert listed["data"] == []
            localjobs.submit([{"name": "sleeper", "executor": {"provider": "subprocess", "command": ["sleep", "60"]}}])
        """
    )
    result = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
