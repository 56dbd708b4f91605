"""Training speed of the reference recipe (batch 100, Adam 1e-3): the pipelines side by side.

- naive: what torchvision's MNIST + DataLoader does, a per-sample Dataset building a PIL image
  per item, converted and normalized one by one; the seed's Conv-ReLU-Pool order, NCHW, Adam.
- tensors: the whole training set in one uint8 tensor, normalized per batch; otherwise as naive.
- mnist-cnn: what `mnist-cnn train` runs: tensors, channels_last, pooling before ReLU (exact),
  fused Adam (the same update in one kernel), set_to_none gradients; once per --precision
  (fp32, and bf16 autocast: what `--precision auto` picks on CPUs with AMX or AVX-512 BF16).

They alternate --repeats times over the first --images training images; medians are compared.
Each precision's floor is the epoch's FLOPs at the speed of a large matrix multiply in that
precision on this machine (fp32 x fp32, bf16 x bf16, measured the same way).

``--breakdown`` then says where a step's time goes: --repeats more epochs per precision under
torch.profiler, alternating, each op's own time summed by kind (convolutions, matrix
multiplies, pooling...) and what is left outside the ops (Python, the autograd engine, the
profiler itself); medians over the repeats.

    MNIST_CNN_DATA=../shared/data python benchmarks/train_speed.py [--images 6000] [--repeats 3]
                                                                 [--breakdown]
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from mnist_cnn import CustomCNN, TrainConfig, layer_table, load_dataset, train
from mnist_cnn.device import cpu_bf16_features, resolve_precision

# multiply-adds of one forward pass per image, from the model's own layer table
# (conv: H*W*Cout*Cin*9, linear: in*out): 8,737,386 for the seed's CustomCNN
FORWARD_MACS = sum(row.mult_adds for row in layer_table(CustomCNN()))
TRAIN_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS  # forward + backward (input and weight gradients)
FLOATS = {"fp32": torch.float32, "bf16": torch.bfloat16}
MATMUL = 2048  # the floor's matrix size


class PilMnist(TorchDataset):
    """One PIL image per item, as torchvision.datasets.MNIST builds them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float):
        self.images, self.labels, self.mean, self.std = images.numpy(), labels, mean, std

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).unsqueeze(0)  # ToTensor
        return (x - self.mean) / self.std, int(self.labels[i])  # Normalize


def plain_epoch(batches, device: str = "cpu") -> float:
    torch.manual_seed(777)
    model = CustomCNN().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    start = time.perf_counter()
    for x, y in batches():
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        loss = F.cross_entropy(model.forward_conv_relu_pool(x), y)  # the seed's order
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


def naive_batches(data, n, batch_size, workers):
    ds = PilMnist(data.train_images[:n], data.train_labels[:n], data.info.mean, data.info.std)
    return lambda: DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers)


def tensor_batches(data, n, batch_size):
    images, labels = data.train_images[:n].unsqueeze(1), data.train_labels[:n]

    def batches():
        order = torch.randperm(n)
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            yield (images[idx].float() / 255 - data.info.mean) / data.info.std, labels[idx]

    return batches


def ours_epoch(data_dir, n: int, batch_size: int, out: str, precision: str = "fp32") -> float:
    config = TrainConfig(data_dir=data_dir, epochs=1, batch_size=batch_size, limit_train=n, out=out,
                         precision=precision)  # fmt: skip
    return train(config).final["epoch_seconds"]


# --breakdown: torch.profiler's op names by what they compute in a step of mnist-cnn
OP_KINDS = {
    "aten::mkldnn_convolution": "convolutions (oneDNN)",
    "aten::convolution_backward": "convolutions (oneDNN)",
    "aten::mm": "matrix multiplies",  # MKL's in fp32, oneDNN's in bf16
    "aten::addmm": "matrix multiplies",
    "aten::max_pool2d_with_indices": "max-pooling",
    "aten::max_pool2d_with_indices_backward": "max-pooling",
    # the zeros max-pooling's backward scatters the gradients into: record_shapes shows every
    # large fill_ of a step at the pooled layers' input shapes
    "aten::fill_": "max-pooling",
    "aten::copy_": "copies (in bf16: the casts to and from fp32)",
    "aten::bernoulli_": "dropout's random mask",
    "aten::clamp_min": "ReLU",
    "aten::threshold_backward": "ReLU",
    "aten::_fused_adam_": "Adam",
}


