"""Training CustomCNN: the reference recipe, in-memory batches, per-epoch checkpoints, resume.

Reference recipe (DeepLearningZeroToAll lab 11-2, which this architecture comes from):
Adam lr 1e-3, batch 100, 15 epochs, torch.manual_seed(777).
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import distributed
from .augment import KINDS, augment_batch, touching_pairs
from .checkpoint import (
    CONFIG_FILE,
    FORMAT_VERSION,
    METRICS_FILE,
    STATE_FILE,
    check_architecture,
    library_versions,
    load_state,
    read_config,
    read_metrics,
    restore_state,
    write_checkpoint,
)
from .datasets import Dataset
from .device import (
    DEVICES,
    configure_determinism,
    resolve_precision,
    seed_everything,
    select_device,
)
from .distributed import Ranks
from .download import load_dataset
from .errors import ConfigError, MnistCnnError
from .evaluation import evaluate
from .files import atomic_write_json, remove_stale_temp_files
from .locks import DirectoryLock
from .model import ARCHITECTURE, CustomCNN, ModelConfig, count_parameters
from .recipes import OPTIMIZERS, PRECISIONS, RANGES, RECIPES, SCHEDULES
from .run_log import RunLog
from .schema import typed_fields

# Settings a resumed run may change: where and how it runs and reports, never what it computes.
RESUMABLE = ("epochs", "device", "data_dir", "tensorboard", "eval_batch_size")


@dataclass
class TrainConfig:
    """Everything that defines a training run. The defaults are the reference recipe."""

    dataset: str = "mnist"
    data_dir: str | None = None  # else $MNIST_CNN_DATA, the cache, Debian's folder, download
    recipe: str = "reference"  # which of RECIPES filled in the settings below
    epochs: int = 15
    batch_size: int = 100
    lr: float = 1e-3  # Adam; the peak of the one-cycle schedule
    optimizer: str = "adam"  # or "sgd": plain w -= lr * gradient (wants a larger lr)
    schedule: str = "constant"  # or "onecycle": warm up to lr, then anneal towards 0
    label_smoothing: float = 0.0
    augment: bool | str = False  # augment.py's KINDS by name; True: "handwriting"
    # this share of each batch again, as pairs of touching digits trained towards "no digit"
    pairs: float = 0.0
    precision: str = "fp32"  # "bf16": autocast; "auto": bf16 where the device computes it natively
    compile: bool = False  # torch.compile the training step's model (pays off on GPUs)
    seed: int = 777  # model init, dropout, shuffling, augmentation and the validation split
    device: str = "auto"
    out: str = "runs"  # runs are written to <out>/<name>/
    name: str | None = None  # default: <dataset>-<date>-<time>
    deterministic: bool = False  # bitwise-repeatable kernels (slower on GPUs)
    limit_train: int | None = None  # train on the first N training images only
    val_size: int = 0  # hold out this many training images (seeded) as a validation split
    eval_batch_size: int = 1000
    dropout: float = 0.5  # of layer4's units, as in the seed; 0 turns it off
    tensorboard: bool = False  # also log to <run>/tensorboard (the tensorboard extra)

    @classmethod
    def from_recipe(cls, recipe: str = "reference", **overrides) -> TrainConfig:
        """The settings of ``recipe``, with ``overrides`` on top."""
        if recipe not in RECIPES:
            raise MnistCnnError(f"unknown recipe {recipe!r} (known: {', '.join(RECIPES)})")
        return cls(**{**RECIPES[recipe], "recipe": recipe, **overrides})

    def validate(self) -> None:
        """Refuse, with a ConfigError naming the field, a setting no run can have."""
        for name, allowed in RANGES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(name, allowed.refusal)
        if not isinstance(self.augment, bool) and self.augment not in KINDS:
            raise ConfigError("augment", f"must be true, false or one of {', '.join(KINDS)}")
        for name, choices in (
            ("optimizer", OPTIMIZERS),
            ("schedule", SCHEDULES),
            ("precision", PRECISIONS),
        ):
            if getattr(self, name) not in choices:
                raise ConfigError(name, f"must be one of {', '.join(choices)}")
        if self.tensorboard and importlib.util.find_spec("tensorboard") is None:
            raise ConfigError(
                "tensorboard", "needs the tensorboard package: pip install 'mnist-cnn[tensorboard]'"
            )

    def resumed(self, **changes) -> TrainConfig:
        """These saved settings with ``changes``, to continue their run exactly as if it had
        never stopped: a ConfigError for any other change than RESUMABLE's, and for ``epochs``
        where the learning rate schedule was planned over the run's own epochs."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"TrainConfig has no settings {', '.join(sorted(unknown))}")
        changed = [n for n, v in changes.items() if n not in RESUMABLE and getattr(self, n) != v]
        if changed:
            first, rest = changed[0], changed[1:]
            raise ConfigError(
                first,
                lambda name: (
                    f"cannot change on resume (the run's is {getattr(self, first)!r})"
                    + "".join(f"; nor can {name(n)}" for n in rest)
                    + f"; only {', '.join(name(n) for n in RESUMABLE)} can change"
                ),
            )
        epochs = changes.get("epochs", self.epochs)
        if self.schedule != "constant" and epochs != self.epochs:
            raise ConfigError(
                "epochs",
                f"cannot change on resume: the run's {self.schedule} schedule was planned for "
                f"{self.epochs} epochs",
            )
        return replace(self, **changes)

    @classmethod
    def from_dict(cls, d: dict, source="config.json") -> TrainConfig:
        """The settings in ``d`` (a saved run's "training"), each checked against its type."""
        return cls(**typed_fields(cls, d, source, "training."))


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
            raise ConfigError("val_size", f"{config.val_size} leaves no training images")
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
            raise ConfigError("name", f"{config.name!r} must be a plain folder name")
        run_dir = out / config.name
        if run_dir.exists():
            raise ConfigError(
                "name",
                lambda name: (
                    f"{config.name!r}: {run_dir} already exists; pick another, "
                    f"or {name('resume')} {run_dir}"
                ),
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


@dataclass
class _Run:
    """What a run trains and carries from epoch to epoch, built once."""

    device: torch.device
    model: CustomCNN  # the weights, in fp32: what is evaluated and saved
    step_model: Any  # takes the steps: ``model``, or wrapped by DDP and/or torch.compile
    eager_model: Any  # ``step_model`` before torch.compile, for an epoch's last, smaller batch
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # None: a constant learning rate
    precision: str  # what config.precision is on this device: "fp32" or "bf16"
    precision_reason: str
    history: list[dict]  # one record per completed epoch, as in metrics.jsonl


def _new_run(config: TrainConfig, data: Dataset, splits: _Splits, device, ranks: Ranks) -> _Run:
    seed_everything(config.seed)  # the same initial weights on every rank
    model = CustomCNN(ModelConfig(num_classes=data.info.num_classes, dropout=config.dropout))
    model = model.to(device)
    if device.type in ("cpu", "cuda"):
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # NHWC: faster on both
    optimizer = _make_optimizer(model, config, device)
    eager_model = ranks.wrap(model)  # DDP averages gradients across ranks; the weights stay model's
    step_model = torch.compile(eager_model) if config.compile else eager_model  # same weights
    precision, reason = resolve_precision(config.precision, device)
    return _Run(
        device=device,
        model=model,
        step_model=step_model,
        eager_model=eager_model,
        optimizer=optimizer,
        scheduler=_make_scheduler(optimizer, config, len(splits.train_x)),
        precision=precision,
        precision_reason=reason,
        history=[],
    )


def _run_config(config: TrainConfig, data: Dataset, splits: _Splits, run: _Run, started) -> dict:
    model = run.model
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
            "preprocessing": data.info.preprocessing,  # the style people's images get
            "source": str(data.source),
            "train_size": len(splits.train_x),
            "val_size": 0 if splits.val is None else len(splits.val[0]),
            "test_size": len(splits.test[0]),
        },
        "training": asdict(config),
        "device": str(run.device),
        "precision": run.precision,  # what "auto" became
        "versions": library_versions(),
        "created": started,
        "epochs_completed": len(run.history),
        "metrics": run.history[-1] if run.history else {},
    }


