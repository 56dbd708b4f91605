"""Training CustomCNN: the reference recipe, in-memory batches, per-epoch checkpoints, resume.

Reference recipe (DeepLearningZeroToAll lab 11-2, which this architecture comes from):
Adam lr 1e-3, batch 100, 15 epochs, torch.manual_seed(777).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

from .augment import random_affine
from .checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    STATE_FILE,
    check_architecture,
    check_state_dict,
    library_versions,
    load_state,
    read_config,
    read_metrics,
    write_checkpoint,
)
from .datasets import Dataset, load_dataset
from .device import configure_determinism, seed_everything, select_device
from .errors import MnistCnnError
from .evaluation import EvalResult, evaluate
from .files import atomic_write_json, remove_stale_temp_files
from .model import ARCHITECTURE, CustomCNN, ModelConfig, count_parameters
from .recipes import PRECISIONS, RECIPES, SCHEDULES


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the reference recipe."""

    dataset: str = "mnist"
    data_dir: str | None = None  # else $MNIST_CNN_DATA, the cache, Debian's folder, download
    recipe: str = "reference"  # which of RECIPES filled in the settings below
    epochs: int = 15
    batch_size: int = 100
    lr: float = 1e-3  # Adam; the peak of the one-cycle schedule
    schedule: str = "constant"  # or "onecycle": warm up to lr, then anneal towards 0
    label_smoothing: float = 0.0
    augment: bool = False  # random shifts, rotations and scaling of every batch
    precision: str = "fp32"  # or "bf16": autocast (GPUs; CPUs with bf16 instructions)
    compile: bool = False  # torch.compile the training step's model (pays off on GPUs)
    seed: int = 777  # model init, dropout, shuffling, augmentation and the validation split
    device: str = "auto"
    out: str = "runs"  # runs are written to <out>/<name>/
    name: str | None = None  # default: <dataset>-<date>-<time>
    deterministic: bool = False  # bitwise-repeatable kernels (slower on GPUs)
    limit_train: int | None = None  # train on the first N training images only
    val_size: int = 0  # hold out this many training images (seeded) as a validation split
    eval_batch_size: int = 1000

    @classmethod
    def from_recipe(cls, recipe: str = "reference", **overrides) -> TrainConfig:
        """The settings of ``recipe``, with ``overrides`` on top."""
        if recipe not in RECIPES:
            raise MnistCnnError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
        return cls(**{**RECIPES[recipe], "recipe": recipe, **overrides})

    def validate(self) -> None:
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise MnistCnnError(f"--{name.replace('_', '-')} must be at least 1")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise MnistCnnError("--lr must be a positive number")
        if self.limit_train is not None and self.limit_train < 1:
            raise MnistCnnError("--limit-train must be at least 1")
        if not 0 <= self.seed < 2**32:
            raise MnistCnnError("--seed must be between 0 and 2**32 - 1")
        if self.val_size < 0:
            raise MnistCnnError("--val-size must not be negative")
        if not 0 <= self.label_smoothing < 1:
            raise MnistCnnError("--label-smoothing must be in [0, 1)")
        for name, allowed in (("schedule", SCHEDULES), ("precision", PRECISIONS)):
            if getattr(self, name) not in allowed:
                raise MnistCnnError(f"--{name} must be one of {', '.join(allowed)}")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TrainResult:
    run_dir: Path
    model: CustomCNN
    history: list[dict]  # one record per epoch, as in metrics.jsonl

    @property
    def final(self) -> dict:
        return self.history[-1] if self.history else {}


@dataclass
class _Splits:
    train_x: torch.Tensor  # (N, 1, 28, 28) uint8 on the training device
    train_y: torch.Tensor  # (N,) int64
    val: tuple[torch.Tensor, torch.Tensor] | None
    test: tuple[torch.Tensor, torch.Tensor]
    mean: float  # the dataset's normalization
    std: float


def _make_splits(data: Dataset, config: TrainConfig, device: torch.device) -> _Splits:
    images, labels = data.train_images, data.train_labels
    val = None
    if config.val_size:
        if config.val_size >= len(images):
            raise MnistCnnError(f"--val-size {config.val_size} leaves no training images")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(config.seed))
        held, kept = order[: config.val_size], order[config.val_size :].sort().values
        val = (images[held].to(device), labels[held].to(device))
        images, labels = images[kept], labels[kept]
    if config.limit_train is not None:
        images, labels = images[: config.limit_train], labels[: config.limit_train]
    return _Splits(
        train_x=images.unsqueeze(1).to(device),
        train_y=labels.to(device),
        val=val,
        test=(data.test_images.to(device), data.test_labels.to(device)),
        mean=data.info.mean,
        std=data.info.std,
    )


