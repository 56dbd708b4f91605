"""Predicting people's own images with a trained run: preprocessing as MNIST was made, top-k."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .errors import MnistCnnError
from .preprocessing import DEFAULT_MAX_PIXELS, Preprocessed, load_image, to_mnist

IMAGE_SUFFIXES = {
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".webp",
    ".tif",
    ".tiff",
    ".pgm",
    ".ppm",
    ".pbm",
}


@dataclass
class Item:
    """One input: its name for the records, and where its pixels come from."""

    name: str | None
    source: object  # a path, bytes, a PIL image, an array or a tensor
    error: str | None = None  # known to be unusable before reading it


class Predictor:
    """A trained model with its preprocessing. ``predict`` returns one record per image.

    A record is ``{"file", "label", "class", "probability", "top_k": [...]}``, or
    ``{"file", "error"}`` for an image that could not be used.
    """

    def __init__(self, model, max_pixels: int = DEFAULT_MAX_PIXELS):
        """``model`` is a :class:`spec.Model`: a TrainedModel (PyTorch) or an OnnxModel (ONNX
        Runtime)."""
        self.model = model
        self.spec = model.spec
        self.classes = list(self.spec.classes)
        self.mean, self.std = self.spec.mean, self.spec.std
        self.max_pixels = max_pixels
        self.style = self.spec.preprocessing  # as its training data was made
        # how sure of itself the model is (fitted on its test set; None where never fitted)
        self.temperature = getattr(model, "temperature", None)

    @classmethod
    def from_run(
        cls, path: str | os.PathLike, device="cpu", threads: int | None = None, **kw
    ) -> Predictor:
        """A run directory or model.safetensors (PyTorch), or an exported .onnx (no torch).

        ``threads``: ONNX Runtime's intra-op threads, or PyTorch's (a process-wide setting).
        """
        if str(path).endswith(".onnx"):
            from .onnx_model import OnnxModel

            return cls(OnnxModel(path, threads=threads), **kw)
        import torch

        from .checkpoint import load_run

        if threads:
            torch.set_num_threads(threads)
        return cls(load_run(path, device=device).for_inference(), **kw)

    def preprocess(self, source) -> Preprocessed:
        if hasattr(source, "detach") and hasattr(source, "numpy"):  # a torch tensor
            source = source.detach().cpu().numpy()
        return to_mnist(load_image(source, max_pixels=self.max_pixels), self.style)

    def probabilities(self, images: np.ndarray, chunk: int = 1000) -> np.ndarray:
        """(N, 28, 28) preprocessed images in 0..1 -> (N, classes) probabilities."""
        images = np.asarray(images, np.float32)
        if len(images) > chunk:  # bounded memory for large folders
            parts = [
                self.probabilities(images[i : i + chunk]) for i in range(0, len(images), chunk)
            ]
            return np.concatenate(parts)
        return self.model.probabilities(images)

    def predict(self, images, top_k: int = 3, names: Iterable[str | None] | None = None):
        """Predict one image or a list; each may be a path, PIL image, array or tensor.

        An array or tensor of shape (N, H, W) or (N, C, H, W) is a batch of N images.
        """
        if _is_batch(images):
            images = list(images)
        single = not isinstance(images, (list, tuple))
        items = as_items([images] if single else list(images), names)
        records = self.predict_items(items, top_k=top_k)
        return records[0] if single else records

    def predict_items(self, items: list[Item], top_k: int = 3, keep=None) -> list[dict]:
        """Records for ``items`` in order; ``keep(item, Preprocessed)`` sees each good image."""
        done: list[dict | None] = [None] * len(items)
        good, arrays = [], []
        for i, item in enumerate(items):
            try:
                if item.error:
                    raise MnistCnnError(item.error)
                pre = self.preprocess(item.source)
            except Exception as e:  # one unusable image never stops the others
                done[i] = _failure(item, e)
                continue
            if keep is not None:
                keep(item, pre)
            good.append(i)
            arrays.append(pre.image)
        if arrays:
            probs = self.probabilities(np.stack(arrays))
            for i, p in zip(good, probs, strict=True):
                done[i] = self.record(items[i].name, p, top_k)
        return done  # type: ignore[return-value]

    def record(self, name: str | None, probs: np.ndarray, top_k: int) -> dict:
        order = np.argsort(-probs, kind="stable")[: max(1, top_k)]
        top = [
            {"label": int(k), "class": self.classes[k], "probability": float(probs[k])}
            for k in order
        ]
        return {"file": name, **top[0], "unsure": is_unsure(probs), "top_k": top}

    @staticmethod
    def is_unsure(probs: np.ndarray) -> bool:
        return is_unsure(probs)

    def read(self, image, name: str | None = None) -> dict:
        """Read the whole number written in one image (a path, PIL image, array or tensor).

        The record is ``{"file", "number", "digits": [{"label", "probability", "box"}],
        "probability"}``: the digits left to right, each box ``[x0, y0, x1, y1]`` in the
        image's pixels, and the number's probability, the product of its digits'.
        """
        return self.read_items(as_items([image], [name]))[0]

    def read_gray(self, gray: np.ndarray, whole=None):
        """(digits, their Preprocessed, their probabilities): the number in a decoded image
        (``segment.read_number``) read by this model, with its temperature; ``whole()``
        preprocesses the image as ``predict`` would, for one digit. The CLI's and the
        service's one way to read a number."""
        from .segment import read_number

        return read_number(gray, self.probabilities, whole, temperature=self.temperature)

    def read_items(self, items: list[Item], keep=None) -> list[dict]:
        """:meth:`read` records for ``items`` in order, or ``{"file", "error"}`` for an image
        that could not be used; ``keep(item, [Preprocessed, ...])`` sees each one's digits."""
        from .preprocessing import load_image_sized
        from .segment import WORK_SIDE, number_record

        if self.style != "mnist":
            raise MnistCnnError(f"reading numbers needs a model of digits, not of {self.style}")
        records = []
        for item in items:
            try:
                if item.error:
                    raise MnistCnnError(item.error)
                source = item.source
                if hasattr(source, "detach") and hasattr(source, "numpy"):  # a torch tensor
                    source = source.detach().cpu().numpy()
                gray, (w, h) = load_image_sized(source, max_pixels=self.max_pixels, side=WORK_SIDE)
                digits, pres, probs = self.read_gray(gray, partial(self.preprocess, source))
            except Exception as e:
                records.append(_failure(item, e))
                continue
            if keep is not None:
                keep(item, pres)
            scale = (w / gray.shape[1], h / gray.shape[0])  # boxes in the image's own pixels
            records.append(number_record(item.name, digits, probs, self.classes, scale))
        return records


