"""The results store of a run: ``runs/NAME/`` with an ase.db, the accepted structures and a summary.

Layout of a run directory::

    config.json       what determines the results (a different configuration is refused)
    calibration.json  the loss threshold derived from training structures, and how
    results.db        ase.db: one row per sample (target, sample index, loss, every
                      validator's verdict and value, the true property, the structure)
    accepted.extxyz   the structures every filter accepted
    summary.json      per target: generated, accepted, MAE and share within the window
    reference.npz     fingerprints ``R`` and property ``y`` of the data the model learned
                      from (optional; ``invfp report`` plots them beside the samples)

Rows are written per chunk (one target, a fixed slice of its samples) in ONE ase.db
transaction, so an interrupted run (Ctrl-C, ``kill -9``) leaves only whole chunks; a
rerun skips them and recomputes the missing ones with the same per-chunk seeds, so no
row is duplicated or lost.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from invfp.errors import ConfigError, InputError
from invfp.utils import atomic_write, atomic_write_text
from invfp.validators.base import Verdict

if TYPE_CHECKING:
    import ase

FILES = ("config.json", "calibration.json", "results.db", "accepted.extxyz", "summary.json", "reference.npz")


@dataclasses.dataclass
class SampleRecord:
    """One generated, reconstructed and validated sample."""

    target_index: int
    target: float
    chunk: int
    sample: int
    """Index of the sample within its target (0 … n−1)."""
    atoms: ase.Atoms
    loss: float
    steps: int = 0
    time: float = 0.0
    restart_losses: list[float] = dataclasses.field(default_factory=list)
    verdicts: dict[str, Verdict] = dataclasses.field(default_factory=dict)
    """Every validator's verdict, by validator name (filters and the oracle)."""
    accepted: bool = False
    """Whether every filter accepted the structure (the oracle does not filter)."""
    true_property: float | None = None
    """The oracle's value of the property, when an oracle ran."""
    fingerprint: np.ndarray | None = None
    """The generated fingerprint ``[D]`` the structure was reconstructed from."""
    fingerprint: np.ndarray | None = None
    """The generated fingerprint R the structure was reconstructed from (stored in row data)."""

    def key_value_pairs(self) -> dict[str, Any]:
        """Flat, queryable ase.db columns (``v_<validator>`` and ``v_<validator>_ok``)."""
        kvp: dict[str, Any] = {
            "target_index": self.target_index,
            "target": float(self.target),
            "chunk": self.chunk,
            "sample": self.sample,
            "loss": float(self.loss),
            "steps": int(self.steps),
            "recon_time": float(self.time),
            "accepted": bool(self.accepted),
        }
        if self.true_property is not None and math.isfinite(self.true_property):
            kvp["true_property"] = float(self.true_property)
            kvp["true_error"] = float(self.true_property - self.target)
        for name, verdict in self.verdicts.items():
            key = "v_" + name.replace("-", "_")
            kvp[key + "_ok"] = bool(verdict.accepted)
            if verdict.value is not None and math.isfinite(verdict.value):
                kvp[key] = float(verdict.value)
        return kvp


class _MemoryLock:
    def release(self) -> None:
        return None


def _readable_sqlite(path: Path) -> bool:
    """Whether SQLite reads ``path`` whole (``PRAGMA quick_check``), before a resume builds on it.

    Opened read-write, as ase.db will: a hot journal left by kill -9 is rolled back, not
    mistaken for damage.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path)) as con:
            return con.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.DatabaseError:
        return False


def read_json_file(path: Path, *, fix: str) -> Any:
    """A run's JSON side file, ``None`` when absent; an unreadable one is an InputError ending in ``fix``."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"{path} is unreadable ({exc}); {fix}") from exc


