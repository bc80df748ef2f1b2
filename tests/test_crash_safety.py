"""kill -9 at several stages of ``invfp run`` and ``invfp data make``: every file stays readable.

What tests/test_run_cli.py and tests/test_data.py already show (one kill mid-way, then
the resumed rows equal an uninterrupted run's) is not repeated here. These tests kill
more than once, at other stages (during training, while chunks are committed), and
after every kill check each file of the output: SQLite's integrity check passes, no
(target, sample) or (relaxation, step) row is stored twice, every JSON / npz / extxyz
file parses, summary.json and accepted.extxyz are either absent or complete and agree
with results.db, no temporary file is left, and the model cache holds only complete
bundles. The final rerun must end with every row exactly once.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from ase.io import read, write
from procs import db_rows, signal_when

from invfp.models.io import load_bundle
from invfp.results import FILES
from invfp.testing import random_pt5_clusters

TARGETS, SAMPLES, CHUNK = 2, 6, 2
RUN_ARGS = [
    "--quick", "--train-size", "40", "--epochs", "20", "--n", str(SAMPLES), "--chunk", str(CHUNK),
    "--targets", "2.0,2.6", "--opt", "restarts=2", "--opt", "hops=0", "--opt", "steps=40",
    "--opt", "refine_steps=10", "--device", "cpu",
]


def _env(cache: Path) -> dict[str, str]:
    # The runs' temporary files go beside the cache: a kill -9 leaves them (nothing can clean
    # up after SIGKILL), and they must not pile up in the machine's /tmp.
    tmp = cache.parent / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**os.environ, "INVFP_CACHE_DIR": str(cache), "INVFP_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1",
            "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def pt5(tmp_path_factory) -> Path:
    """40 random Pt5 clusters with their EMT formation energy."""
    path = tmp_path_factory.mktemp("data") / "pt5.extxyz"
    write(path, random_pt5_clusters(40, seed=1))
    return path


def _kill_when(cmd: list[str], env: dict[str, str], ready: Callable[[], bool], timeout: float = 240) -> bool:
    """Start ``cmd``, kill -9 it as soon as ``ready()``; False when it finished first."""
    _, code, err = signal_when(cmd, env, ready, signal.SIGKILL, timeout)
    if code != -signal.SIGKILL:
        assert code == 0, err
        return False
    return True


def _sqlite_rows(db: Path, keys: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Integrity-checked rows of an ase.db as tuples of the integer ``keys``."""
    # read-write like every later reader: a hot journal left by kill -9 is rolled back
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "number_key_values" not in tables:
            return []
        values: dict[int, dict[str, int]] = {}
        for row_id, key, value in con.execute("SELECT id, key, value FROM number_key_values"):
            if key in keys:
                values.setdefault(row_id, {})[key] = int(value)
    return sorted(tuple(v[k] for k in keys) for v in values.values())


def _check_run_dir(run: Path, cache: Path) -> list[tuple[int, ...]]:
    """Every file of a (possibly killed) run directory is readable and consistent; returns its rows."""
    names = {p.name for p in run.iterdir()}
    assert names <= {*FILES, ".lock", "results.db-journal"}, f"unexpected files: {names - set(FILES)}"
    config = json.loads((run / "config.json").read_text())
    assert config["n"] == SAMPLES
    if (run / "calibration.json").exists():
        calibration = json.loads((run / "calibration.json").read_text())
        assert np.isfinite(calibration["threshold"]) and len(calibration["losses"]) == calibration["n"]
    if (run / "reference.npz").exists():
        with np.load(run / "reference.npz", allow_pickle=False) as ref:
            assert ref["R"].shape[0] == ref["y"].shape[0] == 40 and np.isfinite(ref["R"]).all()
    rows = _sqlite_rows(run / "results.db", ("target_index", "sample", "accepted")) if "results.db" in names else []
    keys = [r[:2] for r in rows]
    assert len(keys) == len(set(keys)), "a (target, sample) row is stored twice"
    assert len(rows) % CHUNK == 0, "a chunk was committed in part"
    if "summary.json" in names:  # written last: complete, and it matches the rows
        summary = json.loads((run / "summary.json").read_text())
        assert sum(t["generated"] for t in summary["targets"]) == len(rows) == TARGETS * SAMPLES
        assert sum(t["accepted"] for t in summary["targets"]) == sum(r[2] for r in rows)
    if "accepted.extxyz" in names:
        accepted = sum(r[2] for r in rows)
        frames = read(run / "accepted.extxyz", index=":") if accepted else []
        assert len(frames) == accepted
    for bundle in (cache / "models").glob("*") if (cache / "models").is_dir() else []:
        if not bundle.name.startswith("."):  # temporary directories are dot-named and never loaded
            load_bundle(bundle)  # complete, or ModelLoadError
    return rows


