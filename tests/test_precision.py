"""--precision auto: bf16 autocast exactly where the device computes bf16 natively, fp32 weights."""

import json

import pytest
import torch
import torch.nn.functional as F

from mnist_cnn import CustomCNN, TrainConfig, load_run, train
from mnist_cnn import device as device_module
from mnist_cnn.device import cpu_bf16_features, cpuinfo_flags, resolve_precision
from mnist_cnn.recipes import RECIPES

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
SAPPHIRE_RAPIDS = "processor\t: 0\nflags\t\t: fpu avx2 avx512f amx_bf16 avx512_bf16 amx_tile\n"
ZEN3 = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


@pytest.fixture
def cpu_has(monkeypatch):
    """Fake the CPU's bf16 features: cpu_has("amx_bf16"), or cpu_has() for none."""

    def fake(*flags):
        monkeypatch.setattr(device_module, "cpu_bf16_features", lambda: flags)

    return fake


@pytest.fixture
def cuda_bf16(monkeypatch):
    def fake(supported: bool):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation: supported)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")

    return fake


@pytest.mark.parametrize("flags", [("amx_bf16",), ("avx512_bf16",), ("amx_bf16", "avx512_bf16")])
def test_auto_is_bf16_on_a_cpu_with_amx_or_avx512_bf16(cpu_has, flags):
    cpu_has(*flags)
    precision, why = resolve_precision("auto", CPU)
    assert precision == "bf16" and all(flag in why for flag in flags)


def test_auto_is_fp32_on_a_cpu_without_them(cpu_has):
    cpu_has()
    assert resolve_precision("auto", CPU)[0] == "fp32"


@pytest.mark.parametrize("native", [True, False])
def test_fp32_and_bf16_stay_as_asked_whatever_the_cpu(cpu_has, native):
    cpu_has(*(("amx_bf16",) if native else ()))
    assert resolve_precision("fp32", CPU)[0] == "fp32"
    precision, why = resolve_precision("bf16", CPU)
    assert precision == "bf16" and ("emulated" in why) != native


@pytest.mark.parametrize("supported", [True, False])
def test_auto_on_cuda_follows_native_bf16_support(cuda_bf16, supported):
    cuda_bf16(supported)
    assert resolve_precision("auto", CUDA)[0] == ("bf16" if supported else "fp32")


def test_auto_is_fp32_on_mps(cpu_has):
    cpu_has("amx_bf16")  # the CPU's features say nothing about another device
    assert resolve_precision("auto", MPS)[0] == "fp32"


@pytest.mark.parametrize(
    "text, found",
    [(SAPPHIRE_RAPIDS, ("amx_bf16", "avx512_bf16")), (ZEN3, ()), (GRAVITON3, ()), ("", ())],
)
def test_linux_cpuinfo_is_read_when_pytorch_has_no_probe(monkeypatch, tmp_path, text, found):
    (tmp_path / "cpuinfo").write_text(text)
    monkeypatch.setattr(device_module, "CPUINFO", tmp_path / "cpuinfo")
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")
    cpu_bf16_features.cache_clear()
    try:
        assert cpu_bf16_features() == found
    finally:
        cpu_bf16_features.cache_clear()


def test_cpuinfo_flags_reads_x86_and_arm_layouts():
    assert {"amx_bf16", "avx512_bf16"} <= cpuinfo_flags(SAPPHIRE_RAPIDS)
    assert "bf16" in cpuinfo_flags(GRAVITON3) and cpuinfo_flags("no flags here") == set()


def test_pytorch_probe_and_linux_flags_agree_on_this_machine(monkeypatch):
    """Where both sources exist they must name the same features (else one of them is misread)."""
    try:
        text = device_module.CPUINFO.read_text()
    except OSError:
        pytest.skip("no /proc/cpuinfo on this system")
    flags = cpuinfo_flags(text)
    if not flags & {"avx512f", "avx2"}:
        pytest.skip("not an x86 Linux machine")
    assert set(cpu_bf16_features()) == {f for f in ("amx_bf16", "avx512_bf16") if f in flags}


def test_fast_and_best_use_auto_and_the_reference_stays_fp32():
    assert TrainConfig.from_recipe("reference").precision == "fp32"
    assert TrainConfig().precision == "fp32"
    assert RECIPES["fast"]["precision"] == "auto"
    assert TrainConfig.from_recipe("best").precision == "auto"
    assert TrainConfig.from_recipe("fast", precision="fp32").precision == "fp32"


