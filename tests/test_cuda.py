"""The GPU path on a real CUDA device: the same functions as on the CPU, bitwise repeatable when
asked. Skipped, with the reason, where PyTorch sees no CUDA device (CI has none; run them with
`benchmarks/gpu_check.sh` on a GPU machine)."""

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from mnist_cnn import CustomCNN, Predictor, TrainConfig, evaluate, load_dataset, load_run, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to PyTorch"),
]


def config(data, tmp_path, **kw) -> TrainConfig:
    base = dict(data_dir=str(data), out=str(tmp_path / "runs"), epochs=2, batch_size=50,
                device="cuda")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def weights(run_dir):
    return load_file(run_dir / "model.safetensors")


def test_deterministic_cuda_runs_are_bitwise_equal_and_resume_exactly(tiny_data, tmp_path):
    a = train(config(tiny_data, tmp_path, name="a", epochs=3, deterministic=True, augment=True))
    b = train(config(tiny_data, tmp_path, name="b", epochs=3, deterministic=True, augment=True))
    part = train(config(tiny_data, tmp_path, name="part", epochs=1, deterministic=True,
                        augment=True))  # fmt: skip
    resumed = train(config(tiny_data, tmp_path, name="part", epochs=3, deterministic=True,
                           augment=True), resume=part.run_dir)  # fmt: skip
    wa, wb, wr = weights(a.run_dir), weights(b.run_dir), weights(resumed.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert all(torch.equal(wa[k], wr[k]) for k in wa)
    assert [r["test_accuracy"] for r in a.history] == [r["test_accuracy"] for r in resumed.history]


def test_cuda_model_computes_the_cpu_models_function():
    """Same weights on both devices. cuDNN convolutions may use TF32 (10-bit mantissa), so the
    bound is TF32's rounding on logits of size ~10, not fp32's."""
    torch.manual_seed(0)
    cpu = CustomCNN().eval()
    gpu = CustomCNN().cuda().to(memory_format=torch.channels_last).eval()
    gpu.load_state_dict(cpu.state_dict())
    x = torch.randn(64, 1, 28, 28)
    with torch.no_grad():
        expected = cpu(x)
        got = gpu(x.cuda().contiguous(memory_format=torch.channels_last)).cpu()
    torch.testing.assert_close(got, expected, rtol=2e-3, atol=2e-3)
    assert torch.equal(got.argmax(1), expected.argmax(1))


def test_bf16_autocast_on_cuda_is_the_fp32_function_within_bf16_rounding():
    torch.manual_seed(0)
    model = CustomCNN().cuda().eval()
    x = torch.randn(64, 1, 28, 28, device="cuda")
    y = torch.randint(0, 10, (64,), device="cuda")
    with torch.no_grad():
        fp32 = model(x)
        with torch.autocast("cuda", torch.bfloat16):
            bf16 = model(x).float()
    # bf16 keeps 8 significant bits: relative error ~2^-8 per operation, a few % at the logits
    scale = fp32.abs().max()
    assert (bf16 - fp32).abs().max() <= 0.05 * scale
    with torch.autocast("cuda", torch.bfloat16):
        loss = F.cross_entropy(model(x).float(), y)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_a_cuda_run_loads_evaluates_and_predicts_like_on_the_cpu(tiny_data, tmp_path):
    run = train(config(tiny_data, tmp_path, name="r")).run_dir
    data = load_dataset("mnist", tiny_data)
    on_gpu, on_cpu = load_run(run, device="cuda"), load_run(run, device="cpu")
    scores = [
        evaluate(t.model, data.test_images, data.test_labels, mean=t.mean, std=t.std)
        for t in (on_gpu, on_cpu)
    ]
    assert scores[0].accuracy == scores[1].accuracy
    assert scores[0].loss == pytest.approx(scores[1].loss, rel=1e-2)
    images = data.test_images[:20].numpy()
    labels = [[r["label"] for r in Predictor.from_run(run, device=d).predict(images)]
              for d in ("cuda", "cpu")]  # fmt: skip
    assert labels[0] == labels[1]


def test_bf16_and_compiled_training_on_cuda_learn(tiny_data, tmp_path):
    fp32 = train(config(tiny_data, tmp_path, name="fp32", epochs=3))
    bf16 = train(config(tiny_data, tmp_path, name="bf16", epochs=3, precision="bf16"))
    compiled = train(config(tiny_data, tmp_path, name="c", epochs=3, precision="bf16",
                            compile=True))  # fmt: skip
    for result in (fp32, bf16, compiled):
        assert result.final["test_accuracy"] >= 0.9  # the generated classes are easy
    assert abs(bf16.final["test_loss"] - fp32.final["test_loss"]) < 0.1
