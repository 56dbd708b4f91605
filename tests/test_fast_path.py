"""The fast path computes the same function as the plain model; augmentation is what it says."""

import torch
import torch.nn.functional as F

from mnist_cnn import CustomCNN
from mnist_cnn.augment import random_affine


def test_channels_last_model_matches_the_plain_model():
    torch.manual_seed(0)
    plain = CustomCNN()
    fast = CustomCNN().to(memory_format=torch.channels_last)
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(32, 1, 28, 28)
    y = torch.randint(0, 10, (32,))
    plain.eval(), fast.eval()
    out_plain = plain(x)
    out_fast = fast(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(out_fast, out_plain, rtol=1e-4, atol=1e-5)
    F.cross_entropy(out_plain, y).backward()
    F.cross_entropy(out_fast, y).backward()
    for (name, a), b in zip(plain.named_parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_fused_adam_takes_the_same_steps():
    torch.manual_seed(0)
    a, b = CustomCNN(), CustomCNN()
    b.load_state_dict(a.state_dict())
    opt_a = torch.optim.Adam(a.parameters(), lr=1e-3)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-3, fused=True)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    a.eval(), b.eval()
    for _ in range(3):
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pb, pa, rtol=1e-5, atol=1e-5)  # 1% of a step of lr 1e-3


def test_augmentation_with_no_range_is_the_identity():
    x = torch.rand(4, 1, 28, 28)
    y = random_affine(x, max_shift=0, max_degrees=0, max_scale=0)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)


def test_augmentation_moves_ink_but_keeps_the_background():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    torch.manual_seed(1)
    y = random_affine(x)
    assert y.shape == x.shape
    assert not torch.allclose(y, x)
    assert y[:, :, :2].abs().max() == 0 and y[:, :, :, -2:].abs().max() == 0  # borders stay black
    mass = y.sum(dim=(1, 2, 3)) / x.sum(dim=(1, 2, 3))
    assert mass.min() > 0.75 and mass.max() < 1.3  # scaled by at most 10% each way
    torch.manual_seed(1)
    assert torch.equal(random_affine(x), y), "seeded like everything else"


def test_largest_shift_moves_ink_by_max_shift_pixels(monkeypatch):
    x = torch.zeros(3, 1, 28, 28)
    x[:, 0, 14, 14] = 1.0
    monkeypatch.setattr(torch, "rand", lambda n, device=None: torch.ones(n))  # extreme draws
    y = random_affine(x, max_shift=1.0, max_degrees=0.0, max_scale=0.0)
    # the grid samples one pixel right and one down, so the ink moves one pixel up and left
    assert [int(i) for i in y[:, 0].flatten(1).argmax(dim=1)] == [13 * 28 + 13] * 3
