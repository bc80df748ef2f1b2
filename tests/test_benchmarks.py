"""The benchmark scripts run in small settings, so that they never rot."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
# A search small enough for a test: one 20-step descent from each of 2 unscreened starts.
_TINY_SEARCH = {"attempts": 1, "restarts": 2, "screen": 0, "hops": 0, "steps": 20, "polish": 0, "refine_steps": 0}


def _table1(*args: str) -> subprocess.CompletedProcess:
    cmd = [
        sys.executable, str(BENCHMARKS / "table1.py"), "--data-size", "small", "--sizes", "60",
        "--epochs", "3", "--surrogate-epochs", "3", "--samples", "50", "--pooling", "maxmin+mean", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_table1_tiny(tmp_path):
    out = tmp_path / "t1.json"
    proc = _table1("--temperature", "1,0.5", "--cvae-params", '{"balance": 1}', "--json", str(out))
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
    # mean (prediction - target) per cell, consistent with the MAE: |bias| <= MAE
    for table, bias in zip(result["results"], result["bias"], strict=True):
        assert all(abs(b) <= mae + 1e-9 for (mae, _), b in zip(table["60"], bias["60"], strict=True))


def test_table1_models_dir_reuses_the_trained_cvae(tmp_path):
    models = tmp_path / "models"
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    proc = _table1("--models-dir", str(models), "--temperature", "0.5", "--json", str(first))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (models / "n60" / "config.json").exists()
    proc = _table1("--models-dir", str(models), "--temperature", "0.5", "--json", str(second))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"loaded from {models / 'n60'}" in proc.stdout
    # the same model and seeds: the same table, without training again
    assert json.loads(first.read_text())["results"] == json.loads(second.read_text())["results"]
    # a model trained with other settings is refused, not silently reused
    for other in (("--cvae-params", '{"beta": 0.5}'), ("--cvae-seed", "1")):
        proc = _table1("--models-dir", str(models), *other)
        assert proc.returncode != 0, other
        assert "trained with other settings" in proc.stderr and "Traceback" not in proc.stderr

    # bad --cvae-params: a one-line error before any training
    for bad, says in (("{beta", "is not JSON"), ("[1]", "is not a JSON object"), ('{"foo": 1}', "no parameter 'foo'")):
        proc = _table1("--cvae-params", bad)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, bad
    # a damaged stamp or model: a one-line error, not a traceback
    (models / "n60" / "table1.json").write_text("{not json")
    proc = _table1("--models-dir", str(models))
    assert proc.returncode != 0 and "cannot read table1.json" in proc.stderr and "Traceback" not in proc.stderr


def test_bench_reconstruct_tiny():
    # Item 1 on 2 structures with a tiny search, so that the script never rots.
    cmd = [
        sys.executable, str(BENCHMARKS / "bench_reconstruct.py"), "--items", "1", "--n", "2", "--workers", "1",
        "--search-seed", "3", "4", "--options", json.dumps(_TINY_SEARCH),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "[1] EMT Pt10, 2 structures" in proc.stdout
    recovered = proc.stdout.split("recovered (RMSD <= 0.1 Å): ")[1].split("/")[0]
    assert 0 <= int(recovered) <= 2
    # Each miss is printed as (index into the set, RMSD, MAE): as many as were not recovered.
    misses = ast.literal_eval(proc.stdout.split("failures (index, RMSD Å, MAE): ")[1].splitlines()[0])
    assert len(misses) == 2 - int(recovered)
    assert all(index in (0, 1) and rmsd > 0.1 for index, rmsd, _ in misses)
    assert "s per structure (1 worker process(es)" in proc.stdout
    # Two search seeds: one run each, then the pooled count is the sum of the per-seed ones.
    per_seed = [int(part.split("recovered (RMSD <= 0.1 Å): ")[1].split("/")[0])
                for part in proc.stdout.split("search seed ")[1:]]
    assert len(per_seed) == 2
    pooled = proc.stdout.split("[1+4] over search seeds [3, 4]: recovered ")[1]
    assert pooled.startswith(f"{sum(per_seed)}/4 = ") and f"(per seed {per_seed})" in pooled


def test_bench_reconstruct_only_some_indices():
    # --only reconstructs a subset of item 1's set and reports it by the set's own indices.
    base = [sys.executable, str(BENCHMARKS / "bench_reconstruct.py"), "--items", "1", "--n", "4", "--workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [*base, "--only", "3", "1", "--search-seed", "0", "1", "--options", json.dumps(_TINY_SEARCH)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("[1] EMT Pt10, 2 structures") == 2
    assert "(minima " in proc.stdout and "/2, frames " in proc.stdout  # indices 1 and 3 are both minima
    per_index = ast.literal_eval(proc.stdout.split("recovered per index (of 2 searches): ")[1].splitlines()[0])
    assert set(per_index) == {1, 3} and all(0 <= c <= 2 for c in per_index.values())
    for line in proc.stdout.splitlines():
        if "failures (index, RMSD Å, MAE): " in line:
            misses = ast.literal_eval(line.split("failures (index, RMSD Å, MAE): ")[1])
            assert {m[0] for m in misses} <= {1, 3}
    # bad use: a one-line error before any work
    for bad, says in ((["--only", "7"], "indices must lie in 0..3"), (["--only", "1", "--items", "3"], "add 1 to --items")):
        proc = subprocess.run([*base, *bad], capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, bad


def _landscape(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(BENCHMARKS / "bench_landscape.py"), "--frames", "0", "1", "--starts", "4", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})


def _landscape_counts(stdout: str) -> list[int]:
    return [int(line.split("recovered ")[1].split("/")[0]) for line in stdout.splitlines() if line.startswith("frame ")]


def test_bench_landscape():
    # Every atom kept and frozen: nothing may move, so every start is the answer.
    proc = _landscape("--start", "partial", "--keep", "10", "--frozen", "--steps", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _landscape_counts(proc.stdout) == [4, 4] and "all frames: recovered 8/8" in proc.stdout
    # 0.05 Å from the answer, a short descent finds it again for most starts (6 of 8 when written).
    proc = _landscape("--start", "displaced", "--sigma", "0.05", "--steps", "60")
    assert proc.returncode == 0, proc.stderr[-2000:]
    counts = _landscape_counts(proc.stdout)
    assert len(counts) == 2 and all(1 <= c <= 4 for c in counts)
    # The other starts and smoothing run and report counts in range.
    proc = _landscape("--start", "shell", "--smooth", "0.3", "--steps", "5")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all(0 <= c <= 4 for c in _landscape_counts(proc.stdout)) and "shell; smooth 0.3 Å" in proc.stdout
    # bad use: a one-line usage error
    proc = _landscape("--keep", "11")
    assert proc.returncode == 2 and "--keep must lie in 0..10" in proc.stderr and "Traceback" not in proc.stderr
