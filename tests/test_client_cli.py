"""The `localjobs` client commands through their real entry point (a subprocess) against a real
daemon: exit codes, streaming, --json, finding the daemon, clear errors."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_process import DaemonProcess, clean_environment, localjobs_command
from tests.helpers import until_blocking

Result = subprocess.CompletedProcess[str]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[DaemonProcess]:
    with DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data") as process:
        process.start()
        yield process


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    # Only the data dir: the URL and token must be found there.
    return clean_environment({"LOCALJOBS_DATA_DIR": str(data_dir), "NO_COLOR": "1", **extra})


def cli(data_dir: Path, *args: str, timeout_s: float = 60, **extra: str) -> Result:
    return subprocess.run(
        [*localjobs_command(), *args],
        env=_env(data_dir, **extra),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def _data(daemon: DaemonProcess) -> Path:
    assert daemon.data_dir is not None
    return daemon.data_dir


def test_run_completed_streams_output_and_exits_0(daemon: DaemonProcess) -> None:
    result = cli(
        _data(daemon), "run", "--name", "ok-job", "--", "sh", "-c", "echo one; echo two >&2; echo three"
    )
    assert result.returncode == 0, result
    assert result.stdout == "one\nthree\n"
    assert "two\n" in result.stderr and "[stderr]" not in result.stderr
    assert "job ok-job completed in" in result.stderr


def test_run_exits_with_the_failed_steps_exit_code(daemon: DaemonProcess) -> None:
    result = cli(_data(daemon), "run", "--", "sh", "-c", "echo failing >&2; exit 3")
    assert result.returncode == 3, result
    assert "failing" in result.stderr
    assert "error in" in result.stderr and "exit" in result.stderr and "code 3" in result.stderr


def test_a_cancelled_job_exits_75_for_run_and_wait(daemon: DaemonProcess) -> None:
    data = _data(daemon)
    detached = cli(data, "run", "--detach", "--name", "long-job", "--", "sleep", "30")
    assert detached.returncode == 0 and detached.stdout.strip() == "long-job", detached
    attached = subprocess.Popen(
        [*localjobs_command(), "wait", "long-job"],
        env=_env(data),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    until_blocking(lambda: _job(data, "long-job")["status"] == "active", what="long-job active")
    cancel = cli(data, "cancel", "long-job")
    assert cancel.returncode == 0, cancel
    out, err = attached.communicate(timeout=30)
    assert attached.returncode == 75, (out, err)
    assert "cancelled" in err
    assert cli(data, "wait", "long-job").returncode == 75


def test_ctrl_c_without_a_terminal_cancels_the_job(daemon: DaemonProcess) -> None:
    data = _data(daemon)
    proc = subprocess.Popen(
        [*localjobs_command(), "run", "--name", "interrupted", "--", "sh", "-c", "echo started; sleep 30"],
        env=_env(data),
        # As from a terminal: a shell's background job (CI scripts, `nohup`) starts with SIGINT
        # ignored, and Python keeps an ignored SIGINT ignored, so no Ctrl-C would reach it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    # The job's first line has reached the client's stdout: it is following the job now.
    assert proc.stdout.readline() == "started\n"
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=90)  # cancel: SIGTERM, the step's end, the stream's end
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(
            f"client still running 90 s after SIGINT: {err!r}; job {_job(data, 'interrupted')}"
        ) from None
    assert proc.returncode == 75, (out, err)
    assert "cancelling interrupted" in err
    # Following goes on after the last line shown: the log is not printed a second time.
    assert "started" not in out, out
    assert _job(data, "interrupted")["status"] == "cancelled"


def test_logs_follow_ends_when_the_job_ends(daemon: DaemonProcess) -> None:
    data = _data(daemon)
    script = "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done"
    assert cli(data, "run", "--detach", "--name", "slow-printer", "--", "sh", "-c", script).returncode == 0
    started = time.monotonic()
    follow = cli(data, "logs", "-f", "slow-printer")
    assert follow.returncode == 0, follow
    assert follow.stdout.splitlines() == [f"line {i}" for i in range(1, 6)]
    assert time.monotonic() - started < 30
    assert _job(data, "slow-printer")["status"] == "completed"
    tail = cli(data, "logs", "--tail", "2", "slow-printer")
    assert tail.stdout.splitlines() == ["line 4", "line 5"]
    follow_tail = cli(data, "logs", "-f", "--tail", "1", "slow-printer")
    assert follow_tail.stdout.splitlines() == ["line 5"]
    as_json = cli(data, "logs", "--json", "slow-printer")
    lines = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [line["message"] for line in lines] == [f"line {i}" for i in range(1, 6)]


def test_json_output_of_reading_commands(daemon: DaemonProcess) -> None:
    data = _data(daemon)
    assert cli(data, "run", "--name", "json-job", "--", "true").returncode == 0
    listed = json.loads(cli(data, "ls", "--json").stdout)
    assert [job["name"] for job in listed] == ["json-job"]
    tree = json.loads(cli(data, "status", "--json", "json-job").stdout)
    assert tree["status"] == "completed" and tree["steps"][0]["name"] == "main"
    waited = cli(data, "wait", "--json", "json-job")
    assert waited.returncode == 0 and json.loads(waited.stdout)["status"] == "completed"
    table = cli(data, "ls")
    assert "json-job" in table.stdout and "completed" in table.stdout and "NAME" in table.stdout
    status = cli(data, "status", "json-job")
    assert "step main completed" in status.stdout


def test_ls_shows_the_step_a_job_failed_in_and_a_completed_job_as_done(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    data = _data(daemon)
    job_file = tmp_path / "two.json"
    steps = [
        {"name": "prepare", "executor": {"provider": "subprocess", "command": ["true"]}},
        {"name": "fails-here", "executor": {"provider": "subprocess", "command": ["sh", "-c", "exit 3"]}},
    ]
    job_file.write_text(json.dumps({"name": "two-steps", "platform_spec": {"steps": steps}}))
    assert cli(data, "run", str(job_file)).returncode == 3
    assert cli(data, "run", "--name", "done-job", "--", "true").returncode == 0
    rows = {line.split()[0]: line for line in cli(data, "ls").stdout.splitlines() if line.strip()}
    assert "fails-here" in rows["two-steps"], rows
    assert "100%" in rows["done-job"], rows


def test_wait_timeout_exits_124(daemon: DaemonProcess) -> None:
    data = _data(daemon)
    assert cli(data, "run", "-d", "--name", "sleeper", "--", "sleep", "20").returncode == 0
    result = cli(data, "wait", "--timeout", "0.5", "sleeper")
    assert result.returncode == 124, result
    assert cli(data, "cancel", "sleeper").returncode == 0


def test_a_refused_job_prints_the_fields_and_exits_65(daemon: DaemonProcess) -> None:
    result = cli(_data(daemon), "run", "--name", "Not A Name", "--", "true")
    assert result.returncode == 65, result
    assert "refused (422)" in result.stderr and "name" in result.stderr


def test_a_command_runs_in_the_directory_it_is_run_from(daemon: DaemonProcess, tmp_path: Path) -> None:
    """As task-spooler or Slurm run a job where it was submitted: `python train.py` and
    `./nightly.sh` are found; -C picks another directory, --in-task-folder the task's own."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "train.py").write_text("import os, sys; print(os.getcwd(), *sys.argv[1:])\n")
    script = project / "nightly.sh"
    script.write_text("#!/bin/sh\necho nightly in $(pwd)\n")
    script.chmod(0o755)

    def run_here(*args: str) -> Result:
        return subprocess.run(
            [*localjobs_command(), "run", *args],
            cwd=project,
            env=_env(_data(daemon)),
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )

    # `python` is the daemon's own interpreter, as for any host step.
    trained = run_here("--", "python", "train.py", "--epochs", "3")
    assert trained.returncode == 0 and trained.stdout == f"{project} --epochs 3\n", trained
    nightly = run_here("--", "./nightly.sh")
    assert nightly.returncode == 0 and nightly.stdout == f"nightly in {project}\n", nightly
    elsewhere = run_here("-C", str(tmp_path), "--", "pwd")
    assert elsewhere.returncode == 0 and elsewhere.stdout == f"{tmp_path}\n", elsewhere
    own = run_here("--in-task-folder", "--", "pwd")
    assert own.returncode == 0 and own.stdout.startswith(str(_data(daemon))), own
    refused = run_here("-C", str(tmp_path), "--in-task-folder", "--", "pwd")
    assert refused.returncode == 2 and "--workdir" in refused.stderr, refused
    missing = run_here("--", "no-such-program")  # still the start failure it was, not env's 127
    assert missing.returncode == 70 and "executable not found: no-such-program" in missing.stderr, missing
    # Set over the API, the variable must name a directory: a clear start failure otherwise.
    relative = run_here("-e", "LOCALJOBS_WORKDIR=project", "--", "pwd")
    assert relative.returncode == 70 and "not an absolute path" in relative.stderr, relative


