"""A table of bad inputs for every CLI command: each is one clear line, a non-zero exit, no output.

Every case goes through ``invfp.cli.app.main`` (the wrapper that turns errors into one
line), in this process for speed; ``test_debug_shows_the_traceback`` and
``test_one_line_in_a_real_process`` run a real ``python -m invfp`` to show the same.
For each case: exit code != 0, stderr is exactly one line ``error: ...`` holding the
key words (the problem and the fix), no ``Traceback``, the ``-o`` path does not exist
afterwards (or, when it existed before, is unchanged) and no file appeared anywhere
(no stray temporary file beside the output).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.io import write

import invfp
import invfp.errors
from invfp.data import featurize, furthest_point_sampling, load, make_dataset
from invfp.models.io import load_bundle

ACSF_SMALL = ["--param", 'species=["Pt"]', "--param", "r_cut=5.0", "--param", "g2_params=[[1,0],[0.5,2]]"]


def _clusters(n: int, symbols: str, seed: int) -> list[Atoms]:
    """``n`` random clusters of ``symbols`` with atoms >= 2 Å apart and a property."""
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    while len(frames) < n:
        atoms = Atoms(symbols, positions=rng.uniform(-2.0, 2.0, (len(Atoms(symbols)), 3)) + 10.0, cell=[20.0] * 3)
        if np.min(atoms.get_all_distances()[np.triu_indices(len(atoms), 1)]) > 2.0:
            atoms.info["formation_energy"] = 1.0 + 0.1 * len(frames)
            frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Every bad (and a few good) input file the table needs, made once."""
    from invfp import testing
    from invfp.models.cvae import CVAE
    from invfp.models.io import WEIGHTS_FILE, save_bundle
    from invfp.models.surrogate import Surrogate
    from invfp.results import ResultsStore

    d = tmp_path_factory.mktemp("inputs")
    good = _clusters(6, "Pt4", 0)
    write(d / "good.extxyz", good)
    nan_pos = [a.copy() for a in good]
    nan_pos[2].positions[1, 0] = np.nan
    write(d / "nanpos.extxyz", nan_pos)
    nan_y = [a.copy() for a in good]
    nan_y[3].info["formation_energy"] = float("nan")
    write(d / "nany.extxyz", nan_y)
    write(d / "mixed.extxyz", good[:3] + _clusters(2, "Pt3", 1))
    (d / "garbage.extxyz").write_text("3\nnot = \"an extxyz\nPt 0 0 x\n")
    (d / "empty.extxyz").write_text("")
    (d / "text.npy").write_text("1,2,3\n")
    (d / "words.csv").write_text("a,b,c\n")
    (d / "blank.csv").write_text("\n")
    (d / "ragged.csv").write_text("1,2,3\n4,5\n")
    (d / "text.db").write_text("hello\n")
    (d / "afile").write_text("a regular file, where a directory is expected\n")
    R, y = testing.synthetic_fingerprints(60, 12, seed=1)
    np.save(d / "R12.npy", R)
    np.save(d / "R5.npy", R[:, :5])
    bad = R.copy()
    bad[3, 2] = np.nan
    np.save(d / "Rnan.npy", bad)
    np.save(d / "Rempty.npy", np.zeros((0, 12)))
    np.save(d / "Robj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    raw = (d / "R12.npy").read_bytes()
    (d / "Rtrunc.npy").write_bytes(raw[: len(raw) // 2])
    np.save(d / "F8inf.npy", np.full((2, 8), np.inf))
    np.save(d / "F4.npy", np.ones((1, 4)))
    make_dataset(d / "made.db", relaxations=1, max_steps=3, workers=1)
    db = (d / "made.db").read_bytes()
    (d / "trunc.db").write_bytes(db[: len(db) // 3])
    generator = CVAE(epochs=3, hidden=8, latent=2, batch_size=16)
    generator.fit(R, y, seed=0)
    surrogate = Surrogate(epochs=3, hidden=8, layers=1, batch_size=16)
    surrogate.fit(R, y, seed=0)
    for name in ("bundle", "tampered"):
        save_bundle(d / name, generator=generator, surrogate=surrogate, representation_config={"name": "test"},
                    property="formation_energy", units="eV/atom")
    weights = d / "tampered" / "generator" / WEIGHTS_FILE
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # one edited byte in the last tensor
    weights.write_bytes(bytes(data))
    ResultsStore(d / "otherrun", {"another": "run"}).close()
    (d / "badrun").mkdir()
    (d / "badrun" / "results.db").write_bytes(db[:2000])
    return d


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> sha256), to prove nothing appeared or changed.

    Empty ``.NAME.lock`` files are left out: ``invfp data make`` keeps its flock file
    beside the output on purpose (deleting a lock file another process may be
    waiting on would break the lock).
    """
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not (p.name.startswith(".") and p.name.endswith(".lock") and p.stat().st_size == 0)
    }


@pytest.fixture
def cli(run_cli, monkeypatch, tmp_path):
    """The CLI in this process, with its own cache, run from ``tmp_path``."""
    monkeypatch.setenv("INVFP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    return run_cli


# (id, arguments with {d} = inputs and {o} = an empty output directory, key words of the message)
CASES: list[tuple[str, list[str], list[str]]] = [
    # featurize
    ("featurize-missing-file", ["featurize", "{d}/nothing.extxyz", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["nothing.extxyz", "no such file"]),
    ("featurize-directory", ["featurize", "{d}/bundle", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["bundle is a directory, not a file"]),
    ("featurize-empty-file", ["featurize", "{d}/empty.extxyz", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["empty.extxyz", "ASE cannot read it", "Empty file"]),
    ("featurize-garbage-extxyz", ["featurize", "{d}/garbage.extxyz", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["garbage.extxyz", "ASE cannot read it"]),
    ("featurize-truncated-db", ["featurize", "{d}/trunc.db", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["trunc.db", "malformed"]),
    ("featurize-nan-positions", ["featurize", "{d}/nanpos.extxyz", "--preset", "fung2022", "-o", "{o}/R.npy"],
     ["structure 2", "NaN or infinite positions", "fix or drop it"]),
    ("featurize-unknown-repr", ["featurize", "{d}/good.extxyz", "--repr", "acfs", "-o", "{o}/R.npy"],
     ["unknown representation 'acfs'", "did you mean 'acsf'", "available: acsf"]),
    ("featurize-unknown-param", ["featurize", "{d}/good.extxyz", "--param", "rcut=5", "-o", "{o}/R.npy"],
     ["no parameter 'rcut'", "allowed parameters", "r_cut"]),
    ("featurize-param-not-key-value", ["featurize", "{d}/good.extxyz", "--param", "r_cut", "-o", "{o}/R.npy"],
     ["--param 'r_cut' is not key=value", "e.g. --param r_cut=6.0"]),
    ("featurize-negative-cutoff", ["featurize", "{d}/good.extxyz", "--param", 'species=["Pt"]', "--param",
                                   "r_cut=-1", "-o", "{o}/R.npy"], ["r_cut=-1", "finite number > 0"]),
    ("featurize-mixed-compositions", ["featurize", "{d}/mixed.extxyz", *ACSF_SMALL, "--per-atom", "-o", "{o}/R.npy"],
     ["different atom counts", "featurize them one at a time"]),
    ("featurize-batch-size-0", ["featurize", "{d}/good.extxyz", "--batch-size", "0", "-o", "{o}/R.npy"],
     ["--batch-size must be >= 1"]),
    ("featurize-dtype", ["featurize", "{d}/good.extxyz", "--dtype", "float16", "-o", "{o}/R.npy"],
     ["float16", "use float64 or float32"]),
    ("featurize-unknown-device", ["featurize", "{d}/good.extxyz", *ACSF_SMALL, "--device", "tpu", "-o", "{o}/R.npy"],
     ["unknown device 'tpu'", "use 'cpu'"]),
    ("featurize-output-under-a-file", ["featurize", "{d}/good.extxyz", *ACSF_SMALL, "-o", "{d}/afile/R.npy"],
     ["cannot write", "afile is a file, not a directory", "choose an output path"]),
    # NumPy's binary format is not written under another name
    ("featurize-output-format", ["featurize", "{d}/good.extxyz", *ACSF_SMALL, "-o", "{o}/R.txt"],
     ["R.txt", "write arrays to .npy (NumPy) or .csv"]),
    ("featurize-per-atom-csv", ["featurize", "{d}/good.extxyz", *ACSF_SMALL, "--per-atom", "-o", "{o}/A.csv"],
     ["3-D array (per-atom features) does not fit a CSV table", "write .npy"]),
    # data make / info
    ("data-make-unknown-recipe", ["data", "make", "pt11-emt", "-o", "{o}/x.db"],
     ["unknown recipe 'pt11-emt'", "recipes: pt10-emt"]),
    ("data-make-zero-relaxations", ["data", "make", "pt10-emt", "--relaxations", "0", "-o", "{o}/x.db"],
     ["relaxations must be an integer >= 1", "got 0"]),
    ("data-make-negative-relaxations", ["data", "make", "pt10-emt", "--relaxations", "-3", "-o", "{o}/x.db"],
     ["relaxations must be an integer >= 1", "got -3"]),
    ("data-make-negative-fmax", ["data", "make", "pt10-emt", "--fmax", "-1", "-o", "{o}/x.db"],
     ["fmax must be a finite number > 0"]),
    ("data-make-not-a-db", ["data", "make", "pt10-emt", "--relaxations", "1", "-o", "{o}/x.extxyz"],
     ["must be an ase.db file named *.db", "ase convert"]),
    ("data-make-unknown-calculator", ["data", "make", "pt10-emt", "--calculator", "vasp2", "-o", "{o}/x.db"],
     ["unknown calculator 'vasp2'", "emt"]),
    ("data-make-unknown-element", ["data", "make", "pt10-emt", "--formula", "Xx10", "-o", "{o}/x.db"],
     ["unknown element 'Xx'", "like 'Pt10'"]),
    ("data-make-output-under-a-file", ["data", "make", "pt10-emt", "--relaxations", "1", "-o", "{d}/afile/x.db"],
     ["cannot write", "afile is a file, not a directory"]),
    ("data-make-output-is-truncated-db", ["data", "make", "pt10-emt", "--relaxations", "1", "-o", "{d}/trunc.db"],
     ["not a readable ase.db", "choose another output file"]),
    ("data-make-existing-other-settings", ["data", "make", "pt10-emt", "--relaxations", "1", "--max-steps", "3",
                                           "--seed", "5", "-o", "{d}/made.db"],
     ["made with other settings", "seed: 0 there, 5 asked", "use another output file"]),
    ("data-info-missing", ["data", "info", "{d}/nothing.db"], ["no such file", "nothing.db"]),
    ("data-info-text-db", ["data", "info", "{d}/text.db"], ["cannot read", "text.db", "not a database"]),
    ("data-info-truncated-db", ["data", "info", "{d}/trunc.db"], ["cannot read", "trunc.db", "malformed"]),
    ("data-info-unknown-property", ["data", "info", "{d}/good.extxyz", "--property", "band_gap"],
     ["'band_gap'", "keys every frame has: formation_energy"]),
    ("data-info-nan-property", ["data", "info", "{d}/nany.extxyz"],
     ["non-finite 'formation_energy'", "frame 3", "remove those frames"]),
    ("data-info-absent-composition", ["data", "info", "{d}/good.extxyz", "--formula", "Au3"],
     ["composition Au3", "it holds Pt4"]),
    ("data-info-bins-0", ["data", "info", "{d}/good.extxyz", "--bins", "0"],
     ["Invalid value for '--bins'", "invfp data info --help"]),
    # train
    ("train-missing-data", ["train", "--data", "{d}/nothing.db", "--preset", "fung2022", "-o", "{o}/b"],
     ["no such file", "nothing.db"]),
    ("train-corrupt-data", ["train", "--data", "{d}/garbage.extxyz", "--preset", "fung2022", "-o", "{o}/b"],
     ["cannot read", "garbage.extxyz"]),
    ("train-nan-property", ["train", "--data", "{d}/nany.extxyz", "--preset", "fung2022", "-o", "{o}/b"],
     ["non-finite 'formation_energy'", "remove those frames"]),
    ("train-nan-positions", ["train", "--data", "{d}/nanpos.extxyz", "--preset", "fung2022", "-o", "{o}/b"],
     ["NaN or infinite positions", "fix or drop it"]),
    ("train-unknown-model", ["train", "--data", "{d}/good.extxyz", "--model", "cvea", "-o", "{o}/b"],
     ["unknown model 'cvea'", "available: cvae"]),
    ("train-unknown-model-param", ["train", "--data", "{d}/good.extxyz", "--param", "latnet=4", "-o", "{o}/b"],
     ["no parameter 'latnet'", "latent"]),
    ("train-zero-epochs", ["train", "--data", "{d}/good.extxyz", "--epochs", "0", "-o", "{o}/b"],
     ["--epochs must be >= 1", "got 0"]),
    ("train-negative-train-size", ["train", "--data", "{d}/good.extxyz", "--train-size", "-2", "-o", "{o}/b"],
     ["--train-size must be >= 1"]),
    ("train-unknown-property", ["train", "--data", "{d}/good.extxyz", "--preset", "fung2022", "--property", "gap",
                                "-o", "{o}/b"], ["'gap'", "keys every frame has"]),
    ("train-output-under-a-file", ["train", "--data", "{d}/good.extxyz", "--preset", "fung2022",
                                   "-o", "{d}/afile/b"], ["cannot write", "afile is a file, not a directory"]),
    # generate
    ("generate-missing-bundle", ["generate", "{d}/nobundle", "--target", "2", "-o", "{o}/g.npy"],
     ["does not exist", "invfp train"]),
    ("generate-not-a-bundle", ["generate", "{d}/otherrun", "--target", "2", "-o", "{o}/g.npy"],
     ["bundle.json is missing", "train it again"]),
    ("generate-tampered-weights", ["generate", "{d}/tampered", "--target", "2", "-o", "{o}/g.npy"],
     ["checksum", "truncated or modified", "train it again"]),
    ("generate-n-0", ["generate", "{d}/bundle", "--target", "2", "--n", "0", "-o", "{o}/g.npy"],
     ["--n must be >= 1", "got 0"]),
    ("generate-n-negative", ["generate", "{d}/bundle", "--target", "2", "--n", "-5", "-o", "{o}/g.npy"],
     ["--n must be >= 1", "got -5"]),
    ("generate-nan-target", ["generate", "{d}/bundle", "--target", "nan", "-o", "{o}/g.npy"],
     ["target must be a finite number", "nan"]),
    ("generate-negative-delta", ["generate", "{d}/bundle", "--target", "2", "--delta", "-1", "-o", "{o}/g.npy"],
     ["--delta must be > 0"]),
    ("generate-output-under-a-file", ["generate", "{d}/bundle", "--target", "2", "-o", "{d}/afile/g.npy"],
     ["cannot write", "afile is a file, not a directory"]),
    ("generate-output-format", ["generate", "{d}/bundle", "--target", "2", "-o", "{o}/g.dat"],
     ["g.dat", "write arrays to .npy (NumPy) or .csv"]),
    # score
    ("score-missing-npy", ["score", "{d}/bundle", "{d}/nothing.npy"], ["nothing.npy", "no such file"]),
    # the two arguments swapped: each is named for what it is
    ("score-arguments-swapped", ["score", "{d}/R12.npy", "{d}/bundle"], ["bundle is a directory, not a file"]),
    ("score-file-as-bundle", ["score", "{d}/R12.npy", "{d}/R12.npy"], ["R12.npy is a file, not a model bundle"]),
    ("score-text-npy", ["score", "{d}/bundle", "{d}/text.npy"], ["not a .npy file", "numpy.save"]),
    ("score-truncated-npy", ["score", "{d}/bundle", "{d}/Rtrunc.npy"], ["damaged or truncated", "write it again"]),
    ("score-pickled-npy", ["score", "{d}/bundle", "{d}/Robj.npy"], ["Python objects", "never unpickles"]),
    ("score-nan-fingerprints", ["score", "{d}/bundle", "{d}/Rnan.npy"], ["NaN or infinite"]),
    ("score-wrong-dimension", ["score", "{d}/bundle", "{d}/R5.npy"],
     ["expects fingerprints of shape [n, 12]", "(60, 5)", "same representation"]),
    ("score-empty-array", ["score", "{d}/bundle", "{d}/Rempty.npy"], ["shape (0, 12)", "expected [n, D]"]),
    ("score-nan-target", ["score", "{d}/bundle", "{d}/R12.npy", "--target", "nan"],
     ["--target must be a finite number"]),
    ("score-output-under-a-file", ["score", "{d}/bundle", "{d}/R12.npy", "-o", "{d}/afile/p.npy"],
     ["cannot write", "afile is a file, not a directory"]),
    ("score-output-format", ["score", "{d}/bundle", "{d}/R12.npy", "-o", "{o}/p.json"],
     ["p.json", "write arrays to .npy (NumPy) or .csv"]),
    ("score-csv-of-words", ["score", "{d}/bundle", "{d}/words.csv"], ["cannot read fingerprints", "words.csv"]),
    # reconstruct
    ("reconstruct-missing", ["reconstruct", "{d}/nothing.npy", "-f", "Pt4", "--preset", "fung2022",
                             "-o", "{o}/r.extxyz"], ["nothing.npy", "no such file"]),
    ("reconstruct-directory-as-fingerprints", ["reconstruct", "{d}/bundle", "-f", "Pt4", "--preset", "fung2022",
                                               "-o", "{o}/r.extxyz"], ["bundle is a directory, not a file"]),
    ("reconstruct-text-npy", ["reconstruct", "{d}/text.npy", "-f", "Pt4", "--preset", "fung2022",
                              "-o", "{o}/r.extxyz"], ["not a .npy file", "numpy.save"]),
    ("reconstruct-wrong-format", ["reconstruct", "{d}/good.extxyz", "-f", "Pt4", "--preset", "fung2022",
                                  "-o", "{o}/r.extxyz"], ["must be a .npy array or a comma-separated .csv"]),
    ("reconstruct-empty-csv", ["reconstruct", "{d}/blank.csv", "-f", "Pt4", "--preset", "fung2022",
                               "-o", "{o}/r.extxyz"], ["blank.csv' holds no numbers", "one row per line, the same number of comma-separated numbers"]),
    ("reconstruct-ragged-csv", ["reconstruct", "{d}/ragged.csv", "-f", "Pt4", "--preset", "fung2022",
                                "-o", "{o}/r.extxyz"], ["number of columns changed from 3 to 2", "the same number of comma-separated numbers on each"]),
    ("reconstruct-empty-array", ["reconstruct", "{d}/Rempty.npy", "-f", "Pt4", "--preset", "fung2022",
                                 "-o", "{o}/r.extxyz"], ["targets are empty (shape (0, 12))"]),
    ("reconstruct-inf-fingerprint", ["reconstruct", "{d}/F8inf.npy", "-f", "Pt4", *ACSF_SMALL, "-o", "{o}/r.extxyz"],
     ["NaN or inf", "remove or fix those fingerprints"]),
    ("reconstruct-dimension-vs-composition", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                              "-o", "{o}/r.extxyz"],
     ["12 features", "gives 380", "check the representation", "--formula"]),
    ("reconstruct-unknown-element", ["reconstruct", "{d}/R12.npy", "-f", "Xx4", "--preset", "fung2022",
                                     "-o", "{o}/r.extxyz"], ["cannot read the composition 'Xx4'", "like 'Pt10'"]),
    ("reconstruct-element-not-in-species", ["reconstruct", "{d}/F4.npy", "-f", "Au4", *ACSF_SMALL,
                                            "-o", "{o}/r.extxyz"], ["Au not in this ACSF's species", "add them"]),
    ("reconstruct-negative-seed", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                   "--seed", "-1", "-o", "{o}/r.extxyz"], ["Invalid value for '--seed'", "greater than or equal to 0"]),
    ("run-negative-seed", ["run", "--quick", "--seed", "-3", "-o", "{o}/run"],
     ["Invalid value for '--seed'", "greater than or equal to 0"]),
    ("reconstruct-zero-restarts", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                   "--restarts", "0", "-o", "{o}/r.extxyz"], ["restarts=0", "integer >= 1"]),
    ("reconstruct-negative-hops", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                   "--hops", "-1", "-o", "{o}/r.extxyz"], ["hops=-1", "integer >= 0"]),
    ("reconstruct-unknown-optimizer", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                       "--optimizer", "adamm", "-o", "{o}/r.extxyz"],
     ["unknown optimizer 'adamm'", "available: adam-hopping, lbfgs"]),
    ("reconstruct-pbc-without-cell", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022", "--pbc",
                                      "-o", "{o}/r.extxyz"], ["periodic reconstruction needs a cell"]),
    ("reconstruct-bad-cell", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022", "--cell", "1,2",
                              "-o", "{o}/r.extxyz"], ["--cell '1,2'", "one length, three lengths or nine numbers"]),
    ("reconstruct-output-format", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                   "-o", "{o}/r.txt"], ["write .extxyz"]),
    ("reconstruct-output-under-a-file", ["reconstruct", "{d}/R12.npy", "-f", "Pt4", "--preset", "fung2022",
                                         "-o", "{d}/afile/r.extxyz"], ["cannot write", "afile is a file"]),
    # run
    ("run-missing-data", ["run", "--data", "{d}/nothing.db", "--quick", "-o", "{o}/run"],
     ["no such file", "nothing.db"]),
    ("run-nan-property", ["run", "--data", "{d}/nany.extxyz", "--quick", "-o", "{o}/run"],
     ["non-finite 'formation_energy'", "remove those frames"]),
    ("run-n-0", ["run", "--data", "{d}/good.extxyz", "--n", "0", "-o", "{o}/run"],
     ["Invalid value for '--n'", "greater than or equal to 1", "invfp run --help"]),
    ("run-chunk-0", ["run", "--data", "{d}/good.extxyz", "--chunk", "0", "-o", "{o}/run"],
     ["Invalid value for '--chunk'"]),
    ("run-negative-loss-threshold", ["run", "--data", "{d}/good.extxyz", "--loss-threshold", "-1", "-o", "{o}/run"],
     ["--loss-threshold must be a finite number > 0", "leave it out"]),
    ("run-zero-window", ["run", "--data", "{d}/good.extxyz", "--window", "0", "-o", "{o}/run"],
     ["--window must be > 0"]),
    ("run-zero-restarts", ["run", "--data", "{d}/good.extxyz", "--quick", "--opt", "restarts=0", "-o", "{o}/run"],
     ["restarts=0", "integer >= 1"]),
    ("run-bad-model-opt", ["run", "--data", "{d}/good.extxyz", "--quick", "--model-opt", "prior=gaussian",
                           "-o", "{o}/run"],
     ["prior", "conditional"]),
    ("run-model-opt-no-value", ["run", "--data", "{d}/good.extxyz", "--model-opt", "prior", "-o", "{o}/run"],
     ["--model-opt 'prior' is not key=value", "e.g. --model-opt prior=conditional"]),
    ("run-nan-target", ["run", "--data", "{d}/good.extxyz", "--targets", "2,nan", "-o", "{o}/run"],
     ["finite numbers"]),
    ("run-unknown-executor", ["run", "--data", "{d}/good.extxyz", "--executor", "slurm", "-o", "{o}/run"],
     ["unknown executor 'slurm'", "local, dask"]),
    ("run-output-under-a-file", ["run", "--data", "{d}/good.extxyz", "--quick", "-o", "{d}/afile/run"],
     ["cannot write", "afile is a file, not a directory"]),
    ("run-output-is-a-file", ["run", "--data", "{d}/good.extxyz", "--quick", "-o", "{d}/afile"],
     ["exists and is not a directory", "choose another -o"]),
    ("run-existing-other-run", ["run", "--data", "{d}/good.extxyz", "--quick", "-o", "{d}/otherrun"],
     ["holds a different run", "--force"]),
    # report, plugins, version, the app
    ("report-not-a-run", ["report", "{d}/bundle", "-o", "{o}/rep"], ["holds no results.db", "invfp run -o DIR"]),
    ("report-damaged-results", ["report", "{d}/badrun", "-o", "{o}/rep"],
     ["results.db is not a readable ase.db", "invfp run -o DIR"]),
    ("report-negative-gallery", ["report", "{d}/badrun", "--gallery", "-1", "-o", "{o}/rep"],
     ["--gallery must be >= 0"]),
    ("plugins-unknown-kind", ["plugins", "--kind", "widget"], ["unknown kind 'widget'", "representation, optimizer"]),
    ("version-unknown-option", ["version", "--fulll"], ["No such option: --fulll", "invfp version --help"]),
    ("unknown-command", ["reconstruc"], ["No such command 'reconstruc'", "invfp --help"]),
]


def _output_of(args: list[str]) -> Path | None:
    for flag in ("-o", "--output"):
        if flag in args:
            return Path(args[args.index(flag) + 1])
    return None


@pytest.mark.parametrize(("args", "words"), [pytest.param(a, w, id=i) for i, a, w in CASES])
def test_bad_input(cli, inputs, tmp_path, args, words):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    args = [a.format(d=inputs, o=out_dir) for a in args]
    output = _output_of(args)
    existed = output is not None and output.exists()
    before = _snapshot(inputs)
    code, out, err = cli(*args)
    assert code != 0, out
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for word in words:
        assert word in err, f"{word!r} not in {err!r}"
    assert "Traceback" not in err + out
    if output is not None and not existed:
        assert not output.exists(), f"{output} was written"
    assert _snapshot(inputs) == before, "an input or an existing output changed, or a stray file appeared"
    assert list(out_dir.iterdir()) == []
    # nothing in the working directory either (run may have cached the data's fingerprints)
    assert {p.name for p in tmp_path.iterdir()} <= {"out", "cache"}


def _env() -> dict[str, str]:
    return {**os.environ, "INVFP_LOAD_PLUGINS": "", "OMP_NUM_THREADS": "1"}


def test_one_line_in_a_real_process(inputs, tmp_path):
    """The in-process table is what a user sees: the same case in ``python -m invfp``."""
    proc = subprocess.run(
        [sys.executable, "-m", "invfp", "score", str(inputs / "bundle"), str(inputs / "R5.npy")],
        env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "expects fingerprints of shape [n, 12]" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(inputs, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "invfp", "--debug", "score", str(inputs / "bundle"), str(inputs / "R5.npy")],
        env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "Traceback (most recent call last)" in proc.stderr
    assert "InputError: the surrogate expects fingerprints of shape [n, 12]" in proc.stderr


# -- the main API calls --------------------------------------------------------------


def _small_acsf():
    return invfp.get_representation("acsf", species=["Pt"], r_cut=5.0, g2_params=[[1.0, 0.0], [0.5, 2.0]])


API_CASES = [
    ("get_representation-unknown", lambda d: invfp.get_representation("acfs"),
     "UnknownComponentError", "did you mean 'acsf'"),
    ("get_representation-nan-cutoff",
     lambda d: invfp.get_representation("acsf", species=["Pt"], r_cut=float("nan")),
     "ConfigError", "r_cut=nan must be a finite number > 0"),
    ("featurize-not-atoms", lambda d: _small_acsf().featurize(["POSCAR"]), "InputError", "item 0 is a str"),
    ("featurize-no-structures", lambda d: _small_acsf().featurize([]), "InputError", "at least one structure"),
    ("featurize-inf-position",
     lambda d: _small_acsf().featurize(Atoms("Pt2", positions=[[0, 0, 0], [np.inf, 0, 0]])),
     "InputError", "structure 0 has NaN or infinite"),
    ("featurize-element-not-in-species",
     lambda d: _small_acsf().featurize(Atoms("Au2", positions=[[0, 0, 0], [2.5, 0, 0]])),
     "InputError", "Au not in this ACSF's species"),
    ("reconstruct-nan-target",
     lambda d: invfp.reconstruct(np.full(4, np.nan), numbers="Pt4", representation=_small_acsf()),
     "InputError", "NaN or inf"),
    ("reconstruct-wrong-dimension",
     lambda d: invfp.reconstruct(np.ones(7), numbers="Pt4", representation=_small_acsf()),
     "InputError", "7 features"),
    ("reconstruct-no-targets",
     lambda d: invfp.reconstruct(np.zeros((0, 4)), numbers="Pt4", representation=_small_acsf()),
     "InputError", "targets are empty (shape (0, 4)); give at least one fingerprint"),
    ("reconstruct-zero-restarts",
     lambda d: invfp.reconstruct(np.ones(4), numbers="Pt4", representation=_small_acsf(), restarts=0),
     "ConfigError", "restarts=0"),
    ("reconstruct-empty-composition",
     lambda d: invfp.reconstruct(np.ones(4), numbers=[], representation=_small_acsf()),
     "InputError", "at least one atom"),
    ("reconstruct-float-seed",
     lambda d: invfp.reconstruct(np.ones(4), numbers="Pt4", representation=_small_acsf(), seed=1.5),
     "ConfigError", "seed must be an integer >= 0 (or None for fresh entropy), got 1.5"),
    ("reconstruct-pbc-string",
     lambda d: invfp.reconstruct(np.ones(4), numbers="Pt4", cell=20.0, representation=_small_acsf(), pbc="yes"),
     "InputError", "pbc must be True, False or three of them (one per cell vector), got 'yes'"),
    ("reconstruct-pbc-two-values",
     lambda d: invfp.reconstruct(np.ones(4), numbers="Pt4", cell=20.0, representation=_small_acsf(),
                                 pbc=[True, True]),
     "InputError", "one per cell vector"),
    ("data-load-truncated-db", lambda d: load(d / "trunc.db"),
     "DataError", "malformed"),
    ("data-load-nan-property", lambda d: load(d / "nany.extxyz"),
     "DataError", "non-finite"),
    ("data-featurize-nan-positions",
     lambda d: featurize(load(d / "nanpos.extxyz"),
                                                      _small_acsf(), cache=False),
     "InputError", "structure 2"),
    ("make_dataset-zero-relaxations",
     lambda d: make_dataset(d / "never.db", relaxations=0),
     "DataError", "relaxations must be"),
    ("fps-negative-seed", lambda d: furthest_point_sampling(np.zeros((5, 3)), 2, seed=-1),
     "ConfigError", "seed must be an integer >= 0"),
    ("fps-more-than-there-are",
     lambda d: furthest_point_sampling(np.zeros((5, 3)), 10),
     "InputError", "n must be an integer in [1, 5]"),
    ("validator-negative-threshold",
     lambda d: invfp.get_validator("loss-threshold", threshold=-1.0), "ConfigError", "threshold=-1"),
    ("model-zero-epochs", lambda d: invfp.get_model("cvae", epochs=0), "ConfigError", "epochs=0"),
    ("model-fit-string-seed",
     lambda d: invfp.get_model("cvae", epochs=1).fit(np.random.default_rng(0).normal(size=(20, 12)),
                                                     np.linspace(0, 1, 20), seed="abc"),
     "ConfigError", "seed must be an integer >= 0 (or None for fresh entropy), got 'abc'"),
    ("model-sample-negative-seed",
     lambda d: load_bundle(d / "bundle").generator.sample(2.0, 3, seed=-1),
     "ConfigError", "seed must be an integer >= 0 (or None for fresh entropy), got -1"),
    ("model-sample-n-0",
     lambda d: load_bundle(d / "bundle").generator.sample(2.0, 0),
     "InputError", "number of samples must be an integer >= 1"),
    ("surrogate-inf",
     lambda d: load_bundle(d / "bundle").surrogate.predict(
         np.full((2, 12), np.inf)), "InputError", "NaN or infinite"),
    ("load_bundle-tampered", lambda d: load_bundle(d / "tampered"),
     "ModelLoadError", "checksum"),
]


@pytest.mark.parametrize(("call", "kind", "words"), [pytest.param(c, k, w, id=i) for i, c, k, w in API_CASES])
def test_bad_api_input(inputs, call, kind, words):
    with pytest.raises(getattr(invfp.errors, kind)) as exc:
        call(inputs)
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)
    assert not (inputs / "never.db").exists()
