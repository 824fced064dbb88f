"""storage/bulk.py: a bulk-filled store reads back through the repository as if it had written it."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from runner.models import JobFilter, JobSort, JobStatus, PlatformJobSpec, StepFilter, StepSort
from storage import Repository
from storage.bulk import FilledJob, FilledStep, bulk_fill

SPEC = PlatformJobSpec.model_validate(
    {
        "steps": [
            {"name": f"s{i}", "executor": {"provider": "subprocess", "command": ["true"]}} for i in range(2)
        ]
    }
)


def _job(name: str, status: JobStatus, t: int) -> FilledJob:
    steps = [
        FilledStep(JobStatus.COMPLETED, t, t + 1, status_details={"message": "Completed"}),
        FilledStep(
            status,
            t + 2,
            t + 3,
            status_details={"message": "Error"},
            error_details={"exit_code": 1} if status is JobStatus.ERROR else None,
            active_since=t + 2,
        ),
    ]
    return FilledJob(
        workspace="ws",
        name=name,
        source="bench",
        platform_spec=SPEC,
        status=status,
        created_at=t,
        updated_at=t + 3,
        steps=steps,
        auth_context={"principal_id": "bench", "principal_groups": []},
    )


async def test_bulk_filled_store_reads_back(tmp_path: Path) -> None:
    db = tmp_path / "localjobs.db"
    jobs = [_job("a", JobStatus.COMPLETED, 1_000), _job("b", JobStatus.ERROR, 2_000)]
    assert await asyncio.to_thread(bulk_fill, db, jobs) == 4
    # A second fill appends after the first (fresh primary keys).
    assert await asyncio.to_thread(bulk_fill, db, [_job("c", JobStatus.PAUSED, 3_000)]) == 2
    repo = await Repository.open(db)
    try:
        page = await repo.list_jobs(JobFilter(workspace="ws"), JobSort.CREATED_AT, 1, 10)
        assert [(j.name, j.status, j.created_at) for j in page.items] == [
            ("a", JobStatus.COMPLETED, 1_000),
            ("b", JobStatus.ERROR, 2_000),
            ("c", JobStatus.PAUSED, 3_000),
        ]
        assert page.items[0].auth_context == {"principal_id": "bench", "principal_groups": []}
        assert page.items[0].platform_spec == SPEC
        b = page.items[1]
        steps = await repo.steps_of_job(b.pk)
        assert [(s.name, s.status, s.updated_at) for s in steps] == [
            ("s0", JobStatus.COMPLETED, 2_001),
            ("s1", JobStatus.ERROR, 2_003),
        ]
        assert steps[1].error_details == {"exit_code": 1}
        assert steps[1].status_details == {"message": "Error"}
        errors = await repo.list_steps(StepFilter(statuses=[JobStatus.ERROR]), StepSort.CREATED_AT, 1, 10)
        assert [s.job_name for s in errors.items] == ["b"]
    finally:
        await repo.close()


def test_steps_must_match_the_spec(tmp_path: Path) -> None:
    job = _job("a", JobStatus.COMPLETED, 1)
    short = dataclasses.replace(job, steps=job.steps[:1])
    with pytest.raises(ValueError, match="1 steps for a spec of 2"):
        bulk_fill(tmp_path / "localjobs.db", [short])
