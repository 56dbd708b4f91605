"""The ``mnist-cnn`` command: a thin layer over the library; main(argv) returns the exit code.

The library names a setting by its field (``batch_size``) and owns its rules and defaults; this
module owns the flags: each command's parser sits beside the function that runs it, its flags
checked by argparse ``type=`` functions built on the library's ranges, and a library error about
a setting is shown with the flag the user typed (``flag``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from dataclasses import asdict, fields, replace
from pathlib import Path

from . import __version__, defaults
from .defaults import COUNT, Range
from .device import DEVICES
from .errors import ConfigError, MnistCnnError
from .recipes import OPTIMIZERS, PRECISIONS, RANGES, RECIPES, SCHEDULES

EXIT_USAGE = 2

# Library fields whose flag is not --<field with dashes>, then per command where they differ.
FLAGS = {"fmt": "--format", "out_dir": "--out"}
COMMAND_FLAGS = {"evaluate": {"out_dir": "--report"}}


def flag(field: str, command: str | None = None) -> str:
    """The flag that sets the library's ``field`` in ``command``: batch_size -> --batch-size."""
    named = COMMAND_FLAGS.get(command or "", {}).get(field) or FLAGS.get(field)
    return named or "--" + field.replace("_", "-")


def checked(kind: Callable[[str], float], allowed: Range) -> Callable[[str], float]:
    """An argparse ``type=``: ``kind`` (int or float) within ``allowed``, else a usage error
    that reads as the library's does (``--epochs must be at least 1``)."""

    def parse(text: str):
        value = kind(text)  # a ValueError: argparse's "invalid int value: 'many'"
        if value not in allowed:
            raise argparse.ArgumentTypeError(allowed.refusal)
        return value

    parse.__name__ = kind.__name__
    return parse


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit code 2, like every other user error."""

    def error(self, message: str):
        # a ``checked`` flag's refusal reads like the library's: "--epochs must be at least 1"
        message = re.sub(r"^argument (-\S+): (must .*)", r"\1 \2", message)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mnist-cnn",
        description="Train, evaluate and inspect the CustomCNN of the 'CNN with Python' tutorial.",
    )
    parser.add_argument("--version", action="version", version=f"mnist-cnn {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (
        _add_train,
        _add_evaluate,
        _add_data,
        _add_predict,
        _add_read,
        _add_export,
        _add_serve,
        _add_summary,
        _add_explain,
        _add_probe,
    ):
        add(sub)
    return parser


def _data_args(p, default, shown_default) -> None:
    from .datasets import DATASETS

    p.add_argument(
        "--dataset",
        choices=list(DATASETS),
        default=default,
        help=f"dataset name (default: {shown_default})",
    )
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        help="folder with the dataset, or a root holding <dataset>/ folders "
        "(default: $MNIST_CNN_DATA)",
    )


def _run_arg(p, what: str = "run directory, a model.safetensors in one, or an exported .onnx"):
    p.add_argument("run", metavar="RUN", help=what)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or a usage error argparse has reported
        return int(e.code or 0)
    try:
        return args.func(args) or 0
    except ConfigError as e:  # a setting, named by its field: say the flag the user typed
        return _fail(e.describe(lambda field: flag(field, args.command)))
    except MnistCnnError as e:
        return _fail(str(e))
    except OSError as e:  # unwritable folders, full disks: the user's to fix, no traceback
        where = f": {e.filename}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        print("mnist-cnn: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"mnist-cnn: error: {' '.join(message.split())}", file=sys.stderr)  # one line
    return EXIT_USAGE


def train_command(training: dict) -> str:
    """The `mnist-cnn train` command line that reproduces ``training`` (a run's settings)."""
    from .training import TrainConfig

    # a setting a run does not record did not exist yet: it trained with its default then (a
    # fast-recipe run saved before the recipe had pairs trained without them)
    training = {**asdict(TrainConfig()), **training}
    recipe = training["recipe"]
    base = TrainConfig.from_recipe(recipe)
    words = ["mnist-cnn", "train", "--dataset", str(training["dataset"])]
    if recipe != "reference":
        words += ["--recipe", recipe]
    local = {"dataset", "recipe", "data_dir", "out", "name", "device", "eval_batch_size"}
    for key, value in training.items():
        if key in local or not hasattr(base, key) or getattr(base, key) == value:
            continue
        if isinstance(value, bool):
            words.append(flag(key) if value else "--no-" + flag(key)[2:])
        elif value is not None:
            words += [flag(key), str(value)]
    return " ".join(words)


def _progress() -> bool:
    return sys.stderr.isatty()


def _log(line: str) -> None:
    print(line, flush=True)  # one line per epoch shows at once, also when piped to a file


def _setting(field: str, kind: Callable[[str], float] = int) -> Callable[[str], float]:
    """The ``type=`` of a TrainConfig number: checked against the range TrainConfig checks."""
    return checked(kind, RANGES[field])


def _add_train(sub) -> None:
    t = sub.add_parser(
        "train",
        help="train CustomCNN (defaults: the reference recipe)",
        description="Train CustomCNN. Defaults are the reference recipe: Adam "
        "lr 1e-3, batch 100, 15 epochs, seed 777.",
    )
    _data_args(t, None, "mnist")
    t.add_argument(
        "--recipe",
        choices=list(RECIPES),
        help="reference (default: the seed's lab), fast (>= 99%% in about a minute "
        "on a laptop CPU) or best (augmentation, longer); flags override it",
    )
    t.add_argument("--epochs", type=_setting("epochs"), help="epochs to train (default 15)")
    t.add_argument(
        "--batch-size", type=_setting("batch_size"), help="images per step (default 100)"
    )
    t.add_argument(
        "--lr",
        type=_setting("lr", float),
        help="Adam learning rate, the peak of onecycle (1e-3)",
    )
    t.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or sgd (plain SGD)")
    t.add_argument("--schedule", choices=SCHEDULES, help="learning rate schedule (constant)")
    t.add_argument(
        "--label-smoothing",
        type=_setting("label_smoothing", float),
        metavar="EPS",
        help="default 0",
    )
    t.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="augment each batch like people's handwriting: slant, stroke width, elastic "
        "wobble, shifts, rotations, scaling (default off; the best recipe: shifts, rotations, "
        "scaling)",
    )
    t.add_argument(
        "--pairs",
        type=_setting("pairs", float),
        metavar="SHARE",
        help="add this share of each batch (at least one image) as two touching digits in one "
        "image, trained towards no digit, so that `read` cuts such pieces (default 0; 0.125 "
        "reads touching numbers better, separated ones a little worse: see the README)",
    )
    t.add_argument(
        "--precision",
        choices=PRECISIONS,
        help="fp32 (the reference recipe's), bf16 autocast, or auto (fast, best and gpu's): "
        "bf16 where the device computes it natively (CUDA with bf16, CPUs with AMX or AVX-512 "
        "BF16)",
    )
    t.add_argument(
        "--compile",
        action="store_true",
        default=None,
        help="torch.compile the model for training (pays off on GPUs)",
    )
    t.add_argument("--seed", type=_setting("seed"), help="random seed (default 777)")
    t.add_argument("--device", choices=DEVICES, help="where to train (default auto)")
    t.add_argument("--out", metavar="DIR", help="folder for run directories (default runs)")
    t.add_argument("--name", help="run directory name (default <dataset>-<date>-<time>)")
    t.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last epoch")
    t.add_argument(
        "--deterministic",
        action="store_true",
        default=None,
        help="bitwise-repeatable kernels (resumed runs match uninterrupted ones)",
    )
    t.add_argument(
        "--limit-train",
        type=_setting("limit_train"),
        metavar="N",
        help="train on the first N images",
    )
    t.add_argument(
        "--val-size",
        type=_setting("val_size"),
        metavar="N",
        help="hold out N training images as a validation split (default 0)",
    )
    t.add_argument(
        "--dropout",
        type=_setting("dropout", float),
        metavar="P",
        help="dropout of layer4's units (default 0.5, as in the seed)",
    )
    t.add_argument(
        "--dist-backend",
        choices=defaults.DIST_BACKENDS,
        default="auto",
        help="under torchrun: gloo (CPU) or nccl (CUDA); auto picks",
    )
    t.add_argument(
        "--dist-timeout",
        type=checked(float, defaults.DIST_TIMEOUT_RANGE),
        default=defaults.DIST_TIMEOUT,
        metavar="S",
        help=f"under torchrun: seconds to wait for a missing process ({defaults.DIST_TIMEOUT})",
    )
    t.add_argument(
        "--tensorboard",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also log to RUN/tensorboard: tensorboard --logdir runs",
    )
    t.add_argument("--eval-batch-size", type=_setting("eval_batch_size"), help=argparse.SUPPRESS)
    t.set_defaults(func=_cmd_train)


