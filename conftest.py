"""Test-suite setup: no installed plugin leaks in unless a test asks for it."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

# Must happen before invfp loads plugins: external auto-loading is off in tests.
os.environ["INVFP_LOAD_PLUGINS"] = ""
os.environ.setdefault("OMP_NUM_THREADS", "1")
# No test reads or writes the user's cache (a warm ~/.cache/invfp would hide a cold-start bug).
os.environ["INVFP_CACHE_DIR"] = tempfile.mkdtemp(prefix="invfp-test-cache-")
atexit.register(shutil.rmtree, os.environ["INVFP_CACHE_DIR"], ignore_errors=True)

REPO = Path(__file__).resolve().parent
SHARED_DATA = REPO.parent / "shared" / "data" / "structrepgen_pt10"


@pytest.fixture(scope="session", autouse=True)
def _torch_threads():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def shared_data() -> Path:
    """The reference implementation's released Pt10 data; skips when ../shared is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (../shared is absent)")
    return SHARED_DATA


@pytest.fixture
def clean_plugins():
    """A fresh plugin manager for the test, restored afterwards."""
    from invfp import plugins

    plugins.reset()
    yield plugins
    plugins.reset()


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Call invfp's command line in this process: ``run_cli(*args) -> (exit code, stdout, stderr)``."""
    from invfp.cli.app import main

    def invoke(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["invfp", *args])
        with pytest.raises(SystemExit) as exc:
            main()
        captured = capsys.readouterr()
        return int(exc.value.code or 0), captured.out, captured.err

    return invoke
