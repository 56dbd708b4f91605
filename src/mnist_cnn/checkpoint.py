"""Run directories: writing a checkpoint after each epoch, and rebuilding a model from one.

A run directory holds:
    config.json        model arguments, data (classes, mean, std), training settings,
                       library versions and the final metrics: enough to rebuild and preprocess
    model.safetensors  the weights alone
    metrics.jsonl      one line per completed epoch
    state.pt           what resuming needs: weights, optimizer, RNG states, epoch
Every file is replaced atomically, so a run killed at any moment can be resumed. Readers see
one epoch: model.safetensors carries its epoch and that epoch's config.json in its metadata,
so a reader between two of the writes (or after a kill there) never pairs newer weights with an
older epoch's classes, normalization or metrics. Every file is checked as it is read (schema.py).
"""

from __future__ import annotations

import io
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save

from . import schema
from .errors import MnistCnnError
from .evaluation import predict_probabilities
from .files import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from .model import ARCHITECTURE, CustomCNN, count_parameters
from .spec import InputSpec, ModelInfo, SpecFields, float_or_none, temperature_or_none

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
STATE_FILE = "state.pt"
FORMAT_VERSION = 1


def library_versions() -> dict:
    from . import __version__

    return {
        "mnist_cnn": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def save_weights(path: str | os.PathLike, model: CustomCNN, metadata: dict | None = None) -> None:
    """Write the model's weights as safetensors (string metadata only, as the format requires)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {"architecture": ARCHITECTURE, **{k: str(v) for k, v in (metadata or {}).items()}}
    atomic_write_bytes(path, save(tensors, metadata=meta))


def save_state(path: str | os.PathLike, state: dict) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_state(run_dir: Path) -> dict | None:
    """The resume state of a run (None if no epoch has completed yet), its top level checked;
    :func:`restore_state` checks the rest against the model and optimizer it is loaded into."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    limit = 64 << 20  # weights + Adam's two moments of 1.4 M parameters: about 17 MB
    if schema.file_size(path) > limit:
        raise MnistCnnError(f"{path}: larger than the {limit:,} bytes a resume state can be")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt pickle raises many kinds of errors, some of many lines
        reason = [line.strip() for line in str(e).splitlines() if line.strip()] or [repr(e)]
        raise MnistCnnError(
            f"{path}: cannot be loaded as a resume state ({reason[-1][:200]})"
        ) from None
    if not isinstance(state, dict):
        raise MnistCnnError(f"{path}: not a resume state (a {type(state).__name__})")
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        raise MnistCnnError(f"{path}: not a resume state (missing {', '.join(missing)})")
    schema.in_range(
        schema.field(state, "epoch", int, path), 1, schema.MAX_METRICS_LINES, path, "epoch"
    )
    return state


STATE_KEYS = ("epoch", "model", "optimizer", "rng")


def restore_state(state: dict, path: Path, model, optimizer, scheduler, rng_now: dict) -> None:
    """Check every field of a resume state against what this model, optimizer, schedule and
    RNG would save now, then load the weights, optimizer and schedule (all or nothing)."""
    check_state_dict(model, state["model"], path)
    check_finite(state["model"], path, "model")
    _check_optimizer(state["optimizer"], optimizer, path)
    if scheduler is not None:
        if not state.get("scheduler"):
            raise MnistCnnError(f"{path}: has no learning-rate schedule state to resume")
        fresh = scheduler.state_dict()
        schema.same_structure(state["scheduler"], fresh, path, "scheduler")
        saved = state["scheduler"]
        if saved["total_steps"] != fresh["total_steps"]:
            schema.fail(
                path,
                "scheduler.total_steps",
                f"{saved['total_steps']}, but this run plans {fresh['total_steps']} steps",
            )
        schema.in_range(saved["last_epoch"], 0, fresh["total_steps"], path, "scheduler.last_epoch")
    rng = state["rng"]
    expected = {"torch": rng_now["torch"]}
    if isinstance(rng, dict) and "cuda" in rng:  # a CUDA run's: used when resumed on CUDA
        expected["cuda"] = rng_now.get("cuda", torch.zeros(16, dtype=torch.uint8))
        if "cuda" not in rng_now and isinstance(rng["cuda"], torch.Tensor):
            expected["cuda"] = torch.zeros_like(rng["cuda"], dtype=torch.uint8)
    schema.same_structure(rng, expected, path, "rng")
    ranks = state.get("rng_ranks")
    if ranks is not None:
        if not isinstance(ranks, list) or len(ranks) > 4096:
            schema.fail(path, "rng_ranks", f"expected a list of RNG states, found {ranks!r:.60}")
        for i, r in enumerate(ranks):
            schema.same_structure(r, state["rng"], path, f"rng_ranks[{i}]")
    for i, r in enumerate([rng, *(ranks or [])]):
        _check_generator_state(r["torch"], path, "rng.torch" if i == 0 else f"rng_ranks[{i - 1}]")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])