def _cmd_train(args) -> int:
    from .training import TrainConfig, load_train_config, train

    names = [f.name for f in fields(TrainConfig)]
    given = {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}
    if args.resume:  # the run's own settings, with what was given and may change on resume
        config = load_train_config(args.resume)[1].resumed(**given)
    else:
        config = TrainConfig.from_recipe(**given)
    result = train(
        config,
        resume=args.resume,
        log=_log,
        progress=_progress(),
        dist_backend=args.dist_backend,
        dist_timeout=args.dist_timeout,
    )
    final = result.final
    if final and int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 reports
        print(
            f"test accuracy {100 * final['test_accuracy']:.2f}% after {final['epoch']} epochs; "
            f"run saved in {result.run_dir}"
        )
    return 0


def _add_evaluate(sub) -> None:
    e = sub.add_parser("evaluate", help="accuracy, loss, per-class accuracy, confusion matrix")
    _run_arg(e, "run directory, or a model.safetensors in one")
    _data_args(e, None, "the run's own")
    e.add_argument("--split", choices=["test", "train"], default="test")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument(
        "--report",
        metavar="DIR",
        help="also write DIR/report.html (self-contained) and its plots as PNG",
    )
    e.add_argument("--device", choices=DEVICES, default="auto")
    e.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from .checkpoint import load_run
    from .device import select_device
    from .download import load_dataset
    from .evaluation import evaluate

    trained = load_run(args.run, device=select_device(args.device)).for_inference()
    history = trained.history() if args.report else []  # checked before any long work
    dataset = args.dataset or trained.dataset
    data = load_dataset(dataset, args.data_dir, progress=_progress())
    if data.info.num_classes != len(trained.classes):
        raise MnistCnnError(
            f"{dataset} has {data.info.num_classes} classes; the model has {len(trained.classes)}"
        )
    images, labels = data.split(args.split)
    result = evaluate(
        trained.model,
        images,
        labels,
        mean=trained.mean,
        std=trained.std,
        num_classes=data.info.num_classes,
    )
    if args.report:
        path = _write_report(
            args.report, trained, data, images, labels, dataset, args.split, history
        )
        if not args.json:
            print(f"report written to {path}")
    _record_evaluation(trained, f"{dataset}/{args.split}", result)
    if args.json:
        print(json.dumps({"dataset": dataset, "split": args.split, **result.to_dict()}))
        return 0
    print(f"{trained.run_dir}: {dataset} {args.split} split, {result.count:,} images")
    print(f"accuracy {100 * result.accuracy:.2f}%   loss {result.loss:.4f}")
    print(format_confusion(result.confusion, result.per_class, trained.classes))
    return 0


