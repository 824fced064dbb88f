"""Job results: named files or folders inside the job's fileset folder, listed and downloaded.

The fileset folder is the job's persistent storage (NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH). A
result path may not leave it: `..`, absolute paths and symlinks pointing outside are refused.
Folders download as a .tar.gz streamed from a worker thread through a pipe, never held in memory.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from runner.clock import Clock
from runner.environment import job_storage_dir
from runner.errors import Conflict, NotFound, Unprocessable
from runner.fileset_ref import parse_fileset_ref
from runner.models import JobRecord, ResultRecord, check_name, new_entity_id
from runner.secrets import NO_MASK, Masker
from storage import AlreadyExists, Repository, WriteTx

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Artifact:
    path: Path
    is_dir: bool
    # The top folder of a folder's archive: the folder's own name, or the fileset's for all of it.
    arcname: str


def artifact_path(job: JobRecord, artifact_url: str, stored: bool = False) -> PurePosixPath:
    """The path inside the job's fileset that `artifact_url` names, in any form the reference's
    fileset parser reads (runner/fileset_ref.py); `.` is the whole fileset. A `stored` result
    may also hold a bare path (what localjobs accepted before it read every form): still served."""
    ref = parse_fileset_ref(artifact_url, job.workspace)
    if stored and (ref.workspace, ref.fileset) != (job.workspace, job.fileset) and _bare(artifact_url):
        path = PurePosixPath(artifact_url)
        if path.is_absolute() or ".." in path.parts:
            raise Unprocessable(f"artifact path {artifact_url!r} must stay inside the job's fileset")
        return path
    if (ref.workspace, ref.fileset) != (job.workspace, job.fileset):
        raise Unprocessable(
            f"artifact_url must point into this job's fileset '{job.workspace}/{job.fileset}', "
            f"not '{ref.workspace}/{ref.fileset}'"
        )
    return ref.path


def _bare(artifact_url: str) -> bool:
    return "#" not in artifact_url and not artifact_url.startswith("fileset://")


def _contained(root: Path, relative: PurePosixPath) -> Path:
    resolved_root = root.resolve()
    target = (resolved_root / relative).resolve()
    if target != resolved_root and resolved_root not in target.parents:
        raise Unprocessable(f"artifact path {str(relative)!r} leaves the job's fileset (through a symlink)")
    return target


class ResultService:
    def __init__(self, store: Repository, clock: Clock, work_root: Path) -> None:
        self._store = store
        self._clock = clock
        self._work_root = work_root

    def fileset_dir(self, job: JobRecord) -> Path:
        return job_storage_dir(self._work_root, job.workspace, job.name, job.attempt_id)

    async def create(
        self, job: JobRecord, name: str, artifact_url: str, storage_type: str, masker: Masker = NO_MASK
    ) -> ResultRecord:
        """Checked as given; stored with `masker`'s secret values masked, like all a client
        stores (a result whose name or path shows a secret can then not be fetched by them)."""
        try:
            check_name(name)
        except ValueError as exc:
            raise Unprocessable(str(exc)) from None
        # Whether something is there yet is not checked, as the reference does not: a step may
        # name its result before it writes it.
        _contained(self.fileset_dir(job), artifact_path(job, artifact_url))
        name, artifact_url = masker.text(name), masker.text(artifact_url)
        now = self._clock.now_us()

        def insert(tx: WriteTx) -> ResultRecord | None:
            try:
                tx.insert_result(
                    id=new_entity_id("platform-job-result"),
                    job_pk=job.pk,
                    name=name,
                    artifact_url=artifact_url,
                    storage_type=storage_type,
                    now=now,
                )
            except AlreadyExists as exc:
                raise Conflict(str(exc)) from exc
            return tx.get_result(job.pk, name)

        created = await self._store.write(insert)
        assert created is not None
        return created

    async def get(self, job: JobRecord, name: str) -> ResultRecord:
        result = await self._store.get_result(job.pk, name)
        if result is None:
            raise NotFound(f"result {name!r} not found for job {job.name!r}")
        return result

    async def list_all(self, job: JobRecord, newest_first: bool, by_updated: bool) -> list[ResultRecord]:
        return await self._store.list_results(job.pk, newest_first, by_updated)

    def artifact(self, job: JobRecord, result: ResultRecord) -> Artifact:
        # Checked again at download: a symlink may have been planted after the result was created.
        relative = artifact_path(job, result.artifact_url, stored=True)
        path = _contained(self.fileset_dir(job), relative)
        if not path.exists():
            raise NotFound(f"the artifact of result {result.name!r} is missing from the job's fileset")
        return Artifact(path=path, is_dir=path.is_dir(), arcname=relative.name or job.fileset)


async def tar_gz_stream(folder: Path, arcname: str) -> AsyncIterator[bytes]:
    """A .tar.gz of `folder` (stored as `arcname/`), yielded in chunks as it is produced.

    The archive is written by a thread of its own into a pipe that the event loop reads without
    blocking: a slow or stalled download holds one thread and one pipe, never the shared worker
    pool (which starts steps). A failure while archiving raises, so the download is cut short
    rather than completed with a truncated archive."""
    loop = asyncio.get_running_loop()
    read_fd, write_fd = os.pipe()
    failure: list[BaseException] = []

    def produce() -> None:
        try:
            import tarfile  # only when a folder result is packed: ~0.4 MB of RSS otherwise

            with os.fdopen(write_fd, "wb") as sink, tarfile.open(fileobj=sink, mode="w|gz") as tar:
                tar.add(folder, arcname=arcname)
        except BaseException as exc:  # reported to the reader below
            failure.append(exc)

    reader = asyncio.StreamReader(limit=_CHUNK)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    producer = threading.Thread(target=produce, name=f"tar-{arcname}", daemon=True)
    producer.start()
    try:
        while chunk := await reader.read(_CHUNK):
            yield chunk
        await asyncio.to_thread(producer.join, 30)
        if failure and not isinstance(failure[0], BrokenPipeError):
            raise OSError(f"could not archive {arcname!r}: {failure[0]}") from failure[0]
    finally:
        # Closing our end makes a producer whose reader left fail with EPIPE, and stop.
        transport.close()
