"""Atomic file writes and checksums: nothing this package writes is ever left half-written."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, BinaryIO

_CHUNK = 1 << 20


def _default_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_mode()  # mkstemp makes 0600 files; finished files get the usual mode

# Temporary files carry this tool's mark and the writer's process id, so clean-up can tell its
# own abandoned files (writer gone) from a live writer's and from anyone else's ``.*.tmp``.
_TEMP_SUFFIX = ".mnist-cnn.tmp"
_TEMP_NAME = re.compile(r"^\..+\.p(\d+)" + re.escape(_TEMP_SUFFIX) + "$")


def temp_name_suffix(pid: int | None = None) -> str:
    """The end of this process's temporary file names: ``.p<pid>.mnist-cnn.tmp``."""
    return f".p{os.getpid() if pid is None else pid}{_TEMP_SUFFIX}"


def atomic_write(
    path: str | os.PathLike,
    write: Callable[[BinaryIO], None],
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Call ``write(f)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    ``check(temp_path)``, if given, runs on the complete temporary file before the rename and
    may raise to refuse it. A crash at any point leaves the old file or the new one, never a
    mix; what it leaves behind is a marked temporary file that :func:`remove_stale_temp_files`
    clears. A failure to write (a full disk) is an OSError naming ``path``.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=temp_name_suffix())
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), _FILE_MODE)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno and e.filename in (None, tmp):
            # a full disk says "No space left on device" and no more: name the file it was
            raise OSError(e.errno, os.strerror(e.errno), str(path)) from None
        raise
    _fsync_dir(path.parent)
    return path


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that :func:`atomic_write` left in ``directory`` when its
    process died. Files of a live writer, and every file this tool did not name, are kept."""
    stale = []
    for p in Path(directory).glob(".*" + _TEMP_SUFFIX):
        match = _TEMP_NAME.match(p.name)
        if match and p.is_file() and not _alive(int(match.group(1))):
            p.unlink(missing_ok=True)
            stale.append(p)
    return stale


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # another thread of this process may be writing it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid < 2**22  # someone else's live process (or a mark no process could have)
    return True


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


def open_maybe_gzip(path: str | os.PathLike) -> IO[bytes]:
    """Open a file for reading, decompressing it if it starts with the gzip magic bytes."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


class TooLarge(ValueError):
    """A file (or its decompressed payload) is longer than the most it may be."""


def file_digest(
    path: str | os.PathLike,
    algorithm: str = "sha256",
    decompress: bool = False,
    limit: int | None = None,
) -> str:
    """Hex digest of a file, or of its decompressed payload when ``decompress`` is true.

    With ``limit``, reading stops with :class:`TooLarge` after ``limit + 1`` bytes: a gzip
    bomb costs the time of reading ``limit`` bytes, not of inflating all of it.
    """
    h = hashlib.new(algorithm)
    opener = open_maybe_gzip if decompress else (lambda p: open(p, "rb"))
    read = 0
    with opener(path) as f:
        while chunk := f.read(_CHUNK):
            read += len(chunk)
            if limit is not None and read > limit:
                what = "decompressed payload" if decompress else "file"
                raise TooLarge(f"{what} is larger than the {limit:,} bytes expected")
            h.update(chunk)
    return h.hexdigest()
