"""The model card: README.md in every run directory, in Hugging Face's layout, from the run's files.

YAML front matter (library_name, license, datasets, metrics, tags, and the test accuracy as a
model-index), then what the model is, how it was trained (the recipe and the command), results
on the test set and per class, real handwriting where measured, intended use and limitations.
Every figure comes from config.json, metrics.jsonl and evaluation.json, so nothing in it is
invented; training rewrites it after each epoch and `mnist-cnn evaluate` after each evaluation.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from .checkpoint import CONFIG_FILE, METRICS_FILE, MODEL_FILE, read_config, read_metrics
from .cli import train_command  # the command line that reproduces a run: the CLI spells flags
from .errors import MnistCnnError
from .files import atomic_write_json, atomic_write_text

CARD_FILE = "README.md"
EVALUATION_FILE = "evaluation.json"  # {"<dataset>/<split>": EvalResult + epoch and date}
LICENSE = "mit"  # the project's; a user publishing a run may choose another

HUB_DATASETS = {"mnist": "ylecun/mnist", "fashion-mnist": "zalando-datasets/fashion_mnist"}
PREPROCESSING = {
    "mnist": "as MNIST was made: the ink scaled into a 20x20 box and centred by its centre of "
    "mass in 28x28, white on black",
    "fashion": "as Fashion-MNIST was made: the item's longest edge scaled to 28 and centred by "
    "its box, shades kept",
}


def record_evaluation(run_dir: str | Path, key: str, result: dict, epoch: int | None) -> None:
    """Keep an evaluation's figures (EvalResult.to_dict()) in the run's evaluation.json under
    ``key`` ("<dataset>/<split>", e.g. "mnist/test"; "handwriting" for real handwriting)."""
    path = Path(run_dir) / EVALUATION_FILE
    evaluations = read_evaluations(run_dir)
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    evaluations[key] = {**result, "epoch": epoch, "evaluated": now}
    atomic_write_json(path, evaluations)


def read_evaluations(run_dir: str | Path) -> dict[str, dict]:
    path = Path(run_dir) / EVALUATION_FILE
    try:
        found = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MnistCnnError(f"{path}: unreadable ({e})") from None
    return found if isinstance(found, dict) else {}


def write_model_card(run_dir: str | Path) -> Path:
    """(Re)write <run>/README.md from the run's own files; returns its path."""
    run_dir = Path(run_dir)
    text = model_card(
        read_config(run_dir), read_metrics(run_dir), read_evaluations(run_dir), run_dir.name
    )
    return atomic_write_text(run_dir / CARD_FILE, text)


def model_card(config: dict, history: list[dict], evaluations: dict, name: str) -> str:
    data, training = config["data"], config.get("training", {})
    front = yaml.safe_dump(_metadata(config, history, name), sort_keys=False, allow_unicode=True)
    sections = [
        f"---\n{front}---\n",
        f"# {name}: CustomCNN on {data['dataset']}\n",
        _about(config),
        _training(config, training),
        _results(config, history, evaluations),
        _use(config),
    ]
    return "\n".join(sections)


def _metadata(config: dict, history: list[dict], name: str) -> dict[str, Any]:
    dataset = config["data"]["dataset"]
    meta: dict[str, Any] = {
        "library_name": "mnist-cnn",
        "license": LICENSE,
        "tags": ["image-classification", "pytorch", "safetensors", "mnist-cnn", dataset],
        "datasets": [HUB_DATASETS.get(dataset, dataset)],
        "metrics": ["accuracy"],
        "pipeline_tag": "image-classification",
    }
    if history:
        meta["model-index"] = [
            {
                "name": name,
                "results": [
                    {
                        "task": {"type": "image-classification", "name": "Image Classification"},
                        "dataset": {
                            "name": dataset,
                            "type": HUB_DATASETS.get(dataset, dataset),
                            "split": "test",
                        },
                        "metrics": [
                            {
                                "type": "accuracy",
                                "value": history[-1]["test_accuracy"],
                                "name": f"test accuracy after epoch {history[-1]['epoch']}",
                            }
                        ],
                    }
                ],
            }
        ]
    return meta


def _about(config: dict) -> str:
    model, data = config["model"], config["data"]
    classes = ", ".join(data["classes"])
    return (
        "## Model\n\n"
        f"`{model['architecture']}` from the Korean tutorial *CNN with Python*: three "
        "Conv-ReLU-MaxPool blocks (32, 64, 128 channels), a 625-unit layer with dropout and one "
        f"output per class; {model.get('parameters', 0):,} parameters. It classifies "
        f"{data['image_size']}x{data['image_size']} grayscale images of {data['dataset']} into "
        f"{len(data['classes'])} classes: {classes}. Inputs are scaled to 0..1 and normalized "
        f"with mean {data['mean']} and std {data['std']}.\n\n"
        f"Files: `{MODEL_FILE}` (the weights), `{CONFIG_FILE}` (architecture, classes, "
        f"normalization, settings), `{METRICS_FILE}` (one line per epoch). Load it with the "
        "`mnist_cnn` package that trained it:\n\n"
        "```python\nfrom mnist_cnn import Predictor, load_run\n\n"
        'predictor = Predictor.from_run("path/to/this/folder")  # people\'s images, preprocessed\n'
        'trained = load_run("path/to/this/folder")  # the torch module: trained.model\n```\n'
    )


