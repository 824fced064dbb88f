"""The allocator's rule, with a fake machine: all or nothing per step, first come first served with
a bounded backfill, across GPUs, CPUs and memory; and what a step needs."""

from __future__ import annotations

from typing import Any

import pytest

from runner.allocation import Allocator, Verdict, machine_of, unfit_reason, wait_reason
from runner.gpus import discover
from runner.models import Needs, ResourceDemand, StepSpec, step_needs

_S = 1_000_000
_GI = 2**30


def _allocator(gpus: int = 0, cpus: float = 8, memory_gi: int = 16, backfill_s: float = 60) -> Allocator:
    machine = machine_of(discover([str(i) for i in range(gpus)]), cpus, memory_gi * _GI)
    return Allocator(machine, backfill_s)


def _wants(
    pk: int, since_s: float = 0, gpus: int = 0, cpus: float = 0, memory_gi: float = 0
) -> ResourceDemand:
    return ResourceDemand(pk, Needs(gpus, cpus, int(memory_gi * _GI)), int(since_s * _S))


def test_a_step_gets_all_it_asks_for_or_nothing() -> None:
    alloc = _allocator(gpus=3)
    assert alloc.admit([_wants(1, gpus=2)], now_us=0, slots=10).started == [1]
    assert [g.index for g in alloc.gpus_of(1)] == [0, 1]
    assert alloc.admit([_wants(2, gpus=2)], now_us=0, slots=10).started == []
    assert alloc.gpus_of(2) == []
    assert alloc.admit([_wants(3, gpus=1)], now_us=0, slots=10).started == [3]
    assert [g.index for g in alloc.gpus_of(3)] == [2]
    alloc.release(1)
    assert [g.index for g in alloc.free_gpus()] == [0, 1]
    assert alloc.in_use() == Needs(gpus=1)


def test_cpu_and_memory_requests_are_admitted_against_capacity() -> None:
    alloc = _allocator(cpus=4, memory_gi=8)
    waiting = [_wants(1, 0, cpus=3), _wants(2, 1, cpus=2), _wants(3, 2, cpus=1, memory_gi=8), _wants(4, 3)]
    # 1 fits (3 of 4 CPUs); 2 does not (2 > 1 free) but may be backfilled past: 3 fits in what is
    # left; 4 asks for nothing and always starts.
    assert alloc.admit(waiting, now_us=10 * _S, slots=10).started == [1, 3, 4]
    assert alloc.in_use() == Needs(0, 4.0, 8 * _GI)
    assert alloc.room() == Needs(0, 0.0, 0)
    alloc.release(1)
    assert alloc.admit([_wants(2, 1, cpus=2)], now_us=11 * _S, slots=10).started == [2]


def test_fractional_requests_add_up_exactly_enough() -> None:
    alloc = _allocator(cpus=0.3)
    demands = [_wants(1, 0, cpus=0.1), _wants(2, 1, cpus=0.2)]
    assert alloc.admit(demands, now_us=0, slots=10).started == [1, 2]


def test_backfill_lets_small_steps_use_free_gpus_for_a_bounded_time() -> None:
    alloc = _allocator(gpus=4, backfill_s=60)
    assert alloc.admit([_wants(100, gpus=2)], now_us=0, slots=10).started == [100]  # two busy
    big, small = _wants(1, 0, gpus=4), _wants(2, 5, gpus=1)
    # The big one cannot fit; within the bound the younger small one may take a free GPU.
    assert alloc.admit([big, small], now_us=10 * _S, slots=10).started == [2]
    alloc.release(2)
    # Past the bound, nothing that needs anything starts until the big one has started...
    later, plain = _wants(3, 70, gpus=1), _wants(4, 71)
    decisions = {d.demand.step_pk: d.verdict for d in alloc.plan([big, later, plain], now_us=61 * _S)}
    assert decisions == {1: Verdict.LACKS, 3: Verdict.HELD_BACK, 4: Verdict.START}
    # ...but a step that needs nothing still does: it takes nothing the big one waits for.
    assert alloc.admit([big, later, plain], now_us=61 * _S, slots=10).started == [4]
    alloc.release(100)
    assert alloc.admit([big, later], now_us=62 * _S, slots=10).started == [1]
    assert len(alloc.gpus_of(1)) == 4


def test_the_backfill_bound_holds_back_cpu_requests_too() -> None:
    alloc = _allocator(cpus=4, backfill_s=30)
    assert alloc.admit([_wants(100, cpus=2)], now_us=0, slots=10).started == [100]
    big, small = _wants(1, 0, cpus=4), _wants(2, 1, cpus=1)
    assert alloc.admit([big, small], now_us=31 * _S, slots=10).started == []
    decision = alloc.plan([big, small], now_us=31 * _S)[1]
    assert wait_reason(decision, 30) == "held back: an older step has waited more than 30 s for what it needs"


def test_first_come_first_served_within_the_slots() -> None:
    alloc = _allocator(gpus=2)
    demands = [_wants(pk, pk * 1e-6, gpus=1) for pk in (3, 1, 2)] + [_wants(4, 0)]
    assert alloc.admit(demands, now_us=10, slots=2).started == [4, 1]  # oldest first, whatever they need
    assert alloc.admit([_wants(2, 2e-6, gpus=1), _wants(3, 3e-6, gpus=1)], now_us=10, slots=1).started == [2]
    assert alloc.free_gpus() == []