def _record_evaluation(trained, key: str, result) -> None:
    """Keep the figures in the run's evaluation.json and its model card; a run that cannot be
    written to (a read-only copy) is evaluated all the same."""
    from .model_card import record_evaluation, write_model_card

    epoch = trained.config.get("epochs_completed")
    try:
        record_evaluation(trained.run_dir, key, result.to_dict(), epoch)
        write_model_card(trained.run_dir)
    except OSError as e:
        print(
            f"mnist-cnn: note: model card not updated ({e.strerror}: {e.filename})", file=sys.stderr
        )
    except (KeyError, TypeError, ValueError, MnistCnnError) as e:  # a field only the card reads
        print(
            f"mnist-cnn: note: model card not updated ({trained.run_dir}: a field it shows "
            f"is missing or malformed: {e})",
            file=sys.stderr,
        )


def _write_report(folder, trained, data, images, labels, dataset, split, history):
    from .evaluation import predict_probabilities
    from .report import write_report

    probs = predict_probabilities(trained.model, images, mean=trained.mean, std=trained.std)
    return write_report(
        folder,
        images=images.numpy(),
        labels=labels.numpy(),
        probs=probs.numpy(),
        classes=trained.classes,
        history=history,
        title=f"CustomCNN on {data.info.title}: {split} split",
        subtitle=f"run {trained.run_dir} · {len(labels):,} images from {data.source}",
    )


