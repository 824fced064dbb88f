"""Execution profiles from a profiles file (`--profiles FILE`, the reference's `jobs.executors`
field names): listed, picked by `executor.profile`, their limits and env applied; unknown ones
refused with the known names; a bad file refuses the start."""

from __future__ import annotations

from pathlib import Path

import pytest
from nemo_platform_plugin.jobs.execution_profiles import (
    DockerJobExecutionProfile,
    SubprocessJobExecutionProfileConfig,
)

from runner.errors import CannotStart
from runner.profiles import ProfileCatalog
from runner.settings import Settings
from tests.conftest import Api, api_for, assert_422, running_server, shell
from tests.docker_env import TEST_IMAGE, require_docker

PROFILES = """
executors:
  - provider: subprocess
    profile: long
    backend: subprocess
    config:
      ttl_seconds_active: 604800
      graceful_shutdown_timeout_seconds: 60
      env: {HF_HOME: /data/hf, SHARED: from-profile}
  - provider: subprocess
    profile: quick
    backend: subprocess
    config: {ttl_seconds_active: 1}
  - provider: cpu
    profile: small
    backend: docker
    config:
      default_task_image: IMAGE
      env: {FROM_PROFILE: "yes"}
      # The reference's Docker fields load, unused here.
      storage: {volume_name: nemo-jobs-storage}
      networking: {job_container_network: host}
"""


def _write(tmp_path: Path, text: str = PROFILES) -> Path:
    path = tmp_path / "profiles.yaml"
    path.write_text(text.replace("IMAGE", TEST_IMAGE))
    return path


def _catalog(tmp_path: Path, text: str) -> ProfileCatalog:
    return ProfileCatalog.load(Settings(data_dir=tmp_path / "d", profiles_file=_write(tmp_path, text)))


def test_the_file_adds_to_the_default_profiles(tmp_path: Path) -> None:
    catalog = _catalog(tmp_path, PROFILES)
    keys = {(p.provider, p.profile) for p in catalog.all()}
    assert keys >= {
        ("subprocess", "default"),
        ("subprocess", "long"),
        ("subprocess", "quick"),
        ("cpu", "small"),
    }
    long = catalog.get("subprocess", "long")
    assert (long.ttl_seconds_active, long.graceful_shutdown_timeout_seconds) == (604800, 60)
    assert long.ttl_seconds_before_active == Settings().ttl_seconds_before_active  # the default's
    assert catalog.get("cpu", "small").default_task_image == TEST_IMAGE


@pytest.mark.parametrize(
    "text",
    [
        "- {provider: subprocess, profile: x, backend: subprocess}",  # a bare list
        "jobs:\n  executors:\n    - {provider: subprocess, profile: x, backend: subprocess}",  # a platform config
    ],
)
def test_the_references_config_shapes_load(tmp_path: Path, text: str) -> None:
    assert _catalog(tmp_path, text).find("subprocess", "x") is not None


