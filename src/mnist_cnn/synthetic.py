"""MNIST test digits rendered the way people's own images arrive: photos, scans, exports.

Used to check that preprocessing recovers MNIST-like digits (benchmarks/realistic.py and the
tests): each rendering is an encoded image file, as it would be read from disk.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

STYLES = ("photo", "scan", "rgba-export", "chalkboard", "thin-pen")


def render(digit: np.ndarray, style: str, rng: np.random.Generator) -> bytes:
    """Encode a 28x28 uint8 MNIST digit as a realistic image file of the given style."""
    ink = _upscale(digit, size=int(rng.integers(60, 260)))
    if style == "thin-pen":  # a fine pen: strokes much thinner than MNIST's, relative to size
        ink = np.clip(ink * 1.6 - 0.9, 0, 1)
    canvas = _place(ink, rng, margin=rng.uniform(0.3, 1.5))
    h, w = canvas.shape
    if style == "rgba-export":  # a paint program's transparent export: dark ink, alpha = ink
        color = rng.integers(0, 60, size=3)
        rgba = np.zeros((h, w, 4), np.uint8)
        rgba[..., :3] = color
        rgba[..., 3] = np.round(canvas * 255).astype(np.uint8)
        return _encode(Image.fromarray(rgba, "RGBA"), "PNG")
    if style == "chalkboard":  # light ink on a dark, uneven board
        board = rng.uniform(0.1, 0.3) * _lighting(h, w, rng, depth=0.5)
        chalk = rng.uniform(0.75, 0.95)
        gray = board * (1 - canvas) + chalk * canvas
        gray = _noise(gray, rng, sigma=rng.uniform(0.01, 0.04))
        return _encode(_to_rgb(gray, rng), "PNG")
    paper = rng.uniform(0.8, 0.97) * _lighting(h, w, rng, depth=0.35 if style == "photo" else 0.08)
    pen = rng.uniform(0.05, 0.3)
    gray = paper * (1 - canvas) + pen * canvas
    gray = _noise(gray, rng, sigma=rng.uniform(0.01, 0.05 if style == "photo" else 0.02))
    img = _to_rgb(gray, rng)
    if style == "photo":
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        return _encode(img, "JPEG", quality=int(rng.integers(35, 85)))
    return _encode(img, "PNG")


def _upscale(digit: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.asarray(digit, np.uint8), "L").resize(
        (size, size), Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(img, np.float32) / 255.0, 0, 1)


def _place(ink: np.ndarray, rng: np.random.Generator, margin: float) -> np.ndarray:
    s = ink.shape[0]
    h, w = (
        int(s * (1 + margin * rng.uniform(0.6, 1.4))),
        int(s * (1 + margin * rng.uniform(0.6, 1.4))),
    )
    canvas = np.zeros((h, w), np.float32)
    top, left = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    canvas[top : top + s, left : left + s] = ink
    return canvas


def _lighting(h: int, w: int, rng: np.random.Generator, depth: float) -> np.ndarray:
    """A smooth gradient from 1 down to 1 - depth across the image, in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(angle) * xs / w + np.sin(angle) * ys / h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return 1 - depth * t


def _noise(gray: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    return np.clip(gray + rng.normal(0, sigma, gray.shape).astype(np.float32), 0, 1)


def _to_rgb(gray: np.ndarray, rng: np.random.Generator) -> Image.Image:
    tint = rng.uniform(0.92, 1.0, size=3).astype(np.float32)  # warm paper, cool light
    rgb = np.clip(gray[..., None] * tint, 0, 1)
    return Image.fromarray(np.round(rgb * 255).astype(np.uint8), "RGB")


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kw)
    return buffer.getvalue()


def ink_crop(digit: np.ndarray) -> np.ndarray:
    """A 28x28 uint8 MNIST digit (or any ink-bright image) cut to its ink, as float 0..1."""
    ink = np.asarray(digit, np.float32)
    ink = ink / 255.0 if ink.max() > 1 else ink
    rows, cols = np.nonzero(ink.any(axis=1))[0], np.nonzero(ink.any(axis=0))[0]
    return ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


Box = tuple[int, int, int, int]


def compose_number(
    inks: list[np.ndarray], rng: np.random.Generator, height: int = 40, touching: bool = False
) -> tuple[np.ndarray, list[Box]]:
    """Digits (ink crops, bright on black) written on one line, as people write numbers:
    (canvas (H, W) float32 ink 0..1, each digit's box (x0, y0, x1, y1), x1 and y1 exclusive).

    Each digit's height varies by +-15% around ``height``, its baseline by +-8%; neighbours are
    10-50% of the height apart, or, with ``touching``, some pairs (at least one) overlap by 1-4
    pixels.
    """
    scaled = []
    for ink in inks:
        h = max(4, round(height * rng.uniform(0.85, 1.15)))
        w = max(1, round(ink.shape[1] * h / ink.shape[0]))
        img = Image.fromarray(ink.astype(np.float32), "F").resize((w, h), Image.Resampling.BICUBIC)
        scaled.append(np.clip(np.asarray(img, np.float32), 0, 1))
    touch = rng.random(len(inks) - 1) < 0.5 if touching else np.zeros(len(inks) - 1, bool)
    if touching and len(inks) > 1 and not touch.any():
        touch[rng.integers(len(touch))] = True
    margin = height
    x, placed = margin, []
    for i, ink in enumerate(scaled):
        if i:
            x += -int(rng.integers(1, 5)) if touch[i - 1] else round(rng.uniform(0.1, 0.5) * height)
        y = margin + round(rng.uniform(-0.08, 0.08) * height) + (height - ink.shape[0]) // 2
        placed.append((x, y))
        x += ink.shape[1]
    canvas = np.zeros((2 * margin + round(1.2 * height), x + margin), np.float32)
    boxes = []
    for (x0, y0), ink in zip(placed, scaled, strict=True):
        h, w = ink.shape
        region = canvas[y0 : y0 + h, x0 : x0 + w]
        np.maximum(region, ink, out=region)
        boxes.append((x0, y0, x0 + w, y0 + h))
    return canvas, boxes


def number_image(canvas: np.ndarray, rng: np.random.Generator, photo: bool) -> bytes:
    """An ink canvas as an image file: dark pen on clean white (PNG), or like a phone photo of
    paper (uneven light, tinted paper, noise, blur, JPEG)."""
    if not photo:
        return _encode(Image.fromarray(np.round(255 * (1 - canvas)).astype(np.uint8), "L"), "PNG")
    h, w = canvas.shape
    paper = rng.uniform(0.75, 0.95) * _lighting(h, w, rng, depth=0.35)
    gray = paper * (1 - canvas) + rng.uniform(0.05, 0.3) * canvas
    gray = _noise(gray, rng, sigma=rng.uniform(0.01, 0.05))
    img = _to_rgb(gray, rng).filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    return _encode(img, "JPEG", quality=int(rng.integers(40, 90)))
