"""How far apart the suite's shared trained model lands across CPUs, seeds and thread counts.

The tests that check a trained model's quality (tests/test_predict.py, test_anatomy.py, the
label checks of test_export.py and test_serve.py) use one run trained by tests/conftest.py.
oneDNN picks different kernels per instruction set, so the same seed trains a slightly
different model on another CPU. This script trains that run once per condition, each in its own
process (ONEDNN_MAX_CPU_ISA is read when torch loads), and prints every quantity a test asserts
on, with its minimum and maximum over the conditions: a threshold belongs well outside them.

    nice -n 5 .venv/bin/python benchmarks/test_margins.py --data-dir /work/shared/data \
        --isa default AVX512_CORE AVX2 --threads 1 2 --seeds 777 1 2

Each condition trains 200 steps (2 epochs of 10,000 images): about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def measure(data_dir: str, seed: int, threads: int, settings: dict, int8: bool) -> dict:
    """Train the fixture run with ``seed`` and measure what the tests assert (in this process)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT))
    from mnist_cnn import Predictor, TrainConfig, load_dataset, train
    from mnist_cnn.anatomy import grad_cam
    from mnist_cnn.datasets import get_dataset_info, locate
    from mnist_cnn.probe import probe_rotate, probe_shift, shift_images
    from tests.conftest import REAL_RUN

    torch.set_num_threads(threads)
    os.environ["MNIST_CNN_DATA"] = data_dir  # where `export --quantize int8` finds calibration
    folder = locate(get_dataset_info("mnist"), data_dir)
    isa = "+".join(os.environ[k] for k in ISA_VARIABLES if k in os.environ) or "default"
    out = {"isa": isa, "threads": threads,
           "seed": seed, "cpu": torch.backends.cpu.get_cpu_capability()}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        settings = {**REAL_RUN, **settings}
        out["settings"] = settings
        run = train(TrainConfig(data_dir=str(folder), out=tmp, name="m", seed=seed, **settings))
        out["train_s"] = round(time.perf_counter() - start, 1)
        out["accuracy"] = run.final["test_accuracy"]
        out["loss_drop"] = run.history[0]["train_loss"] - run.history[-1]["train_loss"]
        predictor = Predictor.from_run(run.run_dir)
        data = load_dataset("mnist", folder)
        images, labels = data.test_images.numpy(), data.test_labels.numpy()
        out.update(_realistic(predictor, images, labels))
        model = run.model.cpu().eval()
        out.update(_grad_cam_shifts(model, images, labels, grad_cam, shift_images))
        # which of the first 300 test digits (the test_digits fixture) the model gets wrong
        probs = predictor.probabilities(images[:300] / 255.0)
        out["wrong_of_first_300"] = np.flatnonzero(probs.argmax(1) != labels[:300]).tolist()
        x, y = torch.from_numpy(images[:300, None]), torch.from_numpy(labels[:300].astype(np.int64))
        shift = probe_shift(model, x, y, 0.1307, 0.3081, shifts=[-6, 0, 6])["accuracy"]
        out["probe_plain"] = shift["horizontal"][1]
        out["probe_shifted_max"] = max(shift["horizontal"][0], shift["vertical"][2])
        rot = probe_rotate(model, x, y, 0.1307, 0.3081, angles=[-45, 0])["accuracy"]["rotation"]
        out["probe_rot0_minus_rot45"] = rot[1] - rot[0]
        if int8:  # export checks int8 against fp32 on all 10,000 test images: slow
            out["int8_agree_300"] = _int8_agreement(run.run_dir, Path(tmp), images[:300] / 255.0)
    return out


def _realistic(predictor, images, labels) -> dict:
    """test_realistic_images_score_close_to_mnist_and_plain_resize_does_not, on its 150 images
    and on 300 (the first 150 are the test's: same renderer, same rng)."""
    import io

    import numpy as np
    from PIL import Image

    from mnist_cnn.synthetic import STYLES, render

    rng = np.random.default_rng(0)
    files = [render(d, STYLES[i % len(STYLES)], rng) for i, d in enumerate(images[:300])]
    right = np.array([r["label"] for r in predictor.predict(files)]) == labels[:300]
    as_is = predictor.probabilities(images[:300] / 255.0).argmax(1) == labels[:300]
    plain = [np.asarray(Image.open(io.BytesIO(f)).convert("L").resize((28, 28)), np.float32) / 255
             for f in files]  # fmt: skip
    naive = predictor.probabilities(np.stack(plain)).argmax(1) == labels[:300]
    return {f"realistic_{n}": {"ours": float(right[:n].mean()), "as_is": float(as_is[:n].mean()),
                               "gap": float(as_is[:n].mean() - right[:n].mean()),
                               "naive": float(naive[:n].mean())}
            for n in (150, 300)}  # fmt: skip


