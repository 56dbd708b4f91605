"""Preprocessing people's images as MNIST was made."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from mnist_cnn import load_dataset
from mnist_cnn.preprocessing import ImageError, load_image, preprocess, to_mnist


@pytest.fixture(scope="module")
def digits(mnist_dir_module):
    data = load_dataset("mnist", mnist_dir_module)
    return data.test_images[:40].numpy(), data.test_labels[:40].numpy()


@pytest.fixture(scope="module")
def mnist_dir_module():
    from .conftest import _REAL_MNIST

    if _REAL_MNIST is None:
        pytest.fail("the real MNIST is needed (set MNIST_CNN_DATA)")
    return _REAL_MNIST


def on_canvas(digit, size=240, canvas=(400, 330), at=(60, 40), dark_on_light=True):
    """A digit drawn large on a big canvas, dark ink on white (or light on black)."""
    big = np.asarray(Image.fromarray(digit).resize((size, size), Image.BICUBIC), np.float32) / 255
    ink = np.zeros(canvas, np.float32)
    ink[at[0] : at[0] + size, at[1] : at[1] + size] = big
    gray = 1 - ink if dark_on_light else ink
    return Image.fromarray(np.round(gray * 255).astype(np.uint8), "L")


def png(img: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG", **options)
    return buffer.getvalue()


def test_mnist_digits_come_out_as_they_went_in(digits):
    images, _ = digits
    for d in images:
        out = to_mnist(d.astype(np.float32) / 255).image
        assert np.abs(out - d / 255).mean() < 0.01


def test_size_box_and_centre_of_mass(digits):
    for d in digits[0][:10]:
        out = preprocess(on_canvas(d)).image
        rows, cols = np.nonzero(out > 0.05)
        assert max(np.ptp(rows), np.ptp(cols)) + 1 in (19, 20, 21)  # the 20-pixel box
        ys, xs = np.indices(out.shape)
        assert abs((ys * out).sum() / out.sum() - 14) <= 0.5
        assert abs((xs * out).sum() / out.sum() - 14) <= 0.5


def test_both_polarities_give_the_same_digit(digits):
    d = digits[0][3]
    dark = preprocess(on_canvas(d, dark_on_light=True))
    light = preprocess(on_canvas(d, dark_on_light=False))
    assert dark.inverted and not light.inverted
    assert np.abs(dark.image - light.image).mean() < 0.02
    assert np.abs(dark.image - d / 255).mean() < 0.06  # close to the MNIST original


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16", "1"])
def test_every_image_mode(digits, mode):
    d = digits[0][5]
    base = on_canvas(d)
    if mode == "RGBA":  # a transparent export: dark ink, transparent paper
        a = 255 - np.asarray(base)
        rgba = np.zeros((*a.shape, 4), np.uint8)
        rgba[..., 3] = a
        img = Image.fromarray(rgba, "RGBA")
    elif mode == "LA":
        img = Image.merge(
            "LA", [Image.new("L", base.size, 0), Image.fromarray(255 - np.asarray(base))]
        )
    elif mode == "I;16":
        img = Image.fromarray(np.asarray(base).astype(np.uint16) * 257)
        assert img.mode == "I;16"
    else:
        img = base.convert(mode)
    reread = Image.open(io.BytesIO(png(img))) if mode != "I;16" else img
    out = preprocess(reread).image
    assert np.abs(out - preprocess(base).image).mean() < (0.08 if mode == "1" else 0.02)


def test_uneven_lighting_and_paper_noise_do_not_widen_the_box(digits):
    d = digits[0][7]
    clean = np.asarray(on_canvas(d), np.float32) / 255
    h, w = clean.shape
    light = np.linspace(0.55, 1.0, w)[None, :] * np.linspace(0.8, 1.0, h)[:, None]
    rng = np.random.default_rng(0)
    noisy = np.clip(clean * light + rng.normal(0, 0.04, clean.shape), 0, 1)
    out = preprocess(noisy)
    assert np.abs(out.image - preprocess(clean).image).mean() < 0.06
    crop = out.steps["crop"]
    assert crop.shape[0] < 0.8 * h, "the bounding box follows the ink, not the lighting"


def test_thin_strokes_are_thickened_like_mnist(digits):
    d = digits[0][1]
    img = on_canvas(d, size=300, canvas=(420, 420))
    thin = np.asarray(img, np.float32) / 255
    thin = np.where(thin < 0.15, 0.0, 1.0)  # only the core of each stroke: a fine pen
    out = preprocess(thin).image
    assert (out > 0.5).sum() > 0.6 * (d > 127).sum()


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "not a readable image"),
        (b"hello, not an image", "not a readable image"),
        (png(Image.new("L", (50, 50), 255))[:40], "not a readable image"),
        (png(Image.new("L", (50, 50), 255)), "no ink"),
        (png(Image.new("RGB", (64, 64), (30, 30, 30))), "no ink"),
    ],
)
def test_unusable_images_are_clear_errors(data, message):
    with pytest.raises(ImageError, match=message):
        preprocess(data)


def test_nan_pixels_are_refused():
    a = np.zeros((40, 40), np.float32)
    a[5, 5] = np.nan
    with pytest.raises(ImageError, match="NaN"):
        preprocess(a)


def test_pixel_limit_refuses_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("L", (3000, 2000), 255).save(path)
    with pytest.raises(ImageError, match="over the limit of 5,000,000 pixels"):
        load_image(path, max_pixels=5_000_000)
    # allowed, and box-reduced by 12 on the way in (to REDUCED_SIDE, 256): a 20-pixel digit
    # needs no more
    assert load_image(path, max_pixels=6_000_000).shape == (167, 250)


@pytest.mark.parametrize(
    "size, side, decoded",
    [((4000, 3000), 1024, (1000, 750)), ((2000, 1500), 256, (250, 188)),
     ((1280, 960), 256, (320, 240)), ((300, 200), 256, (150, 100)), ((250, 200), 256, None)],
)  # fmt: skip
def test_a_large_jpeg_is_reduced_in_its_own_decoding(size, side, decoded):
    """The JPEG decoder scales by 1/2, 1/4 or 1/8 for nothing: it does as much of the box
    reduction to ``side`` as it can (a 12-megapixel photo read at 1024: 1/4, not 1/2 and
    then halved), and no more."""
    from mnist_cnn.preprocessing import _draft

    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 190, 180)).save(buffer, format="JPEG")
    with Image.open(buffer) as img:
        _draft(img, side)
        img.load()
        assert img.size == (decoded or size)
        assert img.mode == ("L" if decoded else "RGB")  # straight to grayscale where reduced


def test_a_large_digit_is_cut_at_crop_side_as_at_twice_that(digits, monkeypatch):
    """The digit's crop is box-reduced to CROP_SIDE (160) before it is measured, thickened
    and fitted to the box: a digit 300 pixels tall, thick or fine, comes out as it does
    from a crop kept at 320."""
    from mnist_cnn import preprocessing

    for i, fine in ((1, True), (2, False), (8, False)):
        img = np.asarray(on_canvas(digits[0][i], size=300, canvas=(420, 420)), np.float32) / 255
        if fine:
            img = np.where(img < 0.15, 0.0, 1.0).astype(np.float32)  # a fine pen's core
        reduced = preprocess(img).image
        monkeypatch.setattr(preprocessing, "CROP_SIDE", 320)
        assert np.abs(reduced - preprocess(img).image).mean() < 0.02
        monkeypatch.undo()


def test_thickening_is_repeated_3x3_maxima():
    """_thicken's one (2k + 1) maximum filter against k plain 3x3 maxima, edges included."""
    from scipy import ndimage

    from mnist_cnn.preprocessing import _thicken

    crop = np.zeros((150, 90), np.float32)
    crop[10:140, 44:46] = 1.0  # a 2-pixel stroke, 1/3 pixel in the 20-pixel box: thin
    crop[0, 0] = 0.7  # ink on the edge
    out = _thicken(crop)
    k = (out.shape[0] - crop.shape[0]) // 2
    assert k >= 1 and out.shape == (150 + 2 * k, 90 + 2 * k)
    expected = np.pad(crop, k)
    for _ in range(k):
        expected = ndimage.maximum_filter(expected, size=3, mode="constant", cval=0.0)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("zeros", [0.2, 0.5, 0.9])
