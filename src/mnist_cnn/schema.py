"""Typed schemas of the files a run directory and an export hold, checked as they are read.

Every reader goes through here, so a hand-edited, truncated or hostile file ends in one line
that names the file and the field (``runs/x/config.json: model.args.image_size: ...``), before
anything is built or any long work starts. Sizes are bounded before parsing: a file may not be
larger, or nest deeper, than what this tool ever writes.
"""

from __future__ import annotations

import json
import math
import os
import types
import typing
from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from .errors import MnistCnnError
from .spec import IMAGE_SIZE, STYLES, InputSpec, style_of_dataset

MAX_CONFIG_BYTES = 1 << 20  # config.json is about 2 KB
MAX_METRICS_BYTES = 64 << 20  # one line of ~250 bytes per epoch
MAX_METRICS_LINES = 100_000
MAX_DEPTH = 16  # config.json nests 3 deep
MAX_CLASSES = 1000
MAX_NAME = 200  # characters of a class or dataset name
IN_CHANNELS = 1
ONNX_ARCHITECTURE = "CustomCNN"  # model.ARCHITECTURE, named here so ONNX paths need no torch


class SchemaError(MnistCnnError):
    """A file's content is not what this tool writes there."""


def fail(source, field: str, problem: str) -> typing.NoReturn:
    raise SchemaError(f"{source}: {field}: {problem}" if field else f"{source}: {problem}")


