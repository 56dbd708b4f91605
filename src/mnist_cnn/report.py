"""The evaluation report: one self-contained HTML page and its PNGs (matplotlib, Agg backend)."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from .errors import ConfigError
from .files import atomic_write_bytes, atomic_write_text

PLOTS = ("curves", "confusion", "per_class", "mistakes", "reliability")


def per_class_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class from confusion[true][predicted]."""
    tp = np.diag(confusion).astype(float)
    predicted, actual = confusion.sum(axis=0), confusion.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, actual, out=np.zeros_like(tp), where=actual > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": actual}


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Reliability-diagram bins and the expected calibration error (ECE)."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    acc = np.bincount(which, weights=correct, minlength=bins) / np.maximum(count, 1)
    conf = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count / max(len(labels), 1) * np.abs(acc - conf)))
    return {"edges": edges, "count": count, "accuracy": acc, "confidence": conf, "ece": ece}


def write_report(
    out_dir, *, images, labels, probs, classes, history, title: str, subtitle: str = ""
) -> Path:
    """Write DIR/report.html (images embedded) and DIR/<plot>.png; returns the HTML's path."""
    out = prepare_output(out_dir)
    images, labels, probs = np.asarray(images), np.asarray(labels), np.asarray(probs)
    pred = probs.argmax(axis=1)
    n = len(classes)
    confusion = np.bincount(labels * n + pred, minlength=n * n).reshape(n, n)
    scores = per_class_scores(confusion)
    calib = calibration(probs, labels)
    figures = {
        "curves": _plot_curves(history),
        "confusion": _plot_confusion(confusion, classes),
        "per_class": _plot_per_class(scores, classes),
        "mistakes": _plot_mistakes(images, labels, probs, classes),
        "reliability": _plot_reliability(calib),
    }
    pngs = {}
    for name, fig in figures.items():
        pngs[name] = _png(fig)
        atomic_write_bytes(out / f"{name}.png", pngs[name])
    accuracy = float((pred == labels).mean())
    page = _html(title, subtitle, accuracy, len(labels), scores, classes, calib, pngs)
    path = atomic_write_text(out / "report.html", page)
    summary = {
        "accuracy": accuracy,
        "ece": calib["ece"],
        "count": len(labels),
        **{k: v.tolist() for k, v in scores.items()},
    }
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return path


def prepare_output(out_dir, field: str = "out_dir") -> Path:
    """The folder for a set of plots, created; matplotlib set to draw without a screen.
    ``field``: the caller's name for the folder, which an error names."""
    import matplotlib

    matplotlib.use("Agg")
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(field, f"{out}: {e.strerror}") from None
    return out


