"""Data sets of one composition with one scalar property: the built-in set or any file.

::

    from invfp.data import load
    ds = load()                                   # built-in Pt10-EMT (made and cached on first use)
    ds = load("pt10-emt", size="small")           # a few hundred frames, for tests and --quick
    ds = load("my.db", property="energy")         # any ase.db or file ase.io.read reads (extxyz, ...)
    ds = load("mixed.extxyz", formula="Pt10")     # pick one composition of a mixed file
    ds.atoms, ds.y, ds.numbers, ds.cell, ds.pbc   # list[ase.Atoms], [n] float64, [N], [3, 3], [3]

A generative model is trained for one composition, so a :class:`Dataset` holds one:
a file that mixes compositions is an error unless ``formula=`` selects one.

The property of a frame is looked up in ``atoms.info`` (extxyz comments, ase.db
key-value pairs), then in the calculator results (``energy``, ``free_energy``).

The built-in ``"pt10-emt"`` set (DESIGN.md, "The embedded default") is made with
:func:`invfp.data.make_dataset` on first use and cached in
``$INVFP_CACHE_DIR/datasets`` (default ``~/.cache/invfp``); :func:`builtin_path`
gives its ase.db. Sizes: ``"full"`` (160 relaxations, seed 0: about 33,800 frames)
and ``"small"`` (the first 2 of those relaxations: about 500 frames).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from invfp.components import closest
from invfp.errors import DataError

if TYPE_CHECKING:
    import ase

UNITS = {
    "formation_energy": "eV/atom",
    "energy": "eV",
    "free_energy": "eV",
    "energy_per_atom": "eV/atom",
}
"""Units of well-known property keys (others are reported as unknown, "")."""

BUILTIN: dict[str, dict[str, dict[str, Any]]] = {
    "pt10-emt": {
        "full": {"formula": "Pt10", "relaxations": 160, "seed": 0, "calculator": "emt"},
        "small": {"formula": "Pt10", "relaxations": 2, "seed": 0, "calculator": "emt"},
    },
}
"""Built-in data sets: name -> size -> :func:`invfp.data.make_dataset` arguments."""


class Dataset:
    """Structures of one composition with one scalar property each.

    Attributes:
        atoms: the structures (``list[ase.Atoms]``), all with the same atomic numbers.
        y: the property, ``[n]`` float64.
        property: the property key (e.g. ``"formation_energy"``).
        units: its units (``"eV/atom"``), or ``""`` when unknown.
        source: where the data came from (a path or a built-in name).
    """

    def __init__(
        self,
        atoms: Sequence[ase.Atoms],
        y: Sequence[float] | np.ndarray,
        *,
        property: str,
        units: str | None = None,
        source: str = "",
    ) -> None:
        self.atoms = list(atoms)
        self.y = np.asarray(y, dtype=np.float64).reshape(-1)
        self.property = property
        self.units = UNITS.get(property, "") if units is None else units
        self.source = source
        if not self.atoms:
            raise DataError(f"no structures in {source or 'the data set'}")
        if len(self.y) != len(self.atoms):
            raise DataError(f"{len(self.atoms)} structures but {len(self.y)} property values")
        check_finite_property(self.y, property, source or "the data set")
        first = self.atoms[0].numbers
        for i, frame in enumerate(self.atoms):
            if not np.array_equal(frame.numbers, first):
                raise DataError(
                    f"frame {i} of {source or 'the data set'} has atoms {frame.get_chemical_formula()} in another "
                    f"order or composition than frame 0 ({self.atoms[0].get_chemical_formula()}); "
                    "a data set holds one composition (load() selects one with formula=)"
                )
        pbcs = {tuple(bool(p) for p in frame.pbc) for frame in self.atoms}
        if len(pbcs) > 1:
            raise DataError(
                f"{source or 'the data set'} mixes periodic and non-periodic frames: {sorted(pbcs)}"
            )
        self._hash: str | None = None

    def __len__(self) -> int:
        return len(self.atoms)

    def __repr__(self) -> str:
        return (
            f"Dataset({len(self)} × {self.formula}, {self.property} [{self.units}], source={self.source!r})"
        )

    @property
    def numbers(self) -> np.ndarray:
        """Atomic numbers ``[N]`` of the (single) composition."""
        return np.array(self.atoms[0].numbers, dtype=np.int64)

    @property
    def formula(self) -> str:
        """The composition as ASE writes it (``"Pt10"``)."""
        return self.atoms[0].get_chemical_formula(mode="hill")

    @property
    def positions(self) -> np.ndarray:
        """All positions ``[n, N, 3]`` float64."""
        return np.stack([frame.positions for frame in self.atoms])

    @property
    def cells(self) -> np.ndarray:
        """Every frame's cell ``[n, 3, 3]`` (Å)."""
        return np.stack([np.asarray(frame.cell.array, dtype=np.float64) for frame in self.atoms])

    @property
    def cell(self) -> np.ndarray:
        """The cell ``[3, 3]`` shared by every frame; DataError when frames differ (use ``.cells``)."""
        cells = self.cells
        if not np.allclose(cells, cells[0], atol=1e-8):
            raise DataError(f"the frames of {self.source or 'the data set'} have different cells; use .cells")
        return cells[0]

    @property
    def pbc(self) -> np.ndarray:
        """Periodic boundary flags ``[3]`` (the same for every frame)."""
        return np.array(self.atoms[0].pbc, dtype=bool)

    def column(self, key: str) -> np.ndarray:
        """Another scalar per frame (e.g. ``"relaxation"``, ``"is_minimum"``) as ``[n]``."""
        return property_values(self.atoms, key, self.source)

    def content_hash(self) -> str:
        """SHA-256 of positions, numbers, cells, pbc and y: equal data, equal hash."""
        if self._hash is None:
            h = hashlib.sha256()
            for array in (
                self.numbers.astype("<i8"),
                self.positions.astype("<f8"),
                self.cells.astype("<f8"),
                self.pbc.astype(np.uint8),
                self.y.astype("<f8"),
            ):
                h.update(str(array.shape).encode())
                h.update(np.ascontiguousarray(array).tobytes())
            self._hash = h.hexdigest()
        return self._hash

    def subset(self, idx: Sequence[int] | np.ndarray) -> Dataset:
        """A new Dataset of the frames ``idx`` (indices or a boolean mask), in that order."""
        idx = np.asarray(idx)
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise DataError(f"a boolean mask must have {len(self)} entries, got {idx.shape}")
            idx = np.flatnonzero(idx)
        idx = idx.astype(np.int64).reshape(-1)
        if len(idx) and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise DataError(f"subset index out of range for {len(self)} frames")
        return Dataset(
            [self.atoms[int(i)] for i in idx],
            self.y[idx],
            property=self.property,
            units=self.units,
            source=self.source,
        )

    def info(self) -> dict[str, Any]:
        """Counts, composition, cell and property range, as a JSON-friendly dict."""
        return {
            "source": self.source,
            "frames": len(self),
            "formula": self.formula,
            "atoms_per_frame": len(self.numbers),
            "compositions": {self.formula: len(self)},
            "pbc": self.pbc.tolist(),
            "property": self.property,
            "units": self.units,
            "min": float(self.y.min()),
            "max": float(self.y.max()),
            "mean": float(self.y.mean()),
            "std": float(self.y.std()),
        }


