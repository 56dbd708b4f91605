"""TensorBoard logs of a training run (``train --tensorboard``), in <run>/tensorboard/.

Per epoch: train/test (and validation) loss and accuracy, the learning rate, images/s, and
layer 1's filters as one image (watch them form); after the last epoch, the test set's
confusion matrix. Only the process that writes the run (rank 0 under torchrun) logs. A resumed
run appends to the same folder, and its writer purges every step from the first epoch it trains
again, so an epoch logged before a crash and trained again after it shows once.

    tensorboard --logdir runs
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .errors import ConfigError
from .model import CustomCNN

LOG_DIR = "tensorboard"

# metrics.jsonl field -> TensorBoard tag; "accuracy/..." is a fraction, as in metrics.jsonl
SCALARS = {
    "train_loss": "loss/train",
    "test_loss": "loss/test",
    "val_loss": "loss/validation",
    "test_accuracy": "accuracy/test",
    "val_accuracy": "accuracy/validation",
    "images_per_second": "speed/images_per_second",
}
LEARNING_RATE = "learning_rate"
FILTERS = "layer1/filters"
CONFUSION = "confusion_matrix/test"


def filter_grid(weight: Tensor, scale: int = 8, columns: int = 8, gap: int = 2) -> Tensor:
    """Conv filters (C, 1, k, k) as one RGB image (3, H, W) in 0..1, all on one symmetric scale:
    red adds, blue subtracts, white is 0 (as `explain` draws them); each weight a scale² block."""
    w = weight.detach().float().cpu()[:, 0]  # (C, k, k)
    v = w / w.abs().max().clamp(min=1e-12)  # -1..1
    pos, neg = v.clamp(min=0), (-v).clamp(min=0)
    rgb = torch.stack([1 - neg, 1 - pos - neg, 1 - pos], dim=1)  # (C, 3, k, k)
    rgb = rgb.repeat_interleave(scale, dim=2).repeat_interleave(scale, dim=3)
    count, _, h, width = rgb.shape
    rows = -(-count // columns)
    grid = torch.full((3, gap + rows * (h + gap), gap + columns * (width + gap)), 0.5)
    for i in range(count):
        y, x = gap + (i // columns) * (h + gap), gap + (i % columns) * (width + gap)
        grid[:, y : y + h, x : x + width] = rgb[i]
    return grid


class TensorBoardLog:
    """A SummaryWriter on <run>/tensorboard whose steps are epochs (1-based, as metrics.jsonl)."""

    def __init__(self, run_dir: str | Path, first_epoch: int = 1):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # torch's writer needs the tensorboard package itself
            raise ConfigError(
                "tensorboard", "needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'"
            ) from None
        self.path = Path(run_dir) / LOG_DIR
        # purge_step: whatever an earlier, interrupted process logged from this epoch on is stale
        self.writer = SummaryWriter(str(self.path), purge_step=first_epoch)

    def epoch(self, record: dict, model: CustomCNN, lr: float) -> None:
        """One epoch's record (a metrics.jsonl line), its learning rate and layer 1's filters."""
        step = record["epoch"]
        for key, tag in SCALARS.items():
            if key in record:
                self.writer.add_scalar(tag, record[key], step)
        self.writer.add_scalar(LEARNING_RATE, lr, step)
        conv = model.layer1[0]
        assert isinstance(conv, torch.nn.Conv2d)
        self.writer.add_image(FILTERS, filter_grid(conv.weight), step)
        self.writer.flush()  # each epoch is on disk as soon as it is done

    def confusion(self, confusion: list[list[int]], classes: list[str], step: int) -> None:
        from .report import _plot_confusion

        figure = _plot_confusion(np.asarray(confusion), classes)
        self.writer.add_figure(CONFUSION, figure, step)  # closes the figure
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