def test_run_killed_in_training_and_mid_chunks_resumes_with_every_file_readable(pt5, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    cmd = [sys.executable, "-m", "invfp", "run", "--data", str(pt5), *RUN_ARGS, "-o", str(run)]
    env = _env(cache)

    # 1. during training: the store exists, no model is cached yet
    assert _kill_when(cmd, env, lambda: (run / "config.json").exists()), "the run ended before the first kill"
    assert _check_run_dir(run, cache) == []

    # 2. while chunks are being committed
    assert _kill_when(cmd, env, lambda: db_rows(run / "results.db") >= 2 * CHUNK), "the run ended before the kill"
    partial = _check_run_dir(run, cache)
    assert 2 * CHUNK <= len(partial) < TARGETS * SAMPLES and not (run / "summary.json").exists()

    # 3. to the end: every row once, summary and accepted structures agree with the rows
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _check_run_dir(run, cache)
    assert [r[:2] for r in rows] == [(t, s) for t in range(TARGETS) for s in range(SAMPLES)]
    assert set(partial) <= set(rows)  # committed rows are kept as they were
    assert (run / "summary.json").exists() and (run / "accepted.extxyz").exists()


def test_run_interrupted_by_ctrl_c_says_so_stops_its_workers_and_resumes(pt5, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    cmd = [sys.executable, "-m", "invfp", "run", "--data", str(pt5), *RUN_ARGS, "--workers", "2", "-o", str(run)]
    env = _env(cache)
    # A shell starts background jobs with SIGINT ignored, and children inherit that (CI may
    # run this way): give the run the default disposition, as a terminal would.
    running, code, err = signal_when(cmd, env, lambda: db_rows(run / "results.db") >= CHUNK, signal.SIGINT,
                                      preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    assert running, "the run ended before Ctrl-C"
    assert code == 130 and "interrupted; rerun the same command to resume" in err, err
    partial = _check_run_dir(run, cache)
    assert CHUNK <= len(partial) < TARGETS * SAMPLES and not (run / "summary.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _check_run_dir(run, cache)
    assert [r[:2] for r in rows] == [(t, s) for t in range(TARGETS) for s in range(SAMPLES)]
    assert set(partial) <= set(rows)


def test_run_terminated_in_training_cleans_up_and_says_so(pt5, tmp_path):
    # SIGTERM (kill, a batch scheduler's time limit) takes Ctrl-C's path: the temporary
    # directory of the surrogate trained beside the model is removed, the worker process
    # stopped, the files left readable, and the exit code is 143 with a one-line message.
    cache, run = tmp_path / "cache", tmp_path / "run"
    cmd = [sys.executable, "-m", "invfp", "run", "--data", str(pt5), *RUN_ARGS, "-o", str(run)]
    env = _env(cache)
    tmp = Path(env["TMPDIR"])
    running, code, err = signal_when(cmd, env, lambda: bool(list(tmp.glob("invfp-surrogate-*"))), signal.SIGTERM)
    assert running, "the run ended before it trained"
    assert code == 143, err
    assert "terminated (SIGTERM); rerun the same command to resume" in err and "Traceback" not in err, err
    assert list(tmp.glob("invfp-surrogate-*")) == []
    assert _check_run_dir(run, cache) == []


def test_data_make_killed_twice_keeps_an_intact_database(tmp_path):
    out = tmp_path / "pt10.db"
    n = 4
    cmd = [sys.executable, "-m", "invfp", "data", "make", "pt10-emt", "-o", str(out), "--relaxations", str(n),
           "--max-steps", "60", "--workers", "1"]
    env = _env(tmp_path / "cache")
    keys = ("relaxation", "step")
    seen: set[tuple[int, ...]] = set()
    for stage in (1, 2):
        ready = lambda stage=stage: len({r for r, _ in _sqlite_rows_safe(out, keys)}) >= stage  # noqa: E731
        assert _kill_when(cmd, env, ready), "data make ended before the kill"
        rows = _sqlite_rows(out, keys)
        assert len(rows) == len(set(rows)), "a (relaxation, step) row is stored twice"
        _assert_whole_relaxations(rows)
        assert set(rows) >= seen  # committed relaxations are kept
        seen = set(rows)
        allowed = {"pt10.db", ".pt10.db.lock", "pt10.db-journal", "cache", "tmp"}  # tmp: the TMPDIR of _env
        assert {p.name for p in tmp_path.iterdir()} <= allowed
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = _sqlite_rows(out, keys)
    assert len(rows) == len(set(rows)) and set(rows) >= seen
    assert {r for r, _ in rows} == set(range(n))
    _assert_whole_relaxations(rows)


def _sqlite_rows_safe(db: Path, keys: tuple[str, ...]) -> list[tuple[int, ...]]:
    """Rows read while another process writes (read-only, no waiting): [] when not readable yet."""
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1) as con:
            values: dict[int, dict[str, int]] = {}
            for row_id, key, value in con.execute("SELECT id, key, value FROM number_key_values"):
                if key in keys:
                    values.setdefault(row_id, {})[key] = int(value)
        return [tuple(v[k] for k in keys) for v in values.values() if len(v) == len(keys)]
    except sqlite3.Error:
        return []


def _assert_whole_relaxations(rows: list[tuple[int, ...]]) -> None:
    """Each stored relaxation holds steps 0..S, each once (relaxations are committed whole)."""
    by_relaxation: dict[int, list[int]] = {}
    for relaxation, step in rows:
        by_relaxation.setdefault(relaxation, []).append(step)
    for steps in by_relaxation.values():
        assert sorted(steps) == list(range(len(steps)))


def test_a_lock_file_left_by_a_killed_write_does_not_stall_the_next_run(tmp_path):
    """ase.db's own lock file, left by a run killed mid-write, once made the rerun wait for ever."""
    import threading

    from ase import Atoms

    from invfp.results import ResultsStore, SampleRecord

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.db.lock").write_text("")  # as a kill -9 inside ase.db's write left it
    store = ResultsStore(run, {"n": 1})
    assert not (run / "results.db.lock").exists()
    (run / "results.db.lock").write_text("")  # and one appearing later is no lock of ours either
    record = SampleRecord(target_index=0, target=1.0, chunk=0, sample=0, atoms=Atoms("Pt2", [[0, 0, 0], [0, 0, 2.5]]),
                          loss=0.01)
    writer = threading.Thread(target=store.write_chunk, args=(0, 0, [record]), daemon=True)
    writer.start()
    writer.join(timeout=60)
    assert not writer.is_alive(), "writing a chunk waited on a stale lock file"
    assert store.committed_chunks() == {(0, 0)}
    store.close()


SWALLOWED = """
import importlib, os, signal, sys, weakref
app = importlib.import_module("invfp.cli.app")  # the module (invfp.cli.app is also the Typer app)
signal.signal(signal.SIGTERM, app._on_sigterm)
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.unraisablehook = app._redeliver_swallowed_interrupt

class Thing:
    pass

def callback(_):  # runs as importlib's module-lock callbacks do: exceptions are "ignored"
    os.kill(os.getpid(), signal.{name})
    for _ in range(10000):  # the handler runs here, inside the callback
        pass

thing = Thing()
ref = weakref.ref(thing, callback)
try:
    del thing
    for _ in range(10**7):
        pass
    print("went on")
except KeyboardInterrupt:
    print("interrupted", app._signals["term"])
"""


@pytest.mark.parametrize("name", ["SIGTERM", "SIGINT"])
def test_a_signal_swallowed_inside_a_callback_is_delivered_again(name):
    # A SIGTERM that arrived while importlib ran a module-lock callback raised its
    # KeyboardInterrupt there, Python printed "Exception ignored" and dropped it, and the
    # killed `invfp run` went on to exit 0 (seen in test_run_terminated_in_training_...).
    done = subprocess.run([sys.executable, "-c", SWALLOWED.replace("{name}", name)],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == f"interrupted {name == 'SIGTERM'}", (done.stdout, done.stderr)
    assert "Exception ignored" not in done.stderr, done.stderr
