"""Data augmentation on whole batches of tensors, on the training device (no PIL, no loop).

:func:`handwriting` covers what people's digits have and MNIST's writers had less of: other
pens (strokes thinned or thickened), slant (shear), size and small rotations, and wobbly lines
(elastic distortion). Every draw comes from one generator, so a seed repeats a batch exactly.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .preprocessing import BOX


def _uniform(n: int, bound: float, device, generator) -> torch.Tensor:
    """(n,) uniform draws in [-bound, bound]."""
    kw = {} if generator is None else {"generator": generator}
    return (torch.rand(n, device=device, **kw) * 2 - 1) * bound


def random_affine(
    images: torch.Tensor,
    *,
    max_shift: float = 2.0,
    max_degrees: float = 10.0,
    max_scale: float = 0.1,
    max_shear: float = 0.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Shift (pixels), rotate (degrees), scale and shear (x += shear * y) each image of
    (N, C, H, W) at random.

    Pixels that come in from outside the image are 0: apply it before normalizing, to images
    in 0..1 whose background is 0. Draws from ``generator``, else the default generator of the
    images' device.
    """
    theta = _affine_theta(images, max_shift, max_degrees, max_scale, max_shear, generator)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _affine_theta(images, max_shift, max_degrees, max_scale, max_shear, generator):
    """(N, 2, 3) inverse transforms for affine_grid (output coordinates -> input ones)."""
    n, _, h, w = images.shape
    device = images.device

    def uniform(bound: float) -> torch.Tensor:
        return _uniform(n, bound, device, generator)

    angle = uniform(math.radians(max_degrees))
    scale = 1 + uniform(max_scale)
    shear = uniform(max_shear) if max_shear else torch.zeros_like(angle)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # rotation-and-scale composed with a shear along x (slant): [[1, s], [0, 1]]
    theta = torch.stack(
        [
            torch.stack([cos, -sin + cos * shear, uniform(2 * max_shift / w)], dim=1),
            torch.stack([sin, cos + sin * shear, uniform(2 * max_shift / h)], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3)
    return theta.to(images.dtype)


def stroke_width(
    images: torch.Tensor,
    *,
    thicken: float = 1.0,
    thin: float = 0.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Thicken each image's strokes by up to ``thicken`` pixels on each side, or thin them by
    up to ``thin``, a random amount per image: a blend towards its grey dilation (3x3 maximum)
    or erosion (3x3 minimum), one pixel at a time. Each image keeps its brightest value, so a
    thinned stroke stays as bright as a fine pen's (preprocessing saturates strokes too)."""
    n = images.shape[0]
    u = torch.rand(n, device=images.device, generator=generator).view(n, 1, 1, 1)
    amount = u * (thicken + thin) - thin  # in [-thin, thicken]
    peak = images.amax(dim=(1, 2, 3), keepdim=True)
    out = images
    for _ in range(math.ceil(max(thicken, thin))):
        step = amount.clamp(-1, 1)
        grown = F.max_pool2d(out, 3, stride=1, padding=1)
        shrunk = -F.max_pool2d(-out, 3, stride=1, padding=1)
        out = torch.where(step > 0, out + step * (grown - out), out + step * (out - shrunk))
        amount = amount - step
    return out * (peak / out.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6))


def elastic_field(
    n: int,
    h: int,
    w: int,
    *,
    alpha: float,
    cells: int = 4,
    device=None,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
) -> torch.Tensor:
    """(n, h, w, 2) smooth random displacements of at most about ``alpha`` pixels, in
    grid_sample's units: uniform draws on a coarse cells x cells grid, upsampled bicubically."""
    coarse = torch.rand(n, 2, cells, cells, device=device, generator=generator) * 2 - 1
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=True)
    scale = torch.tensor([2 * alpha / w, 2 * alpha / h], device=device).view(1, 2, 1, 1)
    return (field * scale).permute(0, 2, 3, 1).to(dtype)


def handwriting(
    images: torch.Tensor,
    *,
    max_shift: float = 2.0,
    max_degrees: float = 12.0,
    max_scale: float = 0.15,
    max_shear: float = 0.3,
    thicken: float = 1.0,
    thin: float = 0.5,
    elastic: float = 1.5,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """People's variety on a batch (N, 1, H, W) in 0..1, background 0: stroke width, then one
    warp (shift, rotation, scale, slant and an elastic wobble) sampled once."""
    n, _, h, w = images.shape
    x = stroke_width(images, thicken=thicken, thin=thin, generator=generator)
    theta = _affine_theta(x, max_shift, max_degrees, max_scale, max_shear, generator)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if elastic:
        grid = grid + elastic_field(
            n, h, w, alpha=elastic, device=x.device, generator=generator, dtype=grid.dtype
        )
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _ink_span(profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last) index where each row of ``profile`` (N, L) has ink (0, 0 where none)."""
    inked = profile > 0.1
    first = inked.int().argmax(dim=1)
    last = profile.shape[1] - 1 - inked.flip(1).int().argmax(dim=1)
    return first, torch.where(inked.any(dim=1), last, first)


def touching_pairs(
    images: torch.Tensor, count: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``count`` images (count, 1, H, W) that are no single digit: two digits of ``images``
    (N, 1, H, W) in 0..1, background 0, written side by side with their ink touching or
    overlapping by 0-3 columns, the pair cut to its ink and fitted into MNIST's 20-pixel box
    as the preprocessing fits a digit (centred by its box where the preprocessing centres by
    mass: a pixel or two apart for a lopsided pair). That is what a piece of a number looks
    like to the model when it holds two touching digits. Trained towards every class equally
    likely (outlier exposure, Hendrycks et al. 2019), they teach the model to be unsure of
    such a piece, so that reading a number cuts it. One affine resampling per digit (no loop,
    no host sync)."""
    n, _, h, w = images.shape
    device, dtype = images.device, images.dtype
    left = images[torch.randint(n, (count,), device=device, generator=generator)]
    right = images[torch.randint(n, (count,), device=device, generator=generator)]
    la, ra = _ink_span(left.sum(dim=2)[:, 0])  # columns
    lb, rb = _ink_span(right.sum(dim=2)[:, 0])
    ta, ba = _ink_span(left.sum(dim=3)[:, 0])  # rows
    tb, bb = _ink_span(right.sum(dim=3)[:, 0])
    wa, wb = (ra - la + 1).to(dtype), (rb - lb + 1).to(dtype)
    overlap = torch.randint(0, 4, (count,), device=device, generator=generator).to(dtype)
    overlap = torch.minimum(overlap, torch.minimum(wa, wb) - 1)
    width = wa + wb - overlap  # the pair's ink, in pixels
    top = torch.minimum(ta, tb).to(dtype)
    height = torch.maximum(ba, bb).to(dtype) - top + 1
    scale = BOX / torch.maximum(width, height)  # the longer side to 20 pixels, centred
    x0, y0 = (w - width * scale) / 2, (h - height * scale) / 2

    def place(image, first_col, shift):
        # output pixel (u, v) shows the canvas at ((u - x0) / scale, (v - y0) / scale), whose
        # column c is column c + first_col - shift of this digit's image (grid units: -1..1)
        zero = torch.zeros_like(scale)
        cx = ((w / 2 - x0) / scale + first_col.to(dtype) - shift) * 2 / w - 1
        cy = ((h / 2 - y0) / scale + top) * 2 / h - 1
        theta = torch.stack(
            [torch.stack([1 / scale, zero, cx], 1), torch.stack([zero, 1 / scale, cy], 1)], dim=1
        )
        # sampled at twice the resolution, then averaged: the reduction does not alias
        grid = F.affine_grid(theta, [count, 1, 2 * h, 2 * w], align_corners=False)
        fine = F.grid_sample(
            image, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return F.avg_pool2d(fine, 2)

    return torch.maximum(place(left, la, 0.0), place(right, lb, wa - overlap))


KINDS = ("affine", "handwriting")


def augment_batch(images: torch.Tensor, kind: bool | str) -> torch.Tensor:
    """The training loop's augmentation by name: "handwriting" (also ``True``), "affine"
    (shift, rotation and scale only, as the best recipe had before), or none (``False``)."""
    if kind is False or kind is None:
        return images
    if kind == "affine":
        return random_affine(images)
    if kind is True or kind == "handwriting":
        return handwriting(images)
    raise ValueError(f"unknown augmentation {kind!r} (known: {', '.join(KINDS)})")
