"""Flags are the CLI's, rules the library's: field names become flags in one place, the parser
checks ranges with the library's own, and the resume rule holds for library callers too."""

import json
import subprocess
import sys
from dataclasses import asdict, fields, replace

import pytest

from mnist_cnn import ConfigError, TrainConfig, train
from mnist_cnn.cli import build_parser, flag, main
from mnist_cnn.export import check_request
from mnist_cnn.recipes import RANGES
from mnist_cnn.training import RESUMABLE


def error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


def options(command: str) -> set[str]:
    """Every option string of one command's parser."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {s for a in sub.choices[command]._actions for s in a.option_strings}


def test_every_field_a_library_error_names_is_a_flag_of_its_command():
    train_flags = options("train")
    for f in fields(TrainConfig):
        assert flag(f.name, "train") in train_flags, f.name
    for field in ("resume", "dist_backend", "dist_timeout"):
        assert flag(field, "train") in train_flags
    for field in ("fmt", "quantize", "output", "data_dir"):  # export.check_request, the data
        assert flag(field, "export") in options("export")
    assert flag("out_dir", "evaluate") == "--report" and "--report" in options("evaluate")
    for command in ("explain", "probe"):
        assert flag("out_dir", command) == "--out" and "--out" in options(command)
    for field in ("host", "runtime", "max_pixels"):  # serve, serve_model
        assert flag(field, "serve") in options("serve")


def test_a_library_error_names_the_field_and_the_cli_the_flag(tmp_path, capsys):
    with pytest.raises(ConfigError) as e:
        check_request(tmp_path / "m.pt2", "exported-program", "int8")
    assert (e.value.field, str(e.value)) == ("quantize", "quantize int8 is for fmt onnx")
    out = tmp_path / "folder"
    out.mkdir()
    with pytest.raises(ConfigError, match="^output .*: is a directory"):
        check_request(out, "onnx", None)

    assert main(["train", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert f"mnist-cnn: error: --data-dir {tmp_path / 'nowhere'}: no such directory" in (
        error_line(capsys)
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--epochs", "0"], "--epochs must be at least 1"),
        (["train", "--batch-size", "-5"], "--batch-size must be at least 1"),
        (["train", "--lr", "0"], "--lr must be a positive number"),
        (["train", "--lr", "inf"], "--lr must be a positive number"),
        (["train", "--lr", "nan"], "--lr must be a positive number"),
        (["train", "--dropout", "1"], "--dropout must be in [0, 1)"),
        (["train", "--label-smoothing", "-0.1"], "--label-smoothing must be in [0, 1)"),
        (["train", "--pairs", "1"], "--pairs must be in [0, 1)"),
        (["train", "--seed", str(2**32)], "--seed must be between 0 and 4294967295"),
        (["train", "--val-size", "-1"], "--val-size must be at least 0"),
        (["train", "--dist-timeout", "0"], "--dist-timeout must be between 0 and 86400 seconds"),
        (["train", "--dist-timeout", "86401"], "--dist-timeout must be between 0 and 86400"),
        (["predict", "r", "x.png", "--top-k", "0"], "--top-k must be at least 1"),
        (["read", "r", "x.png", "--max-pixels", "0"], "--max-pixels must be at least 1"),
        (["probe", "r", "--shift", "--limit", "0"], "--limit must be at least 1"),
        (["serve", "r", "--port", "65536"], "--port must be between 0 and 65535"),
        (["serve", "r", "--max-body", "0"], "--max-body must be between 0.001 and 1024 MB"),
        (["serve", "r", "--batch-wait", "1001"], "--batch-wait must be between 0 and 1000 ms"),
        (["serve", "r", "--body-timeout", "nan"], "--body-timeout must be between 0.1 and 3600 s"),
        (["serve", "r", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_flags_out_of_range_are_usage_errors(argv, message, capsys):
    assert main(argv) == 2
    err = error_line(capsys)
    assert err.startswith(f"mnist-cnn {argv[0]}: error: {message}"), err


def test_flags_at_their_limits_are_taken_with_their_types():
    parse = build_parser().parse_args
    args = parse(["train", "--dropout", "0", "--seed", str(2**32 - 1), "--dist-timeout", "86400"])
    assert (args.dropout, args.seed, args.dist_timeout) == (0.0, 2**32 - 1, 86400.0)
    assert isinstance(args.seed, int) and isinstance(args.dropout, float)
    args = parse(["serve", "r", "--port", "0", "--batch-wait", "0", "--max-body", "1024"])
    assert (args.port, args.batch_wait, args.max_body) == (0, 0.0, 1024.0)
    defaults = parse(["serve", "r"])
    assert (defaults.max_body, defaults.batch_wait, defaults.max_pixels) == (5, 2, 16_000_000)
    assert parse(["predict", "r", "x"]).max_pixels == 40_000_000


def test_not_a_number_is_still_argparses_own_message(capsys):
    assert main(["train", "--epochs", "many"]) == 2
    assert "argument --epochs: invalid int value: 'many'" in error_line(capsys)


@pytest.mark.parametrize("field", sorted(RANGES))
def test_the_parser_and_trainconfig_refuse_the_same_values_in_the_same_words(field, capsys):
    allowed = RANGES[field]
    outside = allowed.low if allowed.low_open else allowed.low - 1
    kind = float if isinstance(allowed.low, float) or allowed.high == 1 else int
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: kind(outside)}).validate()
    assert e.value.field == field
    if field != "eval_batch_size":  # a hidden flag, checked all the same
        assert main(["train", flag(field), str(outside)]) == 2
        assert f"{flag(field)} {e.value.message}" in error_line(capsys)


def test_resumed_changes_only_what_keeps_the_run_exact():
    saved = TrainConfig(epochs=3, batch_size=50, seed=5)
    resumed = saved.resumed(epochs=6, device="cpu", data_dir="/data", batch_size=50)
    assert resumed == replace(saved, epochs=6, device="cpu", data_dir="/data")
    assert saved.epochs == 3  # the saved settings are left as they were
    with pytest.raises(ConfigError) as e:
        saved.resumed(lr=0.01, epochs=6, seed=6)
    assert e.value.field == "lr"
    message = e.value.describe(flag)
    assert message.startswith("--lr cannot change on resume (the run's is 0.001); nor can --seed")
    assert all(flag(name) in message for name in RESUMABLE)
    with pytest.raises(TypeError, match="no settings colour"):
        saved.resumed(colour="red")


def test_resumed_keeps_a_one_cycle_schedule_to_its_planned_epochs():
    fast = TrainConfig.from_recipe("fast")
    assert fast.resumed(epochs=fast.epochs, device="cpu").device == "cpu"
    with pytest.raises(ConfigError, match="epochs cannot change on resume: .* planned for 2"):
        fast.resumed(epochs=5)


def test_train_refuses_to_resume_with_a_changed_learning_rate(tiny_data, tmp_path, capsys):
    config = TrainConfig(data_dir=str(tiny_data), out=str(tmp_path), epochs=1, batch_size=100)
    run = train(config).run_dir
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="^lr cannot change on resume"):
        train(replace(config, epochs=2, lr=0.01), resume=run)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before
    assert main(["train", "--resume", str(run), "--lr", "0.01"]) == 2
    assert "--lr cannot change on resume" in error_line(capsys)
    two = train(replace(config, epochs=2), resume=run)  # a longer run is a resumable change
    assert [r["epoch"] for r in two.history] == [1, 2]
    saved = json.loads((run / "config.json").read_text())["training"]
    assert saved == asdict(replace(config, epochs=2))


def test_help_shows_the_defaults_without_importing_what_uses_them():
    code = (
        "import sys\n"
        "from mnist_cnn.cli import main\n"
        "for command in ('train', 'serve', 'predict', 'export'):\n"
        "    try:\n"
        "        main([command, '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = {'torch', 'fastapi', 'uvicorn', 'onnxruntime', 'PIL'} & set(sys.modules)\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shown = " ".join(out.stdout.split())  # help wraps with the terminal's width
    assert "(16 megapixels)" in shown and "(default 40 megapixels)" in shown
    assert "missing process (300)" in shown and "{onnx,exported-program}" in shown
