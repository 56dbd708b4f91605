"""Finding a digit's ink in a real capture: background, connected components, frames.

People's images are not MNIST's clean fields: phone photos have uneven light, shadows, paper
folds and a desk around the page; scans have specks and ruled lines; drawings sit on big
canvases or inside a filled box. :func:`find_ink` works on a reduced copy of the image (the
expensive steps never see more than ``WORK_SIDE`` pixels a side) and says where the digit is:

- the background is a grey *opening* (the paper's level where no ink is wider than the
  structuring element), which follows lighting but cannot eat a stroke thinner than it;
- the ink is split into connected components; the digit is the heaviest one away from the
  border (or the heaviest of all), with the parts near it (a 5's flag, a broken stroke);
  specks, shadows, ruled lines and folds elsewhere are dropped;
- a rectangle around other ink (a cell of a form, a filled box on a canvas) is a frame: the
  caller looks again inside it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

# The digit is found at this size at most (its crop comes from the full image): 192 gave the same
# answers as 256 on the handwriting set and the renders, and 4x fewer pixels for a 193-256 px
# image; 128 merged a 7-pixel gap and kept a 3-pixel fold line at 320 px (tests/test_find_ink.py).
WORK_SIDE = 192
BACKGROUND_SIDE = 64  # the background (smooth by nature) is estimated at this size
PART_GAP = 0.25  # parts of the digit lie within this fraction of its size from it ...
PART_MASS = 0.03  # ... and weigh at least this fraction of its main part (else: specks)
MAIN_MASS = 0.15  # an inner component must weigh this much of the heaviest to be the digit
_EIGHT = np.ones((3, 3), bool)  # 8-connectivity: diagonal steps join a stroke


def reduce(x: np.ndarray, side: int) -> tuple[np.ndarray, int]:
    """``x`` box-averaged by a whole factor so its longer side is at most ``side``."""
    f = -(-max(x.shape) // side)
    if f <= 1:
        return x, 1
    h, w = x.shape[0] // f * f, x.shape[1] // f * f
    if h == 0 or w == 0:
        return x, 1
    # sums of strided views, rows then columns: 2f whole-array adds, far cheaper than numpy's
    # mean over the axes of a (h/f, f, w/f, f) reshape
    v = x[:h, :w]
    rows = v[0::f].astype(np.float32)  # (h/f, w)
    for i in range(1, f):
        rows += v[i::f]
    small = rows[:, 0::f].copy()  # (h/f, w/f)
    for j in range(1, f):
        small += rows[:, j::f]
    small *= np.float32(1 / (f * f))
    return small, f


def background(x: np.ndarray, stroke: float) -> np.ndarray:
    """The paper's level under bright ink: a grey opening with a square wider than the
    strokes (``stroke`` pixels), which removes every stroke but keeps lighting and paper
    edges, computed on a copy reduced to ``BACKGROUND_SIDE``."""
    small, f = reduce(x, BACKGROUND_SIDE)
    size = int(min(max(3 * stroke / f + 3, min(small.shape) / 8), min(small.shape)))
    opened = _opening(small, size)
    if f == 1:
        return opened
    # the reduced pixel (i, j) covers the full image's pixels i*f .. (i+1)*f - 1
    h, w = x.shape
    box = (0, 0, min(w / f, small.shape[1]), min(h / f, small.shape[0]))
    return np.minimum(resize(opened, (w, h), Image.Resampling.BILINEAR, box), x)


def resize(a: np.ndarray, size: tuple[int, int], resample, box=None) -> np.ndarray:
    """A float image resized by Pillow to ``size`` (width, height), as float32. Through raw
    bytes both ways: several times cheaper than ``Image.fromarray`` and ``np.asarray`` for the
    small images of a request."""
    h, w = a.shape
    data = np.ascontiguousarray(a, np.float32).tobytes()
    img = Image.frombuffer("F", (w, h), data, "raw", "F", 0, 1)
    out = img.resize(size, resample, box)
    return np.frombuffer(out.tobytes(), np.float32).reshape(size[1], size[0])


def _opening(x: np.ndarray, size: int) -> np.ndarray:
    """``ndimage.grey_opening(x, size=(size, size), mode="nearest")``, as the four 1-D passes it
    makes (a square is separable), without its wrappers' cost. The dilation's window sits one
    pixel earlier for an even size, as grey_dilation places it."""
    after = 0 if size % 2 else -1
    a, b = np.empty_like(x), np.empty_like(x)  # given outputs skip scipy's slow allocation
    ndimage.minimum_filter1d(x, size, 0, a, mode="nearest")
    ndimage.minimum_filter1d(a, size, 1, b, mode="nearest")
    ndimage.maximum_filter1d(b, size, 0, a, mode="nearest", origin=after)
    return ndimage.maximum_filter1d(a, size, 1, b, mode="nearest", origin=after)


def stroke_width(mask: np.ndarray) -> float:
    """The mean width of the strokes in ``mask``: 2 * area / perimeter."""
    inner = mask.copy()  # 4-neighbour erosion by shifts: far cheaper than ndimage's
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    area = np.count_nonzero(mask)  # count_nonzero: several times cheaper than a bool sum
    return 2 * area / max(area - np.count_nonzero(inner), 1)


def grow(mask: np.ndarray, pixels: int = 1) -> np.ndarray:
    """``mask`` dilated by a (2 * pixels + 1) square: shifted ORs along the rows, then along
    the columns (a few whole-array operations for the 1 or 2 pixels used here)."""
    rows = mask.copy()
    for s in range(1, pixels + 1):
        rows[s:] |= mask[:-s]
        rows[:-s] |= mask[s:]
    out = rows.copy()
    for s in range(1, pixels + 1):
        out[:, s:] |= rows[:, :-s]
        out[:, :-s] |= rows[:, s:]
    return out


@dataclass
class Component:
    label: int
    box: tuple[int, int, int, int]  # top, bottom, left, right (exclusive)
    area: int
    mass: float  # its summed ink
    border: bool  # touches the image's edge

    @property
    def size(self) -> int:
        return max(self.box[1] - self.box[0], self.box[3] - self.box[2])


def components(mask: np.ndarray, ink: np.ndarray) -> tuple[np.ndarray, list[Component]]:
    """The 8-connected components of ``mask``: (labels, heaviest first)."""
    labels, n = ndimage.label(mask, _EIGHT)
    if n == 0:
        return labels, []
    flat = labels.ravel()
    areas = np.bincount(flat, minlength=n + 1)
    masses = np.bincount(flat, weights=ink.ravel(), minlength=n + 1)
    h, w = mask.shape
    found = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        t, b, left, r = sl[0].start, sl[0].stop, sl[1].start, sl[1].stop
        border = t == 0 or left == 0 or b == h or r == w
        found.append(Component(i, (t, b, left, r), int(areas[i]), float(masses[i]), border))
    return labels, sorted(found, key=lambda c: -c.mass)


def _gap(a: tuple, b: tuple) -> int:
    """Pixels between two boxes (0 where they overlap or touch)."""
    dy = max(a[0] - b[1], b[0] - a[1], 0)
    dx = max(a[2] - b[3], b[2] - a[3], 0)
    return max(dy, dx)


def _union(a: tuple, b: tuple) -> tuple:
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _is_line(c: Component, shape: tuple[int, int]) -> bool:
    """A ruled line, fold or paper edge: thin, and crossing most of the image."""
    h, w = c.box[1] - c.box[0], c.box[3] - c.box[2]
    long, short = max(h, w), max(min(h, w), 1)
    spans = h >= 0.9 * shape[0] or w >= 0.9 * shape[1]
    return c.border and spans and long >= 6 * short


def digit_parts(labels: np.ndarray, comps: list[Component]) -> np.ndarray:
    """Where the digit is (a mask): the heaviest inner component (or the heaviest), the parts
    near it (a 5's flag, a 4's second stroke) and the fragments touching those (a broken
    stroke); specks, shadows and lines elsewhere are left out, even inside the digit's box."""
    heaviest = comps[0].mass
    inner = [c for c in comps if not c.border and c.mass >= MAIN_MASS * heaviest]
    plain = [c for c in comps if not _is_line(c, labels.shape)] or comps
    main = inner[0] if inner else plain[0]
    kept, box, mass = [main], main.box, main.mass
    changed = True
    while changed:  # a part found can bring the next within reach (heaviest first)
        changed = False
        for c in plain:
            reach = PART_GAP * max(box[1] - box[0], box[3] - box[2])
            if c in kept or c.mass < PART_MASS * mass or _gap(c.box, box) > reach:
                continue
            if not (c.border and c.mass > mass):  # not a shadow reaching in
                kept.append(c)
                box, mass = _union(box, c.box), mass + c.mass
                changed = True
                break
    keep = np.isin(labels, [c.label for c in kept]) if len(kept) > 1 else labels == main.label
    if len(kept) == len(plain):
        return keep
    # small pieces count only where they touch the digit (2 pixels away at most)
    t, b, left, r = box
    near = labels[max(t - 2, 0) : b + 2, max(left - 2, 0) : r + 2]
    grown = grow(keep[max(t - 2, 0) : b + 2, max(left - 2, 0) : r + 2], 2)
    touching = np.unique(near[grown & (near > 0)])
    small = [c.label for c in plain if c.mass < PART_MASS * mass and c.label in touching]
    return keep | np.isin(labels, small)


