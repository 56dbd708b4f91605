"""Training speed of the reference recipe (batch 100, Adam 1e-3): three pipelines in one run.

- naive: what torchvision's MNIST + DataLoader does, a per-sample Dataset building a PIL image
  per item, converted and normalized one by one; the seed's Conv-ReLU-Pool order, NCHW, Adam.
- tensors: the whole training set in one uint8 tensor, normalized per batch; otherwise as naive.
- mnist-cnn: what `mnist-cnn train` runs: tensors, channels_last, pooling before ReLU (exact),
  fused Adam (the same update in one kernel), set_to_none gradients.

They alternate --repeats times over the first --images training images; medians are compared.
The floor is the epoch's FLOPs at the speed of a large fp32 matrix multiply on this machine.

    MNIST_CNN_DATA=../shared/data python benchmarks/train_speed.py [--images 6000] [--repeats 3]
"""

from __future__ import annotations

import argparse
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

from mnist_cnn import CustomCNN, TrainConfig, load_dataset, train

# multiply-adds of one forward pass per image, from the layer shapes (conv: H*W*Cout*Cin*9)
FORWARD_MACS = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 7 * 7 * 128 * 64 * 9 + 2048 * 625 + 6250
TRAIN_FLOPS_PER_IMAGE = 3 * 2 * FORWARD_MACS  # forward + backward (input and weight gradients)


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


def ours_epoch(data_dir, n: int, batch_size: int, out: str) -> float:
    config = TrainConfig(data_dir=data_dir, epochs=1, batch_size=batch_size, limit_train=n, out=out)
    return train(config).final["epoch_seconds"]


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return 2 * size**3 / min(times) / 1e9


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
    times: dict[str, list[float]] = {name: [] for name in runs}
    times["mnist-cnn"] = []
    with tempfile.TemporaryDirectory() as out:
        ours_epoch(args.data_dir, min(n, 1000), args.batch_size, out)  # warm-up
        for _ in range(args.repeats):
            for name, run in runs.items():
                times[name].append(run())
            times["mnist-cnn"].append(ours_epoch(args.data_dir, n, args.batch_size, out))
    gflops = matmul_gflops()
    full = len(data.train_images)
    floor = full * TRAIN_FLOPS_PER_IMAGE / (gflops * 1e9)

    isa = torch.backends.cpu.get_cpu_capability()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs ({isa}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{n} images per timed pass, batch {args.batch_size}, {args.repeats} repeats, medians")
    print(f"{'pipeline':<36} {'images/s':>9} {'s/epoch (60k)':>14} {'vs naive':>9}")
    naive = statistics.median(times["naive (PIL Dataset + DataLoader)"])
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<36} {n / med:>9,.0f} {med * full / n:>14.1f} {naive / med:>8.2f}x")
    ours = statistics.median(times["mnist-cnn"]) * full / n
    print(
        f"floor: {full * TRAIN_FLOPS_PER_IMAGE / 1e12:.2f} TFLOP per epoch at {gflops:.0f} GFLOP/s "
        f"(fp32 matmul here) = {floor:.1f} s; mnist-cnn is {ours / floor:.1f}x the floor"
    )


if __name__ == "__main__":
    main()
