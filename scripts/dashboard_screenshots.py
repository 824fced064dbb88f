"""Take the README's screenshots of the dashboard: a daemon with a few jobs in every state, the
system's Chromium, and PNGs written to docs/.

    .venv/bin/python scripts/dashboard_screenshots.py [--out docs]

Writes dashboard-list.png (laptop width), dashboard-job.png (a running job: steps, progress, the
live log with stderr lines) and dashboard-phone.png (the list at phone width).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.browser_env import CHROMIUM  # noqa: E402
from tests.conftest import Api, api_for, running_server, shell  # noqa: E402
from tests.daemon_process import TEST_TOKEN  # noqa: E402

TRAIN = (
    "echo loading dataset imagenet-mini; echo found 12,000 images in 100 classes; "
    "i=1; while [ $i -le 60 ]; do "
    'echo "epoch $i/60 step $((i*50)) loss 0.$((900 - i*7)) lr 0.001"; '
    '[ $((i % 9)) -eq 0 ] && echo "warning: batch $i had 3 corrupt images, skipped" >&2; '
    "i=$((i+1)); sleep 0.03; done; "
    'mkdir -p "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out"; echo weights > "$NEMO_JOB_PERSISTENT_JOB_STORAGE_PATH/out/ckpt-60.pt"; '
    "echo checkpoint saved to out/ckpt-60.pt; exec sleep 600"
)


async def _jobs(api: Api, tmp: Path) -> None:
    await api.create_job([shell("tokenize", "echo tokenizing; echo 1.2M tokens")], name="tokenize-corpus")
    await api.create_job(
        [shell("prepare", "echo checking inputs; echo missing column 'label' >&2; exit 2")],
        name="preprocess-reviews",
        description="CSV to parquet",
    )
    await api.create_job([shell("evaluate", "echo accuracy 0.913")], name="eval-baseline")
    await api.create_job([shell("sweep", "exec sleep 600")], name="lr-sweep-3")
    await api.create_job([shell("export", "exec sleep 600")], name="export-onnx")
    await api.create_job(
        [shell("prepare", "echo fetching shards; echo 4 shards ready"), shell("train", TRAIN)],
        name="train-resnet50",
        description="ResNet-50 on imagenet-mini",
    )
    for name in ("tokenize-corpus", "preprocess-reviews", "eval-baseline"):
        await api.wait_job(name)
    await api.wait_job("lr-sweep-3", {"active"})
    await api.request("POST", "/jobs/lr-sweep-3/pause")
    await api.wait_job("export-onnx", {"active"})
    await api.request("POST", "/jobs/export-onnx/cancel")
    await api.wait_job("train-resnet50", {"active"})
    for _ in range(200):
        if any("checkpoint" in line for line in await api.logs("train-resnet50")):
            break
        await asyncio.sleep(0.05)
    await api.request(
        "PATCH", "/jobs/train-resnet50/status-details", json={"percentage_done": 63, "epoch": 38}
    )
    job = (await api.request("GET", "/jobs/train-resnet50"))[1]
    checkpoint = {
        "artifact_url": f"default/{job['fileset']}#out/ckpt-60.pt",
        "artifact_storage_type": "fileset",
    }
    status, body = await api.request("POST", "/jobs/train-resnet50/results/ckpt-60", json=checkpoint)
    assert status == 201, body
    await api.request("PATCH", "/jobs/lr-sweep-3/status-details", json={"percentage_done": 25})
    await api.request("PATCH", "/jobs/eval-baseline/status-details", json={"percentage_done": 100})
    for name in ("lr-sweep-3", "export-onnx"):
        await api.wait_job(name, {"paused", "cancelled"})


async def main(out: Path) -> None:
    from playwright.async_api import async_playwright

    with tempfile.TemporaryDirectory(prefix="localjobs-screens-") as tmp:
        async with running_server(Path(tmp)) as server, api_for(server) as api:
            await _jobs(api, Path(tmp))
            async with async_playwright() as playwright:
                browser = await playwright.chromium.launch(executable_path=CHROMIUM)
                try:
                    await _shoot(browser, server.base_url, out)
                finally:
                    await browser.close()
                await api.request("POST", "/jobs/train-resnet50/cancel")
                await api.request("POST", "/jobs/lr-sweep-3/cancel")


async def _shoot(browser: Any, base: str, out: Path) -> None:
    laptop = await browser.new_context(viewport={"width": 1280, "height": 600}, device_scale_factor=1)
    page = await laptop.new_page()
    await page.goto(f"{base}/?token={TEST_TOKEN}")
    await page.wait_for_selector('tr[data-job="train-resnet50"] .s-active')
    await page.wait_for_timeout(2500)  # the current steps and the failed step filled in
    await page.screenshot(path=str(out / "dashboard-list.png"))
    await page.click('tr[data-job="train-resnet50"] a')
    await page.wait_for_selector("#log .line")
    await page.wait_for_timeout(1500)
    await page.screenshot(path=str(out / "dashboard-job.png"), full_page=True)
    await laptop.close()
    phone = await browser.new_context(
        viewport={"width": 390, "height": 760}, device_scale_factor=2, is_mobile=True
    )
    page = await phone.new_page()
    await page.goto(f"{base}/?token={TEST_TOKEN}")
    await page.wait_for_selector('tr[data-job="train-resnet50"] .s-active')
    await page.wait_for_timeout(2500)
    await page.screenshot(path=str(out / "dashboard-phone.png"))
    await phone.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    asyncio.run(main(parser.parse_args().out))