def epoch_permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The order of epoch ``epoch``: a function of (seed, epoch) only, so resume needs no state."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


def _rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _new_run_dir(config: TrainConfig) -> Path:
    out = Path(config.out)
    if config.name is not None:
        if "/" in config.name or config.name in ("", ".", ".."):
            raise MnistCnnError(f"--name {config.name!r} must be a plain folder name")
        run_dir = out / config.name
        if run_dir.exists():
            raise MnistCnnError(
                f"{run_dir} already exists: pick another --name, or --resume {run_dir}"
            )
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = out / f"{config.dataset}-{stamp}"
        suffix = 2
        while run_dir.exists():
            run_dir = out / f"{config.dataset}-{stamp}-{suffix}"
            suffix += 1
    try:
        run_dir.mkdir(parents=True)
    except OSError as e:
        raise MnistCnnError(f"cannot create run directory {run_dir}: {e.strerror}") from None
    return run_dir


def _run_config(config, data, splits, model, device, history, started) -> dict:
    final = history[-1] if history else {}
    return {
        "format": FORMAT_VERSION,
        "model": {
            "architecture": ARCHITECTURE,
            "args": model.config.to_dict(),
            "parameters": count_parameters(model),
        },
        "data": {
            "dataset": data.info.name,
            "classes": list(data.info.classes),
            "mean": data.info.mean,
            "std": data.info.std,
            "image_size": model.config.image_size,
            "source": str(data.source),
            "train_size": len(splits.train_x),
            "val_size": 0 if splits.val is None else len(splits.val[0]),
            "test_size": len(splits.test[0]),
        },
        "training": asdict(config),
        "device": str(device),
        "versions": library_versions(),
        "created": started,
        "epochs_completed": len(history),
        "metrics": final,
    }


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train CustomCNN as ``config`` says, or continue the run in ``resume`` from its last epoch.

    When resuming, ``config`` (if given) replaces the saved settings; pass the saved ones with
    only ``epochs``/``device``/``data_dir`` changed. ``log`` receives one line per event.
    """
    log = log or (lambda line: None)
    saved = None
    if resume is not None:
        saved, saved_config = load_train_config(resume)
        config = config or saved_config
    config = config or TrainConfig()
    config.validate()
    device = select_device(config.device)
    configure_determinism(config.deterministic, device)
    data = load_dataset(config.dataset, config.data_dir, progress=progress)
    splits = _make_splits(data, config, device)

    seed_everything(config.seed)
    model = CustomCNN(ModelConfig(num_classes=data.info.num_classes)).to(device)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on both
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.lr, fused=device.type in ("cpu", "cuda") or None
    )
    scheduler = _make_scheduler(optimizer, config, len(splits.train_x))
    if resume is not None and config.schedule != "constant":
        planned = saved["training"].get("epochs")
        if planned != config.epochs:
            raise MnistCnnError(
                f"--epochs cannot change on resume: the {config.schedule} schedule of {resume} "
                f"was planned for {planned} epochs"
            )
    if resume is None:
        run_dir, started, history = _new_run_dir(config), _now(), []
        # config.json first: a run killed in its first epoch can still be resumed
        first = _run_config(config, data, splits, model, device, [], started)
        atomic_write_json(run_dir / CONFIG_FILE, first)
    else:
        run_dir, started = Path(resume), saved.get("created") or _now()
        history = _restore(run_dir, model, optimizer, scheduler, device)
    log(
        f"training {ARCHITECTURE} on {data.info.name}: {len(splits.train_x):,} train / "
        f"{len(splits.test[0]):,} test images from {data.source}, on {device}; "
        f"run directory {run_dir}"
    )
    if len(history) >= config.epochs:
        log(f"{run_dir} has already completed {len(history)} of {config.epochs} epochs")
    step_model = torch.compile(model) if config.compile else model  # shares the weights
    for epoch in range(len(history), config.epochs):
        record = _train_epoch(step_model, optimizer, scheduler, splits, config, epoch, progress)
        record.update(_eval_record(model, splits, data, config))
        history.append(record)
        state = {
            "epoch": epoch + 1,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler else None,
            "rng": _rng_state(device),
        }
        run_config = _run_config(config, data, splits, model, device, history, started)
        write_checkpoint(run_dir, config=run_config, history=history, model=model, state=state)
        log(format_epoch(record, config.epochs))
    return TrainResult(run_dir=run_dir, model=model, history=history)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_train_config(run_dir: str | Path) -> tuple[dict, TrainConfig]:
    """A run's saved configuration and the training settings in it, checked for resuming."""
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    check_architecture(saved, run_dir)
    if not isinstance(saved.get("training"), dict):
        raise MnistCnnError(f"{run_dir / CONFIG_FILE}: has no training settings to resume with")
    try:
        return saved, TrainConfig.from_dict(saved["training"])
    except TypeError as e:
        raise MnistCnnError(f"{run_dir / CONFIG_FILE}: bad training settings ({e})") from None


