"""The MNIST family: Fashion-MNIST from Debian's package, trained, evaluated, predicted, served."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from servers import png_bytes

from mnist_cnn import TrainConfig, get_dataset_info, load_dataset, train, verify_folder
from mnist_cnn.cli import main
from mnist_cnn.idx import load_idx

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.fail("Fashion-MNIST is needed: apt-get install dataset-fashion-mnist")
    return FASHION


@pytest.fixture(scope="session")
def fashion_run(fashion_dir, tmp_path_factory):
    """CustomCNN trained for one epoch on 10,000 Fashion-MNIST images."""
    out = tmp_path_factory.mktemp("fashion-runs")
    config = TrainConfig(dataset="fashion-mnist", out=str(out), epochs=1, limit_train=10_000,
                         name="fashion")  # fmt: skip
    return train(config)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_normalization_constants_are_the_training_sets(name, mnist_dir, fashion_dir):
    folder = mnist_dir if name == "mnist" else fashion_dir
    pixels = load_idx(folder / "train-images-idx3-ubyte.gz").astype(np.float64) / 255
    info = get_dataset_info(name)
    assert info.mean == pytest.approx(pixels.mean(), abs=5e-5)
    assert info.std == pytest.approx(pixels.std(), abs=5e-5)


def test_debians_fashion_mnist_is_found_and_verified(fashion_dir, capsys):
    info = get_dataset_info("fashion-mnist")
    assert [c.detail for c in verify_folder(info, fashion_dir)] == ["sha256 ok"] * 4
    data = load_dataset("fashion-mnist")  # found by the usual search, no --data-dir
    assert data.source == fashion_dir
    assert len(data.train_images) == 60_000 and len(data.test_images) == 10_000
    assert main(["data", "verify", "--dataset", "fashion-mnist"]) == 0
    assert "sha256 ok" in capsys.readouterr().out


def test_fashion_trains_with_a_real_accuracy(fashion_run):
    """One epoch on a sixth of the training set: small CNNs reach ~92% with all of it."""
    assert fashion_run.final["test_accuracy"] > 0.80
    config = json.loads((fashion_run.run_dir / "config.json").read_text())
    assert config["data"]["dataset"] == "fashion-mnist"
    assert config["data"]["classes"][0] == "T-shirt/top"
    assert config["data"]["mean"] == 0.2860


def test_class_names_everywhere(fashion_run, fashion_dir, tmp_path, capsys):
    run = str(fashion_run.run_dir)
    assert main(["evaluate", run, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["dataset"] == "fashion-mnist" and result["accuracy"] > 0.8

    assert main(["evaluate", run]) == 0
    assert "Ankle boot" in capsys.readouterr().out

    images = load_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")
    labels = load_idx(fashion_dir / "t10k-labels-idx1-ubyte.gz")
    trouser = int(np.flatnonzero(labels == 1)[0])
    path = tmp_path / "trouser.png"
    path.write_bytes(png_bytes(images[trouser]))
    assert main(["predict", run, str(path), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["class"] == "Trouser" and record["label"] == 1

    onnx = tmp_path / "fashion.onnx"
    assert main(["export", run, "-o", str(onnx)]) == 0
    capsys.readouterr()
    from mnist_cnn.onnx_model import OnnxModel
    from mnist_cnn.predict import Predictor
    from mnist_cnn.serve import model_info

    exported = OnnxModel(onnx)
    assert exported.dataset == "fashion-mnist" and exported.classes[9] == "Ankle boot"
    assert exported.mean == pytest.approx(0.2860)
    info = model_info(Predictor(exported))  # what /v1/model and the page show
    assert info.classes[0] == "T-shirt/top" and info.dataset == "fashion-mnist"


def test_fashion_images_are_preprocessed_the_way_fashion_mnist_was_made(fashion_run, fashion_dir):
    """MNIST's recipe (20-pixel box, centre of mass) would shrink and shift every item: the
    run's accuracy on test images passed through its Predictor must stay where it was."""
    import torch

    from mnist_cnn import Predictor
    from mnist_cnn.preprocessing import to_mnist

    images = load_idx(fashion_dir / "t10k-images-idx3-ubyte.gz")[:300]
    labels = load_idx(fashion_dir / "t10k-labels-idx1-ubyte.gz")[:300]
    predictor = Predictor.from_run(fashion_run.run_dir)
    assert predictor.style == "fashion"
    model = fashion_run.model.cpu().eval()

    def accuracy(batch) -> float:
        x = torch.from_numpy((np.stack(batch)[:, None] - 0.2860) / 0.3530).float()
        with torch.no_grad():
            return float((model(x).argmax(1).numpy() == labels).mean())

    raw = accuracy(list(images / 255.0))
    ours = accuracy([predictor.preprocess(img).image for img in images])
    as_digits = accuracy([to_mnist(img / 255.0).image for img in images])
    assert ours > raw - 0.02
    assert as_digits < ours - 0.1  # why the style matters
