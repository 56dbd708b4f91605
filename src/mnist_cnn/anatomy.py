"""Inside a CustomCNN: per-layer numbers, feature maps, class evidence, invariance probes.

Everything here is computed from the model itself (hooks, its weights, real forward and
backward passes), never from a table typed in by hand, so it stays true for any
``ModelConfig`` and any trained run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    out += [("flatten", nn.Flatten(1)), ("layer4.fc1", model.fc1), ("layer4.relu", model.relu),
            ("layer4.dropout", model.dropout), ("layer5.fc2", model.fc2)]  # fmt: skip
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
                rows.append(LayerRow(name, _kind(module), tuple(y.shape[1:]),
                                     count_parameters(module), macs, field))  # fmt: skip
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
            rows.append(SharingRow(f"layer{b}.conv", tuple(x.shape[1:]), tuple(y.shape[1:]),
                                   count_parameters(conv), count_parameters(conv) * positions,
                                   n_in * n_out + n_out))  # fmt: skip
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
        lines.append(f"{r.name:<15}{r.kind:<38}{_shape(r.output_shape):<16}"
                     f"{r.parameters:>11,}{macs:>13}  {field}")  # fmt: skip
    total_params = count_parameters(model)
    total_macs = sum(r.mult_adds for r in rows)
    lines.append("-" * len(head))
    lines.append(f"{'total':<15}{'':<38}{'':<16}{total_params:>11,}{total_macs:>13,}")
    lines += ["", "Weight sharing and local receptive fields: each conv layer against layers with "
              "the same input and output sizes", ""]  # fmt: skip
    lines.append(f"{'layer':<15}{'input -> output':<32}{'conv':>9}{'no sharing':>13}"
                 f"{'dense':>13}")  # fmt: skip
    for s in weight_sharing(model):
        io = f"{_shape(s.input_shape)} -> {_shape(s.output_shape)}"
        lines.append(f"{s.name:<15}{io:<32}{s.conv_parameters:>9,}{s.local_parameters:>13,}"
                     f"{s.dense_parameters:>13,}")  # fmt: skip
    lines += ["", "conv: the same 3x3 filters at every position (weight sharing). no sharing: "
              "the same 3x3 windows with", "their own weights at each position (local "
              "connections only). dense: every input to every output."]  # fmt: skip
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
    theta = torch.tensor([[math.cos(t), math.sin(t), 0.0], [-math.sin(t), math.cos(t), 0.0]],
                         dtype=images.dtype, device=images.device)  # fmt: skip
    grid = F.affine_grid(theta.expand(len(images), 2, 3), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


@torch.no_grad()
def accuracy_under(model: CustomCNN, images: torch.Tensor, labels: torch.Tensor,
                   transform, mean: float, std: float, batch: int = 1000) -> float:  # fmt: skip
    """Test accuracy when every image (uint8 (N, 1, H, W)) first goes through ``transform``
    (on 0..1 pixels, before normalization)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    right = 0
    try:
        for i in range(0, len(images), batch):
            x = images[i : i + batch].to(device).float().div_(255)
            x = normalize(transform(x), mean, std)
            right += int((model(x).argmax(1) == labels[i : i + batch].to(device)).sum())
    finally:
        model.train(was_training)
    return right / len(images)


def probe_shift(model, images, labels, mean, std, shifts=range(-6, 7)) -> dict:
    """Accuracy with every test image moved horizontally, and separately vertically."""
    x = [accuracy_under(model, images, labels, lambda t, s=s: shift_images(t, s, 0), mean, std)
         for s in shifts]  # fmt: skip
    y = [accuracy_under(model, images, labels, lambda t, s=s: shift_images(t, 0, s), mean, std)
         for s in shifts]  # fmt: skip
    return {"kind": "shift", "values": list(shifts), "unit": "pixels",
            "accuracy": {"horizontal": x, "vertical": y}, "images": len(images)}  # fmt: skip


def probe_rotate(model, images, labels, mean, std, angles=range(-45, 46, 5)) -> dict:
    """Accuracy with every test image rotated by each angle."""
    acc = [accuracy_under(model, images, labels, lambda t, a=a: rotate_images(t, a), mean, std)
           for a in angles]  # fmt: skip
    return {"kind": "rotate", "values": list(angles), "unit": "degrees",
            "accuracy": {"rotation": acc}, "images": len(images)}  # fmt: skip


def format_probe(result: dict) -> str:
    curves = result["accuracy"]
    unit = result["unit"]
    head = f"{result['kind'] + ' (' + unit + ')':<18}" + "".join(f"{k:>13}" for k in curves)
    lines = [head]
    for i, v in enumerate(result["values"]):
        lines.append(f"{v:>+18d}" + "".join(f"{100 * c[i]:>12.2f}%" for c in curves.values()))
    return "\n".join(lines)


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
        panel.append({
            "name": stage.name.split(".")[0],
            "shape": list(maps.shape),
            "channels": channels.tolist(),
            "maps": np.round(scaled).astype(np.uint8).tolist(),
        })  # fmt: skip
    return panel
