"""``invfp run`` end to end on tiny real data, its resume after ``kill -9``, and bad input."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read, write
from procs import db_rows, signal_when

from invfp.testing import random_pt5_clusters

# Tiny settings: 40 Pt5 clusters, 2 targets × 6 samples in chunks of 2, a short search.
TINY = [
    "--quick", "--train-size", "40", "--epochs", "20", "--n", "6", "--chunk", "2", "--targets", "2.0,2.6",
    "--opt", "restarts=2", "--opt", "hops=0", "--opt", "steps=40", "--opt", "refine_steps=10", "--device", "cpu",
]
ROWS = 12


def _formation(atoms: Atoms) -> float:
    ref = bulk("Pt", "fcc", a=3.92)
    ref.calc = EMT()
    probe = atoms.copy()
    probe.calc = EMT()
    return (probe.get_potential_energy() - len(atoms) * ref.get_potential_energy() / len(ref)) / len(atoms)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    """40 random Pt5 clusters with their EMT formation energy (about 1.3-4.9 eV/atom)."""
    path = tmp_path_factory.mktemp("data") / "pt5.extxyz"
    write(path, random_pt5_clusters(40, seed=0))
    return path


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def cli(run_cli, cache, monkeypatch):
    """The CLI in this process, sharing the module's model cache."""
    monkeypatch.setenv("INVFP_CACHE_DIR", str(cache))
    return run_cli


@pytest.fixture(scope="module")
def reference_run(tiny_data, cache, tmp_path_factory) -> Path:
    """An uninterrupted run in a subprocess (it also trains and caches the models)."""
    out = tmp_path_factory.mktemp("runs") / "reference"
    proc = _run_or_dump(_command(tiny_data, out), _env(cache), timeout=300)
    assert proc.returncode == 0, proc.stderr
    return out


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-X", "faulthandler", "-m", "invfp", "run", "--data", str(data), *TINY, "-o", str(out)]