class ResultsStore:
    """A run directory (see the module docstring).

    Args:
        directory: the run directory, created when missing.
        config: the run's configuration (JSON-serialisable). When the directory holds
            a different one, :class:`~invfp.errors.InputError` is raised unless
            ``force``, which deletes the old run's files first.
        force: start over in a directory that holds another run.
    """

    def __init__(self, directory: str | os.PathLike[str], config: Mapping[str, Any], *, force: bool = False) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise InputError(f"output {self.directory} exists and is not a directory; choose another -o")
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_directory(self.directory)
        self.config = json.loads(json.dumps(dict(config)))
        old = self.read_json("config.json")
        if old is not None and old != self.config:
            if not force:
                self._lock.release()
                changed = sorted(k for k in set(old) | set(self.config) if old.get(k) != self.config.get(k))
                raise InputError(
                    f"{self.directory} holds a different run (differs in: {', '.join(changed)}); "
                    "choose another -o, or pass --force to delete it and start over"
                )
            for name in FILES:
                (self.directory / name).unlink(missing_ok=True)
        elif old is None and (self.directory / "results.db").exists():
            if not force:
                self._lock.release()
                raise InputError(
                    f"{self.directory} holds results.db without config.json (not an invfp run, or a "
                    "damaged one); choose another -o, or pass --force to delete it"
                )
            (self.directory / "results.db").unlink()
        if old != self.config:
            atomic_write_text(self.directory / "config.json", json.dumps(self.config, indent=2, sort_keys=True))
        self.db_path = self.directory / "results.db"
        # A lock file of ase.db left by a run of an older invfp killed mid-write; ours hold
        # the directory's flock, so no live run is using it.
        (self.directory / "results.db.lock").unlink(missing_ok=True)
        if self.db_path.exists() and not _readable_sqlite(self.db_path):
            if not force:
                self._lock.release()
                raise InputError(
                    f"{self.db_path} is damaged (not a readable SQLite database); pass --force to start over, "
                    "or choose another -o"
                )
            self.db_path.unlink()

    def close(self) -> None:
        """Release the directory lock."""
        self._lock.release()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- JSON side files ---------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        """A JSON side file of the run (``None`` when absent)."""
        return read_json_file(self.directory / name, fix="pass --force to start over")

    def write_json(self, name: str, value: Any) -> Path:
        """Write a JSON side file atomically."""
        return atomic_write_text(self.directory / name, json.dumps(value, indent=2, sort_keys=True))

    # -- rows --------------------------------------------------------------------------
    def _connect(self) -> Any:
        import ase.db

        # No ase lock file: a run killed while writing left results.db.lock behind, and the
        # rerun waited on it for ever. The directory's flock (released by the kernel even
        # on kill -9) already keeps other runs out, and SQLite locks its own writes.
        return ase.db.connect(str(self.db_path), type="db", append=True, use_lock_file=False)

    def committed_chunks(self) -> set[tuple[int, int]]:
        """The (target index, chunk) pairs whose rows are in the database."""
        if not self.db_path.exists():
            return set()
        db = self._connect()
        return {(row.target_index, row.chunk) for row in db.select(columns=["key_value_pairs"], include_data=False)}

    def write_chunk(self, target_index: int, chunk: int, records: Sequence[SampleRecord]) -> None:
        """Write one chunk's rows in one transaction (all of them or none)."""
        db = self._connect()
        with db:
            if db.count(target_index=target_index, chunk=chunk):
                raise InputError(
                    f"chunk {chunk} of target {target_index} is already stored in {self.db_path}; "
                    "is another process writing to this run?"
                )
            for record in records:
                atoms = record.atoms.copy()
                atoms.info.clear()
                data: dict[str, Any] = {
                    "restart_losses": [float(x) for x in record.restart_losses],
                    "verdicts": {name: [bool(v.accepted), v.value, v.detail] for name, v in record.verdicts.items()},
                }
                if record.fingerprint is not None:
                    data["fingerprint"] = np.asarray(record.fingerprint, dtype=np.float64)
                db.write(atoms, key_value_pairs=record.key_value_pairs(), data=data)

    def records(self) -> list[SampleRecord]:
        """Every stored sample, ordered by target index then sample index."""
        if not self.db_path.exists():
            return []
        out = []
        for row in self._connect().select():
            kvp = row.key_value_pairs
            data = row.data
            verdicts = {
                name: Verdict(bool(ok), None if value is None else float(value), str(detail))
                for name, (ok, value, detail) in data.get("verdicts", {}).items()
            }
            out.append(
                SampleRecord(
                    target_index=int(kvp["target_index"]),
                    target=float(kvp["target"]),
                    chunk=int(kvp["chunk"]),
                    sample=int(kvp["sample"]),
                    atoms=row.toatoms(),
                    loss=float(kvp["loss"]),
                    steps=int(kvp.get("steps", 0)),
                    time=float(kvp.get("recon_time", 0.0)),
                    restart_losses=list(data.get("restart_losses", [])),
                    verdicts=verdicts,
                    accepted=bool(kvp["accepted"]),
                    true_property=kvp.get("true_property"),
                    fingerprint=data.get("fingerprint"),
                )
            )
        out.sort(key=lambda r: (r.target_index, r.sample))
        return out

    def write_reference(self, fingerprints: Any, values: Any) -> Path:
        """Store the data the model learned from (``reference.npz``: ``R`` [n, D], ``y`` [n]) for reports."""
        R = np.asarray(fingerprints, dtype=np.float64)
        y = np.asarray(values, dtype=np.float64).reshape(-1)
        if R.ndim != 2 or len(R) != len(y):
            raise InputError(f"reference data needs R [n, D] and y [n], got shapes {R.shape} and {y.shape}")

        def save(path: Path) -> None:
            with open(path, "wb") as handle:  # a file object: np.savez would append .npz to the temp name
                np.savez(handle, R=R, y=y)

        return atomic_write(self.directory / "reference.npz", save)

    # -- outputs -----------------------------------------------------------------------
    def write_outputs(self, records: Sequence[SampleRecord], summary: Mapping[str, Any]) -> None:
        """Write ``accepted.extxyz`` and ``summary.json`` atomically."""
        from ase.io import write

        accepted = []
        for record in records:
            if not record.accepted:
                continue
            atoms = record.atoms.copy()
            atoms.info.clear()
            atoms.info.update({k: v for k, v in record.key_value_pairs().items() if not k.startswith("v_")})
            accepted.append(atoms)
        atomic_write(self.directory / "accepted.extxyz", lambda p: write(str(p), accepted, format="extxyz"))
        self.write_json("summary.json", summary)


