"""Reconstruction: fingerprints back to atoms (the paper's Algorithm 1, batched).

:func:`reconstruct` validates its input, builds a :class:`ReconstructionProblem` (the
tensors every optimizer plugin works on) and lets the optimizer find, for each target
fingerprint ``R``, positions ``x`` with ``representation(x) ≈ R``. Each target gives
one :class:`ReconstructionResult` whose ``loss`` is the honest mean absolute error
between the target and the fingerprint of the returned atoms (raw features, the
paper's measure), whatever objective the optimizer minimised internally.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from invfp.errors import ConfigError, InputError

if TYPE_CHECKING:
    import ase
    import torch

__all__ = [
    "ReconstructionProblem",
    "ReconstructionResult",
    "auto_feature_scale",
    "cluster_radius",
    "parse_cell",
    "parse_numbers",
    "parse_system",
    "reconstruct",
]

PACKING = 0.35
"""Volume fraction of covalent spheres in the initial cluster sphere (loose, liquid-like)."""


@dataclasses.dataclass
class ReconstructionResult:
    """The best structure found for one target."""

    atoms: ase.Atoms
    """Positions found, with the problem's cell and pbc; ``info["loss"]`` holds ``loss``."""
    loss: float
    """Mean absolute error between the target and the fingerprint of ``atoms`` (raw features)."""
    restart_losses: list[float]
    """The same MAE for the best structure of each restart (independent start)."""
    steps: int
    """Gradient evaluations spent on this target (all its restarts and hops)."""
    time: float
    """Wall time in seconds, amortised: the batch's time divided by the number of targets."""
    target_index: int
    """Row of the target in the ``targets`` given to :func:`reconstruct`."""


