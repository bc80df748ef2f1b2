"""Property-based tests (hypothesis) of the built-in representations and of reconstruction.

For random structures hypothesis draws: every built-in representation (ACSF with
general parameters, ACSF fung2022, periodic ACSF, SOAP when dscribe is installed) is
invariant to translation, rotation, permutation of same-element atoms and, for
periodic structures, to the periodic image chosen for each atom (adding any integer
combination of lattice vectors to any atom) and to wrapping into the cell; and
featurize → reconstruct recovers random small Pt clusters to RMSD <= 0.1 Å.
Examples are few and derandomized (fixed across runs) so the suite stays fast and
deterministic; each draws a new structure.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from ase import Atoms
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import invfp
from invfp.metrics import rmsd

FAST = settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
HAS_DSCRIBE = importlib.util.find_spec("dscribe") is not None

G2 = [[eta, rs] for eta in (0.5, 2.0) for rs in (1.0, 2.5)]
G4 = [[0.05, zeta, lam] for zeta in (1.0, 4.0) for lam in (-1.0, 1.0)]


def _representations() -> dict[str, tuple[object, list[str], bool]]:
    """name -> (representation, element choices, periodic)."""
    reps = {
        "acsf-general": (invfp.get_representation("acsf", species=["H", "C", "O"], r_cut=4.5, g2_params=G2,
                                                  g4_params=G4), ["H", "C", "O"], False),
        "acsf-per-atom": (invfp.get_representation("acsf", species=["H", "C", "O"], r_cut=4.5, g2_params=G2,
                                                   g4_params=G4, pooling=None), ["H", "C", "O"], False),
        "acsf-fung2022": (invfp.get_representation("acsf", preset="fung2022"), ["Pt"], False),
        "acsf-periodic": (invfp.get_representation("acsf", species=["Na", "Cl"], r_cut=4.0, g2_params=G2,
                                                   g4_params=G4, periodic=True), ["Na", "Cl"], True),
    }
    if HAS_DSCRIBE:
        reps["soap"] = (invfp.get_representation("soap", species=["H", "C", "O"], r_cut=4.0, n_max=3, l_max=3),
                        ["H", "C", "O"], False)
        reps["soap-periodic"] = (invfp.get_representation("soap", species=["Na", "Cl"], r_cut=3.5, n_max=3,
                                                          l_max=2, periodic=True), ["Na", "Cl"], True)
    return reps


REPS = _representations()


@st.composite
def structures(draw, elements: list[str], periodic: bool) -> Atoms:
    """3-6 atoms of the given elements, >= 0.9 Å apart; periodic ones in a random triclinic cell."""
    n = draw(st.integers(3, 6))
    symbols = [draw(st.sampled_from(elements)) for _ in range(n)]
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if periodic:
        lengths = rng.uniform(3.5, 5.0, 3)
        cell = np.diag(lengths) + np.triu(rng.uniform(-0.8, 0.8, (3, 3)), 1)
    else:
        cell = np.zeros((3, 3))
    for _ in range(1000):
        frac = rng.uniform(0, 1, (n, 3))
        atoms = Atoms(symbols, scaled_positions=frac, cell=cell, pbc=periodic) if periodic else Atoms(
            symbols, positions=rng.uniform(-1.8, 1.8, (n, 3))
        )
        d = atoms.get_all_distances(mic=periodic)[np.triu_indices(n, 1)]
        if d.min() > 0.9:
            return atoms
    raise AssertionError("could not place the atoms")  # pragma: no cover - not reached at these densities


def _features(rep, atoms: Atoms) -> np.ndarray:
    return rep.featurize(atoms)


def _rotation(quaternion: list[float]) -> np.ndarray:
    q = np.asarray(quaternion, dtype=float)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _close(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_allclose(got, want, rtol=1e-7, atol=1e-9 * max(1.0, float(np.abs(want).max())))


quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(lambda q: np.linalg.norm(q) > 0.1)
vectors = st.lists(st.floats(-20, 20), min_size=3, max_size=3)


@pytest.mark.parametrize("name", list(REPS))
@FAST
@given(data=st.data(), shift=vectors, quaternion=quaternions)
def test_invariant_to_translation_and_rotation(name, data, shift, quaternion):
    rep, elements, periodic = REPS[name]
    atoms = data.draw(structures(elements, periodic))
    base = _features(rep, atoms)
    assert np.isfinite(base).all()
    moved = atoms.copy()
    moved.positions += np.asarray(shift)
    _close(_features(rep, moved), base)
    turned = atoms.copy()
    rot = _rotation(quaternion)
    turned.positions = atoms.positions @ rot.T
    if periodic:  # rotate the crystal: cell and positions together
        turned.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    _close(_features(rep, turned), base)


@pytest.mark.parametrize("name", list(REPS))
@FAST
@given(data=st.data())
def test_invariant_to_permuting_same_element_atoms(name, data):
    rep, elements, periodic = REPS[name]
    atoms = data.draw(structures(elements, periodic))
    perm = np.arange(len(atoms))
    for z in np.unique(atoms.numbers):
        idx = np.flatnonzero(atoms.numbers == z)
        perm[idx] = data.draw(st.permutations(list(idx)))
    base = _features(rep, atoms)
    got = _features(rep, atoms[perm])
    _close(got, base if rep.pooled else base[perm])  # per-atom rows follow the atoms


@pytest.mark.parametrize("name", [n for n, (_, _, periodic) in REPS.items() if periodic])
@FAST
@given(data=st.data(), images=st.lists(st.lists(st.integers(-2, 2), min_size=3, max_size=3), min_size=6,
                                       max_size=6))
def test_periodic_image_and_lattice_vector_invariance(name, data, images):
    rep, elements, _ = REPS[name]
    atoms = data.draw(structures(elements, True))
    base = _features(rep, atoms)
    one = atoms.copy()  # one atom moved by a lattice vector
    one.positions[0] += np.asarray(images[0]) @ atoms.cell.array
    _close(_features(rep, one), base)
    every = atoms.copy()  # every atom in another image, then wrapped back into the cell
    every.positions += np.asarray(images[: len(atoms)]) @ atoms.cell.array
    _close(_features(rep, every), base)
    every.wrap()
    _close(_features(rep, every), base)


@st.composite
def pt_clusters(draw) -> Atoms:
    """3-5 Pt atoms in a ±2 Å box, >= 2.3 Å apart (bonded, not overlapping)."""
    n = draw(st.integers(3, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    while True:
        pos = rng.uniform(-2.0, 2.0, (n, 3))
        if np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)].min() > 2.3:
            return Atoms(f"Pt{n}", positions=pos)


@settings(max_examples=5, deadline=None, derandomize=True)
@given(cluster=pt_clusters())
def test_featurize_then_reconstruct_recovers_random_clusters(cluster):
    rep = REPS["acsf-fung2022"][0]
    (result,) = invfp.reconstruct(
        rep.featurize(cluster), numbers=cluster.numbers, representation=rep, seed=0,
        restarts=8, hops=2, steps=150, refine_steps=100,
    )
    # ACSF cannot tell a cluster from its mirror image
    assert rmsd(cluster, result.atoms, allow_reflection=True) <= 0.1
    assert result.loss < 1e-3
