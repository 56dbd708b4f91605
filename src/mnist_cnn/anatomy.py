"""Inside a CustomCNN: per-layer numbers, feature maps, class evidence, invariance probes.

Everything here is computed from the model itself (hooks, its weights, real forward and
backward passes), never from a table typed in by hand, so it stays true for any
``ModelConfig`` and any trained run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .evaluation import normalize
from .model import CustomCNN, count_parameters


@dataclass(frozen=True)
class LayerRow:
    """One module of the network, as the summary shows it."""

    name: str  # e.g. "layer1.conv"
    kind: str  # e.g. "Conv2d 1->32, 3x3, stride 1, pad 1"
    output_shape: tuple[int, ...]  # per image
    parameters: int
    mult_adds: int  # multiply-accumulates per image
    receptive_field: int | None  # input pixels (a side) one output value sees; None: all


@dataclass(frozen=True)
class SharingRow:
    """A conv layer against the fully connected layer with the same input and output sizes."""

    name: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    conv_parameters: int
    local_parameters: int  # the same 3x3 windows, but its own weights at every position
    dense_parameters: int  # every input connected to every output

    @property
    def ratio(self) -> float:
        return self.dense_parameters / self.conv_parameters


def _modules(model: CustomCNN) -> list[tuple[str, nn.Module]]:
    """The leaf modules in the seed's order: conv, ReLU, pool for each block, then the head."""
    out = []
    for b, block in enumerate((model.layer1, model.layer2, model.layer3), start=1):
        for part, module in zip(("conv", "relu", "pool"), block, strict=True):
            out.append((f"layer{b}.{part}", module))
    out += [
        ("flatten", nn.Flatten(1)),
        ("layer4.fc1", model.fc1),
        ("layer4.relu", model.relu),
        ("layer4.dropout", model.dropout),
        ("layer5.fc2", model.fc2),
    ]
    return out


def _kind(module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
        return f"Conv2d {module.in_channels}->{module.out_channels}, {k}x{k}, stride {s}, pad {p}"
    if isinstance(module, nn.MaxPool2d):
        pad = f", pad {module.padding}" if module.padding else ""
        return f"MaxPool2d {module.kernel_size}x{module.kernel_size}, stride {module.stride}{pad}"
    if isinstance(module, nn.Linear):
        return f"Linear {module.in_features}->{module.out_features}"
    if isinstance(module, nn.Dropout):
        return f"Dropout p={module.p}"
    return type(module).__name__


def layer_table(model: CustomCNN) -> list[LayerRow]:
    """Shapes from a real forward pass; receptive fields from each layer's kernel and stride.

    The receptive field r (in input pixels) and the jump j (input pixels between neighbouring
    outputs) grow as r += (k - 1) * j and j *= stride through every conv and pool layer.
    """
    c = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=device)
    rows, jump = [], 1
    field: int | None = 1
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for name, module in _modules(model):
                y = module(x)
                macs = 0
                if isinstance(module, nn.Conv2d):
                    k = module.kernel_size[0] * module.kernel_size[1]
                    macs = y[0].numel() * module.in_channels // module.groups * k
                elif isinstance(module, nn.Linear):
                    macs = module.in_features * module.out_features
                if isinstance(module, (nn.Conv2d, nn.MaxPool2d)) and field is not None:
                    k = _pair(module.kernel_size)
                    s = _pair(module.stride)
                    field += (k - 1) * jump
                    jump *= s
                elif isinstance(module, (nn.Flatten, nn.Linear)):
                    field = None  # every output sees the whole image
                rows.append(
                    LayerRow(
                        name,
                        _kind(module),
                        tuple(y.shape[1:]),
                        count_parameters(module),
                        macs,
                        field,
                    )
                )
                x = y
    finally:
        model.train(was_training)
    return rows


def _pair(value) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


def weight_sharing(model: CustomCNN) -> list[SharingRow]:
    """Each conv layer's parameters against a dense layer mapping its input to its output."""
    rows = []
    c = model.config
    device = next(model.parameters()).device
    x = torch.zeros(1, c.in_channels, c.image_size, c.image_size, device=device)
    with torch.no_grad():
        for b, block in enumerate((model.layer1, model.layer2, model.layer3), start=1):
            conv = block[0]
            y = conv(x)
            n_in, n_out = x[0].numel(), y[0].numel()
            positions = y.shape[-2] * y.shape[-1]
            rows.append(
                SharingRow(
                    f"layer{b}.conv",
                    tuple(x.shape[1:]),
                    tuple(y.shape[1:]),
                    count_parameters(conv),
                    count_parameters(conv) * positions,
                    n_in * n_out + n_out,
                )
            )
            x = block(x)
    return rows


def _shape(s: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(d) for d in s) + ")"


