"""What a step takes from the machine (GPUs, CPUs, memory) and the one rule that reads it off a
spec; a waiting step's demand, as the allocator sees it."""

from __future__ import annotations

import math
from dataclasses import dataclass

from runner.models.quantities import parse_quantity
from runner.models.specs import ExecutorSpec, SubprocessExecutorSpec


@dataclass(frozen=True, slots=True)
class Needs:
    """What a step takes from the machine while it runs, all its tasks together: GPUs, CPUs
    (cores, from `resources.requests.cpu`) and memory (bytes, from `resources.requests.memory`)."""

    gpus: int = 0
    cpus: float = 0.0
    memory_bytes: int = 0

    def __bool__(self) -> bool:
        return bool(self.gpus or self.cpus or self.memory_bytes)

    def __add__(self, other: Needs) -> Needs:
        return Needs(self.gpus + other.gpus, self.cpus + other.cpus, self.memory_bytes + other.memory_bytes)

    def __sub__(self, other: Needs) -> Needs:
        return Needs(self.gpus - other.gpus, self.cpus - other.cpus, self.memory_bytes - other.memory_bytes)

    def fits_in(self, room: Needs) -> bool:
        """Whether this fits in `room`, kind by kind; a kind this asks none of always fits (the
        room may be short of it: a restart can restore more than a shrunk machine has). A small
        tolerance for CPUs: requests such as 0.1 + 0.2 must fit in 0.3."""
        return (
            (not self.gpus or self.gpus <= room.gpus)
            and (not self.cpus or self.cpus <= room.cpus + 1e-9)
            and (not self.memory_bytes or self.memory_bytes <= room.memory_bytes)
        )


def needs_of(
    provider: str,
    num_gpus: int | None = None,
    num_nodes: int | None = None,
    cpu: str | None = None,
    memory: str | None = None,
) -> Needs:
    """The one rule for what a step takes (storage applies it to stored specs, the service and the
    scheduler to parsed ones): per node, `num_gpus` (1 by default on the GPU providers) and the
    requests; a distributed step has `num_nodes` nodes, every other one node."""
    if provider == "subprocess":
        return Needs()
    per_node_gpus = num_gpus if num_gpus is not None else (1 if provider in ("gpu", "gpu_distributed") else 0)
    nodes = (num_nodes or 1) if provider == "gpu_distributed" else 1
    return Needs(
        gpus=per_node_gpus * nodes,
        cpus=(parse_quantity(cpu) if cpu else 0.0) * nodes,
        memory_bytes=math.ceil(parse_quantity(memory) * nodes) if memory else 0,
    )


def step_needs(executor: ExecutorSpec) -> Needs:
    if isinstance(executor, SubprocessExecutorSpec):
        return Needs()
    resources = executor.resources
    requests = resources.requests
    return needs_of(
        executor.provider,
        resources.num_gpus,
        resources.num_nodes,
        requests.cpu if requests else None,
        requests.memory if requests else None,
    )


@dataclass(frozen=True, slots=True)
class ResourceDemand:
    """A step waiting to start: what it needs (nothing, for most), and since when it waits (µs)."""

    step_pk: int
    needs: Needs
    waiting_since_us: int


def shown_cpus(value: float) -> float:
    """A CPU amount as shown (routes, reasons): 0.9 - 3 x 0.3 is 1e-16 in floats; + 0.0 turns a
    rounded -0.0 into 0.0."""
    return round(value, 6) + 0.0
