"""The built-in torch ACSF: parity with the paper's reference, with dscribe, gradients, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import invfp
from invfp import testing
from invfp.errors import ConfigError, InputError
from invfp.representations.acsf import ACSF

PARAMS = {
    "r_cut": 6.0,
    "g2_params": [[1.0, 0.0], [0.5, 2.0], [0.1, 3.0]],
    "g3_params": [1.0, 2.5],
    "g4_params": [[0.01, 1.0, -1.0], [0.1, 2.0, 1.0], [0.05, 4.0, 1.0]],
    "g5_params": [[0.02, 1.0, 1.0], [0.1, 2.0, -1.0], [0.01, 16.0, 1.0]],
}
MOLECULE_SPECIES = ["H", "C", "N", "O", "Si"]
CRYSTAL_SPECIES = ["Na", "Cl", "Cu", "Si", "Mg"]


def _torch_acsf(rep: ACSF, atoms: Atoms, dtype: torch.dtype = torch.float64) -> np.ndarray:
    pos = torch.as_tensor(atoms.positions[None], dtype=dtype)
    cell = torch.as_tensor(atoms.cell.array, dtype=dtype)
    with torch.no_grad():
        out = rep(pos, atoms.numbers, cell=cell, pbc=tuple(atoms.pbc))
    return out[0].numpy()


def _pt10(n: int, seed: int = 0) -> np.ndarray:
    """Random Pt10-like clusters: uniform in a ±3.5 Å box, pairs at least 2.2 Å apart."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        pos = rng.uniform(-3.5, 3.5, (10, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.eye(10) * 9
        if d.min() >= 2.2:
            out.append(pos)
    return np.stack(out)


# -- the paper's reference -------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fung2022_reproduces_reference_features(shared_data, dtype):
    from ase.io import read

    frames = read(shared_data / "parity_structures.extxyz", ":")
    ref = np.loadtxt(shared_data / "parity_features.csv", delimiter=",")
    rep = invfp.get_representation("acsf", preset="fung2022")
    pos = torch.as_tensor(np.stack([f.positions for f in frames]), dtype=dtype)
    out = rep(pos, frames[0].numbers)
    assert out.shape == (24, 380) and out.dtype == dtype
    # The reference ran in float32: values below float32's normal range (1e-38) carry
    # no relative precision there, hence the tiny atol.
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-4, atol=1e-35)
    np.testing.assert_allclose(rep.featurize(frames), ref, rtol=1e-4, atol=1e-35)


def test_fung2022_layout_interleaves_element_channels():
    """Two elements: G2 index = param * 2 + element, G5 index = param * 3 + pair (the reference's)."""
    atoms = Atoms("Pt3Au2", positions=_pt10(1, seed=3)[0][:5])
    fung = ACSF.fung2022(pooling=None)
    general = ACSF(
        species=[78, 79],
        pooling=None,
        **{k: v for k, v in fung.params.items() if k.endswith("params")},
        r_cut=20.0,
    )
    got, want = _torch_acsf(fung, atoms), _torch_acsf(general, atoms)
    n2, n5 = 140, 50
    assert got.shape == (5, 2 * n2 + 3 * n5)
    for p in range(n2):
        for s in range(2):  # dscribe: element-major blocks [G1, G2...]
            np.testing.assert_allclose(got[:, p * 2 + s], want[:, s * (1 + n2) + 1 + p], rtol=1e-12)
    # reference pairs (Au,Au)=(0,0), (0,1), (1,1) with Au=78 first; dscribe: (0,0), (1,0), (1,1)
    for p in range(n5):
        for q in range(3):
            np.testing.assert_allclose(
                got[:, 2 * n2 + p * 3 + q], want[:, 2 * (1 + n2) + q * n5 + p], rtol=1e-12
            )


# -- dscribe -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["CH3CH2OH", "C6H6", "CH3CONH2", "CH3SiH3", "H2O"])
def test_per_atom_values_equal_dscribe_molecules(name):
    from dscribe.descriptors import ACSF as DscribeACSF

    atoms = molecule(name)
    atoms.rattle(0.01, seed=1)
    want = DscribeACSF(species=MOLECULE_SPECIES, **PARAMS).create(atoms)
    got = _torch_acsf(ACSF(species=MOLECULE_SPECIES, pooling=None, **PARAMS), atoms)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