def _check_generator_state(saved: torch.Tensor, path: Path, name: str) -> None:
    """A CPU generator state of the right shape can still be no state mt19937 accepts."""
    try:
        torch.Generator().set_state(saved)
    except RuntimeError:
        schema.fail(path, name, "not a state of PyTorch's random-number generator")


def _check_optimizer(saved, optimizer, path: Path) -> None:
    fresh = optimizer.state_dict()
    if not isinstance(saved, dict) or set(saved) != {"state", "param_groups"}:
        schema.fail(path, "optimizer", "expected Adam's state (state, param_groups)")
    schema.same_structure(
        saved["param_groups"], fresh["param_groups"], path, "optimizer.param_groups"
    )
    for i, (a, b) in enumerate(zip(saved["param_groups"], fresh["param_groups"], strict=True)):
        if a["params"] != b["params"]:
            schema.fail(path, f"optimizer.param_groups[{i}].params", "not this model's parameters")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    moments = {"exp_avg", "exp_avg_sq"} | (
        {"max_exp_avg_sq"} if fresh["param_groups"][0].get("amsgrad") else set()
    )
    state = saved["state"]
    if not isinstance(state, dict):
        schema.fail(path, "optimizer.state", f"expected an object, found {state!r:.60}")
    for key, entry in state.items():
        name = f"optimizer.state[{key!r:.20}]"
        if not isinstance(key, int) or not 0 <= key < len(params):
            schema.fail(path, name, "not one of this model's parameters")
        expected = {"step": torch.zeros((), dtype=torch.float32)}
        expected |= {m: torch.zeros_like(params[key], device="cpu") for m in moments}
        schema.same_structure(entry, expected, path, name)


def check_finite(tensors: dict, source, what: str) -> None:
    """Refuse NaN or infinite weights: a model that computes nan% must not load."""
    for key, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise MnistCnnError(f"{source}: {what} {key} holds NaN or infinite values")


def write_checkpoint(
    run_dir: Path, *, config: dict, history: list[dict], model: CustomCNN, state: dict
) -> None:
    """Write all four files of an epoch; state.pt goes last, as it decides where resume starts.
    The weights carry the epoch's config, which readers take when config.json is not yet (or,
    after a kill, never) rewritten for the same epoch."""
    atomic_write_jsonl(run_dir / METRICS_FILE, history)
    save_weights(
        run_dir / MODEL_FILE, model, {"epoch": state["epoch"], "config": json.dumps(config)}
    )
    atomic_write_json(run_dir / CONFIG_FILE, config)
    save_state(run_dir / STATE_FILE, state)


def read_config(run_dir: Path) -> dict:
    """config.json of ``run_dir``, checked against its schema (see schema.py)."""
    path = run_dir / CONFIG_FILE
    try:
        return schema.read_config_file(path)
    except FileNotFoundError:
        raise MnistCnnError(f"{run_dir}: not a run directory (no {CONFIG_FILE})") from None


def read_metrics(run_dir: Path, epochs: int | None = None) -> list[dict]:
    """metrics.jsonl's records (the first ``epochs`` of them), checked line by line."""
    path = run_dir / METRICS_FILE
    try:
        data = schema.read_bounded(path, schema.MAX_METRICS_BYTES, "metrics file")
    except FileNotFoundError:
        return []
    records = schema.parse_metrics(data, path)
    return records if epochs is None else records[:epochs]


def check_architecture(config: dict, run_dir: Path) -> None:
    """Kept for callers: read_config has checked the architecture (and everything else)."""
    found = config["model"].get("architecture") if isinstance(config["model"], dict) else None
    if found != ARCHITECTURE:
        raise MnistCnnError(
            f"{run_dir}: checkpoint is for architecture {found!r}, not {ARCHITECTURE}"
        )


@dataclass
class TrainedModel(SpecFields):
    """A trained CustomCNN with what it needs for inference: its input spec (classes,
    normalization, image size, preprocessing style). A :class:`spec.Model` on PyTorch."""

    model: CustomCNN
    config: dict
    run_dir: Path
    spec: InputSpec = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        # config.json's "data" (an older run's without a style: its dataset's)
        self.spec = schema.check_data(self.config["data"], self.run_dir / CONFIG_FILE)

    def for_inference(self) -> TrainedModel:
        """This model, made to run fast: its weights moved to channels-last (NHWC) memory, in
        which oneDNN's CPU convolutions run it 1.3-2.4x faster (batches of 1 to 1,000, one or
        two threads; the same probabilities within 5e-7). The weights then no longer lie in
        PyTorch's usual order: ``.contiguous()`` each before saving it with safetensors."""
        self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        return self

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) images (uint8, or float in 0..1) -> (N, classes) probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(images))
        return predict_probabilities(self.model, x, mean=self.mean, std=self.std).numpy()

    def describe(self) -> ModelInfo:
        metrics = self.config.get("metrics") or {}
        return ModelInfo.of(
            self.spec,
            architecture=self.config["model"]["architecture"],
            test_accuracy=float_or_none(metrics.get("test_accuracy")),
            parameters=count_parameters(self.model),
            runtime="pytorch",
            temperature=self.temperature,
        )

    @property
    def temperature(self) -> float | None:
        """The temperature fitted on its test set (evaluation.json), where it was fitted."""
        from .model_card import read_evaluations

        try:
            found = read_evaluations(self.run_dir).get(f"{self.spec.dataset}/test", {})
        except MnistCnnError:
            return None
        return temperature_or_none(found.get("temperature")) if isinstance(found, dict) else None

    @property
    def epoch(self) -> int:
        """The epoch these weights are from (0 for weights saved outside training)."""
        return int(self.config.get("epochs_completed", 0))

    def history(self) -> list[dict]:
        """metrics.jsonl up to these weights' epoch, checked (a newer line may be written)."""
        return read_metrics(self.run_dir, self.epoch or None)


