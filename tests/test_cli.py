"""The command line, called in-process: exit codes and one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from mnist_cnn import TrainConfig, train
from mnist_cnn.cli import main
from mnist_cnn.idx import encode_idx


@pytest.fixture
def run_dir(tiny_data, tmp_path):
    config = TrainConfig(data_dir=str(tiny_data), out=str(tmp_path / "runs"), epochs=1)
    return train(config).run_dir


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def test_python_dash_m_is_the_same_cli():
    out = subprocess.run([sys.executable, "-m", "mnist_cnn", "--version"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert out.startswith("mnist-cnn ")


def test_help_and_usage_errors(capsys):
    assert main(["--help"]) == 0
    assert "train" in capsys.readouterr().out
    for argv in ([], ["train", "--epochs", "many"], ["train", "--dataset", "cifar"], ["fly"]):
        assert main(argv) == 2
        assert one_line_error(capsys).startswith("mnist-cnn")


def test_train_prints_an_epoch_line_and_the_run_directory(tiny_data, tmp_path, capsys):
    code = main(["train", "--data-dir", str(tiny_data), "--out", str(tmp_path), "--name", "x",
                 "--epochs", "2", "--batch-size", "64"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "epoch 1/2" in out and "epoch 2/2" in out and "test acc" in out
    assert f"run saved in {tmp_path / 'x'}" in out


def test_evaluate_json(run_dir, tiny_data, capsys):
    assert main(["evaluate", str(run_dir), "--data-dir", str(tiny_data), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "loss", "per_class", "confusion"} <= set(result)
    assert np.array(result["confusion"]).sum() == 100 and len(result["per_class"]) == 10
    assert result["accuracy"] == pytest.approx(np.trace(result["confusion"]) / 100)


def test_evaluate_text_and_weights_file(run_dir, tiny_data, capsys):
    code = main(["evaluate", str(run_dir / "model.safetensors"), "--data-dir", str(tiny_data),
                 "--split", "train"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "train split, 300 images" in out and "confusion matrix" in out


def test_evaluate_bad_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "no such run" in one_line_error(capsys)
    assert main(["evaluate", str(tmp_path)]) == 2
    assert "not a run directory" in one_line_error(capsys)


def test_checkpoint_for_another_architecture(run_dir, capsys):
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["model"]["architecture"] = "ResNet18"
    (run_dir / "config.json").write_text(json.dumps(cfg))
    assert main(["evaluate", str(run_dir)]) == 2
    assert "'ResNet18', not CustomCNN" in one_line_error(capsys)


def test_weights_of_the_wrong_shape(run_dir, capsys):
    from safetensors.torch import load_file, save_file

    tensors = load_file(run_dir / "model.safetensors")
    tensors["fc1.weight"] = tensors["fc1.weight"][:100]
    save_file(tensors, run_dir / "model.safetensors")
    assert main(["evaluate", str(run_dir)]) == 2
    assert "fc1.weight is (100, 2048), expected (625, 2048)" in one_line_error(capsys)


def test_corrupt_weights_file(run_dir, capsys):
    (run_dir / "model.safetensors").write_bytes(b"garbage")
    assert main(["evaluate", str(run_dir)]) == 2
    assert "not a readable safetensors file" in one_line_error(capsys)


def test_corrupt_data_names_the_file(tiny_data, tmp_path, capsys):
    bad = tiny_data / "mnist" / "train-labels-idx1-ubyte.gz"
    bad.write_bytes(encode_idx(np.zeros((2, 28, 28), np.uint8)))  # images where labels belong
    assert main(["train", "--data-dir", str(tiny_data), "--out", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert str(bad) in err


def test_empty_split_is_rejected(tiny_data, tmp_path, capsys):
    bad = tiny_data / "mnist" / "t10k-images-idx3-ubyte.gz"
    bad.write_bytes(encode_idx(np.zeros((0, 28, 28), np.uint8)))
    (tiny_data / "mnist" / "t10k-labels-idx1-ubyte.gz").write_bytes(
        encode_idx(np.zeros(0, np.uint8))
    )
    assert main(["train", "--data-dir", str(tiny_data), "--out", str(tmp_path)]) == 2
    assert f"{bad}: holds no images" in one_line_error(capsys)


def test_bad_flag_values(tiny_data, capsys):
    assert main(["train", "--data-dir", str(tiny_data), "--epochs", "0"]) == 2
    assert "--epochs must be at least 1" in one_line_error(capsys)
    assert main(["train", "--data-dir", "/no/such/dir"]) == 2
    assert "no such directory" in one_line_error(capsys)
    assert main(["train", "--data-dir", str(tiny_data), "--seed", str(10**14)]) == 2
    assert "--seed must be between" in one_line_error(capsys)


def test_unwritable_output(tiny_data, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["train", "--data-dir", str(tiny_data), "--out", str(blocker)]) == 2
    assert "cannot create run directory" in one_line_error(capsys)


def test_summary(capsys, run_dir):
    assert main(["summary"]) == 0
    assert "1,379,557" in capsys.readouterr().out
    assert main(["summary", str(run_dir)]) == 0
    assert "Linear 625->10" in capsys.readouterr().out


def test_data_list(tiny_data, capsys):
    assert main(["data", "list", "--data-dir", str(tiny_data)]) == 0
    out = capsys.readouterr().out
    assert f"found: {tiny_data / 'mnist'}" in out
    assert "kmnist" in out and "fashion-mnist" in out
