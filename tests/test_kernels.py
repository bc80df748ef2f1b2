"""The fused CPU kernels (numba) of the ACSF give torch's own values and gradients.

``INVFP_NUMBA=0`` runs torch's code (as on CUDA); both paths are compared here on the
cases the kernels take (cluster G2 and G5, several elements, periodic G2, periodic
one-element G5) and on the ones they leave to torch (non-integer zeta, periodic
several-element G5).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from invfp.representations import _kernels
from invfp.representations.acsf import ACSF

pytestmark = pytest.mark.skipif(not _kernels.enabled(), reason="numba is not installed or INVFP_NUMBA=0")

G5 = [[0.02, 1.0, 1.0], [0.1, 2.0, -1.0], [0.01, 16.0, 1.0], [0.05, 3.0, -1.0]]


def _both(monkeypatch, rep, pos, numbers, cell=None):
    """Features and gradients (w.r.t. positions, and cell if given) with the kernels, then without."""
    weights = None
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("INVFP_NUMBA", flag)
        p = pos.clone().requires_grad_(True)
        c = None if cell is None else cell.clone().requires_grad_(True)
        f = rep(p, numbers) if c is None else rep(p, numbers, cell=c, pbc=True)
        if weights is None:
            weights = torch.randn(f.shape, generator=torch.Generator().manual_seed(0), dtype=f.dtype)
        grads = torch.autograd.grad((f * weights).sum(), [p] if c is None else [p, c])
        results.append((f.detach(), *grads))
    return results


def _close(a, b, dtype, rtol32=2e-5):
    rtol = 1e-10 if dtype == torch.float64 else rtol32
    scale = b.abs().max()
    assert (a - b).abs().max() <= rtol * scale, float((a - b).abs().max() / scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fung2022_cluster_equals_torch(monkeypatch, dtype):
    rng = np.random.default_rng(0)
    pos = torch.as_tensor(rng.uniform(-3.5, 3.5, (40, 10, 3)), dtype=dtype)
    rep = ACSF.fung2022()
    (fk, gk), (ft, gt) = _both(monkeypatch, rep, pos, [78] * 10)
    assert fk.shape == (40, 380)
    _close(fk, ft, dtype)
    _close(gk, gt, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_several_elements_per_atom_equal_torch(monkeypatch, dtype):
    """Per-atom features of an H/C/O cluster: every element pair in its own G5 channel."""
    rep = ACSF(
        species=["H", "C", "O"], r_cut=5.0, g2_params=[[1.0, 0.0], [0.5, 2.0]], g5_params=G5, pooling=None
    )
    rng = np.random.default_rng(1)
    pos = torch.as_tensor(rng.uniform(-2.0, 2.0, (6, 7, 3)), dtype=dtype)
    (fk, gk), (ft, gt) = _both(monkeypatch, rep, pos, [1, 6, 8, 1, 6, 8, 8])
    assert fk.shape[:2] == (6, 7)
    _close(fk, ft, dtype)
    _close(gk, gt, dtype)


@pytest.mark.parametrize("name", ["Pt", "NaCl"])
def test_periodic_positions_and_cell_equal_torch(monkeypatch, name):
    """Periodic G2 runs in the kernel; G5 too for one element (Pt), in torch for two (NaCl)."""
    atoms = bulk("Pt", "fcc", a=3.92, cubic=True) if name == "Pt" else bulk("NaCl", "rocksalt", a=5.64)
    atoms.rattle(0.1, seed=2)
    rep = ACSF(
        species=sorted(set(atoms.get_chemical_symbols())),
        r_cut=5.0,
        g2_params=[[1.0, 0.0], [0.5, 2.5]],
        g5_params=G5,
        periodic=True,
        pooling="mean",
    )
    pos = torch.as_tensor(np.stack([atoms.positions] * 2))
    pos[1] += 0.05
    cell = torch.as_tensor(np.stack([atoms.cell.array] * 2))
    (fk, gpk, gck), (ft, gpt, gct) = _both(monkeypatch, rep, pos, atoms.numbers, cell)
    _close(fk, ft, torch.float64)
    _close(gpk, gpt, torch.float64)
    _close(gck, gct, torch.float64)
    assert gck.abs().max() > 0  # the cell gradient flows through the kernels' inputs


def test_non_integer_zeta_stays_in_torch(monkeypatch):
    rep = ACSF(
        species=["Pt"], r_cut=6.0, g2_params=[[1.0, 0.0]], g5_params=[[0.1, 1.5, 1.0], [0.1, 2.0, -1.0]]
    )
    assert rep._g5.zeta_int is None
    pos = torch.as_tensor(np.random.default_rng(3).uniform(-2.5, 2.5, (3, 6, 3)))
    (fk, gk), (ft, gt) = _both(monkeypatch, rep, pos, [78] * 6)
    _close(fk, ft, torch.float64)
    _close(gk, gt, torch.float64)


@pytest.mark.parametrize("flag", ["1", "0"])
def test_gradcheck_both_paths(monkeypatch, flag):
    monkeypatch.setenv("INVFP_NUMBA", flag)
    rep = ACSF(species=["H", "O"], r_cut=4.0, g2_params=[[1.0, 0.0], [0.5, 2.0]], g5_params=G5)
    pos = torch.as_tensor(np.random.default_rng(4).uniform(-1.5, 1.5, (2, 4, 3))).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: rep(p, [1, 8, 1, 8]), (pos,), eps=1e-6, atol=1e-6)


def test_far_atoms_give_finite_gradients(monkeypatch):
    """Gaussians clamped at exp(-87) and an atom beyond every cutoff: no NaN or inf."""
    monkeypatch.setenv("INVFP_NUMBA", "1")
    pos = torch.as_tensor(np.random.default_rng(5).uniform(-3.5, 3.5, (3, 10, 3)), dtype=torch.float32)
    pos[0, 0] += 30.0
    pos.requires_grad_(True)
    ACSF.fung2022()(pos, [78] * 10).sum().backward()
    assert torch.isfinite(pos.grad).all()


@pytest.mark.parametrize("pooling", ["maxmin", "maxmin+mean"])
def test_maxmin_pooling_equals_torch_with_ties_and_nan(monkeypatch, pooling):
    from invfp.representations.base import pool

    feats = torch.randn(5, 4, 6, dtype=torch.float64)
    feats[1, 2] = feats[1, 0]  # ties: the gradient goes to the first atom holding the extreme
    feats[2, 3, 1] = float("nan")  # NaN wins, as in torch
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("INVFP_NUMBA", flag)
        x = feats.clone().requires_grad_(True)
        out = pool(x, pooling)
        (grad,) = torch.autograd.grad(torch.nan_to_num(out).sum(), x)
        results.append((out.detach(), grad))
    (ok, gk), (ot, gt) = results
    torch.testing.assert_close(ok, ot, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(gk, gt, rtol=0, atol=0)
    assert torch.isnan(ok[2, [1, 7]]).all()


@pytest.mark.parametrize("flag", ["1", "0"])
def test_one_and_two_atoms(monkeypatch, flag):
    """No pairs (one atom) or no neighbour pairs (two atoms): zero terms, not an error."""
    from ase import Atoms

    monkeypatch.setenv("INVFP_NUMBA", flag)
    rep = ACSF.fung2022()
    one = rep.featurize(Atoms("Pt", positions=[[0.0, 0.0, 0.0]], cell=[20.0] * 3))
    assert one.shape == (380,) and not one.any()  # no neighbours, every term zero
    two = rep.featurize(Atoms("Pt2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 2.5]], cell=[20.0] * 3))
    assert two[:140].max() > 0 and not two[140:190].any() and not two[330:].any()  # G2, no G5 terms


def _spy_fused(monkeypatch):
    """Counts the calls of the whole-cluster kernel ``ClusterACSF``."""
    calls = []
    apply = _kernels.ClusterACSF.apply
    monkeypatch.setattr(_kernels.ClusterACSF, "apply", lambda *a: calls.append(1) or apply(*a))
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("cutoff", ["cosine", "polynomial"])
@pytest.mark.parametrize("pooling", [None, "mean", "maxmin+mean"])
def test_whole_cluster_kernel_equals_torch(monkeypatch, dtype, cutoff, pooling):
    """dscribe's layout with G1, two cutoff functions, pairs on both sides of the cutoff,
    three elements: ``ClusterACSF`` gives torch's values and position gradients."""
    calls = _spy_fused(monkeypatch)
    rep = ACSF(
        species=["H", "C", "O"], r_cut=3.0, g2_params=[[1.0, 0.0], [0.5, 2.0]], g5_params=G5,
        cutoff=cutoff, pooling=pooling,
    )  # fmt: skip
    pos = torch.as_tensor(np.random.default_rng(6).uniform(-2.0, 2.0, (9, 7, 3)), dtype=dtype)
    r = (pos[:, :, None] - pos[:, None]).norm(dim=-1)
    assert (r > 3.0).any() and ((r > 0) & (r < 3.0)).any()
    (fk, gk), (ft, gt) = _both(monkeypatch, rep, pos, [1, 6, 8, 1, 6, 8, 8])
    assert len(calls) == 1  # the kernels' run, not torch's
    _close(fk, ft, dtype)
    # float32: the cutoff's derivative is a closed form here, autograd's product rule in torch
    _close(gk, gt, dtype, rtol32=1e-4)