def load(
    source: str | os.PathLike[str] = "pt10-emt",
    *,
    property: str = "formation_energy",
    formula: str | None = None,
    size: str = "full",
    progress: bool = False,
) -> Dataset:
    """A :class:`Dataset` from a built-in name or a file.

    Args:
        source: ``"pt10-emt"`` (built in; made and cached on first use) or a path to an
            ase.db or any file :func:`ase.io.read` reads (extxyz, ...).
        property: the per-frame scalar to model.
        formula: keep only frames of this composition (needed for mixed files).
        size: for built-in sets, ``"full"`` or ``"small"``.
        progress: show progress while making the built-in set.

    Raises:
        DataError: missing or unreadable file, unknown built-in name or size, a
            property key the frames lack (the message lists the keys they have),
            mixed compositions without ``formula=``, or a formula none match.
    """
    if isinstance(source, str) and source in BUILTIN:
        frames = _read_builtin(source, size, progress)
    elif isinstance(source, str) and not Path(source).exists() and "." not in Path(source).name:
        raise DataError(f"no built-in data set or file named {source!r}; built-in sets: {', '.join(BUILTIN)}")
    else:
        frames = read_frames(source)
    name = str(source)
    frames = select_formula(frames, formula, name)
    y = property_values(frames, property, name)
    return Dataset(frames, y, property=property, source=name)