def format_confusion(confusion, per_class, classes) -> str:
    width = max(6, *(len(str(v)) for row in confusion for v in row)) + 1
    names = [c if c == str(i) else f"{c} {i}" for i, c in enumerate(classes)]
    label_w = max(len(c) for c in names)
    head = " " * label_w + "".join(f"{i:>{width}}" for i in range(len(classes)))
    lines = ["confusion matrix (rows: true class, columns: predicted) and per-class accuracy", head]
    for i, (row, acc) in enumerate(zip(confusion, per_class, strict=True)):
        cells = "".join(f"{v:>{width}}" for v in row)
        lines.append(f"{names[i]:>{label_w}}{cells}   {100 * acc:6.2f}%")
    return "\n".join(lines)


def _add_data(sub) -> None:
    d = sub.add_parser("data", help="find, download and verify datasets")
    dsub = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    dl = dsub.add_parser("list", help="where each dataset is found")
    dl.add_argument("--data-dir", metavar="DIR")
    dl.set_defaults(func=_cmd_data_list)
    df = dsub.add_parser("fetch", help="download a dataset into the user cache")
    _data_args(df, "mnist", "mnist")
    df.add_argument(
        "--mirror",
        action="append",
        metavar="URL",
        help="base URL to download from instead of the built-in mirrors (repeatable)",
    )
    df.add_argument(
        "--force",
        action="store_true",
        help="download into the cache even if the dataset is found elsewhere",
    )
    df.set_defaults(func=_cmd_data_fetch)
    dv = dsub.add_parser("verify", help="check a dataset's files against their checksums")
    _data_args(dv, "mnist", "mnist")
    dv.set_defaults(func=_cmd_data_verify)


def _cmd_data_list(args) -> int:
    from .datasets import DATASETS, candidate_dirs, locate
    from .download import verify_folder

    for info in DATASETS.values():
        folder = locate(info, args.data_dir)
        if folder is None:
            where = "not found (downloaded on first use, or by `mnist-cnn data fetch`)"
        else:
            bad = [c for c in verify_folder(info, folder) if not c.ok]
            verdict = "verified" if not bad else f"{len(bad)} files FAIL verification"
            where = f"{folder} ({verdict})"
        searched = ", ".join(str(p) for p in candidate_dirs(info, args.data_dir))
        print(f"{info.name:<14} {info.title}")
        print(f"{'':<14} found: {where}")
        print(f"{'':<14} searched: {searched}")
    return 0


def _cmd_data_fetch(args) -> int:
    from .datasets import cache_dir, get_dataset_info, locate
    from .download import fetch, verify_folder

    info = get_dataset_info(args.dataset)
    folder = locate(info, args.data_dir)
    if folder is not None and not args.force:
        bad = [c for c in verify_folder(info, folder) if not c.ok]
        if not bad:
            print(f"{info.name}: already present and verified in {folder}")
            return 0
        if folder != cache_dir(info.name):
            names = ", ".join(f"{c.path.name if c.path else c.key} ({c.detail})" for c in bad)
            raise MnistCnnError(
                f"{info.name} in {folder} fails verification: {names}; "
                "--force downloads a good copy into the cache"
            )
    dest = fetch(info, data_dir=args.data_dir, mirrors=args.mirror, progress=_progress())
    checks = verify_folder(info, dest)
    print(f"{info.name}: downloaded and verified in {dest}")
    for c in checks:
        print(f"  {c.path.name if c.path else c.key:<30} {c.detail}")
    return 0


