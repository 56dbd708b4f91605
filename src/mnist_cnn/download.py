"""Downloading and verifying dataset files: mirrors in order, temp file, checksum, atomic rename."""

from __future__ import annotations

import gzip
import http.client
import os
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .datasets import (
    DataFile,
    Dataset,
    DatasetInfo,
    cache_dir,
    checksum_matches,
    file_in,
    get_dataset_info,
    load_folder,
    locate,
    not_found_message,
)
from .errors import MnistCnnError
from .files import TooLarge, atomic_write, remove_stale_temp_files
from .locks import DirectoryLock

_CHUNK = 1 << 16


@dataclass(frozen=True)
class FileCheck:
    """The verdict on one dataset file."""

    key: str
    path: Path | None
    ok: bool
    detail: str  # "sha256 ok", "md5 mismatch", "missing", ...


def check_file(f: DataFile, path: Path, *, gz: bool | None = None) -> tuple[bool, str]:
    """Verify one file by its published checksum (datasets.checksum_matches), with the verdict."""
    try:
        ok = checksum_matches(f, path, gz=gz)
    except TooLarge as e:
        return False, str(e)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as e:
        return False, f"unreadable: {e}"
    if ok is None:
        return True, "no published checksum for the uncompressed file"
    if ok:
        return True, "sha256 ok" if f.sha256 is not None else "md5 ok"
    if f.sha256 is not None:
        return False, "sha256 mismatch"
    return False, "md5 mismatch (a recompressed file cannot match)"


def load_dataset(
    name: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = False,
) -> Dataset:
    """Find (or download into the cache) dataset ``name`` and load it into memory.

    Here rather than in ``datasets``, which finds and reads files but never downloads.
    """
    info = get_dataset_info(name)
    folder = locate(info, data_dir)
    if folder is None:
        if not download:
            raise MnistCnnError(not_found_message(info, data_dir, "downloading is off"))
        folder = fetch(info, data_dir=data_dir, progress=progress)
    return load_folder(info, folder)


def verify_folder(info: DatasetInfo, folder: str | os.PathLike) -> list[FileCheck]:
    """Check each of the dataset's four files in ``folder``."""
    folder = Path(folder)
    checks = []
    for key, f in info.files.items():
        path = file_in(folder, f)
        if path is None:
            checks.append(FileCheck(key, None, False, "missing"))
        else:
            checks.append(FileCheck(key, path, *check_file(f, path)))
    return checks


def fetch(
    info: DatasetInfo,
    *,
    data_dir: str | os.PathLike | None = None,
    dest: str | os.PathLike | None = None,
    mirrors: tuple[str, ...] | list[str] | None = None,
    progress: bool = False,
    timeout: float = 30.0,
) -> Path:
    """Download the files of ``info`` missing or bad in ``dest`` (default: the user cache).

    ``mirrors`` (else the base URLs in $MNIST_CNN_MIRRORS, else the dataset's own) are tried
    in order for each file: it is streamed to a temporary file in ``dest`` (never past the
    most the file can be), verified, and only then renamed into place. A second fetch into the
    same folder waits for the first (a lock), then finds its files in place. Returns ``dest``.
    """
    dest = Path(dest) if dest is not None else cache_dir(info.name)
    mirrors = tuple(mirrors or os.environ.get("MNIST_CNN_MIRRORS", "").split() or info.mirrors)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MnistCnnError(f"cannot create {dest}: {e.strerror}") from None
    with DirectoryLock(dest, "data fetch", wait=True):
        remove_stale_temp_files(dest)  # left by a download whose process died
        _fetch_missing(info, dest, mirrors, data_dir, progress=progress, timeout=timeout)
    return dest


def _fetch_missing(info: DatasetInfo, dest: Path, mirrors, data_dir, *, progress, timeout):
    for f in info.files.values():
        existing = file_in(dest, f)
        if existing is not None and check_file(f, existing)[0]:
            continue
        failures = []
        for mirror in mirrors:
            url = mirror.rstrip("/") + "/" + f.gz_name
            try:
                _download_verified(url, f, dest, progress=progress, timeout=timeout)
                break
            except _MirrorFailed as e:
                failures.append(f"{url}: {e}")
        else:
            raise MnistCnnError(
                not_found_message(info, data_dir, "downloading failed: " + "; ".join(failures))
            )
        if existing is not None and existing.name != f.gz_name:
            existing.unlink()  # a bad uncompressed copy would shadow the good download


class _MirrorFailed(Exception):
    pass


def _download_verified(url: str, f: DataFile, dest: Path, *, progress: bool, timeout: float):
    def verify(tmp: Path) -> None:
        ok, detail = check_file(f, tmp, gz=True)
        if not ok:
            raise _MirrorFailed(detail)

    def write(out) -> None:
        _stream(url, out, progress=progress, timeout=timeout, label=f.gz_name, limit=f.max_gz_size)

    atomic_write(dest / f.gz_name, write, check=verify)


def _stream(url: str, out, *, progress: bool, timeout: float, label: str, limit: int) -> None:
    """Copy ``url`` into ``out``, stopping as soon as more than ``limit`` bytes arrive (an
    endless or oversized stream never fills the disk)."""
    request = urllib.request.Request(url, headers={"User-Agent": "mnist-cnn"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            if total is not None and total > limit:
                raise _MirrorFailed(
                    f"announces {total:,} bytes, more than the {limit:,} {label} can be"
                )
            from tqdm import tqdm

            with tqdm(
                total=total,
                unit="B",
                unit_scale=True,
                desc=label,
                disable=not progress,
                leave=False,
            ) as bar:
                received = 0
                while chunk := response.read(_CHUNK):
                    received += len(chunk)
                    if received > limit:
                        raise _MirrorFailed(
                            f"sent more than the {limit:,} bytes {label} can be; stopped"
                        )
                    out.write(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise _MirrorFailed(f"connection closed after {received} of {total} bytes")
    except urllib.error.HTTPError as e:
        raise _MirrorFailed(f"HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise _MirrorFailed(str(e.reason)) from None
    except (OSError, ValueError, http.client.HTTPException) as e:  # timeouts, resets, bad URLs
        raise _MirrorFailed(str(e) or type(e).__name__) from None
