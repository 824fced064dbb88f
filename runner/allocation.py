"""Which waiting step may start, and what of the machine each running step holds.

The machine is its GPUs (runner/gpus.py), its CPUs and its memory (what this process may use,
or what `--cpus` / `--memory` declare). A step's needs (`runner.models.step_needs`) are its GPUs
and its `resources.requests`; a step that asks for nothing always fits and holds nothing.
Allocation is all-or-nothing per step: it gets all it needs, specific GPUs included, or waits.

Order (`plan`): first come first served, with a bounded backfill. While the oldest waiting step
that needs something does not fit, younger steps that fit may start, for up to `backfill_s` of
its wait; after that what it needs is kept for it: a younger step starts only if it fits in what
would still be left once the oldest has all it needs (a CPU request does not wait behind a step
waiting for GPUs; a GPU request does), so a large step is never starved and small ones do not
leave the machine idle meanwhile. Steps that need nothing are never held back.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import psutil

from runner.gpus import Gpu
from runner.models import Needs, ResourceDemand, shown_cpus


@dataclass(frozen=True)
class Machine:
    gpus: tuple[Gpu, ...]
    cpus: float
    memory_bytes: int

    @property
    def capacity(self) -> Needs:
        return Needs(len(self.gpus), self.cpus, self.memory_bytes)


def machine_of(gpus: Iterable[Gpu], cpus: float = 0, memory_bytes: int = 0) -> Machine:
    """The machine to schedule on: declared CPUs and memory where given (> 0), else what this
    process may use (its CPU affinity, the memory the kernel reports)."""
    return Machine(
        gpus=tuple(gpus),
        cpus=cpus if cpus > 0 else float(len(os.sched_getaffinity(0))),
        memory_bytes=memory_bytes if memory_bytes > 0 else psutil.virtual_memory().total,
    )


@dataclass(frozen=True)
class Holding:
    needs: Needs
    gpus: tuple[Gpu, ...] = ()


class Verdict(enum.Enum):
    START = "start"
    NEVER_FITS = "never fits"  # the machine (or a declaration) shrank since it was accepted
    LACKS = "lacks"  # not enough free now
    HELD_BACK = "held back"  # would fit, but an older step has waited past the backfill bound
    NO_SLOT = "no slot"  # would start, but the limit of running steps is reached


@dataclass(frozen=True)
class Decision:
    demand: ResourceDemand
    verdict: Verdict
    room: Needs  # what was free when it was decided (after the older steps that start)
    gpus: tuple[Gpu, ...] = ()


@dataclass(frozen=True)
class Admission:
    started: list[int]
    unfit: list[ResourceDemand]


@dataclass
class Allocator:
    """Owned by the scheduler's loop (one task): no locking."""

    machine: Machine
    backfill_s: float
    _held: dict[int, Holding] = field(default_factory=dict)

    @property
    def capacity(self) -> Needs:
        return self.machine.capacity

    def in_use(self) -> Needs:
        total = Needs()
        for holding in self._held.values():
            total = total + holding.needs
        return total

    def room(self) -> Needs:
        return self.capacity - self.in_use()

    def free_gpus(self) -> list[Gpu]:
        taken = {g.device_id for holding in self._held.values() for g in holding.gpus}
        return [g for g in self.machine.gpus if g.device_id not in taken]

    def holdings(self) -> dict[int, Holding]:
        return dict(self._held)

    def gpus_of(self, step_pk: int) -> list[Gpu]:
        holding = self._held.get(step_pk)
        return list(holding.gpus) if holding else []

    def never_fits(self, needs: Needs) -> bool:
        return not needs.fits_in(self.capacity)

    def restore(self, step_pk: int, needs: Needs, device_ids: Iterable[str]) -> list[Gpu]:
        """After a restart: what a surviving step holds (its GPUs: those still on this machine)."""
        by_id = {g.device_id: g for g in self.machine.gpus}
        gpus = tuple(by_id[d] for d in device_ids if d in by_id)
        if needs or gpus:
            self._held[step_pk] = Holding(needs, gpus)
        return list(gpus)

    def release(self, step_pk: int) -> None:
        self._held.pop(step_pk, None)

    def plan(
        self, waiting: Sequence[ResourceDemand], now_us: int, slots: int | None = None
    ) -> list[Decision]:
        """What happens to each waiting step (oldest first) by the rule above; nothing is taken."""
        room = self.room()
        free_gpus = self.free_gpus()
        backfill_us = int(self.backfill_s * 1_000_000)
        # The oldest step that does not fit: since when it waits, and what it needs.
        blocked_since: int | None = None
        blocked = Needs()
        starting = 0
        decisions = []
        for demand in sorted(waiting, key=lambda d: (d.waiting_since_us, d.step_pk)):
            needs = demand.needs
            if needs and self.never_fits(needs):
                verdict = Verdict.NEVER_FITS  # must not hold the queue up
            elif needs and not needs.fits_in(room):
                verdict = Verdict.LACKS
                if blocked_since is None:
                    blocked_since, blocked = demand.waiting_since_us, needs
            elif (
                needs
                and blocked_since is not None
                and now_us - blocked_since >= backfill_us
                and not needs.fits_in(room - blocked)
            ):
                # Past the bound, what the oldest needs is kept for it: a younger step may take
                # only what would still be left (a CPU request does not wait behind GPUs).
                verdict = Verdict.HELD_BACK
            elif slots is not None and starting >= slots:
                verdict = Verdict.NO_SLOT
            else:
                verdict = Verdict.START
            decision = Decision(demand, verdict, room)
            if verdict is Verdict.START:
                starting += 1
                room = room - needs
                decision = Decision(demand, verdict, room, tuple(free_gpus[: needs.gpus]))
                free_gpus = free_gpus[needs.gpus :]
            decisions.append(decision)
        return decisions

    def admit(self, waiting: Sequence[ResourceDemand], now_us: int, slots: int) -> Admission:
        """The waiting steps that start now (at most `slots`), what they need taken; and those
        that can never start on this machine (it shrank since they were accepted)."""
        admission = Admission([], [])
        for decision in self.plan(waiting, now_us, slots):
            if decision.verdict is Verdict.START:
                if decision.demand.needs:
                    self._held[decision.demand.step_pk] = Holding(decision.demand.needs, decision.gpus)
                admission.started.append(decision.demand.step_pk)
            elif decision.verdict is Verdict.NEVER_FITS:
                admission.unfit.append(decision.demand)
        return admission


