"""Data augmentation on whole batches of tensors, on the training device (no PIL, no loop)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(
    images: torch.Tensor,
    *,
    max_shift: float = 2.0,
    max_degrees: float = 10.0,
    max_scale: float = 0.1,
) -> torch.Tensor:
    """Shift (pixels), rotate (degrees) and scale each image of (N, C, H, W) at random.

    Pixels that come in from outside the image are 0: apply it before normalizing, to images
    in 0..1 whose background is 0. Draws from the default generator of the images' device.
    """
    n, _, h, w = images.shape
    device = images.device

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, device=device) * 2 - 1) * bound

    angle = uniform(math.radians(max_degrees))
    scale = 1 + uniform(max_scale)
    # affine_grid maps output coordinates in [-1, 1] to input coordinates: inverse transform
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [
            torch.stack([cos, -sin, uniform(2 * max_shift / w)], dim=1),
            torch.stack([sin, cos, uniform(2 * max_shift / h)], dim=1),
        ],
        dim=1,
    )  # (N, 2, 3)
    grid = F.affine_grid(theta.to(images.dtype), list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
