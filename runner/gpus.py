"""The machine's GPUs: which there are (runner/allocation.py decides who holds which).

Found at start through NVML (nvidia-ml-py, imported only then; no driver or no GPU is normal and
means no GPUs), or declared with `--gpus` / `LOCALJOBS_GPUS` (indices or UUIDs, `0,1`): a
declaration restricts what NVML found to those, or, with no NVML, stands for the GPUs itself, so
the allocation can be used and tested on a machine without any.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

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