_STATE_KEYS = ("epoch", "model", "optimizer", "rng")


def _make_scheduler(optimizer, config: TrainConfig, n: int):
    if config.schedule == "constant":
        return None
    steps = config.epochs * math.ceil(n / config.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)


def _restore(run_dir: Path, model, optimizer, scheduler, device) -> list[dict]:
    """Load a run's last complete epoch into ``model`` and ``optimizer``; returns its history."""
    remove_stale_temp_files(run_dir)  # from a write the crash interrupted
    state = load_state(run_dir)
    if state is None:
        return []  # killed during its first epoch: start it again
    path = run_dir / STATE_FILE
    missing = [k for k in _STATE_KEYS if k not in state]
    if missing:
        raise MnistCnnError(f"{path}: not a resume state (missing {', '.join(missing)})")
    check_state_dict(model, state["model"], path)
    model.load_state_dict(state["model"])
    try:
        optimizer.load_state_dict(state["optimizer"])
    except (ValueError, KeyError) as e:
        raise MnistCnnError(f"{path}: optimizer state does not fit ({e})") from None
    if scheduler is not None:
        if not state.get("scheduler"):
            raise MnistCnnError(f"{path}: has no learning-rate schedule state to resume")
        scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"], device)
    history = read_metrics(run_dir)[: state["epoch"]]
    if len(history) != state["epoch"]:
        raise MnistCnnError(
            f"{run_dir / METRICS_FILE}: has {len(history)} epochs, state.pt {state['epoch']}"
        )
    return history


def _train_epoch(
    model, optimizer, scheduler, splits: _Splits, config: TrainConfig, epoch, progress
) -> dict:
    from tqdm import tqdm

    device = splits.train_x.device
    n, bs = len(splits.train_x), config.batch_size
    order = epoch_permutation(n, config.seed, epoch).to(device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=config.precision == "bf16")
    model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    steps = math.ceil(n / bs)
    bar = tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch",
        disable=not progress, leave=False,
    )  # fmt: skip
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * bs : (step + 1) * bs]
        x = splits.train_x[idx].float() / 255  # (B, 1, 28, 28) in 0..1
        if config.augment:
            x = random_affine(x)
        x = ((x - splits.mean) / splits.std).contiguous(memory_format=torch.channels_last)
        with autocast:
            logits = model(x)
        loss = F.cross_entropy(
            logits.float(), splits.train_y[idx], label_smoothing=config.label_smoothing
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total_loss += loss.detach().double() * len(idx)
        if progress and (step % 20 == 0 or step == steps - 1):
            rate = (step + 1) * bs / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:,.0f}", refresh=False)
        bar.update(1)
    train_loss = float(total_loss) / n  # synchronizes the device before the clock stops
    seconds = time.perf_counter() - start
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "epoch_seconds": seconds,
        "images_per_second": n / seconds,
    }


def _eval_record(model, splits: _Splits, data: Dataset, config: TrainConfig) -> dict:
    def run(images, labels) -> EvalResult:
        return evaluate(
            model, images, labels, mean=data.info.mean, std=data.info.std,
            num_classes=data.info.num_classes, batch_size=config.eval_batch_size,
        )  # fmt: skip

    record = {}
    if splits.val is not None:
        val = run(*splits.val)
        record.update(val_loss=val.loss, val_accuracy=val.accuracy)
    test = run(*splits.test)
    record.update(test_loss=test.loss, test_accuracy=test.accuracy)
    return record


def format_epoch(record: dict, epochs: int) -> str:
    width = len(str(epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{epochs}", f"train loss {record['train_loss']:.4f}"]
    if "val_accuracy" in record:
        parts.append(f"val acc {100 * record['val_accuracy']:.2f}%")
    parts += [
        f"test acc {100 * record['test_accuracy']:.2f}%",
        f"test loss {record['test_loss']:.4f}",
        f"{record['epoch_seconds']:.1f} s",
        f"{record['images_per_second']:,.0f} img/s",
    ]
    return "  ".join(parts)
