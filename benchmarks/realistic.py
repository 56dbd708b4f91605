"""Accuracy on people's kind of images: MNIST test digits rendered as photos, scans, exports.

Each test digit is rendered in one of the styles of mnist_cnn.synthetic (large canvases with
margins, dark ink on light paper, paper noise and uneven light, blur, JPEG, transparent PNG,
chalk on a board, thin pens) and classified two ways: with mnist-cnn's preprocessing (as MNIST
was made), and with a plain resize of the grayscale image to 28x28. Both are compared to the
model's accuracy on the same MNIST test digits as they are.

    python benchmarks/realistic.py RUN [--count 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from mnist_cnn import load_dataset
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocessing import load_image
from mnist_cnn.synthetic import STYLES, render


def plain_resize(data: bytes) -> np.ndarray:
    """What a naive user does: grayscale (alpha on white), resize to 28x28, nothing else."""
    gray = load_image(data)
    img = Image.fromarray(np.round(gray * 255).astype(np.uint8), "L").resize((28, 28))
    return np.asarray(img, np.float32) / 255.0


def render_set(dataset: str, count: int, seed: int, data_dir=None, digits_too: bool = False):
    """``count`` test digits (picked by ``seed``) rendered as files, the styles in turn:
    (files, labels, styles), and the digits themselves if ``digits_too``."""
    data = load_dataset(dataset, data_dir)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(data.test_images), size=count, replace=False)
    digits, labels = data.test_images[pick].numpy(), data.test_labels[pick].numpy()
    styles = [STYLES[i % len(STYLES)] for i in range(count)]
    files = [render(d, s, rng) for d, s in zip(digits, styles, strict=True)]
    return (files, labels, styles, digits) if digits_too else (files, labels, styles)


def evaluate(run: str, count: int, seed: int, data_dir=None) -> dict:
    predictor = Predictor.from_run(run)
    files, labels, styles, digits = render_set(predictor.model.dataset, count, seed, data_dir,
                                               digits_too=True)  # fmt: skip

    ours = np.stack([predictor.preprocess(io.BytesIO(f)).image for f in files])
    plain = np.stack([plain_resize(f) for f in files])
    as_is = digits.astype(np.float32) / 255.0
    results = {}
    for name, images in (("MNIST digits as they are", as_is), ("mnist-cnn preprocessing", ours),
                         ("plain resize to 28x28", plain)):  # fmt: skip
        pred = predictor.probabilities(images).argmax(axis=1)
        correct = pred == labels
        results[name] = {
            "all": correct.mean(),
            **{s: correct[[x == s for x in styles]].mean() for s in STYLES},
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    results = evaluate(args.run, args.count, args.seed, args.data_dir)
    print(f"{args.count} MNIST test digits, {len(STYLES)} styles in turn, seed {args.seed}")
    print("| input | all | " + " | ".join(STYLES) + " |")
    print("|---|---|" + "---|" * len(STYLES))
    for name, r in results.items():
        cells = " | ".join(f"{100 * r[s]:.1f}%" for s in STYLES)
        print(f"| {name} | **{100 * r['all']:.2f}%** | {cells} |")


if __name__ == "__main__":
    main()
