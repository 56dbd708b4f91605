"""Finding the digit in a real capture: each failure pattern of people's images, made up."""

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy import ndimage

from mnist_cnn import ink
from mnist_cnn.ink import components, digit_parts, grow, reduce
from mnist_cnn.preprocessing import preprocess

# a "4" drawn with a pen: three strokes, as points in a 100x100 box
FOUR = [[(62, 5), (12, 62), (82, 62)], [(62, 5), (62, 95)]]
SEVEN = [[(5, 5), (85, 5), (35, 95)]]  # no loops: any dark pixel inside it is a hole


def page(size=(320, 260), paper=0.92, at=(90, 60), scale=1.4, width=9, ink=0.15, digit=FOUR):
    """Dark ink on light paper: a digit drawn with strokes ``width`` pixels wide at ``at``."""
    img = Image.new("F", size, paper)
    draw = ImageDraw.Draw(img)
    for stroke in digit:
        points = [(at[0] + scale * x, at[1] + scale * y) for x, y in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
    return np.asarray(img, np.float32).copy()


def close(a, b, tolerance=0.03) -> bool:
    return float(np.abs(a.image - b.image).mean()) < tolerance


@pytest.fixture(scope="module")
def clean():
    return preprocess(page())


def test_a_speck_far_from_the_digit_is_dropped(clean):
    img = page()
    img[20:26, 280:286] = 0.1  # a dot of ink near a corner
    img[230:233, 30:33] = 0.1
    assert close(preprocess(img), clean)


def test_a_shadow_from_the_border_is_dropped(clean):
    img = page()
    ys, xs = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
    img[(ys - 260) ** 2 + (xs - 320) ** 2 < 70**2] = 0.3  # a dark corner, as a phone casts
    assert close(preprocess(img), clean)


@pytest.mark.parametrize("fold", ["dark", "light"])
def test_a_fold_or_ruled_line_across_the_page_is_dropped(clean, fold):
    img = page()
    img[:, 40:43] = 0.35 if fold == "dark" else 0.99  # a fold from top to bottom
    img[225:227, :] = 0.4  # a ruled line below the digit
    assert close(preprocess(img), clean)


def test_a_digit_inside_an_outlined_frame_is_found(clean):
    img = page()
    draw = ImageDraw.Draw(pil := Image.fromarray(img, "F"))
    draw.rectangle((50, 25, 270, 232), outline=0.1, width=4)  # a cell of a form
    out = preprocess(np.asarray(pil, np.float32))
    assert close(out, clean)


def test_a_digit_inside_a_filled_box_is_found(clean):
    """A black box on a white canvas, the digit drawn in white in it: the canvas's border
    says "dark ink", the box says otherwise."""
    box = np.full((340, 420), 0.97, np.float32)
    inner = 1.0 - page()  # the same 4, light on black
    box[40:300, 50:370] = inner
    out = preprocess(box)
    assert not out.inverted  # the digit was light on dark
    assert close(out, clean)


def test_bold_strokes_on_tinted_paper_keep_their_middle():
    """A marker's strokes, wider than a block of the old background estimate, on grey paper
    with uneven light: the strokes' middle must not be taken for paper (a hollow 7)."""
    bold = page(width=45, paper=0.7, ink=0.2, digit=SEVEN)
    light = np.linspace(0.8, 1.05, bold.shape[1])[None, :]
    out = preprocess(np.clip(bold * light, 0, 1)).image
    ink = out > 0.3
    holes = ndimage.binary_fill_holes(ink) & ~ink
    assert holes.sum() == 0
    assert np.median(out[ink]) > 0.95


def test_parts_of_a_digit_are_kept_together():
    """A 4 whose strokes do not touch (two components) is still one digit, not its
    heavier stroke alone."""
    img = page()
    img[:, 173:180] = 0.92  # cut the downstroke off the rest, a gap of 7 pixels
    out = preprocess(img)
    assert close(out, preprocess(page()), 0.06)
    x = 1 - img[::2, ::2]
    labels, comps = components(x > 0.5, x)
    assert len(comps) >= 2
    assert digit_parts(labels, comps).sum() == (x > 0.5).sum()


def test_large_images_are_searched_small_and_cut_from_the_full_image():
    big = page(size=(1600, 1200), at=(450, 300), scale=5, width=32)
    small, factor = reduce(big, 256)
    assert max(small.shape) <= 256 and factor == 7
    out = preprocess(big)
    assert close(out, preprocess(page()), 0.05)


def test_the_box_reduction_is_the_mean_of_each_block():
    rng = np.random.default_rng(0)
    for shape, side in [((223, 131), 192), ((641, 480), 64), ((37, 500), 100), ((20, 30), 64)]:
        x = rng.random(shape).astype(np.float32)
        small, f = reduce(x, side)
        assert max(small.shape) <= side and small.dtype == np.float32
        h, w = shape[0] // f * f, shape[1] // f * f
        blocks = x[:h, :w].reshape(h // f, f, w // f, f).astype(np.float64).mean(axis=(1, 3))
        np.testing.assert_allclose(small, blocks, atol=1e-6)


@pytest.mark.parametrize("pixels", [1, 2, 3])
def test_grow_is_a_square_dilation(pixels):
    mask = np.random.default_rng(pixels).random((40, 57)) < 0.03
    square = np.ones((2 * pixels + 1, 2 * pixels + 1), bool)
    np.testing.assert_array_equal(grow(mask, pixels), ndimage.binary_dilation(mask, square))


def test_a_fine_pen_on_a_noisy_page_is_found_at_the_reduced_size(monkeypatch):
    """The digit is searched at up to WORK_SIDE pixels (192): a fine pen (2-pixel strokes,
    faint) on a 250-pixel page with uneven light and noise, searched at half size, gives the
    28x28 a full-size search gives (searching at 64 pixels loses the strokes: 0.17 apart)."""
    img = page(size=(250, 240), at=(60, 50), scale=1.2, width=2, ink=0.5)
    light = np.linspace(0.7, 1.0, img.shape[1])[None, :]
    noise = np.random.default_rng(0).normal(0, 0.03, img.shape)
    img = np.clip(img * light + noise, 0, 1).astype(np.float32)
    reduced = preprocess(img)
    monkeypatch.setattr(ink, "WORK_SIDE", 256)
    assert close(reduced, preprocess(img), 0.01)
