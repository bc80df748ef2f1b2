"""Make a relaxation data set: random clusters relaxed with FIRE, every frame kept.

The recipe of invfp's built-in Pt10-EMT set (DESIGN.md, "The embedded default"),
generalised to any composition and any ASE calculator that runs in Python::

    from invfp.data import make_dataset
    make_dataset("pt10.db", formula="Pt10", relaxations=160, seed=0)

Each relaxation ``r`` starts from atoms placed uniformly at random in a ``±box`` Å
cube (no two closer than ``min_distance``), centred in a cubic cell of ``cell`` Å
without periodic boundaries, and is relaxed with FIRE until the largest force is below
``fmax`` eV/Å or ``max_steps`` steps are done. Every evaluated configuration (the
start, each intermediate frame and the final one) becomes one row of the output
ase.db, with the energy and forces and the key-value pairs

- ``formation_energy``: ``(E - sum_i E_bulk(Z_i)) / N`` in eV/atom, where
  ``E_bulk(Z)`` is the energy per atom of the element's bulk crystal under the same
  calculator: fcc with ``a = 3.92`` Å for Pt (the paper's reference), and
  :func:`ase.build.bulk`'s default structure and lattice constant for other elements;
- ``relaxation`` (int id), ``step`` (0 = the random start), ``is_minimum`` (True on
  the final frame of a relaxation that converged).

Reproducible and resumable: relaxation ``r`` draws its start from
``numpy.random.default_rng([seed, r])`` alone, and is written in one SQLite
transaction. Rerunning an interrupted command (even after ``kill -9``) skips the
relaxations already stored and gives the same rows as an uninterrupted run; rerunning
with more ``relaxations`` extends the file. The file records its recipe in the ase.db
metadata and refuses to be extended with a different one.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from invfp.errors import DataError

PT_LATTICE_CONSTANT = 3.92
"""fcc Pt lattice constant (Å) of the formation-energy reference (the paper's)."""

RECIPE_VERSION = 1
"""Bumped whenever the recipe changes what it writes for the same parameters."""

_PLACEMENT_TRIES = 1000  # draws per atom before the configuration starts again
_PLACEMENT_RESTARTS = 20


@dataclass(frozen=True)
class Recipe:
    """Everything that determines the rows of a made data set (except their count)."""

    formula: str
    seed: int
    calculator: str
    box: float
    min_distance: float
    cell: float
    fmax: float
    max_steps: int
    version: int = RECIPE_VERSION

    def numbers(self) -> list[int]:
        """Atomic numbers, in the order the formula lists them."""
        from ase.formula import Formula

        return [int(z) for z in _atomic_numbers(Formula(self.formula))]


def make_dataset(
    path: str | os.PathLike[str],
    *,
    formula: str = "Pt10",
    relaxations: int = 160,
    seed: int = 0,
    calculator: str = "emt",
    box: float = 3.5,
    min_distance: float = 2.2,
    cell: float = 20.0,
    fmax: float = 0.05,
    max_steps: int = 300,
    workers: int | None = None,
    progress: bool = False,
) -> Path:
    """Relax ``relaxations`` random starts and store every frame in an ase.db (see module docs).

    Args:
        path: output ase.db file (``*.db``); created, or resumed/extended when it exists.
        formula: composition, e.g. ``"Pt10"`` or ``"Pt8Au2"``.
        relaxations: number of relaxations (ids ``0 .. relaxations-1``).
        seed: base seed; relaxation ``r`` uses ``default_rng([seed, r])``.
        calculator: an ASE calculator name that runs without an external program
            (``emt``, ``lj``, ``morse``, ...).
        box: starts are uniform in the cube ``[-box, box]^3`` Å (then centred in the cell).
        min_distance: minimum interatomic distance of a start, Å.
        cell: edge of the cubic cell, Å (no periodic boundaries).
        fmax: FIRE convergence criterion, eV/Å.
        max_steps: most FIRE steps per relaxation.
        workers: worker processes (default: all available cores; 1 runs in this process).
            Linux forks them; elsewhere they are spawned, so a script calling this must
            guard its entry point with ``if __name__ == "__main__":``.
        progress: show a progress bar.

    Returns:
        The path of the (complete) ase.db.

    Raises:
        DataError: bad parameters, unknown formula or calculator, an existing file made
            with another recipe, or another process writing the same file. Nothing is
            written before the parameters have been checked.
    """
    path = Path(path)
    recipe = _check_args(
        path, formula, relaxations, seed, calculator, box, min_distance, cell, fmax, max_steps
    )
    numbers = recipe.numbers()
    references = bulk_reference_energies(sorted(set(numbers)), calculator)
    e_ref = float(sum(references[z] for z in numbers))
    # Fail before creating anything when atoms cannot be placed at all.
    random_start(len(numbers), box, min_distance, np.random.default_rng([seed, 0]))
    if workers is None:
        workers = available_cores()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise DataError(f"workers must be an integer >= 1, got {workers!r}")

    import ase.db

    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path, blocking=False):
        # ASE's own lock file would outlive a kill -9 and block every rerun forever;
        # file_lock above already makes this the only writer.
        db = ase.db.connect(str(path), type="db", append=True, use_lock_file=False)
        _check_or_set_metadata(db, path, recipe, references)
        done = _complete_relaxations(db, max_steps)
        todo = [r for r in range(relaxations) if r not in done]
        from invfp.utils import progress_bar

        with (
            _worker_pool(workers, len(todo)) as pool,
            progress_bar(len(todo), f"relax {recipe.formula}", enabled=progress) as advance,
        ):
            for rid, result in _results(pool, todo, recipe, workers):
                _write_relaxation(db, rid, result, numbers, recipe, e_ref)
                advance(1)
    return path


