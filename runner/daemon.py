"""The daemon: owns the store, the scheduler and their supervised background tasks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Coroutine
from typing import Any

from runner import datadir
from runner.access import Access, resolve_access
from runner.allocation import Allocator, Machine, machine_of
from runner.capacity_view import CapacityView
from runner.clock import Clock, SystemClock
from runner.errors import CannotStart
from runner.executors.registry import ExecutorRegistry
from runner.file_events import FileEvents
from runner.gpus import discover
from runner.log_service import LogService
from runner.models import parse_quantity
from runner.notify import DeadlineBell
from runner.profiles import ProfileCatalog
from runner.recovery import ContainerSweep
from runner.results import ResultService
from runner.scheduler import Scheduler
from runner.secret_keys import Keyring
from runner.secrets import SecretService
from runner.service import JobService
from runner.settings import Settings
from runner.task_service import TaskService
from runner.watchdog import Watchdog
from storage import Repository

log = logging.getLogger(__name__)


class Daemon:
    def __init__(
        self, settings: Settings, clock: Clock | None = None, lock: datadir.DataDirLock | None = None
    ) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self._store: Repository | None = None
        self._scheduler: Scheduler | None = None
        self._service: JobService | None = None
        self._executors: ExecutorRegistry | None = None
        self._file_events = FileEvents()
        self._tasks: list[asyncio.Task[None]] = []
        # Claimed by the entry point before the daemon's modules load (a second `serve` on the
        # same dir is refused at once), else by start().
        self._lock: datadir.DataDirLock | None = lock
        self._access: Access | None = None
        # Set when a supervised loop dies: the entry point then stops the daemon instead of
        # serving an API whose statuses would silently stop moving.
        self.failed = asyncio.Event()

    @property
    def service(self) -> JobService:
        assert self._service is not None, "Daemon.start() first"
        return self._service

    @property
    def scheduler(self) -> Scheduler:
        assert self._scheduler is not None, "Daemon.start() first"
        return self._scheduler

    @property
    def access(self) -> Access:
        assert self._access is not None, "Daemon.start() first"
        return self._access

    async def start(self) -> None:
        if self._lock is None:
            datadir.prepare(self.settings.data_dir)
            # First, before anything is opened or started: a second daemon here touches nothing.
            self._lock = datadir.DataDirLock.claim(self.settings.data_dir)
        try:
            await self._open()
        except BaseException:
            await self.stop()  # a refused start leaves nothing open, the data dir's lock included
            raise

    async def _open(self) -> None:
        self._access = resolve_access(self.settings)
        keyring = Keyring.load(self.settings.secrets_key_path)
        profiles = ProfileCatalog.load(self.settings)
        allocator = Allocator(_machine(self.settings), self.settings.backfill_s)
        machine = allocator.machine
        if machine.gpus:
            log.info("GPUs: %s", ", ".join(f"{g.index} ({g.uuid})" for g in machine.gpus))
        log.info(
            "admitting resource requests against %g CPUs and %d bytes of memory",
            machine.cpus,
            machine.memory_bytes,
        )
        with contextlib.suppress(FileExistsError):
            self.settings.work_dir.mkdir(mode=0o700)
        self._store = await Repository.open(self.settings.db_path)
        # Every part is built here, once, and handed what it needs through its constructor.
        self._executors = ExecutorRegistry(
            self.settings,
            self._access.workload_token_file,
            on_docker_connected=ContainerSweep(self._store, self.settings.keep_containers),
        )
        secrets = SecretService(self._store, self.clock, keyring)
        await secrets.seal_stored()
        deadlines = DeadlineBell()
        self._scheduler = Scheduler(
            self._store,
            self.clock,
            self.settings,
            self._executors,
            secrets,
            profiles,
            allocator,
            deadlines,
            self._file_events,
        )
        results = ResultService(self._store, self.clock, self.settings.work_dir)
        self._service = JobService(
            self._store,
            self.clock,
            self._scheduler,
            secrets,
            results,
            self._scheduler.log_signal,
            profiles,
            capacity=CapacityView(self._store, self.clock, allocator, self._scheduler.ready),
            logs=LogService(self._store, self._scheduler.log_signal, self._scheduler),
            tasks=TaskService(self._store, self.clock, secrets),
        )
        scheduler = self._scheduler
        self.watchdog = Watchdog(
            self._store,
            self.clock,
            self.settings,
            profiles,
            deadlines,
            lambda pk: scheduler.request_stop(pk, 0),
        )

    def begin_running(self, base_url: str) -> None:
        """Start the background loops once the API answers at `base_url` (workloads call back there)."""
        if self._lock is not None:
            self._lock.announce(base_url)
        self._supervise("scheduler", self._recover_then_schedule(self.scheduler, base_url))

    async def _recover_then_schedule(self, scheduler: Scheduler, base_url: str) -> None:
        # The watchdog starts only once every surviving step is adopted again: before that it
        # could judge a step whose workload this daemon does not hold yet.
        await scheduler.recover()
        self._supervise("watchdog", self.watchdog.run_forever())
        await scheduler.run_forever(base_url)

    def _supervise(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro, name=name)

        def on_done(t: asyncio.Task[None]) -> None:
            if t.cancelled():
                return
            if t.exception() is not None:
                log.critical("background loop %r died; stopping the daemon", name, exc_info=t.exception())
                self.failed.set()

        task.add_done_callback(on_done)
        self._tasks.append(task)

    async def stop(self) -> None:
        if self._scheduler is not None:
            await self._scheduler.shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._executors is not None:
            await self._executors.close()
        self._file_events.close()
        if self._store is not None:
            await self._store.close()
            self._store = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None


def _machine(settings: Settings) -> Machine:
    try:
        gpus = discover(settings.gpus)
    except ValueError as exc:
        raise CannotStart(str(exc)) from exc
    memory = 0
    if settings.memory:
        try:
            memory = math.ceil(parse_quantity(settings.memory))
        except ValueError as exc:
            raise CannotStart(f"--memory / LOCALJOBS_MEMORY: {exc}") from exc
    if settings.cpus < 0 or not math.isfinite(settings.cpus) or memory < 0:
        raise CannotStart("--cpus and --memory must be finite and not negative")
    return machine_of(gpus, settings.cpus, memory)