CRYSTALS = {
    "fcc-Cu": (lambda: bulk("Cu", "fcc", a=3.6), 6.0),
    "rocksalt-NaCl": (lambda: bulk("NaCl", "rocksalt", a=5.64), 6.0),
    "rocksalt-NaCl-cubic": (lambda: bulk("NaCl", "rocksalt", a=5.64, cubic=True), 6.0),
    "diamond-Si": (lambda: bulk("Si", "diamond", a=5.43), 5.0),
    "hcp-Mg": (lambda: bulk("Mg", "hcp", a=3.2), 6.0),
    # the cutoff is nearly three times the primitive cell's plane spacing
    "NaCl-big-cutoff": (lambda: bulk("NaCl", "rocksalt", a=5.64), 9.0),
}


@pytest.mark.parametrize("name", sorted(CRYSTALS))
def test_per_atom_values_equal_dscribe_crystals(name):
    from dscribe.descriptors import ACSF as DscribeACSF

    make, r_cut = CRYSTALS[name]
    atoms = make()
    atoms.rattle(0.02, seed=2)
    params = dict(PARAMS, r_cut=r_cut)
    want = DscribeACSF(species=CRYSTAL_SPECIES, periodic=True, **params).create(atoms)
    got = _torch_acsf(ACSF(species=CRYSTAL_SPECIES, periodic=True, pooling=None, **params), atoms)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12)


def test_molecular_crystal_batch_equals_dscribe():
    """Angular terms run over each structure's own padded neighbour lists: a batch of two
    differently rattled 12-atom CO2 cells (different neighbour counts) must equal dscribe
    structure by structure."""
    from ase.spacegroup import crystal
    from dscribe.descriptors import ACSF as DscribeACSF

    co2 = crystal(["C", "O"], basis=[(0, 0, 0), (0.1185, 0.1185, 0.1185)], spacegroup=205, cellpar=[5.624] * 3 + [90] * 3)
    frames = []
    for seed in (1, 2):
        atoms = co2.copy()
        atoms.rattle(0.15, seed=seed)
        frames.append(atoms)
    rep = ACSF(species=["C", "O"], periodic=True, pooling=None, **PARAMS)
    pos = torch.as_tensor(np.stack([a.positions for a in frames]))
    got = rep(pos, co2.numbers, cell=torch.as_tensor(co2.cell.array), pbc=True).numpy()
    ref = DscribeACSF(species=["C", "O"], periodic=True, **PARAMS)
    for b, atoms in enumerate(frames):
        np.testing.assert_allclose(got[b], ref.create(atoms), rtol=1e-6, atol=1e-12)


def test_periodic_batch_of_different_cells_and_home_cell_mode():
    atoms = bulk("NaCl", "rocksalt", a=5.64)
    other = atoms.copy()
    other.set_cell(atoms.cell * 1.05, scale_atoms=True)
    rep = ACSF(species=["Na", "Cl"], periodic=True, pooling=None, **PARAMS)
    pos = torch.as_tensor(np.stack([atoms.positions, other.positions]))
    cells = torch.as_tensor(np.stack([atoms.cell.array, other.cell.array]))
    both = rep(pos, atoms.numbers, cell=cells, pbc=True).numpy()
    np.testing.assert_allclose(both[0], _torch_acsf(rep, atoms), rtol=1e-12)
    np.testing.assert_allclose(both[1], _torch_acsf(rep, other), rtol=1e-12)
    # periodic=False ignores the cell: the home cell only, as an isolated structure
    home = ACSF(species=["Na", "Cl"], pooling=None, **PARAMS)
    isolated = atoms.copy()
    isolated.pbc = False
    np.testing.assert_allclose(_torch_acsf(home, atoms), _torch_acsf(rep, isolated), rtol=1e-12)


# -- gradients, invariances, dtypes ------------------------------------------------------
@pytest.mark.parametrize("pooling", ["maxmin", "maxmin+mean"])
def test_gradcheck_cluster_positions(pooling):
    rep = ACSF(species=["H", "O"], pooling=pooling, **dict(PARAMS, r_cut=4.0))
    rng = np.random.default_rng(0)
    pos = torch.as_tensor(rng.uniform(-1.5, 1.5, (2, 4, 3))).requires_grad_(True)
    numbers = [1, 8, 1, 8]
    assert torch.autograd.gradcheck(lambda p: rep(p, numbers), (pos,), eps=1e-6, atol=1e-6)


