"""Inference speed, one run on one machine: eager PyTorch, tuned PyTorch, ONNX Runtime fp32/int8.

Batch-1 latency (p50/p99 over --iterations calls after a warm-up) and throughput at batch 256
and 1000 (images/s, median of --repeats). All on the CPU; thread counts are printed.

    python benchmarks/inference.py RUN [--onnx model.onnx] [--int8 model.int8.onnx]

Without --onnx/--int8 the run is exported to a temporary folder first (checked, as always).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from mnist_cnn import load_run
from mnist_cnn.onnx_model import OnnxModel

sys.path.insert(0, str(Path(__file__).parent))
from train_speed import cpu_name  # noqa: E402


def latency_ms(fn, x, iterations: int) -> tuple[float, float]:
    for _ in range(max(20, iterations // 10)):
        fn(x)
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - start) * 1000)
    return float(np.percentile(times, 50)), float(np.percentile(times, 99))


def throughput(fn, x, repeats: int) -> float:
    fn(x)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x)
        rates.append(len(x) / (time.perf_counter() - start))
    return statistics.median(rates)


def weight_stream_floor_ms(model, threads: int) -> tuple[float, float]:
    """The least time batch 1 can take on this machine for fc1 alone, in fp32.

    At batch 1, fc1 reads each of its 2048 x 625 fp32 weights (5.1 MB) once. When they do not
    fit in the cores' L2 caches they come from L3 or memory every call, so reading that many
    bytes (a parallel sum over a buffer of the same size, on the same threads) bounds fc1 from
    below. Returns (floor in ms, bytes read in MB).
    """
    nbytes = model.fc1.weight.numel() * 4
    buffer = torch.rand(nbytes // 4)
    torch.set_num_threads(threads)
    p50, _ = latency_ms(lambda _: buffer.sum(), None, 2000)
    return p50, nbytes / 1e6


def torch_runners(model) -> dict:
    eager = model.eval()

    def run_eager(x):
        with torch.no_grad():
            return eager(torch.from_numpy(x))

    fast = load_like(model).to(memory_format=torch.channels_last).eval()

    def run_fast(x):
        with torch.inference_mode():
            return fast(torch.from_numpy(x).contiguous(memory_format=torch.channels_last))

    runners = {"PyTorch eager (NCHW, no_grad)": run_eager,
               "PyTorch channels_last + inference_mode": run_fast}  # fmt: skip
    compiled = torch.compile(load_like(model).eval(), dynamic=False)

    def run_compiled(x):
        with torch.inference_mode():
            return compiled(torch.from_numpy(x))

    try:
        for batch in (1, 256, 1000):  # compile now (it is lazy), once per shape
            run_compiled(np.zeros((batch, 1, 28, 28), np.float32))
        runners["PyTorch torch.compile (inductor)"] = run_compiled
    except Exception as e:  # compile needs a C compiler; report and go on
        print(f"torch.compile unavailable: {e}", file=sys.stderr)
    return runners


def load_like(model):
    from mnist_cnn import CustomCNN

    twin = CustomCNN(model.config)
    twin.load_state_dict(model.state_dict())
    return twin


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--onnx")
    parser.add_argument("--int8")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    trained = load_run(args.run)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path, int8_path = args.onnx, args.int8
        for name, extra in (("onnx_path", []), ("int8_path", ["--quantize", "int8"])):
            if locals()[name] is None:
                path = str(Path(tmp) / f"{name}.onnx")
                cmd = [sys.executable, "-m", "mnist_cnn", "export", args.run, "-o", path, *extra]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                if name == "onnx_path":
                    onnx_path = path
                else:
                    int8_path = path
        threads = torch.get_num_threads()
        runners = torch_runners(trained.model.cpu())
        runners["ONNX Runtime fp32"] = OnnxModel(onnx_path, threads=threads).logits
        runners["ONNX Runtime int8 (static QDQ)"] = OnnxModel(int8_path, threads=threads).logits
        rng = np.random.default_rng(0)
        x1000 = rng.standard_normal((1000, 1, 28, 28)).astype(np.float32)
        rows = []
        for name, fn in runners.items():
            p50, p99 = latency_ms(fn, x1000[:1], args.iterations)
            t256 = throughput(fn, x1000[:256], args.repeats)
            t1000 = throughput(fn, x1000, args.repeats)
            rows.append((name, p50, p99, t256, t1000))
    floor, mb = weight_stream_floor_ms(trained.model, threads)
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs; torch {torch.__version__} with "
          f"{threads} threads; ONNX Runtime with intra-op threads = {threads}")  # fmt: skip
    print("| runtime | batch-1 p50 | batch-1 p99 | images/s at 256 | images/s at 1000 |")
    print("|---|---|---|---|---|")
    for name, p50, p99, t256, t1000 in rows:
        print(f"| {name} | {p50:.3f} ms | {p99:.3f} ms | {t256:,.0f} | {t1000:,.0f} |")
    print(
        f"floor for batch 1: reading fc1's {mb:.1f} MB of fp32 weights takes {floor:.3f} ms "
        f"(p50, {threads} threads) before any convolution runs"
    )


if __name__ == "__main__":
    main()
