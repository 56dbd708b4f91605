"""Turning people's images into MNIST digits, the way MNIST was made (numpy, SciPy, Pillow).

MNIST's digits were size-normalized to fit a 20x20 box keeping their aspect ratio, with
anti-aliasing, then placed in a 28x28 field so that their centre of mass is at the centre.
Ink is bright (255) on a black (0) background. :func:`to_mnist` does the same to any photo,
scan or drawing: grayscale, polarity, background and lighting removal, a robust bounding box,
the 20-pixel box, centre of mass; :func:`load_image` reads the files of IMAGE_FORMATS with
Pillow (small PNGs with libspng, which gives the same pixels sooner).
"""

from __future__ import annotations

import io
import os
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile
from scipy import ndimage

from . import ink as ink_
from .defaults import MAX_IMAGE_PIXELS as DEFAULT_MAX_PIXELS
from .errors import MnistCnnError

# The formats people's digits come in (Pillow's names); nothing else is decoded.
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
# Larger images are box-reduced to at most this side before anything else: the digit ends up
# 20 pixels tall. On the 215 real handwritten digits no answer changed at 512 or at 256, and
# decoding and preprocessing them all took 2.8x less time at 256 (benchmarks/decode.py).
REDUCED_SIDE = 256
BOX = 20  # MNIST's digits fit a 20x20 box ...
SIZE = 28  # ... centred by mass in a 28x28 field
# The digit's crop is box-reduced to at most this side before the ink is measured, thickened
# and fitted to the box: 8x the box is as exact for the 20-pixel result (no answer changed on
# the handwriting set or the renders against 16x), and 4x fewer pixels to work on.
CROP_SIDE = 8 * BOX


class ImageError(MnistCnnError):
    """An image that cannot be used: unreadable, too large, or with no ink."""


class UnsupportedImage(ImageError):
    """A file in a format that is not decoded here (see IMAGE_FORMATS)."""


@dataclass
class Preprocessed:
    """The 28x28 image the model sees (0..1, ink bright), and the steps that led to it."""

    image: np.ndarray  # (28, 28) float32 in 0..1
    steps: dict[str, np.ndarray] = field(default_factory=dict)  # name -> 2-D float image 0..1
    inverted: bool = False  # the input was dark ink on a light background

    def to_uint8(self) -> np.ndarray:
        return np.round(self.image * 255).astype(np.uint8)


