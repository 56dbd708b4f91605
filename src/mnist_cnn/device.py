"""Choosing the device and the determinism settings: one helper for every command."""

from __future__ import annotations

import os

from .errors import MnistCnnError

DEVICES = ("auto", "cpu", "cuda", "mps")


def select_device(name: str = "auto"):
    """``auto`` picks CUDA, then Apple's MPS, then the CPU; an explicit name must be usable."""
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in DEVICES:
        raise MnistCnnError(f"unknown device {name!r} (use one of {', '.join(DEVICES)})")
    if kind == "cuda" and not torch.cuda.is_available():
        raise MnistCnnError("--device cuda: no CUDA device is available to this PyTorch build")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise MnistCnnError("--device mps: Apple's MPS backend is not available here")
    return torch.device(name)


def configure_determinism(deterministic: bool, device) -> None:
    """Deterministic kernels (bitwise-repeatable runs) or the fastest ones (cuDNN autotuning)."""
    import torch

    if device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic)


def seed_everything(seed: int) -> None:
    """The seed's ``torch.manual_seed(777)`` (which seeds every CUDA device too)."""
    import torch

    torch.manual_seed(seed)