def _cmd_data_verify(args) -> int:
    from .datasets import get_dataset_info, locate, not_found_message
    from .download import verify_folder

    info = get_dataset_info(args.dataset)
    folder = locate(info, args.data_dir)
    if folder is None:
        raise MnistCnnError(not_found_message(info, args.data_dir, "so nothing was verified"))
    checks = verify_folder(info, folder)
    print(f"{info.name} in {folder}")
    for c in checks:
        mark = "ok " if c.ok else "BAD"
        print(f"  {mark} {c.path.name if c.path else c.key:<30} {c.detail}")
    bad = [c for c in checks if not c.ok]
    if bad:
        print(f"{len(bad)} of {len(checks)} files failed verification", file=sys.stderr)
        return 1
    return 0


def _image_args(p, saved_help: str) -> None:
    """What ``predict`` and ``read`` share: a model, images, and how they are read."""
    _run_arg(p)
    p.add_argument(
        "images",
        metavar="IMAGE",
        nargs="+",
        help="image file, directory (searched recursively) or - for stdin",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--save-preprocessed", metavar="DIR", help=saved_help)
    p.add_argument(
        "--max-pixels",
        type=checked(int, COUNT),
        default=defaults.MAX_IMAGE_PIXELS,
        metavar="N",
        help=f"refuse larger images (default {defaults.MAX_IMAGE_PIXELS // 10**6} megapixels)",
    )
    p.add_argument("--device", choices=DEVICES, default="cpu")


def _predictor_and_items(args):
    """The model and the images named on a ``predict`` or ``read`` command line."""
    from .device import select_device
    from .predict import Predictor, expand_inputs

    device = "cpu" if args.run.endswith(".onnx") else select_device(args.device)
    predictor = Predictor.from_run(args.run, device=device, max_pixels=args.max_pixels)
    return predictor, expand_inputs(args.images, stdin=sys.stdin)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="classify your own images (photos, scans, drawings)")
    _image_args(p, "write the 28x28 images the model saw, as PNG")
    p.add_argument(
        "--top-k", type=checked(int, COUNT), default=3, metavar="K", help="classes to show (3)"
    )
    p.set_defaults(func=_cmd_predict)


def _cmd_predict(args) -> int:
    predictor, items = _predictor_and_items(args)
    keep = None
    if args.save_preprocessed:
        keep = _preprocessed_saver(Path(args.save_preprocessed))
    records = predictor.predict_items(items, top_k=args.top_k, keep=keep)
    if args.json:
        for r in records:
            print(json.dumps(r, ensure_ascii=False))
    else:
        print(format_predictions(records))
    failed = sum("error" in r for r in records)
    if failed and not args.json:
        print(f"{failed} of {len(records)} images could not be used", file=sys.stderr)
    return 1 if failed else 0


def _add_read(sub) -> None:
    r = sub.add_parser("read", help="read whole handwritten numbers (several digits in one image)")
    _image_args(r, "write each digit the model saw, as PNG (<image>-<n>.png)")
    r.set_defaults(func=_cmd_read)


def _cmd_read(args) -> int:
    predictor, items = _predictor_and_items(args)
    keep = None
    if args.save_preprocessed:
        save = _preprocessed_saver(Path(args.save_preprocessed))

        def keep(item, pres) -> None:  # each digit as <image>-<n>.png, left to right
            for n, pre in enumerate(pres, 1):
                name = Path(item.name).stem if item.name not in (None, "-") else "stdin"
                save(replace(item, name=f"{name}-{n}"), pre)

    records = predictor.read_items(items, keep=keep)
    for r in records:
        if args.json:
            print(json.dumps(r, ensure_ascii=False))
        elif "error" in r:
            message = r["error"].removeprefix(f"{r['file']}: ") if r["file"] else r["error"]
            print(f"{r['file'] or 'image'}: error: {message}")
        else:
            print(f"{r['file']}: {r['number']}  ({100 * r['probability']:.1f}%)")
    failed = sum("error" in r for r in records)
    if failed and not args.json:
        print(f"{failed} of {len(records)} images could not be used", file=sys.stderr)
    return 1 if failed else 0