def load_image(source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Any image (path, bytes, file object, PIL image or array) as grayscale float32 0..1,
    reduced early to at most REDUCED_SIDE (see :func:`load_image_sized`)."""
    return load_image_sized(source, max_pixels=max_pixels)[0]


def load_image_sized(
    source, *, max_pixels: int = DEFAULT_MAX_PIXELS, side: int = REDUCED_SIDE
) -> tuple[np.ndarray, tuple[int, int]]:
    """Any image (path, bytes, file object, PIL image or array) as grayscale float32 0..1.

    Only the formats in IMAGE_FORMATS are decoded (anything else is refused before decoding:
    ICO, ICNS and their kind decode embedded images of any size while "opening"). Sizes are
    checked before decoding and again after (never trusting the header). Large images are
    reduced early: JPEGs decoded at reduced scale, others box-reduced to at most REDUCED_SIDE.
    Transparency is composited onto white, palette and 16-bit images are converted, EXIF
    orientation is applied. Raises :class:`ImageError` for anything that is not a usable image.
    Returns the image reduced to at most ``side`` pixels a side and the (width, height) of the
    whole image, EXIF orientation applied: positions found in the one map back to the other.
    """
    if isinstance(source, np.ndarray):
        gray = _array_to_gray(source)
        return gray, (gray.shape[1], gray.shape[0])
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    name = str(source) if isinstance(source, (str, os.PathLike)) else "image"
    try:
        # an image opened elsewhere (perhaps not yet decoded) is read here, with the same
        # checks, but left open for its owner
        given = isinstance(source, Image.Image)
        with nullcontext(source) if given else open_image(source) as img:
            _check_size(img, max_pixels, name)
            w, h = img.size
            _draft(img, side)
            fast = _decode_png(img)
            if fast is None:
                img.load()
                decoded, orientation = img, img.getexif().get(ORIENTATION, 1)
            else:
                decoded, orientation = fast
            gray = _pil_to_gray(decoded, max_pixels, side, orientation)
            return gray, ((h, w) if orientation in (5, 6, 7, 8) else (w, h))
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too many pixels (a decompression bomb?)") from None
    except Exception as e:  # Pillow says "not an image" in many ways (OSError, struct.error...)
        raise ImageError(f"{name}: not a readable image ({e})") from None


def open_image(source) -> Image.Image:
    """``Image.open`` limited to IMAGE_FORMATS (only the header is read); raises
    :class:`UnsupportedImage` for anything else, and Pillow's errors as they are."""
    img = Image.open(source, formats=IMAGE_FORMATS)  # UnidentifiedImageError for the rest
    if img.format not in IMAGE_FORMATS:  # a plugin that names itself differently
        img.close()
        raise UnsupportedImage(f"{img.format} images are not accepted")
    return img


def _draft(img: Image.Image, side: int) -> None:
    """A JPEG larger than needed is decoded at 1/2, 1/4 or 1/8 scale (in the DCT, so far
    cheaper than decoding it whole), straight to grayscale when it is in colour: the largest
    of these that the box reduction to ``side`` (by a whole factor) would go past anyway, so
    that a 4000-pixel photo read at 1024 is decoded at 1/4, not at 1/2 and then halved."""
    factor = -(-max(img.size) // side)  # the box reduction's
    if img.format == "JPEG" and factor >= 2:
        scale = 1 << min(factor.bit_length() - 1, 3)  # a power of two, at most the factor
        mode = "L" if img.mode in ("RGB", "YCbCr", "L") else img.mode
        size = (max(1, img.width // scale), max(1, img.height // scale))
        img.draft(mode, size)  # Pillow decodes at 1/scale, or larger where a side needs it


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# libspng decodes PNGs up to this size: pyspng holds the GIL while it decodes (Pillow's decoder
# lets it go), and larger images are decoded in threads that must not stall the service's
# event loop; beyond it, repacking its pixels for Pillow also eats most of the gain
FAST_PNG_PIXELS = 512 * 512
# Chunks that may say how a PNG is oriented (eXIf; EXIF or XMP in text) and that Pillow reads
# only while decoding, where they come after the pixels
_LATE_METADATA = {b"eXIf", b"tEXt", b"zTXt", b"iTXt"}
LATE_CHUNKS = 1024  # more chunks than this after the pixels start: Pillow reads the file


def _chunks_from(data: bytes, at: int) -> set[bytes] | None:
    """The kinds of the PNG chunks in ``data`` from offset ``at`` to IEND, walked by their
    lengths; None if there are more than LATE_CHUNKS (encoders cut the pixels into chunks of
    8 KB or more) or the walk runs off the end."""
    kinds = set()
    for _ in range(LATE_CHUNKS):
        if at < 0 or at + 8 > len(data):
            return None
        kind = data[at + 4 : at + 8]
        kinds.add(kind)
        if kind == b"IEND":
            return kinds
        at += 12 + int.from_bytes(data[at : at + 4], "big")
    return None


def _decode_png(img: Image.Image) -> tuple[Image.Image, int] | None:
    """An opened PNG held in memory (bytes given, an upload) decoded by libspng (pyspng), and
    its EXIF orientation: the same pixels as Pillow's decoder, bit for bit, in about half the
    time (a 131x223 photo crop: 0.7-0.8 ms against 1.4 ms; Pillow undoes the PNG filters a
    byte at a time). Only 8-bit grey, RGB and RGBA up to FAST_PNG_PIXELS, not interlaced,
    without a transparent colour or an animation frame's rectangle, with all their metadata
    before the pixels (an APNG whose default image is not one of its frames is read for that
    image, as Pillow reads it). None for anything else, or where libspng refuses the file, and
    Pillow decodes it as before. libspng checks less than Pillow: a file whose zlib checksum
    or whose chunks after the pixels are damaged, which Pillow refuses, is read here for the
    pixels it holds."""
    if not isinstance(img, ImageFile.ImageFile) or img.format != "PNG":
        return None
    if img.width * img.height > FAST_PNG_PIXELS:
        return None
    if "bbox" in img.info:  # an APNG frame's rectangle before the pixels: Pillow decodes only it
        return None
    fp = img.fp
    if not isinstance(fp, io.BytesIO):
        return None
    # a tile is (decoder, box, offset, raw mode): a named tuple since Pillow 11, a tuple before
    if not img.tile or img.mode not in ("L", "RGB", "RGBA") or img.tile[0][3] != img.mode:
        return None  # decoded already, or not 8 bits a sample (the raw mode says how many)
    if "transparency" in img.info or img.info.get("interlace"):
        return None
    data = fp.getvalue()
    later = _chunks_from(data, img.tile[0][2] - 8)  # from the first IDAT's length and kind
    if not data.startswith(PNG_SIGNATURE) or later is None or later & _LATE_METADATA:
        return None
    try:
        import pyspng

        pixels = pyspng.load(data)
    except Exception:  # not installed, or a file libspng refuses: Pillow decides
        return None
    channels = () if img.mode == "L" else (len(img.mode),)
    if pixels.dtype != np.uint8 or pixels.shape != (img.height, img.width, *channels):
        return None  # not what Pillow's header said: Pillow decides
    # the orientation from the metadata read with the header (PngImageFile.getexif would
    # decode the pixels first, to read the chunks after them)
    orientation = Image.Image.getexif(img).get(ORIENTATION, 1)
    return Image.frombuffer(img.mode, img.size, pixels, "raw", img.mode, 0, 1), orientation


def _check_size(img: Image.Image, max_pixels: int, name: str = "image") -> None:
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError(f"{name}: {w}x{h} is over the limit of {max_pixels:,} pixels")
    if w == 0 or h == 0:
        raise ImageError(f"{name}: empty image")


def _pil_to_gray(img: Image.Image, max_pixels: int, side: int, orientation: int) -> np.ndarray:
    """The decoded image as grayscale 0..1, reduced to at most ``side``, its EXIF
    ``orientation`` applied."""
    _check_size(img, max_pixels)  # again, decoded: what it holds, not what its header said
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    elif img.mode == "1":
        img = img.convert("L")
    elif img.mode.startswith("I;16"):  # 16-bit: as 32-bit integers, which reduce() takes
        img = img.convert("I")
    if max(img.size) > side:  # far more pixels than a 20-pixel digit needs: shrink
        img = img.reduce(-(-max(img.size) // side))  # early, before any other step
    if orientation in TRANSPOSE:  # EXIF orientation, applied to the reduced image
        img = img.transpose(TRANSPOSE[orientation])
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img.convert("RGBA"))
    if img.mode in ("I", "F"):
        a = np.asarray(img, dtype=np.float64)  # float64: float32 ranges overflow in float32
        if not np.isfinite(a).all():
            raise ImageError("the image holds NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        if not hi > lo:
            return np.zeros(a.shape, np.float32)
        return ((a - lo) / (hi - lo)).astype(np.float32)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


ORIENTATION = 0x0112  # the EXIF tag, and how ImageOps.exif_transpose undoes each value
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _array_to_gray(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
        a = np.moveaxis(a, 0, -1)  # (C, H, W) -> (H, W, C)
    if a.ndim == 3:
        if a.shape[-1] == 4:
            alpha = _to_unit(a[..., 3:4])
            a = _to_unit(a[..., :3]) * alpha + (1 - alpha)
        a = _to_unit(a).mean(axis=-1) if a.shape[-1] in (3, 4) else _to_unit(a[..., 0])
    if a.ndim != 2 or a.size == 0:
        raise ImageError(f"an image array must be (H, W), (H, W, C) or (C, H, W), not {a.shape}")
    return _to_unit(a)


def _to_unit(a: np.ndarray) -> np.ndarray:
    """Pixels as float32 in 0..1: 0..1 floats as they are, 0..255 values (any dtype) / 255,
    larger ranges (16-bit scans) by their maximum."""
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ImageError("the image holds NaN or infinite values")
    top = float(a.max(initial=0))
    if top <= 1.0:
        return a
    return a / 255.0 if top <= 255.0 else a / top


STYLES = ("mnist", "fashion")


def to_mnist(gray: np.ndarray, style: str = "mnist") -> Preprocessed:
    """A grayscale image (H, W) in 0..1, either polarity, as a 28x28 image of the dataset's kind.

    ``style`` is how the dataset's own images were made: "mnist" (MNIST, KMNIST: ink fitted
    into a 20x20 box, centred by mass, strokes saturated) or "fashion" (Fashion-MNIST: the
    item's longest edge scaled to 28, centred by its box, its shades kept).
    """
    if style == "fashion":
        return _to_fashion(gray)
    if style != "mnist":
        raise ValueError(f"unknown preprocessing style {style!r} (known: {', '.join(STYLES)})")
    steps: dict[str, np.ndarray] = {"input": gray}
    inverted, ink = _digit_ink(gray, steps)
    top, bottom, left, right = _bounding_box(ink)
    crop = _thicken(ink[top:bottom, left:right])
    steps["crop"] = crop
    boxed = _fit_box(crop, BOX)
    steps["box20"] = boxed
    image = _center_by_mass(boxed, SIZE)
    steps["mnist"] = image
    return Preprocessed(image=image, steps=steps, inverted=inverted)


def _digit_ink(gray: np.ndarray, steps: dict, depth: int = 0) -> tuple[bool, np.ndarray]:
    """(whether the image was dark ink on light, the digit's ink 0..1 bright on black, cropped
    near it at up to CROP_SIDE pixels a side); the other ink (specks, shadows, lines, frames)
    is gone. Found on a reduced copy (ink.py), cut from the full image."""
    inverted = _background_is_light(gray)
    x = (1.0 - gray if inverted else gray).astype(np.float32, copy=False)  # ink bright
    if depth == 0:
        steps["polarity"] = x
    small, f = ink_.reduce(x, ink_.WORK_SIDE)
    bg = ink_.background(small, ink_.stroke_width(small > _otsu(small)))
    residual = small - bg  # >= 0: an opening never rises above the image
    threshold = _otsu(residual)
    mask = residual > threshold
    if np.count_nonzero(mask) < 3 or residual[mask].mean() < 0.05:
        raise ImageError("no ink found (a blank or nearly uniform image)")
    labels, comps = ink_.components(mask, residual)
    inside = ink_.frame_inside(labels, comps) if depth < 2 else None
    if inside is not None:  # a digit in a frame or a box: look again inside it
        t, b, left, r = (v * f for v in inside)
        return _digit_ink(gray[t:b, left:r], steps, depth + 1)
    keep = ink_.digit_parts(labels, comps)
    rows, cols = np.flatnonzero(keep.any(1)), np.flatnonzero(keep.any(0))
    box = (max(rows[0] - 1, 0), rows[-1] + 2, max(cols[0] - 1, 0), cols[-1] + 2)  # work pixels
    t, b, left, r = (v * f for v in box)
    crop, g = ink_.reduce(x[t:b, left:r], CROP_SIDE)
    near = ink_.grow(keep[box[0] : box[1], box[2] : box[3]])
    size = crop.shape[::-1]
    bg_crop = _resize(bg[box[0] : box[1], box[2] : box[3]], size, Image.Resampling.BILINEAR)
    near_crop = _resize(near.astype(np.float32), size, Image.Resampling.NEAREST)
    ink = np.clip(crop - bg_crop, 0, None) * near_crop
    ink, floor, scale = _stretch(ink, threshold)
    steps["ink"] = np.clip((residual * keep - floor) / max(scale - floor, 1e-6), 0, 1)
    return inverted, ink


def _resize(a: np.ndarray, size: tuple[int, int], resample) -> np.ndarray:
    if a.shape[::-1] == tuple(size):
        return a
    return ink_.resize(a, size, resample)


def _stretch(ink: np.ndarray, threshold: float) -> tuple[np.ndarray, float, float]:
    """Strokes fully bright, paper noise black, the soft edges (MNIST's anti-aliasing) between:
    (the ink so stretched, the paper's noise floor, the strokes' level)."""
    mask = ink > threshold
    paper = ink[~mask]  # mostly background, plus the strokes' faint fringe
    floor = 0.0
    if paper.size:
        # the ink is >= 0 and 0 away from the digit: where most of the paper is exactly 0, so
        # are its median and its median deviation, with no partition of the whole crop
        lit = paper[paper > 0]
        if 2 * lit.size >= paper.size:
            median = _quantile(paper, 50)
            floor = median + 3 * 1.4826 * _quantile(np.abs(paper - median), 50)  # noise level
    scale = _quantile(ink[mask], 95) if mask.any() else float(ink.max())
    return np.clip((ink - floor) / max(scale - floor, 1e-6), 0, 1).astype(np.float32), floor, scale


def _ink(gray: np.ndarray) -> tuple[dict, bool, np.ndarray]:
    """The first steps of every style: (steps so far, whether the input was inverted, the ink
    bright on black with uneven lighting and paper tone removed)."""
    inverted = _background_is_light(gray)
    x = 1.0 - gray if inverted else gray  # ink bright, background dark
    ink = np.clip(x - _background(x), 0, None)
    return {"input": gray, "polarity": x}, inverted, ink


def _to_fashion(gray: np.ndarray) -> Preprocessed:
    """Fashion-MNIST's recipe (Xiao et al., 2017): trim to the item, longest edge to 28,
    centre on the canvas, negate (a light background becomes black). Shades are kept, only
    scaled so the brightest part is white; nothing is thickened or centred by mass."""
    steps, inverted, ink = _ink(gray)
    top = _quantile(ink, 99.5)
    if top < 0.05:
        raise ImageError("nothing found (a blank or nearly uniform image)")
    ink = np.minimum(ink / top, 1).astype(np.float32)
    steps["ink"] = ink
    t, b, left, right = _bounding_box(ink, trim=0.0005)
    crop = ink[t:b, left:right]
    steps["crop"] = crop
    boxed = _fit_box(crop, SIZE)
    h, w = boxed.shape
    image = np.zeros((SIZE, SIZE), np.float32)
    image[(SIZE - h) // 2 : (SIZE - h) // 2 + h, (SIZE - w) // 2 : (SIZE - w) // 2 + w] = boxed
    steps["mnist"] = image
    return Preprocessed(image=image, steps=steps, inverted=inverted)


def _background_is_light(gray: np.ndarray) -> bool:
    """Paper or canvas is what the border mostly shows; a light border means dark ink."""
    h, w = gray.shape
    b = max(1, min(h, w) // 20)
    strips = (gray[:b], gray[-b:], gray[:, :b], gray[:, -b:])
    n = sum(s.size for s in strips)
    light = sum(int(np.count_nonzero(s > 0.5)) for s in strips)
    # the median is above 0.5 when both middle values are (more than half of the border is
    # light), not when neither is; only a tie between them needs the values themselves
    if light >= n - (n - 1) // 2:
        return True
    if light < n // 2:
        return False
    return _quantile(np.concatenate([s.ravel() for s in strips]), 50) > 0.5


def _quantile(values: np.ndarray, q: float) -> float:
    """``np.percentile(values, q)`` (linear interpolation), without its per-call overhead:
    a served request computes several of these on a small image."""
    v = np.ravel(values)
    pos = q / 100 * (v.size - 1)
    lo = int(pos)
    hi = min(lo + 1, v.size - 1)
    part = np.partition(v, (lo, hi))
    a, b = float(part[lo]), float(part[hi])
    return a + (b - a) * (pos - lo)


def _background(x: np.ndarray, blocks: int = 8) -> np.ndarray:
    """A smooth estimate of the background level: the 20th percentile of each block, upsampled.

    With ink bright, the low percentile of a block is its paper unless ink covers most of it.
    """
    h, w = x.shape
    if min(h, w) < 4 * blocks:  # small images (drawings, MNIST itself): one flat level
        return np.full_like(x, _quantile(x, 20))
    ys = np.linspace(0, h, blocks + 1).astype(int)
    xs = np.linspace(0, w, blocks + 1).astype(int)
    grid = np.array(
        [
            [_quantile(x[y0:y1, x0:x1], 20) for x0, x1 in zip(xs[:-1], xs[1:], strict=True)]
            for y0, y1 in zip(ys[:-1], ys[1:], strict=True)
        ],
        dtype=np.float32,
    )
    smooth = Image.fromarray(grid, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(smooth, dtype=np.float32)


def _otsu(values: np.ndarray, bins: int = 256) -> float:
    """The threshold that best separates ink from background (Otsu's method)."""
    top = max(float(values.max()), 1e-6)
    index = (values.ravel() * (bins / top)).astype(np.intp)  # 0 .. bins (the top value)
    hist = np.bincount(index, minlength=bins + 1).astype(np.float64)  # np.histogram, cheaper
    hist[bins - 1] += hist[bins]  # the top value belongs to the last bin
    hist = hist[:bins]
    centers = (np.arange(bins) + 0.5) * (top / bins)
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(centers[int(np.argmax(between))])


def _bounding_box(ink: np.ndarray, trim: float = 0.002) -> tuple[int, int, int, int]:
    """Rows and columns holding the ink, trimming ``trim`` of its mass at each end (specks)."""

    def span(profile: np.ndarray) -> tuple[int, int]:
        total = profile.sum()
        if total <= 0:  # no ink left (all of it under the paper's noise floor): nothing to trim
            return 0, len(profile)
        c = np.cumsum(profile) / total
        lo = int(np.searchsorted(c, trim))
        hi = int(np.searchsorted(c, 1 - trim)) + 1
        return lo, max(hi, lo + 1)

    top, bottom = span(ink.sum(axis=1))
    left, right = span(ink.sum(axis=0))
    return top, bottom, left, right


# MNIST's strokes, measured in its 28x28 images as 2 * area / perimeter of the ink above 0.5:
# median 2.85 pixels, 5th percentile 2.1. Thinner strokes (a fine pen on a large canvas) are
# thickened to THIN_TARGET; thicker ones are left alone.
THIN_LIMIT, THIN_TARGET = 2.0, 2.4


def _thicken(crop: np.ndarray) -> np.ndarray:
    """Dilate strokes that would end up thinner than MNIST's after scaling to the 20-pixel box."""
    if max(crop.shape) > CROP_SIDE:  # _digit_ink's crops never are; other callers' may be
        crop = _fit_box(crop, CROP_SIDE)
    scale = BOX / max(crop.shape)  # box pixels per crop pixel
    width = ink_.stroke_width(crop > 0.5) * scale
    if width >= THIN_LIMIT:
        return crop
    steps = min(int(np.ceil((THIN_TARGET - width) / (2 * scale))), max(crop.shape) // 8)
    if steps < 1:
        return crop
    h, w = crop.shape
    out = np.zeros((h + 2 * steps, w + 2 * steps), np.float32)  # room for the wider strokes
    out[steps : steps + h, steps : steps + w] = crop
    # each pixel of dilation adds one on each side of a stroke: ``steps`` 3x3 maximum filters
    # in one (2 * steps + 1) square ("nearest" repeats the edge, which a maximum ignores)
    return ndimage.maximum_filter(out, size=2 * steps + 1, mode="nearest")


def _fit_box(crop: np.ndarray, box: int) -> np.ndarray:
    """Scale so the longer side is ``box`` pixels, keeping the aspect ratio, anti-aliased."""
    h, w = crop.shape
    s = box / max(h, w)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    out = ink_.resize(crop, size, Image.Resampling.LANCZOS)
    return np.minimum(np.maximum(out, 0), 1)  # Lanczos rings slightly past 0..1


def _center_by_mass(digit: np.ndarray, size: int) -> np.ndarray:
    """Place ``digit`` in a size x size field with its centre of mass at the field's centre."""
    h, w = digit.shape
    total = digit.sum()
    cy = digit.sum(axis=1) @ np.arange(h) / total if total > 0 else (h - 1) / 2
    cx = digit.sum(axis=0) @ np.arange(w) / total if total > 0 else (w - 1) / 2
    # MNIST's centres of mass sit at pixel (14, 14) of 0..27 (mean over its training set)
    top = int(round(size / 2 - cy))
    left = int(round(size / 2 - cx))
    top, left = min(max(top, 0), size - h), min(max(left, 0), size - w)
    field_ = np.zeros((size, size), dtype=np.float32)
    field_[top : top + h, left : left + w] = digit
    return field_


def preprocess(source, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Preprocessed:
    """:func:`load_image` then :func:`to_mnist`, naming the source in any error."""
    gray = load_image(source, max_pixels=max_pixels)
    try:
        return to_mnist(gray)
    except ImageError as e:
        if isinstance(source, (str, os.PathLike)):
            raise ImageError(f"{Path(source)}: {e}") from None
        raise


def as_drawn(gray: np.ndarray) -> Preprocessed:
    """The whole image shrunk to 28x28, ink bright: no box, no centring (the drawing page's
    "as drawn" switch). Where the ink is in the picture is where the model sees it, so a
    digit moved across the picture moves across the model's input, as in ``probe --shift``.

    A non-square image is padded to a square with its background first; the shrinking
    averages each block of pixels (box filter), as MNIST's own anti-aliasing did.
    """
    inverted = _background_is_light(gray)
    x = (1.0 - gray if inverted else gray).astype(np.float32)  # ink bright, background dark
    x = np.clip(x - _quantile(x, 50), 0, None)  # paper's own tone (most pixels) is black
    h, w = x.shape
    side = max(h, w)
    square = np.zeros((side, side), np.float32)
    square[(side - h) // 2 : (side - h) // 2 + h, (side - w) // 2 : (side - w) // 2 + w] = x
    small = Image.fromarray(square).resize((SIZE, SIZE), Image.Resampling.BOX)
    image = np.asarray(small, dtype=np.float32)
    top = float(image.max())
    if top < 0.05:
        raise ImageError("no ink found (a blank or nearly uniform image)")
    image = np.clip(image / top, 0, 1).astype(np.float32)  # the strongest stroke is white
    steps = {"input": gray, "polarity": x, "mnist": image}
    return Preprocessed(image=image, steps=steps, inverted=inverted)
