"""The benchmark scripts run: a tiny Table 1 so that benchmarks/table1.py never rots."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_table1_tiny(tmp_path):
    out = tmp_path / "t1.json"
    cmd = [
        sys.executable, str(BENCHMARKS / "table1.py"), "--data-size", "small", "--sizes", "60",
        "--epochs", "3", "--surrogate-epochs", "3", "--samples", "50", "--temperature", "1,0.5",
        "--pooling", "maxmin+mean", "--cvae-params", '{"balance": 1}', "--json", str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "D = 570" in proc.stdout  # maxmin+mean: 3 x 190 values for Pt10
    assert proc.stdout.count("Table 1: 50 samples per target, sampling temperature") == 2
    result = json.loads(out.read_text())
    assert result["temperatures"] == [1.0, 0.5]
    assert len(result["targets"]) == 7
    for table in result["results"]:
        rows = table["60"]
        assert len(rows) == 7
        assert all(mae >= 0 and 0 <= pct <= 100 for mae, pct in rows)
    assert result["surrogate_test_mae"] > 0