def _add_serve(sub) -> None:
    v = sub.add_parser("serve", help="an HTTP API and a page to draw digits on (FastAPI)")
    _run_arg(v)
    count = checked(int, COUNT)
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1)")
    v.add_argument(
        "--port",
        type=checked(int, defaults.SERVE_PORT),
        default=8000,
        help="port (8000; 0 picks a free one)",
    )
    mb = defaults.SERVE_MAX_BODY / 1024 / 1024
    v.add_argument(
        "--max-body",
        type=checked(float, defaults.SERVE_MAX_BODY_MB),
        default=mb,
        metavar="MB",
        help=f"largest request body in MB ({mb:g})",
    )
    v.add_argument(
        "--max-pixels",
        type=count,
        default=defaults.SERVE_MAX_PIXELS,
        metavar="N",
        help="refuse uploaded images with more pixels "
        f"({defaults.SERVE_MAX_PIXELS // 10**6} megapixels)",
    )
    ms = defaults.SERVE_BATCH_WAIT * 1000
    v.add_argument(
        "--batch-wait",
        type=checked(float, defaults.SERVE_BATCH_WAIT_MS),
        default=ms,
        metavar="MS",
        help=f"wait up to MS ms for concurrent requests to batch ({ms:g})",
    )
    v.add_argument(
        "--max-batch",
        type=count,
        default=defaults.SERVE_MAX_BATCH,
        metavar="N",
        help=f"most images in one forward pass ({defaults.SERVE_MAX_BATCH})",
    )
    v.add_argument(
        "--workers",
        type=count,
        metavar="N",
        help="processes serving, each with the model (one per core)",
    )
    v.add_argument(
        "--threads",
        type=count,
        metavar="N",
        help="threads for the model (default: the runtime's choice)",
    )
    v.add_argument("--device", choices=DEVICES, default="cpu")
    v.add_argument(
        "--runtime",
        choices=defaults.SERVE_RUNTIMES,
        default="auto",
        help="auto (default): a run directory on ONNX Runtime, exported in memory "
        "and checked at start, when it is installed",
    )
    v.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated names the Host header may carry, '*' for any "
        "(default: localhost,127.0.0.1,::1 on loopback, else any)",
    )
    v.add_argument(
        "--max-connections",
        type=count,
        metavar="N",
        help="open connections at most; more get 503 (default: from the open-file limit)",
    )
    kb = defaults.SERVE_MAX_HEADER_BYTES // 1024
    v.add_argument(
        "--max-header",
        type=count,
        default=kb,
        metavar="KB",
        help=f"largest request line and headers; more get 431 ({kb})",
    )
    timeout = checked(float, defaults.SERVE_TIMEOUT)
    v.add_argument(
        "--header-timeout",
        type=timeout,
        default=defaults.SERVE_HEADER_TIMEOUT,
        metavar="S",
        help=f"seconds for the request line and headers, else 408 "
        f"({defaults.SERVE_HEADER_TIMEOUT:g})",
    )
    v.add_argument(
        "--body-timeout",
        type=timeout,
        default=defaults.SERVE_BODY_TIMEOUT,
        metavar="S",
        help=f"seconds a request body may stall, else 408 ({defaults.SERVE_BODY_TIMEOUT:g})",
    )
    v.set_defaults(func=_cmd_serve)