def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _plot_curves(history: list[dict]):
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if not history:
        for ax in (left, right):
            ax.text(0.5, 0.5, "no metrics.jsonl: trained elsewhere", ha="center", va="center")
            ax.set_axis_off()
        return fig
    epochs = [r["epoch"] for r in history]
    left.plot(epochs, [r["train_loss"] for r in history], "o-", label="train loss")
    left.plot(epochs, [r["test_loss"] for r in history], "s-", label="test loss")
    if "val_loss" in history[0]:
        left.plot(epochs, [r["val_loss"] for r in history], "^-", label="validation loss")
    left.set(xlabel="epoch", ylabel="cross-entropy", title="Loss", yscale="log")
    left.legend()
    right.plot(epochs, [100 * r["test_accuracy"] for r in history], "s-", color="C1", label="test")
    if "val_accuracy" in history[0]:
        right.plot(
            epochs, [100 * r["val_accuracy"] for r in history], "^-", color="C2", label="validation"
        )
    right.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    right.legend()
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_confusion(confusion: np.ndarray, classes: list[str]):
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    n = len(classes)
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    shown = np.where(confusion > 0, confusion, np.nan)
    im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(confusion.max(), 2)))
    for i in range(n):
        for j in range(n):
            if confusion[i, j]:
                bright = confusion[i, j] > np.sqrt(max(confusion.max(), 1))
                ax.text(
                    j,
                    i,
                    str(confusion[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="black" if bright else "white",
                )
    ax.set_xticks(range(n), classes, rotation=45 if max(map(len, classes)) > 2 else 0)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (log colour scale)")
    fig.colorbar(im, ax=ax, shrink=0.8, label="images")
    fig.tight_layout()
    return fig


def _plot_per_class(scores: dict, classes: list[str]):
    import matplotlib.pyplot as plt

    n = len(classes)
    x = np.arange(n)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for k, name in enumerate(("precision", "recall", "f1")):
        ax.bar(x + (k - 1) * 0.27, 100 * scores[name], width=0.27, label=name)
    low = max(0.0, 100 * min(scores[m].min() for m in ("precision", "recall", "f1")) - 2)
    ax.set_ylim(low, 100.5)
    ax.set_xticks(x, classes)
    ax.set(ylabel="%", title="Per-class precision, recall and F1")
    ax.legend(loc="lower right", ncol=3)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _plot_mistakes(images, labels, probs, classes, count: int = 24):
    import matplotlib.pyplot as plt

    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != labels)
    wrong = wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:count]
    cols = 8
    rows = max(1, int(np.ceil(len(wrong) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.35, rows * 1.6 + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    if len(wrong) == 0:
        axes[0, 0].text(0, 0.5, "no mistakes", fontsize=12)
    for ax, i in zip(axes.ravel(), wrong, strict=False):
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255 if images.dtype == np.uint8 else 1)
        ax.set_title(
            f"true {classes[labels[i]]}\npred {classes[pred[i]]} {100 * probs[i, pred[i]]:.0f}%",
            fontsize=8,
            color="#b00020",
        )
    fig.suptitle("Most confident mistakes", y=1.0)
    fig.tight_layout()
    return fig


def _plot_reliability(calib: dict):
    import matplotlib.pyplot as plt

    edges, count = calib["edges"], calib["count"]
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(5.6, 5.6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    used = count > 0
    top.bar(
        centers[used],
        calib["accuracy"][used],
        width=width * 0.9,
        label="accuracy",
        edgecolor="black",
        alpha=0.8,
    )
    top.plot([0, 1], [0, 1], "--", color="gray", label="perfectly calibrated")
    top.set(ylabel="accuracy", title=f"Reliability diagram (ECE {100 * calib['ece']:.2f}%)")
    top.legend(loc="upper left")
    bottom.bar(centers, count, width=width * 0.9, color="C1")
    bottom.set(xlabel="confidence (top probability)", ylabel="images", yscale="log")
    fig.tight_layout()
    return fig


_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f6f7f9;
color:#1d2433}
header{background:#1d2433;color:#fff;padding:24px 32px}header h1{margin:0 0 4px;font-size:24px}
header p{margin:0;opacity:.8}main{max-width:1100px;margin:0 auto;padding:24px 32px}
.cards{display:flex;gap:16px;flex-wrap:wrap;margin-bottom:24px}
.card{background:#fff;border-radius:10px;padding:16px 20px;box-shadow:0 1px 3px #0002;
min-width:150px}.card b{display:block;font-size:28px}.card span{color:#5b6475}
section{background:#fff;border-radius:10px;padding:16px 24px;margin-bottom:24px;
box-shadow:0 1px 3px #0002}section h2{margin-top:4px;font-size:18px}
img{max-width:100%;height:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
td,th{padding:4px 12px;text-align:right;border-bottom:1px solid #e3e6eb}th:first-child,
td:first-child{text-align:left}.low{color:#b00020;font-weight:600}
"""


def _html(title, subtitle, accuracy, count, scores, classes, calib, pngs) -> str:
    def img(name, alt):
        data = base64.b64encode(pngs[name]).decode("ascii")
        return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'

    worst = int(np.argmin(scores["f1"]))
    rows = "".join(
        f"<tr><td>{html.escape(c)}</td>"
        + "".join(
            f"<td{' class=low' if i == worst else ''}>{100 * scores[m][i]:.2f}%</td>"
            for m in ("precision", "recall", "f1")
        )
        + f"<td>{int(scores['support'][i]):,}</td></tr>"
        for i, c in enumerate(classes)
    )
    cards = [
        (f"{100 * accuracy:.2f}%", "accuracy"),
        (f"{count - round(accuracy * count):,}", f"mistakes of {count:,}"),
        (f"{100 * calib['ece']:.2f}%", "calibration error (ECE)"),
        (html.escape(classes[worst]), "hardest class (lowest F1)"),
    ]
    card_html = "".join(f'<div class="card"><b>{v}</b><span>{k}</span></div>' for v, k in cards)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title><style>{_CSS}</style></head>
<body><header><h1>{html.escape(title)}</h1><p>{html.escape(subtitle)}</p></header><main>
<div class="cards">{card_html}</div>
<section id="curves"><h2>Training curves</h2>{img("curves", "training curves")}</section>
<section id="confusion"><h2>Confusion matrix</h2>{img("confusion", "confusion matrix")}</section>
<section id="per-class"><h2>Per-class precision, recall and F1</h2>
{img("per_class", "per-class scores")}
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>images</th></tr>
{rows}</table></section>
<section id="mistakes"><h2>Most confident mistakes</h2>
<p>The test images the model got wrong while most sure of itself: look for mislabelled or
ambiguous digits.</p>{img("mistakes", "most confident mistakes")}</section>
<section id="reliability"><h2>Calibration</h2><p>How far the model's confidence matches how
often it is right; the expected calibration error is the gap, averaged over images.</p>
{img("reliability", "reliability diagram")}</section>
</main></body></html>
"""
