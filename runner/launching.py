"""What a step's start is made of: its tasks (rows, names, folders, GPUs), and for each the
environment, arguments and image its executor is given."""

from __future__ import annotations

from dataclasses import dataclass

from runner.environment import task_environment, task_paths
from runner.executors.base import Executor, Launch, StepHandle, TaskLaunch, TaskPaths, TaskRef, Workload
from runner.gpus import Gpu
from runner.models import StepRecord
from runner.profiles import ExecutionProfile
from runner.settings import Settings


@dataclass(frozen=True)
class RunTask:
    """A task of a run: what is stored of it, and where its files are."""

    ref: TaskRef
    paths: TaskPaths

    @property
    def pk(self) -> int:
        return self.ref.pk

    @property
    def name(self) -> str:
        return self.ref.name


def run_tasks(settings: Settings, step: StepRecord, handle: StepHandle) -> list[RunTask]:
    return [RunTask(ref, task_paths(settings.work_dir, step, ref.name)) for ref in handle.tasks]


def handle_of(tasks: list[RunTask], workload: Workload | None = None) -> StepHandle:
    return StepHandle(tuple(t.ref for t in tasks), workload.handle if workload is not None else None)


def launch_of(
    step: StepRecord,
    tasks: list[RunTask],
    executor: Executor,
    profile: ExecutionProfile,
    base_url: str,
    settings: Settings,
    secrets: dict[str, str],
) -> Launch:
    provider = step.spec.executor.provider
    inherited = settings.inherited_environment if provider == "subprocess" else {}
    launches = []
    for task in tasks:
        env = task_environment(
            step=step,
            task_name=task.name,
            paths=executor.visible_paths(task.paths),
            base_url=executor.callback_url(base_url),
            inherited=inherited,
            profile_env=profile.env,
            secrets=secrets,
        )
        if task.ref.gpus:  # exactly the GPUs it was given (host processes; Docker gets DeviceIDs)
            env["CUDA_VISIBLE_DEVICES"] = env["NVIDIA_VISIBLE_DEVICES"] = ",".join(task.ref.gpus)
        launches.append(TaskLaunch(task_name=task.name, env=env, paths=task.paths, gpus=task.ref.gpus))
    return Launch(step=step, argv=_argv(step), tasks=launches, image=_image(step, profile))


def split_gpus(gpus: list[Gpu], tasks: int) -> list[list[Gpu]]:
    """A distributed step's GPUs, the same number for each of its tasks (nodes)."""
    each = len(gpus) // tasks if tasks else 0
    return [gpus[i * each : (i + 1) * each] for i in range(tasks)]


def folder_details(step: StepRecord, paths: TaskPaths) -> dict[str, str]:
    """Where the task's files are, under the keys the reference's subprocess backend uses."""
    if step.spec.executor.provider == "subprocess":
        return {
            "subprocess_work_dir": paths.work_dir,
            "subprocess_persistent_storage_path": paths.persistent_dir,
        }
    return {"work_dir": paths.work_dir}


def _image(step: StepRecord, profile: ExecutionProfile) -> str | None:
    executor = step.spec.executor
    if executor.provider == "subprocess":
        return None
    return executor.container.image or profile.default_task_image


def _argv(step: StepRecord) -> list[str]:
    executor = step.spec.executor
    if executor.provider == "subprocess":
        return list(executor.command)
    return [*executor.container.entrypoint, *executor.container.command]
