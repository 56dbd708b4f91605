"""Finding the digits of a whole number in one image: ink, components, digits, left to right.

:func:`segment` turns a grayscale image into :class:`Digit` s: the ink is found as the
preprocessing finds it (polarity, background removal, Otsu's threshold), split into connected
components (8-connected: :func:`mnist_cnn.ink.components`, as for a single digit), and the
components are grouped into digits: a piece too short to be a digit (a 5's detached bar, the dot
of a broken stroke) joins the digit it stands over; pieces whose columns overlap (a 4 written
in two strokes) join when the classifier reads them better together. A piece wider than a digit
(digits that touch) is cut at the valleys of its column profile, where the classifier agrees.
Each digit is then handed to :func:`~mnist_cnn.preprocessing.to_mnist`, exactly as ``predict``
preprocesses a whole image.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import ink as ink_
from .preprocessing import SIZE, ImageError, to_mnist
from .preprocessing import _ink as _remove_background  # polarity, lighting, paper tone
from .preprocessing import _otsu as _ink_threshold

WORK_SIDE = 1024  # components are found at most this size (a 12-megapixel photo: 1/4 side)
SPECK = 0.02  # components lighter than this share of the heaviest are specks ...
SHORT = 0.5  # ... and those shorter than this share of the tallest are parts, not digits
MARGIN = 0.6  # of a digit's height around it, cropped for to_mnist (its background needs room)
NARROW = 1.3  # pieces narrower than this many typical digit widths are never cut
# Width / height of MNIST's digits by class: median and spread of its log (the ink above 50 of
# 20,000 training digits). A piece read as a 7 but as wide as two digits is unlikely a 7.
ASPECT = np.array([0.9, 0.4, 0.95, 0.8, 0.8, 0.95, 0.7, 0.8, 0.8, 0.7])
ASPECT_SPREAD = np.array([0.19, 0.45, 0.22, 0.21, 0.2, 0.26, 0.22, 0.21, 0.22, 0.2])
NEAR = 0.1  # of the line's height: pieces this close may be one digit
KEEP_WHOLE = 0.5  # a cut must score this much better than the whole (log units)
MAX_CUTS = 7  # touching digits in one piece that are looked for at most

# (N, 28, 28) images in 0..1 -> (N, classes) probabilities: the model, for checking hypotheses
Classify = Callable[[np.ndarray], np.ndarray]


@dataclass
class Digit:
    """One digit found in an image: where it is, and the image ``to_mnist`` takes for it."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the input's pixels (x1, y1 exclusive)
    image: np.ndarray  # (h, w) float32 0..1: this digit's ink alone, bright on black


@dataclass
class Part:
    """A connected piece of ink (or several joined), in work-scale pixels."""

    x0: int
    y0: int
    x1: int
    y1: int
    mass: float  # its ink, summed
    labels: tuple[int, ...]

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    def join(self, other: Part) -> Part:
        return Part(
            min(self.x0, other.x0),
            min(self.y0, other.y0),
            max(self.x1, other.x1),
            max(self.y1, other.y1),
            self.mass + other.mass,
            self.labels + other.labels,
        )

    def overlap(self, other: Part) -> int:
        """Columns both cover."""
        return max(0, min(self.x1, other.x1) - max(self.x0, other.x0))


def parts(comps: list[ink_.Component]) -> list[Part]:
    """Each component as a part, in the order of their labels (the image's rows, top first)."""
    return [
        Part(c.box[2], c.box[0], c.box[3], c.box[1], c.mass, (c.label,))
        for c in sorted(comps, key=lambda c: c.label)
    ]


# ---- the ink, and its pieces grouped into digits ----------------------------------------------


@dataclass
class Page:
    """The image at work scale: its ink (bright on black, 0..1), components, and the scale."""

    ink: np.ndarray
    labels: np.ndarray
    comps: list[ink_.Component]
    scale: int  # input pixels per work pixel

    def image(self, part: Part) -> np.ndarray:
        """``part``'s own ink (and its soft edges) alone, within its columns, on black, with a
        margin around it: to_mnist's input."""
        pad = max(2, round(MARGIN * part.height))
        h, w = self.ink.shape
        top, left = max(part.y0 - 2, 0), max(part.x0 - 2, 0)
        bottom, right = min(part.y1 + 2, h), min(part.x1 + 2, w)
        own = np.isin(self.labels[top:bottom, left:right], part.labels)
        own[:, : part.x0 - left] = False
        own[:, part.x1 - left :] = False
        for _ in range(2):  # two pixels more around it: the strokes' soft edges
            grown = own.copy()
            grown[1:] |= own[:-1]
            grown[:-1] |= own[1:]
            grown[:, 1:] |= grown[:, :-1].copy()
            grown[:, :-1] |= grown[:, 1:].copy()
            own = grown
        crop = np.where(own, self.ink[top:bottom, left:right], 0).astype(np.float32)
        return np.pad(crop, pad)

    def box(self, part: Part) -> tuple[int, int, int, int]:
        """``part``'s box in the input's pixels."""
        s = self.scale
        return (part.x0 * s, part.y0 * s, part.x1 * s, part.y1 * s)


