"""Reading whole numbers: segmenting made-up numbers, the record, the CLI, the API, the page."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw
from servers import multipart
from test_browser import browser, settled, stroke  # noqa: F401 (the browser fixture)

from mnist_cnn.cli import main
from mnist_cnn.ink import components
from mnist_cnn.predict import Predictor
from mnist_cnn.segment import find_ink, reachable
from mnist_cnn.synthetic import compose_number, ink_crop, number_image


@pytest.fixture(scope="module")
def predictor(real_run):
    return Predictor.from_run(real_run.run_dir)


@pytest.fixture(scope="module")
def sure_digits(predictor, test_digits):
    """Test digits the model reads right and surely by themselves: {label: [ink crops]}."""
    images, labels = test_digits
    probs = predictor.probabilities(images / 255.0)
    sure = (probs.argmax(axis=1) == labels) & (probs.max(axis=1) > 0.99)
    return {k: [ink_crop(images[i]) for i in np.nonzero(sure & (labels == k))[0]]
            for k in range(10)}  # fmt: skip


def png(gray: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.round(255 * gray).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()


def flood_fill_labels(mask: np.ndarray) -> list[set]:
    """The 8-connected components of ``mask`` as sets of pixels, by plain flood fill."""
    seen, parts = np.zeros_like(mask), []
    for y, x in zip(*np.nonzero(mask), strict=True):
        if seen[y, x]:
            continue
        todo, part = [(y, x)], set()
        seen[y, x] = True
        while todo:
            a, b = todo.pop()
            part.add((a, b))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    c, d = a + dy, b + dx
                    inside = 0 <= c < mask.shape[0] and 0 <= d < mask.shape[1]
                    if inside and mask[c, d] and not seen[c, d]:
                        seen[c, d] = True
                        todo.append((c, d))
        parts.append(part)
    return parts


def test_connected_components_match_a_flood_fill():
    """The components segment groups into digits (ink.components): pixels, boxes and masses
    against a plain flood fill."""
    rng = np.random.default_rng(0)
    for _ in range(100):
        mask = rng.random(tuple(rng.integers(1, 25, size=2))) < rng.uniform(0.1, 0.7)
        ink = rng.random(mask.shape).astype(np.float32)
        labels, comps = components(mask, ink)
        expected = flood_fill_labels(mask)
        assert len(comps) == len(expected)
        found = [set(zip(*np.nonzero(labels == c.label), strict=True)) for c in comps]
        assert sorted(map(sorted, found)) == sorted(map(sorted, expected))
        for c, pixels in zip(comps, found, strict=True):
            ys, xs = zip(*pixels, strict=True)
            assert c.box == (min(ys), max(ys) + 1, min(xs), max(xs) + 1)
            assert c.mass == pytest.approx(sum(float(ink[p]) for p in pixels), rel=1e-6)


def test_bold_strokes_on_tinted_paper_keep_their_ink():
    """A marker's "17" on grey, unevenly lit paper: the 7's bar fills whole blocks of a
    block-percentile background estimate, which took its middle for paper (ink 0.01-0.08
    against the 1's 0.42). The paper's level is an opening wider than the strokes."""
    img = Image.new("F", (420, 200), 0.7)
    pen = ImageDraw.Draw(img)
    pen.line([(60, 30), (60, 170)], fill=0.2, width=40)
    pen.line([(150, 40), (300, 40), (210, 170)], fill=0.2, width=40, joint="curve")
    gray = np.asarray(img, np.float32) * np.linspace(0.8, 1.05, 420, dtype=np.float32)[None, :]
    page = find_ink(gray)
    assert len(page.comps) == 2
    one, bar = page.ink[100:160, 60], page.ink[40, 160:300]
    assert bar.min() > 0.8 * one.max()


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_at():
    """evaluation.fit_temperature finds T for which softmax(logits / T) fits the labels:
    labels drawn from softmax(z), logits given as 3 z (a model three times too sure)."""
    import torch

    from mnist_cnn.evaluation import fit_temperature

    gen = torch.Generator().manual_seed(0)
    z = torch.randn(20_000, 10, generator=gen) * 2
    labels = torch.multinomial(torch.softmax(z, dim=1), 1, generator=gen).squeeze(1)
    assert fit_temperature(3 * z, labels) == pytest.approx(3.0, rel=0.05)
    assert fit_temperature(z / 2, labels) == pytest.approx(0.5, rel=0.05)


def test_a_model_surer_of_itself_is_read_as_if_it_were_the_tuned_one(real_run):
    """The temperature fitted at the end of training travels with the run (evaluation.json)
    to the Predictor; reading scores a piece by its rescaled log probability, so that a model
    twice as sure as the tuned one gains half as much from being sure of a fragment."""
    from mnist_cnn.model_card import read_evaluations
    from mnist_cnn.segment import TUNED_TEMPERATURE, Part, _score

    fitted = read_evaluations(real_run.run_dir)["mnist/test"]["temperature"]
    assert 0.05 < fitted < 20
    assert Predictor.from_run(real_run.run_dir).temperature == fitted
    pieces = [Part(0, 0, 8, 10, 1.0, (1,)), Part(10, 0, 18, 10, 1.0, (2,))]  # two digit shapes
    probs = np.full((2, 10), 0.001)
    probs[0, 3], probs[1, 3] = 0.991, 0.5
    probs[1, 5] = 0.491
    plain = _score(pieces, probs, [], 10.0)
    same = _score(pieces, probs, [], 10.0, TUNED_TEMPERATURE)
    surer = _score(pieces, probs, [], 10.0, 2 * TUNED_TEMPERATURE)
    np.testing.assert_allclose(same, plain, atol=0.01)  # only the renormalisation differs
    assert surer[0] - surer[1] < plain[0] - plain[1]


def test_separated_digits_are_found_in_their_boxes_left_to_right(predictor, sure_digits):
    rng = np.random.default_rng(1)
    for number in ("2026", "7391", "58"):
        inks = [sure_digits[int(c)][i] for i, c in enumerate(number)]
        canvas, boxes = compose_number(inks, rng, height=40)
        record = predictor.read(number_image(canvas, rng, photo=False))
        assert record["number"] == number
        found = np.array([d["box"] for d in record["digits"]])
        assert np.abs(found - np.array(boxes)).max() <= 3  # within the faint MNIST fringe


def test_reachable_says_whether_some_reading_among_the_hypotheses_gives_the_number(
    predictor, sure_digits
):
    """segment.reachable, the benchmark's ceiling for the weighing: True for the number read
    (it is one of the readings weighed), and for a classifier that reads every piece as a 3,
    True for 3333 and False for the digits written."""
    rng = np.random.default_rng(3)
    canvas, _ = compose_number([sure_digits[k][0] for k in (2, 0, 2, 6)], rng, height=40)
    assert predictor.read(1 - canvas)["number"] == "2026"
    assert reachable(1 - canvas, predictor.probabilities, "2026")

    def threes(images: np.ndarray) -> np.ndarray:
        probs = np.full((len(images), 10), 0.001)
        probs[:, 3] = 0.991
        return probs

    assert reachable(1 - canvas, threes, "3333")
    assert not reachable(1 - canvas, threes, "2026")
    assert not reachable(1 - canvas, threes, "333")  # a reading leaves no digit out
    assert not reachable(1 - canvas, threes, "33333333333333333333")  # more digits than pieces


def test_a_photo_of_a_number_reads_as_the_clean_one(predictor, sure_digits):
    rng = np.random.default_rng(2)
    canvas, _ = compose_number([sure_digits[k][0] for k in (4, 0, 7)], rng, height=50)
    assert predictor.read(number_image(canvas, rng, photo=True))["number"] == "407"


def draw_strokes(strokes: list[list[tuple[float, float]]], size=(240, 100), width=7) -> bytes:
    """Dark strokes on white, points in pixels."""
    img = Image.new("L", size, 255)
    pen = ImageDraw.Draw(img)
    for s in strokes:
        pen.line(s, fill=0, width=width, joint="curve")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


ONE = [[(170, 20), (170, 80)]]  # a 1 to the right of every made-up digit
FIVE_BODY = [[(62, 22), (58, 48), (75, 44), (88, 52), (90, 66), (80, 78), (62, 80), (52, 74)]]
FIVE_BAR = [[(68, 20), (92, 20)]]  # drawn apart: a gap between the bar and the body
FOUR_L = [[(66, 18), (50, 60), (76, 60)]]
FOUR_STEM = [[(84, 22), (84, 86)]]  # the bar stops short of the stem: apart


OVER_SURE = pytest.mark.xfail(
    strict=False,  # the model differs a little from CPU to CPU: one may read it right
    reason="the tests' model (no label smoothing) is sure of fragments (the 4's L alone is a 6 "
    "at p 0.95), and two digits can win over one (the fast recipe's model reads these right)",
)


def test_a_detached_bar_belongs_to_its_five(predictor):
    image = draw_strokes(FIVE_BODY + FIVE_BAR + ONE)
    page = find_ink(np.asarray(Image.open(io.BytesIO(image)), np.float32) / 255)
    assert page.labels.max() == 3  # three pieces of ink ...
    record = predictor.read(image)
    assert len(record["digits"]) == 2  # ... two digits
    x0, y0, x1, _ = record["digits"][0]["box"]
    assert y0 <= 20 and x1 >= 90  # the bar is inside the 5's box


@OVER_SURE
def test_a_four_in_two_strokes_is_one_digit(predictor):
    image = draw_strokes(FOUR_L + FOUR_STEM + ONE)
    page = find_ink(np.asarray(Image.open(io.BytesIO(image)), np.float32) / 255)
    assert page.labels.max() == 3
    record = predictor.read(image)
    assert record["number"] == "41"


OVERLAPPING = pytest.mark.xfail(
    strict=False,  # the model differs a little from CPU to CPU: one may read it right
    reason="digits overlapping by a fifth of their width are not separated by near-vertical "
    "cut paths (issue-14s note): 38 reads 28, 206 reads 28",
)


def touching(inks: list[np.ndarray], scale: int = 2) -> np.ndarray:
    """Digits (ink crops) at ``scale`` times their size on one line, each neighbour moved in
    until its ink first touches the previous digit's (as in the benchmark's touching numbers,
    whose boxes overlap by 1-4 pixels): ink on black."""
    placed, x = [], 20
    for ink in inks:
        big = np.asarray(Image.fromarray(ink).resize((ink.shape[1] * scale, ink.shape[0] * scale)))
        if placed:
            x0, prev = placed[-1]
            rows = min(prev.shape[0], big.shape[0])  # both stand on the line's top
            for overlap in range(1, min(big.shape[1], prev.shape[1])):
                x = x0 + prev.shape[1] - overlap
                if ((prev[:rows, -overlap:] > 0.5) & (big[:rows, :overlap] > 0.5)).any():
                    break
        placed.append((x, big))
        x += big.shape[1]
    canvas = np.zeros((40 + max(i.shape[0] for _, i in placed), x + 24), np.float32)
    for x0, ink in placed:
        region = canvas[20 : 20 + ink.shape[0], x0 : x0 + ink.shape[1]]
        np.maximum(region, ink, out=region)
    return canvas


@pytest.mark.parametrize("number", ["38", "206"])
def test_touching_digits_are_cut_apart(predictor, sure_digits, number):
    """Neighbours moved in until their ink touches, read as their digits: 8 such numbers, each
    from other test digits, nearly all one piece of ink. Which of them are read right depends a
    little on the model (it differs from CPU to CPU, and with the threads), so the test asks
    for half: 5-7 of 8 are read right here, and the greedy splitting before read 1 of 8 of the
    three-digit ones."""
    read, pieces = [], []
    for k in range(8):
        inks = [sure_digits[int(c)][(i + 1 + 3 * k) % len(sure_digits[int(c)])]
                for i, c in enumerate(number)]  # fmt: skip
        canvas = touching(inks)
        pieces.append(len(components(canvas > 0.5, canvas)[1]))
        read.append(predictor.read(1 - canvas)["number"])
    assert pieces.count(1) >= 6, pieces
    assert sum(r == number for r in read) >= 4, read


def test_a_wide_digit_is_not_split(predictor):
    """A 0 wider than MNIST's usual ones is read whole, alone or in a number (cut, it gives
    two plausible halves)."""
    wide_zero = [[(100 + 36 * np.cos(t / 20 * np.pi), 50 + 32 * np.sin(t / 20 * np.pi))
                  for t in range(41)]]  # fmt: skip
    assert predictor.read(draw_strokes(wide_zero, size=(260, 100)))["number"] == "0"
    one = [[(200, 18), (200, 82)]]
    assert predictor.read(draw_strokes(wide_zero + one, size=(260, 100)))["number"] == "01"


@OVER_SURE
def test_a_wide_seven_is_not_split(predictor):
    """Read whole with this CPU's model; the model trained as a CPU without AVX-512 trains it
    (make test-avx2) reads its bar's left end as a 2 of its own: "27"."""
    seven = [[(40, 20), (120, 20), (80, 85)]]
    assert predictor.read(draw_strokes(seven, size=(200, 100)))["number"] == "7"