def frame_inside(labels: np.ndarray, comps: list[Component]) -> tuple | None:
    """The inside of a frame, if the image has one: a component that outlines a rectangle
    (or fills one) around other ink. A digit's own loops never cover their box's edges."""
    h, w = labels.shape
    for c in comps[:3]:
        t, b, left, r = c.box
        bh, bw = b - t, r - left
        if bh < 0.3 * h or bw < 0.3 * w or min(bh, bw) < 8:
            continue
        region = labels[t:b, left:r] == c.label
        k = max(1, min(bh, bw) // 16)  # frames in photos are not quite straight
        edges = [region[:k].any(0), region[-k:].any(0), region[:, :k].any(1), region[:, -k:].any(1)]
        if np.mean(np.concatenate(edges)) < 0.85:
            continue
        holes = ndimage.binary_fill_holes(region) & ~region
        if holes.sum() < 0.01 * bh * bw:
            continue
        rows, cols = np.flatnonzero(holes.any(1)), np.flatnonzero(holes.any(0))
        inside = (t + rows[0], t + rows[-1] + 1, left + cols[0], left + cols[-1] + 1)
        if region.mean() > 0.5:  # a filled box: its holes are the digit; give it a margin
            m = max(1, (inside[1] - inside[0] + inside[3] - inside[2]) // 16)
            inside = (
                max(inside[0] - m, t + k),
                min(inside[1] + m, b - k),
                max(inside[2] - m, left + k),
                min(inside[3] + m, r - k),
            )
        return inside
    return None
