"""Reader for the IDX format of MNIST-style datasets (raw or gzip), with strict validation."""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

import numpy as np

from .errors import MnistCnnError
from .files import open_maybe_gzip

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}


class IdxError(MnistCnnError):
    """An IDX file is not what it claims to be."""


MAX_PAYLOAD = 1 << 31  # bytes: far above any dataset of the family (47 MB), far below trouble


@dataclass(frozen=True)
class IdxHeader:
    """The header of an IDX file: its magic number and dimensions (big-endian int32s)."""

    magic: int
    dims: tuple[int, ...]  # (count, rows, cols) for images, (count,) for labels

    @property
    def size(self) -> int:
        """Header bytes."""
        return 4 + 4 * len(self.dims)

    @property
    def payload(self) -> int:
        """Data bytes the header announces (a Python int: no overflow, whatever the dims)."""
        return math.prod(self.dims)

    def describe(self) -> str:
        return " x ".join(str(d) for d in self.dims)


def load_idx(
    path: str | os.PathLike,
    *,
    num_classes: int | None = None,
    max_count: int | None = None,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read an MNIST IDX file of images (N, rows, cols) or labels (N,) as a uint8 array.

    Checks the magic number, the dimensions and that the payload holds exactly the number
    of bytes the header announces. For label files, ``num_classes`` bounds the label values.
    The header is read first: a header announcing more than ``max_count`` items (or images
    other than ``image_shape``) is refused before the data is read, and at most one byte more
    than announced is ever read, so a small gzip that inflates to gigabytes costs nothing.
    """
    path = Path(path)
    try:
        with open_maybe_gzip(path) as f:
            return read_idx(
                cast(BinaryIO, f),
                name=str(path),
                num_classes=num_classes,
                max_count=max_count,
                image_shape=image_shape,
            )
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise IdxError(f"{path}: cannot read: {e}") from None


def parse_idx(data: bytes, *, name: str = "<bytes>", num_classes: int | None = None) -> np.ndarray:
    """Parse the bytes of an IDX file; see :func:`load_idx`."""
    return read_idx(io.BytesIO(data), name=name, num_classes=num_classes)


def read_header(f: BinaryIO, name: str) -> IdxHeader:
    head = f.read(4)
    if len(head) < 4:
        raise IdxError(f"{name}: {len(head)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">i", head)
    if magic not in _NDIM:
        raise IdxError(
            f"{name}: magic number {magic} is neither {IMAGES_MAGIC} (images) "
            f"nor {LABELS_MAGIC} (labels)"
        )
    ndim = _NDIM[magic]
    rest = f.read(4 * ndim)
    if len(rest) < 4 * ndim:
        raise IdxError(f"{name}: header is truncated ({4 + len(rest)} of {4 + 4 * ndim} bytes)")
    header = IdxHeader(magic, struct.unpack(f">{ndim}i", rest))
    dims = header.dims
    if any(d < 0 for d in dims) or (ndim == 3 and (dims[1] == 0 or dims[2] == 0)):
        raise IdxError(f"{name}: invalid dimensions {dims}")
    return header


def read_idx(
    f: BinaryIO,
    *,
    name: str,
    num_classes: int | None = None,
    max_count: int | None = None,
    image_shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Read an IDX file from the stream ``f``: header, checks, then at most payload + 1 bytes."""
    header = read_header(f, name)
    dims = header.dims
    if image_shape is not None and header.magic == IMAGES_MAGIC and dims[1:] != image_shape:
        raise IdxError(
            f"{name}: images are {dims[1]}x{dims[2]}, expected {image_shape[0]}x{image_shape[1]}"
        )
    if max_count is not None and dims[0] > max_count:
        raise IdxError(
            f"{name}: header says {dims[0]:,} items; this file has at most {max_count:,}"
        )
    expected = header.payload
    if expected > MAX_PAYLOAD:
        raise IdxError(
            f"{name}: header says {header.describe()} = {expected:,} bytes of data, "
            f"more than the {MAX_PAYLOAD:,} an IDX file here may hold"
        )
    data = f.read(expected + 1)
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "has trailing bytes"
        found = f"found {len(data)}" if len(data) < expected else "found more"
        raise IdxError(
            f"{name}: {what}: header says {header.describe()} = {expected} bytes of data, {found}"
        )
    array = np.frombuffer(data, dtype=np.uint8).reshape(dims)
    if header.magic == LABELS_MAGIC and num_classes is not None and array.size:
        top = int(array.max())
        if top >= num_classes:
            raise IdxError(f"{name}: label {top} is out of range for {num_classes} classes")
    return array


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array of images (N, rows, cols) or labels (N,)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    magic = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}.get(array.ndim)
    if magic is None:
        raise ValueError(f"IDX arrays here have 1 or 3 dimensions, not {array.ndim}")
    return struct.pack(f">i{array.ndim}i", magic, *array.shape) + array.tobytes()