def _cmd_serve(args) -> int:
    from .device import select_device

    try:
        from .serve import serve
    except ImportError as e:
        raise MnistCnnError(
            f"serving needs FastAPI and uvicorn ({e.name} is missing): "
            "pip install 'mnist-cnn[serve]'"
        ) from None
    hosts = None
    if args.allowed_hosts is not None:
        hosts = [h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
        if not hosts:
            raise MnistCnnError("--allowed-hosts needs at least one name (or '*')")
    device = "cpu" if args.run.endswith(".onnx") else select_device(args.device)
    serve(
        args.run,
        host=args.host,
        port=args.port,
        workers=args.workers,
        device=device,
        threads=args.threads,
        max_body=int(args.max_body * 1024 * 1024),
        max_pixels=args.max_pixels,
        batch_wait=args.batch_wait / 1000,
        max_batch=args.max_batch,
        runtime=args.runtime,
        allowed_hosts=hosts,
        max_connections=args.max_connections,
        max_header_bytes=args.max_header * 1024,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
    )
    return 0


def _preprocessed_saver(folder: Path):
    from PIL import Image

    from .files import atomic_write

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistCnnError(f"--save-preprocessed {folder}: {e.strerror}") from None
    used: set[str] = set()

    def save(item, pre) -> None:
        stem = Path(item.name).stem if item.name not in (None, "-") else "stdin"
        name, n = f"{stem}.png", 1
        while name in used:
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        image = Image.fromarray(pre.to_uint8(), "L")
        atomic_write(folder / name, lambda f: image.save(f, format="PNG"))

    return save


def format_predictions(records: list[dict]) -> str:
    width = max([4] + [len(r["file"] or "") for r in records])
    lines = [f"{'file':<{width}}  {'prediction':<14} {'prob':>6}  top-k"]
    for r in records:
        if "error" in r:
            lines.append(f"{r['file'] or '':<{width}}  error: {r['error']}")
            continue
        top = "  ".join(f"{t['class']} {100 * t['probability']:.1f}%" for t in r["top_k"])
        label = f"{r['class']}{' (unsure)' if r.get('unsure') else ''}"
        lines.append(
            f"{r['file'] or '':<{width}}  {label:<14} {100 * r['probability']:5.1f}%  {top}"
        )
    return "\n".join(lines)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="ONNX (fp32 or int8) or a torch.export program, checked")
    _run_arg(x, "run directory, or a model.safetensors in one")
    x.add_argument(
        "--format",
        choices=defaults.EXPORT_FORMATS,
        default="onnx",
        help="onnx (default; ONNX Runtime, no PyTorch needed) or exported-program "
        "(torch.export.save)",
    )
    x.add_argument(
        "--quantize",
        choices=defaults.QUANTIZATIONS,
        help="static int8 quantization calibrated on training images (onnx only)",
    )
    x.add_argument("--output", "-o", required=True, metavar="FILE")
    x.add_argument("--data-dir", metavar="DIR", help="where the run's dataset is (for the check)")
    x.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    import torch

    from .checkpoint import load_run
    from .download import load_dataset
    from .export import ParityError, check_request, export

    trained = load_run(args.run)
    check_request(args.output, args.format, args.quantize)  # before loading any data
    data = load_dataset(trained.dataset, args.data_dir, progress=_progress())
    pick = torch.randperm(len(data.train_images), generator=torch.Generator().manual_seed(0))
    try:
        check = export(
            trained,
            args.output,
            fmt=args.format,
            quantize=args.quantize,
            test_images=data.test_images,
            test_labels=data.test_labels,
            calibration_images=data.train_images[pick[:1000]],
        )
    except ParityError as e:
        print(f"mnist-cnn: export check failed, nothing written: {e}", file=sys.stderr)
        return 1
    what = f"{args.format}{' int8' if args.quantize else ''}"
    size = Path(args.output).stat().st_size
    print(f"wrote {args.output} ({what}, {size / 1e6:.2f} MB)")
    print(f"check against PyTorch on {check.images:,} test images: {check.describe()}")
    return 0


def _add_summary(sub) -> None:
    s = sub.add_parser("summary", help="each layer's shape, parameters, mult-adds, receptive field")
    s.add_argument("run", metavar="RUN", nargs="?", help="a trained run (default: a new model)")
    s.add_argument("--json", action="store_true", help="the numbers as JSON")
    s.set_defaults(func=_cmd_summary)