def _run_or_dump(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run ``command``; past ``timeout``, fail with every thread's stack (faulthandler on SIGABRT)."""
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        tree = subprocess.run(["ps", "-ef", "--forest"], capture_output=True, text=True).stdout
        pytest.fail(f"the run did not finish in {timeout} s; its stacks:\n{err[-20000:]}\nprocesses:\n{tree[-5000:]}")
    return subprocess.CompletedProcess(command, proc.returncode, out, err)


def _env(cache: Path) -> dict[str, str]:
    return {**os.environ, "INVFP_CACHE_DIR": str(cache), "INVFP_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}


def _rows(directory: Path) -> list[tuple]:
    with sqlite3.connect(directory / "results.db") as con:
        ids = {name: i for i, name in enumerate(["target_index", "sample", "loss", "accepted"])}
        rows: dict[int, dict] = {}
        for row_id, key, value in con.execute("SELECT id, key, value FROM number_key_values"):
            if key in ids:
                rows.setdefault(row_id, {})[key] = value
    return sorted((int(r["target_index"]), int(r["sample"]), r["loss"], bool(r["accepted"])) for r in rows.values())


def test_run_end_to_end(reference_run):
    rows = _rows(reference_run)
    assert [(t, s) for t, s, _, _ in rows] == [(t, s) for t in range(2) for s in range(6)]
    summary = json.loads((reference_run / "summary.json").read_text())
    config = json.loads((reference_run / "config.json").read_text())
    # The run's default fingerprint: the paper's fung2022 values plus their mean over atoms.
    assert config["representation"]["preset"] == "fung2022"
    assert config["representation"]["pooling"] == "maxmin+mean"
    assert summary["representation_note"].startswith("fingerprint: acsf 570 values")  # 3 × 190
    calibration = json.loads((reference_run / "calibration.json").read_text())
    threshold = calibration["threshold"]
    assert threshold == pytest.approx(2.0 * np.quantile(calibration["losses"], 0.9))
    assert summary["loss_threshold"] == pytest.approx(threshold)
    import ase.db

    db = ase.db.connect(reference_run / "results.db")
    for index, target in enumerate((2.0, 2.6)):
        mine = list(db.select(target_index=index))
        assert all(row.target == target for row in mine)
        # Acceptance: loss under the threshold, no pair closer than 0.75 × 2 × 1.36 Å, surrogate within 0.1.
        for row in mine:
            expected = (row.loss <= threshold) and row.v_geometry >= 2.04 and abs(row.v_surrogate - target) <= 0.1
            assert row.accepted == expected
            assert row.v_energy == pytest.approx(row.true_property)
        errors = np.array([abs(row.true_property - target) for row in mine])
        assert summary["targets"][index]["mae_all"] == pytest.approx(errors.mean())
        assert summary["targets"][index]["accepted"] == sum(row.accepted for row in mine)
    # The true property is EMT's, recomputed here from a stored structure.
    row = next(db.select(sample=3, target_index=1))
    assert row.true_property == pytest.approx(_formation(row.toatoms()), abs=1e-8)
    accepted = read(reference_run / "accepted.extxyz", index=":") if any(r[3] for r in rows) else []
    assert len(accepted) == sum(r[3] for r in rows)


def test_resume_after_kill_9(tiny_data, cache, reference_run, tmp_path):
    out = tmp_path / "killed"
    _, code, _ = signal_when(_command(tiny_data, out), _env(cache), lambda: db_rows(out / "results.db") >= 2,
                             signal.SIGKILL)
    assert code == -signal.SIGKILL, "the run ended before it could be killed mid-way"
    partial = db_rows(out / "results.db")
    assert 0 < partial < ROWS and partial % 2 == 0  # only whole chunks of 2 were committed

    again = _run_or_dump(_command(tiny_data, out), _env(cache), timeout=240)
    assert again.returncode == 0, again.stderr
    assert "already stored" in again.stdout
    resumed, reference = _rows(out), _rows(reference_run)
    assert [r[:2] for r in resumed] == [r[:2] for r in reference]  # none lost, none duplicated
    np.testing.assert_allclose([r[2] for r in resumed], [r[2] for r in reference], rtol=1e-9)
    assert [r[3] for r in resumed] == [r[3] for r in reference]


def test_different_run_refused_without_force(cli, tiny_data, reference_run):
    code, _, err = cli("run", "--data", str(tiny_data), *TINY[:-2], "--n", "7", "-o", str(reference_run))
    assert code == 2
    assert "holds a different run" in err and "--force" in err and "n" in err


def test_reconstruct_seed_is_part_of_the_run(cli, tiny_data, reference_run, tmp_path):
    code, _, err = cli("run", "--data", str(tiny_data), *TINY, "--reconstruct-seed", "9", "-o", str(reference_run))
    assert code == 2 and "holds a different run" in err and "reconstruct_seed" in err
    args = list(TINY)
    args[args.index("--n") + 1] = "2"
    code, _, err = cli("run", "--data", str(tiny_data), *args, "--reconstruct-seed", "9", "-o", str(tmp_path / "r9"))
    assert code == 0, err
    assert json.loads((tmp_path / "r9" / "config.json").read_text())["reconstruct_seed"] == 9


def test_target_outside_the_data_range_warns(cli, tiny_data, reference_run, tmp_path):
    args = [a if a != "2.0,2.6" else "2.0,9.0" for a in TINY]
    args[args.index("--n") + 1] = "1"
    code, out, err = cli("run", "--data", str(tiny_data), *args, "-o", str(tmp_path / "far"))
    assert code == 0, err
    assert "warning:" in out and "target 9 lies" in out and "above the data's range" in out
    summary = json.loads((tmp_path / "far" / "summary.json").read_text())
    assert summary["warnings"] and summary["targets"][1]["generated"] == 1


def test_representation_parameters_reach_the_run(cli, tiny_data, reference_run, tmp_path):
    args = list(TINY)
    args[args.index("--n") + 1] = "1"
    code, _, err = cli("run", "--data", str(tiny_data), *args, "--repr-param", "pooling=mean", "-o", str(tmp_path / "m"))
    assert code == 0, err
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["representation"]["pooling"] == "mean"
    assert config["representation"]["preset"] == "fung2022"  # the preset stays; pooling is its free parameter
    import ase.db

    from invfp.representations.acsf import ACSF

    row = next(ase.db.connect(tmp_path / "m" / "results.db").select())
    mine = ACSF(preset="fung2022", pooling="mean").featurize([row.toatoms()])[0]
    assert row.loss == pytest.approx(np.abs(mine - row.data["fingerprint"]).mean(), rel=1e-4)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cvea"], "unknown model 'cvea'"),
        (["--repr", "acfs"], "unknown representation 'acfs'"),
        (["--optimizer", "adamm"], "unknown optimizer 'adamm'"),
        (["--validators", "geometry,bogus"], "unknown validator 'bogus'"),
        (["--validators", "energy"], "oracle"),
        (["--targets", "2.0,high"], "comma-separated numbers"),
        (["--property", "band_gap"], "band_gap"),
        (["--repr-param", "r_cut=6"], "--preset none"),
        (["--repr-param", "pooling=median"], "pooling='median' is not allowed"),
        (["--repr-param", "pooling"], "is not key=value"),
    ],
)
def test_bad_input_is_one_clear_line(cli, tiny_data, tmp_path, args, message):
    code, _, err = cli("run", "--data", str(tiny_data), "--quick", *args, "-o", str(tmp_path / "bad"))
    assert code != 0
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 2
    assert not (tmp_path / "bad" / "results.db").exists()