@pytest.mark.parametrize("number", [pytest.param(n, marks=OVERLAPPING) for n in ("38", "206")])
def test_overlapping_digits_are_cut_apart(predictor, sure_digits, number):
    inks = [sure_digits[int(c)][i + 1] for i, c in enumerate(number)]
    # at twice MNIST's size, neighbours overlapping by 8 pixels: their ink touches
    placed, x = [], 20
    for ink in inks:
        scaled = np.asarray(Image.fromarray(ink).resize((ink.shape[1] * 2, ink.shape[0] * 2)))
        placed.append((x, scaled))
        x += scaled.shape[1] - 8
    canvas = np.zeros((100, x + 24), np.float32)
    for x0, ink in placed:
        region = canvas[20 : 20 + ink.shape[0], x0 : x0 + ink.shape[1]]
        np.maximum(region, ink, out=region)
    assert len(components(canvas > 0.5, canvas)[1]) == 1  # one piece of ink
    record = predictor.read(1 - canvas)
    assert record["number"] == number, record


def test_one_digit_reads_as_predict_reads_it(predictor, test_digits):
    images, _ = test_digits
    rng = np.random.default_rng(4)
    for image in images[:20]:
        photo = number_image(np.pad(image / 255.0, 30), rng, photo=True)
        read, predicted = predictor.read(photo), predictor.predict(photo)
        assert read["number"] == predicted["class"]
        assert read["probability"] == pytest.approx(predicted["probability"], rel=1e-5)


