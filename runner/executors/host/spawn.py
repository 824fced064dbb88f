"""Start a task process: libc's posix_spawn, called so that the GIL is released meanwhile.

`os.posix_spawn` holds the GIL until the child has exec'd. With vfork semantics that is the
whole time the child needs a CPU to reach exec, ~0.3-0.7 ms on a busy 2-vCPU machine, during
which the database writer thread cannot run either: measured with py-spy at 1,000 jobs, that
wait was ~40% of the event loop's GIL time. A call through ctypes releases the GIL for the
duration of the foreign call, and the same libc function does the same work.

Linux-only (as the rest of the host executor: pidfds, /proc); when the libc symbols are
missing the standard `os.posix_spawn` is used instead. Standard library only: the launcher
spawns every task with it, the daemon the ones too large for a message to the launcher.
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Mapping, Sequence

# glibc and musl agree on this value (POSIX_SPAWN_SETSID is a glibc 2.26+/musl extension).
_SETSIGDEF = 0x04
_SETSIGMASK = 0x08
_SETSID = 0x80
# Larger than posix_spawnattr_t (336 bytes on glibc x86-64), posix_spawn_file_actions_t (80)
# and sigset_t (128) on every Linux libc: the library initialises them, we only provide room.
_OPAQUE_BYTES = 1024


class _Libc:
    def __init__(self, lib: ctypes.CDLL) -> None:
        self.spawn = lib.posix_spawn
        self.spawn.restype = ctypes.c_int
        self.spawn.argtypes = [
            ctypes.POINTER(ctypes.c_int),
            ctypes.c_char_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.POINTER(ctypes.c_char_p),
        ]
        self.fa_init = lib.posix_spawn_file_actions_init
        self.fa_destroy = lib.posix_spawn_file_actions_destroy
        self.fa_adddup2 = lib.posix_spawn_file_actions_adddup2
        self.fa_adddup2.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        self.fa_addopen = lib.posix_spawn_file_actions_addopen
        self.fa_addopen.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint,
        ]
        self.attr_init = lib.posix_spawnattr_init
        self.attr_destroy = lib.posix_spawnattr_destroy
        self.attr_setflags = lib.posix_spawnattr_setflags
        self.attr_setflags.argtypes = [ctypes.c_void_p, ctypes.c_short]
        self.attr_setsigdefault = lib.posix_spawnattr_setsigdefault
        self.attr_setsigmask = lib.posix_spawnattr_setsigmask
        self.sigemptyset = lib.sigemptyset
        self.sigaddset = lib.sigaddset
        self.sigaddset.argtypes = [ctypes.c_void_p, ctypes.c_int]


def _load() -> _Libc | None:
    try:
        # The interpreter's own symbols include libc's (no find_library: it runs ldconfig).
        return _Libc(ctypes.CDLL(None, use_errno=True))
    except (OSError, AttributeError):
        return None


_LIBC = _load()


# A task gets these back to their default action, whatever the daemon's were (e.g. SIGHUP under
# `nohup`, SIGINT/SIGQUIT for a job started in the background by a shell script): a task must
# end on them as it would when started from a terminal.
DEFAULT_SIGNALS = (
    signal.SIGPIPE,
    signal.SIGXFSZ,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGTERM,
)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        raise OSError(rc, f"{what}: {os.strerror(rc)}")


def spawn_in_new_session(
    program: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    stdin: str,
    stdout: str | int,
    stderr: str | int,
    output_flags: int,
    default_signals: Sequence[int] = DEFAULT_SIGNALS,
) -> int:
    """Start `program` as the leader of a new session, stdin/stdout/stderr opened from the given
    paths (output files the spawn creates are 0600: they may show what the workload was given)
    or, for stdout/stderr, duplicated from the given descriptors (a pipe's write end),
    `default_signals` reset to their default action, no signal blocked. Returns the pid;
    raises OSError (e.g. ENOENT) when it cannot start."""
    if _LIBC is None:
        outputs = [
            (os.POSIX_SPAWN_DUP2, target, fd)
            if isinstance(target, int)
            else (os.POSIX_SPAWN_OPEN, fd, target, output_flags, 0o600)
            for fd, target in ((1, stdout), (2, stderr))
        ]
        return os.posix_spawn(
            program,
            list(argv),
            dict(env),
            file_actions=[(os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0), *outputs],
            setsid=True,
            setsigdef=tuple(default_signals),
            setsigmask=(),
        )
    for text in (program, *argv, *env.values()):
        if "\x00" in text:
            raise ValueError("embedded null byte")  # as os.posix_spawn says: C strings end there
    if any("=" in key or "\x00" in key for key in env):
        raise ValueError("illegal environment variable name")
    libc = _LIBC
    c_argv = (ctypes.c_char_p * (len(argv) + 1))(*(os.fsencode(a) for a in argv), None)
    entries = [os.fsencode(f"{k}={v}") for k, v in env.items()]
    c_env = (ctypes.c_char_p * (len(entries) + 1))(*entries, None)
    actions = ctypes.create_string_buffer(_OPAQUE_BYTES)
    attr = ctypes.create_string_buffer(_OPAQUE_BYTES)
    defaults = ctypes.create_string_buffer(_OPAQUE_BYTES)
    empty = ctypes.create_string_buffer(_OPAQUE_BYTES)
    _check(libc.fa_init(actions), "posix_spawn_file_actions_init")
    try:
        _check(libc.attr_init(attr), "posix_spawnattr_init")
        try:
            for fd, target, flags in (
                (0, stdin, os.O_RDONLY),
                (1, stdout, output_flags),
                (2, stderr, output_flags),
            ):
                if isinstance(target, int):
                    _check(libc.fa_adddup2(actions, target, fd), "adddup2")
                else:
                    _check(libc.fa_addopen(actions, fd, os.fsencode(target), flags, 0o600), "addopen")
            libc.sigemptyset(defaults)
            for sig in default_signals:
                libc.sigaddset(defaults, int(sig))
            libc.sigemptyset(empty)
            _check(libc.attr_setsigdefault(attr, defaults), "posix_spawnattr_setsigdefault")
            _check(libc.attr_setsigmask(attr, empty), "posix_spawnattr_setsigmask")
            _check(libc.attr_setflags(attr, _SETSID | _SETSIGDEF | _SETSIGMASK), "posix_spawnattr_setflags")
            pid = ctypes.c_int(0)
            # The foreign call releases the GIL until the child has exec'd (or failed to).
            rc = libc.spawn(ctypes.byref(pid), os.fsencode(program), actions, attr, c_argv, c_env)
            if rc != 0:
                raise OSError(rc, os.strerror(rc), program)
            return pid.value
        finally:
            libc.attr_destroy(attr)
    finally:
        libc.fa_destroy(actions)