def read_frames(path: str | os.PathLike[str]) -> list[ase.Atoms]:
    """Every frame of an ase.db (key-value pairs in ``atoms.info``) or an ase.io-readable file.

    Frames of a file made by :func:`invfp.data.make_dataset` come sorted by
    (relaxation, step), so a resumed file reads exactly like an uninterrupted one.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"no such file: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; give an ase.db or extxyz file")
    if _is_sqlite(path):
        frames = _read_db(path)
    else:
        import ase.io

        try:
            frames = ase.io.read(str(path), index=":")
        except Exception as exc:  # noqa: BLE001 - any parser error means "cannot read"
            raise DataError(
                f"cannot read {path} ({type(exc).__name__}: {exc}); invfp reads ase.db files and "
                "anything ase.io.read reads (extxyz, xyz, cif, traj, ...)"
            ) from exc
        if not isinstance(frames, list):
            frames = [frames]
    if not frames:
        raise DataError(f"{path} holds no structures")
    return frames


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(16) == b"SQLite format 3\x00"


def _read_db(path: Path) -> list[ase.Atoms]:
    import ase.db

    try:
        db = ase.db.connect(str(path), type="db", append=True, use_lock_file=False)
        made_by_invfp = "invfp_recipe" in db.metadata
        with db:  # one connection for all rows: ase.db otherwise opens one per row
            rows = list(db.select())
    except Exception as exc:  # noqa: BLE001 - corrupt or foreign SQLite
        raise DataError(f"cannot read {path} as an ase.db ({type(exc).__name__}: {exc})") from exc
    if made_by_invfp:
        rows.sort(key=lambda row: (row.key_value_pairs["relaxation"], row.key_value_pairs["step"]))
    frames = []
    for row in rows:
        atoms = row.toatoms()
        atoms.info.update(row.key_value_pairs)
        frames.append(atoms)
    return frames


def select_formula(frames: list[ase.Atoms], formula: str | None, source: str) -> list[ase.Atoms]:
    """Frames of one composition (``formula``), or all when they share one; atoms in one order.

    Frames of the same composition listing their atoms in different orders are put in
    one order (stably sorted by atomic number).
    """
    counts = Counter(frame.get_chemical_formula(mode="hill") for frame in frames)
    if formula is not None:
        from invfp.data.make import normalize_formula

        wanted = normalize_formula(formula)
        frames = [frame for frame in frames if frame.get_chemical_formula(mode="hill") == wanted]
        if not frames:
            raise DataError(
                f"no frames of {source} have the composition {wanted}; it holds {_describe(counts)}"
            )
    elif len(counts) > 1:
        raise DataError(
            f"{source} mixes compositions ({_describe(counts)}); a model needs one composition: "
            f"select one with formula='{counts.most_common(1)[0][0]}' (CLI: --formula)"
        )
    first = frames[0].numbers
    if all(np.array_equal(frame.numbers, first) for frame in frames):
        return frames
    return [frame[np.argsort(frame.numbers, kind="stable")] for frame in frames]


def _describe(counts: Counter[str]) -> str:
    return ", ".join(f"{f}: {n} frames" for f, n in counts.most_common())


def property_values(frames: Sequence[ase.Atoms], key: str, source: str = "") -> np.ndarray:
    """``[n]`` float64 values of a scalar ``key`` per frame; DataError listing the keys there are."""
    values = np.empty(len(frames), dtype=np.float64)
    missing = 0
    for i, frame in enumerate(frames):
        value = _lookup(frame, key)
        if value is None:
            missing += 1
            continue
        try:
            values[i] = float(value)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{key!r} of frame {i} of {source} is not a number: {value!r}") from exc
    if missing:
        keys = available_keys(frames)
        where = "no frame" if missing == len(frames) else f"{missing} of {len(frames)} frames"
        guess = closest(key, keys)
        hint = f" (did you mean {guess!r}?)" if guess else ""
        raise DataError(
            f"{where} of {source or 'the data'} has the property {key!r}{hint}; "
            f"keys every frame has: {', '.join(keys) if keys else 'none'}"
        )
    return values


def check_finite_property(y: np.ndarray, key: str, source: str) -> None:
    """Raise DataError naming how many frames (and the first) have a NaN or infinite ``key``."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(y, dtype=float)))
    if bad.size:
        raise DataError(
            f"{len(bad)} frames of {source} have a non-finite {key!r} (NaN or inf; first: frame {bad[0]}); "
            "remove those frames or fix their values"
        )


def _lookup(frame: ase.Atoms, key: str) -> Any:
    if key in frame.info:
        return frame.info[key]
    if frame.calc is not None and key in getattr(frame.calc, "results", {}):
        value = frame.calc.results[key]
        return value if np.ndim(value) == 0 else None
    return None


