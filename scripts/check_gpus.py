"""A check on a machine with NVIDIA GPUs: real NVML discovery, and steps seeing exactly their GPUs.

    python scripts/check_gpus.py            # from the checkout, with the venv's python

What it does, against a daemon of its own (a temporary data dir, a free port, NVML discovery:
no LOCALJOBS_GPUS):
1. `GET /apis/localjobs/v1/gpus` lists the GPUs that `nvidia-smi -L` lists, with their UUIDs.
2. A `gpu` step run as a host process (LOCALJOBS_GPU_CONTAINERS_AS_SUBPROCESS=true) asking for
   one GPU sees exactly the one in its task's `status_details.gpus`, as CUDA sees devices
   (the driver API through ctypes: `nvidia-smi` and NVML ignore CUDA_VISIBLE_DEVICES).
3. With a Docker engine that has the NVIDIA runtime (`--container`, and `--image` for an image
   with `nvidia-smi`, default nvidia/cuda:12.4.1-base-ubuntu22.04), a `gpu` container step sees
   exactly its GPU too.
4. With two GPUs or more, two one-GPU steps at once get different GPUs.

Exit status: 0 every check passed; 1 a check failed (it says which); 77 nothing to check (no
NVML, or no GPU: the normal case on a machine without them, e.g. this project's CI).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "gpu-check-token-0123456789"
SKIP = 77


class CheckFailed(Exception):
    pass


def _nvidia_smi_uuids() -> list[str] | None:
    if shutil.which("nvidia-smi") is None:
        return None
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    if listed.returncode != 0:
        return None
    return [line.split("UUID: ")[1].rstrip(")") for line in listed.stdout.splitlines() if "UUID: " in line]


class Daemon:
    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.url = ""
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Daemon:
        env = {k: v for k, v in os.environ.items() if not k.startswith("LOCALJOBS_")}
        env.update(LOCALJOBS_TOKEN=TOKEN, LOCALJOBS_GPU_CONTAINERS_AS_SUBPROCESS="true")
        log = (self.data_dir / "daemon.log").open("wb")
        command = [
            sys.executable,
            "-m",
            "web.cli",
            "serve",
            "--port",
            "0",
            "--data-dir",
            str(self.data_dir / "d"),
        ]
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for line in (self.data_dir / "daemon.log").read_text(errors="replace").splitlines():
                if line.startswith("localjobs ready "):
                    self.url = line.split()[2]
                    return self
            if self.process.poll() is not None:
                break
            time.sleep(0.1)
        raise CheckFailed(f"the daemon did not start: {(self.data_dir / 'daemon.log').read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", f"Bearer {TOKEN}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"null")

    def run_job(self, name: str, step: dict[str, Any], timeout_s: float = 300) -> dict[str, Any]:
        jobs = "/apis/jobs/v2/workspaces/default/jobs"
        self.call(
            "POST", jobs, {"name": name, "source": "check", "spec": {}, "platform_spec": {"steps": [step]}}
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = self.call("GET", f"{jobs}/{name}")
            if job["status"] in ("completed", "error", "cancelled"):
                return job  # type: ignore[no-any-return]
            time.sleep(0.2)
        raise CheckFailed(f"job {name} did not finish within {timeout_s} s")

    def seen_and_held(self, name: str) -> tuple[list[str], list[str]]:
        jobs = "/apis/jobs/v2/workspaces/default/jobs"
        logs = self.call("GET", f"{jobs}/{name}/logs?page_size=1000")
        seen = [
            line["message"].split("UUID: ")[1].rstrip(")")
            for line in logs["data"]
            if "UUID: " in line["message"]
        ]
        tasks = self.call("GET", f"{jobs}/{name}/steps/smi/tasks")
        held = tasks["data"][0]["status_details"].get("gpus", [])
        return seen, held


# Prints "UUID: GPU-..." for every device the CUDA driver API shows this process, which honours
# CUDA_VISIBLE_DEVICES as every CUDA program does.
_CUDA_PROBE = r"""
import ctypes
cuda = ctypes.CDLL("libcuda.so.1")
assert cuda.cuInit(0) == 0, "cuInit failed"
count = ctypes.c_int()
assert cuda.cuDeviceGetCount(ctypes.byref(count)) == 0
for ordinal in range(count.value):
    device, raw = ctypes.c_int(), (ctypes.c_ubyte * 16)()
    assert cuda.cuDeviceGet(ctypes.byref(device), ordinal) == 0
    assert cuda.cuDeviceGetUuid(raw, device) == 0
    h = bytes(raw).hex()
    print(f"UUID: GPU-{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
"""


def _host_probe() -> str:
    return f"{sys.executable} -c '{_CUDA_PROBE}'"


def _step(image: str | None, script: str) -> dict[str, Any]:
    container = {"image": image or "host-process", "entrypoint": ["sh", "-c"], "command": [script]}
    return {
        "name": "smi",
        "executor": {"provider": "gpu", "container": container, "resources": {"num_gpus": 1}},
    }


def check(args: argparse.Namespace) -> None:
    expected = _nvidia_smi_uuids()
    if not expected:
        print("nothing to check: no nvidia-smi or no GPU on this machine")
        raise SystemExit(SKIP)
    with tempfile.TemporaryDirectory(prefix="localjobs-gpu-check-") as tmp, Daemon(Path(tmp)) as daemon:
        listed = daemon.call("GET", "/apis/localjobs/v1/gpus")
        found = [g["uuid"] for g in listed["gpus"]]
        if sorted(found) != sorted(expected):
            raise CheckFailed(f"NVML discovery: the daemon lists {found}, nvidia-smi {expected}")
        print(f"ok: NVML discovery found {len(found)} GPU(s): {', '.join(found)}")

        job = daemon.run_job("host-step", _step(None, _host_probe()))
        seen, held = daemon.seen_and_held("host-step")
        if job["status"] != "completed" or len(held) != 1 or seen != held:
            raise CheckFailed(f"host step: status {job['status']}, held {held}, nvidia-smi inside saw {seen}")
        print(f"ok: a host step holding {held[0]} sees exactly it")

        if args.container:
            job = daemon.run_job("container-step", _step(args.image, "nvidia-smi -L"), timeout_s=900)
            seen, held = daemon.seen_and_held("container-step")
            if job["status"] != "completed" or len(held) != 1 or seen != held:
                raise CheckFailed(f"container step: status {job['status']}, held {held}, saw {seen}")
            print(f"ok: a container step holding {held[0]} sees exactly it")

        if len(expected) >= 2:
            script = f"{_host_probe()}; sleep 5"
            jobs = "/apis/jobs/v2/workspaces/default/jobs"
            for name in ("pair-a", "pair-b"):
                body = {
                    "name": name,
                    "source": "check",
                    "spec": {},
                    "platform_spec": {"steps": [_step(None, script)]},
                }
                daemon.call("POST", jobs, body)
            holders = []
            for name in ("pair-a", "pair-b"):
                deadline = time.monotonic() + 120
                while daemon.call("GET", f"{jobs}/{name}")["status"] not in (
                    "completed",
                    "error",
                    "cancelled",
                ):
                    if time.monotonic() > deadline:
                        raise CheckFailed(f"{name} did not finish")
                    time.sleep(0.2)
                holders.append(daemon.seen_and_held(name)[1])
            if len(holders[0]) != 1 or holders[0] == holders[1]:
                raise CheckFailed(f"two one-GPU steps at once got {holders}")
            print(f"ok: two steps at once got different GPUs: {holders[0][0]}, {holders[1][0]}")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--container", action="store_true", help="also check a container step (NVIDIA runtime)"
    )
    parser.add_argument(
        "--image", default="nvidia/cuda:12.4.1-base-ubuntu22.04", help="an image with nvidia-smi"
    )
    args = parser.parse_args()
    try:
        check(args)
    except CheckFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print("all GPU checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
