"""Training speed: mnist-cnn's pipeline against a naive one, same model and batch, in one run.

The naive pipeline is what torchvision's MNIST + DataLoader does: a per-sample Dataset that
builds a PIL image per item, converts it to a tensor and normalizes it, batched by a DataLoader.
Ours keeps the whole training set in one uint8 tensor and normalizes whole batches.

Both train the same CustomCNN with Adam at batch 100 on the first --images training images;
they alternate --repeats times and the medians are compared. Usage:

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


def naive_epoch(data, n: int, batch_size: int, workers: int) -> float:
    """Seconds for one pass over n images through the naive pipeline."""
    torch.manual_seed(777)
    model = CustomCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    dataset = PilMnist(data.train_images[:n], data.train_labels[:n], data.info.mean, data.info.std)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def our_epoch(data_dir, n: int, batch_size: int, out: str) -> float:
    """Seconds of training for one epoch of mnist-cnn's own train() on n images."""
    config = TrainConfig(data_dir=data_dir, epochs=1, batch_size=batch_size, limit_train=n, out=out)
    return train(config).final["epoch_seconds"]


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
    full = len(data.train_images)
    naive, ours = [], []
    with tempfile.TemporaryDirectory() as out:
        our_epoch(args.data_dir, min(n, 1000), args.batch_size, out)  # warm-up
        for _ in range(args.repeats):
            ours.append(our_epoch(args.data_dir, n, args.batch_size, out))
            naive.append(naive_epoch(data, n, args.batch_size, args.workers))
    isa = torch.backends.cpu.get_cpu_capability()
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs ({isa}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")  # fmt: skip
    print(f"{n} images per timed pass, batch {args.batch_size}, {args.repeats} repeats, medians")
    print(f"{'pipeline':<34} {'images/s':>10} {'s/epoch (60k)':>14}")
    for name, times in (("naive (PIL Dataset + DataLoader)", naive), ("mnist-cnn", ours)):
        med = statistics.median(times)
        print(f"{name:<34} {n / med:>10,.0f} {med * full / n:>14.1f}")
    print(f"speed-up: {statistics.median(naive) / statistics.median(ours):.2f}x")


if __name__ == "__main__":
    main()