def _grad_cam_shifts(model, images, labels, grad_cam, shift_images, n: int = 100) -> dict:
    """How far Grad-CAM's centre moves when a digit moves 8 pixels (-4 -> +4), per image."""
    import numpy as np
    import torch

    cols = np.arange(28)
    moves = []
    for i in range(n):
        digit = torch.from_numpy(images[i : i + 1, None]).float() / 255
        centres = []
        for dx in (-4, 4):
            cam = grad_cam(model, (shift_images(digit, dx, 0) - 0.1307) / 0.3081, int(labels[i]))
            centres.append(float((cam.sum(0) * cols).sum() / max(cam.sum(), 1e-12)))
        moves.append(centres[1] - centres[0])
    moves = np.array(moves)
    return {"gradcam_first5": [round(float(m), 2) for m in moves[:5]],
            "gradcam_mean_100": float(moves.mean()), "gradcam_median_100": float(np.median(moves)),
            "gradcam_min_100": float(moves.min())}  # fmt: skip


def _int8_agreement(run_dir: Path, tmp: Path, images) -> float:
    from mnist_cnn.cli import main
    from mnist_cnn.predict import Predictor

    for name, extra in (("m.onnx", []), ("m.int8.onnx", ["--quantize", "int8"])):
        assert main(["export", str(run_dir), "-o", str(tmp / name), *extra]) == 0
    fp32 = Predictor.from_run(tmp / "m.onnx").probabilities(images).argmax(1)
    int8 = Predictor.from_run(tmp / "m.int8.onnx").probabilities(images).argmax(1)
    return float((fp32 == int8).mean())


def isa_env(isa: str) -> dict:
    """The environment that limits oneDNN to ``isa``; "AVX2-all" limits ATen's own kernels and
    MKL to AVX2 too (the closest this CPU gets to one without AVX-512)."""
    if isa == "default":
        return {}
    if isa == "AVX2-all":
        return {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2",
                "MKL_ENABLE_INSTRUCTIONS": "AVX2"}  # fmt: skip
    return {"ONEDNN_MAX_CPU_ISA": isa}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("MNIST_CNN_DATA"))
    parser.add_argument("--isa", nargs="+", default=["default", "AVX512_CORE", "AVX2"])
    parser.add_argument("--threads", nargs="+", type=int, default=[2])
    parser.add_argument("--seeds", nargs="+", type=int, default=[777])
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)  # seed threads
    parser.add_argument(
        "--set",
        default="{}",
        metavar="JSON",
        help='try other fixture settings, e.g. \'{"schedule": "onecycle"}\'',
    )
    parser.add_argument("--int8", action="store_true", help="also test_int8_is_smaller_and_agrees")
    parser.add_argument("--jsonl", help="append each condition's figures to this file")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.data_dir, *args.child, json.loads(args.set), args.int8)))
        return 0
    rows = []
    for isa in args.isa:
        for threads in args.threads:
            for seed in args.seeds:
                env = {k: v for k, v in os.environ.items() if k not in ISA_VARIABLES}
                env["OMP_NUM_THREADS"] = str(threads)
                env.update(isa_env(isa))
                cmd = [sys.executable, __file__, "--data-dir", args.data_dir or "",
                       "--set", args.set, "--child", str(seed), str(threads),
                       *(["--int8"] if args.int8 else [])]  # fmt: skip
                done = subprocess.run(cmd, env=env, capture_output=True, text=True)
                if done.returncode:
                    sys.exit(f"{isa} {threads} {seed} failed:\n{done.stderr[-3000:]}")
                row = json.loads(done.stdout.strip().splitlines()[-1])
                print(json.dumps(row), flush=True)
                if args.jsonl:
                    with open(args.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
                rows.append(row)
    summarize(rows)
    return 0


def summarize(rows: list[dict]) -> None:
    """Minimum and maximum of each figure over the conditions."""

    def flat(row: dict, prefix: str = ""):
        for k, v in row.items():
            if isinstance(v, dict):
                yield from flat(v, f"{prefix}{k}.")
            elif isinstance(v, float):
                yield prefix + k, v

    figures: dict[str, list[float]] = {}
    for row in rows:
        for k, v in flat(row):
            figures.setdefault(k, []).append(v)
    print(f"\n{len(rows)} conditions")
    for k, vs in figures.items():
        print(f"{k:<28} min {min(vs):8.4f}   max {max(vs):8.4f}")
    wrong = sorted({i for r in rows for i in r["wrong_of_first_300"]})
    print(f"{'first 300: ever wrong':<28} {wrong}")


if __name__ == "__main__":
    sys.exit(main())