def _cmd_summary(args) -> int:
    from .anatomy import format_anatomy, layer_table, weight_sharing
    from .model import CustomCNN, count_parameters

    if args.run:
        from .checkpoint import load_run

        model = load_run(args.run).model
    else:
        model = CustomCNN()
    if args.json:
        layers = [{**r.__dict__, "output_shape": list(r.output_shape)} for r in layer_table(model)]
        sharing = [
            {**s.__dict__, "input_shape": list(s.input_shape), "output_shape": list(s.output_shape)}
            for s in weight_sharing(model)
        ]
        total = {
            "parameters": count_parameters(model),
            "mult_adds": sum(r["mult_adds"] for r in layers),
        }
        print(json.dumps({"layers": layers, "total": total, "weight_sharing": sharing}))
        return 0
    print(format_anatomy(model))
    return 0


def _add_explain(sub) -> None:
    xp = sub.add_parser("explain", help="filters, feature maps and evidence for one image (HTML)")
    _run_arg(xp, "run directory or a model.safetensors in one")
    xp.add_argument("image", metavar="IMAGE", help="an image file, or - for stdin")
    xp.add_argument("--out", required=True, metavar="DIR", help="where index.html and PNGs go")
    xp.add_argument(
        "--top-k", type=checked(int, COUNT), default=5, metavar="K", help="classes to list (5)"
    )
    xp.add_argument("--device", choices=DEVICES, default="cpu")
    xp.set_defaults(func=_cmd_explain)


def _cmd_explain(args) -> int:
    from .checkpoint import load_run
    from .device import select_device
    from .explain import explain
    from .predict import Predictor, expand_inputs

    if args.run.endswith(".onnx"):
        raise MnistCnnError("explain needs a run directory (its PyTorch weights), not an .onnx")
    if Path(args.image).is_dir():
        raise MnistCnnError(f"{args.image}: explain takes one image, not a directory")
    trained = load_run(args.run, device=select_device(args.device))
    item = expand_inputs([args.image], stdin=sys.stdin)[0]
    try:
        pre = Predictor(trained).preprocess(item.source)  # as predict does, in the run's style
    except MnistCnnError as e:
        message = str(e)
        raise MnistCnnError(
            message if message.startswith(args.image) else f"{args.image}: {message}"
        ) from None
    name = Path(args.image).name if args.image != "-" else "stdin"
    record = explain(trained, pre, args.out, name=name, top_k=args.top_k)
    print(f"{name}: {record['class']} ({100 * record['probability']:.1f}%)")
    print(f"wrote {Path(args.out) / 'index.html'} and {len(record['images'])} pictures")
    return 0


def _add_probe(sub) -> None:
    pr = sub.add_parser("probe", help="test accuracy as the test images shift or rotate")
    _run_arg(pr, "run directory or a model.safetensors in one")
    kind = pr.add_mutually_exclusive_group(required=True)
    kind.add_argument(
        "--shift",
        action="store_true",
        help="-6..+6 pixels, each axis, on the digits whose ink stays in the "
        "frame (and, apart, all digits with their ink cut off)",
    )
    kind.add_argument("--rotate", action="store_true", help="-45..+45 degrees in steps of 5")
    pr.add_argument("--out", metavar="DIR", help="also write the plot and the numbers here")
    pr.add_argument(
        "--limit", type=checked(int, COUNT), metavar="N", help="use the first N test images"
    )
    pr.add_argument("--data-dir", metavar="DIR", help="where the dataset is")
    pr.add_argument("--device", choices=DEVICES, default="auto")
    pr.set_defaults(func=_cmd_probe)


def _cmd_probe(args) -> int:
    from .checkpoint import load_run
    from .device import select_device
    from .download import load_dataset
    from .probe import format_probe, probe_rotate, probe_shift, write_probe

    if args.out:  # a folder that cannot be written is said now, not after the probe
        from .report import prepare_output

        prepare_output(args.out)
    trained = load_run(args.run, device=select_device(args.device))
    data = load_dataset(trained.dataset, args.data_dir, progress=_progress())
    images, labels = data.test_images, data.test_labels
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    images = images.reshape(len(images), 1, *images.shape[-2:])
    probe = probe_shift if args.shift else probe_rotate
    result = probe(trained.model, images, labels, trained.mean, trained.std)
    print(f"{trained.run_dir}: {trained.dataset} test accuracy, {len(images):,} images")
    print(format_probe(result))
    if args.out:
        print(f"wrote {write_probe(result, args.out)}")
    return 0
