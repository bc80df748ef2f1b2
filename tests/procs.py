"""Helpers for the tests that start invfp in a subprocess and signal it (kill -9, Ctrl-C, SIGTERM).

Imported as ``from procs import ...`` (pytest puts this folder on ``sys.path``).
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def signal_when(
    cmd: list[str], env: dict[str, str], ready: Callable[[], bool], sig: int, timeout: float = 240, **popen: Any
) -> tuple[bool, int, str]:
    """Start ``cmd``, send it ``sig`` as soon as ``ready()``: (still running then, exit code, stderr)."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)
    deadline = time.monotonic() + timeout
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    running = proc.poll() is None
    proc.send_signal(sig)
    # worker processes hold the same stderr: communicate() returns once every one has exited
    _, err = proc.communicate(timeout=60)
    return running, proc.returncode, err


def db_rows(db: Path) -> int:
    """Rows of an ase.db another process may be writing: 0 until it exists (or while it is locked)."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            return int(con.execute("SELECT COUNT(*) FROM systems").fetchone()[0])
    except sqlite3.Error:
        return 0
