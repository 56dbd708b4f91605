"""The drawing page end to end: Debian's Chromium, headless, drawing with pointer events."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = os.environ.get("MNIST_CNN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is needed at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, served):
    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    page.goto(served.url + "/")
    page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
    yield page
    assert not errors, errors
    context.close()


def stroke(page, points: list[tuple[float, float]]) -> None:
    """Draw one stroke through ``points`` given in 0..1 of the drawing pad."""
    box = page.locator("#pad").bounding_box()
    xy = [(box["x"] + x * box["width"], box["y"] + y * box["height"]) for x, y in points]
    page.mouse.move(*xy[0])
    page.mouse.down()
    for x, y in xy[1:]:
        page.mouse.move(x, y, steps=3)
    page.mouse.up()


def one(page):
    stroke(page, [(0.5, 0.15), (0.5, 0.85)])


def zero(page):
    stroke(page, [(0.5 + 0.22 * math.sin(t / 24 * 2 * math.pi),
                   0.5 - 0.33 * math.cos(t / 24 * 2 * math.pi)) for t in range(25)])  # fmt: skip


def seven(page):
    stroke(page, [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)])


def settled(page) -> None:
    """Wait until no prediction is pending: debounce over, every request answered."""
    page.wait_for_timeout(300)  # longer than the page's debounce
    page.wait_for_function("document.body.dataset.busy === '0'", timeout=15_000)


def predicted(page) -> str:
    page.wait_for_function("document.body.dataset.predicted !== undefined", timeout=15_000)
    settled(page)
    return page.evaluate("document.body.dataset.predicted")


@pytest.mark.parametrize(("draw", "digit"), [(one, "1"), (zero, "0"), (seven, "7")])
def test_drawing_a_digit_shows_the_right_answer(page, draw, digit, tmp_path):
    draw(page)
    assert predicted(page) == digit
    assert page.locator("#label").inner_text() == digit
    assert "%" in page.locator("#confidence").inner_text()
    top = page.locator("#bars li.top .name").inner_text()
    assert top == digit
    page.wait_for_timeout(400)  # the bars grow with a 0.18 s transition
    fill = page.locator("#bars li.top .fill").bounding_box()["width"]
    track = page.locator("#bars li.top .track").bounding_box()["width"]
    assert fill > 0.5 * track  # the bar is drawn as long as its probability
    # the 28x28 the model saw is drawn: some bright pixels on black
    bright = page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0 && v > 200).length"
    )
    assert bright > 20
    # inside the network: all 32 maps of layer1, 16 of layer2 and 16 of layer3
    page.wait_for_function("document.querySelectorAll('#stages canvas').length === 64")
    assert page.locator("#inside").is_visible()
    lit = page.evaluate(
        "Array.from(document.querySelectorAll('#stages canvas')).filter(c => Array.from("
        "c.getContext('2d').getImageData(0, 0, c.width, c.height).data).some((v, i) => "
        "i % 4 === 0 && v > 100)).length"
    )
    assert lit > 20  # the maps are drawn, not blank
    shot = Path(os.environ.get("MNIST_CNN_SCREENSHOTS", tmp_path)) / f"page-{digit}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_undo_clear_and_keyboard(page):
    one(page)
    assert predicted(page) == "1"
    stroke(page, [(0.15, 0.5), (0.85, 0.5)])  # a cross bar: not a 1 any more
    assert predicted(page) != "1"
    page.locator("#undo").click()
    assert predicted(page) == "1"
    page.locator("#clear").click()
    assert page.locator("#label").inner_text() == "?"
    assert page.evaluate("document.body.dataset.predicted") is None
    zero(page)
    assert predicted(page) == "0"
    page.keyboard.press("Escape")
    assert page.locator("#label").inner_text() == "?"
    # every control is reachable with Tab
    focused = set()
    for _ in range(10):  # every control once round, the two mode buttons included
        page.keyboard.press("Tab")
        focused.add(page.evaluate("document.activeElement.id || document.activeElement.htmlFor"))
    assert {"pad", "undo", "clear"} <= focused


def test_clearing_while_an_answer_is_on_its_way_leaves_no_answer(page):
    for _ in range(3):
        one(page)
        page.keyboard.press("Escape")  # before the drawing's answer can arrive
        settled(page)
        assert page.locator("#label").inner_text() == "?"
        assert page.evaluate("document.body.dataset.predicted") is None


def test_fits_a_phone_screen(browser, served, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True,
                                  is_mobile=True, device_scale_factor=2)  # fmt: skip
    page = context.new_page()
    page.goto(served.url + "/")
    page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] >= 250 and pad["x"] >= 0 and pad["x"] + pad["width"] <= 390
    one(page)
    assert predicted(page) == "1"
    assert page.locator("#badge").inner_text().startswith("1")  # the answer on the pad itself
    shot = Path(os.environ.get("MNIST_CNN_SCREENSHOTS", tmp_path)) / "page-phone.png"
    page.screenshot(path=str(shot), full_page=True)
    context.close()
