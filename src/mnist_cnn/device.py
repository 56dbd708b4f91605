"""Choosing the device, its precision and the determinism settings: one helper for every command."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from .errors import ConfigError, MnistCnnError

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
        raise ConfigError("device", "cuda: no CUDA device is available to this PyTorch build")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device", "mps: Apple's MPS backend is not available here")
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


# CPU instructions that compute bf16 natively (names as Linux's /proc/cpuinfo flags): Intel's
# AMX tiles (Sapphire Rapids and later) and AVX-512 BF16 (Cooper Lake, Sapphire Rapids, AMD Zen 4+)
CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")
CPUINFO = Path("/proc/cpuinfo")


def cpuinfo_flags(text: str) -> set[str]:
    """The feature flags of a Linux /proc/cpuinfo text (x86 ``flags``, Arm ``Features``)."""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


@functools.cache
def cpu_bf16_features() -> tuple[str, ...]:
    """Which of CPU_BF16_FLAGS this CPU has: PyTorch's cpuid probe (any OS) where this build has
    it, else Linux's /proc/cpuinfo; () when neither knows. Never guessed from the vendor."""
    import torch

    # every CPU with AMX tiles has AMX-BF16 (Sapphire, Emerald, Granite Rapids)
    probes = {"amx_bf16": "_is_amx_tile_supported", "avx512_bf16": "_is_avx512_bf16_supported"}
    if all(hasattr(torch.cpu, name) for name in probes.values()):
        return tuple(flag for flag, name in probes.items() if getattr(torch.cpu, name)())
    try:
        flags = cpuinfo_flags(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ()
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def native_bf16(device) -> tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and why (for the log and the run's config)."""
    import torch

    if device.type == "cuda":
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return True, f"{torch.cuda.get_device_name(device)} computes bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no native bf16"
    if device.type == "cpu":
        found = cpu_bf16_features()
        if found:
            return True, f"the CPU has {', '.join(found)}"
        return False, f"the CPU has none of {', '.join(CPU_BF16_FLAGS)}"
    return False, f"auto uses bf16 only on CUDA and CPUs with {' or '.join(CPU_BF16_FLAGS)}"


def resolve_precision(requested: str, device) -> tuple[str, str]:
    """``auto``: bf16 autocast where ``device`` computes bf16 natively, else fp32; ``fp32`` and
    ``bf16`` stay as asked. Returns the precision and a reason to show the user."""
    native, why = native_bf16(device)
    if requested == "auto":
        return ("bf16" if native else "fp32"), f"auto: {why}"
    if requested == "bf16" and not native:
        return "bf16", f"asked for, though {why}: emulated, likely slower than fp32"
    return requested, "asked for"