@dataclasses.dataclass
class ReconstructionProblem:
    """What :meth:`Optimizer.run <invfp.optimizers.base.Optimizer.run>` receives."""

    representation: Any
    """A :class:`~invfp.representations.base.Representation` (differentiable)."""
    targets: torch.Tensor
    """Target fingerprints ``[B, D]`` on ``device`` in ``dtype``."""
    numbers: torch.Tensor
    """Atomic numbers ``[N]`` (int64, on ``device``)."""
    cell: torch.Tensor | None
    """Cell ``[3, 3]`` (rows are lattice vectors) or ``None``."""
    pbc: tuple[bool, bool, bool]
    """Periodic directions."""
    device: torch.device
    dtype: torch.dtype
    feature_scale: torch.Tensor
    """Per-feature scale ``[D]``: optimizers minimise errors divided by it (ones = raw)."""
    start: torch.Tensor | None = None
    """Caller's starting positions ``[B, N, 3]`` (one per target), or ``None``: random starts.
    Only optimizers with ``supports_start = True`` are given one; they begin every member
    of a target there (see :meth:`initial_positions`)."""

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def periodic(self) -> bool:
        return any(self.pbc)

    def features(self, positions: torch.Tensor) -> torch.Tensor:
        """Fingerprints ``[M, D]`` of positions ``[M, N, 3]`` (differentiable)."""
        cell = None
        if self.cell is not None:
            cell = self.cell.expand(positions.shape[0], 3, 3)
        return self.representation(positions, self.numbers, cell=cell, pbc=self.pbc)

    def errors(self, positions: torch.Tensor, target_index: torch.Tensor, *, scaled: bool = True) -> torch.Tensor:
        """Feature errors ``[M, D]`` of each member against its target (divided by the scale)."""
        diff = self.features(positions) - self.targets[target_index]
        return diff / self.feature_scale if scaled else diff

    def random_positions(
        self, count: int, generator: torch.Generator, *, packing: float = PACKING, packing_min: float | None = None
    ) -> torch.Tensor:
        """Random starting positions ``[count, N, 3]``.

        Periodic directions: uniform in the cell. Clusters: uniform in a sphere holding
        the atoms' covalent spheres at volume fraction ``packing``, centred in the cell
        when there is one. With ``packing_min`` below ``packing``, each start draws its own
        packing log-uniformly between the two (compact and spread-out starts together).
        """
        import torch

        n = self.n_atoms
        kw = {"device": self.device, "dtype": self.dtype}
        if self.periodic:
            assert self.cell is not None
            frac = torch.rand(count, n, 3, generator=generator, **kw)
            pos = frac @ self.cell
            if not all(self.pbc):
                # Non-periodic directions of a slab or wire: a slab of sensible density
                # centred in the cell (the cell length along them may be mostly vacuum).
                radius = cluster_radius(self.numbers.tolist(), packing)
                for axis, periodic in enumerate(self.pbc):
                    if not periodic:
                        length = float(torch.linalg.norm(self.cell[axis]))
                        width = min(2 * radius, length) / length
                        frac[..., axis] = 0.5 + (frac[..., axis] - 0.5) * width
                pos = frac @ self.cell
            return pos
        radius = torch.full((count, 1, 1), cluster_radius(self.numbers.tolist(), packing), **kw)
        if packing_min is not None and packing_min < packing:
            # radius ∝ packing^(-1/3): log-uniform packing is log-uniform radius.
            u = torch.rand(count, 1, 1, generator=generator, **kw)
            radius = radius * (packing / packing_min) ** (u / 3.0)
        direction = torch.randn(count, n, 3, generator=generator, **kw)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        r = radius * torch.rand(count, n, 1, generator=generator, **kw) ** (1.0 / 3.0)
        pos = direction * r
        if self.cell is not None:
            pos = pos + 0.5 * self.cell.sum(0)
        return pos

    def initial_positions(
        self,
        target_of: torch.Tensor,
        generator: torch.Generator,
        *,
        kick: float,
        packing: float = PACKING,
        packing_min: float | None = None,
    ) -> torch.Tensor:
        """Starting positions ``[M, N, 3]`` of members working on targets ``target_of`` ``[M]``.

        Without :attr:`start`: :meth:`random_positions`. With it: every member starts at
        its target's start positions, the first member of each target (in ``target_of``
        order) exactly there and the others displaced by Gaussian noise of ``kick`` Å per
        coordinate, so a search can both refine the start and look around it.
        """
        import torch

        if self.start is None:
            return self.random_positions(target_of.shape[0], generator, packing=packing, packing_min=packing_min)
        x = self.start[target_of].clone()
        first = torch.ones_like(target_of, dtype=torch.bool)
        first[1:] = target_of[1:] != target_of[:-1]
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return x + kick * noise * (~first)[:, None, None]

    def subset(self, rows: Sequence[int] | torch.Tensor) -> ReconstructionProblem:
        """The same problem for the targets ``rows`` only (with their start positions)."""
        start = None if self.start is None else self.start[rows]
        return dataclasses.replace(self, targets=self.targets[rows], start=start)

    def overlap_penalty(self, positions: torch.Tensor, factor: float) -> torch.Tensor:
        """Soft penalty ``[M]`` on pairs closer than ``factor`` × the sum of covalent radii.

        ``mean over pairs of relu(d0 - d)^2 / d0^2``: zero for any physical structure,
        it only pushes overlapping atoms apart. Periodic directions use the minimum image.
        """
        import torch
        from ase.data import covalent_radii

        n = self.n_atoms
        radii = torch.as_tensor(covalent_radii[self.numbers.cpu().numpy()], device=self.device, dtype=self.dtype)
        i, j = torch.triu_indices(n, n, offset=1, device=self.device)
        d0 = factor * (radii[i] + radii[j])
        diff = positions[:, i] - positions[:, j]
        if self.periodic:
            assert self.cell is not None
            inv = torch.linalg.inv(self.cell)
            frac = diff @ inv
            mask = torch.tensor(self.pbc, device=self.device)
            frac = torch.where(mask, frac - torch.round(frac), frac)
            diff = frac @ self.cell
        dist = torch.sqrt((diff * diff).sum(-1) + 1e-12)
        return (torch.relu(d0 - dist) / d0).pow(2).mean(-1)

    def finish(
        self,
        positions: torch.Tensor,
        restart_losses: Sequence[Sequence[float]],
        steps: Sequence[int],
        elapsed: float,
    ) -> list[ReconstructionResult]:
        """Results for every target from the chosen positions ``[B, N, 3]``.

        The reported loss is recomputed here from the returned atoms' positions, so a
        result's loss always matches its structure.
        """
        import torch
        from ase import Atoms

        numbers = self.numbers.cpu().numpy()
        cell = self.cell.detach().cpu().numpy().astype(np.float64) if self.cell is not None else None
        frames = []
        for b in range(positions.shape[0]):
            atoms = Atoms(numbers=numbers, positions=positions[b].detach().cpu().numpy().astype(np.float64))
            if cell is not None:
                atoms.cell = cell
            atoms.pbc = self.pbc
            if self.periodic:
                atoms.wrap()
            elif cell is not None:
                atoms.positions += 0.5 * cell.sum(0) - atoms.positions.mean(0)
            frames.append(atoms)
        pos = torch.as_tensor(np.stack([a.positions for a in frames]), device=self.device, dtype=self.dtype)
        with torch.no_grad():
            mae = self.errors(pos, torch.arange(len(frames), device=self.device), scaled=False).abs().mean(-1)
        per_target = elapsed / max(len(frames), 1)
        results = []
        for b, atoms in enumerate(frames):
            loss = float(mae[b])
            atoms.info["loss"] = loss
            results.append(
                ReconstructionResult(
                    atoms=atoms,
                    loss=loss,
                    restart_losses=[float(v) for v in restart_losses[b]],
                    steps=int(steps[b]),
                    time=per_target,
                    target_index=b,
                )
            )
        return results