def find_ink(gray: np.ndarray) -> Page:
    """The image's ink at work scale and its connected components."""
    scale = max(1, -(-max(gray.shape) // WORK_SIDE))
    if scale > 1:  # box-reduce: plenty of pixels for finding digits, far cheaper
        h, w = (gray.shape[0] // scale) * scale, (gray.shape[1] // scale) * scale
        gray = gray[:h, :w].reshape(h // scale, scale, w // scale, scale).mean(axis=(1, 3))
    _, _, ink = _remove_background(gray)
    mask = ink > _ink_threshold(ink)
    if mask.sum() < 3 or ink[mask].mean() < 0.05:
        raise ImageError("no ink found (a blank or nearly uniform image)")
    ink = ink.astype(np.float32)
    labels, comps = ink_.components(mask, ink)
    return Page(ink, labels, comps, scale)


def candidate_digits(page: Page) -> list[Part]:
    """Components without specks, short pieces joined to the digit they stand over, in x order."""
    found = parts(page.comps)
    heaviest = max(p.mass for p in found)
    found = [p for p in found if p.mass >= SPECK * heaviest]
    tall = max(p.height for p in found)
    big = sorted((p for p in found if p.height >= SHORT * tall), key=lambda p: p.x0 + p.x1)
    for small in (p for p in found if p.height < SHORT * tall):
        near = max(big, key=lambda b: (b.overlap(small), -_gap(b, small)))
        if near.overlap(small) > 0 or _gap(near, small) <= 0.25 * near.height:
            big[big.index(near)] = near.join(small)
        # else: a dot, a dash or a speck away from every digit
    return sorted(big, key=lambda p: p.x0 + p.x1)


def _gap(a: Part, b: Part) -> int:
    return max(a.x0 - b.x1, b.x0 - a.x1, 0)


# ---- hypotheses checked by the classifier ----------------------------------------------------


def _scores(page: Page, pieces: list[Part], classify: Classify) -> np.ndarray:
    """How well each piece reads as one digit, in one batch: the log of the classifier's top
    probability, less how unusual the piece's width is for that digit (log-normal, in log
    units). A piece with no ink of its own (a cut through a faint stroke's fringe) scores
    -inf: that hypothesis is never chosen, and the number is still read."""
    images, empty = [], []
    for p in pieces:
        try:
            images.append(to_mnist(page.image(p)).image)
        except ImageError:
            images.append(np.zeros((SIZE, SIZE), np.float32))
            empty.append(len(images) - 1)
    probs = classify(np.stack(images))
    top = probs.argmax(axis=1)
    score = np.log(probs[np.arange(len(pieces)), top] + 1e-9)
    if probs.shape[1] == len(ASPECT):
        aspect = np.array([p.width / max(p.height, 1) for p in pieces])
        z = np.log(aspect / ASPECT[top]) / ASPECT_SPREAD[top]
        score -= 0.5 * z**2
    score[empty] = -np.inf
    return score


def join_overlapping(page: Page, digits: list[Part], classify: Classify) -> list[Part]:
    """Neighbours whose columns mostly overlap or nearly meet (a 4 written in two strokes)
    joined where the classifier reads them better as one digit than as two."""
    line = float(np.median([d.height for d in digits]))

    def close(a: Part, b: Part) -> bool:
        return a.overlap(b) >= 0.5 * min(a.width, b.width) or _gap(a, b) <= NEAR * line

    pairs = [i for i in range(len(digits) - 1) if close(digits[i], digits[i + 1])]
    if not pairs:
        return digits
    pieces = [x for i in pairs for x in (digits[i], digits[i + 1], digits[i].join(digits[i + 1]))]
    p = _scores(page, pieces, classify).reshape(-1, 3)
    better = {i for i, (a, b, both) in zip(pairs, p, strict=True) if both > (a + b) / 2}
    out: list[Part] = []
    i = 0
    while i < len(digits):
        out.append(digits[i].join(digits[i + 1]) if i in better else digits[i])
        i += 2 if i in better else 1
    return out


def _column_valleys(page: Page, part: Part, edge: int, keep: int = 4) -> list[int]:
    """Columns inside ``part``, ``edge`` or more from its sides and from each other, where its
    ink is thinnest, best first."""
    profile = _own(page, part).sum(axis=0).astype(np.float64)
    smooth = np.convolve(profile, np.ones(3) / 3, mode="same")
    inner = np.arange(edge, part.width - edge)
    chosen: list[int] = []
    for c in inner[np.argsort(smooth[inner], kind="stable")]:
        if all(abs(c - k) >= edge for k in chosen):
            chosen.append(int(c))
            if len(chosen) == keep:
                break
    return [part.x0 + c for c in chosen]


def _own(page: Page, part: Part) -> np.ndarray:
    """Which pixels of ``part``'s box are its own ink."""
    return np.isin(page.labels[part.y0 : part.y1, part.x0 : part.x1], part.labels)


def split_wide(
    page: Page, part: Part, classify: Classify, typical: float, line: float, depth: int = 0
) -> list[Part]:
    """``part`` cut at valleys of its column profile, recursively, while it is wider than
    ``typical`` digits and the classifier reads the two halves better than the whole.
    ``line``: the height of the number's digits."""
    if part.width < NARROW * typical or depth >= MAX_CUTS:
        return [part]
    cuts = _column_valleys(page, part, edge=max(2, round(0.2 * max(part.height, line))))
    if not cuts:
        return [part]
    halves = [(_narrowed(page, part, part.x0, c), _narrowed(page, part, c, part.x1)) for c in cuts]
    p = _scores(page, [part] + [h for pair in halves for h in pair], classify)
    both = np.minimum(p[1::2], p[2::2])  # a cut is as good as its worse half
    best = int(np.argmax(both))
    if both[best] <= p[0] + KEEP_WHOLE:
        return [part]  # one digit, as wide as some are
    left, right = halves[best]
    return split_wide(page, left, classify, typical, line, depth + 1) + split_wide(
        page, right, classify, typical, line, depth + 1
    )


def _narrowed(page: Page, part: Part, x0: int, x1: int) -> Part:
    """``part`` cut to columns x0..x1, its rows shrunk to the ink that is left."""
    cut = Part(x0, part.y0, x1, part.y1, part.mass, part.labels)
    rows = np.nonzero(_own(page, cut).any(axis=1))[0]
    if rows.size:
        cut.y0, cut.y1 = part.y0 + int(rows[0]), part.y0 + int(rows[-1]) + 1
    return cut


def segment(gray: np.ndarray, classify: Classify) -> list[Digit]:
    """The digits of a number written in ``gray`` ((H, W) in 0..1, either polarity), left to
    right. ``classify`` maps (N, 28, 28) preprocessed images to class probabilities."""
    page = find_ink(gray)
    digits = join_overlapping(page, candidate_digits(page), classify)
    line = float(np.median([d.height for d in digits]))
    # a digit's width: the median of the number's parts when they are many enough to say, and
    # at least MNIST's median width for the height (0.8), which a few 1s would hide
    typical = 0.8 * line
    if len(digits) >= 3:
        typical = max(typical, float(np.median([d.width for d in digits])))
    pieces = [p for part in digits for p in split_wide(page, part, classify, typical, line)]
    return [Digit(page.box(p), page.image(p)) for p in pieces]


def read_number(gray: np.ndarray, classify: Classify, whole=None):
    """(digits, their Preprocessed, their probabilities (N, classes)): the number in ``gray``,
    each digit preprocessed as ``predict`` preprocesses an image, classified in one batch.

    An image holding one digit is preprocessed whole, so that it reads exactly as ``predict``
    reads it: by ``whole()`` where given (predict's own path from the image's source, which
    may decode it at another size), else ``to_mnist(gray)``."""
    digits = segment(gray, classify)
    if len(digits) == 1:
        pres = [whole() if whole is not None else to_mnist(gray)]
    else:
        pres = [to_mnist(d.image) for d in digits]
    return digits, pres, classify(np.stack([p.image for p in pres]))


def number_record(
    name: str | None,
    digits: list[Digit],
    probs: np.ndarray,
    classes: list[str],
    scale: tuple[float, float] = (1.0, 1.0),
) -> dict:
    """``{"file", "number", "digits": [{"label", "probability", "box"}], "probability"}``;
    ``scale``: (x, y) from the pixels the digits were found in to the image's own."""
    labels = probs.argmax(axis=1)
    sx, sy = scale
    found = [
        {
            "label": int(k),
            "probability": float(p[k]),
            "box": [
                round(d.box[0] * sx),
                round(d.box[1] * sy),
                round(d.box[2] * sx),
                round(d.box[3] * sy),
            ],
        }
        for k, p, d in zip(labels, probs, digits, strict=True)
    ]
    return {
        "file": name,
        "number": "".join(classes[k] for k in labels),
        "digits": found,
        "probability": float(np.prod(probs.max(axis=1))),  # the product of the digits'
    }
