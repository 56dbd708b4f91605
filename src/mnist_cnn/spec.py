"""What a model's inputs and outputs mean, read by every runtime from one object. No torch here.

As timm's pretrained config does, the spec travels with the model: a run's config.json holds
it under "data", an exported .onnx in its metadata, so inference and export preprocess exactly
as training did. :class:`Model` is what the PyTorch run (:class:`checkpoint.TrainedModel`) and
the ONNX Runtime model (:class:`onnx_model.OnnxModel`) both are.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

STYLES = ("mnist", "fashion")  # how a dataset's images were made: see preprocessing.to_mnist
IMAGE_SIZE = 28  # every model this tool trains, exports and serves takes 28 x 28 images


@dataclass(frozen=True)
class InputSpec:
    """Everything about a model's input and output but its weights."""

    dataset: str  # the dataset it was trained on, e.g. "mnist"
    classes: tuple[str, ...]  # output k's name
    mean: float  # of the training pixels scaled to 0..1
    std: float
    image_size: int = IMAGE_SIZE  # square grayscale inputs, image_size x image_size
    preprocessing: str = "mnist"  # the style people's images get, one of STYLES

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Images (N, H, W) -> the network's float32 input (N, 1, H, W): uint8 pixels are
        scaled to 0..1 first (float images are taken to be 0..1), then (x - mean) / std."""
        x = np.asarray(images)
        x = x.astype(np.float32) / 255 if x.dtype == np.uint8 else x.astype(np.float32)
        return ((x[:, None] - self.mean) / self.std).astype(np.float32)

    def config(self) -> dict:
        """The fields config.json's "data" holds for this spec."""
        return {
            "dataset": self.dataset,
            "classes": list(self.classes),
            "mean": self.mean,
            "std": self.std,
            "image_size": self.image_size,
            "preprocessing": self.preprocessing,
        }

    def metadata(self) -> dict[str, str]:
        """The spec as ONNX metadata entries (strings only, as the format requires)."""
        return {
            "dataset": self.dataset,
            "classes": json.dumps(list(self.classes), ensure_ascii=False),
            "mean": repr(self.mean),
            "std": repr(self.std),
            "image_size": str(self.image_size),
            "preprocessing": self.preprocessing,
        }


def style_of_dataset(dataset: str) -> str:
    """The preprocessing style of a run or export made before the style travelled with it:
    looked up by its dataset's name ("mnist" for names this version does not know)."""
    from .datasets import preprocessing_style

    return preprocessing_style(dataset)


@dataclass(frozen=True)
class ModelInfo:
    """What a model says about itself: ``GET /v1/model``, the page, the ONNX metadata."""

    architecture: str
    dataset: str
    classes: list[str]
    test_accuracy: float | None
    parameters: int | None
    runtime: str  # "pytorch" or "onnxruntime"
    mean: float
    std: float
    image_size: int
    preprocessing: str
    # softmax(logits / temperature) fits the test labels best (evaluation.fit_temperature):
    # how sure of itself the model is, which reading a number takes into account
    temperature: float | None = None

    @classmethod
    def of(cls, spec: InputSpec, **fields) -> ModelInfo:
        """``spec``'s fields and the rest: architecture, test_accuracy, parameters, runtime."""
        mine = {k: v for k, v in spec.config().items() if k in cls.__dataclass_fields__}
        return cls(**mine, **fields)

    @property
    def spec(self) -> InputSpec:
        return InputSpec(
            self.dataset,
            tuple(self.classes),
            self.mean,
            self.std,
            self.image_size,
            self.preprocessing,
        )

    def metadata(self) -> dict[str, str]:
        """The ONNX metadata an export carries: the spec, what the graph computes, provenance."""
        accuracy = "" if self.test_accuracy is None else repr(self.test_accuracy)
        return {
            "architecture": self.architecture,
            **self.spec.metadata(),
            "input": (
                f"float32 (N, 1, {self.image_size}, {self.image_size}): "
                "pixels / 255, then (x - mean) / std"
            ),
            "output": "float32 (N, classes) logits; softmax gives probabilities",
            "test_accuracy": accuracy,
            "temperature": "" if self.temperature is None else repr(self.temperature),
            "parameters": "" if self.parameters is None else str(self.parameters),
            "producer": "mnist-cnn",
        }


@runtime_checkable
class Model(Protocol):
    """A trained model on some runtime: its input spec, and class probabilities for images."""

    @property
    def spec(self) -> InputSpec: ...

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) images (uint8, or float in 0..1) -> (N, classes) probabilities."""
        ...

    def describe(self) -> ModelInfo:
        """What the model says about itself (one description for every runtime)."""
        ...


class SpecFields:
    """The spec's fields as a model's own attributes (``model.classes``, ``model.mean``, ...),
    as both runtimes had them before the spec existed."""

    spec: InputSpec

    @property
    def classes(self) -> list[str]:
        return list(self.spec.classes)

    @property
    def mean(self) -> float:
        return self.spec.mean

    @property
    def std(self) -> float:
        return self.spec.std

    @property
    def dataset(self) -> str:
        return self.spec.dataset


def float_or_none(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# the range evaluation.fit_temperature searches: a file claiming more is not believed
TEMPERATURES = (0.05, 20.0)


def temperature_or_none(value) -> float | None:
    """A model's temperature as a run or an export states it, or None where it is missing or
    outside TEMPERATURES (NaN, 0, negative, or a value no fit gives)."""
    t = float_or_none(value)
    return t if t is not None and TEMPERATURES[0] <= t <= TEMPERATURES[1] else None