def train(
    config: TrainConfig | None = None,
    *,
    resume: str | Path | None = None,
    log: Callable[[str], None] | None = None,
    progress: bool = False,
    dist_backend: str = "auto",
    dist_timeout: float = distributed.DEFAULT_TIMEOUT,
) -> TrainResult:
    """Train CustomCNN as ``config`` says, or continue the run in ``resume`` from its last epoch.

    When resuming, ``config`` (if given) may differ from the saved settings only where
    ``TrainConfig.resumed`` allows (``epochs``, ``device``...). ``log`` receives one line per event.
    Launched by ``torchrun`` with several processes, it trains with DistributedDataParallel
    (``dist_backend``: gloo on CPU, NCCL on CUDA); only rank 0 logs and writes the run.
    """
    log = log or (lambda line: None)
    saved = None
    if resume is not None:
        saved, saved_config = load_train_config(resume)
        given = asdict(config) if config is not None else {}
        changes = {k: v for k, v in given.items() if v != getattr(saved_config, k)}
        config = saved_config.resumed(**changes)
    config = config or TrainConfig()
    config.validate()
    device = select_device(config.device)
    ranks, device = distributed.join(device, config.batch_size, dist_backend, dist_timeout)
    if not ranks.main:
        log, progress = (lambda line: None), False
    try:
        with _RunLock(resume, ranks) as lock:  # one writer per run directory
            result = _train(config, resume, saved, device, ranks, log, progress, lock)
    except BaseException:
        distributed.stop()
        raise
    distributed.stop(together=True)
    return result