def _training(config: dict, training: dict) -> str:
    data = config["data"]
    settings = ", ".join(
        f"{k} {training[k]}"
        for k in (
            "epochs",
            "batch_size",
            "lr",
            "schedule",
            "label_smoothing",
            "augment",
            "pairs",
            "dropout",
            "precision",
            "seed",
        )
        if k in training
    )
    versions = ", ".join(f"{k} {v}" for k, v in config.get("versions", {}).items())
    return (
        "## Training\n\n"
        f"Recipe `{training.get('recipe', 'reference')}`: {settings}; Adam. "
        f"{data['train_size']:,} training images, {data.get('val_size', 0):,} held out for "
        f"validation, {data['test_size']:,} test images. Trained on {config.get('device', '?')} "
        f"from {config.get('created', '?')}; {versions}. To train it again:\n\n"
        f"```sh\n{train_command(training)}\n```\n"
    )


def _results(config: dict, history: list[dict], evaluations: dict) -> str:
    planned = config.get("training", {}).get("epochs", len(history))
    if not history:
        return "## Results\n\nNo epoch has completed yet.\n"
    lines = [
        "## Results\n",
        f"After {len(history)} of {planned} epochs:\n",
        "| epoch | train loss | test loss | test accuracy |",
        "|---|---|---|---|",
    ]
    for r in history:
        lines.append(
            f"| {r['epoch']} | {r['train_loss']:.4f} | {r['test_loss']:.4f} | "
            f"{100 * r['test_accuracy']:.2f}% |"
        )
    own = f"{config['data']['dataset']}/test"
    if own in evaluations:
        lines += ["", _per_class(evaluations[own], config["data"]["classes"], "test set")]
    others = [k for k in evaluations if k != own and k != "handwriting"]
    for key in others:
        e = evaluations[key]
        lines.append(
            f"\n`mnist-cnn evaluate` on {key}: {100 * e['accuracy']:.2f}% of "
            f"{e['count']:,} images (loss {e['loss']:.4f}), "
            f"epoch {e.get('epoch')}."
        )
    lines.append("\n### Real handwriting\n")
    if "handwriting" in evaluations:
        e = evaluations["handwriting"]
        lines.append(
            f"{100 * e['accuracy']:.2f}% of {e['count']:,} photographed or scanned "
            f"handwritten digits (epoch {e.get('epoch')})."
        )
    else:
        lines.append(
            "Not measured for this run: the accuracy above is on the dataset's own "
            "test images, which people's photos and drawings are not."
        )
    return "\n".join(lines) + "\n"


def _per_class(e: dict, classes: list[str], what: str) -> str:
    confusion = e["confusion"]
    lines = [
        f"Per class on the {what} (epoch {e.get('epoch')}, {e['count']:,} images, "
        f"{100 * e['accuracy']:.2f}%):\n",
        "| class | images | accuracy | most often mistaken for |",
        "|---|---|---|---|",
    ]
    for i, name in enumerate(classes):
        row = confusion[i]
        wrong = sorted(((n, j) for j, n in enumerate(row) if j != i and n), reverse=True)[:2]
        mistaken = ", ".join(f"{classes[j]} ({n})" for n, j in wrong) or "-"
        lines.append(f"| {name} | {sum(row):,} | {100 * e['per_class'][i]:.2f}% | {mistaken} |")
    return "\n".join(lines)


def _use(config: dict) -> str:
    from .datasets import DATASETS

    data = config["data"]
    info = DATASETS.get(data["dataset"])
    style = PREPROCESSING[info.preprocessing if info else "mnist"]
    return (
        "## Intended use\n\n"
        f"Learning and teaching how a small CNN works, and reading single {data['dataset']}-style "
        "images: `mnist-cnn predict`, `mnist-cnn serve` (a page to draw on) or the Python API. "
        "It is not meant for decisions about people or anything safety-relevant.\n\n"
        "## Limitations\n\n"
        f"- Reads one centred {'item' if data['dataset'] == 'fashion-mnist' else 'character'} "
        f"per image. People's images are preprocessed {style}; an image unlike that "
        "(several characters, a cluttered background, a thin faint stroke) is read less well "
        "than the test figures above say.\n"
        f"- It knows only its {len(data['classes'])} classes: anything else is still given one "
        "of them, often with a high probability.\n"
        f"- The figures are for {data['dataset']}'s own test images; nothing here measures "
        "other sources unless listed under Results.\n"
    )
