"""Furthest-point sampling and the train/validation split.

::

    from invfp.data import furthest_point_sampling, train_val_split
    idx = furthest_point_sampling(R, 300)          # the paper's n = 300 subset of R
    train, val = train_val_split(len(idx))         # 80:20
"""

from __future__ import annotations

import numpy as np

from invfp.errors import InputError


def furthest_point_sampling(R: np.ndarray, n: int, *, seed: int = 0, standardize: bool = True) -> np.ndarray:
    """Indices of ``n`` rows of ``R`` spread as far apart as possible (greedy max-min).

    The first pick is the row furthest from a row drawn with ``seed`` (so it lies on
    the edge of the set: in 1-D the first two picks are the two extremes); each next
    pick is the row whose distance to its nearest pick so far is largest. Ties go to
    the lowest index, so the result is deterministic for a given ``seed``. Cost
    O(len(R) · n · D) time, O(len(R)) extra memory.

    Args:
        R: ``[M, D]`` fingerprints.
        n: how many to pick (``1 <= n <= M``).
        seed: chooses the reference row of the first pick.
        standardize: scale each feature to zero mean and unit variance first (features
            of a fingerprint can differ by orders of magnitude; constant ones are kept
            as they are).

    Returns:
        ``[n]`` int64 indices, in the order they were picked (so the first ``k`` of them
        are the ``k``-point sample).
    """
    X = np.asarray(R, dtype=np.float64)
    if X.ndim != 2 or len(X) == 0:
        raise InputError(f"furthest_point_sampling needs a non-empty [M, D] array, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise InputError("furthest_point_sampling: R has NaN or infinite entries")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(X):
        raise InputError(f"furthest_point_sampling: n must be an integer in [1, {len(X)}], got {n!r}")
    if standardize:
        std = X.std(axis=0)
        X = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    X = np.ascontiguousarray(X)
    sq = np.einsum("ij,ij->i", X, X)

    def dist2(i: int) -> np.ndarray:
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2: one matrix-vector product per pick.
        return np.maximum(sq - 2.0 * (X @ X[i]) + sq[i], 0.0)

    reference = int(np.random.default_rng(seed).integers(len(X)))
    picks = np.empty(n, dtype=np.int64)
    picks[0] = int(np.argmax(dist2(reference)))
    nearest = dist2(int(picks[0]))
    for k in range(1, n):
        picks[k] = int(np.argmax(nearest))
        np.minimum(nearest, dist2(int(picks[k])), out=nearest)
    return picks


def train_val_split(n: int, val_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random split of ``range(n)`` into sorted train and validation indices.

    ``round(n · val_fraction)`` items (at least 1 when ``val_fraction > 0`` and
    ``n >= 2``) go to validation; the same ``seed`` gives the same split.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"train_val_split: n must be an integer >= 1, got {n!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise InputError(f"train_val_split: val_fraction must be in [0, 1), got {val_fraction!r}")
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
