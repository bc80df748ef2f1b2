"""invfp.data: making the Pt10-EMT set, resuming it, loading files, FPS, the split, the feature cache."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from procs import db_rows, signal_when

from invfp.data import (
    Dataset,
    featurize,
    furthest_point_sampling,
    load,
    make_dataset,
    read_frames,
    text_histogram,
    train_val_split,
)
from invfp.errors import DataError, InputError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("INVFP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> Path:
    """The built-in 'small' recipe (2 relaxations of Pt10, seed 0), made in this process."""
    return make_dataset(tmp_path_factory.mktemp("data") / "small.db", relaxations=2, seed=0, workers=1)


def _emt_bulk_pt() -> float:
    crystal = bulk("Pt", "fcc", a=3.92)
    crystal.calc = EMT()
    return crystal.get_potential_energy() / len(crystal)


# -- making -------------------------------------------------------------------------


def test_made_frames_match_a_direct_emt_call(small_db):
    ds = load(small_db)
    assert ds.formula == "Pt10" and ds.units == "eV/atom" and ds.property == "formation_energy"
    relax, step = ds.column("relaxation"), ds.column("step")
    assert set(relax) == {0, 1}
    for r in (0, 1):  # steps 0..S, each once, in order
        assert list(step[relax == r]) == list(range(int(np.sum(relax == r))))
    e_bulk = _emt_bulk_pt()
    rng = np.random.default_rng(1)
    for i in [0, len(ds) - 1, *rng.integers(len(ds), size=4)]:
        atoms = Atoms(numbers=ds.numbers, positions=ds.atoms[i].positions, cell=[20.0] * 3)
        atoms.calc = EMT()
        energy = atoms.get_potential_energy()
        assert ds.atoms[i].get_potential_energy() == pytest.approx(energy, abs=1e-9)
        assert ds.y[i] == pytest.approx((energy - 10 * e_bulk) / 10, abs=1e-9)
    # Starts: inside the ±3.5 Å box around the cell centre, atoms at least 2.2 Å apart.
    for frame in np.flatnonzero(step == 0):
        pos = ds.atoms[frame].positions - 10.0
        assert np.all(np.abs(pos) <= 3.5)
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(10, 1)]
        assert d.min() >= 2.2
    # Minima: the last frame of each converged relaxation, with forces below fmax.
    minima = np.flatnonzero(ds.column("is_minimum"))
    assert len(minima) == 2
    for i in minima:
        assert step[i] == step[relax == relax[i]].max()
        atoms = ds.atoms[i].copy()
        atoms.calc = EMT()
        assert np.linalg.norm(atoms.get_forces(), axis=1).max() < 0.05
        assert 0.7 < ds.y[i] < 1.0  # EMT Pt10 minima: about 0.79 eV/atom and up (DESIGN.md)
    assert ds.y.max() > 2.0  # random starts lie far above


def test_builtin_small_set_is_the_recipe_and_is_cached(small_db, tmp_path):
    first = load("pt10-emt", size="small")
    assert first.content_hash() == load(small_db).content_hash()
    again = load("pt10-emt", size="small")  # from the cache (no new relaxation)
    assert again.content_hash() == first.content_hash()
    (arrays,) = (tmp_path / "cache" / "datasets").glob("*.npz")
    arrays.unlink()  # rebuilt from the cached ase.db
    assert load("pt10-emt", size="small").content_hash() == first.content_hash()
    assert np.array_equal(again.column("is_minimum"), first.column("is_minimum"))
    assert again.atoms[5].get_forces().shape == (10, 3)


def _assert_same_frames(a: Path, b: Path) -> None:
    fa, fb = read_frames(a), read_frames(b)
    key = [(f.info["relaxation"], f.info["step"]) for f in fa]
    assert len(set(key)) == len(key)  # no duplicates
    assert key == [(f.info["relaxation"], f.info["step"]) for f in fb]
    np.testing.assert_allclose(
        np.stack([f.positions for f in fa]), np.stack([f.positions for f in fb]), atol=1e-10
    )
    np.testing.assert_allclose(
        [f.get_potential_energy() for f in fa], [f.get_potential_energy() for f in fb], atol=1e-10
    )
    assert [f.info["is_minimum"] for f in fa] == [f.info["is_minimum"] for f in fb]


def test_resume_after_kill_9_equals_an_uninterrupted_run(tmp_path):
    n = 6
    out = tmp_path / "killed.db"
    cmd = [sys.executable, "-m", "invfp", "data", "make", "pt10-emt", "-o", str(out), "--relaxations", str(n)]
    cmd += ["--max-steps", "150"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INVFP_LOAD_PLUGINS": ""}
    _, code, _ = signal_when([*cmd, "--workers", "1"], env, lambda: db_rows(out) > 0, signal.SIGKILL, timeout=60)
    assert code == -signal.SIGKILL, "the run finished before it could be killed"
    partial = read_frames(out)  # readable after kill -9
    done = {f.info["relaxation"] for f in partial}
    assert 1 <= len(done) < n
    (tmp_path / "killed.db.lock").touch()  # what ASE's lock file would leave after kill -9: ignored
    resumed = subprocess.run([*cmd, "--workers", "1"], env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    # The reference runs uninterrupted, in 2 worker processes (rows arrive in another order).
    reference = make_dataset(tmp_path / "ref.db", relaxations=n, max_steps=150, workers=2)
    _assert_same_frames(out, reference)
    # Rerunning a complete file changes nothing.
    rows = db_rows(out)
    make_dataset(out, relaxations=n, max_steps=150, workers=1)
    assert db_rows(out) == rows


def test_incomplete_relaxation_is_redone(small_db, tmp_path):
    # A crash can leave part of a relaxation only if ase.db committed mid-way (it does
    # every 5,000 rows); such rows are deleted and the relaxation is made again.
    import shutil

    import ase.db

    copy = Path(shutil.copy(small_db, tmp_path / "cut.db"))
    db = ase.db.connect(copy, use_lock_file=False)
    db.delete([row.id for row in db.select("relaxation=1,step>20")])
    make_dataset(copy, relaxations=2, workers=1)
    _assert_same_frames(copy, small_db)


def test_extending_keeps_rows_and_other_settings_are_refused(small_db, tmp_path):
    import shutil

    copy = Path(shutil.copy(small_db, tmp_path / "grow.db"))
    before = db_rows(copy)
    with pytest.raises(DataError, match="seed: 0 there, 3 asked"):
        make_dataset(copy, relaxations=3, seed=3, workers=1)
    assert db_rows(copy) == before
    make_dataset(copy, relaxations=3, max_steps=300, workers=1)
    ds = load(copy)
    assert set(ds.column("relaxation")) == {0, 1, 2}
    assert len(ds) > before
    assert np.array_equal(ds.positions[:before], load(small_db).positions)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relaxations": -1}, "relaxations must be an integer >= 1"),
        ({"relaxations": 0}, "relaxations must be an integer >= 1"),
        ({"formula": "Xx10"}, "unknown element 'Xx'"),
        ({"formula": "Fe10"}, "cannot compute Fe"),
        ({"calculator": "nope"}, "unknown calculator 'nope'.*emt"),
        ({"calculator": "vasp"}, "runs an external program"),
        ({"box": 12.0}, "does not fit"),
        ({"box": 1.0}, "could not place 10 atoms"),
        ({"workers": 0}, "workers must be"),
    ],
)
def test_bad_make_arguments_write_nothing(tmp_path, kwargs, message):
    out = tmp_path / "bad.db"
    with pytest.raises(DataError, match=message):
        make_dataset(out, **{"relaxations": 1, **kwargs})
    assert not out.exists()


def test_output_must_be_a_db(tmp_path):
    with pytest.raises(DataError, match=r"named \*\.db"):
        make_dataset(tmp_path / "x.extxyz", relaxations=1)
    assert not (tmp_path / "x.extxyz").exists()


def test_cli_errors_are_one_line(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "INVFP_LOAD_PLUGINS": ""}
    out = tmp_path / "x.db"
    run = subprocess.run(
        [sys.executable, "-m", "invfp", "data", "make", "pt10-emt", "-o", str(out), "--calculator", "nope"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert run.stderr.strip().count("\n") == 0 and "unknown calculator 'nope'" in run.stderr
    assert not out.exists()


def test_cli_info_prints_counts_and_histogram(small_db):
    from typer.testing import CliRunner

    from invfp.cli.app import app

    result = CliRunner().invoke(app, ["data", "info", str(small_db), "--bins", "4"])
    assert result.exit_code == 0, result.output
    ds = load(small_db)
    assert f"{len(ds)} frames" in result.output
    assert f"Pt10 ({len(ds)})" in result.output
    assert f"min {ds.y.min():.4f}" in result.output
    assert text_histogram(ds.y, bins=4) in result.output


# -- reading files ------------------------------------------------------------------


def _cluster(symbols: str, seed: int, **info: float) -> Atoms:
    rng = np.random.default_rng(seed)
    n = len(Atoms(symbols))
    atoms = Atoms(symbols, positions=rng.uniform(0, 6, (n, 3)), cell=[20.0] * 3)
    atoms.info.update(info)
    return atoms


def test_extxyz_with_mixed_compositions(tmp_path):
    import ase.io

    frames = [_cluster("Pt4", i, formation_energy=float(i)) for i in range(3)]
    frames += [_cluster("Pt3Au", 10 + i, formation_energy=-float(i)) for i in range(2)]
    path = tmp_path / "mixed.extxyz"
    ase.io.write(path, frames)
    with pytest.raises(DataError, match=r"mixes compositions \(Pt4: 3 frames, AuPt3: 2 frames\).*formula="):
        load(path)
    ds = load(path, formula="Pt4")
    assert len(ds) == 3 and ds.formula == "Pt4"
    np.testing.assert_allclose(ds.y, [0, 1, 2])
    au = load(path, formula="Pt3Au")
    np.testing.assert_allclose(au.y, [0, -1])
    with pytest.raises(DataError, match="no frames of .* have the composition Pt5"):
        load(path, formula="Pt5")
    with pytest.raises(DataError, match="has the property 'energy' .*; keys every frame has: formation_energy"):
        load(path, formula="Pt4", property="energy")
    with pytest.raises(DataError, match="'formation_enrgy' \\(did you mean 'formation_energy'\\?\\)"):
        load(path, formula="Pt4", property="formation_enrgy")
    with pytest.raises(DataError, match="has the property 'band_gap'; keys every frame"):  # nothing close: no guess
        load(path, formula="Pt4", property="band_gap")


def test_atom_order_is_unified(tmp_path):
    import ase.io

    a = _cluster("AuPt3", 1, formation_energy=1.0)
    b = _cluster("Pt3Au", 2, formation_energy=2.0)
    ase.io.write(tmp_path / "o.extxyz", [a, b])
    ds = load(tmp_path / "o.extxyz")
    assert ds.numbers.tolist() == [78, 78, 78, 79]
    np.testing.assert_allclose(ds.atoms[1].positions, b.positions)  # already Pt, Pt, Pt, Au
    np.testing.assert_allclose(ds.atoms[0].positions, a.positions[[1, 2, 3, 0]])


def test_energy_from_calculator_results(small_db):
    ds = load(small_db, property="energy")
    assert ds.units == "eV"
    np.testing.assert_allclose(ds.y, [a.get_potential_energy() for a in ds.atoms])


def test_plain_ase_db_keeps_row_order(tmp_path):
    import ase.db

    db = ase.db.connect(tmp_path / "plain.db", use_lock_file=False)
    for i, gap in enumerate([0.5, 0.1, 0.3]):
        db.write(_cluster("Pt3", i), gap=gap)
    ds = load(tmp_path / "plain.db", property="gap")
    assert ds.y.tolist() == [0.5, 0.1, 0.3] and ds.units == ""
    np.testing.assert_allclose(ds.atoms[1].positions, _cluster("Pt3", 1).positions)


def test_unreadable_and_missing_sources(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load(tmp_path / "nothing.db")
    (tmp_path / "junk.extxyz").write_text("not a structure\n")
    with pytest.raises(DataError, match="cannot read"):
        load(tmp_path / "junk.extxyz")
    with pytest.raises(DataError, match="no built-in data set or file named 'pt11-emt'"):
        load("pt11-emt")
    with pytest.raises(DataError, match="unknown size 'huge'"):
        load("pt10-emt", size="huge")


def test_dataset_api(small_db):
    ds = load(small_db)
    assert ds.cell.shape == (3, 3) and np.allclose(ds.cell, np.eye(3) * 20.0)
    assert ds.pbc.tolist() == [False] * 3
    assert ds.numbers.tolist() == [78] * 10
    sub = ds.subset([3, 1])
    assert len(sub) == 2 and sub.y.tolist() == [ds.y[3], ds.y[1]]
    assert sub.content_hash() != ds.content_hash()
    assert ds.subset(np.arange(len(ds))).content_hash() == ds.content_hash()
    info = ds.info()
    assert info["frames"] == len(ds) and info["compositions"] == {"Pt10": len(ds)}
    assert info["min"] == ds.y.min() and info["units"] == "eV/atom"
    changed = Dataset(ds.atoms, ds.y + 1e-9, property=ds.property, source="x")
    assert changed.content_hash() != ds.content_hash()
    with pytest.raises(DataError, match="out of range"):
        ds.subset([len(ds)])


# -- sampling -----------------------------------------------------------------------


def _naive_fps(X: np.ndarray, n: int, first: int) -> list[int]:
    picks = [first]
    while len(picks) < n:
        d = [min(np.linalg.norm(x - X[p]) for p in picks) for x in X]
        picks.append(int(np.argmax(d)))
    return picks


def test_fps_matches_a_naive_implementation_and_is_deterministic():
    rng = np.random.default_rng(0)
    R = rng.normal(size=(120, 6)) * np.array([1, 10, 100, 1e3, 1e-2, 1])
    picks = furthest_point_sampling(R, 15, seed=4)
    assert np.array_equal(picks, furthest_point_sampling(R, 15, seed=4))
    X = (R - R.mean(0)) / R.std(0)
    assert picks.tolist() == _naive_fps(X, 15, int(picks[0]))
    raw = furthest_point_sampling(R, 15, seed=4, standardize=False)
    assert raw.tolist() == _naive_fps(R, 15, int(raw[0]))
    # Standardised: rescaling a feature changes nothing.
    assert np.array_equal(furthest_point_sampling(R * np.array([5, 1, 1, 1, 1, 1]), 15, seed=4), picks)
    assert len(set(picks.tolist())) == 15


def test_fps_picks_the_extremes_first_and_spreads():
    rng = np.random.default_rng(1)
    x = rng.uniform(-3, 7, size=(500, 1))
    for seed in range(5):
        picks = furthest_point_sampling(x, 5, seed=seed)
        assert set(picks[:2].tolist()) == {int(np.argmin(x)), int(np.argmax(x))}
    R = rng.normal(size=(400, 3))
    picks = furthest_point_sampling(R, 20)

    def min_gap(idx):
        sel = R[idx]
        return np.linalg.norm(sel[:, None] - sel[None], axis=-1)[np.triu_indices(len(idx), 1)].min()

    random_gaps = [min_gap(rng.choice(400, 20, replace=False)) for _ in range(20)]
    assert min_gap(picks) > max(random_gaps)


def test_fps_bad_input():
    with pytest.raises(InputError, match="n must be"):
        furthest_point_sampling(np.zeros((5, 2)), 6)
    with pytest.raises(InputError, match="NaN"):
        furthest_point_sampling(np.array([[0.0], [np.nan]]), 1)


def test_train_val_split():
    train, val = train_val_split(300)
    assert len(train) == 240 and len(val) == 60
    assert sorted(np.concatenate([train, val]).tolist()) == list(range(300))
    again = train_val_split(300)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, train_val_split(300, seed=1)[1])
    assert len(train_val_split(3, 0.2)[1]) == 1
    with pytest.raises(InputError):
        train_val_split(10, 1.0)


# -- the feature cache --------------------------------------------------------------


@pytest.fixture
def counting_rep(monkeypatch):
    from invfp_example.representation import SortedDistances

    calls = []
    forward = SortedDistances.forward

    def counted(self, positions, *args, **kwargs):
        calls.append(positions.shape[0])
        return forward(self, positions, *args, **kwargs)

    monkeypatch.setattr(SortedDistances, "forward", counted)
    return SortedDistances, calls


def test_feature_cache_hit_and_invalidation(small_db, counting_rep, tmp_path):
    SortedDistances, calls = counting_rep
    ds = load(small_db).subset(np.arange(0, 400, 7))
    R = featurize(ds, SortedDistances(), device="cpu")
    assert sum(calls) == len(ds)
    expected = np.sort(
        [
            np.linalg.norm(a.positions[:, None] - a.positions[None], axis=-1)[np.triu_indices(10, 1)]
            for a in ds.atoms
        ]
    )
    np.testing.assert_allclose(R, expected, atol=1e-6)
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 1

    calls.clear()
    np.testing.assert_array_equal(featurize(ds, SortedDistances(), device="cpu"), R)
    assert calls == []  # a hit: nothing computed

    R2 = featurize(ds, SortedDistances(scale=2.0), device="cpu")  # other config
    assert sum(calls) == len(ds)
    np.testing.assert_allclose(R2, np.exp(-R / 2.0), atol=1e-12)

    calls.clear()
    moved = ds.subset(np.arange(len(ds)))
    moved.atoms = [a.copy() for a in moved.atoms]
    moved.atoms[0].positions[0, 0] += 0.1  # other data
    featurize(moved, SortedDistances(), device="cpu")
    assert sum(calls) == len(ds)

    calls.clear()
    featurize(ds, SortedDistances(), cache=False, device="cpu")
    assert sum(calls) == len(ds)
    assert len(list((tmp_path / "cache" / "features").glob("*.npy"))) == 3


def test_corrupt_cache_file_is_recomputed(small_db, counting_rep, tmp_path):
    SortedDistances, calls = counting_rep
    ds = load(small_db).subset(np.arange(10))
    R = featurize(ds, SortedDistances(), device="cpu")
    (cached,) = (tmp_path / "cache" / "features").glob("*.npy")
    cached.write_bytes(b"\x93NUMPY garbage")
    calls.clear()
    np.testing.assert_array_equal(featurize(ds, SortedDistances(), device="cpu"), R)
    assert sum(calls) == len(ds)
    assert np.array_equal(np.load(cached), R)
