"""TensorBoard logs of training, read back with TensorBoard's own reader (EventAccumulator)."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

from mnist_cnn import TrainConfig, load_run, train
from mnist_cnn.cli import main
from mnist_cnn.tensorboard_log import CONFUSION, FILTERS, LEARNING_RATE, SCALARS, filter_grid


def read_events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"images": 0})
    return events.Reload()


def scalars(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def png(event) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))


def config(data, tmp_path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out=str(tmp_path / "runs"), name="tb", epochs=2,
                batch_size=50, tensorboard=True)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_each_epoch_logs_metrics_and_filters_the_end_the_confusion_and_resume_appends(
    tiny_data, tmp_path
):
    result = train(config(tiny_data, tmp_path))
    events = read_events(result.run_dir)
    for key, tag in SCALARS.items():
        if key in result.history[0]:
            expected = {r["epoch"]: r[key] for r in result.history}
            assert scalars(events, tag) == pytest.approx(expected, rel=1e-6), tag
    assert scalars(events, LEARNING_RATE) == pytest.approx({1: 1e-3, 2: 1e-3})
    filters = {e.step: png(e) for e in events.Images(FILTERS)}
    assert list(filters) == [1, 2]
    assert not np.array_equal(filters[1], filters[2])  # the filters moved in epoch 2
    final = load_run(result.run_dir).model.layer1[0].weight
    drawn = (filter_grid(final).permute(1, 2, 0).numpy() * 255).astype(np.uint8)
    assert np.abs(filters[2].astype(int) - drawn).max() <= 1  # the saved weights, as drawn
    assert [e.step for e in events.Images(CONFUSION)] == [2]
    assert png(events.Images(CONFUSION)[0]).shape[0] > 200  # a figure, not a placeholder

    # Resume appends. As if a process had logged epoch 3, then died before its checkpoint:
    run_dir = result.run_dir
    stale = SummaryWriter(str(run_dir / "tensorboard"))
    stale.add_scalar(SCALARS["train_loss"], 123.0, 3)
    stale.close()
    assert main(["train", "--resume", str(run_dir), "--epochs", "3"]) == 0
    events = read_events(run_dir)
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = scalars(events, SCALARS["train_loss"])  # the stale 123.0 is gone
    assert losses == pytest.approx({r["epoch"]: r["train_loss"] for r in history}, rel=1e-6)
    assert [e.step for e in events.Images(FILTERS)] == [1, 2, 3]
    assert [e.step for e in events.Images(CONFUSION)] == [2, 3]


def test_asking_without_the_package_is_a_clear_error_before_anything_is_written(
    tiny_data, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if it were not installed
    out = tmp_path / "runs"
    code = main(["train", "--data-dir", str(tiny_data), "--out", str(out), "--tensorboard"])
    assert code == 2
    assert "pip install 'mnist-cnn[tensorboard]'" in capsys.readouterr().err
    assert not out.exists()


def test_under_torchrun_rank_0_alone_logs(tiny_data, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
           "-m", "mnist_cnn", "train", "--data-dir", str(tiny_data), "--out", str(tmp_path),
           "--name", "ddp", "--epochs", "2", "--schedule", "onecycle", "--tensorboard"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    files = list((tmp_path / "ddp" / "tensorboard").iterdir())
    assert len(files) == 1 and files[0].name.startswith("events.out.tfevents")
    events = read_events(tmp_path / "ddp")
    assert [e.step for e in events.Scalars(SCALARS["train_loss"])] == [1, 2]
    rates = scalars(events, LEARNING_RATE)  # the rate the optimizer holds, not the setting
    assert rates[1] > rates[2] > 0  # one-cycle anneals
