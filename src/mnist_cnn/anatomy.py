"""Inside a CustomCNN: the layer table (and the seed's summary, a view of it), feature maps,
class evidence. The invariance probes are in probe.py.

Everything here is computed from the model itself (hooks, its weights, real forward and
backward passes), never from a table typed in by hand, so it stays true for any
``ModelConfig`` and any trained run.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import groupby

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .model import CustomCNN, count_parameters, eval_mode


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


def _kind(module: nn.Module, short: bool = False) -> str:
    """A step as the layer table names it ("Conv2d 1->32, 3x3, stride 1, pad 1"), or ``short``
    as the seed's summary does ("Conv2d(1->32, 3x3)", "MaxPool(2, pad 1)")."""
    if isinstance(module, nn.Conv2d):
        k, s, p = module.kernel_size[0], module.stride[0], module.padding[0]
        io = f"{module.in_channels}->{module.out_channels}, {k}x{k}"
        return f"Conv2d({io})" if short else f"Conv2d {io}, stride {s}, pad {p}"
    if isinstance(module, nn.MaxPool2d):
        w, pad = module.kernel_size, f", pad {module.padding}" if module.padding else ""
        return f"MaxPool({w}{pad})" if short else f"MaxPool2d {w}x{w}, stride {module.stride}{pad}"
    if isinstance(module, nn.Linear):
        io = f"{module.in_features}->{module.out_features}"
        return f"Linear({io})" if short else f"Linear {io}"
    if isinstance(module, nn.Dropout) and not short:
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
    with eval_mode(model), torch.no_grad():
        for name, module in model.named_stages():
            y = module(x)
            macs = 0
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                macs = y[0].numel() * module.in_channels // module.groups * k
            elif isinstance(module, nn.Linear):
                macs = module.in_features * module.out_features
            if isinstance(module, (nn.Conv2d, nn.MaxPool2d)) and field is not None:
                field += (_pair(module.kernel_size) - 1) * jump
                jump *= _pair(module.stride)
            elif isinstance(module, (nn.Flatten, nn.Linear)):
                field = None  # every output sees the whole image
            shape = tuple(y.shape[1:])
            rows.append(LayerRow(name, _kind(module), shape, count_parameters(module), macs, field))
            x = y
    return rows


def _pair(value) -> int:
    return value[0] if isinstance(value, tuple) else int(value)


@dataclass(frozen=True)
class LayerSummary:
    """One of the seed's layers (layer1..layer5, and the flatten): the steps of the layer
    table with that prefix, taken together."""

    name: str
    description: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parameters: int


def summarize(model: CustomCNN) -> list[LayerSummary]:
    """Each of the seed's layers with its input and output shape and parameter count: the
    :func:`layer_table` rows grouped by layer."""
    c = model.config
    shape: tuple[int, ...] = (c.in_channels, c.image_size, c.image_size)
    modules = dict(model.named_stages())
    layers = []
    for layer, group in groupby(layer_table(model), key=lambda r: r.name.split(".")[0]):
        rows = list(group)
        what = " ".join(_kind(modules[r.name], short=True) for r in rows)
        params = sum(r.parameters for r in rows)
        layers.append(LayerSummary(layer, what, shape, rows[-1].output_shape, params))
        shape = rows[-1].output_shape
    return layers


def format_summary(model: CustomCNN) -> str:
    """The summary as text, one line per layer in the seed's '입-출력 (?, ...) » (?, ...)' style."""
    rows = summarize(model)

    def shape(s):
        return "(?, " + ", ".join(str(d) for d in s) + ")"

    lines = [f"{'layer':<8} {'what':<44} {'input -> output':<34} {'params':>10}"]
    for r in rows:
        io = f"{shape(r.input_shape)} -> {shape(r.output_shape)}"
        lines.append(f"{r.name:<8} {r.description:<44} {io:<34} {r.parameters:>10,}")
    total = count_parameters(model)
    lines.append(f"{'total':<8} {'':<44} {'':<34} {total:>10,}")
    return "\n".join(lines)


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
    with eval_mode(model), torch.no_grad():
        for name, module in model.named_stages():
            if name == "flatten":  # the three blocks end here
                break
            x = module(x)
            stages.append(Stage(name, x[0].detach().cpu().numpy()))
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
    with eval_mode(model), torch.enable_grad():
        try:
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
    heat = cam[0, 0].detach().cpu().numpy()
    top = float(heat.max())
    return heat / top if top > 0 else heat


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