def test_a_step_that_can_never_fit_does_not_hold_the_queue_up() -> None:
    alloc = _allocator(gpus=1, cpus=2, backfill_s=0)
    never_gpus, never_cpus, fits = _wants(1, 0, gpus=2), _wants(2, 0, cpus=3), _wants(3, 1, gpus=1, cpus=1)
    assert alloc.admit([never_gpus, never_cpus, fits], now_us=100 * _S, slots=10).started == [3]
    assert alloc.plan([never_gpus], now_us=0)[0].verdict is Verdict.NEVER_FITS


def test_restore_after_a_restart() -> None:
    alloc = _allocator(gpus=2, cpus=4)
    assert [g.device_id for g in alloc.restore(7, Needs(1, 2.0, 0), ["1", "GPU-gone"])] == ["1"]
    assert [g.index for g in alloc.free_gpus()] == [0]
    assert alloc.room() == Needs(1, 2.0, 16 * _GI)


def test_wait_reasons_say_what_is_missing() -> None:
    alloc = _allocator(gpus=2, cpus=4, memory_gi=8)
    alloc.admit([_wants(100, gpus=1, cpus=3, memory_gi=6)], now_us=0, slots=10)
    [decision] = alloc.plan([_wants(1, 0, gpus=2)], now_us=0)
    assert wait_reason(decision, 60) == "waiting for 2 GPUs; 1 free"
    [decision] = alloc.plan([_wants(1, 0, cpus=2, memory_gi=4)], now_us=0)
    assert wait_reason(decision, 60) == "waiting for 2 CPUs; 1 free, and for 4 GiB of memory; 2 GiB free"
    [decision] = alloc.plan([_wants(1, 0, cpus=1)], now_us=0, slots=0)
    assert wait_reason(decision, 60) == "waiting for a free slot (the limit of running steps)"


def test_why_a_step_can_never_fit() -> None:
    capacity = Needs(1, 2.0, 4 * _GI)
    assert (
        unfit_reason(Needs(gpus=2), capacity)
        == "it needs 2 GPUs; this machine has 1 (see --gpus / LOCALJOBS_GPUS)"
    )
    assert unfit_reason(Needs(cpus=2.5, memory_bytes=8 * _GI), capacity, now=True) == (
        "it requests 2.5 CPUs; this machine now has 2 (see --cpus / LOCALJOBS_CPUS); and it requests "
        "8 GiB of memory; this machine now has 4 GiB (see --memory / LOCALJOBS_MEMORY)"
    )


def test_the_machine_is_what_this_process_may_use_unless_declared() -> None:
    import os

    import psutil

    found = machine_of([])
    assert found.cpus == len(os.sched_getaffinity(0))
    assert found.memory_bytes == psutil.virtual_memory().total
    assert machine_of([], 1.5, 1000).capacity == Needs(0, 1.5, 1000)


@pytest.mark.parametrize(
    ("executor", "needs"),
    [
        ({"provider": "subprocess", "command": ["true"]}, Needs()),
        ({"provider": "gpu", "container": {"image": "i"}}, Needs(gpus=1)),
        ({"provider": "gpu", "container": {"image": "i"}, "resources": {"num_gpus": 0}}, Needs()),
        ({"provider": "cpu", "container": {"image": "i"}, "resources": {"num_gpus": 2}}, Needs(gpus=2)),
        (
            {
                "provider": "cpu",
                "container": {"image": "i"},
                "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
            },
            Needs(0, 0.5, _GI),
        ),
        (
            {
                "provider": "gpu_distributed",
                "container": {"image": "i"},
                "resources": {"num_nodes": 2, "num_gpus": 2, "requests": {"cpu": "2", "memory": "512Mi"}},
            },
            Needs(4, 4.0, _GI),
        ),
        # Limits are not requests: they do not reserve anything.
        ({"provider": "cpu", "container": {"image": "i"}, "resources": {"limits": {"cpu": "4"}}}, Needs()),
    ],
)
def test_what_a_step_needs(executor: dict[str, Any], needs: Needs) -> None:
    assert step_needs(StepSpec.model_validate({"name": "ab", "executor": executor}).executor) == needs


def test_past_the_bound_a_request_of_another_kind_still_starts() -> None:
    alloc = _allocator(gpus=4, cpus=8, backfill_s=0)
    assert alloc.admit([_wants(100, gpus=3)], now_us=0, slots=10).started == [100]
    big, cpu_only, one_gpu = _wants(1, 0, gpus=4), _wants(2, 1, cpus=2), _wants(3, 2, gpus=1)
    verdicts = {d.demand.step_pk: d.verdict for d in alloc.plan([big, cpu_only, one_gpu], now_us=10 * _S)}
    # The big step waits for GPUs: the free one is kept for it, the CPUs are not.
    assert verdicts == {1: Verdict.LACKS, 2: Verdict.START, 3: Verdict.HELD_BACK}


def test_what_never_fits_is_told_apart() -> None:
    alloc = _allocator(gpus=1)
    admission = alloc.admit([_wants(1, 0, gpus=2), _wants(2, 1, gpus=1)], now_us=0, slots=10)
    assert admission.started == [2]
    assert [d.step_pk for d in admission.unfit] == [1]
