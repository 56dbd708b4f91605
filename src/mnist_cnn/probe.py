"""Invariance probes: how much moving or rotating the test images costs the model, measured so
that ink lost at the frame's edge cannot pass for missing invariance; their table and plots.
"""

from __future__ import annotations

import json
import math
from functools import partial
from pathlib import Path

import torch
from torch.nn import functional as F

from .evaluation import normalize
from .figures import png_bytes
from .files import atomic_write_bytes, atomic_write_text
from .model import CustomCNN, eval_mode
from .report import prepare_output


def shift_images(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """Move (N, 1, H, W) images by whole pixels (right, down), filling with background 0."""
    n, c, h, w = images.shape
    out = torch.zeros_like(images)
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    if abs(dx) < w and abs(dy) < h:
        out[:, :, yd, xd] = images[:, :, ys, xs]
    return out


def rotate_images(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """Rotate (N, 1, H, W) float images about their centre (counter-clockwise), bilinear."""
    if degrees == 0:
        return images.clone()
    t = -math.radians(degrees)  # the grid maps output to input: the inverse rotation
    theta = torch.tensor(
        [[math.cos(t), math.sin(t), 0.0], [-math.sin(t), math.cos(t), 0.0]],
        dtype=images.dtype,
        device=images.device,
    )
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def ink_margins(images: torch.Tensor) -> torch.Tensor:
    """Empty rows and columns around each image's ink: (N, 4) as top, bottom, left, right.

    A shift by (dx, dy) keeps every ink pixel inside the frame exactly when
    -left <= dx <= right and -top <= dy <= bottom. A blank image has margins of its full size.
    """
    ink = images.reshape(len(images), *images.shape[-2:]) > 0  # (N, H, W)
    h, w = ink.shape[-2:]

    def margins(present: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size, device=present.device)
        first = torch.where(present, index, size).amin(dim=1)
        last = torch.where(present, index, -1).amax(dim=1)
        blank = last < 0
        return first.masked_fill(blank, size), (size - 1 - last).masked_fill(blank, size)

    top, bottom = margins(ink.any(dim=2), h)
    left, right = margins(ink.any(dim=1), w)
    return torch.stack([top, bottom, left, right], dim=1)


def ink_lost_by_shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """The fraction of each image's ink (its pixel sum) that a shift moves out of the frame."""
    x = images.float()
    total = x.sum(dim=(1, 2, 3))
    kept = shift_images(x, dx, dy).sum(dim=(1, 2, 3))
    return torch.where(total > 0, 1 - kept / total.clamp(min=1e-12), torch.zeros_like(total))


def ink_lost_by_rotation(images: torch.Tensor, degrees: float) -> torch.Tensor:
    """The fraction of each image's ink whose pixel centres a rotation about the image centre
    carries out of the frame (interpolation aside, what the rotated image can no longer show)."""
    n, _, h, w = images.shape
    ys, xs = torch.meshgrid(
        torch.arange(h) - (h - 1) / 2, torch.arange(w) - (w - 1) / 2, indexing="ij"
    )
    t = math.radians(degrees)
    rx = math.cos(t) * xs + math.sin(t) * ys  # counter-clockwise on screen (y points down)
    ry = -math.sin(t) * xs + math.cos(t) * ys
    outside = (rx.abs() > w / 2) | (ry.abs() > h / 2)  # (H, W)
    x = images.float().reshape(n, h, w).cpu()
    total = x.sum(dim=(1, 2))
    lost = (x * outside).sum(dim=(1, 2))
    return torch.where(total > 0, lost / total.clamp(min=1e-12), torch.zeros_like(total))


@torch.no_grad()
def correct_under(
    model: CustomCNN,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform,
    mean: float,
    std: float,
    batch: int = 1000,
) -> torch.Tensor:
    """Which images (uint8 (N, 1, H, W)) the model still gets right after ``transform`` (on
    0..1 pixels, before normalization): a bool tensor (N,) on the CPU."""
    device = next(model.parameters()).device
    right = []
    with eval_mode(model):
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float().div_(255)
            x = normalize(transform(x), mean, std)
            right.append((model(x).argmax(1) == labels[i : i + batch].to(device)).cpu())
    return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)


def _mean(values: torch.Tensor) -> float:
    return float(values.float().mean()) if len(values) else float("nan")


def probe_shift(model, images, labels, mean, std, shifts=range(-6, 7)) -> dict:
    """Accuracy with the test images moved horizontally, and separately vertically, measured
    so that lost ink cannot pass for missing invariance.

    A digit shifted past its margin loses ink at the frame's edge (MNIST's digits are 20
    pixels tall in a 28-pixel frame, so a vertical shift of 5 or more cuts most of them). For
    each shift, ``accuracy`` is measured on the digits whose ink all stays inside (``kept``
    of them), next to the same digits unshifted (``unshifted``): the difference is what the
    move alone costs. ``cut`` is the accuracy over every digit with the ink that leaves the
    frame cut off, and ``ink_lost`` the mean fraction of ink that shift cuts off.
    """
    shifts = list(shifts)
    images = images.cpu()
    margin = ink_margins(images)  # (N, 4): top, bottom, left, right
    base = correct_under(model, images, labels, lambda t: t, mean, std)
    result = {"kind": "shift", "values": shifts, "unit": "pixels", "images": len(images)}
    for key in ("accuracy", "unshifted", "kept", "cut", "ink_lost"):
        result[key] = {"horizontal": [], "vertical": []}
    for axis, (before, after) in (("horizontal", (2, 3)), ("vertical", (0, 1))):
        for s in shifts:
            dx, dy = (s, 0) if axis == "horizontal" else (0, s)
            keep = (margin[:, before] >= -s) & (margin[:, after] >= s)
            move = partial(shift_images, dx=dx, dy=dy)
            right = correct_under(model, images, labels, move, mean, std)
            result["accuracy"][axis].append(_mean(right[keep]))
            result["unshifted"][axis].append(_mean(base[keep]))
            result["kept"][axis].append(int(keep.sum()))
            result["cut"][axis].append(_mean(right))
            result["ink_lost"][axis].append(_mean(ink_lost_by_shift(images, dx, dy)))
    return result


def probe_rotate(model, images, labels, mean, std, angles=range(-45, 46, 5)) -> dict:
    """Accuracy with every test image rotated by each angle, and the ink each angle carries
    out of the frame (little: MNIST's corners are empty)."""
    angles = list(angles)
    acc = [
        _mean(correct_under(model, images, labels, partial(rotate_images, degrees=a), mean, std))
        for a in angles
    ]
    lost = [_mean(ink_lost_by_rotation(images, a)) for a in angles]
    return {
        "kind": "rotate",
        "values": angles,
        "unit": "degrees",
        "accuracy": {"rotation": acc},
        "ink_lost": {"rotation": lost},
        "images": len(images),
    }


def _pct(value: float) -> str:
    return "-" if math.isnan(value) else f"{100 * value:.2f}%"


def format_probe(result: dict) -> str:
    """The probe command's table: one block per direction of a shift, one table for rotation."""
    if result["kind"] == "rotate":
        lines = [f"{'rotation (degrees)':<20}{'accuracy':>10}{'ink lost':>10}"]
        for i, v in enumerate(result["values"]):
            lines.append(
                f"{v:>+20d}{_pct(result['accuracy']['rotation'][i]):>10}"
                f"{_pct(result['ink_lost']['rotation'][i]):>10}"
            )
        return "\n".join(lines)
    n = result["images"]
    lines = []
    for axis, sense in (("horizontal", "+ right, - left"), ("vertical", "+ down, - up")):
        lines += [
            f"{axis} shift (pixels; {sense})",
            f"{'':7}{'digits whose ink stays inside':<33}{'all digits, ink cut off':<24}",
            f"{'shift':>6}{'kept':>14}{'shifted':>9}{'unshifted':>10}"
            f"{'accuracy':>11}{'ink lost':>10}",
        ]
        for i, v in enumerate(result["values"]):
            kept = result["kept"][axis][i]
            share = f"{kept:,} ({100 * kept / n:.0f}%)" if n else "0"
            lines.append(
                f"{v:>+6d}{share:>14}{_pct(result['accuracy'][axis][i]):>9}"
                f"{_pct(result['unshifted'][axis][i]):>10}"
                f"{_pct(result['cut'][axis][i]):>11}"
                f"{_pct(result['ink_lost'][axis][i]):>10}"
            )
        lines.append("")
    return "\n".join(lines[:-1])


def write_probe(result: dict, out_dir) -> Path:
    """DIR/probe-<kind>.png and .json for a probe result; returns the PNG's path."""
    out = prepare_output(out_dir)
    fig = _plot_shift(result) if result["kind"] == "shift" else _plot_rotation(result)
    png = out / f"probe-{result['kind']}.png"
    atomic_write_bytes(png, png_bytes(fig))
    atomic_write_text(out / f"probe-{result['kind']}.json", json.dumps(result, indent=2) + "\n")
    return png


def _plot_shift(result: dict):
    """Per direction: accuracy on the digits kept whole (shifted and not), on all digits with
    ink cut off; below it, how many digits stay whole and how much ink the shift cuts off."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 2, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [2, 1]}
    )
    v, n = result["values"], max(result["images"], 1)
    for col, (axis, sense) in enumerate(
        (("horizontal", "left - / + right"), ("vertical", "up - / + down"))
    ):
        top, bottom = axes[0, col], axes[1, col]
        pct = {k: [100 * a for a in result[k][axis]] for k in ("accuracy", "unshifted", "cut")}
        top.plot(v, pct["accuracy"], marker="o", color="C0", label="digits kept whole, shifted")
        top.plot(
            v,
            pct["unshifted"],
            ls="--",
            color="C0",
            alpha=0.6,
            label="the same digits, not shifted",
        )
        top.plot(
            v,
            pct["cut"],
            marker=".",
            ls=":",
            color="C3",
            label="all digits, ink cut off at the edge",
        )
        top.set_title(f"{axis} shift", fontsize=10)
        top.set_ylabel("test accuracy (%)")
        top.set_ylim(0, 100)
        kept = [100 * k / n for k in result["kept"][axis]]
        lost = [100 * a for a in result["ink_lost"][axis]]
        bottom.bar(v, kept, color="C0", alpha=0.35, label="digits kept whole")
        bottom.plot(v, lost, marker=".", color="C3", label="ink cut off (mean)")
        bottom.set_ylim(0, 100)
        bottom.set_ylabel("% of test digits / ink")
        bottom.set_xlabel(f"shift (pixels; {sense})")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            ax.axvline(0, color="#999", lw=0.8)
    axes[0, 0].legend(fontsize=8, loc="lower center")
    axes[1, 0].legend(fontsize=8, loc="lower center")
    fig.suptitle(
        f"How translation-invariant is it? {result['images']:,} test images, shifted", fontsize=11
    )
    fig.tight_layout()
    return fig


def _plot_rotation(result: dict):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    v = result["values"]
    ax.plot(v, [100 * a for a in result["accuracy"]["rotation"]], marker="o", label="accuracy")
    ax.plot(
        v,
        [100 * a for a in result["ink_lost"]["rotation"]],
        marker=".",
        color="C3",
        label="ink carried out of the frame (mean)",
    )
    ax.set_xlabel(f"rotation ({result['unit']}; + counter-clockwise)")
    ax.set_ylabel("% of test images / ink")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.axvline(0, color="#999", lw=0.8)
    ax.legend(fontsize=8, loc="center right")
    ax.set_title(f"Rotation: {result['images']:,} test images rotated", fontsize=10)
    return fig