def test_the_noise_floor_is_the_median_and_deviation_of_the_paper(zeros):
    from mnist_cnn.preprocessing import _stretch

    rng = np.random.default_rng(0)
    ink = rng.uniform(0, 0.2, (60, 40)).astype(np.float32)
    ink[rng.random(ink.shape) < zeros] = 0.0  # away from the digit
    ink[20:40, 15:25] = 0.9  # a stroke
    _, floor, _ = _stretch(ink, 0.5)
    paper = ink[ink <= 0.5].astype(np.float64)
    median = np.median(paper)
    assert floor == pytest.approx(median + 3 * 1.4826 * np.median(np.abs(paper - median)))


def test_an_inkless_crop_has_the_whole_crop_as_its_box():
    """All the ink under the paper's noise floor: the box is the whole crop, no division by
    zero (it warned and gave a 1x1 box before)."""
    import warnings

    from mnist_cnn.preprocessing import _bounding_box

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _bounding_box(np.zeros((7, 5), np.float32)) == (0, 7, 0, 5)
    ink = np.zeros((7, 5), np.float32)
    ink[2:4, 1:3] = 1
    assert _bounding_box(ink) == (2, 4, 1, 3)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _hand_made_png(size, depth, colour, rows: bytes, interlace=0, before=b"", parts=1) -> bytes:
    """A PNG put together chunk by chunk: IHDR (``colour``: 0 grey, 2 RGB), the ``before``
    chunks, ``rows`` (each with its filter byte) compressed into ``parts`` IDATs, IEND."""
    head = struct.pack(">IIBBBBB", *size, depth, colour, 0, 0, interlace)
    pixels = zlib.compress(rows)
    cuts = np.linspace(0, len(pixels), parts + 1).astype(int)
    idat = b"".join(_chunk(b"IDAT", pixels[a:b]) for a, b in zip(cuts[:-1], cuts[1:], strict=True))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", head) + before + idat + _chunk(b"IEND", b"")


