"""A task's folders and config file, from plain strings: shared by the daemon and by the launcher
process (runner/executors/host/launcher.py), which must start without importing the daemon's models.

Folders are 0700 and the config file 0600 from the moment they exist: the config may hold what
the job's author would not show other users of the host. The modes are given to each mkdir and
open, never through the umask, which the task processes would inherit (a workload's own files
keep the modes it gives them)."""

from __future__ import annotations

import os

FOLDER_MODE = 0o700
FILE_MODE = 0o600


def make_task_folders(work_dir: str, folders: list[str], config_file: str, config_text: str) -> None:
    """`work_dir` (and its parents), then `folders`, then the config file. The task folder is new on
    every start (its parents usually are too), so mkdir is tried first and the parents made only
    when needed."""
    _make_dirs(work_dir)
    for folder in folders:
        try:
            os.mkdir(folder, FOLDER_MODE)
        except FileExistsError:
            pass
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
    try:
        data = memoryview(config_text.encode())
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)


def _make_dirs(path: str) -> None:
    """os.makedirs, but every folder it makes is FOLDER_MODE (makedirs gives the mode to the last
    one only)."""
    try:
        os.mkdir(path, FOLDER_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent == path:
            raise
        _make_dirs(parent)
        try:
            os.mkdir(path, FOLDER_MODE)
        except FileExistsError:  # made meanwhile by a start of another task of the same job
            pass
