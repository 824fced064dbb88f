"""The launcher: a small process of its own that creates task folders, starts task processes and
reaps them, recording each one's exit status in its task folder.

Why a process: in the daemon, each start cost ~12 system calls on worker threads (7 mkdirs, the
config file, the spawn, /proc), each of which gave the GIL away and had to win it back from the
event loop and the database writer; and each task needed a `sh` wrapper (one more fork and exec)
to record its exit status should the daemon be down when it ends. Here the work runs beside the
daemon, on another core, the task is spawned directly, and the daemon's part of a start is one
message out and one back, of an end one message in.

Run as `python -S -P -m runner.executors.host.launcher FD IDLE [GRACE]` (protocol.LauncherArgs),
FD being its end of a SOCK_SEQPACKET pair over which it speaks protocol.py; standard library only
(no site, no pydantic), so it starts in tens of milliseconds. It answers each StartRequest with
StartedReply (and the pidfd) or StartFailed, tells of each task's first output with Wrote (the
daemon follows its files only from then on) and of its end with Exited (with where its output
files end, so the daemon need not read them again when it has stored up to there), takes
StopRequests, and says Idle after IDLE seconds with no task and no request: the daemon then
closes its end if it has nothing in flight, and the launcher exits (an idle daemon holds no
launcher: ~12 MB less).

Run as `... FD IDLE GRACE`, it is a child subreaper and ends what a task leaves running once its
main process has ended: SIGTERM, GRACE seconds, SIGKILL (leftovers.py); with
GRACE `keep` (or absent) such processes are left alone, as the reference does.

Exit statuses are written as a shell reports them (`128+S` for signal S), the format the
daemon has always read. When the daemon goes away (closes its end, or dies) the launcher stops
taking requests but stays until its last task has ended and its status is written, so a
restarted daemon finds it; then it exits.
"""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import select
import selectors
import signal
import socket
import sys
import time

from runner.executors.folders import make_task_folders
from runner.executors.host.capture import OutputCapture, pipes
from runner.executors.host.leftovers import Leftovers, become_child_subreaper
from runner.executors.host.procfs import start_ticks
from runner.executors.host.protocol import (
    MAX_MESSAGE,
    BadMessage,
    Exited,
    Idle,
    LauncherArgs,
    StartedReply,
    StartFailed,
    StartRequest,
    TaskStart,
    Wrote,
    decode_request,
)
from runner.executors.host.spawn import spawn_in_new_session

_OUTPUT_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND
_REAP_EVERY_S = 1.0  # a missed SIGCHLD wake-up costs at most this much
# How long an ended task's end waits for output a full disk would not take (then it is told,
# and that output is not stored).
_HELD_AT_END_S = 60.0


def _start(request: TaskStart) -> tuple[int, OutputCapture | None]:
    """Folders, config file and the task process: its pid, and the capture of its output when it
    writes through pipes (`request.order`). OSError or ValueError on failure."""
    make_task_folders(request.work_dir, request.folders, request.config_file, request.config)
    os.chdir(request.cwd or request.work_dir)  # inherited by the spawn; paths are absolute
    stdout: str | int = request.stdout
    stderr: str | int = request.stderr
    capture = None
    write_ends: list[int] = []
    if request.order:
        out, err = pipes()
        write_ends = [out[1], err[1]]
        stdout, stderr = out[1], err[1]
        try:
            capture = OutputCapture(request.stdout, request.stderr, request.order, (out[0], err[0]))
        except OSError:
            for fd in (*out, *err):
                os.close(fd)
            raise

    def spawn(program: str, args: list[str]) -> int:
        return spawn_in_new_session(
            program,
            args,
            request.env,
            stdin=os.devnull,
            stdout=stdout,
            stderr=stderr,
            output_flags=_OUTPUT_FLAGS,
        )

    argv = request.argv
    try:
        try:
            return spawn(argv[0], argv), capture
        except OSError as exc:
            if exc.errno != errno.ENOEXEC:
                raise
            # A script without `#!`: a shell runs it as a shell script, so do the same (as execvp does).
            return spawn("/bin/sh", ["/bin/sh", *argv]), capture
    except BaseException:
        if capture is not None:
            capture.close()
        raise
    finally:
        for fd in write_ends:  # the task has its own copies; ours would keep the pipes open
            os.close(fd)


