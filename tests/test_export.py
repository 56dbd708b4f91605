"""Export: ONNX fp32 and int8 and torch.export programs, checked against the PyTorch model."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from mnist_cnn.cli import main
from mnist_cnn.predict import Predictor


def test_onnx_is_self_describing_with_a_dynamic_batch(exported, real_run, test_digits):
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(exported / "model.onnx"))
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["architecture"] == "CustomCNN" and meta["dataset"] == "mnist"
    assert json.loads(meta["classes"]) == [str(i) for i in range(10)]
    assert float(meta["mean"]) == pytest.approx(0.1307) and float(meta["std"]) == pytest.approx(
        0.3081
    )
    assert float(meta["test_accuracy"]) == pytest.approx(real_run.final["test_accuracy"])
    assert model.opset_import[0].version >= 18
    session = ort.InferenceSession(str(exported / "model.onnx"), providers=["CPUExecutionProvider"])
    (inp,), (out,) = session.get_inputs(), session.get_outputs()
    assert (inp.name, out.name) == ("images", "logits")
    x = ((test_digits[0][:7] / 255.0 - 0.1307) / 0.3081).astype(np.float32)[:, None]
    for batch in (1, 7):
        logits = session.run(None, {"images": x[:batch]})[0]
        with torch.inference_mode():
            expected = real_run.model.cpu().eval()(torch.from_numpy(x[:batch])).numpy()
        assert logits.shape == (batch, 10)
        np.testing.assert_allclose(logits, expected, atol=1e-4)


def test_int8_is_smaller_and_agrees(exported, real_run, test_digits):
    assert (exported / "model.int8.onnx").stat().st_size < 0.4 * (
        exported / "model.onnx"
    ).stat().st_size
    fp32 = Predictor.from_run(exported / "model.onnx")
    int8 = Predictor.from_run(exported / "model.int8.onnx")
    images = test_digits[0][:300] / 255.0
    agree = (fp32.probabilities(images).argmax(1) == int8.probabilities(images).argmax(1)).mean()
    assert agree >= 0.995


def test_onnx_predictions_match_pytorch(exported, real_run, test_digits):
    torch_predictor = Predictor.from_run(real_run.run_dir)
    onnx_predictor = Predictor.from_run(exported / "model.onnx")
    images = list(test_digits[0][:50])
    for a, b in zip(torch_predictor.predict(images), onnx_predictor.predict(images), strict=True):
        assert a["label"] == b["label"]
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-4)


def test_onnx_predict_imports_no_torch(exported, test_digits, tmp_path):
    image = tmp_path / "d.png"
    Image.fromarray(test_digits[0][0]).save(image)
    code = (
        "import sys, json\n"
        "from mnist_cnn.cli import main\n"
        f"rc = main(['predict', {str(exported / 'model.onnx')!r}, {str(image)!r}, '--json'])\n"
        "heavy = {'torch', 'safetensors', 'tqdm', 'matplotlib'} & set(sys.modules)\n"
        "assert not heavy, f'imported {heavy}'\n"
        "sys.exit(rc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["label"] == int(test_digits[1][0])


def test_exported_program_round_trip(real_run, tmp_path, test_digits, capsys):
    path = tmp_path / "model.pt2"
    assert (
        main(["export", str(real_run.run_dir), "--format", "exported-program", "-o", str(path)])
        == 0
    )
    assert "max |logit difference|" in capsys.readouterr().out
    program = torch.export.load(str(path)).module()
    x = torch.from_numpy(((test_digits[0][:5] / 255.0 - 0.1307) / 0.3081).astype(np.float32))[
        :, None
    ]
    with torch.inference_mode():
        torch.testing.assert_close(program(x), real_run.model.cpu().eval()(x), atol=1e-5, rtol=0)


def test_failed_check_leaves_nothing_behind(real_run, tmp_path, capsys, monkeypatch):
    import mnist_cnn.export as export_module

    monkeypatch.setattr(export_module, "FP32_TOLERANCE", -1.0)  # no export can pass this
    out = tmp_path / "model.onnx"
    assert main(["export", str(real_run.run_dir), "-o", str(out)]) == 1
    assert "export check failed" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == [], "neither the file nor a temporary folder is left"


def test_failed_int8_check_exits_1_and_leaves_nothing(real_run, tmp_path, capsys, monkeypatch):
    import mnist_cnn.export as export_module

    monkeypatch.setattr(export_module, "INT8_MIN_AGREEMENT", 1.01)  # unreachable
    code = main(["export", str(real_run.run_dir), "-o", str(tmp_path / "m.onnx"), "--quantize",
                 "int8"])  # fmt: skip
    assert code == 1 and "top-1 agreement with fp32" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_bad_export_requests(real_run, tmp_path, capsys):
    def error(argv):
        code = main(argv)
        err = capsys.readouterr().err
        assert "Traceback" not in err and err.count("\n") == 1, err
        return code, err

    assert error(["export", str(tmp_path / "nope"), "-o", str(tmp_path / "m.onnx")])[0] == 2
    code, err = error(["export", str(real_run.run_dir), "-o", str(tmp_path / "no" / "m.onnx")])
    assert code == 2 and "cannot write" in err
    assert error(["export", str(real_run.run_dir), "--format", "tflite", "-o", "m"])[0] == 2
    code, err = error(["export", str(real_run.run_dir), "-o", str(tmp_path)])
    assert code == 2 and "is a directory" in err
    code, err = error(["export", str(real_run.run_dir), "--format", "exported-program",
                       "--quantize", "int8", "-o", str(tmp_path / "m.pt2")])  # fmt: skip
    assert code == 2 and "--quantize int8 is for --format onnx" in err
