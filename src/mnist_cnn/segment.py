"""Finding the digits of a whole number in one image: ink, pieces, cuts, the best reading.

:func:`segment` turns a grayscale image into :class:`Digit` s, left to right, by
recognition-based segmentation:

- the ink is found as the preprocessing finds it (polarity, background removal, Otsu's
  threshold) and split into connected components (8-connected, :func:`mnist_cnn.ink.components`);
  specks are dropped, every other piece is kept in the order of its centre;
- over-segmentation: a piece wider than ``CUTTABLE`` of the line's height may hold digits
  that touch; it is cut at candidate columns (the valleys of its column profile, the dips of
  its upper contour and the rises of its lower contour) along paths that wind down through
  as little ink as they can (:func:`_cut_paths`), into *atoms*;
- every run of consecutive atoms that could be one digit (not too wide, not across a real
  gap; a short piece such as a 5's bar may sit a little further away) is preprocessed with
  :func:`~mnist_cnn.preprocessing.to_mnist`, exactly as ``predict`` preprocesses an image, and
  all are classified in **one batch**;
- dynamic programming picks the reading with the best total: each digit's score (the
  classifier's confidence, less how unusually wide or short the piece is for that digit),
  a bonus per digit, a cost per cut through ink. One mechanism for a wide single digit (left
  whole), touching digits (cut), a 4 written in two strokes and a 5's detached bar (joined).

The digits read are those of the chosen pieces, already classified: no second pass. An image
in which one digit is found is read as ``predict`` reads it (see :func:`read_number`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from . import ink as ink_
from .preprocessing import SIZE, ImageError, Preprocessed, _background_is_light, to_mnist
from .preprocessing import _background as _block_background
from .preprocessing import _otsu as _ink_threshold

WORK_SIDE = 1024  # components are found at most this size (a 12-megapixel photo: 1/4 side)
SPECK = 0.02  # components lighter than this share of the heaviest are specks
SHORT = 0.5  # pieces shorter than this share of the tallest are parts (a bar, a dot)
MARGIN = 0.6  # of a digit's height around it, cropped for to_mnist (its background needs room)
DIGIT_SIDE = 32  # digits twice as tall or more are box-reduced for to_mnist (a photo: faster)
# Width / height of MNIST's digits by class: median and spread of its log (the ink above 50 of
# 20,000 training digits). A piece read as a 7 but as wide as two digits is unlikely a 7.
ASPECT = np.array([0.9, 0.4, 0.95, 0.8, 0.8, 0.95, 0.7, 0.8, 0.8, 0.7])
ASPECT_SPREAD = np.array([0.19, 0.45, 0.22, 0.21, 0.2, 0.26, 0.22, 0.21, 0.22, 0.2])
NEAR = 0.1  # of the line's height: pieces this close may be one digit ...
PART_GAP = 0.25  # ... and a short piece this close
# Over-segmentation, in line heights (the median height of the pieces of ink): pieces at least
# CUTTABLE wide are cut near columns where their profile or contours are lowest (within VALLEY),
# EDGE apart, along paths that stray at most BAND from their column; a digit spans at most
# MAX_ATOMS cut pieces and WIDEST line heights.
CUTTABLE, VALLEY, EDGE, BAND, WIDEST, MAX_ATOMS = 0.6, 0.1, 0.2, 0.07, 1.8, 8
# The reading's score (log units), chosen on numbers made for it (seeds 100 and 200, not the
# benchmark's) with two models (the fast recipe's, and one trained without label smoothing,
# far more sure of fragments): the weight of the classifier's log probability, of a piece's
# shape being wider / narrower / shorter than a digit's (HEIGHT_SPREAD: of log height); a
# bonus per digit read (DIGIT), and per two pieces of ink read as one digit (JOINED); the cost
# of a cut through ink and per stroke it crosses; the floor of a piece that is no digit.
CONFIDENCE, WIDER, NARROWER, SHORTER, HEIGHT_SPREAD = 3.0, 0.5, 0.1, 0.5, 0.2
DIGIT, JOINED, CUT, STROKE, NO_DIGIT = 2.0, 1.0, 1.5, 0.25, -30.0
# The fast recipe's model, with which those weights were chosen, fits MNIST's test labels best
# at this temperature (evaluation.fit_temperature; label smoothing holds it back; with
# `--pairs 0.125`, unsure of two digits in one piece: 0.39-0.41). A model
# surer of itself (one trained without label smoothing: 1.16) is read as if it were this sure,
# its log probabilities scaled by TUNED_TEMPERATURE / its own temperature: on numbers made for
# it (seeds 100 and 200, not the benchmark's), such a model then read 2-6 points more clean
# MNIST numbers right and 3-7 more touching ones, where its raw probabilities made it cut
# digits into fragments it was sure of.
TUNED_TEMPERATURE = 0.40

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
        h, w = self.ink.shape
        top, left = max(part.y0 - 2, 0), max(part.x0 - 2, 0)
        bottom, right = min(part.y1 + 2, h), min(part.x1 + 2, w)
        labels = self.labels[top:bottom, left:right]
        own = np.isin(labels, part.labels)
        own[:, : part.x0 - left] = False
        own[:, part.x1 - left :] = False
        free = own | (labels == 0)  # not another piece's ink
        for _ in range(2):  # two pixels more around it: the strokes' soft edges
            own = ink_.grow(own) & free
        crop = np.where(own, self.ink[top:bottom, left:right], 0).astype(np.float32)
        shrink = max(1, part.height // DIGIT_SIDE)  # to_mnist keeps 20 pixels of it anyway
        if shrink > 1:
            crop, _ = ink_.reduce(crop, -(-max(crop.shape) // shrink))
        return np.pad(crop, max(2, round(MARGIN * part.height / shrink)))

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
    x = 1.0 - gray if _background_is_light(gray) else gray  # ink bright
    # the paper's level as to_mnist finds it, an opening wider than the strokes: their width
    # is measured on a first estimate at to_mnist's work size (block percentiles, which alone
    # take the middle of bold strokes for paper)
    small, f = ink_.reduce(x, ink_.WORK_SIDE)
    rough = np.clip(small - _block_background(small), 0, None)
    bg = ink_.background(x, f * ink_.stroke_width(rough > _ink_threshold(rough)))
    ink = x - bg  # >= 0: an opening never rises above the image
    mask = ink > _ink_threshold(ink)
    if mask.sum() < 3 or ink[mask].mean() < 0.05:
        raise ImageError("no ink found (a blank or nearly uniform image)")
    ink = ink.astype(np.float32)
    labels, comps = ink_.components(mask, ink)
    return Page(ink, labels, comps, scale)


def candidate_digits(page: Page) -> list[Part]:
    """The pieces of ink without specks, left to right (by their centres): each a digit, a
    part of one (a 5's detached bar, a broken stroke, a 4's second stroke) or several
    touching digits, which :func:`best_reading` decides."""
    found = parts(page.comps)
    heaviest = max(p.mass for p in found)
    return sorted((p for p in found if p.mass >= SPECK * heaviest), key=lambda p: p.x0 + p.x1)


def _gap(a: Part, b: Part) -> int:
    return max(a.x0 - b.x1, b.x0 - a.x1, 0)


# ---- hypotheses checked by the classifier ----------------------------------------------------


def _read_pieces(page: Page, pieces: list[Part], classify: Classify):
    """(Preprocessed per piece, probabilities (N, classes), indices of pieces with no ink of
    their own): every piece preprocessed as ``predict`` does and classified in one batch."""
    pres, empty = [], []
    for i, p in enumerate(pieces):
        try:
            pres.append(to_mnist(page.image(p)))
        except ImageError:
            pres.append(Preprocessed(np.zeros((SIZE, SIZE), np.float32), {}, False))
            empty.append(i)
    return pres, classify(np.stack([p.image for p in pres])), empty


def _score(
    pieces: list[Part], probs: np.ndarray, empty: list[int], line: float, temperature=None
) -> np.ndarray:
    """How well each piece reads as one digit (log units): ``CONFIDENCE`` times the log of
    the classifier's top probability (rescaled to ``TUNED_TEMPERATURE`` from the model's own
    ``temperature`` where it is known), less how unusual the piece's shape is for that digit:
    wider than MNIST's digits of its class (log-normal, ``ASPECT``; narrower costs little,
    people write narrow), or shorter than the line (a bar, a fragment). A piece with no ink of
    its own (a cut through a faint stroke's fringe) scores -inf."""
    top = probs.argmax(axis=1)
    log_p = np.log(probs + 1e-9)
    if temperature:
        log_p = log_p * (TUNED_TEMPERATURE / temperature)
        log_p -= np.logaddexp.reduce(log_p, axis=1, keepdims=True)
    score = CONFIDENCE * log_p[np.arange(len(pieces)), top]
    if probs.shape[1] == len(ASPECT):
        aspect = np.array([max(p.width, 1) / max(p.height, 1) for p in pieces])
        z = np.log(aspect / ASPECT[top]) / ASPECT_SPREAD[top]
        weight = np.where(z > 0, WIDER, np.where(top == 1, 0.0, NARROWER))
        score -= 0.5 * weight * z**2
    heights = np.array([max(p.height, 1) for p in pieces])
    score -= 0.5 * SHORTER * (np.minimum(np.log(heights / line), 0) / HEIGHT_SPREAD) ** 2
    score[empty] = -np.inf
    return score


# ---- over-segmentation, and the best reading of it ------------------------------------------


def _cut_columns(own: np.ndarray, line: float) -> list[int]:
    """Columns of a piece of ink (``own``, (h, w) bool) where two digits side by side might
    meet, left to right, at least ``EDGE`` of the line's height from its sides and from each
    other: the valleys of its column profile (the least ink within ``VALLEY``), then where its
    upper contour dips or its lower contour rises (two round digits touching)."""
    h, w = own.shape
    edge, reach = max(2, round(EDGE * line)), max(1, round(VALLEY * line))
    inner = np.arange(edge, w - edge + 1)
    if inner.size == 0:
        return []
    rows = np.arange(h)[:, None]
    top = np.where(own, rows, h).min(axis=0).astype(np.float64)  # the ink's first row
    bottom = np.where(own, rows, -1).max(axis=0).astype(np.float64)  # and its last
    profile = np.convolve(own.sum(axis=0).astype(np.float64), np.ones(3) / 3, mode="same")
    chosen: list[int] = []
    for values in (profile, -top, bottom):  # where each is lowest around it
        lowest = [c for c in inner if values[c] <= values[max(0, c - reach) : c + reach + 1].min()]
        for c in sorted(lowest, key=lambda c: values[c]):
            if all(abs(c - k) >= edge for k in chosen):
                chosen.append(int(c))
    return sorted(chosen)


def _cut_paths(own: np.ndarray, columns: list[int], band: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cut as a path down the piece, near its column: (paths (K, h): per row, the first
    column right of the cut, strokes each crosses (K,)). A path moves at most one column a
    row, within ``band`` of its column, and splits as little ink as it can (dynamic
    programming down the rows, all cuts at once)."""
    h, w = own.shape
    split = np.zeros((h, w + 1), np.float64)  # a cut before column x splits ink at x-1 and x
    split[:, 1:w] = own[:, :-1] & own[:, 1:]
    split[:, 1:w] += 0.5 * (own[:, :-1] ^ own[:, 1:])  # or runs along a stroke's edge
    offsets = np.arange(-band, band + 1)
    xs = np.clip(np.array(columns)[:, None] + offsets, 1, w - 1)  # (K, B)
    cost = split[:, xs].transpose(1, 0, 2) + 0.01 * np.abs(offsets)  # (K, h, B), straight first
    total = cost[:, 0].copy()
    step = np.zeros((len(columns), h, len(offsets)), np.int8)
    padded = np.full((len(columns), len(offsets) + 2), np.inf)
    for y in range(1, h):
        padded[:, 1:-1] = total
        options = np.stack((padded[:, :-2], total, padded[:, 2:]))  # from left, above, right
        step[:, y] = options.argmin(axis=0) - 1
        total = options.min(axis=0) + cost[:, y]
    at = total.argmin(axis=1)  # (K,) each path's end, then back up the rows
    paths = np.zeros((len(columns), h), np.intp)
    k = np.arange(len(columns))
    for y in range(h - 1, -1, -1):
        paths[:, y] = xs[k, at]
        at = at + step[k, y, at]
    crossed = split[np.arange(h), paths] >= 1  # (K, h) rows where the cut splits a stroke
    strokes = (crossed[:, 1:] & ~crossed[:, :-1]).sum(axis=1) + crossed[:, 0]
    return np.maximum.accumulate(paths, axis=0), strokes


def _own(page: Page, part: Part) -> np.ndarray:
    """Which pixels of ``part``'s box are its own ink."""
    return np.isin(page.labels[part.y0 : part.y1, part.x0 : part.x1], part.labels)


def over_segment(page: Page, blocks: list[Part], line: float):
    """``blocks`` cut into atoms along every candidate path: (a page whose labels are the
    atoms', the atoms left to right, the cost of a boundary before each atom: ``CUT`` and
    ``STROKE`` per stroke crossed inside a block, None before a block's first atom)."""
    labels = np.zeros_like(page.labels)
    atoms: list[Part] = []
    costs: list[float | None] = []
    for block in blocks:
        own = _own(page, block)
        columns = _cut_columns(own, line) if block.width >= CUTTABLE * line else []
        which = np.zeros(own.shape, np.intp)  # each pixel's atom within the block
        strokes = np.zeros(0, np.intp)
        if columns:
            paths, strokes = _cut_paths(own, columns, max(1, round(BAND * line)))
            xs = np.arange(own.shape[1])
            which = (xs[None, None, :] >= paths[:, :, None]).sum(axis=0)  # (h, w)
        region = labels[block.y0 : block.y1, block.x0 : block.x1]
        ink = page.ink[block.y0 : block.y1, block.x0 : block.x1]
        first = True
        for k in range(len(columns) + 1):
            mine = own & (which == k)
            rows, cols = np.flatnonzero(mine.any(axis=1)), np.flatnonzero(mine.any(axis=0))
            if not rows.size:
                continue
            x0, y0 = block.x0 + int(cols[0]), block.y0 + int(rows[0])
            x1, y1 = block.x0 + int(cols[-1]) + 1, block.y0 + int(rows[-1]) + 1
            atoms.append(Part(x0, y0, x1, y1, float(ink[mine].sum()), (len(atoms) + 1,)))
            region[mine] = len(atoms)
            costs.append(None if first else CUT + STROKE * float(strokes[k - 1]))
            first = False
    return Page(page.ink, labels, page.comps, page.scale), atoms, costs


def _spans(atoms: list[Part], costs: list, line: float) -> list[tuple[int, int, Part]]:
    """Every run of consecutive atoms i..j-1 that could be one digit: (i, j, the piece): no
    wider than ``WIDEST`` line heights, and not across a gap between pieces of ink wider than
    ``NEAR`` of the line's height (``PART_GAP`` next to a short piece: a bar, a dot)."""
    spans = []
    for i in range(len(atoms)):
        piece = atoms[i]
        spans.append((i, i + 1, piece))
        for j in range(i + 1, min(len(atoms), i + MAX_ATOMS)):
            short = min(atoms[j - 1].height, atoms[j].height) < SHORT * line
            if costs[j] is None and _gap(piece, atoms[j]) > (PART_GAP if short else NEAR) * line:
                break
            piece = piece.join(atoms[j])
            if piece.width > WIDEST * line:
                break
            spans.append((i, j + 1, piece))
    return spans


def hypotheses(page: Page, blocks: list[Part]):
    """(the page cut into atoms, the atoms, the cost of a boundary before each, the runs of
    atoms that could be digits (i, j, piece), the line's height)."""
    tall = max(b.height for b in blocks)
    line = float(np.median([b.height for b in blocks if b.height >= SHORT * tall]))
    page, atoms, costs = over_segment(page, blocks, line)
    return page, atoms, costs, _spans(atoms, costs, line), line


def best_reading(page: Page, blocks: list[Part], classify: Classify, temperature=None):
    """The digits of ``blocks`` as the best path through the over-segmentation (dynamic
    programming over runs of consecutive atoms): the sum of each digit's :func:`_score`, less
    the cost of each cut through ink. (pieces, page they are cut from, their Preprocessed,
    their probabilities). ``temperature``: the model's own (see TUNED_TEMPERATURE)."""
    page, atoms, costs, spans, line = hypotheses(page, blocks)
    pieces = [p for _, _, p in spans]
    pres, probs, empty = _read_pieces(page, pieces, classify)
    score = _score(pieces, probs, empty, line, temperature)
    score = np.maximum(score, NO_DIGIT)  # a path always exists
    best = np.full(len(atoms) + 1, -np.inf)
    best[0] = 0.0
    back = [0] * (len(atoms) + 1)
    for k, (i, j, _) in enumerate(spans):  # spans come in order of their first atom
        joined = sum(costs[m] is None for m in range(i + 1, j))  # pieces of ink made one
        total = best[i] + score[k] + DIGIT + JOINED * joined - (costs[i] or 0.0)
        if total > best[j]:
            best[j], back[j] = total, k
    chosen, j = [], len(atoms)
    while j > 0:
        chosen.append(back[j])
        j = spans[back[j]][0]
    chosen.reverse()
    return [pieces[k] for k in chosen], page, [pres[k] for k in chosen], probs[chosen]


def reachable(gray: np.ndarray, classify: Classify, number: str) -> bool:
    """Whether any of the readings :func:`best_reading` chooses among gives ``number``: its
    digits, left to right, as consecutive runs of atoms that the classifier reads as those
    digits. Over many numbers, the share for which this holds bounds what any weighing of the
    hypotheses could read right; the rest is lost to the cuts and to the classifier
    (``benchmarks/read_numbers.py --reachable``). ``classify`` answers digits 0-9."""
    page = find_ink(gray)
    page, atoms, _, spans, _ = hypotheses(page, candidate_digits(page))
    _, probs, _ = _read_pieces(page, [p for _, _, p in spans], classify)
    read = [str(k) for k in probs.argmax(axis=1)]
    done: list[set[int]] = [set() for _ in range(len(atoms) + 1)]  # digits read by atoms 0..j-1
    done[0].add(0)
    for k, (i, j, _) in enumerate(spans):  # in order of their first atom
        done[j].update(m + 1 for m in done[i] if m < len(number) and number[m] == read[k])
    return len(number) in done[-1]  # every atom read


def segment(gray: np.ndarray, classify: Classify, temperature=None) -> list[Digit]:
    """The digits of a number written in ``gray`` ((H, W) in 0..1, either polarity), left to
    right. ``classify`` maps (N, 28, 28) preprocessed images to class probabilities;
    ``temperature`` is the model's own, where known (see TUNED_TEMPERATURE)."""
    return _segment(gray, classify, temperature)[0]


def _segment(gray: np.ndarray, classify: Classify, temperature=None):
    """(digits, their Preprocessed, their probabilities)."""
    page = find_ink(gray)
    blocks = candidate_digits(page)
    pieces, page, pres, probs = best_reading(page, blocks, classify, temperature)
    return [Digit(page.box(p), page.image(p)) for p in pieces], pres, probs


def read_number(gray: np.ndarray, classify: Classify, whole=None, temperature=None):
    """(digits, their Preprocessed, their probabilities (N, classes)): the number in ``gray``,
    each digit preprocessed as ``predict`` preprocesses an image, classified in one batch.

    An image holding one digit is preprocessed whole, so that it reads exactly as ``predict``
    reads it: by ``whole()`` where given (predict's own path from the image's source, which
    may decode it at another size), else ``to_mnist(gray)``. ``temperature``: the model's
    own, where known (see TUNED_TEMPERATURE); the probabilities returned are the model's."""
    digits, pres, probs = _segment(gray, classify, temperature)
    if len(digits) == 1:
        pres = [whole() if whole is not None else to_mnist(gray)]
        probs = classify(np.stack([p.image for p in pres]))
    return digits, pres, probs


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
