"""The task spawner (runner/executors/host/spawn.py): libc's posix_spawn through ctypes."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.executors.host import spawn
from runner.executors.host.spawn import spawn_in_new_session

_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND


def _wait(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_the_gil_releasing_path_is_the_one_in_use() -> None:
    # On Linux (glibc or musl) the libc functions are there: the fallback must not hide a typo.
    assert spawn._LIBC is not None


@pytest.fixture
def signals_ignored_here() -> Iterator[None]:
    """As under `nohup`, or for a daemon a script started in the background: an ignored signal
    stays ignored across exec unless the spawn resets it."""
    kept = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT)}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


@pytest.mark.parametrize("use_libc", [True, False], ids=["ctypes", "os.posix_spawn"])
@pytest.mark.usefixtures("signals_ignored_here")
def test_a_child_gets_its_own_session_files_and_default_signals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_libc: bool
) -> None:
    if not use_libc:
        monkeypatch.setattr(spawn, "_LIBC", None)
    out, err = tmp_path / "out", tmp_path / "err"

    # cat reads its own /proc entries: what exec kept of what posix_spawn set up. (A shell's
    # own mask is no witness: dash blocks every signal while it waits for a child.)
    argv = ["/bin/cat", "/proc/self/stat", "/proc/self/status"]
    pid = spawn_in_new_session(
        argv[0], argv, {}, stdin=os.devnull, stdout=str(out), stderr=str(err), output_flags=_FLAGS
    )
    assert _wait(pid) == 0
    text = out.read_text()
    # /proc/PID/stat after the command name: state, ppid, pgrp, session
    pgrp, session = text[text.index(")") + 2 :].split()[2:4]
    assert (pgrp, session) == (str(pid), str(pid)), "its own process group and session"
    status = dict(line.split(":", 1) for line in text.splitlines()[1:] if ":" in line)
    ignored = int(status["SigIgn"], 16)
    for sig in (signal.SIGPIPE, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        assert not ignored & (1 << (sig - 1)), f"{sig.name} must have its default action"
    assert int(status["SigBlk"], 16) == 0, "no signal may be blocked"

    out.write_text("")
    script = 'echo "var=$MY_VAR"; echo oops >&2; read line || echo eof; exit 7'
    pid = spawn_in_new_session(
        "/bin/sh",
        ["/bin/sh", "-c", script],
        {"MY_VAR": "value with spaces"},
        stdin=os.devnull,
        stdout=str(out),
        stderr=str(err),
        output_flags=_FLAGS,
    )
    assert _wait(pid) == 7
    assert out.read_text() == "var=value with spaces\neof\n"
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


@pytest.mark.parametrize(
    ("argv", "env"),
    [(["/bin/echo", "cut\x00here"], {}), (["/bin/true"], {"V": "x\x00y"}), (["/bin/true"], {"A=B": "1"})],
)
def test_what_a_c_string_cannot_carry_is_refused(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    # ctypes would cut a C string at the NUL and run something else than asked for.
    with pytest.raises(ValueError):
        spawn_in_new_session(
            argv[0],
            argv,
            env,
            stdin=os.devnull,
            stdout=str(tmp_path / "o"),
            stderr=str(tmp_path / "e"),
            output_flags=_FLAGS,
        )
