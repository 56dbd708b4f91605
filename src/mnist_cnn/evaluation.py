"""Evaluating a model on a split: loss, accuracy, per-class accuracy and the confusion matrix."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .model import CustomCNN, eval_mode
from .spec import TEMPERATURES


def normalize(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """Images (N, H, W) or (N, 1, H, W) -> the model's float32 (N, 1, H, W) input: uint8
    pixels are scaled to 0..1 first (float images are taken to be 0..1), then standardized."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.dtype == torch.uint8:
        return (images.float() / 255.0 - mean) / std
    return (images.float() - mean) / std


@dataclass(frozen=True)
class EvalResult:
    accuracy: float  # fraction correct, 0..1
    loss: float  # mean cross-entropy
    per_class: list[float]  # accuracy (recall) of each true class
    confusion: list[list[int]]  # confusion[true][predicted]
    count: int
    temperature: float | None = None  # the logits' divisor that best fits the labels (NLL)

    def to_dict(self) -> dict:
        return asdict(self)


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    mean: float,
    std: float,
    num_classes: int = 10,
    batch_size: int = 1000,
    calibrate: bool = True,
) -> EvalResult:
    """Run ``model`` in eval mode over uint8 ``images`` (N, 28, 28) with integer ``labels``;
    ``calibrate``: fit its temperature too (the evaluations that are kept; a training epoch's
    score, which keeps only accuracy and loss, skips it)."""
    device = next(model.parameters()).device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    seen = []
    for rows, logits in _batched_logits(model, images, mean, std, batch_size):
        y = labels[rows].to(device)
        if calibrate:
            seen.append(logits.float())
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").double()
        pred = logits.argmax(dim=1)
        confusion += torch.bincount(
            y * num_classes + pred, minlength=num_classes * num_classes
        ).view(num_classes, num_classes)
    confusion = confusion.cpu()
    count = int(confusion.sum())
    correct = confusion.diag()
    per_class = correct.double() / confusion.sum(dim=1).clamp(min=1).double()
    return EvalResult(
        accuracy=float(correct.sum()) / max(count, 1),
        loss=float(total_loss) / max(count, 1),
        per_class=[float(a) for a in per_class],
        confusion=confusion.tolist(),
        count=count,
        temperature=fit_temperature(torch.cat(seen), labels.to(device)) if seen else None,
    )


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T for which softmax(logits / T) best fits ``labels`` (the lowest mean
    cross-entropy; Guo et al., 2017, "On Calibration of Modern Neural Networks"): above 1 for
    a model surer than it is right, below 1 for one held back by label smoothing. Found by
    SciPy's bounded scalar minimizer over log T in spec.TEMPERATURES (the loss is convex in
    1/T), to far below the 4 decimals kept."""
    from scipy.optimize import minimize_scalar  # only where a kept evaluation is made

    logits, labels = logits.double(), labels.long()

    def loss(log_t: float) -> float:
        return float(F.cross_entropy(logits / math.exp(log_t), labels))

    bounds = tuple(math.log(t) for t in TEMPERATURES)
    found = minimize_scalar(loss, bounds=bounds, method="bounded", options={"xatol": 1e-6})
    return round(math.exp(found.x), 4)


@torch.inference_mode()
def predict_probabilities(
    model: CustomCNN, images: torch.Tensor, *, mean: float, std: float, batch_size: int = 1000
) -> torch.Tensor:
    """Class probabilities (N, classes) on the CPU for ``images`` (N, 28, 28), uint8 or float
    in 0..1, in batches: :meth:`CustomCNN.predict_proba` of each normalized batch."""
    device = next(model.parameters()).device
    batches = [
        model.predict_proba(normalize(images[start : start + batch_size].to(device), mean, std))
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(batches).cpu() if batches else torch.zeros(0, model.config.num_classes)


def _batched_logits(model: nn.Module, images: torch.Tensor, mean, std, batch_size: int):
    """Yield (rows, logits) over uint8 ``images`` in batches, with the model in eval mode."""
    device = next(model.parameters()).device
    with eval_mode(model):
        for start in range(0, len(images), batch_size):
            rows = slice(start, start + batch_size)
            yield rows, model(normalize(images[rows].to(device), mean, std))