def test_gradcheck_periodic_positions_and_cell():
    atoms = bulk("NaCl", "rocksalt", a=4.0)
    atoms.rattle(0.05, seed=4)
    rep = ACSF(species=["Na", "Cl"], periodic=True, pooling="sum", **dict(PARAMS, r_cut=3.5))
    pos = torch.as_tensor(atoms.positions[None]).requires_grad_(True)
    cell = torch.as_tensor(atoms.cell.array[None]).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda p, c: rep(p, atoms.numbers, cell=c, pbc=True), (pos, cell), eps=1e-6, atol=1e-6
    )


def test_no_nan_gradient_with_far_atoms_and_fung2022():
    rep = ACSF.fung2022()
    pos = torch.as_tensor(_pt10(3, seed=5)).requires_grad_(True)
    pos.data[0, 0] += 30.0  # one atom beyond the cutoff of every other
    rep(pos, [78] * 10).sum().backward()
    assert torch.isfinite(pos.grad).all()


@pytest.mark.parametrize("pooling", ["maxmin", "maxmin+mean", None])
def test_conformance_molecule(pooling):
    rep = ACSF(species=MOLECULE_SPECIES, pooling=pooling, **PARAMS)
    testing.check_representation(rep, molecule("CH3CH2OH"))


@pytest.mark.parametrize("pooling", ["mean", None])
def test_conformance_crystal(pooling):
    rep = ACSF(species=["Na", "Cl"], periodic=True, pooling=pooling, **dict(PARAMS, r_cut=5.0))
    testing.check_representation(rep, bulk("NaCl", "rocksalt", a=5.64))


def test_conformance_fung2022_cluster():
    atoms = Atoms("Pt10", positions=_pt10(1, seed=8)[0], cell=[20.0] * 3)
    testing.check_representation(ACSF.fung2022(), atoms)


def test_chunked_batches_equal_one_batch(monkeypatch):
    import invfp.representations.acsf as acsf_module

    rep = ACSF.fung2022()
    pos = torch.as_tensor(_pt10(7, seed=9)).requires_grad_(True)
    whole = rep(pos, [78] * 10)
    (grad_whole,) = torch.autograd.grad(whole.sum(), pos)
    monkeypatch.setattr(acsf_module, "_CHUNK_BYTES", 50_000)  # a few structures per chunk
    assert rep._cluster_chunk(10, 1, 8) < 7
    chunked = rep(pos, [78] * 10)
    (grad_chunked,) = torch.autograd.grad(chunked.sum(), pos)
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(grad_chunked, grad_whole, rtol=1e-12, atol=1e-14)  # GEMM sum order


def test_float32_agrees_with_float64():
    rep = ACSF.fung2022()
    pos = _pt10(8, seed=6)
    f64 = rep(torch.as_tensor(pos), [78] * 10).numpy()
    f32 = rep(torch.as_tensor(pos, dtype=torch.float32), [78] * 10).numpy()
    big = np.abs(f64) > 1e-30  # float32 cannot hold smaller values to relative precision
    np.testing.assert_allclose(f32[big], f64[big], rtol=1e-4)


