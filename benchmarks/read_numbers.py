"""Reading whole numbers: string accuracy, digit accuracy and count errors of `mnist-cnn read`.

Numbers of 2-8 digits are composed from held-out digits (MNIST test digits, and the real
handwriting of ../shared/data/handwriting, cut to its ink by the preprocessing), written on
one line with random spacing (10-50% of the height), size (+-15%) and baseline (+-8%) jitter;
as clean PNGs (dark pen on white) and as photo-like JPEGs (uneven light, tinted paper, noise,
blur); and a touching variant where, in every number, at least one pair of neighbours overlaps
by 1-4 pixels. Each is read with Predictor.read from its encoded bytes, as from a file.

String accuracy: the whole number right, with its 95% interval (Wilson's: 100 numbers at 96%
give 90-98%, 1,000 give 94.6-97.0%; compare versions on the same seed, number by number, with
``--record``). Digit accuracy: 1 - edit distance / length. Count errors: too many or too few
digits. "alone" is the string accuracy the same digits get when predict reads each one by
itself, written clean on white (what the model can do with these digits); "same" is the same,
each digit written alone at the number's height and as the number's variant (photo-like where
the number is): the model's share of the errors on that very kind of image, the rest is
segmentation. With ``--reachable``, also the share of numbers that some reading among the
hypotheses weighed gives right (segment.reachable): what a perfect choice among them would
read, so the rest of the errors lie in the cuts and the classifier, not in the weighing.
Last, the time to read a 4-digit number from a 12-megapixel photo (JPEG file, one thread), for
seven different numbers.

    python benchmarks/read_numbers.py RUN [--count 100] [--lengths 2 ... 8] [--seed 0]
                                     [--handwriting DIR] [--record numbers.jsonl] [--reachable]

``--record`` writes every number read (source, variant, truth, what was read) as JSON lines:
two versions of the code compared number by number, not only by their totals.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from mnist_cnn import load_dataset
from mnist_cnn.predict import Predictor
from mnist_cnn.preprocessing import ImageError, load_image_sized
from mnist_cnn.segment import WORK_SIDE, reachable
from mnist_cnn.synthetic import compose_number, ink_crop, number_image

VARIANTS = {"clean": (False, False), "photo": (False, True), "touching": (True, False)}
LENGTHS = list(range(2, 9))


def mnist_digits(predictor, data_dir=None):
    data = load_dataset("mnist", data_dir)
    return [ink_crop(d) for d in data.test_images.numpy()], data.test_labels.numpy()


def handwriting_digits(predictor, folder: Path):
    """Each real handwritten digit as the ink the preprocessing crops from its image."""
    inks, labels = [], []
    with open(folder / "labels.csv") as f:
        for row in csv.DictReader(f):
            pre = predictor.preprocess(folder / row["file"])
            inks.append(ink_crop(pre.steps["crop"]))
            labels.append(int(row["label"]))
    return inks, np.array(labels)


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def measure(
    predictor, inks, labels, alone, count, rng, lengths=LENGTHS, record=None, singles=None,
    ceiling=False,
) -> dict:  # fmt: skip
    """{(variant, length): figures} for ``count`` numbers of each kind; each number read is
    appended to ``record`` (a list) where given. ``singles`` draws the "same" column's images
    (its own generator: the numbers are those of ``rng`` alone). ``ceiling``: also the share
    of numbers some reading among the hypotheses gives right."""
    singles = singles if singles is not None else np.random.default_rng(0)
    results = {}
    for variant, (touching, photo) in VARIANTS.items():
        for length in lengths:
            right = alone_right = same_right = too_many = too_few = reached = 0
            digit_acc = []
            for _ in range(count):
                pick = rng.choice(len(inks), size=length)
                truth = "".join(str(labels[i]) for i in pick)
                height = int(rng.integers(28, 64))
                canvas, _ = compose_number([inks[i] for i in pick], rng, height, touching)
                image = number_image(canvas, rng, photo)
                # an image read as an error counts as wrong (no number)
                number = predictor.read(image).get("number", "")
                if ceiling:
                    reached += can_reach(predictor, image, truth)
                right += number == truth
                if record is not None:
                    record.append({"variant": variant, "truth": truth, "read": number})
                alone_right += all(alone[pick] == labels[pick])
                same = [number_image(compose_number([inks[i]], singles, height)[0], singles, photo)
                        for i in pick]  # fmt: skip
                read = [r["label"] for r in predictor.predict(same)]
                same_right += read == [labels[i] for i in pick]
                too_many += len(number) > length
                too_few += len(number) < length
                digit_acc.append(max(0.0, 1 - edit_distance(number, truth) / length))
            results[variant, length] = {
                "string": right / count, "digit": float(np.mean(digit_acc)),
                "too_many": too_many, "too_few": too_few, "alone": alone_right / count,
                "same": same_right / count, "reachable": reached / count if ceiling else None,
            }  # fmt: skip
    return results


def can_reach(predictor, image: bytes, truth: str) -> bool:
    """segment.reachable on the image as Predictor.read decodes it (no ink: False)."""
    gray = load_image_sized(image, max_pixels=predictor.max_pixels, side=WORK_SIDE)[0]
    try:
        return reachable(gray, predictor.probabilities, truth)
    except ImageError:
        return False


def predicted_alone(predictor, inks) -> np.ndarray:
    """What predict says of each digit by itself, written clean on white."""
    rng = np.random.default_rng(0)  # margins as wide as half the digit, as in a number
    images = [number_image(np.pad(ink, max(8, ink.shape[0] // 2)), rng, False) for ink in inks]
    return np.array([r["label"] for r in predictor.predict(images)])


def wilson(share: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% interval of a share measured on ``count`` trials (Wilson's score interval)."""
    shrink = 1 + z * z / count
    centre = (share + z * z / (2 * count)) / shrink
    half = z * np.sqrt(share * (1 - share) / count + z * z / (4 * count * count)) / shrink
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def print_table(title: str, results: dict, count: int) -> None:
    ceiling = any(r["reachable"] is not None for r in results.values())
    print(f"\n{title}: {count} numbers per length and variant")
    print("| variant | digits | string accuracy | 95% interval | digit accuracy | too many "
          "| too few | alone | same |" + (" reachable |" if ceiling else ""))  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if ceiling else ""))
    for (variant, length), r in results.items():
        bold = "**" if length == 4 else ""
        low, high = wilson(r["string"], count)
        reach = f" {100 * r['reachable']:.1f}% |" if ceiling else ""
        print(f"| {variant} | {length} | {bold}{100 * r['string']:.1f}%{bold} | "
              f"{100 * low:.1f}-{100 * high:.1f}% | {100 * r['digit']:.1f}% | {r['too_many']} | "
              f"{r['too_few']} | {100 * r['alone']:.1f}% | {100 * r['same']:.1f}% |"
              + reach)  # fmt: skip


