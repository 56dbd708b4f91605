"""Draw docs/images/preprocessing.png: each preprocessing step on photo-like renders of digits.

python benchmarks/preprocessing_figure.py [--out docs/images/preprocessing.png]
"""

from __future__ import annotations

import argparse
import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from mnist_cnn import load_dataset  # noqa: E402
from mnist_cnn.preprocessing import preprocess  # noqa: E402
from mnist_cnn.synthetic import render  # noqa: E402

STEPS = [
    ("input", "1. input (as read, grayscale)"),
    ("polarity", "2. polarity: ink bright"),
    ("ink", "3. background and lighting\nremoved, ink stretched"),
    ("crop", "4. bounding box of the ink"),
    ("box20", "5. longer side 20 px,\nanti-aliased"),
    ("mnist", "6. 28x28, centre of mass\nat the centre"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/images/preprocessing.png")
    parser.add_argument("--data-dir")
    args = parser.parse_args()
    data = load_dataset("mnist", args.data_dir)
    rng = np.random.default_rng(3)
    examples = [(data.test_images[0], "photo"), (data.test_images[1], "chalkboard"),
                (data.test_images[4], "thin-pen")]  # fmt: skip
    fig, axes = plt.subplots(len(examples), len(STEPS) + 1, figsize=(15, 2.6 * len(examples)))
    for row, (digit, style) in enumerate(examples):
        raw = render(digit.numpy(), style, rng)
        original = Image.open(io.BytesIO(raw)).convert("RGB")
        pre = preprocess(raw)
        axes[row, 0].imshow(original)
        axes[row, 0].set_title(f"the file ({style})", fontsize=9)
        for col, (key, title) in enumerate(STEPS, start=1):
            ax = axes[row, col]
            ax.imshow(pre.steps[key], cmap="gray", vmin=0, vmax=1)
            if row == 0:
                ax.set_title(title, fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