def epoch_breakdown(
    data_dir, n: int, batch_size: int, out: str, precision: str
) -> tuple[float, int, collections.Counter]:
    """One epoch of ``train``, its steps alone under torch.profiler (not the data loading, the
    evaluation or the checkpoint): (the epoch's seconds, its steps, seconds by kind: the ATen
    ops' own time by OP_KINDS or "other ops", and the rest, "outside the ops")."""
    from torch.profiler import profile

    from mnist_cnn import training

    epoch = training._train_epoch
    profiled: dict = {}

    def under_profiler(*args, **kwargs):
        with profile() as prof:
            start = time.perf_counter()
            result = epoch(*args, **kwargs)
            profiled["seconds"] = time.perf_counter() - start
        profiled["events"] = prof.events()
        return result

    training._train_epoch = under_profiler  # _train looks it up as a module global
    try:
        ours_epoch(data_dir, n, batch_size, out, precision)
    finally:
        training._train_epoch = epoch
    kinds: collections.Counter = collections.Counter()
    for e in profiled["events"]:
        if e.name.startswith("aten::"):  # not autograd's or the optimizer's own bookkeeping
            kinds[OP_KINDS.get(e.name, "other ops")] += e.self_cpu_time_total / 1e6  # from us
    seconds = profiled["seconds"]
    kinds["outside the ops (Python, autograd, the profiler)"] = seconds - sum(kinds.values())
    return seconds, -(-n // batch_size), kinds


def print_breakdown(precision: str, epochs: list, full: int, n: int) -> None:
    """``epochs``: epoch_breakdown's answers for one precision; medians over them."""
    seconds = statistics.median(e[0] for e in epochs)
    steps = epochs[0][1]
    every = set().union(*(e[2] for e in epochs))  # a kind missing from an epoch counts 0 there
    kinds = {k: statistics.median(e[2][k] for e in epochs) for k in every}
    print(f"\nwhere a mnist-cnn {precision} step goes (torch.profiler, {len(epochs)} epochs of "
          f"{steps} steps, {seconds:.2f} s profiled (median); each op's own time, summed by "
          "kind, medians)")  # fmt: skip
    print(f"{'kind':<50} {'ms/step':>8} {'s/epoch (60k)':>14} {'share':>6}")
    for kind, s in sorted(kinds.items(), key=lambda item: -item[1]):
        print(f"{kind:<50} {1000 * s / steps:>8.2f} {s * full / n:>14.1f} {s / seconds:>6.0%}")


def matmul_gflops(size: int = MATMUL, repeats: int = 5, dtype=torch.float32) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


def floor_seconds(images: int, gflops: float | None) -> float:
    """An epoch's FLOPs at the speed of the matmul (nan where that precision was not timed)."""
    return images * TRAIN_FLOPS_PER_IMAGE / (gflops * 1e9) if gflops else float("nan")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=6000, help="images per timed epoch")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers (naive)")
    parser.add_argument("--data-dir")
    parser.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=FLOATS,
                        help="mnist-cnn's precisions to time (default both)")  # fmt: skip
    parser.add_argument(
        "--breakdown", action="store_true", help="then where a step's time goes (torch.profiler)"
    )
    args = parser.parse_args()

    data = load_dataset("mnist", args.data_dir)
    n = min(args.images, len(data.train_images))
    runs = {
        "naive (PIL Dataset + DataLoader)": lambda: plain_epoch(
            naive_batches(data, n, args.batch_size, args.workers)
        ),
        "tensors, seed's layer order, NCHW": lambda: plain_epoch(
            tensor_batches(data, n, args.batch_size)
        ),
    }
    with tempfile.TemporaryDirectory(prefix="train_speed-") as out:  # the runs, removed
        for precision in args.precision:  # the same pipeline, alternating with the others
            runs[f"mnist-cnn {precision}"] = functools.partial(
                ours_epoch, args.data_dir, n, args.batch_size, out, precision
            )
            ours_epoch(args.data_dir, min(n, 1000), args.batch_size, out, precision)  # warm-up
        times: dict[str, list[float]] = {name: [] for name in runs}
        gflops = dict.fromkeys(args.precision, 0.0)
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(run())
            for p in gflops:  # the best of every repeat: the machine's speed when it is least busy
                gflops[p] = max(gflops[p], matmul_gflops(dtype=FLOATS[p]))
        report(times, n, len(data.train_images), gflops, args)
        if args.breakdown:
            profiled: dict[str, list] = {p: [] for p in args.precision}
            for _ in range(args.repeats):  # alternating, as the timed passes
                for p in args.precision:
                    profiled[p].append(epoch_breakdown(args.data_dir, n, args.batch_size, out, p))
            for p, epochs in profiled.items():
                print_breakdown(p, epochs, len(data.train_images), n)


def report(times: dict[str, list[float]], n: int, full: int, gflops: dict, args) -> None:
    isa = torch.backends.cpu.get_cpu_capability()
    features = ", ".join(cpu_bf16_features()) or "none"
    auto = resolve_precision("auto", torch.device("cpu"))[0]
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs ({isa}; bf16 instructions: {features}; "
          f"--precision auto picks {auto}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{n} images per timed pass, batch {args.batch_size}, {args.repeats} repeats, "
          "medians [min-max]")  # fmt: skip
    print(f"{'pipeline':<36} {'images/s':>16} {'s/epoch (60k)':>18} {'vs naive':>9} "
          f"{'vs floor':>9}")  # fmt: skip
    naive = statistics.median(times["naive (PIL Dataset + DataLoader)"])
    for name, ts in times.items():
        med, lo, hi = statistics.median(ts), min(ts), max(ts)
        rate = f"{n / med:,.0f} [{n / hi:,.0f}-{n / lo:,.0f}]"
        epoch = f"{med * full / n:.1f} [{lo * full / n:.1f}-{hi * full / n:.1f}]"
        precision = name.split()[-1] if name.startswith("mnist-cnn") else "fp32"
        vs_floor = med * full / n / floor_seconds(full, gflops.get(precision))
        print(f"{name:<36} {rate:>16} {epoch:>18} {naive / med:>8.2f}x {vs_floor:>8.1f}x")
    for precision, rate in gflops.items():
        print(
            f"{precision} floor: {full * TRAIN_FLOPS_PER_IMAGE / 1e12:.2f} TFLOP per epoch at "
            f"{rate:.0f} GFLOP/s ({precision} {MATMUL}x{MATMUL} matmul here) = "
            f"{floor_seconds(full, rate):.1f} s"
        )


if __name__ == "__main__":
    main()