def _frame(size, at=(0, 0)) -> bytes:
    """An APNG frame control chunk (fcTL) for a frame of ``size`` at ``at``."""
    return _chunk(b"fcTL", struct.pack(">IIIIIHHBB", 0, *size, *at, 1, 10, 0, 0))


def _exif_after_pixels(data: bytes, orientation: int) -> bytes:
    """The PNG ``data`` with an eXIf chunk (orientation) between its pixels and its end."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    body = exif.tobytes().removeprefix(b"Exif\x00\x00")  # Pillow 10 writes the JPEG prefix
    end = data.rindex(b"IEND") - 4
    return data[:end] + _chunk(b"eXIf", body) + data[end:]


def _pngs() -> dict[str, tuple[bytes, bool]]:
    """PNGs of every kind people send: {kind: (file, whether libspng decodes it)}. It takes
    8-bit grey, RGB and RGBA with their metadata before the pixels, up to FAST_PNG_PIXELS."""
    rng = np.random.default_rng(0)
    out = {}
    for mode, channels in (("L", 1), ("LA", 2), ("RGB", 3), ("RGBA", 4)):
        a = rng.integers(0, 256, (37, 23, channels), dtype=np.uint8)
        a[:, :9] //= 4  # some ink
        img = Image.fromarray(a[..., 0] if channels == 1 else a, mode)
        fast = mode != "LA"
        out[mode] = png(img), fast
        out[f"{mode}, stored"] = png(img, compress_level=0), fast
        exif = Image.Exif()
        exif[0x0112] = 6  # shown rotated by 90 degrees
        out[f"{mode}, EXIF before the pixels"] = png(img, exif=exif), fast
        out[f"{mode}, EXIF after the pixels"] = _exif_after_pixels(png(img), 8), False
    rgb = Image.open(io.BytesIO(out["RGB"][0]))
    out["P"] = png(rgb.convert("P")), False
    out["RGB with a transparent colour"] = png(rgb, transparency=(0, 0, 0)), False
    out["grey, 16 bits"] = (
        png(Image.fromarray(np.arange(851, dtype=np.uint16).reshape(37, 23) * 77)),
        False,
    )
    out["1 bit"] = png(rgb.convert("1")), False
    rows = b"".join(b"\0" + rng.integers(0, 256, 6 * 5, dtype=np.uint8).tobytes() for _ in range(3))
    out["RGB, 16 bits"] = _hand_made_png((5, 3), 16, 2, rows), False
    rows = b"".join(b"\0" + rng.integers(0, 256, 3, dtype=np.uint8).tobytes() for _ in range(3))
    out["grey, 4 bits"] = _hand_made_png((6, 3), 4, 0, rows), False
    out["grey, interlaced"] = _hand_made_png((1, 1), 8, 0, b"\0\x80", interlace=1), False
    rows = b"".join(b"\0" + rng.integers(0, 256, 8, dtype=np.uint8).tobytes() for _ in range(6))
    out["grey"] = _hand_made_png((8, 6), 8, 0, rows), True
    out["grey, its pixels in 3 chunks"] = _hand_made_png((8, 6), 8, 0, rows, parts=3), True
    # a frame's rectangle before the pixels: Pillow shows only it (here the upper half)
    out["grey, a frame over half of it"] = (
        _hand_made_png((8, 6), 8, 0, rows, before=_frame((8, 3))),
        False,
    )
    big = b"".join(b"\0" + rng.integers(0, 256, 400, dtype=np.uint8).tobytes() for _ in range(300))
    # more chunks than are worth walking through (LATE_CHUNKS) for the metadata after them
    out["grey, its pixels in 1,100 chunks"] = (
        _hand_made_png((400, 300), 8, 0, big, parts=1100),
        False,
    )
    frames = [Image.fromarray(np.full((6, 8), v, np.uint8)) for v in (30, 220)]
    out["animated"] = png(frames[0], save_all=True, append_images=frames[1:]), False
    out["large"] = png(Image.new("L", (600, 500), 200)), False  # over FAST_PNG_PIXELS
    return out


@pytest.mark.parametrize("kind", list(_pngs()))
def test_pngs_decode_to_the_same_pixels_as_pillows_own_decoder(kind, monkeypatch):
    """PNGs in memory are decoded by libspng (pyspng) where it gives Pillow's pixels: the
    grayscale image, its size and EXIF orientation are those of a Pillow-only decode, bit for
    bit, whether the bytes or an opened upload are given; metadata after the pixels (which
    Pillow reads only as it decodes) leaves the file to Pillow, and so does every other kind."""
    import pyspng

    from mnist_cnn import preprocessing
    from mnist_cnn.preprocessing import load_image_sized

    data, libspng = _pngs()[kind]
    calls = []
    real = pyspng.load
    monkeypatch.setattr(pyspng, "load", lambda d, *a: calls.append(1) or real(d, *a))
    fast = load_image_sized(data)
    with preprocessing.open_image(io.BytesIO(data)) as img:
        upload = load_image_sized(img)
    monkeypatch.setattr(preprocessing, "_decode_png", lambda img: None)
    pillow = load_image_sized(data)
    for got in (fast, upload):
        np.testing.assert_array_equal(got[0], pillow[0])
        assert got[1] == pillow[1]
    assert len(calls) == (2 if libspng else 0)
    if "EXIF" in kind:  # rotated by 90 degrees either way: width and height swap
        assert fast[0].shape == (23, 37) and fast[1] == (37, 23)


def test_only_pngs_in_memory_go_to_libspng(tmp_path, monkeypatch):
    """A file read from its path, or from a file object, is Pillow's to decode."""
    import pyspng

    monkeypatch.setattr(pyspng, "load", lambda *a: pytest.fail("libspng decoded a file"))
    path = tmp_path / "digit.png"
    path.write_bytes(_pngs()["RGB"][0])
    with path.open("rb") as f:
        np.testing.assert_array_equal(load_image(path), load_image(f))


@pytest.mark.parametrize("answer", ["refuses", "wrong shape", "16 bits"])
def test_a_png_libspng_refuses_or_misreads_is_left_to_pillow(answer, monkeypatch):
    import pyspng

    def libspng(data, *args):
        if answer == "refuses":
            raise RuntimeError("pyspng: could not decode image")
        return np.zeros((3, 5, 4) if answer == "wrong shape" else (37, 23, 3), np.uint8).astype(
            np.uint16 if answer == "16 bits" else np.uint8
        )

    monkeypatch.setattr(pyspng, "load", libspng)
    data = _pngs()["RGB"][0]
    with Image.open(io.BytesIO(data)) as img:
        expected = np.asarray(img.convert("L"), np.float32) / 255
    np.testing.assert_array_equal(load_image(data), expected)