def test_a_missing_job_file_is_an_error_not_a_command(daemon: DaemonProcess, tmp_path: Path) -> None:
    result = cli(_data(daemon), "run", str(tmp_path / "typo.yaml"))
    assert result.returncode == 2 and "no such job file" in result.stderr, result
    assert "typo" not in cli(_data(daemon), "ls", "--all").stdout  # nothing was submitted


def test_job_files_yaml_and_json(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = _data(daemon)
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text(
        "name: from-yaml\n"
        "platform_spec:\n"
        "  steps:\n"
        "    - name: hello\n"
        "      executor: {provider: subprocess, command: [sh, -c, 'echo from yaml; exit 4']}\n"
    )
    result = cli(data, "run", str(yaml_file))
    assert result.returncode == 4 and result.stdout == "from yaml\n", result
    json_file = tmp_path / "job.json"
    body = {
        "platform_spec": {
            "steps": [{"name": "hi", "executor": {"provider": "subprocess", "command": ["echo", "j"]}}]
        }
    }
    json_file.write_text(json.dumps(body))
    result = cli(data, "run", str(json_file))
    assert result.returncode == 0 and result.stdout == "j\n", result


def test_secrets_and_results(daemon: DaemonProcess, tmp_path: Path) -> None:
    data = _data(daemon)
    setter = subprocess.run(
        [*localjobs_command(), "secrets", "set", "api-key"],
        input="hunter2-value\n",
        env=_env(data),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert setter.returncode == 0, setter
    listed = json.loads(cli(data, "secrets", "ls", "--json").stdout)
    assert [s["name"] for s in listed] == ["api-key"] and "hunter2" not in json.dumps(listed)
    script = (
        'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out" && echo weights > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/model.bin"'
        ' && curl -s -o /dev/null -w "%{http_code}" -XPOST'
        ' "$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/results/model"'
        ' -H "Authorization: Bearer $(cat "$NMP_WORKLOAD_IDENTITY_TOKEN_FILE")" -H "content-type: application/json"'
        ' -d "{\\"artifact_url\\": \\"$NEMO_JOB_WORKSPACE/$NEMO_JOB_FILESET#out/model.bin\\", \\"artifact_storage_type\\": \\"fileset\\"}"'
    )
    result = cli(data, "run", "--name", "with-result", "--", "sh", "-c", script)
    assert result.returncode == 0 and result.stdout.strip() == "201", result
    listed_results = json.loads(cli(data, "results", "--json", "with-result").stdout)
    assert [r["name"] for r in listed_results] == ["model"]
    out = tmp_path / "downloaded.bin"
    got = cli(data, "results", "with-result", "get", "model", "-o", str(out))
    assert got.returncode == 0, got
    assert out.read_text() == "weights\n"
    assert cli(data, "secrets", "rm", "api-key").returncode == 0
    assert json.loads(cli(data, "secrets", "ls", "--json").stdout) == []


def test_no_daemon_is_a_clear_error_with_its_own_exit_code(tmp_path: Path) -> None:
    result = cli(tmp_path / "nothing-here", "ls")
    assert result.returncode == 69, result
    assert "no localjobs daemon found" in result.stderr and str(tmp_path / "nothing-here") in result.stderr
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    closed = cli(tmp_path, "ls", LOCALJOBS_URL=f"http://127.0.0.1:{port}")
    assert closed.returncode == 69 and "does not answer" in closed.stderr, closed


def test_a_client_started_with_the_daemon_waits_for_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with DaemonProcess(tmp_path / "logs", data_dir=data) as process:
        process.launch()  # not waiting for its ready line: the client does
        result = cli(data, "run", "--", "echo", "hi")
        assert result.returncode == 0, (result, str(process))
        assert result.stdout == "hi\n"


def test_a_wrong_token_says_how_to_pass_one(daemon: DaemonProcess) -> None:
    result = cli(_data(daemon), "ls", LOCALJOBS_TOKEN="not-the-token-at-all")
    assert result.returncode == 65 and "401" in result.stderr and "--token" in result.stderr


def test_client_commands_do_not_import_the_daemon() -> None:
    # Not a timing assertion (this machine is noisy): the client must not import the daemon.
    code = "import sys, web.cli; print(sorted(m for m in ('aiohttp', 'aiosqlite', 'runner.daemon') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _job(data: Path, name: str) -> dict[str, Any]:
    result = cli(data, "status", "--json", name)
    return json.loads(result.stdout) if result.returncode == 0 else {"status": "?"}  # type: ignore[no-any-return]


def test_an_explicit_url_gets_no_token_from_the_data_dir(daemon: DaemonProcess) -> None:
    result = cli(_data(daemon), "ls", LOCALJOBS_URL=daemon.base_url)
    assert result.returncode == 65 and "401" in result.stderr, result  # the dir's token stayed home


def test_a_stale_lock_of_a_killed_daemon_is_not_trusted(daemon: DaemonProcess) -> None:
    daemon.kill()  # SIGKILL: the lock file still names its pid and URL
    result = cli(_data(daemon), "ls")
    assert result.returncode == 69 and "no daemon runs there now" in result.stderr, result


def test_gpus_shows_holders_and_why_steps_wait(tmp_path: Path) -> None:
    env = {"LOCALJOBS_GPUS": "0", "LOCALJOBS_GPU_CONTAINERS_AS_SUBPROCESS": "true"}
    with DaemonProcess(tmp_path / "logs", data_dir=tmp_path / "data", env=env) as process:
        process.start()
        data = tmp_path / "data"
        gpu_step = {
            "name": "train",
            "executor": {
                "provider": "gpu",
                "container": {"image": "x", "entrypoint": ["sh", "-c"], "command": ["sleep 60"]},
                "resources": {"num_gpus": 1},
            },
        }
        job = tmp_path / "job.json"
        job.write_text(json.dumps({"platform_spec": {"steps": [gpu_step]}}))
        assert cli(data, "run", "--name", "holder", "--detach", str(job)).returncode == 0
        deadline = time.monotonic() + 60
        while json.loads(cli(data, "status", "holder", "--json").stdout)["status"] != "active":
            assert time.monotonic() < deadline, "holder never became active"
            time.sleep(0.2)
        assert cli(data, "run", "--name", "waiter", "--detach", str(job)).returncode == 0
        shown = cli(data, "gpus")
        assert shown.returncode == 0, shown.stderr
        assert "GPU-declared-0" in shown.stdout and "default/holder/train" in shown.stdout
        assert "default/waiter/train: waiting for 1 GPU; 0 free" in shown.stdout
        usage = json.loads(cli(data, "gpus", "--json").stdout)
        assert (usage["total"], usage["free"], len(usage["waiting"])) == (1, 0, 1)
        # `ls` shows the GPUs a job holds, and why a waiting one waits.
        listed = cli(data, "ls")
        assert listed.returncode == 0, listed.stderr
        rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.split()}
        assert "GPUS" in listed.stdout
        assert rows["holder"].rstrip().endswith(" 0"), listed.stdout
        assert "waiter: waiting for 1 GPU; 0 free" in listed.stdout
        shown = cli(data, "capacity")
        assert shown.returncode == 0, shown.stderr
        assert "default/holder/train holds GPUs 0" in shown.stdout
        assert "default/waiter/train: waiting for 1 GPU; 0 free" in shown.stdout
        assert json.loads(cli(data, "capacity", "--json").stdout)["gpus"] == {
            "total": 1,
            "in_use": 1,
            "free": 0,
        }
        for name in ("holder", "waiter"):
            cli(data, "cancel", name)


def test_run_on_a_terminal_shows_a_progress_bar(daemon: DaemonProcess, tmp_path: Path) -> None:
    """stderr on a pseudo-terminal: `run` draws the job's `percentage_done` as a bar."""
    import os
    import pty
    import select

    report = (
        'curl -s -X PATCH -H "Authorization: Bearer $(cat "$NMP_WORKLOAD_IDENTITY_TOKEN_FILE")" '
        "-H 'content-type: application/json' "
        '"$NMP_BASE_URL/apis/jobs/v2/workspaces/$NEMO_JOB_WORKSPACE/jobs/$NEMO_JOB_ID/status-details" '
        "-d '{\"percentage_done\": 40}' >/dev/null; sleep 4; echo finished"
    )
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [*localjobs_command(), "run", "--name", "bar", "--", "sh", "-c", report],
        env=_env(_data(daemon), TERM="xterm", COLUMNS="100"),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
    )
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the client is done
                break
            if not chunk:
                break
            seen += chunk
        elif proc.poll() is not None:
            break
    os.close(leader)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, seen
    assert out == b"finished\n", seen
    text = seen.decode(errors="replace")
    assert "bar" in text and "40%" in text and "━" in text, text  # rich's bar, at the reported 40 %
