"""The model card (README.md in every run directory), read with the Hugging Face Hub's parser."""

import json
import re
import shlex
from dataclasses import asdict

import pytest
from huggingface_hub import ModelCard

from mnist_cnn import TrainConfig, train
from mnist_cnn.cli import build_parser, main
from mnist_cnn.model_card import train_command


def config(data, tmp_path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out=str(tmp_path / "runs"), name="card", epochs=2,
                batch_size=50)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def test_the_card_carries_hub_metadata_and_the_runs_own_figures(tiny_data, tmp_path):
    seen = []  # the card as each epoch's log line is printed

    def log(line):
        if line.startswith("epoch"):
            seen.append(re.search(r"After (\d+) of", (run / "README.md").read_text())[1])

    run = tmp_path / "runs" / "card"
    result = train(config(tiny_data, tmp_path), log=log)
    assert seen == ["1", "2"]  # rewritten after every epoch
    card = ModelCard.load(run / "README.md")
    assert card.data.library_name == "mnist-cnn" and card.data.license == "mit"
    assert card.data.datasets == ["ylecun/mnist"] and card.data.metrics == ["accuracy"]
    assert "image-classification" in card.data.tags
    (scored,) = card.data.eval_results
    assert scored.metric_type == "accuracy" and scored.dataset_split == "test"
    assert scored.metric_value == result.final["test_accuracy"]
    evaluation = json.loads((run / "evaluation.json").read_text())["mnist/test"]
    assert evaluation["epoch"] == 2 and evaluation["accuracy"] == result.final["test_accuracy"]
    for digit in range(10):  # the per-class table, from evaluation.json
        row = re.search(rf"^\| {digit} \| (\d+) \| ([\d.]+)% \|", card.text, re.M)
        assert int(row[1]) == sum(evaluation["confusion"][digit])
        assert row[2] == f"{100 * evaluation['per_class'][digit]:.2f}"
    for r in result.history:
        assert f"| {r['epoch']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} |" in card.text
    assert "Real handwriting" in card.text and "Not measured for this run" in card.text
    assert not (run / "tensorboard").exists()  # TensorBoard is off unless asked for


@pytest.mark.parametrize(
    "settings",
    [{}, {"recipe": "fast", "epochs": 3, "seed": 5}, {"recipe": "best", "augment": False,
     "dropout": 0.25, "limit_train": 1000, "val_size": 100}],
)  # fmt: skip
def test_the_cards_command_trains_the_same_settings(settings):
    recipe = settings.pop("recipe", "reference")
    wanted = TrainConfig.from_recipe(recipe, dataset="fashion-mnist", **settings)
    args = build_parser().parse_args(shlex.split(train_command(asdict(wanted)))[1:])
    given = {k: v for k, v in vars(args).items() if k in asdict(wanted) and v is not None}
    assert TrainConfig.from_recipe(**given) == wanted


def test_evaluate_records_its_figures_in_the_card(tiny_data, tmp_path, capsys):
    run = train(config(tiny_data, tmp_path, epochs=1)).run_dir
    capsys.readouterr()
    args = ["evaluate", str(run), "--data-dir", str(tiny_data), "--split", "train", "--json"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    recorded = json.loads((run / "evaluation.json").read_text())
    assert set(recorded) == {"mnist/test", "mnist/train"}
    assert recorded["mnist/train"]["accuracy"] == printed["accuracy"]
    assert recorded["mnist/train"]["epoch"] == 1
    text = (run / "README.md").read_text()
    assert f"`mnist-cnn evaluate` on mnist/train: {100 * printed['accuracy']:.2f}% of 300" in text
