"""Reader for the IDX format of MNIST-style datasets (raw or gzip), with strict validation."""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from .errors import MnistCnnError
from .files import open_maybe_gzip

IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions (count, rows, cols)
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension (count)
_NDIM = {IMAGES_MAGIC: 3, LABELS_MAGIC: 1}


class IdxError(MnistCnnError):
    """An IDX file is not what it claims to be."""


def load_idx(path: str | os.PathLike, *, num_classes: int | None = None) -> np.ndarray:
    """Read an MNIST IDX file of images (N, rows, cols) or labels (N,) as a uint8 array.

    Checks the magic number, the dimensions and that the payload holds exactly the number
    of bytes the header announces. For label files, ``num_classes`` bounds the label values.
    """
    path = Path(path)
    try:
        with open_maybe_gzip(path) as f:
            data = f.read()
    except FileNotFoundError:
        raise IdxError(f"{path}: no such file") from None
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise IdxError(f"{path}: cannot read: {e}") from None
    return parse_idx(data, name=str(path), num_classes=num_classes)


def parse_idx(data: bytes, *, name: str = "<bytes>", num_classes: int | None = None) -> np.ndarray:
    """Parse the bytes of an IDX file; see :func:`load_idx`."""
    if len(data) < 8:
        raise IdxError(f"{name}: {len(data)} bytes is too short for an IDX header")
    (magic,) = struct.unpack(">i", data[:4])
    if magic not in _NDIM:
        raise IdxError(
            f"{name}: magic number {magic} is neither {IMAGES_MAGIC} (images) "
            f"nor {LABELS_MAGIC} (labels)"
        )
    ndim = _NDIM[magic]
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise IdxError(f"{name}: header is truncated ({len(data)} of {header_len} bytes)")
    dims = struct.unpack(f">{ndim}i", data[4:header_len])
    if any(d < 0 for d in dims) or (ndim == 3 and (dims[1] == 0 or dims[2] == 0)):
        raise IdxError(f"{name}: invalid dimensions {dims}")
    expected = int(np.prod(dims, dtype=np.int64))
    actual = len(data) - header_len
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        shape = " x ".join(str(d) for d in dims)
        raise IdxError(
            f"{name}: {what}: header says {shape} = {expected} bytes of data, found {actual}"
        )
    array = np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(dims)
    if magic == LABELS_MAGIC and num_classes is not None and array.size:
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
