"""Batch augmentations for people's handwriting: shapes, ranges, determinism, what each does."""

import pytest
import torch

from mnist_cnn.augment import (
    augment_batch,
    elastic_field,
    handwriting,
    random_affine,
    stroke_width,
    touching_pairs,
)


def strokes(n=16) -> torch.Tensor:
    """(n, 1, 28, 28) in 0..1: a bright bar, 3 pixels wide, on black."""
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 6:22, 12:15] = 1.0
    return x


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("kind", ["affine", "handwriting", True, False])
def test_every_kind_keeps_shape_dtype_and_range(kind):
    x = strokes()
    y = augment_batch(x, kind)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert y.min() >= 0 and y.max() <= 1 + 1e-6
    if kind is False:
        assert y is x


def test_unknown_kind_is_an_error():
    with pytest.raises(ValueError, match="unknown augmentation"):
        augment_batch(strokes(), "cutout")


def test_a_seed_repeats_a_batch_and_another_seed_does_not():
    x = strokes()
    a, b = handwriting(x, generator=seeded(3)), handwriting(x, generator=seeded(3))
    assert torch.equal(a, b)
    assert not torch.allclose(a, handwriting(x, generator=seeded(4)))
    assert not torch.allclose(a[0], a[1]), "each image draws its own transform"


def test_no_ranges_is_the_identity():
    x = strokes()
    y = handwriting(x, max_shift=0, max_degrees=0, max_scale=0, max_shear=0, thicken=0, thin=0,
                    elastic=0)  # fmt: skip
    torch.testing.assert_close(y, x, rtol=0, atol=1e-5)


def test_stroke_width_thickens_and_thins_within_its_range():
    x = strokes(64)
    thick = stroke_width(x, thicken=1.0, thin=0.0, generator=seeded(0))
    thin = stroke_width(x, thicken=0.0, thin=0.5, generator=seeded(0))
    mass = x.sum(dim=(1, 2, 3))
    # one pixel more on each side of a 3-pixel bar at most: 5/3 of its ink, plus the ends
    assert (thick.sum(dim=(1, 2, 3)) >= mass - 1e-4).all()
    assert (thick.sum(dim=(1, 2, 3)) <= mass * 2.0).all()
    assert (thin.sum(dim=(1, 2, 3)) <= mass + 1e-4).all()
    assert thick.amax(dim=(1, 2, 3)).allclose(torch.ones(64)), "strokes stay as bright"
    assert thin.amax(dim=(1, 2, 3)).allclose(torch.ones(64))
    assert thick.sum() > x.sum() * 1.2 and thin.sum() < x.sum() * 0.95


def test_shear_slants_the_stroke_by_at_most_max_shear():
    x = strokes(32)
    y = random_affine(x, max_shift=0, max_degrees=0, max_scale=0, max_shear=0.4,
                      generator=seeded(1))  # fmt: skip
    cols = torch.arange(28.0)
    centre = (y[:, 0] * cols).sum(dim=2) / y[:, 0].sum(dim=2).clamp(min=1e-6)  # (N, rows)
    slant = (centre[:, 8] - centre[:, 20]).abs()  # 12 rows apart: 12 * shear pixels
    assert slant.max() > 3.0, "some bars lean clearly"
    assert slant.max() <= 12 * 0.4 + 0.3
    assert ((centre[:, 8] + centre[:, 20]) / 2 - 13).abs().max() < 0.6  # about the centre


def test_elastic_field_is_smooth_and_bounded():
    field = elastic_field(8, 28, 28, alpha=1.5, generator=seeded(0))
    assert field.shape == (8, 28, 28, 2)
    pixels = field * 14  # grid units (2 per image width) to pixels
    assert pixels.abs().max() <= 1.5 * 1.3  # bicubic overshoots the coarse draws a little
    assert pixels.abs().max() > 0.5
    step = (pixels[:, 1:] - pixels[:, :-1]).abs().max()
    assert step < 0.5, "neighbours move together: a wobble, not noise"


def ink_box(image: torch.Tensor, level: float = 0.3) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), exclusive, of the pixels above ``level`` in (1, H, W)."""
    rows = torch.nonzero(image[0].amax(dim=1) > level).flatten()
    cols = torch.nonzero(image[0].amax(dim=0) > level).flatten()
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def test_touching_pairs_write_two_digits_side_by_side_in_mnists_box():
    # each a bar 3 pixels wide and 16 tall: a pair is 4-6 wide (overlapping by 0-2, at most
    # the narrower's width less 1), then scaled by 20 / 16
    pairs = touching_pairs(strokes(4), 64, generator=seeded(0))
    assert pairs.shape == (64, 1, 28, 28) and pairs.min() >= 0 and pairs.max() <= 1 + 1e-6
    for pair in pairs:
        top, bottom, left, right = ink_box(pair)
        assert bottom - top == 20, "the longer side fills the 20-pixel box"
        assert 5 <= right - left <= 8
        assert abs((top + bottom) / 2 - 14) <= 1 and abs((left + right) / 2 - 14) <= 1

    blocks = torch.zeros(2, 1, 28, 28)
    blocks[:, :, 9:19, 9:19] = 1.0  # a 10x10 square: side by side, the pair is 17-20 wide
    for pair in touching_pairs(blocks, 32, generator=seeded(1)):
        top, bottom, left, right = ink_box(pair)
        assert right - left == 20 and 9 <= bottom - top <= 12


def test_touching_pairs_take_both_digits_from_the_batch_and_repeat_with_a_seed():
    x = torch.zeros(2, 1, 28, 28)
    x[0, :, 4:24, 13:15] = 1.0  # a 1
    x[1, :, 4:24, 8:20] = 1.0  # a block
    pairs = touching_pairs(x, 200, generator=seeded(5))
    widths = {ink_box(p)[3] - ink_box(p)[2] for p in pairs}
    assert len(widths) >= 3, "1+1, 1+block, block+1 and block+block differ in shape"
    assert torch.equal(pairs, touching_pairs(x, 200, generator=seeded(5)))
