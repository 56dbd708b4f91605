"""probe --shift measures invariance, not cropping: digits that would lose ink are counted apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mnist_cnn.cli import main
from mnist_cnn.evaluation import evaluate
from mnist_cnn.probe import (
    format_probe,
    ink_lost_by_rotation,
    ink_lost_by_shift,
    ink_margins,
    probe_shift,
    rotate_images,
    shift_images,
)

MEAN, STD = 0.1307, 0.3081


def test_margins_are_the_empty_rows_and_columns_around_the_ink():
    x = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    x[0, 0, 4:24, 9:19] = 255  # a 20 x 10 block: top 4, bottom 4, left 9, right 9
    x[1, 0, 0, 27] = 1  # one faint pixel in the top-right corner still counts as ink
    assert ink_margins(x).tolist() == [[4, 4, 9, 9], [0, 27, 27, 0], [28, 28, 28, 28]]


def test_a_shift_within_the_margins_loses_no_ink_and_one_beyond_them_does(test_digits):
    images = torch.from_numpy(test_digits[0][:, None])
    margin = ink_margins(images)
    for dx, dy in [(3, 0), (-5, 0), (0, 4), (0, -6), (6, 0)]:
        lost = ink_lost_by_shift(images, dx, dy)
        fits = ((margin[:, 2] >= -dx) & (margin[:, 3] >= dx)
                & (margin[:, 0] >= -dy) & (margin[:, 1] >= dy))  # fmt: skip
        assert (lost[fits] == 0).all()
        assert (lost[~fits] > 0).all()
        # the lost fraction is the ink's pixel sum that leaves the frame
        kept = shift_images(images.float(), dx, dy).sum(dim=(1, 2, 3))
        torch.testing.assert_close(kept, images.float().sum(dim=(1, 2, 3)) * (1 - lost))


def test_ink_carried_out_by_a_rotation_is_where_rotate_images_loses_it():
    x = torch.zeros(3, 1, 28, 28)
    x[0, 0, 0, 0] = 1  # a corner pixel: turned by 45 degrees it leaves the frame
    x[1, 0, 13, 13] = 1  # the centre stays
    x[2, 0, 0, 13] = 1  # the middle of the top edge: a quarter turn keeps it inside
    lost45 = ink_lost_by_rotation(x, 45)
    assert lost45.tolist() == [1.0, 0.0, 0.0]
    turned = rotate_images(x, 45).sum(dim=(1, 2, 3))
    assert turned[0] < 1e-6 and turned[1] > 0.9
    assert ink_lost_by_rotation(x, 90).tolist() == [0.0, 0.0, 0.0]
    assert ink_lost_by_rotation(x, 0).tolist() == [0.0, 0.0, 0.0]


def test_shift_probe_measures_whole_digits_against_themselves(real_run, test_digits):
    images, labels = test_digits
    x, y = torch.from_numpy(images[:, None]), torch.from_numpy(labels)
    model = real_run.model.cpu()
    shifts = [-6, -3, 0, 3, 6]
    result = probe_shift(model, x, y, MEAN, STD, shifts=shifts)
    plain = evaluate(model, x, y, mean=MEAN, std=STD, num_classes=10).accuracy
    margin = ink_margins(x)
    for axis, (before, after) in (("horizontal", (2, 3)), ("vertical", (0, 1))):
        zero = shifts.index(0)
        assert result["kept"][axis][zero] == len(x) and result["ink_lost"][axis][zero] == 0
        for key in ("accuracy", "unshifted", "cut"):
            assert result[key][axis][zero] == pytest.approx(plain)
        for i, s in enumerate(shifts):
            dx, dy = (s, 0) if axis == "horizontal" else (0, s)
            keep = (margin[:, before] >= -s) & (margin[:, after] >= s)
            assert result["kept"][axis][i] == int(keep.sum())
            # against an independent evaluation of exactly those digits, moved and not
            moved = shift_images(x[keep], dx, dy)  # uint8 in, uint8 out
            whole = evaluate(model, moved, y[keep], mean=MEAN, std=STD, num_classes=10)
            still = evaluate(model, x[keep], y[keep], mean=MEAN, std=STD, num_classes=10)
            assert result["accuracy"][axis][i] == pytest.approx(whole.accuracy)
            assert result["unshifted"][axis][i] == pytest.approx(still.accuracy)
    # MNIST's digits are 20 pixels tall in a 28-pixel frame: 6 pixels down cuts most of them
    assert result["kept"]["vertical"][-1] < 0.5 * len(x)
    assert result["ink_lost"]["vertical"][-1] > result["ink_lost"]["vertical"][-2] > 0
    text = format_probe(result)
    assert "horizontal shift" in text and "vertical shift" in text and "ink lost" in text


def test_probe_command_writes_the_whole_record(real_run, tmp_path, capsys):
    out = tmp_path / "probe"
    assert main(["probe", str(real_run.run_dir), "--shift", "--limit", "200", "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    text = capsys.readouterr().out
    saved = json.loads((out / "probe-shift.json").read_text())
    assert saved["values"] == list(range(-6, 7)) and saved["images"] == 200
    for key in ("accuracy", "unshifted", "kept", "cut", "ink_lost"):
        assert len(saved[key]["horizontal"]) == len(saved[key]["vertical"]) == 13
    row = next(line for line in text.splitlines() if line.split()[:1] == ["+6"])
    kept = saved["kept"]["horizontal"][-1]
    assert f"{kept:,} ({100 * kept / 200:.0f}%)" in row
    assert np.isfinite(saved["ink_lost"]["vertical"]).all()
    assert (out / "probe-shift.png").stat().st_size > 20_000
