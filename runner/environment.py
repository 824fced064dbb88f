"""The environment and folders a task gets: what `reference-semantics.md` section 3.3 lists."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from runner.executors.base import TaskPaths, VisiblePaths
from runner.models import StepRecord
from runner.secrets import split_reference


def _attempt_dir(work_root: Path, workspace: str, job_name: str, attempt_id: str) -> str:
    return f"{work_root}/{workspace}/{job_name}/{attempt_id}"


def job_storage_dir(work_root: Path, workspace: str, job_name: str, attempt_id: str) -> Path:
    """The job's fileset folder: persistent storage shared by its steps, where results live."""
    return Path(_attempt_dir(work_root, workspace, job_name, attempt_id), "job-storage")


def task_paths(work_root: Path, step: StepRecord, task_name: str) -> TaskPaths:
    attempt_dir = _attempt_dir(work_root, step.workspace, step.job_name, step.attempt_id)
    return TaskPaths.under(f"{attempt_dir}/{step.name}/{task_name}", f"{attempt_dir}/job-storage")


def task_environment(
    *,
    step: StepRecord,
    task_name: str,
    paths: VisiblePaths,
    base_url: str,
    inherited: Mapping[str, str],
    secrets: Mapping[str, str],
    profile_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Inherited allow-list < the profile's env < step values < identity, paths and URLs <
    resolved secrets."""
    env = dict(inherited)
    env.update(profile_env or {})
    for variable in step.spec.variables:
        if variable.value is not None:
            env[variable.name] = variable.value
    secret_refs = [
        f"{v.name}={'/'.join(split_reference(v.from_secret.name, step.workspace))}"
        for v in step.spec.variables
        if v.from_secret
    ]
    env.update(
        {
            "NEMO_JOB_ID": step.job_name,
            "NEMO_JOB_ATTEMPT_ID": step.attempt_id,
            "NEMO_JOB_STEP": step.name,
            "NEMO_JOB_TASK": task_name,
            "NEMO_JOB_WORKSPACE": step.workspace,
            "NEMO_JOB_FILESET": step.fileset,
            "NEMO_JOB_EPHEMERAL_TASK_STORAGE_PATH": paths.scratch_dir,
            "NEMO_JOB_STEP_CONFIG_STORAGE_PATH": paths.config_dir,
            "NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH": paths.persistent_dir,
            "NEMO_JOB_STEP_CONFIG_FILE_PATH": paths.config_file,
            "NEMO_JOB_SECRETS": ",".join(secret_refs),
            # How a workload calls back (heartbeats, results): the official SDK reads these.
            "NMP_BASE_URL": base_url,
            "NMP_JOBS_URL": base_url,
            "NEMO_PLATFORM_BASE_URL": base_url,
            "NMP_WORKSPACE": step.workspace,
            "NMP_CONFIG_WARNINGS_DISABLED": "1",
        }
    )
    if paths.token_file is not None:
        # Read by the official SDK before each request (workload identity); curl: -H "Authorization:
        # Bearer $(cat $NMP_WORKLOAD_IDENTITY_TOKEN_FILE)".
        env["NMP_WORKLOAD_IDENTITY_TOKEN_FILE"] = paths.token_file
    env.update(secrets)
    return env
