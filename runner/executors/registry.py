"""Which executor runs which provider. The Docker one is imported and connected only when needed."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.executors.base import Executor, ExecutorError
from runner.executors.host.executor import SubprocessExecutor
from runner.profiles import CONTAINER_PROVIDERS, ExecutionProfile, ProfileCatalog, runs_as_host_process
from runner.settings import Settings

if TYPE_CHECKING:
    from runner.executors.docker import DockerExecutor

log = logging.getLogger(__name__)

_REPROBE_AFTER_S = 30.0


class ExecutorRegistry:
    def __init__(
        self,
        settings: Settings,
        token_file: Path | None,
        on_docker_connected: Callable[[DockerExecutor], Awaitable[None]] | None = None,
    ) -> None:
        self._settings = settings
        self._owner = owner = settings.owner_id
        self._token_file = token_file
        self.subprocess = SubprocessExecutor(
            settings.python_executable,
            owner,
            environment=settings.environment,
            launcher_log=settings.data_dir / "launcher.log",
            token_file=token_file,
            # What a step leaves running when its main process ends: ended after the grace period.
            leftover_grace_s=None if settings.keep_leftover_processes else settings.grace_period_s,
        )
        self._docker: DockerExecutor | None = None
        self._docker_checked_at: float | None = None
        self._docker_error = "not checked yet"
        self._docker_lock = asyncio.Lock()
        # Called once when an engine first answers, e.g. to remove containers left by a crash.
        self._on_docker_connected = on_docker_connected

    async def for_provider(self, provider: str) -> Executor:
        if runs_as_host_process(self._settings, provider):
            return self.subprocess
        if provider in CONTAINER_PROVIDERS:
            docker = await self.docker()
            if docker is None:
                raise ExecutorError(f"no Docker engine is reachable: {self._docker_error}")
            return docker
        raise ExecutorError(f"no executor is available for provider {provider!r}")

    async def docker(self) -> DockerExecutor | None:
        """The connected Docker executor, or None when no engine answers (re-checked every 30 s)."""
        async with self._docker_lock:
            fresh = self._docker_checked_at is not None and (
                time.monotonic() - self._docker_checked_at < _REPROBE_AFTER_S
            )
            if self._docker is None and not fresh:
                self._docker_checked_at = time.monotonic()
                from runner.executors.docker import DockerExecutor, DockerUnavailable

                try:
                    self._docker = await DockerExecutor.connect(self._settings, self._owner, self._token_file)
                except DockerUnavailable as exc:
                    self._docker_error = str(exc)
                    log.info("container steps unavailable: %s", exc)
                else:
                    # Said in the log now that the profiles no longer carry it (the reference's shape).
                    log.info("container steps run on %s", self._docker.engine_description)
                    if self._on_docker_connected is not None:
                        await self._on_docker_connected(self._docker)
            return self._docker

    async def profiles(self, catalog: ProfileCatalog) -> list[dict[str, Any]]:
        """The catalog's profiles as `GET /execution-profiles` lists them, field by field as the
        reference's profile models serialize (their order too); Docker ones only while an engine
        answers."""
        s = self._settings

        def common(profile: ExecutionProfile, cleanup: bool) -> dict[str, Any]:
            return {
                "ttl_seconds_before_active": profile.ttl_seconds_before_active,
                "ttl_seconds_active": profile.ttl_seconds_active,
                "ttl_seconds_after_finished": profile.ttl_seconds_after_finished,
                "cleanup_completed_jobs_immediately": cleanup,
                "launcher_tool_path": "",  # no launcher tool: localjobs starts tasks itself
                "default_task_image": profile.default_task_image,
                "env": dict(profile.env),
            }

        listed: list[dict[str, Any]] = []
        docker = None
        if any(p.backend == "docker" for p in catalog.all()):
            docker = await self.docker()
        for profile in catalog.all():
            head = {"provider": profile.provider, "profile": profile.profile, "backend": profile.backend}
            if profile.backend == "subprocess":
                config = {
                    **common(profile, False),
                    "working_directory": str(s.work_dir),
                    "graceful_shutdown_timeout_seconds": int(profile.graceful_shutdown_timeout_seconds),
                }
            elif docker is None:
                continue
            else:
                config = {
                    **common(profile, not s.keep_containers),
                    # Task folders are bind mounts of the data dir: no named volume.
                    "storage": {
                        "volume_name": "",
                        "volume_permissions_image": "",
                        "additional_volume_mounts": [],
                    },
                    "networking": {"job_container_network": docker.network_for(profile.provider)},
                }
            listed.append({**head, "config": config})
        return listed

    async def close(self) -> None:
        await self.subprocess.close()
        if self._docker is not None:
            await self._docker.close()