def available_keys(frames: Sequence[ase.Atoms]) -> list[str]:
    """Scalar numeric keys every frame has (info entries and calculator results)."""
    common: set[str] | None = None
    for frame in frames:
        keys = {k for k, v in frame.info.items() if _is_scalar(v)}
        if frame.calc is not None:
            keys |= {k for k, v in getattr(frame.calc, "results", {}).items() if _is_scalar(v)}
        common = keys if common is None else common & keys
    return sorted(common or ())


def _is_scalar(value: Any) -> bool:
    return np.ndim(value) == 0 and isinstance(value, (int, float, np.number, bool, np.bool_))


def text_histogram(values: np.ndarray, *, bins: int = 12, width: int = 40) -> str:
    """A text histogram: one line per bin, ``[lo, hi)  count  ####``."""
    values = np.asarray(values, dtype=np.float64)
    counts, edges = np.histogram(values, bins=bins)
    top = max(int(counts.max()), 1)
    digits = len(str(top))
    return "\n".join(
        f"[{lo:9.4f}, {hi:9.4f})  {int(c):>{digits}}  {'#' * round(width * c / top)}".rstrip()
        for lo, hi, c in zip(edges[:-1], edges[1:], counts, strict=True)
    )


# -- the built-in sets --------------------------------------------------------------


def builtin_path(name: str = "pt10-emt", size: str = "full", *, progress: bool = False) -> Path:
    """The ase.db of a built-in set, made (resumably) on first use in the cache directory."""
    return _ensure_builtin(name, size, progress)[0]


def _builtin_params(name: str, size: str) -> dict[str, Any]:
    if name not in BUILTIN:
        raise DataError(f"unknown built-in data set {name!r}; built-in sets: {', '.join(BUILTIN)}")
    if size not in BUILTIN[name]:
        raise DataError(f"unknown size {size!r} of {name}; sizes: {', '.join(BUILTIN[name])}")
    return BUILTIN[name][size]


def _ensure_builtin(name: str, size: str, progress: bool) -> tuple[Path, Path]:
    from invfp.data.cache import cache_dir
    from invfp.data.make import RECIPE_VERSION, file_lock, make_dataset

    params = _builtin_params(name, size)
    key = hashlib.sha256(json.dumps([params, RECIPE_VERSION], sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "datasets"
    db_path = folder / f"{name}-{size}-{key}.db"
    arrays_path = folder / f"{name}-{size}-{key}.npz"
    if db_path.exists() and arrays_path.exists():
        return db_path, arrays_path
    folder.mkdir(parents=True, exist_ok=True)
    # Concurrent first uses wait for one another instead of writing the same file twice.
    with file_lock(db_path, blocking=True):
        if not db_path.exists():  # the partial file resumes an interrupted first use
            partial = folder / f"{name}-{size}-{key}.partial.db"
            make_dataset(partial, progress=progress, **params)
            os.replace(partial, db_path)
        if not arrays_path.exists():  # NumPy arrays: reloads in seconds, not minutes
            _save_arrays(read_frames(db_path), arrays_path)
    return db_path, arrays_path


def _save_arrays(frames: list[ase.Atoms], path: Path) -> None:
    from invfp.utils import atomic_write

    columns = {
        k: np.array([frame.info[k] for frame in frames])
        for k in available_keys(frames)
        if k in frames[0].info
    }
    arrays = {
        "numbers": frames[0].numbers,
        "positions": np.stack([f.positions for f in frames]),
        "cell": np.asarray(frames[0].cell.array),
        "pbc": np.asarray(frames[0].pbc),
        "energy": np.array([f.get_potential_energy() for f in frames]),
        "forces": np.stack([f.get_forces() for f in frames]),
        **{f"info/{k}": v for k, v in columns.items()},
    }

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _read_builtin(name: str, size: str, progress: bool) -> list[ase.Atoms]:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    _, arrays_path = _ensure_builtin(name, size, progress)
    with np.load(arrays_path) as z:
        arrays = {k: z[k] for k in z.files}
    info_keys = [k for k in arrays if k.startswith("info/")]
    frames = []
    for i in range(len(arrays["positions"])):
        atoms = Atoms(
            numbers=arrays["numbers"],
            positions=arrays["positions"][i],
            cell=arrays["cell"],
            pbc=arrays["pbc"],
        )
        atoms.calc = SinglePointCalculator(
            atoms, energy=float(arrays["energy"][i]), forces=arrays["forces"][i]
        )
        atoms.info.update({k[5:]: arrays[k][i].item() for k in info_keys})
        frames.append(atoms)
    return frames
