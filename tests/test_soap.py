"""SOAP: equals dscribe's create, gradients match finite differences, conformance, periodic."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

import invfp
from invfp import testing
from invfp.errors import ConfigError, InputError, OptionalDependencyError

pytest.importorskip("dscribe")
from dscribe.descriptors import SOAP as DscribeSOAP  # noqa: E402

from invfp.representations.soap import SOAP  # noqa: E402

SETTINGS = {"r_cut": 4.5, "n_max": 3, "l_max": 2, "sigma": 0.6}


def _ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.03, seed=3)
    return atoms


def _copper() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=4)
    return atoms


def _call(rep: SOAP, atoms: Atoms, pos: torch.Tensor | None = None) -> torch.Tensor:
    pos = torch.as_tensor(atoms.positions[None]) if pos is None else pos
    periodic = bool(atoms.pbc.any())
    cell = torch.as_tensor(atoms.cell.array[None]) if periodic else None
    return rep(pos, torch.as_tensor(atoms.numbers), cell=cell, pbc=tuple(bool(p) for p in atoms.pbc))


@pytest.mark.parametrize("pooling", ["maxmin", "mean", "sum", "maxmin+mean", None])
def test_forward_equals_dscribe_create(pooling):
    atoms = _ethanol()
    want = DscribeSOAP(species=[1, 6, 8], **SETTINGS).create(atoms)
    rep = SOAP(species=["H", "C", "O"], pooling=pooling, **SETTINGS)
    got = _call(rep, atoms)[0].numpy()
    expected = {
        None: want,
        "maxmin": np.concatenate([want.max(0), want.min(0)]),
        "mean": want.mean(0),
        "sum": want.sum(0),
        "maxmin+mean": np.concatenate([want.max(0), want.min(0), want.mean(0)]),
    }[pooling]
    dim = rep.dim(atoms.numbers)
    assert got.shape == ((dim,) if pooling else (len(atoms), dim))
    if pooling in (None, "maxmin"):
        np.testing.assert_array_equal(got, expected)
    else:  # torch and NumPy sum in different orders: equal to rounding
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=0)


def test_forward_with_gradient_path_equals_create_and_batches():
    # the grad path calls dscribe's derivatives(), which also returns the descriptor
    frames = [_ethanol(), molecule("CH3CH2OH")]
    want = DscribeSOAP(species=[1, 6, 8], **SETTINGS).create(frames)
    rep = SOAP(species=[1, 6, 8], pooling=None, **SETTINGS)
    pos = torch.as_tensor(np.stack([a.positions for a in frames])).requires_grad_(True)
    got = rep(pos, torch.as_tensor(frames[0].numbers))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12)


def test_periodic_forward_equals_dscribe():
    atoms = _copper()
    want = DscribeSOAP(species=[29], periodic=True, **SETTINGS).create(atoms)
    rep = SOAP(species=[29], pooling=None, **SETTINGS)
    # not bitwise: invfp wraps the rattled atoms that left the cell (dscribe is not invariant to that)
    np.testing.assert_allclose(_call(rep, atoms)[0].numpy(), want, rtol=1e-12, atol=1e-12)
    # the same atoms without periodicity describe a different (finite) object
    assert not np.allclose(SOAP(species=[29], periodic=False, pooling=None, **SETTINGS).featurize(atoms), want)


def test_derivative_method_reported():
    rep = SOAP(species=[29], **SETTINGS)
    assert rep.derivative_method([29], periodic=False) == "analytical"
    assert rep.derivative_method([29], periodic=True) == "numerical"
    assert SOAP(rbf="polynomial", **SETTINGS).derivative_method([29]) == "numerical"
    with pytest.raises(ConfigError, match="periodic"):
        SOAP(species=[29], periodic=True, derivatives="analytical", **SETTINGS)


@pytest.mark.parametrize(
    ("atoms_fn", "extra"),
    [(_ethanol, {}), (_ethanol, {"rbf": "polynomial"}), (_copper, {})],
    ids=["analytical", "numerical-polynomial", "numerical-periodic"],
)
@pytest.mark.parametrize("pooling", ["maxmin", "mean", None])
def test_gradcheck(atoms_fn, extra, pooling):
    atoms = atoms_fn()
    rep = SOAP(pooling=pooling, **SETTINGS, **extra)
    pos = torch.as_tensor(atoms.positions[None], dtype=torch.float64).requires_grad_(True)
    # dscribe's numerical derivatives are central differences with its own step, so
    # they agree with gradcheck's to ~1e-6 relative, not to machine precision. Fast mode
    # compares random projections of the Jacobian; one case checks it entry by entry.
    full = pooling is None and not extra and atoms_fn is _ethanol
    assert torch.autograd.gradcheck(
        lambda p: _call(rep, atoms, p), (pos,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=not full
    )


def test_gradient_float32_and_batch():
    atoms = _ethanol()
    rep = SOAP(**SETTINGS)
    pos64 = torch.as_tensor(np.stack([atoms.positions, atoms.positions + 0.01]))
    pos32 = pos64.float().requires_grad_(True)
    pos64.requires_grad_(True)
    w = torch.randn(2, rep.dim(atoms.numbers), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (g64,) = torch.autograd.grad((rep(pos64, atoms.numbers) * w).sum(), pos64)
    out32 = rep(pos32, atoms.numbers)
    assert out32.dtype == torch.float32
    (g32,) = torch.autograd.grad((out32 * w.float()).sum(), pos32)
    assert g32.dtype == torch.float32
    np.testing.assert_allclose(g32.numpy(), g64.numpy(), rtol=1e-3, atol=1e-3)
    # structures in one batch get independent gradients
    single = pos64[:1].detach().requires_grad_(True)
    (g_single,) = torch.autograd.grad((rep(single, atoms.numbers) * w[:1]).sum(), single)
    np.testing.assert_allclose(g_single[0].numpy(), g64[0].numpy(), rtol=1e-12, atol=1e-12)


def test_conformance_molecule():
    testing.check_representation(SOAP(**SETTINGS), molecule("CH3CH2OH"))


def test_conformance_per_atom_periodic():
    testing.check_representation(SOAP(pooling=None, **SETTINGS), _copper())


def test_registered_and_species_inferred():
    rep = invfp.get_representation("soap", **SETTINGS)
    atoms = Atoms("Pt4", positions=[[0, 0, 0], [2.6, 0, 0], [0, 2.6, 0], [0, 0, 2.6]])
    want = DscribeSOAP(species=[78], **SETTINGS).create(atoms)
    np.testing.assert_array_equal(rep.featurize(atoms), np.concatenate([want.max(0), want.min(0)]))
    assert rep.get_config()["name"] == "soap"


def test_bad_input():
    with pytest.raises(ConfigError, match="pooling"):
        SOAP(pooling="median")
    with pytest.raises(ConfigError, match="species"):
        SOAP(species=["Xx"])
    with pytest.raises(ConfigError, match="n_max"):
        SOAP(n_max=0)
    rep = SOAP(species=[1, 8], **SETTINGS)
    with pytest.raises(InputError, match="not in species"):
        rep.featurize(molecule("CH4"))
    with pytest.raises(InputError, match="needs a cell"):
        SOAP(periodic=True, **SETTINGS)(torch.zeros(1, 2, 3), [29, 29])
    with pytest.raises(InputError, match="atomic numbers"):
        rep(torch.zeros(1, 2, 3), [1, 1, 8])


def test_missing_dscribe_names_the_extra(monkeypatch):
    # a None entry in sys.modules makes `import dscribe...` raise ImportError
    monkeypatch.setitem(sys.modules, "dscribe", None)
    monkeypatch.setitem(sys.modules, "dscribe.descriptors", None)
    with pytest.raises(OptionalDependencyError, match=r"pip install 'invfp\[soap\]'"):
        invfp.get_representation("soap")


def test_cli_names_the_extra_without_dscribe(monkeypatch, run_cli, tmp_path):
    from ase.io import write

    path = tmp_path / "m.extxyz"
    write(path, molecule("CH4"))
    monkeypatch.setitem(sys.modules, "dscribe", None)
    monkeypatch.setitem(sys.modules, "dscribe.descriptors", None)
    code, _, err = run_cli("featurize", str(path), "--repr", "soap", "-o", str(tmp_path / "R.npy"))
    assert code != 0
    assert "pip install 'invfp[soap]'" in err


@pytest.mark.parametrize("pooling", ["maxmin", None])
def test_empty_batch_gives_empty_output_with_gradient(pooling):
    rep = SOAP(species=["Pt"], pooling=pooling, **SETTINGS)
    x = torch.zeros(0, 4, 3, dtype=torch.float64, requires_grad=True)
    out = rep(x, [78] * 4)
    assert out.shape == ((0, rep.dim([78] * 4)) if pooling else (0, 4, rep.dim([78] * 4)))
    out.sum().backward()
    assert x.grad.shape == (0, 4, 3)
