"""A started container step: its containers (one per node), waited on together, their output
copied into the task files from the engine's log stream (docker_output.py), stopped, frozen,
thawed and removed."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiodocker
import aiohttp
from aiodocker.containers import DockerContainer

from runner.executors.base import ContainerHandle, ExitStatus, OutputNews, TaskPaths
from runner.executors.docker_output import ContainerOutput

API_TIMEOUT_S = 60.0
_LOG_DRAIN_S = 5.0


def engine_reason(exc: BaseException) -> str:
    if isinstance(exc, aiodocker.DockerError):
        return str(exc.message)
    return str(exc) or type(exc).__name__


class DockerWorkload:
    def __init__(
        self,
        client: aiodocker.Docker,
        containers: list[DockerContainer],
        log_files: list[TaskPaths],
        network: str | None,
        image: str,
    ) -> None:
        self._client = client
        self._containers = containers
        self._network = network
        self._image = image
        self._paused = False
        self._streams = [
            asyncio.create_task(ContainerOutput(paths).copy(c), name=f"docker-logs-{c.id[:12]}")
            for c, paths in zip(containers, log_files, strict=True)
        ]
        self._exit: asyncio.Task[ExitStatus] = asyncio.create_task(self._watch(), name="docker-wait")

    @property
    def handle(self) -> ContainerHandle:
        return ContainerHandle(tuple(c.id for c in self._containers), self._network)

    @property
    def details(self) -> dict[str, Any]:
        return {"container_ids": [c.id[:12] for c in self._containers], "image": self._image}

    async def _watch(self) -> ExitStatus:
        waits = {asyncio.create_task(_wait_container(c)): c for c in self._containers}
        first_failure: ExitStatus | None = None
        pending = set(waits)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                status = finished.result()
                if not status.succeeded and first_failure is None:
                    first_failure = status
                    # One node of a distributed step failed: the others cannot finish on their own.
                    await asyncio.gather(*(_stop(waits[t], 2.0) for t in pending), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*self._streams, return_exceptions=True), _LOG_DRAIN_S)
        return first_failure or ExitStatus(exit_code=0)

    async def wait(self) -> ExitStatus:
        return await asyncio.shield(self._exit)

    def output_news(self) -> OutputNews | None:
        return None  # its output comes from the engine's stream, not from files

    async def stop(self, grace_s: float) -> None:
        # Always thaw first (an adopted container may be paused without this daemon knowing):
        # a frozen container never sees SIGTERM. Unpausing a running container just fails.
        await self.resume()
        await asyncio.gather(*(_stop(c, grace_s) for c in self._containers), return_exceptions=True)

    async def pause(self) -> None:
        await asyncio.gather(*(c.pause() for c in self._containers), return_exceptions=True)
        self._paused = True

    async def resume(self) -> None:
        await asyncio.gather(*(c.unpause() for c in self._containers), return_exceptions=True)
        self._paused = False

    async def release(self) -> None:
        for stream in self._streams:
            stream.cancel()
        await self.remove(self._client, self._containers, self._network)

    @staticmethod
    async def remove(
        client: aiodocker.Docker, containers: list[DockerContainer], network: str | None
    ) -> None:
        for container in containers:
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, TimeoutError):
                await asyncio.wait_for(container.delete(force=True, v=True), API_TIMEOUT_S)
        if network:
            with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, TimeoutError):
                found = await client.networks.get(network)
                await asyncio.wait_for(found.delete(), API_TIMEOUT_S)


async def _stop(container: DockerContainer, grace_s: float) -> None:
    with contextlib.suppress(aiodocker.DockerError, aiohttp.ClientError, TimeoutError):
        await asyncio.wait_for(container.stop(t=max(0, int(grace_s))), grace_s + API_TIMEOUT_S)


async def _wait_container(container: DockerContainer) -> ExitStatus:
    try:
        result = await container.wait()
        state = (await container.show())["State"]
    except (aiodocker.DockerError, aiohttp.ClientError) as exc:
        return ExitStatus(exit_code=None, reason=f"lost track of container: {engine_reason(exc)}")
    code = int(result.get("StatusCode", state.get("ExitCode", -1)))
    # OOMKilled is set when any process in the container hit the limit; it only explains the
    # ending when the container itself failed.
    if state.get("OOMKilled") and code != 0:
        return ExitStatus(exit_code=code, reason="OOMKilled")
    return ExitStatus.from_exit_code(code)
