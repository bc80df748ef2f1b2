"""invfp.metrics: RMSD up to permutation and rigid motion, and fingerprint distances."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from scipy.spatial.transform import Rotation

from invfp.errors import InputError
from invfp.metrics import fingerprint_distance, rmsd


def _cluster(seed: int = 0) -> Atoms:
    rng = np.random.default_rng(seed)
    return Atoms("Pt6Au4", positions=rng.uniform(-3, 3, size=(10, 3)))


def _shuffle_same_element(atoms: Atoms, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    perm = np.arange(len(atoms))
    for z in np.unique(atoms.numbers):
        idx = np.flatnonzero(atoms.numbers == z)
        perm[idx] = rng.permutation(idx)
    return atoms[perm]


def test_rotated_permuted_translated_copy_is_zero():
    a = _cluster()
    for seed in range(5):
        b = a.copy()
        b.positions = b.positions @ Rotation.random(random_state=seed).as_matrix().T + [3.0, -1.0, 7.5]
        b = _shuffle_same_element(b, seed)
        assert rmsd(a, b) == pytest.approx(0.0, abs=1e-8)


def test_breathing_displacement_gives_its_rmsd():
    # Scaling about the centroid is orthogonal to rigid motions: the optimal alignment is the
    # identity, so the RMSD is eps times the RMS radius.
    a = _cluster(1)
    centred = a.positions - a.positions.mean(0)
    eps = 0.03
    b = a.copy()
    b.positions = a.positions.mean(0) + (1 + eps) * centred
    want = eps * np.sqrt((centred**2).sum(1).mean())
    assert rmsd(a, _shuffle_same_element(b, 3)) == pytest.approx(want, rel=1e-6)


def test_mirror_image_needs_reflection():
    a = _cluster(2)
    b = a.copy()
    b.positions[:, 0] *= -1
    assert rmsd(a, b) > 0.1
    assert rmsd(a, b, allow_reflection=True) == pytest.approx(0.0, abs=1e-8)


def test_periodic_translation_and_known_displacement():
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    b = a.copy()
    b.positions += [1.1, 0.3, 2.9]
    b.wrap()
    b = _shuffle_same_element(b, 0)
    assert rmsd(a, b) == pytest.approx(0.0, abs=1e-8)
    # Moving one of N atoms by d: the best translation takes d/N of it, leaving
    # RMSD = d * sqrt((N - 1)) / N.
    d = 0.2
    b.positions[0] += [d, 0.0, 0.0]
    n = len(a)
    assert rmsd(a, b) == pytest.approx(d * np.sqrt(n - 1) / n, rel=1e-6)


def test_periodic_skewed_cell_minimum_image():
    a = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)  # primitive fcc cell: strongly skewed
    b = a.copy()
    b.positions += a.cell.array[0] * 0.37 + a.cell.array[2] * 0.81
    b.wrap()
    assert rmsd(a, _shuffle_same_element(b, 1)) == pytest.approx(0.0, abs=1e-8)


def test_rmsd_rejects_mismatched_input():
    with pytest.raises(InputError, match="same composition"):
        rmsd(Atoms("Pt3", positions=np.eye(3)), Atoms("Pt2Au", positions=np.eye(3)))
    with pytest.raises(InputError, match="non-finite"):
        rmsd(np.full((2, 3), np.nan), np.zeros((2, 3)))
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    b = bulk("NaCl", "rocksalt", a=5.70, cubic=True)
    with pytest.raises(InputError, match="cells differ"):
        rmsd(a, b)


def test_fingerprint_distance_values():
    r1 = np.array([1.0, 2.0, 3.0, 4.0])
    r2 = np.array([1.5, 2.0, 2.0, 4.0])
    assert fingerprint_distance(r1, r2) == pytest.approx(0.375)
    assert fingerprint_distance(r1, r2, kind="mse") == pytest.approx(0.3125)
    assert fingerprint_distance(r1, r2, kind="rmse") == pytest.approx(np.sqrt(0.3125))
    batch = fingerprint_distance(np.stack([r1, r2]), r2)
    np.testing.assert_allclose(batch, [0.375, 0.0])
    with pytest.raises(InputError):
        fingerprint_distance(r1, r2, kind="l7")
    with pytest.raises(InputError):
        fingerprint_distance(r1, np.ones(3))
    with pytest.raises(InputError, match="NaN or infinite"):  # not a silent nan
        fingerprint_distance(r1, np.array([1.0, np.nan, 3.0, 4.0]))
    with pytest.raises(InputError, match="must be numbers .* got str"):
        fingerprint_distance("R.npy", r2)
    with pytest.raises(InputError, match=r"rmsd needs ase.Atoms or positions \[N, 3\], got str"):
        rmsd("a.xyz", "b.xyz")


def test_periodic_lattice_symmetry_and_inversion():
    from ase.build import bulk as build

    a = build("ZnO", "wurtzite", a=3.25, c=5.21)
    # A 60-degree rotation about c maps the hexagonal lattice onto itself: the same crystal.
    rot = Rotation.from_euler("z", 60, degrees=True).as_matrix()
    b = a.copy()
    b.positions = a.positions @ rot.T + [0.4, 0.1, 0.7]
    b.wrap()
    assert rmsd(a, b) == pytest.approx(0.0, abs=1e-8)
    # A shear is no lattice operation: it stays visible.
    sheared = a.copy()
    sheared.positions[:, 0] += 0.1 * a.positions[:, 2]
    assert rmsd(a, sheared) > 0.05
