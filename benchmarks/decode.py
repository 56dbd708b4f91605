"""Decoding and preprocessing people's images, one core: time per image, and whether the early
reduction (JPEG draft mode, box reduction to REDUCED_SIDE) changes any answer.

Compares ``load_image`` with a full decode (every pixel decoded, EXIF-rotated, converted to
grayscale), both followed by ``to_mnist``, on the labelled real handwriting set, in CPU time
(the machine may be shared):

    python benchmarks/decode.py /work/shared/data/handwriting [--run RUN]
    python benchmarks/decode.py /work/shared/data/handwriting --crop IMAGE

With ``--run``, both paths' 28x28 images go through the model and the script prints the
accuracy of each and how many answers differ. With ``--crop FILE``, it times instead the
service's typical photo crop: FILE resized to 131x223, through to_mnist alone and decoded from
its PNG (RGB) then preprocessed; CPU ms per image, median of rounds of 200 calls. On a shared
machine, run it for two versions side by side (PYTHONPATH=... each) and compare the ratio.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mnist_cnn import preprocessing
from mnist_cnn.preprocessing import load_image, to_mnist


def full_decode(data: bytes) -> np.ndarray:
    """The reference: every pixel decoded, then rotated and converted (no early reduction)."""
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode in ("RGBA", "LA", "PA", "P"):
            img = img.convert("RGBA")
            white = Image.new("RGBA", img.size, (255, 255, 255, 255))
            img = Image.alpha_composite(white, img)
        return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def timed(fn, data: bytes, repeat: int) -> tuple[float, object]:
    """Median CPU milliseconds of ``fn(data)`` then to_mnist, and the last result. CPU time,
    not wall time: on a shared machine the wall clock also counts the waits for a core."""
    times, out = [], None
    for _ in range(repeat):
        start = time.process_time()
        out = to_mnist(fn(data))
        times.append((time.process_time() - start) * 1000)
    return statistics.median(times), out


def time_crop(path: str, rounds: int = 7, calls: int = 200) -> None:
    """CPU ms per image for a 131x223 crop of ``path``: to_mnist, and PNG decode + to_mnist."""
    with Image.open(path) as img:
        small = img.convert("RGB").resize((131, 223), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    data = buffer.getvalue()
    gray = np.asarray(small.convert("L"), np.float32) / 255.0
    paths = {
        "to_mnist": lambda: to_mnist(gray),
        f"PNG ({len(data) // 1024} KB) + to_mnist": lambda: to_mnist(load_image(data)),
    }
    for name, fn in paths.items():
        for _ in range(20):  # warm up
            fn()
        times = []
        for _ in range(rounds):
            start = time.process_time()
            for _ in range(calls):
                fn()
            times.append((time.process_time() - start) / calls * 1000)
        print(
            f"131x223 crop, {name}: median {statistics.median(times):.3f} ms "
            f"(range {min(times):.3f}-{max(times):.3f}, {rounds} rounds of {calls})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a folder with labels.csv (file,label,...) and images")
    parser.add_argument("--run", help="a run directory: compare the answers too")
    parser.add_argument("--repeat", type=int, default=5, help="timings per image (5)")
    parser.add_argument("--show", nargs="*", default=[], help="files to report one by one")
    parser.add_argument("--side", type=int, help="reduce to this side instead of REDUCED_SIDE")
    parser.add_argument("--crop", metavar="FILE", help="time a 131x223 crop of FILE instead")
    args = parser.parse_args()
    if args.side:
        preprocessing.REDUCED_SIDE = args.side
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    except (AttributeError, OSError):
        pass
    if args.crop:
        time_crop(args.crop)
        return
    folder = Path(args.folder)
    rows = list(csv.DictReader((folder / "labels.csv").open()))
    fast_ms, full_ms, fast_images, full_images, labels = [], [], [], [], []
    for row in rows:
        data = (folder / row["file"]).read_bytes()
        try:
            t_fast, fast = timed(load_image, data, args.repeat)
            t_full, full = timed(full_decode, data, args.repeat)
        except Exception as e:  # an image no path can use (blank...): the same for both
            print(f"{row['file']}: skipped ({e})")
            continue
        fast_ms.append(t_fast)
        full_ms.append(t_full)
        fast_images.append(fast.image)
        full_images.append(full.image)
        labels.append(int(row["label"]))
        if row["file"] in args.show:
            with Image.open(folder / row["file"]) as img:
                size = f"{img.format} {img.width}x{img.height}"
            print(f"{row['file']} ({size}): {t_full:.2f} ms CPU full decode -> {t_fast:.2f} ms")
    print(
        f"{len(labels)} images, one core: decode + preprocess median {np.median(full_ms):.2f} ms "
        f"-> {np.median(fast_ms):.2f} ms, total {sum(full_ms):.0f} -> {sum(fast_ms):.0f} ms"
    )
    diff = [float(np.abs(a - b).mean()) for a, b in zip(fast_images, full_images, strict=True)]
    print(f"28x28 images: mean |difference| {np.mean(diff):.4f}, largest {max(diff):.4f}")
    if args.run:
        from mnist_cnn import Predictor

        predictor = Predictor.from_run(args.run)
        y = np.array(labels)
        fast = predictor.probabilities(np.stack(fast_images)).argmax(1)
        full = predictor.probabilities(np.stack(full_images)).argmax(1)
        print(
            f"accuracy: full decode {100 * (full == y).mean():.1f}%, early reduction "
            f"{100 * (fast == y).mean():.1f}%; {(fast != full).sum()} answers differ"
        )


if __name__ == "__main__":
    main()
