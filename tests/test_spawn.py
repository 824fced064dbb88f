"""The task spawner (runner/executors/spawn.py): libc's posix_spawn through ctypes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from runner.executors import spawn
from runner.executors.spawn import spawn_in_new_session

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_gil_releasing_path_is_the_one_in_use() -> None:
    # On Linux (glibc or musl) the libc functions are there: the fallback must not hide a typo.
    assert spawn._LIBC is not None


@pytest.mark.parametrize("use_libc", [True, False], ids=["ctypes", "os.posix_spawn"])
def test_a_child_gets_its_own_session_files_and_default_signals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_libc: bool
) -> None:
    if not use_libc:
        monkeypatch.setattr(spawn, "_LIBC", None)
    out, err = tmp_path / "out", tmp_path / "err"
    script = (
        'echo "pid=$$ var=$MY_VAR"; cat /proc/$$/stat; echo; cat /proc/$$/status; '
        "echo oops >&2; read line || echo eof; exit 7"
    )
    pid = spawn_in_new_session(
        "/bin/sh",
        ["/bin/sh", "-c", script],
        {"MY_VAR": "value with spaces", "PATH": os.environ.get("PATH", os.defpath)},
        stdin=os.devnull,
        stdout=str(out),
        stderr=str(err),
        output_flags=_FLAGS,
    )
    assert _wait(pid) == 7, out.read_text() + err.read_text()
    lines = out.read_text().splitlines()
    assert lines[0] == f"pid={pid} var=value with spaces"
    # /proc/PID/stat after the command name: state, ppid, pgrp, session
    state_ppid_pgrp_session = lines[1][lines[1].rindex(")") + 2 :].split()[:4]
    assert state_ppid_pgrp_session[2:] == [str(pid), str(pid)], "its own process group and session"
    status = dict(line.split(":", 1) for line in lines[2:] if ":" in line)
    assert not int(status["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)), "SIGPIPE must be default"
    assert int(status["SigBlk"], 16) == 0, "no signal may be blocked"
    assert lines[-1] == "eof"
    assert err.read_text() == "oops\n"


def test_a_missing_program_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        spawn_in_new_session(
            str(tmp_path / "no-such-program"),
            ["x"],
            {},
            stdin=os.devnull,
            stdout=str(tmp_path / "out"),
            stderr=str(tmp_path / "err"),
            output_flags=_FLAGS,
        )
