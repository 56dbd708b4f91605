"""Fuzzing every file the tool reads, starting from a real small run and real IDX files.

Each field of each file is mutated (wrong type, missing, huge, negative, NaN, nested), files are
truncated and bytes flipped at each header position, and `evaluate`, `predict`, `export`,
`train --resume` and `data verify` run in-process on the result. Each must end in one line and
exit code 2, or succeed where the file is still valid: never a traceback, never past a memory
bound. Seeded and bounded: MNIST_CNN_FUZZ_CASES cases (default 300, drawn from every
(mutation, command) pair; 0 runs them all), MNIST_CNN_FUZZ_SEED (16). By default export and
training stop where their long work would begin (everything is checked before it), which keeps
the run under a minute; MNIST_CNN_FUZZ_COMPLETE=1 lets them run to the end.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import math
import os
import random
import resource
import shutil
import struct
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn import TrainConfig, train
from mnist_cnn.cli import main
from mnist_cnn.idx import encode_idx, load_idx

CASES = int(os.environ.get("MNIST_CNN_FUZZ_CASES", "300"))
SEED = int(os.environ.get("MNIST_CNN_FUZZ_SEED", "16"))
COMPLETE = os.environ.get("MNIST_CNN_FUZZ_COMPLETE") == "1"
MEMORY_BOUND = 1 << 30  # bytes the peak resident memory may grow by over all cases

IDX_FILES = {  # name: (images kept from the real file, stored gzip-compressed)
    "train-images-idx3-ubyte": (400, True),
    "train-labels-idx1-ubyte": (400, True),
    "t10k-images-idx3-ubyte": (100, False),
    "t10k-labels-idx1-ubyte": (100, False),
}
RUN_COMMANDS = ("evaluate", "predict", "export", "resume")
DATA_COMMANDS = ("evaluate", "export", "resume", "verify")


@dataclass(frozen=True)
class Mutation:
    target: str  # "run", "onnx" or "data": which folder it changes
    file: str
    what: str
    apply: Callable[[Path], None]  # changes the file in the given copy of the folder

    def __str__(self) -> str:
        return f"{self.file}: {self.what}"


class Reached(Exception):
    """The command got past every check to the start of its long work."""


# ---------------------------------------------------------------------------- the real run


@dataclass
class Base:
    root: Path
    data: Path  # a data root holding mnist/
    run: Path
    onnx: Path
    image: Path


@pytest.fixture
def base(mnist_dir, tmp_path_factory) -> Base:
    """A real small run: CustomCNN, one epoch on the first 400 real MNIST training images,
    tested on 100; its ONNX export; one real test digit as a PNG."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fuzz")
    folder = root / "data" / "mnist"
    folder.mkdir(parents=True)
    for name, (count, gz) in IDX_FILES.items():
        data = encode_idx(load_idx(mnist_dir / f"{name}.gz")[:count])
        (folder / (name + ".gz" if gz else name)).write_bytes(gzip.compress(data) if gz else data)
    config = TrainConfig(data_dir=str(root / "data"), out=str(root / "runs"), name="base",
                         epochs=1)  # fmt: skip
    run = train(config).run_dir
    onnx = root / "model.onnx"
    assert main(["export", str(run), "-o", str(onnx), "--data-dir", str(root / "data")]) == 0
    image = root / "digit.png"
    Image.fromarray(load_idx(folder / "t10k-images-idx3-ubyte")[0]).save(image)
    return Base(root, root / "data", run, onnx, image)


# ---------------------------------------------------------------------------- value mutations

DELETE = object()
NESTED = "\0nested\0"  # replaced by 5,000 nested lists in the JSON text


