"""The daemon's own files are private from the moment they exist (0600, folders 0700); the files
a workload makes keep the modes it gives them (no umask is imposed on it)."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from storage import Repository
from tests.conftest import Api, shell
from tests.helpers import file_mode

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def _umask() -> int:
    """This process's umask, read without changing it (os.umask would, for every thread)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask in /proc/self/status")


# What the workload reports of itself: its umask, and the mode of a file it makes in job storage.
_WORKLOAD = (
    'umask; f="$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/own.txt"; echo hi > "$f"; stat -c %a "$f"; echo oops >&2'
)


async def _run(api: Api, name: str, config: dict[str, str] | None = None) -> tuple[str, list[str]]:
    """The task folder of a finished one-step job, and what the job printed."""
    await api.create_job([{**shell("main", _WORKLOAD), "config": config or {}}], name=name)
    job = await api.wait_job(name)
    assert job["status"] == "completed", job
    _, step = await api.request("GET", f"/jobs/{name}/steps/main")
    return step["status_details"]["subprocess_work_dir"], await api.logs(name)


def _assert_task_files_private(work_dir: str, work_root: Path) -> None:
    folder = Path(work_dir)
    for path in (folder / "stdout.log", folder / "stderr.log", folder / "exit_code"):
        assert file_mode(path) == PRIVATE_FILE, path
    config = folder / "config" / "job_step_config.json"
    assert file_mode(config) == PRIVATE_FILE
    storage = folder.parent.parent / "job-storage"
    for path in (folder / "scratch", folder / "config", storage):
        assert file_mode(path) == PRIVATE_FOLDER, path
    # The task folder and every folder made on the way to it, below the work folder.
    while folder != work_root:
        assert file_mode(folder) == PRIVATE_FOLDER, folder
        folder = folder.parent
    assert file_mode(work_root) == PRIVATE_FOLDER


def _assert_workload_modes_untouched(lines: list[str]) -> None:
    lines = [line for line in lines if not line.startswith("[stderr] ")]  # in order per stream
    umask = _umask()
    assert lines[0] == f"{umask:04o}"  # the workload's umask is the daemon's, as inherited
    assert lines[1] == f"{0o666 & ~umask:o}"


async def test_the_daemons_files_are_private_after_a_real_job(api: Api, tmp_path: Path) -> None:
    data = tmp_path / "data"
    work_dir, lines = await _run(api, "modes")
    _assert_task_files_private(work_dir, data / "work")
    _assert_workload_modes_untouched(lines)
    # The database and the files SQLite makes beside it while the daemon runs.
    for name in ("localjobs.db", "localjobs.db-wal", "localjobs.db-shm"):
        assert file_mode(data / name) == PRIVATE_FILE, name
    assert file_mode(data / "launcher.log") == PRIVATE_FILE


async def test_a_start_made_by_the_daemon_itself_is_private_too(api: Api, tmp_path: Path) -> None:
    # Over one launcher message (192 KiB): started in the daemon, under the `sh` wrapper.
    work_dir, lines = await _run(api, "big", config={"big": "x" * 300_000})
    _assert_task_files_private(work_dir, tmp_path / "data" / "work")
    _assert_workload_modes_untouched(lines)


_LEAVE_WAL = """
import os, sqlite3, sys
conn = sqlite3.connect(sys.argv[1])
conn.execute("PRAGMA journal_mode = WAL")
conn.execute("CREATE TABLE left_behind (x)")
conn.execute("INSERT INTO left_behind VALUES (1)")
conn.commit()
os._exit(0)  # as a crash would: the -wal and -shm files stay
"""


async def test_a_database_left_with_wide_modes_is_narrowed(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    path.touch(mode=0o644)
    path.chmod(0o644)  # whatever the umask: as an older version left it
    subprocess.run([sys.executable, "-c", _LEAVE_WAL, str(path)], check=True)
    for suffix in ("", "-wal", "-shm"):
        assert file_mode(f"{path}{suffix}") == 0o644
    store = await Repository.open(path)
    try:
        for suffix in ("", "-wal", "-shm"):
            assert file_mode(f"{path}{suffix}") == PRIVATE_FILE, suffix
    finally:
        await store.close()
    with sqlite3.connect(path) as conn:  # nothing was lost on the way
        assert conn.execute("SELECT x FROM left_behind").fetchall() == [(1,)]


async def test_a_new_database_is_private_from_creation(tmp_path: Path) -> None:
    path = tmp_path / "new" / "store.db"
    store = await Repository.open(path)
    try:
        assert file_mode(path.parent) == PRIVATE_FOLDER
        for suffix in ("", "-wal", "-shm"):
            assert file_mode(f"{path}{suffix}") == PRIVATE_FILE, suffix
    finally:
        await store.close()