# When to call an answer unsure, calibrated on the real-handwriting development set
# (benchmarks/handwriting.py): a low top-1 probability, or a second class close behind.
UNSURE_BELOW = 0.5  # top-1 probability
UNSURE_RATIO = 0.35  # second / first


def is_unsure(probs: np.ndarray) -> bool:
    """Whether the model's answer for one image (its class probabilities) is not to be trusted."""
    first, second = np.sort(np.asarray(probs, np.float64))[::-1][:2]
    return bool(first < UNSURE_BELOW or second > UNSURE_RATIO * first)


def _failure(item: Item, e: Exception) -> dict:
    """The record of an image that could not be used, its name leading the message."""
    message = str(e) if isinstance(e, MnistCnnError) else f"unusable image ({e!r})"
    if item.name and not message.startswith(item.name):
        message = f"{item.name}: {message}"
    return {"file": item.name, "error": message}


def _is_batch(images) -> bool:
    shape = getattr(images, "shape", None)
    if shape is None or isinstance(images, (list, tuple)):
        return False
    return len(shape) == 4 or (len(shape) == 3 and shape[-1] not in (1, 3, 4))


def as_items(images: list, names: Iterable[str | None] | None = None) -> list[Item]:
    names = list(names) if names is not None else [None] * len(images)
    if len(names) != len(images):
        raise ValueError("names must match images one to one")
    items = []
    for image, name in zip(images, names, strict=True):
        if name is None and isinstance(image, (str, os.PathLike)):
            name = str(image)
        items.append(Item(name, image))
    return items


def expand_inputs(args: list[str], stdin=None) -> list[Item]:
    """Command-line IMAGE arguments as items: files, directories (recursively) and '-' (stdin)."""
    items: list[Item] = []
    for arg in args:
        if arg == "-":
            data = (stdin.buffer if hasattr(stdin, "buffer") else stdin).read()
            items.append(Item("-", data))
            continue
        path = Path(arg)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                items.append(Item(arg, None, error=f"{arg}: no images in this directory"))
            items += [Item(str(p), p) for p in found]
        else:
            items.append(Item(arg, path))
    return items