def value_mutations(value) -> dict[str, object]:
    """The six kinds of damage to one field's value."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    return {
        "wrong type": 12345 if isinstance(value, str) else "x",
        "missing": DELETE,
        "huge": 10**30 if number else ("x" * 100_000 if isinstance(value, str) else [0] * 10**5),
        "negative": -1,
        "NaN": math.nan,
        "nested": NESTED,
    }


def dump_json(obj) -> str:
    text = json.dumps(obj)
    return text.replace(json.dumps(NESTED), "[" * 5000 + "]" * 5000)


def paths_in(obj, prefix=()) -> list[tuple]:
    """Every key path in a JSON object: leaves and the objects above them."""
    out = []
    for key, value in obj.items():
        out.append((*prefix, key))
        if isinstance(value, dict):
            out += paths_in(value, (*prefix, key))
    return out


def set_path(obj, path: tuple, value) -> None:
    for key in path[:-1]:
        obj = obj[key]
    if value is DELETE:
        del obj[path[-1]]
    else:
        obj[path[-1]] = value


def get_path(obj, path: tuple):
    for key in path:
        obj = obj[key]
    return obj


def json_mutations(target: str, file: str, original: dict, write) -> list[Mutation]:
    """Each kind of damage to each field of a JSON object; ``write(folder, obj)`` stores it."""
    out = []
    for path in paths_in(original):
        for kind, value in value_mutations(get_path(original, path)).items():

            def apply(folder, path=path, value=value):
                obj = json.loads(json.dumps(original))
                set_path(obj, path, value)
                write(folder, obj)

            out.append(Mutation(target, file, f"{'.'.join(path)} {kind}", apply))
    return out


def byte_mutations(target: str, file: str, data: bytes, positions) -> list[Mutation]:
    """Truncation at, and a flipped byte at, each of ``positions``."""
    out = []
    for pos in positions:
        pos = min(pos, len(data) - 1)

        def cut(folder, pos=pos):
            (folder / file).write_bytes(data[:pos])

        def flip(folder, pos=pos):
            (folder / file).write_bytes(data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1 :])

        out += [Mutation(target, file, f"truncated at {pos}", cut),
                Mutation(target, file, f"byte {pos} flipped", flip)]  # fmt: skip
    return out


# ---------------------------------------------------------------------------- run files


def writer(file: str):
    """Stores a JSON object as ``file`` (one line: config.json reads the same, metrics.jsonl
    holds one record)."""

    def write(folder: Path, obj) -> None:
        (folder / file).write_text(dump_json(obj) + "\n")

    return write


def run_mutations(base: Base) -> list[Mutation]:
    run = base.run
    out = []
    config = json.loads((run / "config.json").read_text())
    out += json_mutations("run", "config.json", config, writer("config.json"))
    text = (run / "config.json").read_bytes()
    out += byte_mutations("run", "config.json", text, [0, 1, len(text) // 2, len(text) - 2])
    out.append(Mutation("run", "config.json", "not UTF-8",
                        lambda f: (f / "config.json").write_bytes(b"\xff\xfe" + text)))  # fmt: skip

    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    out += json_mutations("run", "metrics.jsonl", record, writer("metrics.jsonl"))
    lines = (run / "metrics.jsonl").read_bytes()
    out += byte_mutations("run", "metrics.jsonl", lines, [0, len(lines) // 2, len(lines) - 2])
    for what, extra in (("garbage line", b"not json\n"), ("second epoch 7", b'{"epoch": 7}\n'),
                        ("a list", b"[1, 2]\n")):  # fmt: skip

        def append(f, extra=extra):
            (f / "metrics.jsonl").write_bytes(lines + extra)

        out.append(Mutation("run", "metrics.jsonl", what, append))
    out += state_mutations(run)
    out += weights_mutations(run)
    return out


def state_mutations(run: Path) -> list[Mutation]:
    state = torch.load(run / "state.pt", weights_only=True)
    group = ("optimizer", "param_groups", 0)
    first = ("optimizer", "state", 0)
    fields = [("epoch",), ("model",), ("model", "fc2.bias"), ("optimizer",), (*group, "lr"),
              (*group, "betas"), (*group, "params"), (*first, "exp_avg"), (*first, "step"),
              ("rng",), ("rng", "torch"), ("scheduler",)]  # fmt: skip
    out = []
    for path in fields:
        original = get_path(state, path)
        kinds = value_mutations(original)
        kinds["nested"] = [[[[[[]]]]]] * 3
        if isinstance(original, torch.Tensor):
            kinds["NaN"] = torch.full_like(original, math.nan) if original.is_floating_point() \
                else original.float()  # fmt: skip
            kinds["huge"] = torch.zeros(3, 1000)
            kinds["negative"] = -original
        for kind, value in kinds.items():

            def apply(folder, path=path, value=value):
                changed = torch.load(run / "state.pt", weights_only=True)
                set_path(changed, path, value)
                torch.save(changed, folder / "state.pt")

            out.append(Mutation("run", "state.pt", f"{'.'.join(map(str, path))} {kind}", apply))
    data = (run / "state.pt").read_bytes()
    out += byte_mutations("run", "state.pt", data, [0, 10, 100, 1000, len(data) // 2])
    return out


def weights_mutations(run: Path) -> list[Mutation]:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = run / "model.safetensors"
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()

    def with_change(tensors=None, meta=None):
        def apply(folder):
            t = load_file(path)
            t.update(tensors or {})
            for k in [k for k, v in t.items() if v is None]:
                del t[k]
            m = {**metadata, **(meta or {})}
            save_file(t, folder / "model.safetensors", metadata={k: v for k, v in m.items()
                                                                if v is not None})  # fmt: skip

        return apply

    config = json.loads(metadata["config"])
    out = [
        Mutation("run", "model.safetensors", "fc1.bias NaN",
                 with_change({"fc1.bias": torch.full((625,), math.nan)})),
        Mutation("run", "model.safetensors", "fc1.bias wrong shape",
                 with_change({"fc1.bias": torch.zeros(624)})),
        Mutation("run", "model.safetensors", "fc2.weight missing",
                 with_change({"fc2.weight": None})),
        Mutation("run", "model.safetensors", "extra tensor", with_change({"x": torch.zeros(1)})),
        Mutation("run", "model.safetensors", "fc2.bias float64",
                 with_change({"fc2.bias": torch.zeros(10, dtype=torch.float64)})),
    ]  # fmt: skip
    for kind, value in (("epoch missing", None), ("epoch 99", "99"), ("epoch text", "x"),
                        ("config missing", None), ("config not JSON", "{"),
                        ("config nested", "[" * 5000),
                        ("config image_size 300", json.dumps({**config, "epochs_completed": 9,
                         "model": {**config["model"], "args": {"image_size": 300}}}))):  # fmt: skip
        key = kind.split()[0]
        meta = {key: value}
        if key == "config":
            meta["epoch"] = "9"  # another epoch than config.json's: readers take this config
        out.append(Mutation("run", "model.safetensors", f"metadata {kind}", with_change(meta=meta)))
    data = path.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    out += byte_mutations("run", "model.safetensors", data,
                          [0, 3, 7, 8, 8 + header // 2, 8 + header, len(data) // 2])  # fmt: skip
    return out


# ---------------------------------------------------------------------------- ONNX metadata


def onnx_mutations(base: Base) -> list[Mutation]:
    import onnx
    from onnx import numpy_helper

    def with_metadata(key, value):
        def apply(folder):
            changed = onnx.load(str(base.onnx))
            entries = {p.key: p.value for p in changed.metadata_props}
            if value is DELETE:
                del entries[key]
            else:
                entries[key] = value
            del changed.metadata_props[:]
            for k, v in entries.items():
                changed.metadata_props.add(key=k, value=v)
            onnx.save(changed, str(folder / "model.onnx"))

        return apply

    def nan_initializer(folder):
        changed = onnx.load(str(base.onnx))
        weight = changed.graph.initializer[0]
        array = numpy_helper.to_array(weight).copy()
        array.flat[0] = np.nan
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))
        onnx.save(changed, str(folder / "model.onnx"))

    out = [Mutation("onnx", "model.onnx", "NaN weight", nan_initializer)]
    for key in ("classes", "mean", "std", "dataset", "architecture", "image_size", "preprocessing"):
        kinds = {"wrong type": '{"a": 1}', "missing": DELETE, "huge": "9" * 100_000,
                 "negative": "-1", "NaN": "nan", "nested": "[" * 5000 + "]" * 5000,
                 "three classes": '["a", "b", "c"]', "not JSON": "[1,"}  # fmt: skip
        for kind, value in kinds.items():
            out.append(Mutation("onnx", "model.onnx", f"metadata {key} {kind}",
                                with_metadata(key, value)))  # fmt: skip
    data = base.onnx.read_bytes()
    out += byte_mutations("onnx", "model.onnx", data, [0, 1, 10, 100, len(data) // 2])
    return out


# ---------------------------------------------------------------------------- IDX files


def data_mutations(base: Base) -> list[Mutation]:
    out = []
    folder = base.data / "mnist"
    for name, (_, gz) in IDX_FILES.items():
        file = name + ".gz" if gz else name
        raw = load_raw(folder / file)
        header = 16 if "images" in name else 8

        def store(target, data, file=file, gz=gz):
            (target / "mnist" / file).write_bytes(gzip.compress(data, 1) if gz else data)

        for pos in range(header):  # each header byte: flipped, zeroed, set to 0x7F
            for kind, byte in (("flipped", raw[pos] ^ 0xFF), ("0x00", 0), ("0x7F", 0x7F)):
                data = raw[:pos] + bytes([byte]) + raw[pos + 1 :]
                out.append(Mutation("data", file, f"header byte {pos} {kind}",
                                    lambda t, data=data, store=store: store(t, data)))  # fmt: skip
        for pos in (0, 3, header - 1, header, header + 10, len(raw) - 1):
            cut = raw[:pos]
            out.append(Mutation("data", file, f"truncated at {pos}",
                                lambda t, d=cut, store=store: store(t, d)))  # fmt: skip
        if header == 16:
            overflow = struct.pack(">iiii", 2051, 2**30, 2**30, 16)
            extreme = ("pixels 255", raw[:header] + b"\xff" * (len(raw) - header))
        else:
            overflow = struct.pack(">ii", 2049, 2**31 - 1)
            extreme = ("label 200", raw[:-1] + b"\xc8")
        extra = dict([("one trailing byte", raw + b"\0"),
                      ("overflowing dimensions", overflow + raw[header:]), extreme])  # fmt: skip
        for what, data in extra.items():
            out.append(Mutation("data", file, what, lambda t, d=data, store=store: store(t, d)))
        if gz:
            packed = (folder / file).read_bytes()
            out += byte_mutations("data", f"mnist/{file}", packed, [0, 2, 10, len(packed) // 2])

            def bomb(t, file=file, head=raw[:header]):
                (t / "mnist" / file).write_bytes(gzip_bomb(head, 64 << 20))

            out.append(Mutation("data", file, "gzip bomb (64 MB)", bomb))
    return out


def load_raw(path: Path) -> bytes:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.decompress(path.read_bytes()) if magic == b"\x1f\x8b" else path.read_bytes()


def gzip_bomb(header: bytes, inflated: int) -> bytes:
    import zlib

    z = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts, zeros = [z.compress(header)], bytes(1 << 20)
    parts += [z.compress(zeros) for _ in range(inflated >> 20)]
    return b"".join(parts) + z.flush()


# ---------------------------------------------------------------------------- running a case


def argv_for(command: str, base: Base, run: Path, data: Path, onnx: Path, out: Path):
    d = ["--data-dir", str(data)]
    return {
        "evaluate": ["evaluate", str(run), *d, "--device", "cpu"],
        "predict": ["predict", str(onnx if onnx.exists() else run), str(base.image)],
        "export": ["export", str(run), "-o", str(out / "export.onnx"), *d],
        "resume": ["train", "--resume", str(run), "--epochs", "2", *d],
        "verify": ["data", "verify", *d],
    }[command]


def run_case(mutation: Mutation, command: str, base: Base, work: Path) -> tuple[str | None, str]:
    """Run one command on one mutation; returns (problem or None, outcome)."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    run, data, onnx = work / "run", base.data, work / "missing.onnx"
    shutil.copytree(base.run, run)
    if mutation.target == "run":
        mutation.apply(run)
    elif mutation.target == "data":
        data = work / "data"
        shutil.copytree(base.data, data)
        mutation.apply(data)
    else:
        onnx = work / "model.onnx"
        mutation.apply(work)
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv_for(command, base, run, data, onnx, work))
    except Reached:
        return None, "reached its long work"
    except BaseException:  # noqa: BLE001 - any escape is what this test looks for
        return "raised: " + traceback.format_exc(limit=-3).replace("\n", " | ")[-600:], "raised"
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if "Traceback" in err.getvalue():
        return f"traceback on stderr: {err.getvalue()[-400:]}", f"exit {code}"
    allowed = {0, 2} | ({1} if command in ("verify", "export") else set())
    if code not in allowed:
        return f"exit {code}: {lines[-3:]}", f"exit {code}"
    if code == 2 and (len(lines) != 1 or not lines[0].startswith("mnist-cnn: ")):
        return f"exit 2 with {len(lines)} lines: {lines[:3]}", "exit 2"
    if code == 1 and len(lines) > 1:
        return f"exit 1 with {len(lines)} lines: {lines[:3]}", "exit 1"
    return None, f"exit {code}"


