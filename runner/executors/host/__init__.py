"""The host executor: steps run as processes on this machine, one task each.

Its rooms, one job each:

- executor.py: `SubprocessExecutor`. How a task is started (by the launcher, or, when the start
  is too large for one message, by the daemon itself under an `sh` wrapper) and found again
  after a restart (adopted, or already ended).
- workloads.py: a started task, one class per way of learning its end: `LaunchedTask` (the
  launcher tells), `WatchedTask` (the exit watcher sees it through a pidfd), `EndedTask` (it
  ended while no daemon ran).
- launcher.py: the launcher program, a process of its own (`python -S -P -m` this package's
  `launcher`): starts tasks, reaps them, writes their exit status, outlives a killed daemon.
- protocol.py: what the launcher and the daemon say to each other (command line, messages).
- launcher_client.py: the daemon's side: starts the launcher, sends requests, matches answers.
- spawn.py: posix_spawn of a task in a new session, with the GIL released.
- exits.py: the exit watcher thread (pidfds) and the exit-status file.
- leftovers.py: in the launcher, ending what a task leaves running.
- strays.py: in the daemon, the same for what no launcher sees (found by the marker).
- procfs.py: small reads of /proc.

The launcher runs with no site packages: launcher.py and what it imports (protocol, leftovers,
procfs, spawn, runner/executors/folders.py, and every package's __init__ on the way) import the
standard library only, and this file imports nothing (tests/test_architecture.py checks it).
"""