class _RunLock(contextlib.ExitStack):
    """Holds the run directory's lock on the process that writes it: from the start for a
    resumed run (a second ``--resume`` exits at once, saying who holds it), from its creation
    for a new one (``hold``)."""

    def __init__(self, resume, ranks: Ranks):
        super().__init__()
        self.writer = ranks.main
        if resume is not None:
            self.hold(Path(resume))

    def hold(self, run_dir: Path) -> None:
        if self.writer:
            self.enter_context(DirectoryLock(run_dir, "train"))


def _train(config, resume, saved, device, ranks: Ranks, log, progress, lock) -> TrainResult:
    configure_determinism(config.deterministic, device)
    with ranks.local_first():  # one process per machine finds (or downloads) the data first
        data = load_dataset(config.dataset, config.data_dir, progress=progress)
    splits = _make_splits(data, config, device)
    run = _new_run(config, data, splits, device, ranks)
    ranks.seed_streams(config.seed)  # dropout and augmentation differ between ranks, as they should
    if resume is None:
        started = _now()
        run_dir = ranks.on_main(_create_run_dir, config, data, splits, run, started, lock)
    else:
        run_dir, started = Path(resume), saved.get("created") or _now()
        run.history = _restore(run_dir, run, ranks)
    for line in _start_lines(config, data, splits, run, ranks, run_dir):
        log(line)
    run_log = RunLog(run_dir, tensorboard=config.tensorboard, first_epoch=len(run.history) + 1)
    for epoch in range(len(run.history), config.epochs):
        record = _train_epoch(run, splits, config, epoch, ranks, progress)
        record.update(_eval_record(run.model, splits, data, config, ranks))
        run.history.append(record)
        ranks.on_main(
            write_checkpoint,
            run_dir,
            config=_run_config(config, data, splits, run, started),
            history=run.history,
            model=run.model,
            state=_checkpoint_state(run, ranks),  # on every rank: it gathers their RNG states
        )
        ranks.on_main(run_log.epoch, record, run.model, run.optimizer.param_groups[0]["lr"])
        log(format_epoch(record, config.epochs))
    ranks.on_main(run_log.finish, run.model, splits.test, data.info, config.eval_batch_size)
    return TrainResult(run_dir=run_dir, model=run.model, history=run.history)


def _create_run_dir(config, data, splits, run: _Run, started: str, lock: _RunLock) -> Path:
    run_dir = _new_run_dir(config)
    lock.hold(run_dir)
    # config.json first: a run killed in its first epoch can still be resumed
    atomic_write_json(run_dir / CONFIG_FILE, _run_config(config, data, splits, run, started))
    return run_dir


