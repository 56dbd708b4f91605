"""Defaults, bounds and choices of what users set, once, for the library and the CLI's parser.

Light on purpose: no torch, numpy or FastAPI here, so that ``mnist-cnn --help`` shows these
values without importing what uses them. Training's own settings are in recipes.py (and the
TrainConfig defaults); each module that uses a value below imports it from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# predict and read: larger images are refused before decoding (decompression bombs)
MAX_IMAGE_PIXELS = 40_000_000

# the service (serve): what one request may carry, and how requests are batched
SERVE_MAX_BODY = 5 * 1024 * 1024  # bytes
SERVE_MAX_PIXELS = 16_000_000  # a 16-megapixel phone photo; larger uploads are refused
SERVE_BATCH_WAIT = 0.002  # seconds to wait for more requests while others are arriving
SERVE_MAX_BATCH = 64  # images in one forward pass
SERVE_RUNTIMES = ("auto", "onnxruntime", "pytorch")

# the service's connection limits (connections.py)
SERVE_MAX_HEADER_BYTES = 32 * 1024
SERVE_HEADER_TIMEOUT = 10.0  # seconds for the request line and headers
SERVE_BODY_TIMEOUT = 10.0  # seconds without a byte of the body

# training across processes under torchrun (distributed.py)
DIST_BACKENDS = ("auto", "gloo", "nccl")
DIST_TIMEOUT = 300  # seconds a collective may wait for a missing rank before failing

# export
EXPORT_FORMATS = ("onnx", "exported-program")
QUANTIZATIONS = ("int8",)


@dataclass(frozen=True)
class Range:
    """The numbers a setting takes, and the words that say so: ``lr`` "must be a positive
    number". The library checks values against it; the CLI's parser checks flags with it."""

    low: float
    high: float = math.inf
    says: str = ""  # what "must be ..." goes on with
    low_open: bool = False  # low itself is excluded
    high_open: bool = False

    def __contains__(self, value) -> bool:  # NaN is in no range
        above = self.low < value if self.low_open else self.low <= value
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    @property
    def refusal(self) -> str:
        return f"must be {self.says}"


def at_least(low: int) -> Range:
    return Range(low, says=f"at least {low}")


def between(low: float, high: float, unit: str = "", *, low_open: bool = False) -> Range:
    shown = [f"{x:g}" if isinstance(x, float) else str(x) for x in (low, high)]
    return Range(low, high, f"between {shown[0]} and {shown[1]}{unit}", low_open=low_open)


POSITIVE = Range(0, math.inf, "a positive number", low_open=True, high_open=True)  # finite
FRACTION = Range(0, 1, "in [0, 1)", high_open=True)
COUNT = at_least(1)

# the service's flags, in the units the CLI takes them in
SERVE_PORT = between(0, 65535)  # 0 picks a free port
SERVE_MAX_BODY_MB = between(0.001, 1024, " MB")
SERVE_BATCH_WAIT_MS = between(0, 1000, " ms")
SERVE_TIMEOUT = between(0.1, 3600, " s")  # --header-timeout, --body-timeout
DIST_TIMEOUT_RANGE = between(0, 86_400, " seconds", low_open=True)