def format_anatomy(model: CustomCNN) -> str:
    """The summary command's text: the layer table, totals, and the weight-sharing lesson."""
    rows = layer_table(model)
    head = (
        f"{'layer':<15}{'what':<38}{'output':<16}{'params':>11}{'mult-adds':>13}  receptive field"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        field = f"{r.receptive_field}x{r.receptive_field}" if r.receptive_field else "whole image"
        macs = f"{r.mult_adds:,}" if r.mult_adds else "-"
        lines.append(
            f"{r.name:<15}{r.kind:<38}{_shape(r.output_shape):<16}"
            f"{r.parameters:>11,}{macs:>13}  {field}"
        )
    total_params = count_parameters(model)
    total_macs = sum(r.mult_adds for r in rows)
    lines.append("-" * len(head))
    lines.append(f"{'total':<15}{'':<38}{'':<16}{total_params:>11,}{total_macs:>13,}")
    lines += [
        "",
        "Weight sharing and local receptive fields: each conv layer against layers with "
        "the same input and output sizes",
        "",
    ]
    lines.append(f"{'layer':<15}{'input -> output':<32}{'conv':>9}{'no sharing':>13}{'dense':>13}")
    for s in weight_sharing(model):
        io = f"{_shape(s.input_shape)} -> {_shape(s.output_shape)}"
        lines.append(
            f"{s.name:<15}{io:<32}{s.conv_parameters:>9,}{s.local_parameters:>13,}"
            f"{s.dense_parameters:>13,}"
        )
    lines += [
        "",
        "conv: the same 3x3 filters at every position (weight sharing). no sharing: "
        "the same 3x3 windows with",
        "their own weights at each position (local "
        "connections only). dense: every input to every output.",
    ]
    return "\n".join(lines)


# --- What one image does inside the network -------------------------------------------------


@dataclass
class Stage:
    """The activations after one step of one block, for one image."""

    name: str  # "layer1.conv", "layer1.relu", "layer1.pool", ...
    maps: np.ndarray  # (channels, H, W)


def feature_maps(model: CustomCNN, x: torch.Tensor) -> list[Stage]:
    """The feature maps after every conv, ReLU and pool of the three blocks, for one image.

    ``x`` is one normalized image (1, C, H, W). Runs the seed's Conv -> ReLU -> MaxPool order
    module by module, so each stage is what the tutorial's diagram names.
    """
    stages = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for name, module in _modules(model):
                if name == "flatten":  # the three blocks end here
                    break
                x = module(x)
                stages.append(Stage(name, x[0].detach().cpu().numpy()))
    finally:
        model.train(was_training)
    return stages


def strongest_channels(maps: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` channels with the largest mean activation, strongest first."""
    mean = maps.reshape(len(maps), -1).mean(axis=1)
    return np.argsort(-mean, kind="stable")[:count]


def grad_cam(model: CustomCNN, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM for class ``target`` on the last conv layer, upsampled to the input size.

    The last conv layer's ReLU output A (128 maps of 7x7) is where the network's features are
    most about digits and still have a position. Each map is weighted by how much the class
    score rises with it (the gradient, averaged over the map), the weighted maps are summed,
    and only positive evidence is kept. Returns an (H, W) map scaled to 0..1.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            h = model.layer2(model.layer1(x))
            conv, relu, pool = model.layer3
            a = relu(conv(h))  # (1, 128, 7, 7)
            a.retain_grad()
            z = model.fc2(model.dropout(model.relu(model.fc1(pool(a).flatten(1)))))
            model.zero_grad(set_to_none=True)
            z[0, target].backward()
            weights = a.grad.mean(dim=(2, 3), keepdim=True)  # (1, 128, 1, 1)
            cam = F.relu((weights * a).sum(dim=1, keepdim=True))  # (1, 1, 7, 7)
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    heat = cam[0, 0].detach().cpu().numpy()
    top = float(heat.max())
    return heat / top if top > 0 else heat


# --- How invariant is it really? ------------------------------------------------------------


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
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    right = []
    try:
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float().div_(255)
            x = normalize(transform(x), mean, std)
            right.append((model(x).argmax(1) == labels[i : i + batch].to(device)).cpu())
    finally:
        model.train(was_training)
    return torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)


def accuracy_under(
    model: CustomCNN,
    images: torch.Tensor,
    labels: torch.Tensor,
    transform,
    mean: float,
    std: float,
    batch: int = 1000,
) -> float:
    """Test accuracy when every image (uint8 (N, 1, H, W)) first goes through ``transform``
    (on 0..1 pixels, before normalization)."""
    return float(correct_under(model, images, labels, transform, mean, std, batch).float().mean())


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
        accuracy_under(model, images, labels, lambda t, a=a: rotate_images(t, a), mean, std)
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


def feature_panel(model: CustomCNN, x: torch.Tensor, deep_channels: int = 16) -> list[dict]:
    """What the drawing page shows inside the network: each block's maps after ReLU, as 0..255.

    All channels of layer1, the ``deep_channels`` most active of layer2 and layer3, strongest
    first; each stage scaled by its own maximum (then a square root, as a display gamma), so
    that weak and strong stages are both visible.
    """
    panel = []
    for stage in feature_maps(model, x):
        if not stage.name.endswith(".relu"):
            continue
        maps = stage.maps
        count = len(maps) if stage.name == "layer1.relu" else deep_channels
        channels = strongest_channels(maps, count)
        top = float(maps.max())
        # square root: weak activations stay visible next to the strongest (a display gamma)
        scaled = np.sqrt(maps[channels] / top) * 255 if top > 0 else np.zeros_like(maps[channels])
        panel.append(
            {
                "name": stage.name.split(".")[0],
                "shape": list(maps.shape),
                "channels": channels.tolist(),
                "maps": np.round(scaled).astype(np.uint8).tolist(),
            }
        )
    return panel
