"""Run directories: writing a checkpoint after each epoch, and rebuilding a model from one.

A run directory holds:
    config.json        model arguments, data (classes, mean, std), training settings,
                       library versions and the final metrics: enough to rebuild and preprocess
    model.safetensors  the weights alone
    metrics.jsonl      one line per completed epoch
    state.pt           what resuming needs: weights, optimizer, RNG states, epoch
Every file is replaced atomically, so a run killed at any moment can be resumed.
"""

from __future__ import annotations

import io
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from .errors import MnistCnnError
from .files import atomic_write_bytes, atomic_write_json, atomic_write_jsonl
from .model import ARCHITECTURE, CustomCNN, ModelConfig

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
    """The resume state of a run (None if no epoch has completed yet)."""
    path = run_dir / STATE_FILE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt pickle raises many kinds of errors
        raise MnistCnnError(f"{path}: cannot be loaded as a resume state ({e})") from None


def write_checkpoint(
    run_dir: Path, *, config: dict, history: list[dict], model: CustomCNN, state: dict
) -> None:
    """Write all four files of an epoch; state.pt goes last, as it decides where resume starts."""
    atomic_write_jsonl(run_dir / METRICS_FILE, history)
    save_weights(run_dir / MODEL_FILE, model, {"epoch": state["epoch"]})
    atomic_write_json(run_dir / CONFIG_FILE, config)
    save_state(run_dir / STATE_FILE, state)


def read_config(run_dir: Path) -> dict:
    path = run_dir / CONFIG_FILE
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MnistCnnError(f"{run_dir}: not a run directory (no {CONFIG_FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MnistCnnError(f"{path}: unreadable ({e})") from None
    if not isinstance(config, dict) or "model" not in config or "data" not in config:
        raise MnistCnnError(f"{path}: not a mnist-cnn run configuration")
    return config


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MnistCnnError(f"{path}: unreadable ({e})") from None


def check_architecture(config: dict, run_dir: Path) -> None:
    found = config["model"].get("architecture") if isinstance(config["model"], dict) else None
    if found != ARCHITECTURE:
        raise MnistCnnError(
            f"{run_dir}: checkpoint is for architecture {found!r}, not {ARCHITECTURE}"
        )


@dataclass
class TrainedModel:
    """A trained CustomCNN with what it needs for inference: classes and normalization."""

    model: CustomCNN
    config: dict
    run_dir: Path

    @property
    def classes(self) -> list[str]:
        return list(self.config["data"]["classes"])

    @property
    def mean(self) -> float:
        return float(self.config["data"]["mean"])

    @property
    def std(self) -> float:
        return float(self.config["data"]["std"])

    @property
    def dataset(self) -> str:
        return self.config["data"]["dataset"]


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
    """Rebuild the model of a run directory (or of a model.safetensors with config.json beside)."""
    run_dir, weights = resolve_run(path)
    config = read_config(run_dir)
    check_architecture(config, run_dir)
    model_cfg = config["model"]
    try:
        model = CustomCNN(ModelConfig(**model_cfg.get("args", {})))
    except (TypeError, ValueError, RuntimeError) as e:
        raise MnistCnnError(
            f"{run_dir}: model arguments do not build a {ARCHITECTURE}: {e}"
        ) from None
    if not weights.is_file():
        raise MnistCnnError(f"{run_dir}: no {MODEL_FILE} (has an epoch completed yet?)")
    try:
        tensors = load_file(weights)
    except (SafetensorError, OSError) as e:
        raise MnistCnnError(f"{weights}: not a readable safetensors file ({e})") from None
    check_state_dict(model, tensors, weights)
    model.load_state_dict(tensors)
    model.eval()
    return TrainedModel(model.to(device), config, run_dir)


def check_state_dict(model: torch.nn.Module, tensors: dict, source: Path) -> None:
    """Raise a one-line error naming what differs between ``tensors`` and ``model``'s weights."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
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