def test_the_record(predictor, sure_digits):
    rng = np.random.default_rng(5)
    canvas, _ = compose_number([sure_digits[k][2] for k in (1, 2, 3)], rng, height=36)
    record = predictor.read(number_image(canvas, rng, photo=False), name="n.png")
    assert set(record) == {"file", "number", "digits", "probability"}
    assert record["file"] == "n.png"
    assert [set(d) for d in record["digits"]] == [{"label", "probability", "box"}] * 3
    assert "".join(str(d["label"]) for d in record["digits"]) == record["number"]
    assert all(len(d["box"]) == 4 and all(isinstance(v, int) for v in d["box"])
               for d in record["digits"])  # fmt: skip
    product = np.prod([d["probability"] for d in record["digits"]])
    assert record["probability"] == pytest.approx(product)
    json.dumps(record)  # plain JSON types


def test_read_command(real_run, sure_digits, tmp_path, capsys):
    rng = np.random.default_rng(6)
    canvas, _ = compose_number([sure_digits[k][3] for k in (9, 0, 5)], rng, height=40)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "905.png").write_bytes(number_image(canvas, rng, photo=False))
    (tmp_path / "in" / "broken.png").write_bytes(b"not a png")
    run = str(real_run.run_dir)
    saved = tmp_path / "o"
    assert main(["read", run, str(tmp_path / "in"), "--save-preprocessed", str(saved)]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith(f"{tmp_path / 'in' / '905.png'}: 905 ")
    assert lines[1].startswith(f"{tmp_path / 'in' / 'broken.png'}: error: not a readable image")
    assert "1 of 2 images could not be used" in err
    assert sorted(p.name for p in saved.iterdir()) == [f"905-{n}.png" for n in (1, 2, 3)]
    assert Image.open(saved / "905-1.png").size == (28, 28)
    assert main(["read", run, str(tmp_path / "in" / "905.png"), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["number"] == "905" and len(record["digits"]) == 3


def test_read_endpoint(served, sure_digits):
    rng = np.random.default_rng(7)
    canvas, boxes = compose_number([sure_digits[k][4] for k in (3, 1, 4)], rng, height=40)
    body, headers = multipart(number_image(canvas, rng, photo=True), "pi.jpg", "file", "image/jpeg")
    status, _, answer = served.request("POST", "/v1/read", body, headers)
    assert status == 200
    record = json.loads(answer)
    assert record["file"] == "pi.jpg" and record["number"] == "314"
    assert np.abs(np.array([d["box"] for d in record["digits"]]) - boxes).max() <= 3
    status, _, answer = served.request("POST", "/v1/read", *multipart(b"not an image"))
    assert status == 415 and "error" in json.loads(answer)
    blank = json.dumps({"pixels": [[0] * 28] * 28}).encode()
    status, _, answer = served.request("POST", "/v1/read", blank,
                                       {"Content-Type": "application/json"})  # fmt: skip
    assert status == 422 and "no ink" in json.loads(answer)["error"]


def test_the_service_reads_with_the_models_temperature(predictor, sure_digits, monkeypatch):
    """POST /v1/read reads as Predictor.read does, with the model's own temperature."""
    from mnist_cnn import segment
    from mnist_cnn.preprocessing import load_image_sized
    from mnist_cnn.serve.app import _read_number

    given = []
    nothing = ([], [], np.zeros((0, 10)))
    monkeypatch.setattr(segment, "read_number", lambda *a, **kw: given.append(kw) or nothing)
    rng = np.random.default_rng(3)
    canvas, _ = compose_number([sure_digits[k][0] for k in (2, 7)], rng, height=40)
    gray, _ = load_image_sized(number_image(canvas, rng, photo=False))
    _read_number("n.png", gray, (1.0, 1.0), predictor)
    assert predictor.temperature is not None
    assert given == [{"temperature": predictor.temperature}]


def test_number_mode_of_the_page(browser, served, tmp_path):  # noqa: F811
    import os
    from pathlib import Path

    context = browser.new_context(viewport={"width": 1100, "height": 800})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(served.url + "/")
    page.wait_for_function("document.querySelectorAll('#bars li').length === 10")
    page.locator("#mode-number").click()
    pad = page.locator("#pad").bounding_box()
    assert pad["width"] > 2.5 * pad["height"]  # a wide pad for a number
    # a 1, a 0 and a 7, each in its third of the pad
    stroke(page, [(0.5 / 3, 0.15), (0.5 / 3, 0.85)])
    stroke(page, [((1.5 + 0.22 * np.sin(t / 12 * np.pi)) / 3, 0.5 - 0.33 * np.cos(t / 12 * np.pi))
                  for t in range(25)])  # fmt: skip
    stroke(page, [(2.25 / 3, 0.2), (2.75 / 3, 0.2), (2.45 / 3, 0.85)])
    page.wait_for_function("document.body.dataset.predicted !== undefined", timeout=15_000)
    settled(page)
    assert page.evaluate("document.body.dataset.predicted") == "107"
    assert page.locator("#label").inner_text() == "107"
    assert page.evaluate("document.body.dataset.boxes") == "3"
    drawn = page.evaluate(  # the boxes are drawn over the pad
        "Array.from(document.getElementById('boxes').getContext('2d').getImageData(0, 0, 840, "
        "280).data).filter((v, i) => i % 4 === 3 && v > 0).length"
    )
    assert drawn > 300
    shot = Path(os.environ.get("MNIST_CNN_SCREENSHOTS", tmp_path)) / "page-number.png"
    page.screenshot(path=str(shot), full_page=True)
    page.keyboard.press("Escape")
    assert page.locator("#label").inner_text() == "?"
    page.locator("#mode-digit").click()
    square = page.locator("#pad").bounding_box()
    assert abs(square["width"] - square["height"]) < 2  # back to the square pad
    assert not errors, errors
    context.close()


def test_a_cut_with_no_ink_is_a_hypothesis_never_chosen_not_a_failed_read():
    """A cut hypothesis whose piece holds no ink of its own scores -inf (to_mnist finds no
    ink in it) instead of failing the whole read."""
    from mnist_cnn.segment import Part, _read_pieces, _score

    page = find_ink(np.asarray(Image.open(io.BytesIO(draw_strokes(ONE))), np.float32) / 255)
    (one,) = page.comps
    t, b, left, r = one.box
    ink = Part(left, t, r, b, one.mass, (one.label,))
    beside = Part(left - 40, t, left - 20, b, one.mass, (one.label,))  # its columns, no ink

    def uniform(images):
        return np.full((len(images), 10), 0.1)

    _, probs, empty = _read_pieces(page, [ink, beside], uniform)
    score = _score([ink, beside], probs, empty, line=ink.height)
    assert np.isfinite(score[0]) and score[1] == -np.inf
