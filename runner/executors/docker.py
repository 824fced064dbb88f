"""Docker executor: `cpu`, `gpu` and `gpu_distributed` steps as containers, through the Engine API.

Imported only when a container step (or the profile list) needs it, so a host without Docker never
loads a Docker client. Output is streamed from the engine into the same per-task files the
subprocess executor writes, so logs, tailing and crash recovery work the same for both.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from runner.executors.base import (
    ContainerHandle,
    ExecutorError,
    ExitStatus,
    Launch,
    TaskPaths,
    VisiblePaths,
    WorkloadHandle,
    prepare_task_folders,
)
from runner.executors.docker_workload import API_TIMEOUT_S, DockerWorkload, engine_reason
from runner.models import ComputeResources, StepRecord, parse_quantity
from runner.settings import Settings

log = logging.getLogger(__name__)

MOUNT_ROOT = "/var/run/scratch"
# The owner's token (read-only), named by NMP_WORKLOAD_IDENTITY_TOKEN_FILE inside the container.
TOKEN_MOUNT = "/var/run/secrets/localjobs/token"
_PROBE_TIMEOUT_S = 5.0
_RENDEZVOUS_PORT = "29500"
_GIB = 2**30


class DockerUnavailable(Exception):
    """No engine answers at DOCKER_HOST (or the default socket)."""


def resource_config(
    provider: str, resources: ComputeResources, device_ids: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Kubernetes-style resources -> Docker HostConfig fields (fractional CPUs kept). With the
    GPUs the daemon gave the task (`device_ids`), exactly those; else a count, as before."""
    host: dict[str, Any] = {}
    limits, requests = resources.limits, resources.requests
    if limits and limits.cpu:
        host["NanoCpus"] = int(parse_quantity(limits.cpu) * 1e9)
    if limits and limits.memory:
        host["Memory"] = int(parse_quantity(limits.memory))
    if requests and requests.cpu:
        host["CpuShares"] = max(2, int(parse_quantity(requests.cpu) * 1024))
    if requests and requests.memory:
        host["MemoryReservation"] = int(parse_quantity(requests.memory))
    gpus = resources.num_gpus
    if provider in ("gpu", "gpu_distributed") and gpus is None:
        gpus = 1  # the reference's default for GPU providers
    if device_ids:
        host["DeviceRequests"] = [
            {"Driver": "nvidia", "DeviceIDs": list(device_ids), "Capabilities": [["gpu"]]}
        ]
    elif gpus:
        host["DeviceRequests"] = [{"Driver": "nvidia", "Count": gpus, "Capabilities": [["gpu"]]}]
    if resources.shm_size:
        host["ShmSize"] = int(parse_quantity(resources.shm_size))
    elif gpus:
        host["ShmSize"] = gpus * _GIB
    return host


