"""A job's stored output: pages (by cursor, or the tail) and the live follow."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Protocol

from runner.errors import BadRequest
from runner.log_pages import Cursor, LogPage, decode_cursor, encode_cursor, page_logs, scope_hash
from runner.lookups import existing_job
from runner.models import JobRecord, LogLine, LogQuery
from runner.notify import ChangeSignal
from storage import Repository


class LiveJobs(Protocol):
    def job_is_live(self, job_pk: int) -> bool:
        """Whether a workload of the job is still held (its last lines may still come)."""
        ...


class LogService:
    def __init__(self, store: Repository, log_signal: ChangeSignal, workloads: LiveJobs) -> None:
        self._store = store
        self._log_signal = log_signal
        self._workloads = workloads

    async def page(
        self,
        workspace: str,
        name: str,
        *,
        limit: int | None,
        page_cursor: str | None,
        tail: int | None,
        attempt: str | None,
        step_name: str | None,
        task_name: str | None,
    ) -> LogPage:
        job = await existing_job(self._store, workspace, name)
        query = self._log_query(job, attempt, step_name, task_name)
        return await page_logs(self._store, query, limit=limit, page_cursor=page_cursor, tail=tail)

    def _log_query(
        self, job: JobRecord, attempt: str | None, step_name: str | None, task_name: str | None
    ) -> LogQuery:
        # The reference types attempt_id as an integer yet stores string ids, so an explicit value
        # never matches there. Here an integer is the attempt's sequence number (0 = first).
        if attempt is None or attempt in (job.attempt_id, str(job.attempt_seq)):
            attempt_id = job.attempt_id
        else:
            attempt_id = f"no-such-attempt:{attempt}"
        return LogQuery(job_pk=job.pk, attempt_id=attempt_id, step_name=step_name, task_name=task_name)

    async def follow(
        self,
        workspace: str,
        name: str,
        *,
        page_cursor: str | None,
        attempt: str | None,
        step_name: str | None,
        task_name: str | None,
        tail: int | None = None,
        idle_check_s: float = 1.0,
    ) -> AsyncGenerator[tuple[LogLine, str], None]:
        """Every line after `page_cursor` (or the last `tail` lines) as it arrives, each with the
        cursor to resume after it; ends once the job is finished and everything it printed has
        been sent. The job and the cursor are checked here, before anything is streamed."""
        if tail is not None and page_cursor is not None:
            raise BadRequest("`tail` cannot be combined with `page_cursor`")
        job = await existing_job(self._store, workspace, name)
        query = self._log_query(job, attempt, step_name, task_name)
        after = 0
        if page_cursor:
            cursor = decode_cursor(page_cursor, query)
            after = cursor.line_id if cursor.direction == "f" else max(0, cursor.line_id - 1)
        elif tail is not None:
            last = await self._store.log_lines_before(query, None, tail)
            after = last[0].id - 1 if last else 0
        return self._follow(job, query, after, idle_check_s)

    async def _follow(
        self, job: JobRecord, query: LogQuery, after: int, idle_check_s: float
    ) -> AsyncGenerator[tuple[LogLine, str], None]:
        scope = scope_hash(query)
        while True:
            token = self._log_signal.token(job.pk)
            # Status before lines: the final status is written only after the last line is stored.
            current = await self._store.get_job_by_pk(job.pk)
            # A finished status can precede the last lines (a watchdog or client verdict is
            # recorded before the workload is stopped): also wait for its workload to be let go.
            finished = current is None or (
                current.status.is_terminal and not self._workloads.job_is_live(job.pk)
            )
            lines = await self._store.log_lines_after(query, after, 500)
            for line in lines:
                after = line.id
                yield line, encode_cursor(Cursor("f", after, scope))
            if lines:
                continue
            if finished:
                return
            await self._log_signal.wait(token, idle_check_s)