@pytest.fixture
def stop_at_long_work(monkeypatch):
    """Export and training end where their long work would begin, unless COMPLETE."""
    if COMPLETE:
        return

    def reached(*args, **kwargs):
        raise Reached

    monkeypatch.setattr("mnist_cnn.export.export", reached)
    monkeypatch.setattr("mnist_cnn.training._train_epoch", reached)


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def test_no_file_turns_the_tool_against_itself(base, tmp_path, stop_at_long_work, capsys):
    pool = [(m, c) for m in run_mutations(base) for c in RUN_COMMANDS]
    pool += [(m, "predict") for m in onnx_mutations(base)]
    pool += [(m, c) for m in data_mutations(base) for c in DATA_COMMANDS]
    cases = random.Random(SEED).sample(pool, CASES) if 0 < CASES < len(pool) else pool
    start_memory, start, cpu = peak_rss(), time.perf_counter(), time.process_time()
    problems, outcomes, slowest = [], {}, (0.0, "")
    for mutation, command in cases:
        began = time.perf_counter()
        problem, outcome = run_case(mutation, command, base, tmp_path / "case")
        took = time.perf_counter() - began
        slowest = max(slowest, (took, f"{command} on {mutation}"))
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if problem:
            problems.append(f"{command} on {mutation}: {problem}")
        grown = peak_rss() - start_memory
        if grown > MEMORY_BOUND:
            problems.append(f"{command} on {mutation}: peak memory grew by {grown >> 20} MB")
            break
    with capsys.disabled():
        print(f"\nfuzz: {len(cases)} of {len(pool)} cases (seed {SEED}) in "
              f"{time.perf_counter() - start:.1f} s ({time.process_time() - cpu:.1f} s of CPU); "
              f"outcomes {outcomes}; peak memory grew "
              f"{(peak_rss() - start_memory) >> 20} MB; slowest {slowest[0]:.2f} s "
              f"({slowest[1]})")  # fmt: skip
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:20])