def test_whole_cluster_kernel_only_where_it_applies():
    """G3 and G4 terms, or a non-integer zeta, keep the cluster in the per-term path."""
    z = torch.tensor([0, 0, 0])
    for kwargs, fused in [
        ({"g5_params": G5}, True),
        ({"g5_params": G5, "g3_params": [1.0]}, False),
        ({"g4_params": G5}, False),
        ({"g5_params": [[0.1, 1.5, 1.0]]}, False),
    ]:
        rep = ACSF(species=["Pt"], r_cut=5.0, g2_params=[[1.0, 0.0]], **kwargs)
        assert (rep._cluster_plan(z, 1, torch.float32)["fused"] is not None) is fused, kwargs


def test_maxmin_pooling_of_structures_innermost_view(monkeypatch):
    """``MaxMin`` pools a view of an ``[N, F, B]`` array in place, ties and NaN as torch."""
    from invfp.representations.base import pool

    base = torch.randn(4, 6, 5, dtype=torch.float64)  # [N, F, B]
    base[2, :, 1] = base[0, :, 1]
    base[3, 1, 2] = float("nan")
    results = []
    for flag in ("1", "0"):
        monkeypatch.setenv("INVFP_NUMBA", flag)
        x = base.clone().requires_grad_(True)
        feats = x.permute(2, 0, 1)  # [B, N, F], not contiguous
        out = pool(feats, "maxmin")
        (grad,) = torch.autograd.grad((torch.nan_to_num(out) * torch.arange(12.0)).sum(), x)
        results.append((out.detach(), grad))
    (ok, gk), (ot, gt) = results
    torch.testing.assert_close(ok, ot, equal_nan=True, rtol=0, atol=0)
    torch.testing.assert_close(gk, gt, rtol=0, atol=0)


def test_second_derivatives_raise_instead_of_coming_out_wrong(monkeypatch):
    """The kernels' backward is NumPy: differentiating it again is an error, not zeros."""
    monkeypatch.setenv("INVFP_NUMBA", "1")
    pos = torch.as_tensor(np.random.default_rng(7).uniform(-2.5, 2.5, (2, 5, 3))).requires_grad_(True)
    (grad,) = torch.autograd.grad(ACSF.fung2022()(pos, [78] * 5).sum(), pos, create_graph=True)
    with pytest.raises(RuntimeError, match="twice|does not require grad"):
        grad.sum().backward()