def summarize(
    records: Sequence[SampleRecord], targets: Sequence[float], *, window: float = 0.1
) -> list[dict[str, Any]]:
    """Per target: generated, accepted, and MAE / % within ``window`` of the true property.

    "all" covers every generated sample, "accepted" those every filter accepted
    (the analog of the paper's Table 2, before and after filtering). Figures are
    ``None`` where no sample has a true property.
    """
    rows = []
    for index, target in enumerate(targets):
        mine = [r for r in records if r.target_index == index]
        kept = [r for r in mine if r.accepted]
        row: dict[str, Any] = {
            "target": float(target),
            "generated": len(mine),
            "accepted": len(kept),
            "median_loss": float(np.median([r.loss for r in mine])) if mine else None,
        }
        for label, group in (("all", mine), ("accepted", kept)):
            errors = np.array(
                [abs(r.true_property - target) for r in group if r.true_property is not None], dtype=float
            )
            errors = errors[np.isfinite(errors)]
            row[f"mae_{label}"] = float(errors.mean()) if len(errors) else None
            row[f"within_{label}"] = float(100.0 * np.mean(errors <= window)) if len(errors) else None
        names = sorted({name for r in mine for name in r.verdicts})
        row["passed"] = {name: sum(r.verdicts[name].accepted for r in mine if name in r.verdicts) for name in names}
        rows.append(row)
    return rows


class _FileLock:
    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing drops the flock; the kernel drops it on kill -9 too
            self._handle = None


def _lock_directory(directory: Path) -> Any:
    try:
        import fcntl
    except ImportError:  # no flock on this platform: concurrent runs are the user's business
        return _MemoryLock()
    handle = open(directory / ".lock", "w")  # noqa: SIM115 - held for the store's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.close()
        raise ConfigError(f"{directory} is in use by another invfp run; wait for it or choose another -o") from exc
    return _FileLock(handle)
