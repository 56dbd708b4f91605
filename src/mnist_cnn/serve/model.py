"""The model the service runs: a run directory on ONNX Runtime (exported in memory and checked
against PyTorch at start), and what ``GET /v1/model`` says about it.

A broken model is refused at start, with one line, by the loaders themselves: the config's
schema (mean, std), ``checkpoint.check_finite`` (weights), and ``OnnxModel`` (its initializers,
its metadata, and a blank image through its graph)."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

from ..defaults import SERVE_RUNTIMES as RUNTIMES
from ..errors import ConfigError, MnistCnnError
from ..onnx_model import OnnxModel
from ..predict import Predictor
from ..spec import ModelInfo

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
    if isinstance(model, ExportedRun):
        return model.trained
    return None if isinstance(model, OnnxModel) else model


def load(
    run: str,
    *,
    device: str = "cpu",
    threads: int | None = None,
    runtime: str = "auto",
    onnx: str | None = None,
) -> Predictor:
    """``run`` as the service runs it.

    ``runtime`` "auto" runs a run directory on ONNX Runtime when it is installed (with the
    exporter) and the device is the CPU, else on PyTorch. ``onnx`` is an already exported and
    checked copy of ``run`` (the parent process hands it to its workers).
    """
    if runtime not in RUNTIMES:
        raise MnistCnnError(f"unknown runtime {runtime!r} (use {', '.join(RUNTIMES)})")
    if str(run).endswith(".onnx"):
        if runtime == "pytorch":
            raise MnistCnnError(f"{run}: an .onnx file runs on ONNX Runtime, not PyTorch")
        return Predictor.from_run(run, threads=threads)
    predictor = Predictor.from_run(run, device, threads)  # PyTorch: one line if unusable
    if onnx is not None:
        return Predictor(ExportedRun(onnx, predictor.model, threads))
    why_not = _why_not_onnxruntime(device) if runtime != "pytorch" else "asked for"
    if why_not is None:
        return Predictor(ExportedRun(export_checked(predictor.model), predictor.model, threads))
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

    from ..export import ParityError, _check_fp32, _export_onnx

    with tempfile.TemporaryDirectory(prefix="mnist-cnn-serve-") as work:
        path = Path(work) / "model.onnx"
        _export_onnx(trained, path)  # the exporter writes a file; it lives only here
        data = path.read_bytes()
    images = torch.rand(PROBE_IMAGES, 28, 28, generator=torch.Generator().manual_seed(0))
    result = _check_fp32(OnnxModel(data).logits, trained.model.cpu().eval(), trained, images)
    if not result.passed:
        raise ParityError(f"the in-memory ONNX export differs from PyTorch: {result.describe()}")
    return data


def model_info(predictor) -> ModelInfo:
    """What ``GET /v1/model`` says about the model behind ``predictor``."""
    return predictor.model.describe()


def model_labels(info: ModelInfo) -> dict[str, str]:
    return {
        "architecture": info.architecture,
        "dataset": info.dataset,
        "runtime": info.runtime,
        "classes": str(len(info.classes)),
    }


def default_workers() -> int:
    """One process per core this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)
