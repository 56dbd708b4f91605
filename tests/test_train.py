"""Training, checkpoints and resume, on a small generated dataset."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from processes import dead_pid
from safetensors.torch import load_file

from mnist_cnn import TrainConfig, evaluate, load_dataset, load_run, train
from mnist_cnn.cli import main
from mnist_cnn.files import temp_name_suffix


def config(data, tmp_path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out=str(tmp_path / "runs"), epochs=2, batch_size=50)
    return TrainConfig(**{**base, **kw})


def weights(run_dir):
    return load_file(run_dir / "model.safetensors")


def test_run_directory_holds_everything_needed(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path, name="r"))
    run = result.run_dir
    assert sorted(p.name for p in run.iterdir()) == [
        "README.md", "config.json", "evaluation.json", "metrics.jsonl", "model.safetensors",
        "state.pt",
    ]  # fmt: skip
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["architecture"] == "CustomCNN"
    assert cfg["model"]["parameters"] == 1_379_557
    assert cfg["data"]["mean"] == pytest.approx(0.1307) and cfg["data"]["std"] == pytest.approx(
        0.3081
    )
    assert cfg["data"]["classes"] == [str(i) for i in range(10)]
    assert cfg["training"]["batch_size"] == 50 and cfg["training"]["seed"] == 777
    assert {"torch", "numpy", "python", "mnist_cnn"} <= set(cfg["versions"])
    assert cfg["epochs_completed"] == 2 and cfg["metrics"] == result.final
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    state = torch.load(run / "state.pt", weights_only=True)
    assert state["epoch"] == 2 and "optimizer" in state and "rng" in state


def test_it_learns_and_the_saved_model_scores_what_training_reported(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path, epochs=3))
    assert result.final["test_accuracy"] >= 0.9  # the generated classes are easy
    trained = load_run(result.run_dir)
    data = load_dataset("mnist", tiny_data)
    again = evaluate(
        trained.model, data.test_images, data.test_labels, mean=trained.mean, std=trained.std
    )
    assert again.accuracy == result.final["test_accuracy"]
    assert again.loss == pytest.approx(result.final["test_loss"], rel=1e-5)


def test_same_seed_gives_the_same_weights(tiny_data, tmp_path):
    a = train(config(tiny_data, tmp_path, name="a")).run_dir
    b = train(config(tiny_data, tmp_path, name="b")).run_dir
    c = train(config(tiny_data, tmp_path, name="c", seed=1)).run_dir
    wa, wb, wc = weights(a), weights(b), weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["fc1.weight"], wc["fc1.weight"])


def test_resumed_run_is_bitwise_the_uninterrupted_one(tiny_data, tmp_path):
    full = train(config(tiny_data, tmp_path, name="full", epochs=3, deterministic=True))
    part = train(config(tiny_data, tmp_path, name="part", epochs=1, deterministic=True))
    resumed = train(config(tiny_data, tmp_path, name="part", epochs=3, deterministic=True),
                    resume=part.run_dir)  # fmt: skip
    wf, wr = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    keys = ("epoch", "train_loss", "test_loss", "test_accuracy")
    assert [{k: r[k] for k in keys} for r in full.history] == [
        {k: r[k] for k in keys} for r in resumed.history
    ]


def test_validation_split_is_held_out_and_seeded(tiny_data, tmp_path):
    from mnist_cnn.training import _make_splits

    result = train(config(tiny_data, tmp_path, epochs=1, val_size=50))
    assert 0 <= result.final["val_accuracy"] <= 1
    cfg = json.loads((result.run_dir / "config.json").read_text())
    assert cfg["data"]["train_size"] == 250 and cfg["data"]["val_size"] == 50
    data = load_dataset("mnist", tiny_data)

    def split(seed):
        s = _make_splits(data, config(tiny_data, tmp_path, val_size=50, seed=seed), "cpu")
        return s.train_x.flatten(1), s.val[0].flatten(1)

    train_x, val_x = split(777)
    rows = {tuple(r.tolist()) for r in train_x}
    assert not any(tuple(r.tolist()) in rows for r in val_x), "held-out images are not trained on"
    assert torch.equal(split(777)[1], val_x) and not torch.equal(split(5)[1], val_x)


def test_kill_9_loses_at_most_the_epoch_in_progress(tiny_data, tmp_path):
    run = tmp_path / "runs" / "killed"
    cmd = [sys.executable, "-m", "mnist_cnn", "train", "--data-dir", str(tiny_data),
           "--out", str(tmp_path / "runs"), "--name", "killed", "--epochs", "500",
           "--batch-size", "50"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not (run / "state.pt").exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no epoch completed in time"
            time.sleep(0.05)
        time.sleep(0.7)  # kill somewhere inside a later epoch or a checkpoint write
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    done = torch.load(run / "state.pt", weights_only=True)["epoch"]
    assert done >= 1
    assert load_run(run).model is not None  # what is on disk is whole
    target = done + 1
    assert main(["train", "--resume", str(run), "--epochs", str(target)]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, target + 1))
    assert not list(run.glob(".*.tmp")), "resume clears what an interrupted write left"


def test_resume_refuses_to_change_the_recipe(tiny_data, tmp_path, capsys):
    run = train(config(tiny_data, tmp_path, epochs=1)).run_dir
    assert main(["train", "--resume", str(run), "--batch-size", "10"]) == 2
    err = capsys.readouterr().err
    assert "--batch-size cannot change" in err and "Traceback" not in err


def test_existing_run_name_is_not_overwritten(tiny_data, tmp_path, capsys):
    train(config(tiny_data, tmp_path, epochs=1, name="taken"))
    argv = ["train", "--data-dir", str(tiny_data), "--out", str(tmp_path / "runs"),
            "--name", "taken", "--epochs", "1"]  # fmt: skip
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err


def test_limit_train_uses_that_many_images(tiny_data, tmp_path):
    result = train(config(tiny_data, tmp_path, epochs=1, limit_train=120, batch_size=100))
    assert json.loads((result.run_dir / "config.json").read_text())["data"]["train_size"] == 120


def test_a_run_killed_in_its_first_epoch_can_be_resumed(tiny_data, tmp_path):
    from mnist_cnn.checkpoint import CONFIG_FILE

    full = train(config(tiny_data, tmp_path, name="full", epochs=1))
    # what a kill -9 inside epoch 1 leaves: config.json, and a temp file of a write in progress
    crashed = tmp_path / "runs" / "crashed"
    crashed.mkdir()
    cfg = json.loads((full.run_dir / CONFIG_FILE).read_text())
    cfg["epochs_completed"], cfg["metrics"], cfg["training"]["name"] = 0, {}, "crashed"
    (crashed / CONFIG_FILE).write_text(json.dumps(cfg))
    (crashed / f".model.safetensors.abc123{temp_name_suffix(dead_pid())}").write_bytes(b"half")
    (crashed / ".notes.tmp").write_bytes(b"the user's own file")
    resumed = train(resume=crashed)
    assert [r["epoch"] for r in resumed.history] == [1]
    wf, wr = weights(full.run_dir), weights(crashed)
    assert all(torch.equal(wf[k], wr[k]) for k in wf), "a restart from epoch 0 is the same run"
    assert [p.name for p in crashed.glob(".*.tmp")] == [".notes.tmp"], "ours, abandoned, only"


def test_resume_rejects_another_architecture_and_a_broken_state(tiny_data, tmp_path, capsys):
    run = train(config(tiny_data, tmp_path, epochs=1)).run_dir
    state = torch.load(run / "state.pt", weights_only=True)
    del state["optimizer"]
    torch.save(state, run / "state.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    assert "missing optimizer" in capsys.readouterr().err
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["architecture"] = "LeNet5"
    (run / "config.json").write_text(json.dumps(cfg))
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "'LeNet5', not CustomCNN" in err and "Traceback" not in err


def test_resume_refuses_a_generator_state_mt19937_rejects(tiny_data, tmp_path, capsys):
    """The right shape and dtype, but no state of the generator (its position 'left' is 0):
    one line naming the field, not PyTorch's traceback."""
    run = train(config(tiny_data, tmp_path, epochs=1)).run_dir
    state = torch.load(run / "state.pt", weights_only=True)
    state["rng"]["torch"][8:12] = 0  # mt19937's 'left', after the 8-byte seed: must be 1..624
    torch.save(state, run / "state.pt")
    assert main(["train", "--resume", str(run), "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "rng.torch: not a state of PyTorch's random-number generator" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("recipe", ["reference", "fast", "best", "gpu"])
def test_each_recipe_runs_end_to_end(recipe, tiny_data, tmp_path):
    from mnist_cnn.training import RECIPES

    cfg = TrainConfig.from_recipe(
        recipe, data_dir=str(tiny_data), out=str(tmp_path), epochs=2, batch_size=50
    )
    result = train(cfg)
    saved = json.loads((result.run_dir / "config.json").read_text())["training"]
    assert saved["recipe"] == recipe
    for key, value in RECIPES[recipe].items():
        if key not in ("epochs", "batch_size"):
            assert saved[key] == value
    assert result.final["test_accuracy"] > 0.5  # learns the generated classes even in 2 epochs


def test_flags_override_the_recipe(tiny_data, tmp_path):
    argv = ["train", "--recipe", "fast", "--batch-size", "64", "--data-dir", str(tiny_data),
            "--out", str(tmp_path), "--name", "r", "--epochs", "1"]  # fmt: skip
    assert main(argv) == 0
    saved = json.loads((tmp_path / "r" / "config.json").read_text())["training"]
    assert (saved["recipe"], saved["batch_size"], saved["schedule"]) == ("fast", 64, "onecycle")


def test_interrupted_onecycle_run_resumes_exactly(tiny_data, tmp_path):
    """The schedule's position is part of the resume state: an interrupted run ends the same."""
    # (with pairs, which draw random numbers too)
    kw = dict(data_dir=str(tiny_data), out=str(tmp_path), epochs=3, batch_size=50,
              deterministic=True, pairs=0.1)  # fmt: skip
    full = train(TrainConfig.from_recipe("best", name="full", **kw))

    def stop_after_first_epoch(line):
        if line.startswith("epoch 1/3"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig.from_recipe("best", name="cut", **kw), log=stop_after_first_epoch)
    resumed = train(resume=tmp_path / "cut")
    wf, wr = weights(full.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(wf[k], wr[k]) for k in wf)
    with pytest.raises(Exception, match="planned for 3 epochs"):
        train(TrainConfig.from_recipe("best", name="cut", **{**kw, "epochs": 5}),
              resume=tmp_path / "cut")  # fmt: skip


def test_training_with_touching_pairs_makes_the_model_unsure_of_them(tiny_data, tmp_path):
    """--pairs adds two touching digits per image to each batch, trained towards no digit: the
    model it gives reads such pairs far less surely than one trained without them, and still
    reads the digits themselves."""
    from mnist_cnn.augment import touching_pairs

    data = load_dataset("mnist", tiny_data)
    x = data.test_images.float().unsqueeze(1) / 255
    pairs = touching_pairs(x, 200, generator=torch.Generator().manual_seed(0))
    sure = {}
    for share in (0.0, 0.25):
        result = train(config(tiny_data, tmp_path, epochs=3, pairs=share, name=f"p{share}"))
        assert result.final["test_accuracy"] >= 0.9
        saved = json.loads((result.run_dir / "config.json").read_text())
        assert saved["training"]["pairs"] == share
        probs = load_run(result.run_dir).probabilities(pairs[:, 0].numpy())
        sure[share] = float(probs.max(axis=1).mean())
    assert sure[0.25] < sure[0.0] - 0.2, sure
