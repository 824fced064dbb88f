"""What the machine has, what running steps hold, and who waits for what and why: the views
behind `GET /apis/localjobs/v1/capacity` and `/gpus` and the profiles' `capacity`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from runner.allocation import Allocator, GpuUse, Hold, StepRef, Usage, Wait, wait_reason
from runner.clock import Clock
from runner.models import Needs
from storage import Repository


class CapacityView:
    def __init__(
        self, store: Repository, clock: Clock, allocator: Allocator, recovered: Callable[[], Awaitable[None]]
    ) -> None:
        self._store = store
        self._clock = clock
        self._allocator = allocator
        # What is in use counts the steps an earlier daemon left only once they are adopted.
        self._recovered = recovered

    def machine(self) -> Needs:
        """What the machine has: GPUs, CPUs, memory."""
        return self._allocator.capacity

    async def resources(self) -> tuple[Needs, Needs]:
        """(what the machine has, what running steps hold now): GPUs, CPUs, memory."""
        await self._recovered()
        return self._allocator.capacity, self._allocator.in_use()

    async def usage(self) -> Usage:
        """The machine, what is in use, every GPU with the step holding it, and the steps that
        wait for GPUs, CPUs or memory, with why (the scheduler's own rule, applied to now)."""
        await self._recovered()
        refs: dict[int, StepRef | None] = {}

        async def ref(step_pk: int) -> StepRef | None:
            if step_pk not in refs:
                step = await self._store.get_step_by_pk(step_pk)
                refs[step_pk] = None if step is None else StepRef(step.workspace, step.job_name, step.name)
            return refs[step_pk]

        holdings = self._allocator.holdings()
        holder = {g.device_id: pk for pk, holding in holdings.items() for g in holding.gpus}
        uses = [
            GpuUse(gpu=g, held_by=await ref(holder[g.device_id]) if g.device_id in holder else None)
            for g in self._allocator.machine.gpus
        ]
        waiting = [d for d in await self._store.runnable_steps(0) if d.step_pk not in holdings]
        waits = []
        for decision in self._allocator.plan(waiting, self._clock.now_us()):
            step_ref = await ref(decision.demand.step_pk)
            if step_ref is not None:  # (a step that fits and still waits: for a slot)
                waits.append(
                    Wait(step_ref, decision.demand.needs, wait_reason(decision, self._allocator.backfill_s))
                )
        held = []
        for step_pk, holding in holdings.items():
            if (step_ref := await ref(step_pk)) is not None:
                held.append(Hold(step_ref, holding.needs, holding.gpus))
        return Usage(self._allocator.capacity, self._allocator.in_use(), uses, held, waits)

    def never_fits(self, needs: Needs) -> bool:
        return self._allocator.never_fits(needs)
