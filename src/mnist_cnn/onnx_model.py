"""Running an exported ONNX model with ONNX Runtime: no torch import anywhere on this path."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import MnistCnnError
from .schema import ONNX_ARCHITECTURE, check_onnx_metadata
from .spec import InputSpec, ModelInfo, SpecFields, float_or_none, temperature_or_none


class OnnxModel(SpecFields):
    """An exported CustomCNN: normalized float32 (N, 1, 28, 28) in, logits (N, classes) out.
    A :class:`spec.Model`: its input spec is read from the file's metadata."""

    def __init__(self, path: str | os.PathLike | bytes, threads: int | None = None):
        """``path``: an .onnx file, or the bytes of one (a model exported in memory)."""
        try:
            import onnxruntime as ort
        except ImportError:
            raise MnistCnnError(
                "running .onnx models needs ONNX Runtime: pip install onnxruntime"
            ) from None
        in_memory = isinstance(path, bytes)
        self.path = Path("<in memory>") if isinstance(path, bytes) else Path(path)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(
                path if in_memory else str(self.path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # ORT raises its own exception types for unreadable models
            raise MnistCnnError(f"{self.path}: not a loadable ONNX model ({e})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.spec: InputSpec = check_onnx_metadata(meta, self.path)
        self.metadata = meta
        self.input_name = self.session.get_inputs()[0].name
        self._check_weights(path)
        self._check_graph()

    def _check_weights(self, source: str | os.PathLike | bytes) -> None:
        """Refuse NaN or infinite initializers (the weights), naming the first, when the onnx
        package is there to read them; without it, _check_graph still catches what reaches
        the output."""
        try:
            import onnx
            from onnx import numpy_helper
        except ImportError:
            return
        try:
            graph = (
                onnx.load_from_string(source) if isinstance(source, bytes) else onnx.load(source)
            ).graph
        except Exception:  # ORT loaded it: what onnx cannot read, the probe still checks
            return
        for tensor in graph.initializer:
            a = numpy_helper.to_array(tensor)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise MnistCnnError(
                    f"{self.path}: its weights hold NaN or infinite values ({tensor.name})"
                )

    def _check_graph(self) -> None:
        """One image through the graph: (1, classes) finite logits, or a one-line refusal."""
        side = self.spec.image_size
        probe = self.spec.normalize(np.zeros((1, side, side), np.float32))  # a blank image
        try:
            out = self.logits(probe)
        except Exception as e:  # ORT's own exception types: wrong input shape, bad graph
            raise MnistCnnError(
                f"{self.path}: does not take 1 x {side} x {side} images ({e})"
            ) from None
        if out.shape != (1, len(self.classes)):
            raise MnistCnnError(
                f"{self.path}: computes {out.shape[-1]} logits, but its metadata "
                f"names {len(self.classes)} classes"
            )
        if not np.isfinite(out).all():
            raise MnistCnnError(f"{self.path}: computes NaN or infinite logits (bad weights)")

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Normalized images (N, 1, 28, 28) float32 -> logits (N, classes)."""
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) images (uint8, or float in 0..1) -> (N, classes) probabilities: the
        softmax of ONNX Runtime's logits."""
        logits = self.logits(self.spec.normalize(images))
        z = np.exp(logits - logits.max(axis=1, keepdims=True))
        return z / z.sum(axis=1, keepdims=True)

    def describe(self) -> ModelInfo:
        meta = self.metadata
        parameters = meta.get("parameters", "")
        return ModelInfo.of(
            self.spec,
            architecture=meta.get("architecture", ONNX_ARCHITECTURE),
            test_accuracy=float_or_none(meta.get("test_accuracy")),
            parameters=int(parameters) if parameters.isdigit() else None,
            runtime="onnxruntime",
            temperature=self.temperature,
        )

    @property
    def temperature(self) -> float | None:
        """The temperature its run fitted on the test set, where the export carries one."""
        return temperature_or_none(self.metadata.get("temperature"))
