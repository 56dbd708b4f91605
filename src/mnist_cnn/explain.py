"""`mnist-cnn explain` and `mnist-cnn probe`: pictures of the network at work, as HTML + PNG.

The pages are self-contained (every picture embedded), so they open offline and can be sent
to someone as one file; the PNGs are written beside them for slides and documents.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np
import torch

from .anatomy import feature_maps, grad_cam, layer_table, strongest_channels
from .evaluation import normalize
from .files import atomic_write_bytes, atomic_write_text
from .report import _CSS, _png, prepare_output

DEEP_CHANNELS = 16  # channels shown for layer2 and layer3 (all 32 of layer1 are shown)


def explain(trained, pre, out_dir, name: str = "image", top_k: int = 5) -> dict:
    """Write DIR/index.html, the PNGs and DIR/explanation.json for one preprocessed image.

    ``trained`` is a TrainedModel, ``pre`` the Preprocessed image (its ``steps["input"]`` is
    the grayscale input before preprocessing). Returns what explanation.json holds.
    """
    out = prepare_output(out_dir)
    model = trained.model
    device = next(model.parameters()).device
    x = normalize(torch.from_numpy(pre.image[None]).to(device), trained.mean, trained.std)
    model.eval()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=1)[0].cpu().numpy()
    label = int(probs.argmax())
    stages = feature_maps(model, x)
    cam = grad_cam(model, x, label)
    by_name = {s.name: s.maps for s in stages}
    chosen = {
        "layer1": np.arange(len(by_name["layer1.relu"])),
        "layer2": strongest_channels(by_name["layer2.relu"], DEEP_CHANNELS),
        "layer3": strongest_channels(by_name["layer3.relu"], DEEP_CHANNELS),
    }
    classes = trained.classes
    figures = {
        "input": _plot_input(pre.steps["input"], pre.image),
        "filters": _plot_filters(model.layer1[0].weight.detach().cpu().numpy()),
        **{f"features_{layer}": _plot_stages(by_name, layer, idx) for layer, idx in chosen.items()},
        "evidence": _plot_evidence(pre.image, cam, classes[label]),
        "probabilities": _plot_probabilities(probs, classes),
    }
    pngs = {}
    for key, fig in figures.items():
        pngs[key] = _png(fig)
        atomic_write_bytes(out / f"{key}.png", pngs[key])
    order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
    record = {
        "file": name,
        "label": label,
        "class": classes[label],
        "probability": float(probs[label]),
        "top_k": [
            {"label": int(k), "class": classes[k], "probability": float(probs[k])} for k in order
        ],
        "stages": {s.name: list(s.maps.shape) for s in stages},
        "channels_shown": {k: v.tolist() for k, v in chosen.items()},
        "evidence": {
            "method": "Grad-CAM",
            "layer": "layer3 (conv + ReLU, 7x7)",
            "peak": [int(v) for v in np.unravel_index(cam.argmax(), cam.shape)],
        },
        "images": sorted(f"{k}.png" for k in pngs),
    }
    atomic_write_text(out / "explanation.json", json.dumps(record, indent=2) + "\n")
    page = _explain_html(trained, record, pngs, layer_table(model))
    atomic_write_text(out / "index.html", page)
    return record


def _gray_axes(ax):
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _plot_input(original: np.ndarray, seen: np.ndarray):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.3))
    axes[0].imshow(original, cmap="gray", vmin=0, vmax=1)
    axes[0].set_title(f"your image ({original.shape[1]}x{original.shape[0]})", fontsize=10)
    axes[1].imshow(seen, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[1].set_title("what the model saw (28x28)", fontsize=10)
    for ax in axes:
        _gray_axes(ax)
    return fig


def _plot_filters(weights: np.ndarray):
    """The first layer's filters (32, 1, 3, 3) on one symmetric scale: red +, blue -."""
    import matplotlib.pyplot as plt

    n = len(weights)
    cols = 8
    rows = -(-n // cols)
    limit = float(np.abs(weights).max()) or 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.05, rows * 1.15))
    for i, ax in enumerate(np.ravel(axes)):
        _gray_axes(ax)
        if i < n:
            ax.imshow(weights[i, 0], cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_title(f"#{i}", fontsize=8)
    fig.suptitle("layer1: 32 learned 3x3 filters (red adds, blue subtracts)", fontsize=10)
    return fig


def _plot_stages(by_name: dict, layer: str, channels: np.ndarray):
    """Rows: after conv, after ReLU, after pool; columns: the chosen channels."""
    import matplotlib.pyplot as plt

    parts = ("conv", "relu", "pool")
    per_row = 16
    chunks = [channels[i : i + per_row] for i in range(0, len(channels), per_row)]
    rows = len(parts) * len(chunks)
    fig, axes = plt.subplots(rows, per_row, figsize=(per_row * 0.72, rows * 0.86), squeeze=False)
    for p, part in enumerate(parts):
        maps = by_name[f"{layer}.{part}"]
        limit = float(np.abs(maps).max()) or 1.0
        for c, chunk in enumerate(chunks):
            r = p * len(chunks) + c
            for j, ax in enumerate(axes[r]):
                _gray_axes(ax)
                if j >= len(chunk):
                    continue
                m = maps[chunk[j]]
                if part == "conv":  # signed: blue below zero, red above
                    ax.imshow(m, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
                else:
                    ax.imshow(m, cmap="magma", vmin=0, vmax=limit, interpolation="nearest")
                if p == 0:
                    ax.set_title(f"#{chunk[j]}", fontsize=7)
            if c == 0:
                h, w = maps.shape[1:]
                axes[r][0].set_ylabel(
                    f"{part}\n{h}x{w}", fontsize=8, rotation=0, ha="right", va="center"
                )
    shown = (
        "all channels"
        if len(channels) == len(by_name[f"{layer}.relu"])
        else (f"the {len(channels)} most active of {len(by_name[f'{layer}.relu'])} channels")
    )
    fig.subplots_adjust(left=0.08, wspace=0.08, hspace=0.25)
    fig.suptitle(
        f"{layer}: {shown}, after conv, ReLU and max-pool", fontsize=10, y=1.0 + 0.35 / rows
    )  # above the channel numbers; the PNG is cropped tight
    return fig


def _plot_evidence(seen: np.ndarray, cam: np.ndarray, name: str):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(6.4, 3.3))
    axes[0].imshow(seen, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[0].set_title(f"evidence for '{name}' over the input", fontsize=10)
    axes[1].imshow(cam, cmap="jet", vmin=0, vmax=1)
    axes[1].set_title("Grad-CAM (layer3, 7x7, upsampled)", fontsize=10)
    for ax in axes:
        _gray_axes(ax)
    return fig


def _plot_probabilities(probs: np.ndarray, classes: list[str]):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 0.32 * len(classes) + 0.8))
    y = np.arange(len(classes))
    colors = ["#3d5afe" if i == probs.argmax() else "#b7c0f5" for i in y]
    ax.barh(y, probs, color=colors)
    ax.set_yticks(y, classes)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability")
    for i, p in enumerate(probs):
        ax.text(min(p + 0.01, 0.9), i, f"{100 * p:.1f}%", va="center", fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    return fig


def _img(pngs: dict, key: str, alt: str) -> str:
    data = base64.b64encode(pngs[key]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _explain_html(trained, record: dict, pngs: dict, table) -> str:
    fields = {r.name: r.receptive_field for r in table}
    shapes = {r.name: "x".join(str(d) for d in r.output_shape) for r in table}
    top = "".join(
        f"<tr><td>{html.escape(t['class'])}</td><td>{100 * t['probability']:.2f}%</td></tr>"
        for t in record["top_k"]
    )
    title = f"Inside CustomCNN: {record['file']}"
    verdict = f"{html.escape(record['class'])} ({100 * record['probability']:.1f}%)"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}
.lead{{font-size:17px}} figure{{margin:0}} .small{{color:#5b6475;font-size:13px}}</style></head>
<body><header><h1>{html.escape(title)}</h1>
<p>The network trained on {html.escape(trained.dataset)} reads it as <b>{verdict}</b></p></header>
<main>
<section id="input"><h2>1. The input</h2>
<p>Your image is turned into what MNIST's digits look like — ink fitted into a 20x20 box,
centred by its mass in a 28x28 field, white on black — because that is all the network has
ever seen.</p>{_img(pngs, "input", "the input and the 28x28 image the model saw")}</section>

<section id="filters"><h2>2. Convolution: filters that find edges and lines</h2>
<p>The first layer slides each of these 32 learned 3x3 filters over the image. A filter with
red on one side and blue on the other responds to an edge in that direction; a red stripe
responds to a line. Nobody designed them: training found them. The same 10 weights of a filter
are used at every one of the 28x28 positions — <b>weight sharing</b> — so this layer has 320
parameters; with its own 3x3 weights at every position it would need 250,880, and a fully
connected layer of the same sizes about 20 million (<code>mnist-cnn summary</code>).</p>
{_img(pngs, "filters", "first-layer filters")}
</section>

<section id="layer1"><h2>3. Feature maps of layer1: conv, ReLU, max-pool</h2>
<p>Each filter gives one feature map: where in the image its pattern is ({shapes["layer1.conv"]}).
ReLU keeps only positive evidence (blue disappears); max-pooling keeps the strongest value of each
2x2 block, halving width and height ({shapes["layer1.pool"]}). Each value after pooling sees a
<b>local receptive field</b> of {fields["layer1.pool"]}x{fields["layer1.pool"]} input pixels.</p>
{_img(pngs, "features_layer1", "layer1 feature maps")}</section>

<section id="deeper"><h2>4. Deeper layers: fewer pixels, more meaning</h2>
<p>Layer2 combines layer1's maps into 64 ({shapes["layer2.pool"]} after pooling), layer3 into 128
({shapes["layer3.pool"]}). Each value now sees {fields["layer2.pool"]}x{fields["layer2.pool"]} and
then {fields["layer3.pool"]}x{fields["layer3.pool"]} input pixels: parts of strokes, then whole
parts of a digit. Shown: the {DEEP_CHANNELS} channels most active for this image, strongest first.
</p>{_img(pngs, "features_layer2", "layer2 feature maps")}
{_img(pngs, "features_layer3", "layer3 feature maps")}</section>

<section id="evidence"><h2>5. Where the evidence is</h2>
<p>Grad-CAM on the last conv layer: each of its 128 maps (7x7) is weighted by how much the score
of '{html.escape(record["class"])}' rises with it, and the positive sum is laid over the input.
We use Grad-CAM rather than integrated gradients because it is made of the network's own
feature maps — the thing this page is about — and needs one backward pass and no choice of
baseline image; its price is the coarse 7x7 grid (each cell covers 4x4 input pixels).</p>
{_img(pngs, "evidence", "Grad-CAM evidence map")}</section>

<section id="answer"><h2>6. The answer</h2>
<p>The fully connected layers (2048 → 625 → {len(trained.classes)}) read all 128 maps at
once and give one score per class; softmax turns the scores into probabilities.</p>
{_img(pngs, "probabilities", "class probabilities")}
<table><tr><th>class</th><th>probability</th></tr>{top}</table></section>
<p class="small">Made by <code>mnist-cnn explain</code>. See also <code>mnist-cnn probe
--shift</code>: how much a shift of the input changes the answer.</p>
</main></body></html>
"""


def write_probe(result: dict, out_dir) -> Path:
    """DIR/probe-<kind>.png and .json for a probe result; returns the PNG's path."""
    out = prepare_output(out_dir)
    fig = _plot_shift(result) if result["kind"] == "shift" else _plot_rotation(result)
    png = out / f"probe-{result['kind']}.png"
    atomic_write_bytes(png, _png(fig))
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
