"""The page's "as drawn" switch: the whole picture at 28x28, so a moved digit moves in the input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import test_browser
from servers import multipart, png_bytes
from test_browser import predicted, settled, stroke

from mnist_cnn.preprocessing import ImageError, as_drawn

browser, page = test_browser.browser, test_browser.page  # the same Chromium fixtures


def on_paper(digit: np.ndarray, dx: int = 0, dy: int = 0) -> np.ndarray:
    """An MNIST digit (white on black) moved by whole pixels, drawn 10x larger in dark ink on
    white paper, as the page's 280x280 pad sends it."""
    moved = np.roll(digit, (dy, dx), axis=(0, 1))
    return 255 - np.kron(moved, np.ones((10, 10), np.uint8))


def centre(image) -> tuple[float, float]:
    """The centre of mass (x, y) of a 28x28 image."""
    ink = np.asarray(image, dtype=float).reshape(28, 28)
    ys, xs = np.indices(ink.shape)
    return float((xs * ink).sum() / ink.sum()), float((ys * ink).sum() / ink.sum())


def test_as_drawn_keeps_the_ink_where_it_is():
    digit = np.zeros((28, 28), np.uint8)
    digit[5:9, 20:23] = 255  # a small block near the top-right corner
    pre = as_drawn(on_paper(digit).astype(np.float32) / 255)
    assert pre.inverted and np.array_equal(pre.to_uint8(), digit)  # no box, no centring
    wide = np.ones((100, 200), np.float32)  # not square: padded with its paper first
    wide[40:60, 0:20] = 0  # rows 90..109 of the 200x200 square: 12.6..15.3 of 28
    image = as_drawn(wide).image
    ys, xs = np.nonzero(image > 0.5)
    assert (xs.min(), xs.max()) == (0, 2) and (ys.min(), ys.max()) == (13, 14)
    with pytest.raises(ImageError, match="no ink"):
        as_drawn(np.ones((50, 50), np.float32))


def post(served, image: np.ndarray, path: str) -> dict:
    body, headers = multipart(png_bytes(image))
    status, _, answer = served.request("POST", path, body, headers)
    assert status == 200, answer
    return json.loads(answer)


def test_the_api_sees_a_moved_digit_moved_and_its_maps_follow(served, test_digits):
    images, labels = test_digits
    digit = images[0]  # a 7, whose margins leave room for 3 pixels to the left
    centred = post(served, on_paper(digit, dx=-3), "/v1/predict?image=true")
    assert abs(centre(centred["image"])[0] - centre(digit)[0]) < 1  # centring undoes the move
    drawn = post(served, on_paper(digit, dx=-3), "/v1/predict?image=true&as_drawn=true")
    assert np.array_equal(drawn["image"], np.roll(digit, -3, axis=1))
    # equivariance: away from the borders each first-layer map moves with the digit
    here = post(served, on_paper(digit), "/v1/features?as_drawn=true")["stages"][0]
    there = post(served, on_paper(digit, dx=-3), "/v1/features?as_drawn=true")["stages"][0]
    for c in range(32):
        a = np.array(here["maps"][here["channels"].index(c)], dtype=int)
        b = np.array(there["maps"][there["channels"].index(c)], dtype=int)
        assert np.abs(a[1:-1, 4:-1] - b[1:-1, 1:-4]).max() <= 1  # uint8 rounding


def seen_centre(page) -> tuple[float, float]:
    """The centre of mass (x, y) of the 28x28 image the page says the model saw."""
    return centre(page.evaluate(
        "Array.from(document.getElementById('seen').getContext('2d')"
        ".getImageData(0, 0, 28, 28).data).filter((v, i) => i % 4 === 0)"
    ))  # fmt: skip


def test_the_switch_lets_a_learner_move_a_digit_across_the_pad(page, tmp_path):
    assert page.locator("#move").is_hidden() and page.locator("#guide").is_hidden()
    stroke(page, [(0.3, 0.2), (0.3, 0.8)])  # a 1 drawn left of the middle
    assert predicted(page) == "1"
    x0, _ = seen_centre(page)
    assert abs(x0 - 13.5) < 1.5  # centred by MNIST's recipe
    page.locator("#as-drawn").check()
    assert page.locator("#move").is_visible() and page.locator("#guide").is_visible()
    settled(page)
    x1, _ = seen_centre(page)
    assert abs(x1 - 0.3 * 28) < 1.0  # where it was drawn
    for _ in range(4):
        page.keyboard.press("ArrowRight")
    assert page.evaluate("window.scrollY") == 0  # the arrows moved the digit, not the page
    page.locator("#move button[data-move='0,1']").click()
    settled(page)
    x2, y2 = seen_centre(page)
    assert x2 - x1 == pytest.approx(4, abs=0.05)
    assert page.locator("#offset").inner_text() == "moved 4 right, 1 down"
    page.wait_for_function("document.querySelectorAll('#stages canvas').length === 64")
    shot = Path(os.environ.get("MNIST_CNN_SCREENSHOTS", tmp_path)) / "page-as-drawn.png"
    page.screenshot(path=str(shot), full_page=True)
    page.locator("#as-drawn").uncheck()
    settled(page)
    x3, _ = seen_centre(page)
    assert abs(x3 - 13.5) < 1.5  # centred again
    page.keyboard.press("Escape")
    assert page.locator("#offset").inner_text() == ""
