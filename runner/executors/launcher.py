"""The launcher: a small process of its own that creates task folders, starts task processes and
reaps them, recording each one's exit status in its task folder.

Why a process: in the daemon, each start cost ~12 system calls on worker threads (7 mkdirs, the
config file, the spawn, /proc), each of which gave the GIL away and had to win it back from the
event loop and the database writer; and each task needed a `sh` wrapper (one more fork and exec)
to record its exit status should the daemon be down when it ends. Here the work runs beside the
daemon, on another core, the task is spawned directly, and the daemon's part of a start is one
message out and one back, of an end one message in.

Run as `python -S -m runner.executors.launcher FD IDLE`, FD being its end of a SOCK_SEQPACKET pair;
standard library only (no site, no pydantic), so it starts in tens of milliseconds.

  daemon -> launcher: {"id", "argv", "env", "work_dir", "folders", "config_file", "config",
                       "stdout", "stderr", "exit_file"}
  launcher -> daemon: {"id", "pid", "start_ticks"} with a pidfd of the process attached
                      (SCM_RIGHTS: no pid-reuse race), or {"id", "error"};
                      later {"exited": pid, "start_ticks", "code": N}, once N is in the
                      exit-status file and whatever the task left running has been ended;
  daemon -> launcher: {"stop": pid, "start_ticks", "grace_s"}: SIGTERM to the task's whole tree
                      (what left its group and session too), SIGKILL after grace_s;
                      {"idle": true} after IDLE seconds with no task and no request: the
                      daemon then closes its end if it has nothing in flight, and the launcher
                      exits (an idle daemon holds no launcher: ~12 MB less).

Run as `... FD IDLE GRACE`, it is a child subreaper and ends what a task leaves running once its
main process has ended: SIGTERM, GRACE seconds, SIGKILL (runner/executors/leftovers.py); with
GRACE `keep` (or absent) such processes are left alone, as the reference does.

Exit statuses are written as a shell reports them (`128+S` for signal S), the format the
daemon has always read. When the daemon goes away (closes its end, or dies) the launcher stops
taking requests but stays until its last task has ended and its status is written, so a
restarted daemon finds it; then it exits.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import select
import selectors
import signal
import socket
import sys
import time

from runner.executors.folders import make_task_folders
from runner.executors.leftovers import TASK_MARKER_VARIABLE, Leftovers, become_child_subreaper
from runner.executors.procfs import start_ticks
from runner.executors.spawn import spawn_in_new_session

MAX_MESSAGE = 192 * 1024  # below the default socket buffer (net.core.wmem_default: 208 KiB)
_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
_REAP_EVERY_S = 1.0  # a missed SIGCHLD wake-up costs at most this much


def _start(request: dict[str, object]) -> int:
    """Folders, config file and the task process: its pid. OSError or ValueError on failure."""
    folders, argv, env = request["folders"], request["argv"], request["env"]
    assert isinstance(folders, list) and isinstance(argv, list) and isinstance(env, dict)
    work_dir = str(request["work_dir"])
    make_task_folders(work_dir, folders, str(request["config_file"]), str(request["config"]))
    os.chdir(work_dir)  # inherited by the spawn; the daemon sends absolute paths only

    def spawn(program: str, args: list[str]) -> int:
        return spawn_in_new_session(
            program,
            args,
            env,
            stdin=os.devnull,
            stdout=str(request["stdout"]),
            stderr=str(request["stderr"]),
            output_flags=_OUTPUT_FLAGS,
        )

    try:
        return spawn(argv[0], argv)
    except OSError as exc:
        if exc.errno != errno.ENOEXEC:
            raise
        # A script without `#!`: a shell runs it as a shell script, so do the same (as execvp does).
        return spawn("/bin/sh", ["/bin/sh", *argv])


class Launcher:
    def __init__(self, sock: socket.socket, leftovers: Leftovers | None = None) -> None:
        self.sock: socket.socket | None = sock
        self.exit_files: dict[int, tuple[str, int | None]] = {}  # with the start ticks
        self.leftovers = leftovers

    @property
    def busy(self) -> bool:
        return bool(self.exit_files) or (self.leftovers is not None and self.leftovers.busy)

    def answer(self, data: bytes) -> None:
        request_id: object = None
        try:
            request = json.loads(data)
            if "stop" in request:
                if self.leftovers is not None:
                    grace_s = float(request["grace_s"])
                    self.leftovers.stop(int(request["stop"]), request["start_ticks"], grace_s)
                return
            request_id = request["id"]
            pid = _start(request)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as exc:
            self.tell({"id": request_id, "error": str(exc) or type(exc).__name__})
            return
        # Before any reaping: the pid and the pidfd are surely this process's.
        ticks = start_ticks(pid)
        self.exit_files[pid] = (str(request["exit_file"]), ticks)
        if self.leftovers is not None:
            self.leftovers.started(pid, ticks, request["env"].get(TASK_MARKER_VARIABLE))
        reply = json.dumps({"id": request_id, "pid": pid, "start_ticks": ticks}).encode()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # e.g. out of file descriptors: nobody could watch it, end it
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            self.tell({"id": request_id, "error": f"cannot watch the started process: {exc}"})
            return
        try:
            if self.sock is not None:
                socket.send_fds(self.sock, [reply], [pidfd])
        except OSError:
            self.sock = None  # the daemon is gone: the task runs on, its status will be written
        finally:
            os.close(pidfd)

    def reap(self) -> None:
        """Record, then reap, every task that ended: until its status is in its file the task
        stays a zombie, so a restarted daemon always finds one or the other. Its exit is told
        once what it left running has been ended too (at once when it left nothing)."""
        leftovers = self.leftovers
        while True:
            try:
                ended = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                break
            if ended is None:
                break
            pid = ended.si_pid
            task = self.exit_files.pop(pid, None)
            if task is not None:
                path, ticks = task
                exited = ended.si_code == os.CLD_EXITED
                code = ended.si_status if exited else 128 + ended.si_status
                self._record(path, code)
                if leftovers is None:
                    self.tell({"exited": pid, "start_ticks": ticks, "code": code})
                else:
                    leftovers.main_ended(pid, code)  # told by step(), below
            elif leftovers is not None:
                leftovers.reaped(pid)  # something a task left behind, re-parented to us
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if leftovers is not None:
            for pid, ticks, code in leftovers.step():
                self.tell({"exited": pid, "start_ticks": ticks, "code": code})

    @staticmethod
    def _record(path: str, code: int) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, f"{code}\n".encode())
            finally:
                os.close(fd)
        except OSError:
            pass  # its folder was removed: the daemon hears the status from the message, or never

    def tell(self, message: dict[str, object]) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(json.dumps(message).encode())
        except OSError:
            self.sock = None


def serve(sock: socket.socket, idle_s: float, leftover_grace_s: float | None = None) -> None:
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    leftovers = None
    if leftover_grace_s is not None:
        leftovers = Leftovers(leftover_grace_s)
        # Orphans of the tasks come to the launcher, not to init: so it sees what a task left.
        if not become_child_subreaper():  # (Linux < 3.4) stops still end the whole tree
            print("launcher: not a child subreaper: leftovers that left a task go unseen", file=sys.stderr)
    launcher = Launcher(sock, leftovers)
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    busy_at, idle_said = time.monotonic(), False
    while launcher.sock is not None or launcher.busy:
        if launcher.busy:
            busy_at, idle_said = time.monotonic(), False
        elif not idle_said and time.monotonic() - busy_at >= idle_s:
            launcher.tell({"idle": True})
            idle_said = True
        due = leftovers.due_in() if leftovers is not None else None
        timeout = min(_REAP_EVERY_S, idle_s, _REAP_EVERY_S if due is None else due)
        for key, _ in selector.select(timeout=timeout):
            if key.fd == wake_r:
                _drain(wake_r)
                continue
            try:
                data = sock.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if data and launcher.sock is not None and not _hung_up(sock):
                launcher.answer(data)
                busy_at, idle_said = time.monotonic(), False
            else:  # the daemon closed its end, or died
                launcher.sock = None
                selector.unregister(sock)
        launcher.reap()


def _hung_up(sock: socket.socket) -> bool:
    """The daemon closed its end: what it sent before is no longer waited for, so not started."""
    poller = select.poll()
    poller.register(sock, select.POLLHUP)
    return any(events & select.POLLHUP for _, events in poller.poll(0))


def _drain(fd: int) -> None:
    with contextlib.suppress(BlockingIOError):
        while os.read(fd, 4096):
            pass


def main() -> None:
    # Its own session keeps a terminal's Ctrl-C away; SIGTERM ends it (its tasks run on, adopted
    # by init, and a restarted daemon finds them).
    fd = int(sys.argv[1])
    os.set_inheritable(fd, False)  # the tasks must not get the daemon's channel
    # Nor what the daemon's own parent let it inherit (e.g. a CI runner's pipe: a task holding
    # it would keep whoever reads that pipe waiting).
    for name in os.listdir("/proc/self/fd"):  # not closerange: with a huge nofile limit and no
        if int(name) > 2 and int(name) != fd:  # close_range() that is one close() per number
            with contextlib.suppress(OSError):
                os.close(int(name))
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    grace = sys.argv[3] if len(sys.argv) > 3 else "keep"
    serve(sock, float(sys.argv[2]), None if grace == "keep" else float(grace))


if __name__ == "__main__":
    main()
