"""Exporting a trained run: ONNX (optionally int8) and torch.export programs, checked on writing.

Every export is compared with the PyTorch model before it is renamed into place: fp32 logits
within 1e-4 on real test images; int8 top-1 agreement >= 99.5% and test accuracy within 0.2
points of fp32. A file that fails is removed, never left behind as if it were good.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .checkpoint import TrainedModel
from .defaults import EXPORT_FORMATS as FORMATS
from .defaults import QUANTIZATIONS
from .errors import ConfigError, MnistCnnError
from .evaluation import normalize
from .model import count_parameters

OPSET = 21
FP32_TOLERANCE = 1e-4
INT8_MIN_AGREEMENT = 0.995
INT8_MAX_ACCURACY_DROP = 0.002


class ParityError(Exception):
    """The exported model does not compute what the PyTorch model does."""


@dataclass
class ExportCheck:
    """The figures of the parity check, and whether they pass."""

    images: int
    passed: bool
    figures: dict = field(default_factory=dict)

    def describe(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.figures.items())


def export(
    trained: TrainedModel,
    output: str | os.PathLike,
    *,
    fmt: str = "onnx",
    quantize: str | None = None,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    calibration_images: torch.Tensor | None = None,
) -> ExportCheck:
    """Write ``trained`` to ``output`` in format ``fmt``; raise ParityError if the check fails."""
    output = check_request(output, fmt, quantize)
    model = trained.model.cpu().eval()
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}.") as work:
        tmp = Path(work) / output.name
        if fmt == "exported-program":
            _export_program(trained, tmp)
            check = _check_fp32(_program_logits(tmp), model, trained, test_images)
        else:
            _export_onnx(trained, tmp)
            if quantize:
                if calibration_images is None:
                    raise MnistCnnError(f"{quantize} quantization needs calibration_images")
                fp32 = tmp.with_suffix(".fp32.onnx")
                os.replace(tmp, fp32)
                _quantize_int8(fp32, tmp, trained, calibration_images)
                _set_onnx_metadata(tmp, trained, quantization="int8 static (QDQ)")
                check = _check_int8(tmp, model, trained, test_images, test_labels)
            else:
                check = _check_fp32(_onnx_logits(tmp), model, trained, test_images)
        if not check.passed:
            raise ParityError(check.describe())
        os.replace(tmp, output)
    return check


def check_request(output: str | os.PathLike, fmt: str, quantize: str | None) -> Path:
    """Refuse, before any work, what cannot be exported or written; returns ``output``."""
    output = Path(output)
    if fmt not in FORMATS:
        raise ConfigError("fmt", f"{fmt!r} is unknown (use {' or '.join(FORMATS)})")
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError("quantize", f"{quantize!r} is unknown (use {', '.join(QUANTIZATIONS)})")
    if quantize and fmt != "onnx":
        raise ConfigError("quantize", lambda name: f"{quantize} is for {name('fmt')} onnx")
    if output.is_dir():
        raise ConfigError("output", f"{output}: is a directory; give a file name")
    if not output.parent.is_dir() or not os.access(output.parent, os.W_OK):
        raise ConfigError("output", f"{output}: cannot write to {output.parent}")
    if fmt == "onnx":
        for module in ("onnx", "onnxscript", "onnxruntime"):
            try:
                __import__(module)
            except ImportError:
                raise MnistCnnError(
                    f"exporting to ONNX needs {module}: pip install 'mnist-cnn[export]'"
                ) from None
    return output


def _example(batch: int = 2) -> torch.Tensor:
    return torch.zeros(batch, 1, 28, 28)


class _Quiet:
    """Silence the exporters' chatter (warnings and log lines about unrelated operators)."""

    def __enter__(self):
        import logging
        import warnings

        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore")
        self._levels = {}
        for name in ("", "torch.onnx", "torch.onnx._internal.exporter._registration"):
            logger = logging.getLogger(name)
            self._levels[name] = logger.level
            logger.setLevel(logging.ERROR)

    def __exit__(self, *exc):
        import logging

        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warnings.__exit__(*exc)


