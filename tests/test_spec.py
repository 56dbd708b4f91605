"""The input spec travels with the model: saved with the run and the export, read back the same by
both runtimes, which answer alike through one Model protocol; older files still load."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mnist_cnn.checkpoint import CONFIG_FILE, load_run
from mnist_cnn.errors import MnistCnnError
from mnist_cnn.onnx_model import OnnxModel
from mnist_cnn.predict import Predictor
from mnist_cnn.spec import STYLES, InputSpec, Model

NEW_FIELDS = ("image_size", "preprocessing")


def _run_copy(real_run, tmp_path, change) -> str:
    """A copy of the real run whose config.json's "data" went through ``change``."""
    run = tmp_path / "run"
    shutil.copytree(real_run.run_dir, run)
    config = json.loads((run / CONFIG_FILE).read_text())
    change(config["data"])
    (run / CONFIG_FILE).write_text(json.dumps(config))
    return str(run)


def _onnx_copy(exported, tmp_path, change) -> str:
    """A copy of the exported model whose metadata went through ``change``."""
    import onnx

    model = onnx.load(str(exported / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    change(meta)
    del model.metadata_props[:]
    for key, value in meta.items():
        model.metadata_props.add(key=key, value=value)
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    return str(path)


def _drop_new_fields(fields: dict) -> None:
    for key in NEW_FIELDS:
        del fields[key]


def test_the_run_saves_its_input_spec_and_the_export_carries_it(real_run, exported):
    config = json.loads((real_run.run_dir / CONFIG_FILE).read_text())
    assert {k: config["data"][k] for k in NEW_FIELDS} == {
        "image_size": 28,
        "preprocessing": "mnist",
    }
    trained = load_run(real_run.run_dir)
    expected = InputSpec("mnist", tuple(str(d) for d in range(10)), 0.1307, 0.3081, 28, "mnist")
    assert trained.spec == expected
    onnx = OnnxModel(exported / "model.onnx")
    assert onnx.metadata["preprocessing"] == "mnist" and onnx.metadata["image_size"] == "28"
    assert onnx.spec == expected
    assert OnnxModel(exported / "model.int8.onnx").spec == expected


def test_both_runtimes_are_models_that_give_the_same_probabilities(real_run, exported, test_digits):
    trained, onnx = load_run(real_run.run_dir), OnnxModel(exported / "model.onnx")
    assert isinstance(trained, Model) and isinstance(onnx, Model)
    images = test_digits[0][:64]
    for batch in (images, images.astype(np.float32) / 255):  # uint8, or floats in 0..1
        a, b = trained.probabilities(batch), onnx.probabilities(batch)
        assert a.shape == b.shape == (64, 10)
        np.testing.assert_allclose(a.sum(axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(a, b, atol=1e-5)
    # and the same as PyTorch's own softmax of the logits, computed here independently
    import torch

    x = torch.from_numpy(((images / 255.0 - 0.1307) / 0.3081).astype(np.float32)[:, None])
    with torch.inference_mode():
        expected = torch.softmax(trained.model.eval()(x), dim=1).numpy()
    np.testing.assert_allclose(trained.probabilities(images), expected, atol=1e-6)


def test_both_runtimes_describe_the_model_alike(real_run, exported):
    trained, onnx = load_run(real_run.run_dir), OnnxModel(exported / "model.onnx")
    pytorch, ort = trained.describe(), onnx.describe()
    assert (pytorch.runtime, ort.runtime) == ("pytorch", "onnxruntime")
    assert {**pytorch.__dict__, "runtime": None} == {**ort.__dict__, "runtime": None}
    assert pytorch.parameters == 1_379_557
    assert pytorch.test_accuracy == pytest.approx(real_run.final["test_accuracy"])
    assert pytorch.temperature is not None and pytorch.temperature > 0  # fitted, and exported
    assert pytorch.spec == trained.spec
    exported_meta = {k: onnx.metadata[k] for k in pytorch.metadata()}
    assert exported_meta == pytorch.metadata()  # export wrote exactly this description


@pytest.mark.parametrize("stated", ["nan", "-1", "0", "1e-300", "inf", "1e6", "", "warm"])
def test_a_temperature_no_fit_gives_is_not_believed(exported, tmp_path, stated):
    """An export's metadata states the temperature a reading rescales by: one outside the
    range the fit searches (or no number) is ignored, and the model reads as without one."""
    model = OnnxModel(_onnx_copy(exported, tmp_path, lambda m: m.update(temperature=stated)))
    assert model.temperature is None and model.describe().temperature is None
    assert OnnxModel(exported / "model.onnx").temperature is not None


def test_an_old_run_without_the_new_fields_loads_with_its_datasets_style(real_run, tmp_path):
    old = load_run(_run_copy(real_run, tmp_path, _drop_new_fields))
    assert old.spec == load_run(real_run.run_dir).spec
    assert Predictor(old).style == "mnist"


def test_an_old_fashion_run_gets_the_fashion_style_by_its_dataset_name(real_run, tmp_path):
    def old_fashion(data):
        _drop_new_fields(data)
        data["dataset"] = "fashion-mnist"

    assert Predictor(load_run(_run_copy(real_run, tmp_path, old_fashion))).style == "fashion"


def test_the_style_travels_with_the_run_not_with_the_dataset_name(real_run, tmp_path):
    run = _run_copy(real_run, tmp_path, lambda data: data.update(preprocessing="fashion"))
    predictor = Predictor.from_run(run)
    assert predictor.spec.dataset == "mnist" and predictor.style == "fashion"


def test_an_old_onnx_without_the_new_fields_loads(exported, tmp_path):
    def old(meta):
        _drop_new_fields(meta)
        meta["test_accuracy"] = "''"  # what exports wrote for a run without metrics

    model = OnnxModel(_onnx_copy(exported, tmp_path, old))
    assert model.spec == OnnxModel(exported / "model.onnx").spec
    assert model.describe().test_accuracy is None
    assert Predictor(model).style == "mnist"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("preprocessing", "sketch", "preprocessing: 'sketch', not one of " + ", ".join(STYLES)),
        ("preprocessing", 3, "preprocessing: expected a string"),
        ("image_size", 32, "image_size: 32: models here take 28"),
        ("image_size", "28", "image_size: expected an integer"),
    ],
)
def test_a_bad_spec_in_config_json_is_refused_in_one_line(real_run, tmp_path, key, value, message):
    run = _run_copy(real_run, tmp_path, lambda data: data.update({key: value}))
    with pytest.raises(MnistCnnError, match=f"data.{message}") as e:
        load_run(run)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("preprocessing", "sketch", "'sketch', not one of"),
        ("image_size", "32", "32: models here take 28"),
        ("image_size", "big", "not a whole number"),
    ],
)
def test_a_bad_spec_in_onnx_metadata_is_refused_in_one_line(
    exported, tmp_path, key, value, message
):
    path = _onnx_copy(exported, tmp_path, lambda meta: meta.update({key: value}))
    with pytest.raises(MnistCnnError, match=f"metadata {key}: {message}"):
        OnnxModel(path)


def test_predicting_with_an_export_needs_neither_torch_nor_the_dataset_table(
    exported, test_digits, tmp_path
):
    image = tmp_path / "digit.png"
    Image.fromarray(test_digits[0][0]).save(image)
    code = f"""if True:
        import sys
        from mnist_cnn.predict import Predictor

        p = Predictor.from_run({str(exported / "model.onnx")!r})
        assert p.predict({str(image)!r})["label"] == {int(test_digits[1][0])}
        heavy = {{"torch", "mnist_cnn.datasets"}} & set(sys.modules)
        assert not heavy, f"imported {{heavy}}"
    """
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
