"""The README's TensorBoard picture: the real TensorBoard on a run's logs, in headless Chromium.

    python benchmarks/tensorboard_screenshot.py RUN_DIR [--out docs/images/tensorboard.png]

Starts `tensorboard --logdir RUN_DIR/..` on a free loopback port, opens its Time Series
dashboard in Debian's Chromium (driven by Playwright), waits for the charts and the filter
images to draw, and saves a screenshot of the page.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

CHROMIUM = os.environ.get("MNIST_CNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run"]  # fmt: skip


def start_tensorboard(logdir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host",
           "127.0.0.1", "--port", "0", "--load_fast", "false"]  # fmt: skip
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())
        if found:
            return process, found.group(0)
        if process.poll() is not None:
            raise SystemExit(f"tensorboard exited: {log.read_text()}")
        time.sleep(0.2)
    process.terminate()
    raise SystemExit(f"tensorboard did not start: {log.read_text()}")


def screenshot(url: str, out: Path, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.goto(url + "#timeseries")
        page.wait_for_selector("canvas, svg path", timeout=60_000)  # the first chart
        page.wait_for_selector("img[src*='individualImage'], .image-container img",
                               timeout=60_000)  # fmt: skip
        time.sleep(3)  # the remaining charts and images finish drawing
        page.screenshot(path=str(out))
        browser.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/tensorboard.png"))
    parser.add_argument("--size", default="1400x1000", help="browser window, WxH")
    args = parser.parse_args()
    if not (args.run / "tensorboard").is_dir():
        raise SystemExit(f"{args.run}: no tensorboard/ folder (train with --tensorboard)")
    width, height = (int(v) for v in args.size.split("x"))
    process, url = start_tensorboard(args.run.parent, args.out.with_suffix(".log"))
    try:
        screenshot(url, args.out, width, height)
    finally:
        process.terminate()
        process.wait(15)
        args.out.with_suffix(".log").unlink(missing_ok=True)
    print(f"{args.out}: TensorBoard at {url} on {args.run}")


if __name__ == "__main__":
    main()
