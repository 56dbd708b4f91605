"""Helpers for tests about other processes: locks held elsewhere, writers that died."""

from __future__ import annotations

import subprocess
import sys


def dead_pid() -> int:
    """The id of a process that has exited (what a killed writer leaves in its temp names)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