class _ConvReluPool(torch.nn.Module):
    """CustomCNN in the seed's own Conv -> ReLU -> MaxPool order (the same function as its
    pool-first forward). ONNX Runtime fuses each Conv with the ReLU right after it, which
    makes batch-1 inference about 10% faster than exporting the pool-first training order."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_conv_relu_pool(x)


def _export_onnx(trained: TrainedModel, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    with _Quiet():
        program = torch.onnx.export(
            _ConvReluPool(trained.model.eval()),
            (_example(),),
            dynamo=True,
            opset_version=OPSET,
            input_names=["images"],
            output_names=["logits"],
            dynamic_shapes=({0: batch},),
            verbose=False,
        )
    assert program is not None  # dynamo=True always returns the program
    program.save(str(path))
    _set_onnx_metadata(path, trained)


def _metadata(trained: TrainedModel) -> dict[str, str]:
    metrics = trained.config.get("metrics") or {}
    return {
        "architecture": trained.config["model"]["architecture"],
        "dataset": trained.dataset,
        "classes": json.dumps(trained.classes, ensure_ascii=False),
        "mean": repr(trained.mean),
        "std": repr(trained.std),
        "input": "float32 (N, 1, 28, 28): pixels / 255, then (x - mean) / std",
        "output": "float32 (N, classes) logits; softmax gives probabilities",
        "test_accuracy": repr(metrics.get("test_accuracy", "")),
        "parameters": str(count_parameters(trained.model)),
        "producer": "mnist-cnn",
    }


def _set_onnx_metadata(path: Path, trained: TrainedModel, **extra: str) -> None:
    import onnx

    model = onnx.load(str(path))
    del model.metadata_props[:]
    for key, value in {**_metadata(trained), **extra}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"CustomCNN ('CNN with Python' tutorial) trained on {trained.dataset}"
    onnx.save(model, str(path))


def _quantize_int8(fp32: Path, out: Path, trained: TrainedModel, images: torch.Tensor) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            x = normalize(images, trained.mean, trained.std).numpy()
            self.batches = iter(np.split(x, range(100, len(x), 100)))

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": batch}

    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_suffix(".prep.onnx")
    with _Quiet():
        quant_pre_process(str(fp32), str(prepared))  # shape inference, graph optimization
        quantize_static(
            str(prepared),
            str(out),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )


def _onnx_logits(path: Path):
    from .onnx_model import OnnxModel

    return OnnxModel(path).logits


def _export_program(trained: TrainedModel, path: Path) -> None:
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    program = torch.export.export(trained.model, (_example(),), dynamic_shapes=({0: batch},))
    extra = {
        "config.json": json.dumps(trained.config),
        "metadata.json": json.dumps(_metadata(trained)),
    }
    torch.export.save(program, str(path), extra_files=extra)


def _program_logits(path: Path):
    program = torch.export.load(str(path)).module()

    def logits(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return program(torch.from_numpy(x)).numpy()

    return logits


def _reference_logits(model, trained, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    x = normalize(images, trained.mean, trained.std)
    with torch.inference_mode():
        return x.numpy(), torch.cat([model(b) for b in x.split(1000)]).numpy()


def _in_chunks(logits_of, x: np.ndarray, size: int = 1000) -> np.ndarray:
    return np.concatenate([logits_of(b) for b in np.split(x, range(size, len(x), size))])


def _check_fp32(logits_of, model, trained, images: torch.Tensor) -> ExportCheck:
    x, expected = _reference_logits(model, trained, images)
    got = _in_chunks(logits_of, x)
    diff = float(np.abs(got - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    return ExportCheck(
        images=len(x),
        passed=diff <= FP32_TOLERANCE,
        figures={
            "max |logit difference|": f"{diff:.2e} (limit {FP32_TOLERANCE:.0e})",
            "top-1 agreement": f"{100 * agree:.2f}%",
            "images": len(x),
        },
    )


def _check_int8(path: Path, model, trained, images, labels) -> ExportCheck:
    x, expected = _reference_logits(model, trained, images)
    got = _in_chunks(_onnx_logits(path), x)  # one ONNX Runtime session for all chunks
    y = labels.numpy()
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    fp32_acc = float((expected.argmax(1) == y).mean())
    int8_acc = float((got.argmax(1) == y).mean())
    passed = agree >= INT8_MIN_AGREEMENT and fp32_acc - int8_acc <= INT8_MAX_ACCURACY_DROP
    return ExportCheck(
        images=len(x),
        passed=passed,
        figures={
            "top-1 agreement with fp32": f"{100 * agree:.2f}% (limit >= 99.5%)",
            "test accuracy int8": f"{100 * int8_acc:.2f}%",
            "fp32": f"{100 * fp32_acc:.2f}% (limit: at most 0.2 points lower)",
            "images": len(x),
        },
    )
