"""Time and peak memory of reading the crafted files of issue 16, one fresh process per file.

    python benchmarks/hostile_files.py [--src DIR]   # --src: another checkout's src/ to compare

Prints one row per file: the outcome (the first 70 characters of the error), the seconds the
read took (imports not counted) and the peak resident memory of the process (torch's import
alone is about 300 MB). The files:
  gzip bomb    a 1 MB labels .gz whose header says 100 labels and which inflates to 1 GiB
  image_size   a run's config.json with model.args.image_size 300, loaded with load_run
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

READER = r"""
import resource, sys, time
kind, path = sys.argv[1], sys.argv[2]
from mnist_cnn.checkpoint import load_run  # imports first: they are not what is measured
from mnist_cnn.idx import load_idx
start = time.perf_counter()
try:
    load_idx(path) if kind == "idx" else load_run(path)
    outcome = "loaded"
except Exception as e:
    outcome = f"{type(e).__name__}: {e}".replace(path, "...")
took = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{outcome[:70]!s:<72} {took:6.2f} s {peak:8.0f} MB")
"""


def gzip_bomb(path: Path, inflated: int) -> None:
    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    with open(path, "wb") as f:
        f.write(z.compress(struct.pack(">ii", 2049, 100)))
        zeros = bytes(1 << 20)
        for _ in range(inflated >> 20):
            f.write(z.compress(zeros))
        f.write(z.flush())


def big_config_run(folder: Path) -> Path:
    """A run directory whose config.json asks for 300 x 300 inputs (weights of a real model)."""
    sys.path.insert(0, str(ROOT / "src"))
    from mnist_cnn.checkpoint import save_weights
    from mnist_cnn.model import CustomCNN

    run = folder / "run"
    run.mkdir()
    save_weights(run / "model.safetensors", CustomCNN())
    config = {"model": {"architecture": "CustomCNN", "args": {"image_size": 300}},
              "data": {"dataset": "mnist", "classes": [str(i) for i in range(10)],
                       "mean": 0.1307, "std": 0.3081}}  # fmt: skip
    (run / "config.json").write_text(json.dumps(config))
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", default=str(ROOT / "src"), help="the src/ folder to measure")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": args.src}
    with tempfile.TemporaryDirectory() as tmp:
        bomb = Path(tmp) / "t10k-labels-idx1-ubyte.gz"
        gzip_bomb(bomb, 1 << 30)
        run = big_config_run(Path(tmp))
        print(f"reading with {args.src}")
        print(f"{'file':<12} {'outcome':<72} {'time':>8} {'peak':>11}")
        for name, kind, path in (("gzip bomb", "idx", bomb), ("image_size", "run", run)):
            size = f"({path.stat().st_size / 1e6:.1f} MB)" if path.is_file() else ""
            result = subprocess.run([sys.executable, "-c", READER, kind, str(path)], env=env,
                                    capture_output=True, text=True)  # fmt: skip
            print(f"{name:<12} {result.stdout.strip() or result.stderr[-200:]} {size}")


if __name__ == "__main__":
    main()