def _start_lines(config, data, splits, run: _Run, ranks: Ranks, run_dir: Path) -> list[str]:
    """What the log says as training starts."""
    lines = [
        f"training {ARCHITECTURE} on {data.info.name}: {len(splits.train_x):,} train / "
        f"{len(splits.test[0]):,} test images from {data.source}, on {run.device}; "
        f"run directory {run_dir}"
    ]
    if ranks.world_size > 1:
        per = config.batch_size // ranks.world_size
        lines.append(
            f"distributed: {ranks.world_size} processes ({ranks.backend}), a global batch of "
            f"{config.batch_size} = {per} images per process per step"
        )
    lines.append(
        f"precision: {run.precision} ({run.precision_reason}); "
        "weights, evaluation and checkpoints in fp32"
    )
    if len(run.history) >= config.epochs:
        lines.append(
            f"{run_dir} has already completed {len(run.history)} of {config.epochs} epochs"
        )
    return lines


def _checkpoint_state(run: _Run, ranks: Ranks) -> dict:
    """What state.pt holds after the epochs in ``run.history``."""
    state = {
        "epoch": len(run.history),
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict() if run.scheduler else None,
        "rng": _rng_state(run.device),
    }
    if ranks.world_size > 1:  # every rank's random state, so a resumed run goes on as each was
        state["rng_ranks"] = ranks.gather(state["rng"])
    return state


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def load_train_config(run_dir: str | Path) -> tuple[dict, TrainConfig]:
    """A run's saved configuration and the training settings in it, checked for resuming."""
    run_dir = Path(run_dir)
    saved = read_config(run_dir)
    check_architecture(saved, run_dir)
    if not isinstance(saved.get("training"), dict):
        raise MnistCnnError(f"{run_dir / CONFIG_FILE}: has no training settings to resume with")
    path = run_dir / CONFIG_FILE
    config = TrainConfig.from_dict(saved["training"], path)
    try:
        config.validate()
        if config.device.split(":")[0] not in DEVICES:  # its availability is the resumer's matter
            raise MnistCnnError(f"unknown device {config.device!r}")
    except MnistCnnError as e:
        raise MnistCnnError(f"{path}: training: {e}") from None
    return saved, config


def _make_optimizer(model, config: TrainConfig, device: torch.device):
    if config.optimizer == "sgd":  # no momentum: each step is the gradient alone, times lr
        return torch.optim.SGD(model.parameters(), lr=config.lr)
    fused = device.type in ("cpu", "cuda") or None
    return torch.optim.Adam(model.parameters(), lr=config.lr, fused=fused)


def _make_scheduler(optimizer, config: TrainConfig, n: int):
    if config.schedule == "constant":
        return None
    steps = config.epochs * math.ceil(n / config.batch_size)
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=steps)


def _restore(run_dir: Path, run: _Run, ranks: Ranks) -> list[dict]:
    """Load a run's last complete epoch into ``run``'s model, optimizer, schedule and random
    streams; returns its history."""
    if ranks.main:
        remove_stale_temp_files(run_dir)  # from a write the crash interrupted
    state = load_state(run_dir)
    if state is None:
        return []  # killed during its first epoch: start it again
    current_rng = _rng_state(run.device)
    restore_state(state, run_dir / STATE_FILE, run.model, run.optimizer, run.scheduler, current_rng)
    streams = state.get("rng_ranks") or [state["rng"]]
    if len(streams) == ranks.world_size:  # the same world: each rank's own stream goes on
        _set_rng_state(streams[ranks.rank], run.device)
    else:  # another world size: rank 0's, and with several ranks fresh, different streams
        _set_rng_state(state["rng"], run.device)
        ranks.seed_streams(7919 * state["epoch"])
    history = read_metrics(run_dir)[: state["epoch"]]
    if len(history) != state["epoch"]:
        raise MnistCnnError(
            f"{run_dir / METRICS_FILE}: has {len(history)} epochs, state.pt {state['epoch']}"
        )
    return history


# The weight of the pairs' loss (their divergence from the uniform distribution) beside the
# digits' mean loss: outlier exposure's usual 0.5 (Hendrycks et al., 2019).
PAIR_WEIGHT = 0.5