class DockerExecutor:
    def __init__(
        self,
        client: aiodocker.Docker,
        settings: Settings,
        owner: str,
        version: dict[str, Any],
        token_file: Path | None,
    ):
        self._client = client
        self._settings = settings
        self._owner = owner
        self._token_file = token_file
        self.engine_description = (
            f"Docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"
        )

    @classmethod
    async def connect(cls, settings: Settings, owner: str, token_file: Path | None) -> DockerExecutor:
        try:
            client = aiodocker.Docker()
        except (aiodocker.DockerError, ValueError, OSError) as exc:
            raise DockerUnavailable(engine_reason(exc)) from exc
        try:
            version = await asyncio.wait_for(client.version(), _PROBE_TIMEOUT_S)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            await client.close()
            raise DockerUnavailable(engine_reason(exc)) from exc
        return cls(client, settings, owner, version, token_file)

    async def close(self) -> None:
        await self._client.close()

    def network_for(self, provider: str) -> str:
        return "private bridge per step" if provider == "gpu_distributed" else "host"

    def visible_paths(self, paths: TaskPaths) -> VisiblePaths:
        return VisiblePaths(
            scratch_dir=f"{MOUNT_ROOT}/task",
            config_dir=f"{MOUNT_ROOT}/config",
            config_file=f"{MOUNT_ROOT}/config/job_step_config.json",
            persistent_dir=f"{MOUNT_ROOT}/job",
            token_file=TOKEN_MOUNT if self._token_file is not None else None,
        )

    def callback_url(self, base_url: str) -> str:
        return base_url  # single-node containers share the host's network

    async def _ensure_image(self, image: str) -> None:
        try:
            await asyncio.wait_for(self._client.images.inspect(image), API_TIMEOUT_S)
            return
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise ExecutorError(f"cannot inspect image {image!r}: {engine_reason(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ExecutorError(f"the Docker engine did not answer: {engine_reason(exc)}") from exc
        try:
            await asyncio.wait_for(self._client.images.pull(image), 600)
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
            raise ExecutorError(
                f"image {image!r} is not present and pulling it failed: {engine_reason(exc)}"
            ) from exc

    async def start(self, launch: Launch) -> DockerWorkload:
        executor = launch.step.spec.executor
        assert executor.provider != "subprocess"
        image = launch.image or executor.container.image
        if not image:
            raise ExecutorError("container.image is required: the step's profile has no default_task_image")
        await self._ensure_image(image)
        for task in launch.tasks:
            # Off the event loop: file-system calls can be slow (network home folders).
            await asyncio.to_thread(prepare_task_folders, task.paths, launch.step.spec.config)
        distributed = executor.provider == "gpu_distributed"
        network = f"lj-{launch.step.id.lower()}"[:60] if distributed else None
        if network:
            await self._create_network(network, self._labels(launch.step))
        names = [f"lj-{task.task_name}" for task in launch.tasks]
        containers: list[DockerContainer] = []
        try:
            for rank, task in enumerate(launch.tasks):
                env = dict(task.env)
                if distributed:
                    env.update(
                        {
                            "NODE_RANK": str(rank),
                            "RANK": str(rank),
                            "NNODES": str(len(launch.tasks)),
                            "WORLD_SIZE": str(len(launch.tasks)),
                            "MASTER_ADDR": names[0],
                            "MASTER_PORT": _RENDEZVOUS_PORT,
                        }
                    )
                config = self._container_config(launch, image, env, task.paths, network, task.gpus)
                config["Labels"] = {
                    **self._labels(launch.step),
                    "localjobs.task": task.task_name,
                    "localjobs.rank": str(rank),
                }
                container = await asyncio.wait_for(
                    self._client.containers.create(config, name=names[rank]), API_TIMEOUT_S
                )
                containers.append(container)
            for container in containers:
                await asyncio.wait_for(container.start(), API_TIMEOUT_S)
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
            # Nothing of a failed start is left behind: its containers, and its network.
            await DockerWorkload.remove(self._client, containers, network)
            reason = engine_reason(exc)
            if "device driver" in reason and "gpu" in reason:
                reason = (
                    "this Docker engine has no GPU runtime (NVIDIA Container Toolkit), so a step with "
                    f"num_gpus cannot run here; the engine said: {reason}"
                )
            raise ExecutorError(f"could not start the container: {reason}") from exc
        return DockerWorkload(self._client, containers, [t.paths for t in launch.tasks], network, image)

    def _container_config(
        self,
        launch: Launch,
        image: str,
        env: dict[str, str],
        paths: TaskPaths,
        network: str | None,
        gpus: tuple[str, ...] = (),
    ) -> dict[str, Any]:
        executor = launch.step.spec.executor
        assert executor.provider != "subprocess"
        host: dict[str, Any] = {
            "Init": True,  # SIGTERM reaches the workload; zombies are reaped
            # Mounts, not Binds: a host path may contain ':' (workspace names allow it).
            "Mounts": [
                {"Type": "bind", "Source": source, "Target": f"{MOUNT_ROOT}/{target}"}
                for source, target in (
                    (paths.scratch_dir, "task"),
                    (paths.config_dir, "config"),
                    (paths.persistent_dir, "job"),
                )
            ],
            "NetworkMode": network or "host",
            **resource_config(executor.provider, executor.resources, gpus),
        }
        if self._token_file is not None:
            host["Mounts"].append(
                {"Type": "bind", "Source": str(self._token_file), "Target": TOKEN_MOUNT, "ReadOnly": True}
            )
        if network:
            host["ExtraHosts"] = ["host.docker.internal:host-gateway"]
        config: dict[str, Any] = {
            "Image": image,
            "Env": [f"{k}={v}" for k, v in env.items()],
            "HostConfig": host,
            "AttachStdout": False,
            "AttachStderr": False,
        }
        # An empty list keeps the image's own ENTRYPOINT / CMD (Docker and Kubernetes semantics).
        if executor.container.entrypoint:
            config["Entrypoint"] = executor.container.entrypoint
        if executor.container.command:
            config["Cmd"] = executor.container.command
        return config

    async def _create_network(self, name: str, labels: dict[str, str]) -> None:
        try:
            await asyncio.wait_for(
                self._client.networks.create({"Name": name, "Driver": "bridge", "Labels": labels}),
                API_TIMEOUT_S,
            )
        except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
            raise ExecutorError(f"could not create the step's network: {engine_reason(exc)}") from exc

    async def recover(
        self, step: StepRecord, handle: WorkloadHandle | None, paths: list[TaskPaths]
    ) -> DockerWorkload | ExitStatus | None:
        recorded = handle if isinstance(handle, ContainerHandle) else ContainerHandle((), None)
        ids: Sequence[str] = recorded.containers
        if not ids:
            # The daemon died between creating the containers and recording them: find them by label.
            found = await self._labelled({"localjobs.step-id": step.id})
            if len(found) != len(paths):
                for container in found:
                    with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError):
                        await container.delete(force=True, v=True)
                return None
            ids = [c.id for c in sorted(found, key=lambda c: int(c["Labels"].get("localjobs.rank", "0")))]
        containers = []
        for container_id in ids:
            try:
                container = await self._client.containers.get(container_id)
            except aiodocker.DockerError:
                return None
            labels = container["Config"].get("Labels") or {}
            # An id alone could be stale; the labels tie the container to this daemon and step.
            if labels.get("localjobs.owner") != self._owner or labels.get("localjobs.step-id") != step.id:
                return None
            containers.append(container)
        image = str(containers[0]["Config"].get("Image", ""))
        network = recorded.network or (f"lj-{step.id.lower()}"[:60] if len(containers) > 1 else None)
        unstarted = [c for c in containers if (c["State"] or {}).get("Status") == "created"]
        if unstarted:
            # The daemon died between creating a container and starting it: nothing of it ran, and
            # waiting on it would answer at once with exit code 0 (a silent "completed" without
            # output). The start was recorded before the create, so finishing it runs nothing twice.
            try:
                for container in unstarted:
                    await asyncio.wait_for(container.start(), API_TIMEOUT_S)
            except (aiodocker.DockerError, aiohttp.ClientError, TimeoutError) as exc:
                await DockerWorkload.remove(self._client, containers, network)
                reason = f"could not start the container: {engine_reason(exc)}"
                return ExitStatus(exit_code=None, reason=reason)
        return DockerWorkload(self._client, containers, paths, network, image)

    def _labels(self, step: StepRecord) -> dict[str, str]:
        """What ties a container to this daemon (its owner id: one per data dir) and its step; the
        recovery and the orphan sweep find containers by them."""
        return {
            "localjobs.owner": self._owner,
            "localjobs.workspace": step.workspace,
            "localjobs.job": step.job_name,
            "localjobs.attempt": step.attempt_id,
            "localjobs.step": step.name,
            "localjobs.step-id": step.id,
        }

    async def _labelled(self, labels: dict[str, str]) -> list[DockerContainer]:
        wanted = [f"localjobs.owner={self._owner}", *(f"{k}={v}" for k, v in labels.items())]
        return list(await self._client.containers.list(all=True, filters=json.dumps({"label": wanted})))

    async def sweep_orphans(self, unfinished_step_ids: set[str]) -> int:
        """Remove this daemon's containers whose step is finished or unknown."""
        removed = 0
        for container in await self._labelled({}):
            if container["Labels"].get("localjobs.step-id") in unfinished_step_ids:
                continue
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError):
                await container.delete(force=True, v=True)
                removed += 1
        return removed
