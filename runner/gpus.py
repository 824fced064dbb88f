"""The machine's GPUs, and which step holds which.

Found at start through NVML (nvidia-ml-py, imported only then; no driver or no GPU is normal and
means no GPUs), or declared with `--gpus` / `LOCALJOBS_GPUS` (indices or UUIDs, `0,1`): a
declaration restricts what NVML found to those, or, with no NVML, stands for the GPUs itself, so
the allocation can be used and tested on a machine without any.

Allocation is all-or-nothing per step: a step asking for N GPUs gets N specific ones or none.
Order (see `admit`): first come first served, with a bounded backfill: while the oldest waiting
GPU step cannot fit, younger steps that fit in the free GPUs may start for up to
`backfill_s` seconds of its wait; after that nothing new takes a GPU until it has started, so a
large step is never starved and small ones do not leave free GPUs idle meanwhile.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from runner.models import Executor, GpuDemand, SubprocessExecutor

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Gpu:
    index: int
    uuid: str
    name: str = ""
    memory_bytes: int | None = None
    # What CUDA_VISIBLE_DEVICES and Docker's DeviceIDs name it by: the UUID when known (stable
    # across reboots), else the index the owner declared (what the driver understands).
    device_id: str = ""

    def __post_init__(self) -> None:
        if not self.device_id:
            object.__setattr__(self, "device_id", self.uuid)


def gpus_needed(executor: Executor) -> int:
    """GPUs a step asks for (the same rule as storage's runnable_gpu_steps): `num_gpus`, 1 by
    default on the GPU providers, on each node of a distributed step."""
    if isinstance(executor, SubprocessExecutor):
        return 0
    resources = executor.resources
    per_node = resources.num_gpus
    if per_node is None:
        per_node = 1 if executor.provider in ("gpu", "gpu_distributed") else 0
    nodes = resources.num_nodes if executor.provider == "gpu_distributed" else 1
    return per_node * nodes


def discover(declared: Sequence[str]) -> list[Gpu]:
    """The GPUs to schedule on: NVML's (restricted to `declared` if given), else the declared."""
    declared = list(dict.fromkeys(d.strip() for d in declared if d.strip()))  # "0, 1,0" -> 0, 1
    found = _nvml_gpus()
    if not declared:
        return found
    if found:
        wanted = set(declared)
        kept = [g for g in found if str(g.index) in wanted or g.uuid in wanted]
        missing = wanted - {str(g.index) for g in kept} - {g.uuid for g in kept}
        if missing:
            raise ValueError(f"--gpus names GPUs this machine does not have: {sorted(missing)}")
        return kept
    # No NVML: the declaration stands for the GPUs (a machine without any, or a test).
    return [
        Gpu(index=i, uuid=name, device_id=name)
        if not name.isdigit()
        else Gpu(index=int(name), uuid=f"GPU-declared-{name}", device_id=name)
        for i, name in enumerate(declared)
    ]


def _nvml_gpus() -> list[Gpu]:
    try:
        import pynvml  # type: ignore[import-untyped]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no device: normal on most machines
        log.debug("NVML not available: %s", exc)
        return []
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                Gpu(
                    index=index,
                    uuid=uuid.decode() if isinstance(uuid, bytes) else str(uuid),
                    name=name.decode() if isinstance(name, bytes) else str(name),
                    memory_bytes=int(memory),
                )
            )
        return gpus
    except Exception as exc:
        log.warning("NVML answered but listing GPUs failed: %s", exc)
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)


class GpuAllocator:
    """Which step holds which GPU. Owned by the scheduler's loop (one task): no locking."""

    def __init__(self, gpus: Iterable[Gpu], backfill_s: float) -> None:
        self.gpus = list(gpus)
        self._backfill_us = int(backfill_s * 1_000_000)
        self._held: dict[int, list[Gpu]] = {}

    @property
    def total(self) -> int:
        return len(self.gpus)

    def free(self) -> list[Gpu]:
        taken = {g.device_id for held in self._held.values() for g in held}
        return [g for g in self.gpus if g.device_id not in taken]

    def held_by(self, step_pk: int) -> list[Gpu]:
        return list(self._held.get(step_pk, []))

    def in_use(self) -> dict[int, list[Gpu]]:
        return {pk: list(held) for pk, held in self._held.items()}

    def take(self, step_pk: int, count: int) -> list[Gpu] | None:
        """`count` free GPUs for the step (lowest indices first), or None if they are not free."""
        if count <= 0:
            return []
        free = self.free()
        if len(free) < count:
            return None
        chosen = free[:count]
        self._held[step_pk] = chosen
        return list(chosen)

    def restore(self, step_pk: int, device_ids: Iterable[str]) -> list[Gpu]:
        """After a restart: the GPUs a surviving step was given (those still on this machine)."""
        by_id = {g.device_id: g for g in self.gpus}
        held = [by_id[d] for d in device_ids if d in by_id]
        if held:
            self._held[step_pk] = held
        return held

    def release(self, step_pk: int) -> None:
        self._held.pop(step_pk, None)

    def admit(self, waiting: Sequence[GpuDemand], now_us: int, limit: int | None = None) -> list[int]:
        """Which of the waiting GPU steps (oldest first) start now, at most `limit`; their GPUs
        are taken."""
        admitted: list[int] = []
        blocked_since: int | None = None  # when the oldest step that does not fit began waiting
        for demand in sorted(waiting, key=lambda d: (d.waiting_since_us, d.step_pk)):
            if limit is not None and len(admitted) >= limit:
                break
            if demand.count > self.total:
                continue  # can never fit (the machine changed): it must not hold the queue up
            if blocked_since is not None and now_us - blocked_since >= self._backfill_us:
                break  # the oldest has waited long enough: keep the GPUs for it
            if self.take(demand.step_pk, demand.count) is not None:
                admitted.append(demand.step_pk)
            elif blocked_since is None:
                blocked_since = demand.waiting_since_us
        return admitted


@dataclass(frozen=True)
class StepRef:
    workspace: str
    job: str
    step: str


@dataclass(frozen=True)
class GpuUse:
    gpu: Gpu
    held_by: StepRef | None


@dataclass(frozen=True)
class GpuWait:
    step: StepRef
    needed: int
    reason: str


@dataclass(frozen=True)
class GpuUsage:
    """What `GET /apis/localjobs/v1/gpus` shows: every GPU and who holds it, and who waits."""

    gpus: list[GpuUse]
    waiting: list[GpuWait]

    @property
    def free(self) -> int:
        return sum(1 for use in self.gpus if use.held_by is None)


def wait_reason(needed: int, free: int) -> str:
    return f"waiting for {needed} GPU{'s' if needed != 1 else ''}; {free} free"
