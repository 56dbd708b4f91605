"""Files turned against the tool: each point of issue 16, reproduced with a crafted file."""

from __future__ import annotations

import errno
import gzip
import io
import json
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from mnist_cnn import MnistCnnError, TrainConfig, load_idx, load_run, train
from mnist_cnn.cli import main
from mnist_cnn.files import atomic_write, remove_stale_temp_files, temp_name_suffix
from mnist_cnn.idx import IdxError, read_idx
from mnist_cnn.locks import DirectoryLock


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("mnist-cnn: error: "), err
    assert "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A one-epoch run on a small generated dataset, copied by each test that changes it."""
    from conftest import write_dataset

    root = tmp_path_factory.mktemp("files")
    write_dataset(root / "data" / "mnist")
    config = TrainConfig(data_dir=str(root / "data"), out=str(root / "runs"), epochs=1,
                         name="base", batch_size=100)  # fmt: skip
    return train(config).run_dir


@pytest.fixture
def run(base_run, tmp_path):
    shutil.copytree(base_run, tmp_path / "run")
    return tmp_path / "run"


def edit_config(run, change) -> None:
    path = run / "config.json"
    config = json.loads(path.read_text())
    change(config)
    path.write_text(json.dumps(config))


# ---------------------------------------------------------------------------- IDX and gzip


