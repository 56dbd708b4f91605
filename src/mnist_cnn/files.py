"""Atomic file writes and checksums: nothing this package writes is ever left half-written."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import BinaryIO

_CHUNK = 1 << 20


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()  # mkstemp makes 0600 files; finished files get the usual mode


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], object],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    ``check(temp_path)``, if given, runs on the complete temporary file before the rename and
    may raise to refuse it. A crash at any point leaves the old file or the new one, never a
    mix; what it leaves behind is a ``.*.tmp`` file that :func:`remove_stale_temp_files` clears.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files an interrupted :func:`atomic_write` left in ``directory``."""
    stale = [p for p in Path(directory).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, records: Iterable[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in records))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_maybe_gzip(path: str | os.PathLike) -> io.BufferedIOBase:
    """Open a file for reading, decompressing it if it starts with the gzip magic bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def file_digest(
    path: str | os.PathLike, algorithm: str = "sha256", decompress: bool = False
) -> str:
    """Hex digest of a file, or of its decompressed payload when ``decompress`` is true."""
    h = hashlib.new(algorithm)
    opener = open_maybe_gzip if decompress else (lambda p: open(p, "rb"))
    with opener(path) as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
