"""CustomCNN, exactly as the 'CNN with Python' tutorial specifies it. Knows nothing of training.

(N, 1, 28, 28) -> layer1 -> (N, 32, 14, 14) -> layer2 -> (N, 64, 7, 7)
               -> layer3 -> (N, 128, 4, 4) -> flatten (N, 2048)
               -> layer4: fc1 + ReLU + Dropout -> (N, 625) -> layer5: fc2 -> (N, 10) logits
"""

from __future__ import annotations

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
        """Class probabilities (N, num_classes): softmax over the logits, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return torch.softmax(self(x), dim=1)
        finally:
            self.train(was_training)

    def stages(self) -> list[tuple[str, str, nn.Module]]:
        """The seed's five layers (plus the flatten) as (name, description, module), in order."""
        return [
            ("layer1", "Conv2d(1->32, 3x3) ReLU MaxPool(2)", self.layer1),
            ("layer2", "Conv2d(32->64, 3x3) ReLU MaxPool(2)", self.layer2),
            ("layer3", "Conv2d(64->128, 3x3) ReLU MaxPool(2, pad 1)", self.layer3),
            ("flatten", "Flatten", nn.Flatten(1)),
            (
                "layer4",
                f"Linear({self.fc1.in_features}->{self.hidden}) ReLU Dropout",
                nn.Sequential(self.fc1, self.relu, self.dropout),
            ),
            ("layer5", f"Linear({self.hidden}->{self.config.num_classes})", self.fc2),
        ]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass(frozen=True)
class LayerSummary:
    name: str
    description: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    parameters: int


def summarize(model: CustomCNN) -> list[LayerSummary]:
    """Each stage's input and output shape and parameter count, computed by running the model."""
    c = model.config
    x = torch.zeros(1, c.in_channels, c.image_size, c.image_size)
    rows = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for name, description, module in model.stages():
            y = module(x)
            rows.append(
                LayerSummary(
                    name,
                    description,
                    tuple(x.shape[1:]),
                    tuple(y.shape[1:]),
                    count_parameters(module),
                )
            )
            x = y
    model.train(was_training)
    return rows


def format_summary(model: CustomCNN) -> str:
    """The summary as text, one line per layer in the seed's '입-출력 (?, ...) » (?, ...)' style."""
    rows = summarize(model)

    def shape(s):
        return "(?, " + ", ".join(str(d) for d in s) + ")"

    lines = [f"{'layer':<8} {'what':<44} {'input -> output':<34} {'params':>10}"]
    for r in rows:
        io = f"{shape(r.input_shape)} -> {shape(r.output_shape)}"
        lines.append(f"{r.name:<8} {r.description:<44} {io:<34} {r.parameters:>10,}")
    total = count_parameters(model)
    lines.append(f"{'total':<8} {'':<44} {'':<34} {total:>10,}")
    return "\n".join(lines)
