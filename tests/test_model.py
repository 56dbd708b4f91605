import math

import pytest
import torch

from mnist_cnn import CustomCNN, ModelConfig, count_parameters, format_summary, summarize
from mnist_cnn.model import eval_mode


def test_parameter_count_matches_the_seed():
    assert count_parameters(CustomCNN()) == 1_379_557


def test_each_layer_has_the_seeds_output_shape():
    shapes = {row.name: row.output_shape for row in summarize(CustomCNN())}
    assert shapes == {
        "layer1": (32, 14, 14),
        "layer2": (64, 7, 7),
        "layer3": (128, 4, 4),
        "flatten": (2048,),
        "layer4": (625,),
        "layer5": (10,),
    }


def test_summary_parameters_add_up_and_print_like_the_seed():
    model = CustomCNN()
    rows = summarize(model)
    assert sum(r.parameters for r in rows) == count_parameters(model)
    text = format_summary(model)
    assert "(?, 1, 28, 28) -> (?, 32, 14, 14)" in text
    assert "(?, 64, 7, 7) -> (?, 128, 4, 4)" in text
    assert "1,379,557" in text


def test_summary_follows_the_model_not_a_table():
    model = CustomCNN(ModelConfig(num_classes=7))
    assert summarize(model)[-1].output_shape == (7,)
    assert count_parameters(model) == 1_379_557 - 3 * 626


def test_state_dict_uses_the_seeds_names():
    names = set(CustomCNN().state_dict())
    assert {
        "layer1.0.weight",
        "layer2.0.bias",
        "layer3.0.weight",
        "fc1.weight",
        "fc2.bias",
    } <= names


def test_forward_returns_logits_and_predict_proba_probabilities():
    model = CustomCNN()
    x = torch.randn(5, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 10)
    model.train()
    probs = model.predict_proba(x)
    assert model.training, "predict_proba must restore the mode it found"
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(5))
    model.eval()
    torch.testing.assert_close(probs, torch.softmax(model(x), dim=1))


def test_linear_weights_are_xavier_uniform_and_biases_default():
    torch.manual_seed(0)
    model = CustomCNN()
    for fc in (model.fc1, model.fc2):
        fan_out, fan_in = fc.weight.shape
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert fc.weight.abs().max() <= bound
        assert fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
        # PyTorch's default bias init is U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        assert fc.bias.abs().max() <= 1 / math.sqrt(fan_in)
    conv = model.layer1[0].weight  # default Kaiming-uniform(a=sqrt(5)): bound 1/sqrt(fan_in)
    assert conv.abs().max() <= 1 / math.sqrt(9)


def test_same_seed_same_weights():
    torch.manual_seed(777)
    a = CustomCNN().state_dict()
    torch.manual_seed(777)
    b = CustomCNN().state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_dropout_is_active_only_in_training_mode():
    model = CustomCNN()
    x = torch.randn(8, 1, 28, 28)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_forward_computes_the_seeds_conv_relu_pool_exactly():
    """forward pools before the ReLU (faster); values and gradients are the seed's, bit for bit."""
    torch.manual_seed(3)
    model = CustomCNN().eval()
    x = torch.randn(16, 1, 28, 28, requires_grad=True)

    def seed_forward(m, x):  # the seed's forward, module by module
        x = m.layer3(m.layer2(m.layer1(x))).view(x.size(0), -1)
        return m.fc2(m.dropout(m.relu(m.fc1(x))))

    ours, theirs = model(x), seed_forward(model, x)
    assert torch.equal(ours, theirs)
    assert torch.equal(model.forward_conv_relu_pool(x), theirs)  # what export and benchmarks use
    g_ours = torch.autograd.grad(ours.square().sum(), [x, *model.parameters()])
    g_theirs = torch.autograd.grad(theirs.square().sum(), [x, *model.parameters()])
    for a, b in zip(g_ours, g_theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_turns_dropout_off_and_restores_the_mode_even_on_an_exception(training):
    model = CustomCNN().train(training)
    x = torch.randn(8, 1, 28, 28)
    with eval_mode(model) as inside:
        assert inside is model and not model.training
        assert torch.equal(model(x), model(x))  # no dropout
    assert model.training is training
    with pytest.raises(RuntimeError, match="boom"), eval_mode(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training is training
    assert all(m.training is training for m in model.modules()), "every submodule restored"


def test_named_stages_run_in_order_compute_the_seeds_forward():
    torch.manual_seed(5)
    model = CustomCNN().eval()
    stages = model.named_stages()
    assert [name for name, _ in stages][:3] == ["layer1.conv", "layer1.relu", "layer1.pool"]
    assert [name for name, _ in stages][-4:] == [
        "layer4.fc1",
        "layer4.relu",
        "layer4.dropout",
        "layer5.fc2",
    ]
    x = torch.randn(4, 1, 28, 28)
    h = x
    for _, module in stages:
        h = module(h)
    assert torch.equal(h, model.forward_conv_relu_pool(x))


def test_the_summary_is_the_layer_table_grouped_by_layer():
    from mnist_cnn import layer_table

    model = CustomCNN(ModelConfig(num_classes=7))
    table, summary = layer_table(model), summarize(model)
    for row in summary:
        steps = [r for r in table if r.name.split(".")[0] == row.name]
        assert row.output_shape == steps[-1].output_shape
        assert row.parameters == sum(r.parameters for r in steps)
    assert [r.description for r in summary] == [
        "Conv2d(1->32, 3x3) ReLU MaxPool(2)",
        "Conv2d(32->64, 3x3) ReLU MaxPool(2)",
        "Conv2d(64->128, 3x3) ReLU MaxPool(2, pad 1)",
        "Flatten",
        "Linear(2048->625) ReLU Dropout",
        "Linear(625->7)",
    ]