def batch_loss(
    logits: torch.Tensor, labels: torch.Tensor, smoothing: float, reduction: str = "mean"
) -> torch.Tensor:
    """The training loss of a batch whose first ``len(labels)`` rows are digits and the rest
    touching pairs (``TrainConfig.pairs``): the digits' cross-entropy, plus ``PAIR_WEIGHT``
    times the pairs' divergence from every class equally likely (their cross-entropy against
    it less its floor, log(classes): the same gradient, and 0 for a pair read as no digit, so
    the loss logged stays comparable with a run's without pairs), each part a mean over its
    rows ("mean") or that mean times the digits' count ("sum", as distributed.Ranks sums)."""
    m = len(labels)
    if len(logits) == m:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction=reduction)
    total = F.cross_entropy(logits[:m], labels, label_smoothing=smoothing, reduction="sum")
    uniform = -F.log_softmax(logits[m:], dim=1).mean(dim=1) - math.log(logits.shape[1])
    total = total + PAIR_WEIGHT * uniform.mean() * m
    return total / m if reduction == "mean" else total


def _train_epoch(run: _Run, splits: _Splits, config: TrainConfig, epoch, ranks: Ranks, progress):
    """One epoch of steps. The epoch's last, smaller batch goes to the eager model, for which a
    compiled model would compile a second graph."""
    from tqdm import tqdm

    device = splits.train_x.device
    n, bs = len(splits.train_x), config.batch_size
    order = epoch_permutation(n, config.seed, epoch).to(device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=run.precision == "bf16")
    run.step_model.train()
    total_loss = torch.zeros((), dtype=torch.float64, device=device)  # of this rank's images
    steps = math.ceil(n / bs)
    bar = tqdm(
        total=steps,
        desc=f"epoch {epoch + 1}/{config.epochs}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    start = time.perf_counter()
    for step in range(steps):
        idx = order[step * bs : (step + 1) * bs]
        size = len(idx)  # the global batch; this rank trains on its own slice of it
        idx = ranks.shard(idx)
        x = splits.train_x[idx].float() / 255  # (B, 1, 28, 28) in 0..1
        x = augment_batch(x, config.augment)
        if config.pairs and len(x):  # (a rank's shard of the last batch may be empty)
            x = torch.cat([x, touching_pairs(x, max(1, round(config.pairs * len(x))))])
        x = ((x - splits.mean) / splits.std).contiguous(memory_format=torch.channels_last)
        with autocast:  # the weights stay fp32
            logits = (run.step_model if size == bs else run.eager_model)(x)
        losses = partial(batch_loss, logits.float(), splits.train_y[idx], config.label_smoothing)
        loss = ranks.batch_loss(losses, size)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        if run.scheduler is not None:
            run.scheduler.step()
        total_loss += loss.detach().double() * (size / ranks.world_size)
        if progress and (step % 20 == 0 or step == steps - 1):
            rate = (step + 1) * bs / max(time.perf_counter() - start, 1e-9)
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{rate:,.0f}", refresh=False)
        bar.update(1)
    train_loss = ranks.sum([float(total_loss)])[0] / n  # float(): waits for the device
    seconds = time.perf_counter() - start
    bar.close()
    return {
        "epoch": epoch + 1,
        "train_loss": train_loss,
        "epoch_seconds": seconds,
        "images_per_second": n / seconds,
    }


def _eval_record(model, splits: _Splits, data: Dataset, config: TrainConfig, ranks: Ranks) -> dict:
    """Test (and validation) accuracy and loss; with several ranks each evaluates its own
    slice and the figures are pooled, so every rank gets the whole set's."""

    def score(images, labels) -> tuple[float, float]:
        images, labels = ranks.shard(images), ranks.shard(labels)
        if not len(images):  # more ranks than images
            return ranks.pool(0.0, 0.0, 0)
        result = evaluate(
            model,
            images,
            labels,
            mean=data.info.mean,
            std=data.info.std,
            num_classes=data.info.num_classes,
            batch_size=config.eval_batch_size,
            calibrate=False,
        )
        return ranks.pool(result.accuracy, result.loss, len(images))

    record: dict = {}
    if splits.val is not None:
        accuracy, loss = score(*splits.val)
        record.update(val_loss=loss, val_accuracy=accuracy)
    accuracy, loss = score(*splits.test)
    record.update(test_loss=loss, test_accuracy=accuracy)
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
