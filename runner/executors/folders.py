"""A task's folders and config file, from plain strings: shared by the daemon and by the launcher
process (runner/executors/launcher.py), which must start without importing the daemon's models."""

from __future__ import annotations

import os


def make_task_folders(work_dir: str, folders: list[str], config_file: str, config_text: str) -> None:
    """`work_dir` (and its parents), then `folders`, then the config file. The task folder is new on
    every start (its parents usually are too), so mkdir is tried first and makedirs only when needed."""
    try:
        os.mkdir(work_dir)
    except FileNotFoundError:
        os.makedirs(work_dir)
    except FileExistsError:
        pass
    for folder in folders:
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
    fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        data = memoryview(config_text.encode())
        while data:
            data = data[os.write(fd, data) :]
    finally:
        os.close(fd)