def describe(value) -> str:
    """A short, safe picture of a value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------- bounded JSON


def read_bounded(path: Path, max_bytes: int, what: str) -> bytes:
    """The bytes of ``path``, refused (without reading them all) past ``max_bytes``."""
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise
    except OSError as e:
        raise SchemaError(f"{path}: unreadable ({e.strerror})") from None
    if len(data) > max_bytes:
        raise SchemaError(f"{path}: larger than the {max_bytes:,} bytes a {what} can be")
    return data


def parse_json(text: str | bytes, source, field: str = ""):
    """JSON as Python's json reads it (NaN allowed: metrics of a diverged run), at most
    MAX_DEPTH deep."""
    try:
        value = json.loads(text)
    except RecursionError:
        fail(source, field, f"nested deeper than {MAX_DEPTH} levels")
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        fail(source, field, f"not valid JSON ({e})")
    if _depth(value) > MAX_DEPTH:
        fail(source, field, f"nested deeper than {MAX_DEPTH} levels")
    return value


def _depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if d > MAX_DEPTH:
            break
        if isinstance(v, dict):
            stack += [(x, d + 1) for x in v.values()]
        elif isinstance(v, list):
            stack += [(x, d + 1) for x in v]
    return deepest


# ---------------------------------------------------------------------------- typed fields


def _matches(value, kind) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is type(None):
        return value is None
    return isinstance(value, kind)


def _kinds(hint) -> tuple:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return typing.get_args(hint)
    return (hint,)


def _kind_name(kinds: tuple) -> str:
    names = {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true or false",
        dict: "an object",
        list: "a list",
        type(None): "null",
    }
    return " or ".join(names.get(k, getattr(k, "__name__", str(k))) for k in kinds)


def field(obj: dict, key: str, kinds, source, prefix: str = "", *, default=MISSING):
    """``obj[key]`` if it has one of the types ``kinds`` (numbers finite), else a SchemaError
    naming ``prefix.key``; a missing key is an error unless a ``default`` is given."""
    if key not in obj:
        if default is MISSING:
            fail(source, f"{prefix}{key}", "missing")
        return default
    return check_value(obj[key], kinds, source, f"{prefix}{key}")


def check_value(value, kinds, source, name: str):
    """``value`` if it has one of the types ``kinds``: finite numbers below 2**53, strings of
    at most 4096 characters."""
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if not any(_matches(value, k) for k in kinds):
        fail(source, name, f"expected {_kind_name(kinds)}, found {describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        fail(source, name, f"must be a finite number, not {value}")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 2**53:
        fail(source, name, f"{describe(value)} is out of range")
    if isinstance(value, str) and len(value) > 4096:
        fail(source, name, f"a string of {len(value):,} characters is too long")
    return value


def typed_fields(cls, obj, source, prefix: str = "") -> dict:
    """The values of dataclass ``cls``'s fields in ``obj``, each checked against its annotation
    (missing ones take the field's default). Unknown keys are left out."""
    if not isinstance(obj, dict):
        fail(source, prefix.rstrip("."), f"expected an object, found {describe(obj)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for f in fields(cls):
        default = f.default if f.default is not MISSING else MISSING
        values[f.name] = field(obj, f.name, _kinds(hints[f.name]), source, prefix, default=default)
    return values


def in_range(value, low, high, source, name: str, *, closed_high: bool = True):
    if not (low <= value <= high if closed_high else low <= value < high):
        bracket = "]" if closed_high else ")"
        fail(source, name, f"{describe(value)} is outside [{low}, {high}{bracket}")
    return value


# ---------------------------------------------------------------------------- config.json


def check_model_args(args, source, num_classes: int | None = None):
    """config.json's model.args as a ModelConfig, refused before any model is built unless it
    is the architecture this tool trains: 1 x 28 x 28 inputs, 2..1000 classes."""
    from .model import ModelConfig

    values = typed_fields(ModelConfig, args, source, "model.args.")
    p = "model.args."
    if values["in_channels"] != IN_CHANNELS:
        fail(
            source,
            p + "in_channels",
            f"{describe(values['in_channels'])}: models here take "
            f"{IN_CHANNELS} (grayscale) channel",
        )
    if values["image_size"] != IMAGE_SIZE:
        fail(
            source,
            p + "image_size",
            f"{describe(values['image_size'])}: models here take "
            f"{IMAGE_SIZE} x {IMAGE_SIZE} images",
        )
    in_range(values["num_classes"], 2, MAX_CLASSES, source, p + "num_classes")
    if num_classes is not None and values["num_classes"] != num_classes:
        fail(
            source,
            p + "num_classes",
            f"{values['num_classes']}, but data.classes names {num_classes} classes",
        )
    in_range(values["dropout"], 0.0, 1.0, source, p + "dropout", closed_high=False)
    return ModelConfig(**values)


def check_data(data, source) -> InputSpec:
    """config.json's "data" as the model's input spec. Runs written before the image size and
    preprocessing style were saved get 28 and their dataset's style."""
    if not isinstance(data, dict):
        fail(source, "data", f"expected an object, found {describe(data)}")
    dataset = field(data, "dataset", str, source, "data.")
    if not 0 < len(dataset) <= MAX_NAME:
        fail(source, "data.dataset", f"{describe(dataset)} is not a dataset name")
    classes = check_classes(field(data, "classes", list, source, "data."), source, "data.classes")
    mean = in_range(field(data, "mean", float, source, "data."), 0.0, 1.0, source, "data.mean")
    std = field(data, "std", float, source, "data.")
    if not 0 < std <= 1:
        fail(source, "data.std", f"{describe(std)}: must be in (0, 1] (pixels are 0..1)")
    size = field(data, "image_size", int, source, "data.", default=IMAGE_SIZE)
    style = field(data, "preprocessing", str, source, "data.", default=None)
    return _spec(dataset, classes, float(mean), float(std), size, style, source, "data.")


def _spec(dataset, classes, mean, std, size, style, source, prefix: str) -> InputSpec:
    """The input spec, its image size and style checked; no style: the dataset's (old files)."""
    if size != IMAGE_SIZE:
        fail(source, prefix + "image_size", f"{describe(size)}: models here take {IMAGE_SIZE}")
    if style is None:
        style = style_of_dataset(dataset)
    elif style not in STYLES:
        fail(source, prefix + "preprocessing", f"{describe(style)}, not one of {', '.join(STYLES)}")
    return InputSpec(dataset, classes, mean, std, size, style)


def check_classes(classes, source, name: str) -> tuple[str, ...]:
    if not isinstance(classes, list) or not 2 <= len(classes) <= MAX_CLASSES:
        fail(
            source,
            name,
            f"expected a list of 2..{MAX_CLASSES} class names, found {describe(classes)}",
        )
    for i, c in enumerate(classes):
        if not isinstance(c, str) or not 0 < len(c) <= MAX_NAME:
            fail(source, f"{name}[{i}]", f"expected a class name, found {describe(c)}")
    return tuple(classes)


def check_run_config(config, source) -> tuple[typing.Any, InputSpec]:
    """Check a parsed config.json; returns (ModelConfig, InputSpec)."""
    from .model import ARCHITECTURE

    if not isinstance(config, dict):
        fail(source, "", "not a mnist-cnn run configuration (not a JSON object)")
    model = field(config, "model", dict, source)
    data = check_data(field(config, "data", dict, source), source)
    found = field(model, "architecture", str, source, "model.")
    if found != ARCHITECTURE:
        fail(
            source,
            "model.architecture",
            f"checkpoint is for architecture {describe(found)}, not {ARCHITECTURE}",
        )
    args = check_model_args(
        field(model, "args", dict, source, "model.", default={}), source, len(data.classes)
    )
    epochs = field(config, "epochs_completed", int, source, default=0)
    in_range(epochs, 0, MAX_METRICS_LINES, source, "epochs_completed")
    metrics = field(config, "metrics", dict, source, default={})
    if metrics:
        check_epoch_record(metrics, source, "metrics.")
    for key in ("created", "device"):
        field(config, key, str, source, default="")
    versions = field(config, "versions", dict, source, default={})
    for key in versions:
        field(versions, key, str, source, "versions.")
    field(config, "training", dict, source, default={})
    return args, data


def read_config_file(path: Path) -> dict:
    """config.json parsed and checked (FileNotFoundError passes through)."""
    config = parse_json(read_bounded(path, MAX_CONFIG_BYTES, "config.json"), path)
    check_run_config(config, path)
    return config


# ---------------------------------------------------------------------------- metrics.jsonl


@dataclass(frozen=True)
class EpochRecord:
    """One line of metrics.jsonl (and config.json's "metrics"): an epoch's figures."""

    epoch: int
    train_loss: float  # losses may be inf or nan: a diverged run is still a run
    test_loss: float
    test_accuracy: float
    epoch_seconds: float
    images_per_second: float
    val_loss: float | None = None
    val_accuracy: float | None = None


_LOSSES = ("train_loss", "test_loss", "val_loss")


def check_epoch_record(record, source, prefix: str = "") -> dict:
    if not isinstance(record, dict):
        fail(source, prefix.rstrip("."), f"expected an object, found {describe(record)}")
    # losses of a diverged run are nan or inf: let them through the finiteness check
    finite = {k: (0.0 if k in _LOSSES and isinstance(v, float) else v) for k, v in record.items()}
    values = typed_fields(EpochRecord, finite, source, prefix)
    in_range(values["epoch"], 1, MAX_METRICS_LINES, source, prefix + "epoch")
    for key in ("test_accuracy", "val_accuracy"):
        if values[key] is not None:
            in_range(values[key], 0.0, 1.0, source, prefix + key)
    for key in ("epoch_seconds", "images_per_second"):
        in_range(values[key], 0.0, math.inf, source, prefix + key)
    return record


def parse_metrics(data: bytes, source) -> list[dict]:
    """metrics.jsonl's records: epochs 1, 2, ... in order, the same fields on every line."""
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        fail(source, "", f"not UTF-8 text ({e.reason} at byte {e.start})")
    records: list[dict] = []
    for n, line in enumerate((x for x in lines if x.strip()), start=1):
        if n > MAX_METRICS_LINES:
            fail(source, "", f"more than {MAX_METRICS_LINES:,} lines")
        where = f"line {n}"
        record = check_epoch_record(parse_json(line, source, where), source, f"{where}: ")
        if record["epoch"] != n:
            fail(source, f"{where}: epoch", f"{record['epoch']}, expected {n}")
        if ("val_loss" in record) != ("val_loss" in (records[0] if records else record)):
            fail(source, f"{where}: val_loss", "present on some lines and not on others")
        records.append(record)
    return records


# ---------------------------------------------------------------------------- ONNX metadata


def check_onnx_metadata(meta: dict[str, str], source) -> InputSpec:
    """An exported model's input spec from its metadata (exports older than the image size and
    style entries get 28 and their dataset's style); the architecture, if named, checked."""
    missing = [k for k in ("classes", "mean", "std") if k not in meta]
    if missing:
        fail(source, "", f"not exported by mnist-cnn (no {', '.join(missing)} metadata)")
    if len(meta.get("classes", "")) > MAX_CONFIG_BYTES:
        fail(source, "metadata classes", "too long")
    classes = check_classes(
        parse_json(meta["classes"], source, "metadata classes"), source, "metadata classes"
    )
    numbers = {}
    for key in ("mean", "std"):
        try:
            numbers[key] = float(meta[key][:100])
        except ValueError:
            fail(source, f"metadata {key}", f"not a number: {describe(meta[key])}")
    in_range(numbers["mean"], 0.0, 1.0, source, "metadata mean")
    if not 0 < numbers["std"] <= 1:
        fail(source, "metadata std", f"{describe(numbers['std'])}: must be in (0, 1]")
    dataset = meta.get("dataset", "")
    if len(dataset) > MAX_NAME:
        fail(source, "metadata dataset", "too long")
    architecture = meta.get("architecture", ONNX_ARCHITECTURE)
    if architecture != ONNX_ARCHITECTURE:
        fail(source, "metadata architecture", f"{describe(architecture)}, not {ONNX_ARCHITECTURE}")
    try:
        size = int(meta.get("image_size", str(IMAGE_SIZE))[:20])
    except (TypeError, ValueError):
        fail(source, "metadata image_size", f"not a whole number: {describe(meta['image_size'])}")
    style = meta.get("preprocessing")
    return _spec(
        dataset, classes, numbers["mean"], numbers["std"], size, style, source, "metadata "
    )


# ---------------------------------------------------------------------------- state.pt


def same_structure(saved, fresh, source, name: str) -> None:
    """``saved`` has the shape of ``fresh`` (what this code would write now): the same keys,
    lengths and types, tensors of the same shape and dtype, finite numbers."""
    import torch

    if isinstance(fresh, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            fail(source, name, f"expected a tensor, found {type(saved).__name__}")
        if saved.shape != fresh.shape or saved.dtype != fresh.dtype:
            fail(
                source,
                name,
                f"a {saved.dtype} tensor of shape {tuple(saved.shape)}, expected "
                f"{fresh.dtype} {tuple(fresh.shape)}",
            )
        if saved.is_floating_point() and not bool(torch.isfinite(saved).all()):
            fail(source, name, "holds NaN or infinite values")
    elif isinstance(fresh, dict):
        if not isinstance(saved, dict) or set(saved) != set(fresh):
            found = sorted(map(str, saved)) if isinstance(saved, dict) else type(saved).__name__
            fail(source, name, f"expected keys {sorted(map(str, fresh))}, found {describe(found)}")
        for key in fresh:
            same_structure(saved[key], fresh[key], source, f"{name}.{key}")
    elif isinstance(fresh, (list, tuple)):
        if type(saved) is not type(fresh) or len(saved) != len(fresh):
            fail(
                source,
                name,
                f"expected a {type(fresh).__name__} of {len(fresh)}, found {describe(saved)}",
            )
        for i, (a, b) in enumerate(zip(saved, fresh, strict=True)):
            same_structure(a, b, source, f"{name}[{i}]")
    elif isinstance(fresh, (bool, int, float, str)) or fresh is None:
        check_value(saved, float if isinstance(fresh, float) else type(fresh), source, name)
    elif type(saved) is not type(fresh):
        fail(source, name, f"expected {type(fresh).__name__}, found {type(saved).__name__}")


def file_size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0