def _step(model, x, y, bf16: bool):
    """One training step's forward and backward, as training.py takes it; logits and grads."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        logits = model(x)
    F.cross_entropy(logits.float(), y, label_smoothing=0.1).backward()
    return logits, {name: p.grad.clone() for name, p in model.named_parameters()}


def _relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def _compare(grads: dict, reference: dict) -> tuple[float, float]:
    """The whole gradient's relative error, and the least cosine similarity of one layer's."""
    whole = _relative_error(torch.cat([g.flatten() for g in grads.values()]),
                            torch.cat([g.flatten() for g in reference.values()]))  # fmt: skip
    cosines = [
        F.cosine_similarity(grads[k].flatten(), g.flatten(), dim=0) for k, g in reference.items()
    ]
    return whole, float(min(cosines))


def test_a_bf16_step_computes_the_fp32_function_within_bf16_tolerance():
    torch.manual_seed(0)
    model = CustomCNN().to(memory_format=torch.channels_last).eval()  # no dropout: same function
    x = torch.randn(64, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    logits32, grads32 = _step(model, x, y, bf16=False)
    logits16, grads16 = _step(model, x, y, bf16=True)
    assert logits16.dtype == torch.bfloat16  # autocast really computed in bf16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights did not
    assert all(g.dtype == torch.float32 for g in grads16.values())
    # bf16 keeps 8 bits of mantissa (a relative step of 2**-8 = 0.4%): the logits are off by
    # about that; the gradients by a few times more, growing layer by layer backwards (4% for
    # the whole gradient, 13% for conv1's 288 weights, whose sum has much cancellation)
    assert _relative_error(logits16.detach(), logits32.detach()) < 0.02
    whole, least_cosine = _compare(grads16, grads32)
    assert whole < 0.08 and least_cosine > 0.98
    # the tolerance tells functions apart: another batch's gradients are nowhere near
    _, other = _step(model, torch.randn_like(x), y, bf16=False)
    whole, least_cosine = _compare(other, grads32)
    assert whole > 0.2 and least_cosine < 0.9


def _config(data, tmp_path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out=str(tmp_path / "runs"), epochs=1, batch_size=50)
    return TrainConfig(**{**base, **kw})


@pytest.mark.parametrize("native", [True, False])
def test_auto_run_prints_and_saves_what_it_chose_and_keeps_fp32_weights(
    tiny_data, tmp_path, cpu_has, native
):
    cpu_has(*(("amx_bf16",) if native else ()))
    lines = []
    result = train(_config(tiny_data, tmp_path, precision="auto", device="cpu"), log=lines.append)
    chosen = "bf16" if native else "fp32"
    assert any(line.startswith(f"precision: {chosen} (auto: ") for line in lines)
    saved = json.loads((result.run_dir / "config.json").read_text())
    assert (saved["training"]["precision"], saved["precision"]) == ("auto", chosen)
    state = torch.load(result.run_dir / "state.pt", weights_only=True)
    assert all(t.dtype == torch.float32 for t in state["model"].values())
    assert all(
        t.dtype == torch.float32 for t in load_run(result.run_dir).model.state_dict().values()
    )


def test_bf16_training_takes_the_steps_fp32_takes(tiny_data, tmp_path):
    """Through train() itself: the weights move the same way in bf16 as in fp32."""
    runs = {p: train(_config(tiny_data, tmp_path, precision=p, name=p)) for p in ("fp32", "bf16")}
    torch.manual_seed(777)
    start = CustomCNN().state_dict()
    moves = {}
    for p, result in runs.items():
        trained = result.model.state_dict()
        moves[p] = torch.cat([(trained[k] - start[k]).flatten() for k in start])
    assert F.cosine_similarity(moves["bf16"], moves["fp32"], dim=0) > 0.9
    assert abs(runs["bf16"].final["train_loss"] - runs["fp32"].final["train_loss"]) < 0.05


@pytest.mark.parametrize("old_precision", ["fp32", "bf16"])
def test_runs_saved_before_auto_still_load_and_resume(tiny_data, tmp_path, old_precision):
    run = train(_config(tiny_data, tmp_path, precision=old_precision)).run_dir
    config_file = run / "config.json"
    old = json.loads(config_file.read_text())
    del old["precision"]  # configs written before --precision auto have no resolved precision
    config_file.write_text(json.dumps(old))
    assert load_run(run).model is not None
    resumed = train(_config(tiny_data, tmp_path, precision=old_precision, epochs=2), resume=run)
    assert [r["epoch"] for r in resumed.history] == [1, 2]
    saved = json.loads(config_file.read_text())
    assert (saved["training"]["precision"], saved["precision"]) == (old_precision, old_precision)
