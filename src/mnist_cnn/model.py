"""CustomCNN, exactly as the 'CNN with Python' tutorial specifies it. Knows nothing of training.

(N, 1, 28, 28) -> layer1 -> (N, 32, 14, 14) -> layer2 -> (N, 64, 7, 7)
               -> layer3 -> (N, 128, 4, 4) -> flatten (N, 2048)
               -> layer4: fc1 + ReLU + Dropout -> (N, 625) -> layer5: fc2 -> (N, 10) logits
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from torch import nn

ARCHITECTURE = "CustomCNN"


@dataclass(frozen=True)
class ModelConfig:
    """The arguments that rebuild a CustomCNN; stored in every checkpoint's config.json."""

    in_channels: int = 1  # grayscale
    image_size: int = 28  # square inputs, image_size x image_size
    num_classes: int = 10
    dropout: float = 0.5  # the probability of zeroing a unit of layer4, as in the seed

    def to_dict(self) -> dict:
        return asdict(self)


def _conv_block(c_in: int, c_out: int, pool_padding: int = 0) -> nn.Sequential:
    """Conv2d 3x3 (stride 1, padding 1: keeps H, W) -> ReLU -> MaxPool 2x2 (halves H, W)."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=1, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(kernel_size=2, stride=2, padding=pool_padding),
    )


class CustomCNN(nn.Module):
    """Three Conv-ReLU-MaxPool blocks (32, 64, 128 channels), a 625-unit layer, 10 logits."""

    hidden = 625  # units of layer4, as the seed specifies

    def __init__(self, config: ModelConfig | None = None):
        super().__init__()
        self.config = config or ModelConfig()
        c = self.config
        self.layer1 = _conv_block(c.in_channels, 32)  # (N, 32, 14, 14)
        self.layer2 = _conv_block(32, 64)  # (N, 64, 7, 7)
        self.layer3 = _conv_block(64, 128, pool_padding=1)  # (N, 128, 4, 4): 7 -> 4 needs padding
        flat = self._flat_features()  # 4 * 4 * 128 = 2048 for 28x28 inputs
        # As in the lab this seed follows: Xavier-uniform on both Linear weights, right after
        # each is built; everything else keeps PyTorch's default initialization.
        self.fc1 = nn.Linear(flat, self.hidden)
        nn.init.xavier_uniform_(self.fc1.weight)
        self.relu = nn.ReLU()
        self.dropout = nn.Dropout(p=c.dropout)
        self.fc2 = nn.Linear(self.hidden, c.num_classes)
        nn.init.xavier_uniform_(self.fc2.weight)

    def _flat_features(self) -> int:
        c = self.config
        with torch.no_grad():
            probe = torch.zeros(1, c.in_channels, c.image_size, c.image_size)
            return self.layer3(self.layer2(self.layer1(probe))).numel()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalized images (N, C, H, W) -> logits (N, num_classes)."""
        for block in (self.layer1, self.layer2, self.layer3):  # (N, 32|64|128, 14|7|4, ...)
            conv, relu, pool = block
            # Max-pooling and ReLU commute (both are monotonic), so pooling first computes the
            # very same values and gradients as the seed's Conv-ReLU-Pool, with ReLU on a
            # quarter of the elements.
            x = relu(pool(conv(x)))
        x = x.flatten(1)  # (N, 2048)
        x = self.dropout(self.relu(self.fc1(x)))  # (N, 625)
        return self.fc2(x)

    def forward_conv_relu_pool(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` in the seed's literal order, module by module: the same function."""
        x = self.layer3(self.layer2(self.layer1(x))).flatten(1)  # (N, 2048)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes) for normalized images: softmax over the logits,
        in eval mode. Every PyTorch probability in the package is computed here."""
        with eval_mode(self):
            return torch.softmax(self(x), dim=1)

    def named_stages(self) -> list[tuple[str, nn.Module]]:
        """Every step of the network in the seed's order, named "<layer>.<step>": conv, relu and
        pool of each block, then flatten, layer4's fc1, relu and dropout, and layer5's fc2.
        Running them one after another is :meth:`forward_conv_relu_pool`."""
        blocks = (self.layer1, self.layer2, self.layer3)
        return [
            *[
                (f"layer{b}.{step}", module)
                for b, block in enumerate(blocks, start=1)
                for step, module in zip(("conv", "relu", "pool"), block, strict=True)
            ],
            ("flatten", nn.Flatten(1)),
            ("layer4.fc1", self.fc1),
            ("layer4.relu", self.relu),
            ("layer4.dropout", self.dropout),
            ("layer5.fc2", self.fc2),
        ]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode (no dropout) for the block, then back in the mode it was in,
    also when the block raises."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