def resolve_run(path: str | os.PathLike) -> tuple[Path, Path]:
    """(run directory, weights file) for a run directory or a model.safetensors inside one."""
    path = Path(path)
    if path.is_dir():
        return path, path / MODEL_FILE
    if path.is_file() and path.suffix == ".safetensors":
        return path.parent, path
    if not path.exists():
        raise MnistCnnError(f"{path}: no such run directory or model file")
    raise MnistCnnError(f"{path}: not a run directory or a .safetensors file")


def load_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the model of a run directory (or of a model.safetensors with config.json beside).

    Everything is checked before the model is built: config.json against its schema and the
    architecture, the weights' names, shapes and epoch; NaN or infinite weights are refused.
    """
    run_dir, weights = resolve_run(path)
    config = read_config(run_dir)
    if not weights.is_file():
        raise MnistCnnError(f"{run_dir}: no {MODEL_FILE} (has an epoch completed yet?)")
    shapes, metadata = _weights_header(weights)
    config = _config_of_epoch(config, metadata, run_dir, weights)
    model_config, _ = schema.check_run_config(config, run_dir / CONFIG_FILE)
    check_shapes(_expected_shapes(model_config), shapes, weights)
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise MnistCnnError(f"{weights}: not a readable safetensors file ({e})") from None
    check_finite(tensors, weights, "weight")
    model = CustomCNN(model_config)
    model.load_state_dict(tensors)
    model.eval()
    return TrainedModel(model.to(device), config, run_dir)


def _weights_header(weights: Path) -> tuple[dict, dict]:
    """(name -> shape, metadata) of a safetensors file, read without loading any tensor."""
    try:
        with safe_open(str(weights), framework="pt") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise MnistCnnError(f"{weights}: not a readable safetensors file ({e})") from None
    return shapes, metadata


def _config_of_epoch(config: dict, metadata: dict, run_dir: Path, weights: Path) -> dict:
    """The config of the weights' own epoch: config.json, unless the weights are of another
    epoch (written, config.json not yet): then the copy the weights carry."""
    epoch = metadata.get("epoch")
    if epoch is None or epoch == str(config.get("epochs_completed")):
        return config
    if "config" not in metadata:
        raise MnistCnnError(
            f"{weights}: weights of epoch {epoch:.20} but {run_dir / CONFIG_FILE} is of epoch "
            f"{config.get('epochs_completed')}: an interrupted checkpoint; "
            f"`mnist-cnn train --resume {run_dir}` completes it"
        )
    source = f"{weights} (metadata config)"
    carried = schema.parse_json(metadata["config"][: schema.MAX_CONFIG_BYTES], source)
    schema.check_run_config(carried, source)
    return carried


def _expected_shapes(config) -> dict:
    with torch.device("meta"):  # shapes only: nothing allocated
        return {k: tuple(v.shape) for k, v in CustomCNN(config).state_dict().items()}


def check_state_dict(model: torch.nn.Module, tensors, source: Path) -> None:
    """Raise a one-line error naming what differs between ``tensors`` and ``model``'s weights."""
    if not isinstance(tensors, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()
    ):
        raise MnistCnnError(f"{source}: model: expected named weight tensors")
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    check_shapes(expected, {k: tuple(v.shape) for k, v in tensors.items()}, source)


def check_shapes(expected: dict, found: dict, source) -> None:
    problems = [f"missing {k}" for k in expected if k not in found]
    problems += [f"unexpected {k}" for k in found if k not in expected]
    problems += [
        f"{k} is {found[k]}, expected {expected[k]}"
        for k in expected
        if k in found and found[k] != expected[k]
    ]
    if problems:
        shown = "; ".join(problems[:4]) + ("; ..." if len(problems) > 4 else "")
        raise MnistCnnError(f"{source}: weights do not fit {ARCHITECTURE}: {shown}")