# -- the interface -----------------------------------------------------------------------
def test_dim_pooling_featurize_and_config_roundtrip():
    rep = invfp.get_representation("acsf", preset="fung2022")
    assert isinstance(rep, ACSF) and rep.dim([78] * 10) == 380
    assert rep.dim([78, 79]) == 2 * (140 * 2 + 50 * 3)
    config = rep.get_config()
    json.dumps(config)
    rebuilt = invfp.get_representation(config.pop("name"), **config)
    assert rebuilt.get_config() == rep.get_config()

    general = ACSF(species=["O", "H"], pooling=None, **PARAMS)
    assert general.dim([1, 8]) == (1 + 3 + 2) * 2 + (3 + 3) * 3
    water = molecule("H2O")
    per_atom = general.featurize(water)
    assert per_atom.shape == (3, general.dim(water.numbers))
    rebuilt = ACSF(**{k: v for k, v in general.get_config().items() if k != "name"})
    np.testing.assert_array_equal(rebuilt.featurize(water), per_atom)
    for pooling, reduce in (("mean", np.mean), ("sum", np.sum)):
        pooled = ACSF(species=["O", "H"], pooling=pooling, **PARAMS).featurize([water, water])
        np.testing.assert_allclose(pooled, np.stack([reduce(per_atom, axis=0)] * 2), rtol=1e-12)
    maxmin = ACSF(species=["O", "H"], **PARAMS).featurize(water)
    np.testing.assert_allclose(maxmin, np.concatenate([per_atom.max(0), per_atom.min(0)]))
    both = ACSF(species=["O", "H"], pooling="maxmin+mean", **PARAMS)
    assert both.dim(water.numbers) == 3 * general.dim(water.numbers)
    np.testing.assert_allclose(both.featurize(water), np.concatenate([maxmin, per_atom.mean(0)]), rtol=1e-12)
    assert ACSF.fung2022(pooling="maxmin+mean").dim([78] * 10) == 570


def test_fung2022_species_default_and_mixed_compositions():
    pt = Atoms("Pt4", positions=_pt10(1, seed=2)[0][:4])
    ptau = Atoms("Pt2Au2", positions=pt.positions)
    rep = ACSF.fung2022()
    assert rep.featurize([pt, pt]).shape == (2, rep.dim(pt.numbers))
    with pytest.raises(InputError, match="different shapes"):
        rep.featurize([pt, ptau])
    both = ACSF.fung2022(species=["Pt", "Au"]).featurize([pt, ptau])
    assert both.shape == (2, 2 * (140 * 2 + 50 * 3))
    pt_only = rep.featurize(pt)
    # Pt (78) is channel 0 before Au (79): the G2 maxima of the Pt cluster are every other entry
    np.testing.assert_allclose(both[0][0:280:2], pt_only[:140], rtol=1e-12)


def test_polynomial_cutoff_is_smooth_at_rc():
    rep = ACSF(species=["H"], r_cut=3.0, g2_params=[[0.5, 1.0]], cutoff="polynomial", pooling="sum")
    r = torch.tensor([2.999, 3.0, 3.001], dtype=torch.float64)
    pos = torch.zeros(3, 2, 3, dtype=torch.float64)
    pos[:, 1, 0] = r
    pos.requires_grad_(True)
    out = rep(pos, [1, 1])
    (grad,) = torch.autograd.grad(out[:, 1].sum(), pos)  # column 1: the G2 sum
    assert out[1:, 1].abs().max() < 1e-12 and out[0, 1] > 0
    assert grad.abs().max() < 1e-5


# -- errors ------------------------------------------------------------------------------
def test_bad_configuration_errors():
    with pytest.raises(ConfigError, match="species"):
        ACSF(r_cut=5.0)
    with pytest.raises(ConfigError, match="r_cut"):
        ACSF(species=["H"])
    with pytest.raises(ConfigError, match="eta"):
        ACSF(species=["H"], r_cut=5.0, g2_params=[[-1.0, 0.0]])
    with pytest.raises(ConfigError, match="g4_params"):
        ACSF(species=["H"], r_cut=5.0, g4_params=[[1.0, 2.0]])
    with pytest.raises(ConfigError, match="unknown chemical symbol"):
        ACSF(species=["Xx"], r_cut=5.0)
    with pytest.raises(ConfigError, match="fixes r_cut"):
        ACSF(preset="fung2022", r_cut=6.0)
    with pytest.raises(ConfigError, match="pooling"):
        ACSF(species=["H"], r_cut=5.0, pooling="median")


