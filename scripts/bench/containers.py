"""The `docker` section: a `cpu` container step through the daemon against a bare `docker run`."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from scripts.bench.client import follow_lines, job_status, post_job, wait_job_polling
from scripts.bench.common import log, median, run_argv
from scripts.bench.daemon import AUTH_HEADERS, running_daemon

DOCKER_IMAGE = "localjobs-test:busybox"


def container_job(name: str, image: str) -> dict[str, Any]:
    return {
        "name": name,
        "source": "bench",
        "spec": {},
        "platform_spec": {
            "steps": [
                {
                    "name": "step",
                    "executor": {"provider": "cpu", "container": {"image": image, "command": ["true"]}},
                }
            ]
        },
    }


def docker_available() -> str | None:
    """None when `docker info` answers, else why not."""
    exe = shutil.which("docker")
    if exe is None:
        return "no `docker` CLI on PATH"
    try:
        proc = subprocess.run(
            [exe, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"`docker info` failed: {exc}"
    if proc.returncode != 0:
        return f"`docker info` failed: {proc.stderr.decode(errors='replace').strip()[:300]}"
    return None


async def daemon_container_once(
    session: aiohttp.ClientSession, base: str, workspace: str, name: str, image: str
) -> float:
    """POST a one-step `cpu` job running `true`; seconds until its follow stream ends (job finished)."""
    t0 = time.perf_counter()
    await post_job(session, base, workspace, container_job(name, image))
    async for _ in follow_lines(session, base, workspace, name, timeout_s=120):
        pass
    elapsed = time.perf_counter() - t0
    status = await job_status(session, base, workspace, name)
    if status != "completed":
        raise RuntimeError(f"container job {name} ended {status}")
    return elapsed


async def wait_containers_gone(job: str, timeout_s: float = 30.0) -> None:
    """The daemon removes a finished step's container after recording the outcome: let that finish
    (untimed) so it does not overlap the next measurement."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        proc = await asyncio.create_subprocess_exec(
            "docker",
            "ps",
            "-aq",
            "--filter",
            f"label=localjobs.job={job}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        if not out.strip():
            return
        await asyncio.sleep(0.05)
    log(f"container of job {job} still present after {timeout_s:.0f}s")


@dataclass
class DockerResult:
    daemon_s: list[float] = field(default_factory=list)
    poll_s: list[float] = field(default_factory=list)
    bare_s: list[float] = field(default_factory=list)
    opts_s: list[float] = field(default_factory=list)


async def docker_run(args: argparse.Namespace, run_no: int, tmp: Path) -> DockerResult:
    result = DockerResult()
    image = args.docker_image
    data_dir = tmp / f"docker{run_no}-data"
    mounts = [tmp / f"docker{run_no}-mnt" / d for d in ("task", "config", "job")]
    for d in mounts:
        d.mkdir(parents=True, exist_ok=True)
    bare = ["docker", "run", "--rm", image, "true"]
    # What the daemon asks the engine for (runner/executors/docker.py:_container_config), minus labels/env.
    with_opts = [
        "docker",
        "run",
        "--rm",
        "--init",
        "--network",
        "host",
        *(
            x
            for d, m in zip(mounts, ("task", "config", "job"), strict=True)
            for x in ("-v", f"{d}:/var/run/scratch/{m}")
        ),
        image,
        "true",
    ]
    workspace = "bench-docker"
    async with running_daemon(data_dir, tmp, f"docker{run_no}") as daemon:
        timeout = aiohttp.ClientTimeout(total=120)
        async with aiohttp.ClientSession(headers=AUTH_HEADERS, timeout=timeout) as session:
            base = daemon.base_url
            # Warm-up, untimed: the daemon loads its Docker client on the first container step.
            await daemon_container_once(session, base, workspace, "warm-0", image)
            await wait_containers_gone("warm-0")
            await run_argv(bare)
            await run_argv(with_opts)
            log(
                f"docker run {run_no}: {args.docker_reps} x (daemon, bare docker run, docker run with its options)"
            )
            for i in range(args.docker_reps):
                # Rotate the order so drift and ordering effects cancel out.
                order = ["daemon", "bare", "opts", "poll"]
                k = i % len(order)
                for kind in order[k:] + order[:k]:
                    if kind == "daemon":
                        name = f"ctr-{i}"
                        result.daemon_s.append(
                            await daemon_container_once(session, base, workspace, name, image)
                        )
                        await wait_containers_gone(name)
                    elif kind == "poll":
                        name = f"ctr-poll-{i}"
                        t0 = time.perf_counter()
                        await post_job(session, base, workspace, container_job(name, image))
                        t1 = await wait_job_polling(session, base, workspace, name, 0.01, 120)
                        result.poll_s.append(t1 - t0)
                        await wait_containers_gone(name)
                    elif kind == "bare":
                        result.bare_s.append(await run_argv(bare))
                    else:
                        result.opts_s.append(await run_argv(with_opts))
    log(
        f"docker run {run_no}: daemon {median(result.daemon_s) * 1000:.0f} ms, "
        f"bare {median(result.bare_s) * 1000:.0f} ms, with options {median(result.opts_s) * 1000:.0f} ms"
    )
    shutil.rmtree(data_dir, ignore_errors=True)
    return result