def available_cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _check_args(
    path: Path,
    formula: str,
    relaxations: int,
    seed: int,
    calculator: str,
    box: float,
    min_distance: float,
    cell: float,
    fmax: float,
    max_steps: int,
) -> Recipe:
    if path.suffix != ".db":
        raise DataError(
            f"the output {path} must be an ase.db file named *.db (convert later with `ase convert`)"
        )
    if path.exists() and path.is_dir():
        raise DataError(f"the output {path} is a directory; give a file name ending in .db")
    for name, value in (("relaxations", relaxations), ("max_steps", max_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise DataError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"seed must be an integer >= 0, got {seed!r}")
    for name, value in (("box", box), ("min_distance", min_distance), ("cell", cell), ("fmax", fmax)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
            raise DataError(f"{name} must be a finite number > 0, got {value!r}")
    if 2 * box >= cell:
        raise DataError(
            f"the start box (±{box} Å) does not fit in the {cell} Å cell; make the cell larger than {2 * box} Å"
        )
    formula = normalize_formula(formula)
    get_calculator(calculator)
    return Recipe(
        formula,
        int(seed),
        calculator,
        float(box),
        float(min_distance),
        float(cell),
        float(fmax),
        int(max_steps),
    )


def normalize_formula(formula: str) -> str:
    """The formula as ASE writes it (``"Pt10"``), or a DataError naming the problem."""
    from ase.formula import Formula

    try:
        parsed = Formula(str(formula))
        _atomic_numbers(parsed)
    except (ValueError, KeyError) as exc:
        why = f" ({exc})" if str(exc) else ""
        raise DataError(
            f"cannot read the formula {formula!r}{why}; write it like 'Pt10' or 'Pt8Au2'"
        ) from exc
    if len(parsed) < 2:
        raise DataError(f"the formula {formula!r} has fewer than 2 atoms; a cluster needs at least 2")
    return Formula.from_dict(parsed.count()).format("hill")


def _atomic_numbers(formula: Any) -> list[int]:
    from ase.data import atomic_numbers

    out = []
    for symbol, count in formula.count().items():
        if symbol not in atomic_numbers:
            raise ValueError(f"unknown element {symbol!r}")
        out += [atomic_numbers[symbol]] * count
    return out


IN_PROCESS_CALCULATORS = (
    "emt", "lj", "morse", "tip3p", "tip4p", "eam", "tersoff", "ff", "asap", "gpaw", "hotbit", "lammpslib", "kim",
)  # fmt: skip
"""ASE calculator names that compute in this Python process (the others call external programs)."""


def get_calculator(name: str) -> Any:
    """A fresh ASE calculator by name; DataError when unknown, missing or needing an external program."""
    from ase.calculators.calculator import get_calculator_class
    from ase.calculators.names import names

    if not isinstance(name, str) or name not in names:
        raise DataError(
            f"unknown calculator {name!r}; ASE calculators usable here: {', '.join(python_calculators())}"
        )
    if name not in IN_PROCESS_CALCULATORS:
        raise DataError(
            f"the ASE calculator {name!r} runs an external program; invfp needs one that runs in Python: "
            f"{', '.join(python_calculators())}"
        )
    try:
        cls = get_calculator_class(name)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not installed"
        raise DataError(f"the ASE calculator {name!r} is not available here ({exc}); try 'emt'") from exc
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - a calculator that needs parameters
        raise DataError(
            f"the ASE calculator {name!r} cannot be built without parameters ({exc}); try 'emt'"
        ) from exc


def python_calculators() -> list[str]:
    """The in-process ASE calculators that import and build without arguments here."""
    import warnings

    from ase.calculators.calculator import get_calculator_class

    usable = []
    for name in IN_PROCESS_CALCULATORS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                get_calculator_class(name)()
        except Exception:  # noqa: BLE001,S112 - not installed or needs parameters: not usable by name
            continue
        usable.append(name)
    return usable


def bulk_reference_energies(numbers: list[int], calculator: str) -> dict[int, float]:
    """Energy per atom (eV) of each element's bulk crystal under ``calculator``.

    Pt: fcc with a = 3.92 Å (the paper's reference). Other elements: ASE's
    :func:`ase.build.bulk` default (reference structure and lattice constant).
    """
    from ase.build import bulk
    from ase.data import chemical_symbols

    out = {}
    for z in numbers:
        symbol = chemical_symbols[z]
        try:
            crystal = bulk(symbol, "fcc", a=PT_LATTICE_CONSTANT) if symbol == "Pt" else bulk(symbol)
        except Exception as exc:  # noqa: BLE001 - ASE has no default crystal for this element
            raise DataError(
                f"no bulk reference crystal for {symbol} in ASE ({exc}); choose another element"
            ) from exc
        crystal.calc = get_calculator(calculator)
        try:
            energy = crystal.get_potential_energy()
        except Exception as exc:  # noqa: BLE001 - e.g. EMT has no parameters for the element
            raise DataError(
                f"the calculator {calculator!r} cannot compute {symbol} ({type(exc).__name__}: {exc})"
            ) from exc
        out[z] = float(energy) / len(crystal)
    return out


def random_start(n: int, box: float, min_distance: float, rng: np.random.Generator) -> np.ndarray:
    """``n`` points uniform in ``[-box, box]^3``, pairwise at least ``min_distance`` apart.

    Atoms are placed one at a time (rejection sampling); after many failures the whole
    configuration starts again. Raises DataError when it cannot be done.
    """
    for _ in range(_PLACEMENT_RESTARTS):
        pos = np.empty((0, 3))
        for _ in range(_PLACEMENT_TRIES):
            p = rng.uniform(-box, box, 3)
            if len(pos) == 0 or np.min(np.linalg.norm(pos - p, axis=1)) >= min_distance:
                pos = np.vstack([pos, p])
                if len(pos) == n:
                    return pos
    raise DataError(
        f"could not place {n} atoms at least {min_distance} Å apart in a ±{box} Å box; "
        "increase --box or decrease --min-distance"
    )


@dataclass
class _Relaxed:
    positions: np.ndarray  # [T, N, 3]
    energies: np.ndarray  # [T]
    forces: np.ndarray  # [T, N, 3]
    converged: bool


def relax_one(rid: int, recipe: dict[str, Any]) -> tuple[int, _Relaxed]:
    """Relaxation ``rid`` of ``recipe`` (a :class:`Recipe` as a dict); runs in worker processes."""
    from ase import Atoms
    from ase.optimize import FIRE

    r = Recipe(**recipe)
    numbers = r.numbers()
    start = random_start(len(numbers), r.box, r.min_distance, np.random.default_rng([r.seed, rid]))
    atoms = Atoms(numbers=numbers, positions=start + r.cell / 2, cell=[r.cell] * 3, pbc=False)
    atoms.calc = get_calculator(r.calculator)
    positions, energies, forces = [], [], []

    def record() -> None:  # called once per evaluated configuration, the start included
        positions.append(atoms.get_positions())
        energies.append(atoms.get_potential_energy())
        forces.append(atoms.get_forces())

    opt = FIRE(atoms, logfile=None)
    opt.attach(record, interval=1)
    converged = bool(opt.run(fmax=r.fmax, steps=r.max_steps))
    return rid, _Relaxed(np.array(positions), np.array(energies), np.array(forces), converged)


@contextlib.contextmanager
def _worker_pool(workers: int, tasks: int) -> Iterator[ProcessPoolExecutor | None]:
    """A process pool with ``workers`` one-thread workers, or None to work in this process."""
    if workers == 1 or tasks <= 1:
        yield None
        return
    import multiprocessing
    import sys

    # fork on Linux: workers need no re-import of the caller's __main__ (unguarded scripts
    # and `python -m invfp` work) and run only NumPy/ASE code. Elsewhere fork is unsafe.
    ctx = multiprocessing.get_context("fork" if sys.platform.startswith("linux") else "spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, tasks), mp_context=ctx, initializer=_init_worker, initargs=(os.getpid(),)
    )
    try:
        # Start the workers now, before a progress bar starts its own thread.
        pool.submit(int).result()
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _results(
    pool: ProcessPoolExecutor | None, todo: list[int], recipe: Recipe, workers: int
) -> Iterator[tuple[int, _Relaxed]]:
    """Relaxations in ``todo``, as they finish (in order without a pool)."""
    params = asdict(recipe)
    if pool is None:
        for rid in todo:
            yield relax_one(rid, params)
        return
    queue = iter(todo)
    # A bounded number in flight keeps memory flat and lets an interruption stop quickly.
    pending: set[Future[tuple[int, _Relaxed]]] = {
        pool.submit(relax_one, rid, params) for rid in itertools.islice(queue, 2 * workers)
    }
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for fut in finished:
            try:
                yield fut.result()
            except BrokenProcessPool as exc:
                raise DataError(f"a worker process died ({exc}); rerun the same command to resume") from exc
            nxt = next(queue, None)
            if nxt is not None:
                pending.add(pool.submit(relax_one, nxt, params))


def _init_worker(parent_pid: int) -> None:
    import signal

    # Ctrl-C is the parent's to handle (it cancels the pool); no tracebacks from workers.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # One thread per worker: the workers already use every core.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = "1"

    def watchdog() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(1)
            time.sleep(1.0)

    threading.Thread(target=watchdog, daemon=True).start()


def _write_relaxation(
    db: Any, rid: int, result: _Relaxed, numbers: list[int], recipe: Recipe, e_ref: float
) -> None:
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    n = len(numbers)
    last = len(result.energies) - 1
    # One transaction per relaxation: after a crash it is either all there or absent.
    with db:
        for step, (pos, energy, forces) in enumerate(
            zip(result.positions, result.energies, result.forces, strict=True)
        ):
            atoms = Atoms(numbers=numbers, positions=pos, cell=[recipe.cell] * 3, pbc=False)
            atoms.calc = SinglePointCalculator(atoms, energy=float(energy), forces=forces)
            db.write(
                atoms,
                relaxation=int(rid),
                step=int(step),
                is_minimum=bool(result.converged and step == last),
                formation_energy=(float(energy) - e_ref) / n,
            )


def _check_or_set_metadata(db: Any, path: Path, recipe: Recipe, references: dict[int, float]) -> None:
    try:
        meta = db.metadata
    except Exception as exc:  # noqa: BLE001 - not SQLite or not an ase.db
        raise DataError(
            f"{path} exists but is not a readable ase.db ({exc}); choose another output file"
        ) from exc
    wanted = {
        "invfp_recipe": asdict(recipe),
        "bulk_reference_energies": {str(k): v for k, v in references.items()},
    }
    if not meta:
        if db.count() > 0:
            raise DataError(
                f"{path} already holds rows not made by `invfp data make`; choose another output file"
            )
        db.metadata = {**wanted, "property_units": {"formation_energy": "eV/atom", "energy": "eV"}}
        return
    have = meta.get("invfp_recipe")
    if have != wanted["invfp_recipe"]:
        diff = (
            ", ".join(
                f"{k}: {have.get(k)!r} there, {v!r} asked"
                for k, v in wanted["invfp_recipe"].items()
                if have.get(k) != v
            )
            if isinstance(have, dict)
            else "it has no invfp recipe"
        )
        raise DataError(
            f"{path} was made with other settings ({diff}); use another output file or the same settings"
        )


def _complete_relaxations(db: Any, max_steps: int) -> set[int]:
    """Ids of the complete relaxations in ``db``; rows of incomplete ones are deleted.

    ase.db commits on its own every 5,000 rows, so a relaxation longer than that could
    survive a crash in part: complete means steps ``0..S`` all present once, ending in
    a minimum or at ``max_steps``.
    """
    steps: dict[int, list[tuple[int, bool, int]]] = {}
    for row_id, kv in row_keys(db.filename):
        steps.setdefault(int(kv["relaxation"]), []).append(
            (int(kv["step"]), bool(kv.get("is_minimum")), row_id)
        )
    complete, broken = set(), []
    for rid, rows in steps.items():
        rows.sort()
        ok = [s for s, _, _ in rows] == list(range(len(rows))) and (rows[-1][1] or rows[-1][0] == max_steps)
        if ok:
            complete.add(rid)
        else:
            broken += [row_id for _, _, row_id in rows]
    if broken:
        db.delete(broken)
    return complete


def row_keys(path: str | os.PathLike[str]) -> list[tuple[int, dict[str, Any]]]:
    """(row id, key-value pairs) of every row of an ase.db, straight from SQLite.

    About 100 times faster than ``ase.db``'s ``select`` (which takes seconds for 30,000
    rows); ase.db keeps the pairs as JSON in the ``systems`` table.
    """
    import json
    import sqlite3

    with contextlib.closing(sqlite3.connect(path, timeout=60)) as con:
        return [(int(i), json.loads(kv)) for i, kv in con.execute("SELECT id, key_value_pairs FROM systems")]


@contextlib.contextmanager
def file_lock(path: Path, *, blocking: bool) -> Iterator[None]:
    """An exclusive advisory lock beside ``path`` (POSIX; a no-op where fcntl is missing).

    Non-blocking: DataError when another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one writer at a time is up to the user
        yield
        return
    lock_path = path.with_name(f".{path.name}.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise DataError(f"another process is writing {path}; wait for it to finish") from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
