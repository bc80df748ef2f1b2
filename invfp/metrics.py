"""How close two structures, or two fingerprints, are.

:func:`rmsd` compares structures up to everything a fingerprint cannot see: the
order of same-element atoms and a rigid motion (rotation and translation for
clusters; translation under the minimum image convention for periodic cells).
Assignment and alignment depend on each other, so both are iterated until stable,
starting from several initial orientations (for cells: translations and the lattice's
own point operations), and the best is kept.
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from invfp.errors import InputError

if TYPE_CHECKING:
    import ase

_MAX_ITER = 50


def rmsd(
    a: ase.Atoms | np.ndarray,
    b: ase.Atoms | np.ndarray,
    *,
    allow_reflection: bool = False,
    periodic: bool | None = None,
) -> float:
    """Permutation-invariant RMSD after optimal rigid alignment, in Å.

    Args:
        a: the reference structure (``ase.Atoms``, or positions ``[N, 3]`` of one element).
        b: the structure to compare; same composition as ``a``.
        allow_reflection: also allow improper rotations (mirror images count as equal).
        periodic: compare under the minimum image convention along ``a.pbc`` in
            ``a.cell`` (``b`` must have the same cell): translations, plus (fully
            periodic cells) the point operations that map the lattice onto itself, which
            a fingerprint cannot tell apart; improper ones only with
            ``allow_reflection``. Default: periodic when ``a`` has any periodic direction.

    Returns:
        The smallest RMSD found over same-element permutations and rigid motions.

    Raises:
        InputError: different compositions, non-finite positions, or (periodic) cells
            that differ.
    """
    pos_a, num_a, cell, pbc = _unpack(a)
    pos_b, num_b, cell_b, _ = _unpack(b)
    if len(pos_a) != len(pos_b) or not np.array_equal(np.sort(num_a), np.sort(num_b)):
        raise InputError("rmsd needs two structures of the same composition")
    if not (np.all(np.isfinite(pos_a)) and np.all(np.isfinite(pos_b))):
        raise InputError("rmsd got non-finite positions")
    if len(pos_a) == 0:
        return 0.0
    if periodic is None:
        periodic = bool(pbc.any())
    groups = [(np.flatnonzero(num_a == z), np.flatnonzero(num_b == z)) for z in np.unique(num_a)]
    if periodic:
        if cell is None or not pbc.any():
            raise InputError("a periodic rmsd needs a structure with a cell and periodic directions")
        if cell_b is not None and not np.allclose(cell, cell_b, atol=1e-6):
            raise InputError("periodic rmsd compares structures in the same cell; the cells differ")
        ops = _lattice_operations(cell, allow_reflection) if pbc.all() else [np.eye(3)]
        origin = pos_b.mean(0)
        best = np.inf
        for op in ops:
            best = min(best, _rmsd_periodic(pos_a, (pos_b - origin) @ op.T + origin, groups, cell, pbc))
            if best < 1e-10:
                break
        return best
    return _rmsd_cluster(pos_a, pos_b, groups, allow_reflection)


def fingerprint_distance(r1: Any, r2: Any, *, kind: str = "mae") -> float | np.ndarray:
    """Distance between fingerprints: mean absolute (``"mae"``), mean squared (``"mse"``) or RMS error.

    Args:
        r1: ``[D]`` or ``[B, D]`` (NumPy or torch).
        r2: same shape as ``r1`` (or ``[D]``, broadcast against ``[B, D]``).
        kind: ``"mae"`` (the paper's reconstruction loss), ``"mse"`` or ``"rmse"``.

    Returns:
        A float for ``[D]`` inputs, an array ``[B]`` for batches.
    """
    x = _as_numpy(r1)
    y = _as_numpy(r2)
    try:
        diff = x - y
    except ValueError as exc:
        raise InputError(f"fingerprints of shapes {x.shape} and {y.shape} cannot be compared") from exc
    if not np.all(np.isfinite(diff)):
        raise InputError("fingerprints contain NaN or infinite values; remove or fix those rows first")
    if kind == "mae":
        out = np.abs(diff).mean(-1)
    elif kind == "mse":
        out = (diff**2).mean(-1)
    elif kind == "rmse":
        out = np.sqrt((diff**2).mean(-1))
    else:
        raise InputError(f"unknown fingerprint distance {kind!r}; choose 'mae', 'mse' or 'rmse'")
    return float(out) if np.ndim(out) == 0 else out


def _as_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"fingerprints must be numbers [D] or [B, D], got {type(value).__name__}") from exc


def _unpack(x: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    if hasattr(x, "get_positions"):
        cell = np.asarray(x.cell.array, dtype=np.float64)
        has_cell = bool(np.abs(cell).sum() > 0)
        return (
            np.asarray(x.get_positions(), dtype=np.float64),
            np.asarray(x.numbers),
            cell if has_cell else None,
            np.asarray(x.pbc, dtype=bool),
        )
    try:
        pos = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"rmsd needs ase.Atoms or positions [N, 3], got {type(x).__name__}") from exc
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise InputError(f"rmsd needs ase.Atoms or positions [N, 3], got shape {pos.shape}")
    return pos, np.zeros(len(pos), dtype=int), None, np.zeros(3, dtype=bool)


# -- clusters: rotation + translation ---------------------------------------------------
def _kabsch(p: np.ndarray, q: np.ndarray, allow_reflection: bool) -> np.ndarray:
    """Rotation ``r`` minimising ``|p - q @ r.T|`` for centred ``p``, ``q``."""
    u, _, vt = np.linalg.svd(q.T @ p)
    d = np.eye(3)
    if not allow_reflection and np.linalg.det(u @ vt) < 0:
        d[2, 2] = -1.0
    return (u @ d @ vt).T


def _assign(a: np.ndarray, b: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], cost=None) -> np.ndarray:
    """perm with b[perm[i]] matched to a[i], optimal within each element."""
    perm = np.empty(len(a), dtype=int)
    for ia, ib in groups:
        c = cost(a[ia], b[ib]) if cost is not None else ((a[ia, None, :] - b[None, ib, :]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(c)
        perm[ia[rows]] = ib[cols]
    return perm


def _initial_rotations(a: np.ndarray, b: np.ndarray, allow_reflection: bool) -> list[np.ndarray]:
    """Starting orientations for b: principal-axes matches, the cube group and random ones."""
    rots: list[np.ndarray] = []

    def axes(x: np.ndarray) -> np.ndarray:
        _, vecs = np.linalg.eigh(x.T @ x)
        return vecs

    va, vb = axes(a), axes(b)
    for signs in itertools.product((1.0, -1.0), repeat=3):
        r = va @ np.diag(signs) @ vb.T
        if allow_reflection or np.linalg.det(r) > 0:
            rots.append(r)
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            r = np.eye(3)[list(perm)] * np.array(signs)[:, None]
            if allow_reflection or np.linalg.det(r) > 0:
                rots.append(r)
    rng = np.random.default_rng(0)
    for _ in range(16):
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        q = q * np.sign(np.diag(r))
        if np.linalg.det(q) < 0 and not allow_reflection:
            q[:, 0] = -q[:, 0]
        rots.append(q)
    return rots


def _rmsd_cluster(a: np.ndarray, b: np.ndarray, groups, allow_reflection: bool) -> float:
    a = a - a.mean(0)
    b = b - b.mean(0)
    best = np.inf
    for rot in _initial_rotations(a, b, allow_reflection):
        moved = b @ rot.T
        prev = None
        for _ in range(_MAX_ITER):
            perm = _assign(a, moved, groups)
            if prev is not None and np.array_equal(perm, prev):
                break
            prev = perm
            rot = _kabsch(a, b[perm], allow_reflection)
            moved = b @ rot.T
        value = float(np.sqrt(((a - moved[perm]) ** 2).sum(-1).mean()))
        best = min(best, value)
        if best < 1e-10:
            break
    return best


# -- periodic: translation under the minimum image convention ----------------------------
def _min_image(diff: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """Shortest periodic images of displacement vectors ``[..., 3]`` (exact for skewed cells)."""
    inv = np.linalg.inv(cell)
    frac = diff @ inv
    frac[..., pbc] -= np.round(frac[..., pbc])
    wrapped = frac @ cell
    shifts = np.array([s for s in itertools.product((-1, 0, 1), repeat=3) if all(pbc | (np.array(s) == 0))])
    cands = wrapped[..., None, :] + shifts @ cell  # [..., S, 3]
    best = np.argmin((cands**2).sum(-1), axis=-1)
    return np.take_along_axis(cands, best[..., None, None], axis=-2)[..., 0, :]


def _lattice_operations(cell: np.ndarray, allow_reflection: bool) -> list[np.ndarray]:
    """Cartesian point operations that map the lattice onto itself (its point group).

    In fractional coordinates an operation is an integer matrix ``W`` with
    ``W^T G W = G`` for the metric ``G = C C^T``; candidates have entries in {-1, 0, 1},
    which covers the point group of a reduced cell.
    """
    metric = cell @ cell.T
    cands = np.array(list(itertools.product((-1, 0, 1), repeat=9)), dtype=float).reshape(-1, 3, 3)
    dets = np.linalg.det(cands)
    cands = cands[np.isclose(np.abs(dets), 1.0)]
    lhs = np.einsum("kji,jl,klm->kim", cands, metric, cands)
    keep = np.all(np.abs(lhs - metric) < 1e-6 * max(1.0, float(np.abs(metric).max())), axis=(1, 2))
    inv = np.linalg.inv(cell)
    ops = []
    for w in cands[keep]:
        rot = (inv @ w.T @ cell).T  # x' = x C^-1 W^T C, written as x' = x @ rot.T
        if allow_reflection or np.linalg.det(rot) > 0:
            ops.append(rot)
    # The identity first: the common case (no symmetry needed) is found at once.
    ops.sort(key=lambda r: float(np.abs(r - np.eye(3)).sum()))
    return ops


def _rmsd_periodic(a: np.ndarray, b: np.ndarray, groups, cell: np.ndarray, pbc: np.ndarray) -> float:
    def cost(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (_min_image(x[:, None, :] - y[None, :, :], cell, pbc) ** 2).sum(-1)

    # Candidate translations: put each atom of b's rarest element on the first such atom of a.
    ia, ib = min(groups, key=lambda g: len(g[0]))
    best = np.inf
    for k in ib:
        shift = a[ia[0]] - b[k]
        prev = None
        for _ in range(_MAX_ITER):
            moved = b + shift
            perm = _assign(a, moved, groups, cost)
            diff = _min_image(a - moved[perm], cell, pbc)
            # Along non-periodic directions the mean offset is still a free translation.
            shift = shift + diff.mean(0)
            if prev is not None and np.array_equal(perm, prev):
                break
            prev = perm
        diff = _min_image(a - (b + shift)[perm], cell, pbc)
        best = min(best, float(np.sqrt((diff**2).sum(-1).mean())))
        if best < 1e-10:
            break
    return best
