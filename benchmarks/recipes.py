"""Recipes side by side on one device: s/epoch, images/s, time to 99.0/99.3/99.5%, final accuracy.

Each (recipe, seed) trains on the full training set after a short warm-up run of the same
configuration (cuDNN autotuning, torch.compile), timed separately. "Training time" counts the
training steps only (evaluation after each epoch is not included); time to an accuracy is the
training time of the first epoch whose test accuracy reaches it. The naive pipeline (per-sample
PIL Dataset + DataLoader, as torchvision's MNIST) is timed in the same run for comparison.
Accuracy is always the last epoch's, never the best epoch's. With several --precision values,
each seed runs in each precision one after the other (so load on a shared machine hits both
alike), and the mean final accuracies are compared per recipe.

    python benchmarks/recipes.py --device cpu --recipes fast reference
    python benchmarks/recipes.py --recipes fast --seeds 777 1 2 --precision fp32 bf16
    python benchmarks/recipes.py --recipes best --seeds 777 1 2          # mean and spread
    python benchmarks/recipes.py --runs runs/best-*                      # summarize finished runs
    python benchmarks/recipes.py --device cuda --recipes fast --precision bf16 --compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from mnist_cnn import TrainConfig, load_dataset, train

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import naive_batches, plain_epoch  # noqa: E402

THRESHOLDS = (0.990, 0.993, 0.995)


def summarize(history: list[dict]) -> dict:
    seconds, reached = 0.0, {}
    for record in history:
        seconds += record["epoch_seconds"]
        for t in THRESHOLDS:
            if t not in reached and record["test_accuracy"] >= t:
                reached[t] = seconds
    return {
        "epochs": len(history),
        "s_per_epoch": statistics.median(r["epoch_seconds"] for r in history),
        "images_per_s": statistics.median(r["images_per_second"] for r in history),
        "train_s": seconds,
        "reached": reached,
        "final": history[-1]["test_accuracy"],
    }


def run_recipe(recipe: str, seed: int, overrides: dict, out: str) -> dict:
    warm = TrainConfig.from_recipe(recipe, **{**overrides, "epochs": 1, "limit_train": 2048})
    start = time.perf_counter()
    train(warm, log=None)
    warmup = time.perf_counter() - start
    config = TrainConfig.from_recipe(recipe, **{**overrides, "seed": seed})
    result = train(config)
    device = str(next(result.model.parameters()).device)
    precision = json.loads((result.run_dir / "config.json").read_text())["precision"]
    return {**summarize(result.history), "warmup_s": warmup, "device": device,
            "precision": precision}  # fmt: skip


def table(rows: list[tuple[str, dict]]) -> str:
    reach = [f"to {100 * t:.1f}%" for t in THRESHOLDS]
    lines = [
        f"| recipe | precision | seed | epochs | s/epoch | images/s | {' | '.join(reach)} "
        "| training s | final test acc | warm-up s |",
        "|---" * (9 + len(reach)) + "|",
    ]

    def at(s, t):
        return f"{s['reached'][t]:.1f} s" if t in s["reached"] else "not reached"

    for name, s in rows:
        lines.append(
            f"| {name} | {s.get('precision', 'fp32')} | {s.get('seed', '')} | {s['epochs']} | "
            f"{s['s_per_epoch']:.2f} | {s['images_per_s']:,.0f} | "
            f"{' | '.join(at(s, t) for t in THRESHOLDS)} | {s['train_s']:.1f} | "
            f"{100 * s['final']:.2f}% | {s.get('warmup_s', float('nan')):.1f} |"
        )
    return "\n".join(lines)


def spread(rows: list[tuple[str, dict]]) -> str:
    by_recipe: dict[tuple[str, str], list[float]] = {}
    for name, s in rows:
        by_recipe.setdefault((name, s.get("precision", "fp32")), []).append(100 * s["final"])
    out = []
    for (name, precision), accs in by_recipe.items():
        if len(accs) > 1:
            out.append(
                f"{name} {precision}: final test accuracy {statistics.mean(accs):.3f}% mean, "
                f"{statistics.stdev(accs):.2f} std, min {min(accs):.2f}%, max {max(accs):.2f}% "
                f"over {len(accs)} seeds"
            )
    for name in dict.fromkeys(name for name, _ in by_recipe):
        fp32, bf16 = by_recipe.get((name, "fp32")), by_recipe.get((name, "bf16"))
        if fp32 and bf16:
            diff = statistics.mean(bf16) - statistics.mean(fp32)
            out.append(f"{name}: bf16 mean - fp32 mean = {diff:+.3f} points "
                       f"({len(bf16)} and {len(fp32)} seeds)")  # fmt: skip
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["fast", "reference"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[777])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data-dir")
    parser.add_argument("--precision", nargs="+", choices=["auto", "fp32", "bf16"],
                        help="one run per seed in each (default: the recipe's own)")  # fmt: skip
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--naive-images", type=int, default=6000, help="0 skips the naive run")
    parser.add_argument("--runs", nargs="+", help="summarize these finished run directories")
    args = parser.parse_args()

    rows = []
    if args.runs:
        for run in map(Path, args.runs):
            cfg = json.loads((run / "config.json").read_text())
            history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
            precision = cfg.get("precision", cfg["training"].get("precision", "fp32"))
            summary = {
                **summarize(history),
                "seed": cfg["training"]["seed"],
                "precision": precision,
            }
            rows.append((cfg["training"]["recipe"], summary))
        print(f"device: {cfg['device']}, torch {cfg['versions']['torch']}")
        print(table(rows))
        print(spread(rows))
        return

    overrides = {"device": args.device, "data_dir": args.data_dir}
    for key in ("batch_size", "lr", "epochs"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.compile:
        overrides["compile"] = True
    with tempfile.TemporaryDirectory() as out:
        overrides["out"] = out
        for recipe in args.recipes:
            for seed in args.seeds:
                for precision in args.precision or [None]:
                    given = {**overrides, **({"precision": precision} if precision else {})}
                    rows.append((recipe, {**run_recipe(recipe, seed, given, out), "seed": seed}))
    device = rows[0][1]["device"] if rows else args.device
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"device: {name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print(table(rows))
    if spread(rows):
        print(spread(rows))
    if args.naive_images:
        data = load_dataset("mnist", args.data_dir)
        n = min(args.naive_images, len(data.train_images))
        plain_epoch(naive_batches(data, min(n, 500), 100, workers=0), device)  # warm-up
        seconds = plain_epoch(naive_batches(data, n, 100, workers=0), device)
        print(
            f"naive pipeline on {device} (PIL Dataset + DataLoader, batch 100, fp32), same run: "
            f"{n / seconds:,.0f} images/s, {seconds * len(data.train_images) / n:.1f} s per epoch"
        )


if __name__ == "__main__":
    main()
