"""Advisory directory locks: one writer per run directory, one download per dataset cache.

The lock is ``flock`` on ``<dir>/.lock``, which holds who took it (process id, host, command,
time) so that a second process can say who is in its way. The kernel releases the lock when its
process dies, however it dies; the file is removed on a clean release, and a taker checks that
the file it locked is still the one at the path (a release may have removed it meanwhile).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from .errors import MnistCnnError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; runs are not guarded there
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


class LockHeld(MnistCnnError):
    """Another process holds the lock."""


class DirectoryLock:
    """``with DirectoryLock(folder, "train"):`` holds ``folder/.lock`` for the block.

    ``wait=False`` fails at once with :class:`LockHeld` naming the holder; ``wait=True``
    blocks until the holder is done (downloads: the second finds the files in place).
    """

    def __init__(self, folder: str | os.PathLike, purpose: str, *, wait: bool = False):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self.purpose = purpose
        self.wait = wait
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        if fcntl is None:
            return self
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if self.wait else fcntl.LOCK_NB))
            except BlockingIOError:
                holder = _describe(self.path)
                os.close(fd)
                raise LockHeld(
                    f"{self.folder} is in use by {holder}; wait for it to finish "
                    f"(two processes writing one run would overwrite each other's epochs)"
                ) from None
            except OSError as e:
                os.close(fd)
                raise MnistCnnError(f"{self.path}: cannot lock ({e.strerror})") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # released and removed while we waited: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(_holder(self.purpose)).encode() + b"\n", 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # still ours: nobody else can hold it now
        except OSError:
            pass
        os.close(self._fd)  # closing releases the flock
        self._fd = None

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise MnistCnnError(f"{self.path}: cannot create a lock ({e.strerror})") from None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _holder(purpose: str) -> dict:
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "purpose": purpose,
        "command": " ".join(sys.argv)[:500],
        "since": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _describe(path: Path) -> str:
    """'process 123 on host (train, since ...)' from a lock file, as far as it can be read."""
    for _ in range(3):  # the holder writes its details just after taking the lock
        try:
            info = json.loads(path.read_bytes()[:4096])
            return (
                f"process {int(info['pid'])} on {str(info['host'])[:100]} "
                f"({str(info['purpose'])[:40]}, since {str(info['since'])[:40]})"
            )
        except (OSError, ValueError, KeyError, TypeError):
            time.sleep(0.05)
    return "another process"
