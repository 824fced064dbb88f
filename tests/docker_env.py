"""Whether container tests can run, and the locally built image they use."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.helpers import require

TEST_IMAGE = os.environ.get("LOCALJOBS_TEST_IMAGE", "localjobs-test:busybox")


def docker_ready() -> str | None:
    """None when an engine answers and the test image exists; otherwise why not."""
    if shutil.which("docker") is None:
        return "no docker CLI"
    try:
        probe = subprocess.run(
            ["docker", "image", "inspect", TEST_IMAGE], capture_output=True, timeout=20, check=False
        )
    except subprocess.TimeoutExpired:
        return "docker did not answer within 20 s"
    if probe.returncode != 0:
        return f"engine or image {TEST_IMAGE} missing: {probe.stderr.decode(errors='replace').strip()}"
    return None


def require_docker() -> None:
    """Skip only when explicitly allowed (LOCALJOBS_SKIP_DOCKER=1); otherwise a missing engine fails."""
    require(
        docker_ready(),
        switch="LOCALJOBS_SKIP_DOCKER",
        what="container",
        needs="a Docker engine (run scripts/setup_docker.sh)",
    )


def containers_with_label(label: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={label}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.split()


def describe_containers_with_label(label: str) -> list[str]:
    """Each matching container as `id name state job/step owner`, so a leak report says what
    leaked and whose it is."""
    fmt = (
        '{{.ID}} {{.Names}} {{.State}} {{.Label "localjobs.job"}}/{{.Label "localjobs.step"}}'
        ' {{.Label "localjobs.owner"}}'
    )
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={label}", "--format", fmt],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return out.stdout.splitlines()