class Launcher:
    def __init__(
        self,
        sock: socket.socket,
        leftovers: Leftovers | None = None,
        selector: selectors.BaseSelector | None = None,
    ) -> None:
        self.sock: socket.socket | None = sock
        self.exit_files: dict[int, tuple[str, int | None]] = {}  # with the start ticks
        self.leftovers = leftovers
        self.selector = selector
        self.captures: dict[int, OutputCapture] = {}  # by task pid, while it runs
        self.held: set[OutputCapture] = set()  # with output a full disk did not take
        # Ended tasks whose exit is told once their held output is written (or the bound passes):
        # the daemon stores a task's output up to its end, and then no more.
        self.ending: dict[int, OutputCapture] = {}  # by pid, between the end and the tell
        self.deferred: dict[int, tuple[int | None, int, float]] = {}  # ticks, code, deadline

    @property
    def busy(self) -> bool:
        return (
            bool(self.exit_files)
            or bool(self.deferred)
            or (self.leftovers is not None and self.leftovers.busy)
        )

    def answer(self, data: bytes) -> None:
        try:
            request = decode_request(data)
        except BadMessage as exc:
            self.tell(StartFailed(exc.request_id, str(exc)))
            return
        if not isinstance(request, StartRequest):  # a StopRequest
            if self.leftovers is not None:
                self.leftovers.stop(request.pid, request.start_ticks, request.grace_s)
            return
        try:
            pid, capture = _start(request.task)
        except (OSError, ValueError, TypeError) as exc:
            self.tell(StartFailed(request.id, str(exc) or type(exc).__name__))
            return
        if capture is not None:
            self.captures[pid] = capture
            if self.selector is not None:
                for fd in capture.read_ends:
                    self.selector.register(fd, selectors.EVENT_READ, capture)
        # Before any reaping: the pid and the pidfd are surely this process's.
        ticks = start_ticks(pid)
        self.exit_files[pid] = (request.task.exit_file, ticks)
        if capture is not None:
            capture.owner = (pid, ticks)
        if self.leftovers is not None:
            self.leftovers.started(pid, ticks, request.task.marker)
        reply = StartedReply(request.id, pid, ticks).encode()
        try:
            pidfd = os.pidfd_open(pid)
        except OSError as exc:  # e.g. out of file descriptors: nobody could watch it, end it
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            self.tell(StartFailed(request.id, f"cannot watch the started process: {exc}"))
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
                if (capture := self.captures.pop(pid, None)) is not None:
                    self._read_last(capture)  # its last output is in its files before its end is told
                    self.ending[pid] = capture
                path, ticks = task
                exited = ended.si_code == os.CLD_EXITED
                code = ended.si_status if exited else 128 + ended.si_status
                self._record(path, code)
                if leftovers is None:
                    self._tell_exit(pid, ticks, code)
                else:
                    leftovers.main_ended(pid, code)  # told by step(), below
            elif leftovers is not None:
                leftovers.reaped(pid)  # something a task left behind, re-parented to us
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        if leftovers is not None:
            for pid, ticks, code in leftovers.step():
                self._tell_exit(pid, ticks, code)
        self._tell_deferred()

    def _tell_exit(self, pid: int, ticks: int | None, code: int) -> None:
        capture = self.ending.get(pid)
        if capture is not None:
            # What the last leftovers printed as they ended is in the files (and in the sizes
            # told) before the end is told.
            self._read_last(capture)
        if capture is not None and capture.holding:
            self.deferred[pid] = (ticks, code, time.monotonic() + _HELD_AT_END_S)
            return
        self.ending.pop(pid, None)
        self._tell_ended(pid, ticks, code, capture)

    def _tell_deferred(self) -> None:
        for pid, (ticks, code, deadline) in list(self.deferred.items()):
            capture = self.ending[pid]
            if capture.holding and time.monotonic() < deadline:
                continue
            self._read_last(capture)  # what waited in the pipe behind the held output
            del self.deferred[pid], self.ending[pid]
            self._tell_ended(pid, ticks, code, capture)

    def _tell_ended(self, pid: int, ticks: int | None, code: int, capture: OutputCapture | None) -> None:
        self.tell(Exited(pid, ticks, code, None if capture is None else capture.sizes))

    def _tell_first_output(self, capture: OutputCapture) -> None:
        owner = capture.owner
        if owner is not None and capture.first_output():
            self.tell(Wrote(*owner))

    def read(self, fd: int, capture: OutputCapture) -> None:
        if (not capture.read(fd) or capture.holds(fd)) and self.selector is not None:
            self.selector.unregister(fd)
        if capture.holds(fd):
            self.held.add(capture)
        self._tell_first_output(capture)

    def write_held(self) -> None:
        """Output held for a full disk: written once there is space, its pipes read again."""
        for capture in list(self.held):
            for fd in capture.retry():
                selector = self.selector
                if selector is not None and fd in capture.read_ends and fd not in selector.get_map():
                    selector.register(fd, selectors.EVENT_READ, capture)
            if not any(capture.holds(fd) for fd in capture.read_ends):
                self.held.discard(capture)
            self._tell_first_output(capture)

    def _read_last(self, capture: OutputCapture) -> None:
        """What the ended task's pipes hold; they stay watched while what it left holds them
        (and are not, while what was read from them waits for disk space)."""
        ends = capture.read_ends
        capture.drain()
        gone_or_held = set(ends) - set(capture.read_ends) | {fd for fd in ends if capture.holds(fd)}
        if self.selector is not None:
            registered = self.selector.get_map()
            for fd in gone_or_held:
                if fd in registered:
                    self.selector.unregister(fd)
        if capture.holding:
            self.held.add(capture)
        self._tell_first_output(capture)  # a task whose first output is read only now

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

    def tell(self, message: StartFailed | Wrote | Exited | Idle) -> None:
        if self.sock is None:
            return
        try:
            self.sock.send(message.encode())
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
    selector = selectors.DefaultSelector()
    launcher = Launcher(sock, leftovers, selector)
    selector.register(sock, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    busy_at, idle_said = time.monotonic(), False
    while launcher.sock is not None or launcher.busy:
        if launcher.busy:
            busy_at, idle_said = time.monotonic(), False
        elif not idle_said and time.monotonic() - busy_at >= idle_s:
            launcher.tell(Idle())
            idle_said = True
        due = leftovers.due_in() if leftovers is not None else None
        timeout = min(_REAP_EVERY_S, idle_s, _REAP_EVERY_S if due is None else due)
        for key, _ in selector.select(timeout=timeout):
            if isinstance(key.data, OutputCapture):
                launcher.read(key.fd, key.data)
                continue
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
        launcher.write_held()
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


def _allow_descriptors() -> None:
    """Each running task costs two pipes and three files here: 1,000 tasks need more than the
    1,024 descriptors a service manager's soft limit often allows. Raised up to the hard limit
    (tasks inherit it, as they would from a shell that raised it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> None:
    # Its own session keeps a terminal's Ctrl-C away; SIGTERM ends it (its tasks run on, adopted
    # by init, and a restarted daemon finds them).
    args = LauncherArgs.from_argv(sys.argv[1:])
    fd = args.fd
    os.set_inheritable(fd, False)  # the tasks must not get the daemon's channel
    # Nor what the daemon's own parent let it inherit (e.g. a CI runner's pipe: a task holding
    # it would keep whoever reads that pipe waiting).
    for name in os.listdir("/proc/self/fd"):  # not closerange: with a huge nofile limit and no
        if int(name) > 2 and int(name) != fd:  # close_range() that is one close() per number
            with contextlib.suppress(OSError):
                os.close(int(name))
    _allow_descriptors()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    serve(sock, args.idle_s, args.leftover_grace_s)


if __name__ == "__main__":
    main()