def test_bad_input_errors():
    rep = ACSF(species=["H", "O"], **PARAMS)
    pos = torch.zeros(2, 3, 3, dtype=torch.float64)
    pos[:, :, 0] = torch.arange(3)
    with pytest.raises(InputError, match="same composition"):
        rep(pos, [[1, 8, 1], [8, 1, 1]])
    with pytest.raises(InputError, match="not in this ACSF's species"):
        rep(pos, [1, 8, 6])
    bad = pos.clone()
    bad[0, 1, 2] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        rep(bad, [1, 8, 1])
    with pytest.raises(InputError, match=r"\[B, N, 3\]"):
        rep(pos[0], [1, 8, 1])
    with pytest.raises(InputError, match="numbers must have shape"):
        rep(pos, [1, 8])
    periodic = ACSF(species=["H", "O"], periodic=True, **PARAMS)
    with pytest.raises(InputError, match="singular"):
        periodic(
            pos, [1, 8, 1], cell=torch.diag(torch.tensor([3.0, 3.0, 0.0], dtype=torch.float64)), pbc=True
        )
    with pytest.raises(InputError, match="needs a cell"):
        periodic(pos, [1, 8, 1], pbc=True)


# -- the CLI -----------------------------------------------------------------------------
def test_cli_featurize(tmp_path):
    from ase.io import write
    from typer.testing import CliRunner

    from invfp.cli.app import app

    frames = [molecule("H2O"), molecule("H2O")]
    frames[1].rattle(0.05, seed=1)
    path = tmp_path / "water.extxyz"
    write(path, frames)
    out = tmp_path / "R.npy"
    runner = CliRunner()
    args = [
        "featurize",
        str(path),
        "--repr",
        "acsf",
        "--param",
        'species=["H", "O"]',
        "--param",
        "r_cut=5.0",
        "--param",
        "g2_params=[[1, 0]]",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    want = ACSF(species=["H", "O"], r_cut=5.0, g2_params=[[1, 0]]).featurize(frames)
    np.testing.assert_allclose(np.load(out), want)

    result = runner.invoke(app, [*args[:-2], "--per-atom", "-o", str(tmp_path / "A.npy")])
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "A.npy").shape == (2, 3, 2 * 2)

    # comma-separated text, as the paper's released fingerprints: the same numbers, to the last bit
    result = runner.invoke(app, [*args[:-2], "-o", str(tmp_path / "R.csv")])
    assert result.exit_code == 0, result.output
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "R.csv", delimiter=",", ndmin=2), np.load(out))
    for name, words in (("A.csv", "does not fit a CSV table"), ("R.txt", "write arrays to .npy")):
        result = runner.invoke(app, [*args[:-2], *(["--per-atom"] if name == "A.csv" else []), "-o",
                                     str(tmp_path / name)])
        assert isinstance(result.exception, ConfigError) and words in str(result.exception)
        assert not (tmp_path / name).exists()

    bad = runner.invoke(app, ["featurize", str(path), "--param", "rcut=5", "-o", str(out)])
    assert isinstance(bad.exception, ConfigError) and "did you mean 'r_cut'" in str(bad.exception)
    species = 'species=["H", "O"]'
    bad = runner.invoke(
        app, ["featurize", str(path), "--param", species, "--param", "r_cut=five", "-o", str(out)]
    )
    assert isinstance(bad.exception, ConfigError) and "r_cut" in str(bad.exception)
    missing = runner.invoke(
        app, ["featurize", str(tmp_path / "nope.xyz"), "--preset", "fung2022", "-o", str(out)]
    )
    assert isinstance(missing.exception, InputError) and "no such file" in str(missing.exception)
    unknown = runner.invoke(app, ["featurize", str(path), "--repr", "acsff", "-o", str(out)])
    assert "did you mean 'acsf'" in str(unknown.exception)
    np.testing.assert_allclose(np.load(out), want)  # failed runs left the earlier output intact


@pytest.mark.parametrize("pooling", ["maxmin", None])
def test_empty_batch_gives_empty_output_with_gradient(pooling):
    rep = ACSF(preset="fung2022", pooling=pooling)
    x = torch.zeros(0, 10, 3, dtype=torch.float64, requires_grad=True)
    out = rep(x, [78] * 10)
    assert out.shape == ((0, 380) if pooling else (0, 10, 190))
    out.sum().backward()
    assert x.grad.shape == (0, 10, 3)
    cell = torch.eye(3, dtype=torch.float64) * 5.64
    assert ACSF(preset="fung2022", pooling=pooling)(torch.zeros(0, 2, 3), [11, 17], cell=cell, pbc=True).shape[-1] == (
        860 if pooling else 430
    )
