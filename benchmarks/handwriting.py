"""Accuracy on people's real handwriting, per kind, and a contact sheet of every misread digit.

Reads the development set (``labels.csv``: file,label,kind,source; by default
``../shared/data/handwriting`` beside this repository, never copied into it), predicts each image
with the run's own preprocessing, and prints accuracy per kind (photo, drawn, other), the same
for MNIST test digits rendered as photos, scans and canvas exports (benchmarks/realistic.py's
renders), and how the "unsure" flag splits the answers. The contact sheet shows, for each
misread image, the image as given, the 28x28 the model saw and its top 3: where to look next.

    python benchmarks/handwriting.py RUN [DIR] [--sheet misread.png] [--renders 500]
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from mnist_cnn.predict import Predictor
from mnist_cnn.preprocessing import load_image

sys.path.insert(0, str(Path(__file__).parent))
from realistic import render_set  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "handwriting"
CELL = 96  # pixels per picture on the contact sheet


def read_labels(folder: Path) -> list[dict]:
    with open(folder / "labels.csv", newline="") as f:
        return [dict(r, label=int(r["label"])) for r in csv.DictReader(f)]


def classify(predictor: Predictor, sources: list) -> tuple[np.ndarray, list, float]:
    """Probabilities (N, classes), the Preprocessed of each source, and ms of preprocessing
    per image (the median)."""
    pres, times = [], []
    for s in sources:
        start = time.perf_counter()
        pres.append(predictor.preprocess(s))
        times.append(time.perf_counter() - start)
    probs = predictor.probabilities(np.stack([p.image for p in pres]))
    return probs, pres, 1000 * float(np.median(times))


def accuracy_table(title: str, correct: np.ndarray, kinds: list[str]) -> list[str]:
    names = sorted(set(kinds))
    lines = [f"| {title} | all | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    cells = []
    for k in names:
        mask = np.array([x == k for x in kinds])
        cells.append(f"{100 * correct[mask].mean():.1f}% ({int((~correct[mask]).sum())})")
    wrong = int((~correct).sum())
    lines.append(f"| accuracy (misread) | **{100 * correct.mean():.2f}%** ({wrong}) | "
                 + " | ".join(cells) + " |")  # fmt: skip
    return lines


def unsure_lines(predictor: Predictor, probs: np.ndarray, correct: np.ndarray) -> list[str]:
    flags = np.array([predictor.is_unsure(p) for p in probs])
    sure = ~flags
    return [
        f"unsure: {int(flags.sum())} of {len(flags)} flagged, holding "
        f"{int((~correct & flags).sum())} of {int((~correct).sum())} misreads; "
        f"accuracy of the rest {100 * correct[sure].mean():.2f}% ({int(sure.sum())} images)"
    ]


def contact_sheet(rows: list[tuple[Image.Image, np.ndarray, str, list[str]]]) -> Image.Image:
    """One row per misread: the image as given, the 28x28 the model saw, then text."""
    width, height = 3 * CELL + 220, max(1, len(rows)) * (CELL + 8) + 8
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (original, seen, title, top) in enumerate(rows):
        y = 8 + i * (CELL + 8)
        thumb = ImageOps.contain(original.convert("RGB"), (CELL, CELL))
        sheet.paste(thumb, (8, y))
        seen_img = Image.fromarray(np.round(seen * 255).astype(np.uint8), "L")
        sheet.paste(seen_img.resize((CELL, CELL), Image.Resampling.NEAREST), (16 + CELL, y))
        draw.text((24 + 2 * CELL, y + 4), title, fill="black")
        for j, line in enumerate(top):
            draw.text((24 + 2 * CELL, y + 22 + 14 * j), line, fill="darkred" if j == 0 else "black")
    return sheet


def _picture(source) -> Image.Image:
    """The image as read (transparency on white), for the sheet."""
    return Image.fromarray(np.round(load_image(source) * 255).astype(np.uint8), "L")


def top3(predictor: Predictor, p: np.ndarray) -> list[str]:
    order = np.argsort(-p)[:3]
    flag = "  (unsure)" if predictor.is_unsure(p) else ""
    return [f"{predictor.classes[k]}: {100 * p[k]:.1f}%" + (flag if i == 0 else "")
            for i, k in enumerate(order)]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="run directory or exported .onnx")
    parser.add_argument("dir", nargs="?", default=str(DEFAULT_DIR), help="labels.csv's folder")
    parser.add_argument("--sheet", default="misread.png", help="contact sheet to write")
    parser.add_argument("--renders", type=int, default=500, help="rendered MNIST test digits")
    parser.add_argument("--seed", type=int, default=0, help="of the renders")
    parser.add_argument("--data-dir", help="MNIST's folder (for the renders)")
    args = parser.parse_args()

    predictor = Predictor.from_run(args.run)
    folder = Path(args.dir)
    rows = read_labels(folder)
    labels = np.array([r["label"] for r in rows])
    kinds = [r["kind"] for r in rows]
    probs, pres, ms = classify(predictor, [folder / r["file"] for r in rows])
    correct = probs.argmax(axis=1) == labels
    print(f"{folder}: {len(rows)} real handwritten digits; preprocessing {ms:.2f} ms median")
    print("\n".join(accuracy_table("real handwriting", correct, kinds)))
    print("\n".join(unsure_lines(predictor, probs, correct)))

    sheet_rows = []
    for r, p, pre, ok in zip(rows, probs, pres, correct, strict=True):
        if not ok:
            original = _picture(folder / r["file"])
            title = f"{r['file']} ({r['kind']}): a {r['label']}"
            sheet_rows.append((original, pre.image, title, top3(predictor, p)))

    if args.renders:
        files, r_labels, styles = render_set(predictor.model.dataset, args.renders, args.seed,
                                             args.data_dir)  # fmt: skip
        r_probs, r_pres, r_ms = classify(predictor, [io.BytesIO(f) for f in files])
        r_correct = r_probs.argmax(axis=1) == r_labels
        print(f"\n{args.renders} MNIST test digits rendered (seed {args.seed}); "
              f"preprocessing {r_ms:.2f} ms median")  # fmt: skip
        print("\n".join(accuracy_table("renders", r_correct, styles)))
        print("\n".join(unsure_lines(predictor, r_probs, r_correct)))
        for i in np.flatnonzero(~r_correct):
            original = _picture(io.BytesIO(files[i]))
            title = f"render {i} ({styles[i]}): a {r_labels[i]}"
            sheet_rows.append((original, r_pres[i].image, title, top3(predictor, r_probs[i])))

    contact_sheet(sheet_rows).save(args.sheet)
    print(f"\n{len(sheet_rows)} misread images: {args.sheet}")


if __name__ == "__main__":
    main()