def parse_numbers(numbers: Any) -> np.ndarray:
    """Atomic numbers from a sequence of ints/symbols or a formula string such as ``"Pt10"``."""
    from ase.symbols import symbols2numbers

    try:
        if isinstance(numbers, str):
            from ase import Atoms

            out = Atoms(numbers).numbers
        else:
            out = np.asarray(symbols2numbers(list(np.asarray(numbers).tolist())), dtype=int)
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(f"cannot read the composition {numbers!r}: give a formula like 'Pt10' or atomic numbers") from exc
    if out.ndim != 1 or len(out) == 0:
        raise InputError("the composition needs at least one atom")
    if np.any(out < 1) or np.any(out > 118):
        raise InputError(f"atomic numbers must lie in 1..118, got {sorted(set(out.tolist()))}")
    return out


def parse_cell(cell: Any) -> np.ndarray | None:
    """A ``[3, 3]`` cell from ``None``, a float (cubic), three lengths or a 3×3 matrix."""
    if cell is None:
        return None
    arr = np.asarray(cell, dtype=np.float64)
    if arr.ndim == 0 or arr.shape == (3,):
        # Edge lengths: a negative one is a typo (a left-handed cell is given as a matrix).
        if np.any(arr <= 0):
            raise InputError(f"cell lengths must be positive (Å), got {np.round(arr, 6).tolist()}")
        arr = np.eye(3) * float(arr) if arr.ndim == 0 else np.diag(arr)
    elif arr.shape != (3, 3):
        raise InputError(f"cell must be a number, 3 lengths or a 3x3 matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or abs(np.linalg.det(arr)) < 1e-6:
        raise InputError("the cell must be finite with a non-zero volume")
    return arr


def cluster_radius(numbers: Sequence[int], packing: float = PACKING) -> float:
    """Radius (Å) of the sphere that holds the atoms' covalent spheres at volume fraction ``packing``."""
    from ase.data import covalent_radii

    volume = sum(4.0 / 3.0 * math.pi * covalent_radii[int(z)] ** 3 for z in numbers)
    return (volume / packing * 3.0 / (4.0 * math.pi)) ** (1.0 / 3.0)


def auto_feature_scale(targets: np.ndarray, floor: float = 1e-2) -> np.ndarray:
    """A robust typical magnitude of each feature, from the targets themselves.

    The median over targets of ``|R_d|``, floored at ``floor`` × the median over
    features (so features that are ~0 in every target do not dominate), then normalised
    so the median scale is 1 (the objective stays in the units of a typical feature).
    """
    mag = np.median(np.abs(targets), axis=0)
    typical = float(np.median(mag[mag > 0])) if np.any(mag > 0) else 1.0
    scale = np.maximum(mag, floor * typical)
    return scale / typical


def _feature_scale(feature_scale: Any, targets: np.ndarray) -> np.ndarray:
    dim = targets.shape[1]
    if feature_scale is None or (isinstance(feature_scale, str) and feature_scale == "none"):
        return np.ones(dim)
    if isinstance(feature_scale, str):
        if feature_scale == "auto":
            return auto_feature_scale(targets)
        raise ConfigError(f"feature_scale={feature_scale!r}: use 'auto', 'none' or an array of {dim} positive numbers")
    scale = np.asarray(feature_scale.detach().cpu() if hasattr(feature_scale, "detach") else feature_scale, dtype=np.float64)
    if scale.ndim == 0:
        scale = np.full(dim, float(scale))
    if scale.shape != (dim,) or not np.all(np.isfinite(scale)) or np.any(scale <= 0):
        raise ConfigError(f"feature_scale must be 'auto', 'none' or {dim} finite positive numbers")
    return scale


def _float_array(value: Any, expected: str) -> np.ndarray:
    """``value`` (NumPy, torch or nested lists) as float64; InputError saying what was ``expected``."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{expected}: {exc}") from exc


def _as_targets(targets: Any) -> np.ndarray:
    arr = _float_array(targets, "targets must be numeric fingerprints [B, D] or [D]")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2:
        raise InputError(f"targets must have shape [B, D] or [D], got {arr.shape}")
    if arr.size == 0:
        raise InputError(f"targets are empty (shape {arr.shape}); give at least one fingerprint of length D >= 1")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)[:5].tolist()
        raise InputError(f"targets contain NaN or inf (rows {rows}); remove or fix those fingerprints")
    return arr


def _as_start(start: Any, n_targets: int, numbers: np.ndarray) -> np.ndarray | None:
    """The caller's start positions as ``[B, N, 3]`` float64 (one structure per target), or ``None``.

    Accepts an ``ase.Atoms`` or a list of them (numbers in the order of the composition)
    or Cartesian positions ``[N, 3]`` / ``[B, N, 3]`` in Å; one structure serves every target.
    """
    if start is None:
        return None
    from ase import Atoms

    frames = [start] if isinstance(start, Atoms) else start
    if isinstance(frames, (list, tuple)) and frames and all(isinstance(a, Atoms) for a in frames):
        for k, atoms in enumerate(frames):
            if len(atoms) != len(numbers) or not np.array_equal(atoms.numbers, numbers):
                got = atoms.get_chemical_formula(mode="reduce") if len(atoms) else "no atoms"
                raise InputError(
                    f"start structure {k} ({got}, {len(atoms)} atoms) does not match the targets' composition "
                    f"{_formula(numbers)}; give structures with those atoms, in the order of numbers"
                )
        arr = np.stack([a.positions for a in frames]).astype(np.float64)
    else:
        arr = _float_array(start, "start must be ase.Atoms, a list of them or positions [N, 3] / [B, N, 3]")
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (len(numbers), 3):
            raise InputError(
                f"start positions must have shape [{len(numbers)}, 3] or [B, {len(numbers)}, 3] for "
                f"{_formula(numbers)}, got {list(arr.shape)}"
            )
    if arr.shape[0] not in (1, n_targets):
        raise InputError(
            f"{arr.shape[0]} start structures for {n_targets} targets; give one for all or one per target"
        )
    if not np.all(np.isfinite(arr)):
        raise InputError("start positions contain NaN or inf")
    return np.ascontiguousarray(np.broadcast_to(arr, (n_targets, *arr.shape[1:])))


def _formula(numbers: np.ndarray) -> str:
    from ase import Atoms

    return Atoms(numbers=numbers).get_chemical_formula(mode="reduce")


def _check_fit(numbers: np.ndarray, cell: np.ndarray | None, pbc: tuple[bool, bool, bool]) -> None:
    """Refuse compositions that cannot fit the cell (the optimizer would only squash atoms)."""
    if cell is None:
        return
    from ase.data import covalent_radii

    heights = abs(np.linalg.det(cell)) / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    if any(pbc):
        # Volume available along periodic directions vs. the atoms' covalent volume.
        sphere_volume = sum(4.0 / 3.0 * math.pi * covalent_radii[int(z)] ** 3 for z in numbers)
        free = [h for h, p in zip(heights, pbc, strict=True) if not p]
        volume = abs(np.linalg.det(cell)) * np.prod([min(1.0, 2 * cluster_radius(numbers) / h) for h in free])
        if volume < 0.5 * sphere_volume:
            raise InputError(
                f"{len(numbers)} atoms do not fit the cell: volume {volume:.1f} Å^3 < half their covalent "
                f"volume {sphere_volume:.1f} Å^3; give a larger cell or fewer atoms"
            )
    else:
        diameter = 2 * cluster_radius(numbers)
        if diameter > min(heights):
            raise InputError(
                f"a cluster of {len(numbers)} atoms (diameter about {diameter:.1f} Å) does not fit a cell "
                f"{min(heights):.1f} Å wide; give a larger cell"
            )


def _parse_pbc(pbc: Any) -> tuple[bool, bool, bool]:
    """One bool, or one per cell vector (as ASE's ``Atoms.pbc``); 0 and 1 count as bools."""
    values = np.asarray(pbc, dtype=object).reshape(-1)
    ok = values.size in (1, 3) and all(
        isinstance(v, (bool, np.bool_)) or (isinstance(v, (int, np.integer)) and v in (0, 1)) for v in values
    )
    if not ok:
        raise InputError(f"pbc must be True, False or three of them (one per cell vector), got {pbc!r}")
    arr = np.broadcast_to(values.astype(bool), (3,))
    return (bool(arr[0]), bool(arr[1]), bool(arr[2]))


def parse_system(
    numbers: Any, cell: Any = None, pbc: Any = False
) -> tuple[np.ndarray, np.ndarray | None, tuple[bool, bool, bool]]:
    """The composition, cell and pbc of a reconstruction, checked: ``(numbers, cell, pbc)``.

    Raises:
        InputError: an unreadable composition, cell or pbc, a periodic direction without a
            cell, or atoms that cannot fit the cell.
    """
    z = parse_numbers(numbers)
    cell_arr = parse_cell(cell)
    pbc_t = _parse_pbc(pbc)
    if any(pbc_t) and cell_arr is None:
        raise InputError("periodic reconstruction needs a cell (cell=...)")
    _check_fit(z, cell_arr, pbc_t)
    return z, cell_arr, pbc_t


def reconstruct(
    targets: Any,
    *,
    numbers: Any,
    cell: Any = None,
    pbc: Any = False,
    representation: Any = "acsf",
    optimizer: Any = "adam-hopping",
    seed: int | None = None,
    device: Any = None,
    dtype: Any = None,
    progress: bool = False,
    feature_scale: Any = None,
    workers: int = 1,
    start: Any = None,
    **options: Any,
) -> list[ReconstructionResult]:
    """Find atoms whose fingerprints match ``targets``.

    Args:
        targets: fingerprints ``[B, D]`` or ``[D]`` (NumPy, torch or nested lists).
        numbers: the composition: atomic numbers or symbols ``[N]``, or a formula
            (``"Pt10"``); the same for every target.
        cell: ``None``, a float (cubic), three lengths or a 3×3 matrix (rows are
            lattice vectors), in Å.
        pbc: periodic directions (a bool or three); periodic needs a cell.
        representation: a name (``"acsf"``) or a ready representation object; it
            must be the representation that produced ``targets``.
        optimizer: a name (``"adam-hopping"``, ``"lbfgs"``) or an optimizer object.
        seed: makes the run deterministic on one machine; ``None`` draws fresh entropy.
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available, else CPU).
        dtype: ``torch.float32`` (default) or ``torch.float64`` (or their names).
        progress: show a progress bar over targets.
        feature_scale: how features are weighted in the objective: ``None``/``"none"``
            (raw features: measured best for fung2022, whose large smooth G2 values make
            a smoother landscape), ``"auto"`` (each feature divided by a robust typical
            magnitude from the targets) or ``[D]`` positive numbers given by the caller.
        workers: CPU worker processes (one torch thread each). With ``workers > 1`` the
            targets are split into that many contiguous shards, each reconstructed in its
            own process with a seed derived from ``seed`` and the shard's index: on N
            cores about N times the throughput of one process. The same seed and the same
            ``workers`` give the same structures; a different ``workers`` splits the
            random streams differently. CPU only (a GPU batches every target already).
        start: begin the search from these structures instead of random ones: an
            ``ase.Atoms`` or a list of them (the composition's atoms, in its order) or
            positions ``[N, 3]`` / ``[B, N, 3]`` in Å; one for every target or one per target.
            Each target's first restart starts exactly there, the others displaced by
            ``start_kick`` Å (no screening of random starts). For one local refinement
            per target use ``optimizer="lbfgs", restarts=1, attempts=1``.
        **options: parameters of the optimizer (``restarts``, ``hops``, ...); only
            with an optimizer given by name.

    Returns:
        One :class:`ReconstructionResult` per target, in order.

    Raises:
        InputError: malformed, non-finite or wrong-dimension targets; a bad composition
            or cell; atoms that do not fit the cell; start structures of another
            composition or shape, or one count of them for another of targets.
        ConfigError: bad optimizer parameters, dtype, device or feature scale; ``start``
            with an optimizer that does not take it.
        UnknownComponentError: an unknown representation or optimizer name.
    """
    from invfp.plugins import create
    from invfp.representations.base import Representation
    from invfp.utils import check_seed, progress_bar, resolve_device

    seed = check_seed(seed)
    arr = _as_targets(targets)
    z, cell_arr, pbc_t = parse_system(numbers, cell, pbc)
    dtype = _dtype(dtype)
    dev = resolve_device(device)
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an integer >= 1, got {workers!r}")
    if workers > 1 and dev.type != "cpu":
        raise ConfigError(
            f"workers={workers} runs CPU processes, but the device is {dev}; use workers=1 on a GPU "
            "(it batches every target at once) or device='cpu'"
        )

    rep = create("representation", representation)
    if not isinstance(rep, Representation):
        raise ConfigError(f"representation {type(rep).__name__} does not derive from invfp's Representation")
    if not rep.differentiable:
        raise ConfigError(f"representation {rep.name!r} is not differentiable; reconstruction needs gradients")
    if not rep.pooled:
        raise ConfigError("reconstruction needs a pooled representation (one vector per structure)")
    if isinstance(optimizer, str):
        opt = create("optimizer", optimizer, **options)
    else:
        if options:
            raise ConfigError(
                f"optimizer options {sorted(options)} given with a ready optimizer object; "
                "pass the optimizer by name or set the options on the object"
            )
        opt = create("optimizer", optimizer)
    start_arr = _as_start(start, len(arr), z)
    if start_arr is not None and not getattr(opt, "supports_start", False):
        raise ConfigError(
            f"optimizer {opt.name!r} does not take start positions; use adam-hopping or lbfgs, or drop start"
        )
    dim = rep.dim(z)
    if arr.shape[1] != dim:
        raise InputError(
            f"targets have {arr.shape[1]} features but {rep.name!r} gives {dim} for this composition "
            f"({len(z)} atoms, elements {sorted(set(z.tolist()))}); check the representation, its "
            "parameters and --formula"
        )
    scale = _feature_scale(feature_scale, arr)

    rep = rep.to(device=dev, dtype=dtype)
    job = _Job(rep, opt, arr, z, cell_arr, pbc_t, dev, dtype, scale, start_arr)
    shards = min(workers, len(arr))
    with progress_bar(len(arr), "reconstruct", enabled=progress) as advance:
        if shards == 1:
            return job.solve(range(len(arr)), seed, advance)
        return _sharded(job, shards, seed, advance)


@dataclasses.dataclass
class _Job:
    """One validated reconstruction call; :meth:`solve` runs some of its rows."""

    representation: Any
    optimizer: Any
    targets: np.ndarray
    numbers: np.ndarray
    cell: np.ndarray | None
    pbc: tuple[bool, bool, bool]
    device: Any
    dtype: Any
    scale: np.ndarray
    start: np.ndarray | None = None

    def solve(
        self, rows: Sequence[int], seed: int | None, advance: Callable[..., Any] | None = None
    ) -> list[ReconstructionResult]:
        """Results for the targets ``rows`` (indices into ``targets``), in that order."""
        import torch

        from invfp.utils import denormals_flushed, keep_freed_memory, make_generator

        keep_freed_memory()
        rows = list(rows)
        dev, dtype = self.device, self.dtype
        problem = ReconstructionProblem(
            representation=self.representation,
            targets=torch.as_tensor(self.targets[rows], device=dev, dtype=dtype),
            numbers=torch.as_tensor(self.numbers, device=dev, dtype=torch.long),
            cell=None if self.cell is None else torch.as_tensor(self.cell, device=dev, dtype=dtype),
            pbc=self.pbc,
            device=dev,
            dtype=dtype,
            feature_scale=torch.as_tensor(self.scale, device=dev, dtype=dtype),
            start=None if self.start is None else torch.as_tensor(self.start[rows], device=dev, dtype=dtype),
        )
        with denormals_flushed():
            results = self.optimizer.run(problem, generator=make_generator(seed, dev), progress=advance)
        if len(results) != len(rows):
            raise ConfigError(
                f"optimizer {self.optimizer.name!r} returned {len(results)} results for {len(rows)} targets"
            )
        for row, result in zip(rows, results, strict=True):
            result.target_index = row
        return results


def _solve_shard(job: _Job, item: tuple[tuple[int, ...], int | None, int]) -> list[ReconstructionResult]:
    rows, seed, _ = item  # the third value only tells the parts of a round apart
    return job.solve(rows, seed)


def _sharded(job: _Job, shards: int, seed: int | None, advance: Callable[..., Any]) -> list[ReconstructionResult]:
    """Rows split into ``shards`` contiguous parts, each solved in a worker process.

    With a built-in optimizer's ``attempts > 1`` the later searches are dealt here, not in
    the workers: each round searches every target still above ``tol`` (several times side
    by side while few are left, :func:`~invfp.optimizers.common.retry_rows`), split afresh
    over the workers, so hard targets that happen to share a part leave no worker idle.
    """
    from invfp.executors import LocalExecutor
    from invfp.optimizers.common import SearchAgain, in_rounds

    clock = timer()
    n = len(job.targets)
    attempts, tol, fill, time_limit = 1, -math.inf, 1, None
    if isinstance(job.optimizer, SearchAgain) and job.optimizer.params["attempts"] > 1:
        params = job.optimizer.params
        attempts, tol, fill = int(params["attempts"]), float(params["tol"]), int(params["fill"]) * shards
        time_limit = params.get("time_limit")  # a plugin's SearchAgain may not declare it
        job = dataclasses.replace(job, optimizer=job.optimizer.once())
    if seed is None:
        seeds: list[int | None] = [None] * (shards * attempts)
    else:
        # Round r takes children r*shards...: round 0's are those of a single round.
        states = np.random.SeedSequence(int(seed)).spawn(shards * attempts)
        seeds = [int(s.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)) for s in states]
    reported: set[int] = set()

    def report(rows: Sequence[int]) -> None:  # the bar counts each target once
        fresh = set(rows) - reported
        reported.update(fresh)
        advance(len(fresh))

    with LocalExecutor(shards) as executor:

        def run(rows: list[int], round_: int) -> list[ReconstructionResult]:
            bounds = np.linspace(0, len(rows), min(shards, len(rows)) + 1).round().astype(int)
            items = [
                (tuple(rows[a:b]), seeds[round_ * shards + i], i)
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
            ]
            found: dict[int, list[ReconstructionResult]] = {}
            for (part, _, i), results in executor.map(_solve_shard, job, items):
                found[i] = results
                report([row for row, r in zip(part, results, strict=True) if r.loss < tol or attempts == 1])
            # In row order, not completion order: the same results for a seed every time.
            return [r for i in range(len(items)) for r in found[i]]

        done = in_rounds(run, n, attempts=attempts, tol=tol, fill=fill, report=report, time_limit=time_limit)
    per_target = clock() / n
    for result in done:
        result.time = per_target  # amortised over the whole call, as with one process
    return done


def _dtype(dtype: Any) -> torch.dtype:
    import torch

    if dtype is None:
        return torch.float32
    if isinstance(dtype, str):
        dtype = {"float32": torch.float32, "float64": torch.float64, "double": torch.float64}.get(dtype, dtype)
    if dtype not in (torch.float32, torch.float64):
        raise ConfigError(f"dtype {dtype!r} is not supported; use float32 or float64")
    return dtype


def timer() -> Callable[[], float]:
    """A stopwatch: returns a function giving seconds since it was made."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
