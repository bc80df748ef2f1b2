"""Every script in examples/ runs, in its small setting, and gives the numbers it promises."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str, *args: str, cache: Path) -> str:
    env = {**os.environ, "INVFP_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1", "INVFP_LOAD_PLUGINS": ""}
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, f"{pattern!r} not in output:\n{text}"
    return float(match.group(1))


def test_every_example_has_a_test():
    tested = {"reconstruct_one.py", "crystal.py", "pt10_pipeline.py", "custom_plugin.py"}
    assert {p.name for p in EXAMPLES.glob("*.py")} == tested


def test_reconstruct_one(tmp_path):
    out = run_example("reconstruct_one.py", "--quick", cache=tmp_path)
    assert number(r"RMSD to the truth: ([\d.]+)", out) <= 0.1
    assert number(r"reconstruction loss \(MAE\): ([\d.e+-]+)", out) < 1e-3
    assert number(r"guess RMSD to the truth: ([\d.]+)", out) > 0.1
    assert number(r"refined from the guess: RMSD ([\d.]+)", out) <= 0.05


def test_crystal(tmp_path):
    out = run_example("crystal.py", "--quick", "-o", str(tmp_path / "nacl.extxyz"), cache=tmp_path)
    assert number(r"RMSD to the truth: ([\d.]+)", out) <= 0.1
    from ase.io import read

    assert read(tmp_path / "nacl.extxyz").get_chemical_formula() == "Cl4Na4"


def test_pt10_pipeline(tmp_path):
    out = run_example("pt10_pipeline.py", "--quick", cache=tmp_path)
    assert number(r"surrogate held-out MAE: ([\d.]+)", out) < 0.1
    threshold = number(r"loss threshold from real training structures: ([\d.e+-]+)", out)
    assert 0 < threshold < 0.5
    rows = [line for line in out.splitlines() if re.match(r"\s+\d+\.\d\d\s+4\s+\d+", line)]
    assert len(rows) == 3, out


@pytest.mark.filterwarnings("ignore")
def test_custom_plugin(tmp_path):
    out = run_example("custom_plugin.py", cache=tmp_path)
    assert "from plugin 'compactness-plugin'" in out
    assert re.search(r"H2O: accepted=True\s+Rg = 0\.6\d", out)
    assert re.search(r"C6H6: accepted=False\s+Rg = 2\.0\d", out)
    assert "conformance check passed" in out