# ------------------------------------------------------------------------------ what is shown


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
class Hold:
    step: StepRef
    needs: Needs
    gpus: tuple[Gpu, ...]


@dataclass(frozen=True)
class Wait:
    step: StepRef
    needs: Needs
    reason: str


@dataclass(frozen=True)
class Usage:
    """What `GET /apis/localjobs/v1/capacity` (and `/gpus`) show: the machine, what is in use,
    every GPU and who holds it, and the steps that wait for something, with why."""

    capacity: Needs
    in_use: Needs
    gpus: list[GpuUse]
    held: list[Hold]
    waiting: list[Wait]

    @property
    def free_gpus(self) -> int:
        return sum(1 for use in self.gpus if use.held_by is None)


def wait_reason(decision: Decision, backfill_s: float) -> str:
    """Why a step that needs something has not started, in a line for `localjobs ls` and `/gpus`."""
    needs, room = decision.demand.needs, decision.room
    if decision.verdict is Verdict.NEVER_FITS:
        return "can never start: the machine now has less than it needs"
    if decision.verdict is Verdict.HELD_BACK:
        return f"held back: an older step has waited more than {backfill_s:g} s for what it needs"
    if decision.verdict in (Verdict.NO_SLOT, Verdict.START):
        return "waiting for a free slot (the limit of running steps)"
    lacking = []
    if needs.gpus > room.gpus:
        lacking.append(f"{needs.gpus} GPU{'s' if needs.gpus != 1 else ''}; {max(room.gpus, 0)} free")
    if needs.cpus > room.cpus + 1e-9:
        free_cpus = max(shown_cpus(room.cpus), 0.0)
        lacking.append(f"{needs.cpus:g} CPU{'s' if needs.cpus != 1 else ''}; {free_cpus:g} free")
    if needs.memory_bytes > room.memory_bytes:
        lacking.append(f"{_bytes(needs.memory_bytes)} of memory; {_bytes(max(room.memory_bytes, 0))} free")
    return "waiting for " + ", and for ".join(lacking)


def _bytes(count: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if count >= size:
            return f"{count / size:.3g} {unit}"
    return f"{count} B"


def unfit_reason(needs: Needs, capacity: Needs, now: bool = False) -> str:
    """Why a step can never start on this machine (`now`: the machine shrank since it was accepted)."""
    has = "now has" if now else "has"
    reasons = []
    if needs.gpus > capacity.gpus:
        reasons.append(
            f"it needs {needs.gpus} GPU{'s' if needs.gpus != 1 else ''}; this machine {has} {capacity.gpus}"
            " (see --gpus / LOCALJOBS_GPUS)"
        )
    if needs.cpus > capacity.cpus + 1e-9:
        reasons.append(
            f"it requests {needs.cpus:g} CPU{'s' if needs.cpus != 1 else ''}; this machine {has} "
            f"{capacity.cpus:g} (see --cpus / LOCALJOBS_CPUS)"
        )
    if needs.memory_bytes > capacity.memory_bytes:
        reasons.append(
            f"it requests {_bytes(needs.memory_bytes)} of memory; this machine {has} "
            f"{_bytes(capacity.memory_bytes)} (see --memory / LOCALJOBS_MEMORY)"
        )
    return "; and ".join(reasons)