def gzip_bomb(header: bytes, inflated: int) -> bytes:
    """A small .gz whose payload, after ``header``, is ``inflated`` zero bytes."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts, zeros = [z.compress(header)], bytes(1 << 20)
    for _ in range(inflated >> 20):
        parts.append(z.compress(zeros))
    return b"".join(parts) + z.flush()


class Counting(io.RawIOBase):
    """A stream that counts the bytes read from it."""

    def __init__(self, inner):
        self.inner, self.count = inner, 0

    def readable(self):
        return True

    def read(self, n=-1):
        data = self.inner.read(n)
        self.count += len(data)
        return data


def test_a_gzip_bomb_is_refused_after_reading_what_its_header_announces(tmp_path):
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip_bomb(struct.pack(">ii", 2049, 100), 256 << 20))  # 256 MB inflated
    assert path.stat().st_size < 400_000
    with pytest.raises(IdxError, match="has trailing bytes: header says 100 = 100 bytes"):
        load_idx(path)
    stream = Counting(gzip.open(path))
    with pytest.raises(IdxError, match="trailing bytes"):
        read_idx(stream, name=str(path))
    assert stream.count <= 8 + 100 + 1, "the header, the payload it announces, one byte more"


@pytest.mark.parametrize(
    "header, message",
    [
        (struct.pack(">iiii", 2051, 2**30, 2**30, 16), "images are 1073741824x16, expected 28x28"),
        (struct.pack(">iiii", 2051, 2**31 - 1, 28, 28), "2,147,483,647 items"),
        (struct.pack(">ii", 2049, 2**31 - 1), "2,147,483,647 items"),
    ],
)
def test_header_dimensions_that_would_overflow_are_one_line(tmp_path, header, message):
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(header + bytes(100))
    with pytest.raises(IdxError, match=message):
        load_idx(path, max_count=60_000, image_shape=(28, 28))


def test_without_bounds_a_huge_header_is_refused_before_reading(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">iiii", 2051, 2**30, 2**30, 16))  # 2**64 bytes: wraps in int64
    with pytest.raises(IdxError, match="more than the"):
        load_idx(path)


def test_corrupt_data_folder_is_one_line_through_the_cli(tiny_data, run, capsys):
    images = tiny_data / "mnist" / "t10k-images-idx3-ubyte.gz"
    images.write_bytes(gzip.compress(struct.pack(">iiii", 2051, 2**30, 2**30, 16)))
    assert main(["evaluate", str(run), "--data-dir", str(tiny_data)]) == 2
    assert "expected 28x28" in one_line_error(capsys)


# ---------------------------------------------------------------------------- run files


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["model"]["args"].update(image_size=300), "model.args.image_size: 300"),
        (lambda c: c["data"].update(std=0), "data.std: 0"),
        (lambda c: c["data"].update(mean=float("nan")), "data.mean: must be a finite number"),
        (lambda c: c["data"].update(classes=["a", "b", "c"]), "model.args.num_classes: 10"),
        (lambda c: c["data"].pop("classes"), "data.classes: missing"),
        (lambda c: c["model"].update(args="x"), "model.args: expected an object"),
        (lambda c: c.update(metrics={"epoch": 1}), "metrics.train_loss: missing"),
        (lambda c: c["training"].update(epochs="many"), "training.epochs: expected an integer"),
    ],
)
def test_config_fields_are_checked_before_anything_is_built(run, capsys, change, message):
    edit_config(run, change)
    commands = [["train", "--resume", str(run), "--epochs", "2"]]
    if "training" not in message:  # the other commands do not read the training settings
        commands += [["evaluate", str(run)], ["predict", str(run), "x.png"]]
    for argv in commands:
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert str(run / "config.json") in err and message in err, err


def test_deeply_nested_json_is_one_line(run, capsys):
    (run / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    assert main(["evaluate", str(run)]) == 2
    assert "nested deeper than" in one_line_error(capsys)


def test_garbage_metrics_are_refused_before_the_report_is_computed(
    run, tiny_data, tmp_path, capsys, monkeypatch
):
    (run / "metrics.jsonl").write_text('{"epoch": 1, "train_loss": "low"}\n')

    def evaluate(*args, **kwargs):
        raise AssertionError("evaluated before the metrics were checked")

    monkeypatch.setattr("mnist_cnn.evaluation.evaluate", evaluate)
    argv = ["evaluate", str(run), "--data-dir", str(tiny_data), "--report", str(tmp_path / "r")]
    assert main(argv) == 2
    err = one_line_error(capsys)
    assert "metrics.jsonl: line 1: train_loss: expected a number, found 'low'" in err


def test_nan_weights_and_zero_std_are_refused_at_load(run):
    weights = load_file(run / "model.safetensors")
    weights["fc2.bias"][3] = float("nan")
    save_file(weights, run / "model.safetensors")
    with pytest.raises(MnistCnnError, match="fc2.bias holds NaN"):
        load_run(run)


def test_onnx_metadata_and_nan_graphs_are_refused(run, tiny_data, tmp_path):
    import onnx
    from onnx import numpy_helper

    from mnist_cnn.onnx_model import OnnxModel

    assert (
        main(["export", str(run), "-o", str(tmp_path / "m.onnx"), "--data-dir", str(tiny_data)])
        == 0
    )
    model = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p for p in model.metadata_props}
    for key, value, message in [("std", "0", "metadata std: 0.0"),
                                ("classes", '["a", "b", "c"]', "metadata names 3 classes"),
                                ("classes", "[" * 10_000, "nested deeper"),
                                ("mean", "nan", "metadata mean")]:  # fmt: skip
        old = meta[key].value
        meta[key].value = value
        onnx.save(model, str(tmp_path / "bad.onnx"))
        meta[key].value = old
        with pytest.raises(MnistCnnError, match=message):
            OnnxModel(tmp_path / "bad.onnx")
    weight = model.graph.initializer[0]
    array = numpy_helper.to_array(weight).copy()
    array.flat[0] = np.nan
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(model, str(tmp_path / "nan.onnx"))
    with pytest.raises(MnistCnnError) as refused:
        OnnxModel(tmp_path / "nan.onnx")
    assert f"weights hold NaN or infinite values ({weight.name})" in str(refused.value)


def test_a_bad_rng_state_is_one_line(run, capsys):
    state = torch.load(run / "state.pt", weights_only=True)
    state["rng"]["torch"] = state["rng"]["torch"][:100]
    torch.save(state, run / "state.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "state.pt: rng.torch: a torch.uint8 tensor of shape (100,)" in one_line_error(capsys)


# ---------------------------------------------------------------------------- one epoch


def test_readers_see_one_epoch_when_a_checkpoint_was_cut_short(tiny_data, tmp_path):
    """A kill after model.safetensors of epoch 2 was written, before config.json and state.pt
    were: readers take the weights with epoch 2's config and metrics, not epoch 1's."""
    config = TrainConfig(data_dir=str(tiny_data), out=str(tmp_path), epochs=1, name="r",
                         batch_size=100)  # fmt: skip
    run = train(config).run_dir
    older = {name: (run / name).read_bytes() for name in ("config.json", "state.pt")}
    two = train(TrainConfig(**{**config.__dict__, "epochs": 2}), resume=run)
    for name, data in older.items():  # as if the writer died right after the weights
        (run / name).write_bytes(data)
    trained = load_run(run)
    assert trained.epoch == 2 and trained.config["metrics"] == two.final
    assert [r["epoch"] for r in trained.history()] == [1, 2]
    # resume starts again from state.pt's epoch 1 and completes the checkpoint
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs_completed"] == 2


# ---------------------------------------------------------------------------- locks, clean-up


def test_a_second_resume_of_a_run_in_use_says_who_holds_it(run, capsys, monkeypatch):
    def load_dataset(*args, **kwargs):
        raise AssertionError("data loaded before the lock was taken")

    with DirectoryLock(run, "train"), monkeypatch.context() as m:  # flock is per open file:
        m.setattr("mnist_cnn.training.load_dataset", load_dataset)  # this is another holder
        assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
        err = one_line_error(capsys)
        assert f"in use by process {os.getpid()}" in err and "train, since" in err
    assert not (run / ".lock").exists()
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 0, "free again"


def test_clean_up_keeps_live_writers_and_other_peoples_files(tmp_path):
    from processes import dead_pid

    mine_dead = tmp_path / f".state.pt.abc{temp_name_suffix(dead_pid())}"
    mine_live = tmp_path / f".state.pt.def{temp_name_suffix(os.getppid())}"
    theirs = tmp_path / ".notes.tmp"
    for p in (mine_dead, mine_live, theirs):
        p.write_bytes(b"x")
    assert remove_stale_temp_files(tmp_path) == [mine_dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([mine_live.name, theirs.name])


def test_a_full_disk_names_the_file(tmp_path):
    def write(f):
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "state.pt", write)
    assert info.value.filename == str(tmp_path / "state.pt")
    assert "No space left on device" in str(info.value)
    assert list(tmp_path.iterdir()) == [], "nothing half-written"


def test_a_full_disk_during_training_is_one_line_naming_the_file(tiny_data, tmp_path, capsys,
                                                                monkeypatch):  # fmt: skip
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    assert main(["train", "--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "f",
                 "--epochs", "1"]) == 2  # fmt: skip
    err = one_line_error(capsys)
    assert f"No space left on device: {tmp_path / 'f' / 'config.json'}" in err
    assert [p.name for p in (tmp_path / "f").iterdir()] == []
