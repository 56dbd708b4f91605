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
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": width, "height": height})
        page.set_default_timeout(10_000)
        page.goto(url + "#timeseries", wait_until="networkidle", timeout=120_000)
        try:  # the filters' image card
            page.wait_for_function("document.querySelector('img[src*=individualImage]')",
                                   timeout=30_000)  # fmt: skip
        except PlaywrightTimeout:
            print("no image card drew in 30 s; the screenshot is taken anyway", file=sys.stderr)
        _tidy(page, PlaywrightError)
        page.wait_for_load_state("networkidle")
        time.sleep(5)  # the charts finish drawing
        page.screenshot(path=str(out))
        browser.close()


def _tidy(page, error) -> None:
    """The settings pane closed, and the filters' and the losses' groups open. Best effort:
    TensorBoard's page changes between releases."""
    steps = [
        lambda: page.get_by_role("button", name=re.compile("close", re.I)).first.click(),
        lambda: page.get_by_text("layer1", exact=True).first.click(),  # collapsed groups
        lambda: page.get_by_text("loss", exact=True).first.click(),
    ]
    for step in steps:
        try:
            step()
        except error:
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/images/tensorboard.png"))
    parser.add_argument("--size", default="1500x1100", help="browser window, WxH")
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
