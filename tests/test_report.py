"""The evaluation report: its structure, its images, and the numbers behind it."""

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from mnist_cnn import TrainConfig, train
from mnist_cnn.cli import main
from mnist_cnn.report import PLOTS, calibration, per_class_scores


def test_per_class_scores_from_a_known_confusion():
    confusion = np.array([[8, 2], [1, 9]])  # rows: true, columns: predicted
    s = per_class_scores(confusion)
    np.testing.assert_allclose(s["precision"], [8 / 9, 9 / 11])
    np.testing.assert_allclose(s["recall"], [0.8, 0.9])
    np.testing.assert_allclose(s["f1"], [2 * (8 / 9) * 0.8 / (8 / 9 + 0.8),
                                         2 * (9 / 11) * 0.9 / (9 / 11 + 0.9)])  # fmt: skip
    np.testing.assert_array_equal(s["support"], [10, 10])


def test_expected_calibration_error():
    labels = np.zeros(100, dtype=int)
    confident = np.tile([0.9, 0.1], (100, 1))
    right = calibration(confident, labels)
    assert right["ece"] == pytest.approx(0.1)  # 90% sure, always right: 10 points off
    wrong_half = labels.copy()
    wrong_half[:10] = 1  # 90% sure and right 90% of the time: calibrated
    assert calibration(confident, wrong_half)["ece"] == pytest.approx(0.0, abs=1e-9)
    assert right["count"].sum() == 100


def test_report_is_self_contained_and_every_image_decodes(tiny_data, tmp_path, capsys):
    run = train(TrainConfig(data_dir=str(tiny_data), out=str(tmp_path), epochs=2)).run_dir
    report = tmp_path / "report"
    argv = ["evaluate", str(run), "--data-dir", str(tiny_data), "--report", str(report), "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    page = (report / "report.html").read_text()
    assert "<script" not in page and "http://" not in page and "https://" not in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == len(PLOTS)
    for data in embedded:
        img = Image.open(io.BytesIO(base64.b64decode(data)))
        img.load()
        assert img.size[0] > 300 and img.size[1] > 200
    for name in PLOTS:
        assert Image.open(report / f"{name}.png").format == "PNG"
    for section in ("curves", "confusion", "per-class", "mistakes", "reliability"):
        assert f'id="{section}"' in page
    summary = json.loads((report / "summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(result["accuracy"])
    assert f"{100 * result['accuracy']:.2f}%" in page
    assert len(summary["f1"]) == 10


def test_report_folder_that_cannot_be_made(tiny_data, tmp_path, capsys):
    run = train(TrainConfig(data_dir=str(tiny_data), out=str(tmp_path), epochs=1)).run_dir
    blocker = tmp_path / "file"
    blocker.write_text("")
    code = main(["evaluate", str(run), "--data-dir", str(tiny_data), "--report",
                 str(blocker / "r")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--report" in err and "Traceback" not in err