def test_a_default_profile_can_be_changed(tmp_path: Path) -> None:
    text = "executors:\n  - {provider: subprocess, backend: subprocess, config: {ttl_seconds_active: 5}}"
    assert _catalog(tmp_path, text).get("subprocess", "default").ttl_seconds_active == 5


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            "executors: [{provider: subprocess, profile: x, backend: subprocess, config: {ttl: 1}}]",
            "config.ttl",
        ),
        ("executors: [{provider: gpu, profile: x, backend: subprocess}]", "'docker' backend"),
        ("executors: [{provider: tpu, profile: x, backend: docker}]", "provider"),
        ("executors: [{provider: cpu, profile: x, backend: kubernetes}]", "backend"),
        (
            "executors: [{provider: subprocess, profile: x, backend: subprocess, config: {env: {NMP_BASE_URL: y}}}]",
            "reserved",
        ),
        (
            "executors:\n  - {provider: cpu, profile: x, backend: docker}\n  - {provider: cpu, profile: x, backend: docker}",
            "twice",
        ),
        (
            "executors: [{provider: subprocess, backend: subprocess, config: {ttl_seconds_active: -1}}]",
            "greater than",
        ),
        ("executors: {not: a list}", "a list of profiles"),
        ("executors: [unclosed", "cannot read"),
    ],
)
def test_a_bad_file_refuses_the_start_saying_where(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(CannotStart, match="profiles file") as info:
        _catalog(tmp_path, text)
    assert says in str(info.value) or (says == "reserved" and "platform's own" in str(info.value))


async def test_profiles_are_listed_picked_and_applied(tmp_path: Path) -> None:
    async with running_server(tmp_path, profiles_file=_write(tmp_path)) as srv, api_for(srv) as api:
        status, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
        assert status == 200
        by_key = {(p["provider"], p["profile"]): p for p in profiles}
        long = by_key[("subprocess", "long")]
        config = SubprocessJobExecutionProfileConfig.model_validate(long["config"], strict=True)
        assert config.model_dump(mode="json") == long["config"]  # the reference's shape
        assert long["config"]["ttl_seconds_active"] == 604800
        assert long["config"]["env"] == {"HF_HOME": "/data/hf", "SHARED": "from-profile"}

        # The profile's env reaches the step; the step's own values win.
        step = shell("env", 'echo "$HF_HOME $SHARED"', environment=[{"name": "SHARED", "value": "from-step"}])
        step["executor"]["profile"] = "long"
        await api.create_job([step], name="long-env")
        assert (await api.wait_job("long-env"))["status"] == "completed"
        assert await api.logs("long-env") == ["/data/hf from-step"]

        # Each step's own time limit: the quick one times out, the default one keeps running.
        quick = shell("nap", "sleep 30")
        quick["executor"]["profile"] = "quick"
        await api.create_job([quick], name="quick-limit")
        await api.create_job([shell("nap", "sleep 30")], name="default-limit")
        job = await api.wait_job("quick-limit", timeout_s=60)
        assert job["status"] == "error", job
        assert "active for more than ttl_seconds_active=1 s" in str(job), job
        # Read now, not waited for: the default profile's step outlived the quick one's 1 s limit.
        job = await api.job("default-limit")
        assert job["status"] == "active" and not job["error_details"], job
        await api.request("POST", "/jobs/default-limit/cancel")


async def test_an_unknown_profile_is_a_422_naming_the_known_ones(tmp_path: Path) -> None:
    async with running_server(tmp_path, profiles_file=_write(tmp_path)) as srv, api_for(srv) as api:
        step = shell("typo", "true")
        step["executor"]["profile"] = "lnog"
        status, body = await api.request(
            "POST", "/jobs", json={"source": "t", "spec": {}, "platform_spec": {"steps": [step]}}
        )
        assert status == 422, body
        message = body["detail"] if isinstance(body["detail"], str) else str(assert_422(body))
        assert "subprocess/lnog" in message and "default, long, quick" in message
        _, listed = await api.request("GET", "/jobs")
        assert listed["data"] == []


async def test_without_a_file_only_the_defaults(api: Api) -> None:
    _, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
    assert {p["profile"] for p in profiles} == {"default"}


async def test_a_container_profile_gives_its_default_image_and_env(tmp_path: Path) -> None:
    require_docker()
    async with running_server(tmp_path, profiles_file=_write(tmp_path)) as srv, api_for(srv) as api:
        _, profiles = await api.request("GET", f"{api.base_url}/apis/jobs/v2/execution-profiles")
        (small,) = [p for p in profiles if p["profile"] == "small"]
        small.pop("capacity")  # localjobs' one extension; the rest is exactly the reference's
        assert DockerJobExecutionProfile.model_validate(small, strict=True).model_dump(mode="json") == small
        assert small["config"]["default_task_image"] == TEST_IMAGE
        step = {
            "name": "no-image",
            "executor": {
                "provider": "cpu",
                "profile": "small",
                "container": {"entrypoint": ["sh", "-c"], "command": ['echo "profile=$FROM_PROFILE"']},
            },
        }
        await api.create_job([step], name="default-image")
        job = await api.wait_job("default-image", timeout_s=60)
        assert job["status"] == "completed", job
        assert await api.logs("default-image") == ["profile=yes"]
        # Without a profile that has one, an image is still required.
        del step["executor"]["profile"]
        status, body = await api.request(
            "POST", "/jobs", json={"source": "t", "spec": {}, "platform_spec": {"steps": [step]}}
        )
        assert status == 422 and "container.image is required" in str(body), body