def photo_timing(predictor, inks, rng, numbers: int = 7, repeats: int = 3) -> list[float]:
    """Seconds to read a 4-digit number from a 4000x3000 JPEG photo, file to record: for each
    of ``numbers`` different numbers (the time depends on the digits: how many ways their ink
    can be cut), the fastest of ``repeats`` reads."""
    import torch

    torch.set_num_threads(1)
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for n in range(numbers):
            pick = rng.choice(len(inks), size=4)
            canvas, _ = compose_number([inks[i] for i in pick], rng, height=500)
            full = np.zeros((3000, 4000), np.float32)
            y, x = (3000 - canvas.shape[0]) // 2, (4000 - canvas.shape[1]) // 2
            full[y : y + canvas.shape[0], x : x + canvas.shape[1]] = canvas
            path = Path(folder) / f"photo{n}.jpg"
            path.write_bytes(number_image(full, rng, photo=True))
            predictor.read(path)  # warm up
            reads = []
            for _ in range(repeats):
                start = time.perf_counter()
                predictor.read(path)
                reads.append(time.perf_counter() - start)
            times.append(min(reads))
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--count", type=int, default=100, help="numbers per length and variant")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lengths", type=int, nargs="+", default=LENGTHS, metavar="N",
                        help="digits per number (2 to 8)")  # fmt: skip
    parser.add_argument("--data-dir")
    here = Path(__file__).resolve().parent
    parser.add_argument("--handwriting", type=Path,
                        default=here.parent.parent / "shared" / "data" / "handwriting")  # fmt: skip
    parser.add_argument("--record", type=Path, help="every number read, as JSON lines")
    parser.add_argument(
        "--reachable", action="store_true", help="also what a perfect weighing would read"
    )
    args = parser.parse_args()
    predictor = Predictor.from_run(args.run)
    rng = np.random.default_rng(args.seed)
    sources = [("MNIST test digits", mnist_digits(predictor, args.data_dir))]
    if (args.handwriting / "labels.csv").exists():
        sources.append(("real handwriting", handwriting_digits(predictor, args.handwriting)))
    record: list[dict] = []
    for title, (inks, labels) in sources:
        alone = predicted_alone(predictor, inks)
        start = len(record)
        singles = np.random.default_rng([args.seed, len(record)])
        results = measure(
            predictor, inks, labels, alone, args.count, rng, args.lengths, record, singles,
            ceiling=args.reachable,
        )  # fmt: skip
        print_table(title, results, args.count)
        for r in record[start:]:
            r["source"] = title
    if args.record:
        args.record.write_text("".join(json.dumps(r) + "\n" for r in record))
    times = sorted(1000 * t for t in photo_timing(predictor, sources[0][1][0], rng))
    print(f"\n4-digit number in a 12-megapixel JPEG photo, read from the file on one thread: "
          f"median {statistics.median(times):.0f} ms (range {times[0]:.0f}-{times[-1]:.0f} ms, "
          f"{len(times)} different numbers, the fastest of 3 reads each)")  # fmt: skip


if __name__ == "__main__":
    main()
