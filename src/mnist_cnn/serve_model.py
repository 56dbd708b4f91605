"""The model the service runs: a run directory on ONNX Runtime (exported in memory and checked
against PyTorch at start), and the checks that refuse a broken model before serving it."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

from .defaults import SERVE_RUNTIMES as RUNTIMES
from .errors import ConfigError, MnistCnnError
from .onnx_model import OnnxModel
from .predict import Predictor

log = logging.getLogger("mnist_cnn.serve")

PROBE_IMAGES = 64  # random images the exported model must agree on with PyTorch


class ExportedRun(OnnxModel):
    """A run directory exported to ONNX: ONNX Runtime answers, and the PyTorch model is kept
    for what only it can do (the feature maps of ``/v1/features``)."""

    def __init__(self, onnx: bytes | str, trained, threads: int | None = None):
        super().__init__(onnx, threads=threads)
        self.trained = trained
        self.onnx_bytes = onnx if isinstance(onnx, bytes) else None


def torch_model(predictor: Predictor):
    """The PyTorch TrainedModel behind ``predictor``, or None (an .onnx file)."""
    model = predictor.model
    return getattr(model, "trained", None) or (None if hasattr(model, "session") else model)


def load(
    run: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    runtime: str = "auto",
    onnx: str | None = None,
) -> Predictor:
    """``run`` as the service runs it, checked (:func:`check`).

    ``runtime`` "auto" runs a run directory on ONNX Runtime when it is installed (with the
    exporter) and the device is the CPU, else on PyTorch. ``onnx`` is an already exported and
    checked copy of ``run`` (the parent process hands it to its workers).
    """
    if runtime not in RUNTIMES:
        raise MnistCnnError(f"unknown runtime {runtime!r} (use {', '.join(RUNTIMES)})")
    if str(run).endswith(".onnx"):
        if runtime == "pytorch":
            raise MnistCnnError(f"{run}: an .onnx file runs on ONNX Runtime, not PyTorch")
        return check(Predictor.from_run(run, threads=threads))
    try:  # PyTorch: fails here, with one line, if the run is unusable
        predictor = check(Predictor.from_run(run, device, threads))
    except (TypeError, ValueError, KeyError) as e:  # config.json's mean/std not numbers
        raise MnistCnnError(f"{run}: unusable normalization in its config ({e})") from None
    if onnx is not None:
        return Predictor(ExportedRun(onnx, predictor.model, threads))
    why_not = _why_not_onnxruntime(device) if runtime != "pytorch" else "asked for"
    if why_not is None:
        return check(
            Predictor(ExportedRun(export_checked(predictor.model), predictor.model, threads))
        )
    if runtime == "onnxruntime":
        raise ConfigError("runtime", f"onnxruntime: {why_not}")
    log.info("serving on PyTorch (%s)", why_not)
    return predictor


def _why_not_onnxruntime(device: str) -> str | None:
    if str(device) != "cpu":
        return f"the device is {device}"
    for module in ("onnxruntime", "onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed: pip install 'mnist-cnn[export]'"
    return None


def export_checked(trained) -> bytes:
    """``trained`` exported to ONNX in memory, its logits checked against PyTorch's on random
    images as ``mnist-cnn export`` checks them (max |difference| <= 1e-4)."""
    import torch

    from .export import ParityError, _check_fp32, _export_onnx

    with tempfile.TemporaryDirectory(prefix="mnist-cnn-serve-") as work:
        path = Path(work) / "model.onnx"
        _export_onnx(trained, path)  # the exporter writes a file; it lives only here
        data = path.read_bytes()
    images = torch.rand(PROBE_IMAGES, 28, 28, generator=torch.Generator().manual_seed(0))
    result = _check_fp32(OnnxModel(data).logits, trained.model.cpu().eval(), trained, images)
    if not result.passed:
        raise ParityError(f"the in-memory ONNX export differs from PyTorch: {result.describe()}")
    return data


def check(predictor: Predictor) -> Predictor:
    """Refuse, with one line, a model that would answer nonsense or 500s: non-finite or
    non-positive normalization, non-finite weights, or non-finite answers to a probe."""
    model = predictor.model
    name = getattr(model, "path", None) or getattr(model, "run_dir", None) or "the model"
    for key in ("mean", "std"):
        value = getattr(model, key)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise MnistCnnError(f"{name}: its {key} ({value}) is not a finite number")
    if model.std <= 0:
        raise MnistCnnError(f"{name}: its std ({model.std}) must be positive")
    bad = _non_finite_weights(model)
    if bad:
        raise MnistCnnError(f"{name}: its weights hold NaN or infinite values ({bad})")
    probe = np.random.default_rng(0).random((4, 28, 28), dtype=np.float32)
    probe[0] = 0
    if not np.isfinite(predictor.probabilities(probe)).all():
        raise MnistCnnError(f"{name}: answers NaN or infinite probabilities")
    return predictor


def _non_finite_weights(model) -> str | None:
    """The first tensor of the model that holds NaN or infinity, by name."""
    if hasattr(model, "session"):  # ONNX: read its initializers when the onnx package is there
        if isinstance(model, ExportedRun):
            return None  # exported from a model checked already
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            return None  # the probe still catches what reaches the output
        graph = onnx.load(str(model.path)).graph
        for tensor in graph.initializer:
            a = numpy_helper.to_array(tensor)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                return tensor.name
        return None
    import torch

    for key, tensor in model.model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return key
    return None


def default_workers() -> int:
    """One process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
