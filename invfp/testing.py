"""Conformance checks for plugin authors (and for invfp's own components).

Call them from your plugin's tests, as dscribe's shared descriptor tests are called::

    from invfp import testing
    def test_my_representation():
        testing.check_representation(MyRep(), ase.build.molecule("CH3CH2OH"))

Each check raises ``AssertionError`` with a message naming the broken contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import ase


def _rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _features(rep: Any, atoms: ase.Atoms, dtype: Any = None) -> np.ndarray:
    import torch

    pos = torch.as_tensor(atoms.positions[None], dtype=dtype or torch.float64)
    cell = torch.as_tensor(atoms.cell.array[None], dtype=pos.dtype) if atoms.pbc.any() else None
    with torch.no_grad():
        out = rep(pos, torch.as_tensor(atoms.numbers), cell=cell, pbc=tuple(bool(p) for p in atoms.pbc))
    return out[0].cpu().numpy()


def check_representation(
    rep: Any, atoms: ase.Atoms, *, rtol: float = 1e-6, atol: float = 1e-8, rattle: float = 0.02
) -> None:
    """Check the representation contract on one structure.

    The structure is first rattled by ``rattle`` Å (seeded) so that symmetric
    structures do not sit exactly on ties of max/min pooling or sorting, where the
    fingerprint is not differentiable.

    - the output has the declared dimension (``rep.dim(numbers)``), pooled ``[B, D]``
      or per-atom ``[B, N, F]``; finite values;
    - ``featurize`` agrees with the torch call;
    - invariance to translation, rotation and permutation of same-element atoms (for a
      periodic structure: translation and permutation, plus moving one atom by a lattice
      vector);
    - differentiable w.r.t. positions: the autograd gradient of a random projection
      matches central finite differences.
    """
    import torch

    from invfp.representations.base import Representation

    assert isinstance(rep, Representation), f"{type(rep).__name__} does not derive from Representation"
    atoms = atoms.copy()
    if rattle:
        atoms.rattle(stdev=rattle, seed=7)
    periodic = bool(atoms.pbc.any())
    base = _features(rep, atoms)
    dim = rep.dim(atoms.numbers)
    if rep.pooled:
        assert base.shape == (dim,), f"pooled output shape {base.shape} != declared ({dim},)"
    else:
        assert base.shape == (len(atoms), dim), f"per-atom output shape {base.shape} != ({len(atoms)}, {dim})"
    assert np.all(np.isfinite(base)), "output has non-finite values"

    feat = rep.featurize(atoms)
    np.testing.assert_allclose(feat, base, rtol=rtol, atol=atol, err_msg="featurize() differs from the torch call")

    def compare(other: ase.Atoms, what: str, perm: np.ndarray | None = None) -> None:
        got = _features(rep, other)
        want = base if (rep.pooled or perm is None) else base[perm]
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"not invariant to {what}")

    moved = atoms.copy()
    moved.positions += np.array([0.731, -1.27, 2.05])
    compare(moved, "translation")

    if not periodic:
        rotated = atoms.copy()
        rotated.positions = atoms.positions @ _rotation(0).T
        compare(rotated, "rotation")
    else:
        shifted = atoms.copy()
        shifted.positions[0] += atoms.cell.array[0]
        compare(shifted, "moving an atom by a lattice vector")

    rng = np.random.default_rng(1)
    perm = np.arange(len(atoms))
    for z in np.unique(atoms.numbers):
        idx = np.flatnonzero(atoms.numbers == z)
        perm[idx] = rng.permutation(idx)
    permuted = atoms[perm]
    # per-atom rows follow the atoms: row k of the permuted structure is atom perm[k]
    compare(permuted, "permutation of same-element atoms", perm)

    if getattr(rep, "differentiable", True):
        pos = torch.as_tensor(atoms.positions[None], dtype=torch.float64).requires_grad_(True)
        cell = torch.as_tensor(atoms.cell.array[None], dtype=torch.float64) if periodic else None
        numbers = torch.as_tensor(atoms.numbers)
        pbc = tuple(bool(p) for p in atoms.pbc)
        weights = torch.as_tensor(rng.normal(size=base.shape), dtype=torch.float64)

        def scalar(p: torch.Tensor) -> torch.Tensor:
            return (rep(p, numbers, cell=cell, pbc=pbc)[0] * weights).sum()

        (grad,) = torch.autograd.grad(scalar(pos), pos)
        assert grad.shape == pos.shape, "gradient has the wrong shape"
        h = 1e-5
        direction = torch.as_tensor(rng.normal(size=pos.shape), dtype=torch.float64)
        with torch.no_grad():
            fd = (scalar(pos + h * direction) - scalar(pos - h * direction)) / (2 * h)
        an = (grad * direction).sum()
        assert torch.isclose(an, fd, rtol=1e-4, atol=1e-6), (
            f"gradient w.r.t. positions does not match finite differences: {an.item()} vs {fd.item()}"
        )


def check_validator(validator: Any, structures: list[ase.Atoms], context: Any = None) -> list[Any]:
    """Check the validator contract on a batch of structures; returns the verdicts.

    - it derives from :class:`~invfp.validators.base.Validator` and declares a ``name``
      and a ``description``; ``get_config()`` is JSON-serialisable;
    - ``validate`` returns one :class:`~invfp.validators.base.Verdict` per structure,
      in order, with a bool ``accepted`` and a finite float (or ``None``) ``value``;
    - an empty batch gives an empty list;
    - it is deterministic (the same input twice gives the same verdicts) and does not
      move the atoms it judges.
    """
    import json
    import math

    from invfp.validators.base import ValidationContext, Validator, Verdict

    assert isinstance(validator, Validator), f"{type(validator).__name__} does not derive from Validator"
    assert validator.name and validator.description, "a validator declares class-level name and description"
    json.dumps(validator.get_config())
    if context is None:
        context = ValidationContext(targets=[0.0] * len(structures), losses=[0.0] * len(structures))
    before = [a.positions.copy() for a in structures]
    first = validator.validate(structures, context)
    assert isinstance(first, list) and len(first) == len(structures), (
        f"validate returned {len(first) if isinstance(first, list) else type(first).__name__} "
        f"verdicts for {len(structures)} structures"
    )
    for k, verdict in enumerate(first):
        assert isinstance(verdict, Verdict), f"verdict {k} is a {type(verdict).__name__}, not a Verdict"
        assert isinstance(verdict.accepted, bool), f"verdict {k}: accepted is not a bool"
        assert verdict.value is None or (isinstance(verdict.value, float) and math.isfinite(verdict.value)), (
            f"verdict {k}: value {verdict.value!r} is not a finite float or None"
        )
    for k, (atoms, pos) in enumerate(zip(structures, before, strict=True)):
        np.testing.assert_array_equal(atoms.positions, pos, err_msg=f"validate moved the atoms of structure {k}")
    empty = ValidationContext(property_name=context.property_name, extras=context.extras)
    assert validator.validate([], empty) == [], "an empty batch must give an empty list"
    second = validator.validate(structures, context)
    assert [(v.accepted, v.value) for v in second] == [(v.accepted, v.value) for v in first], (
        "validate is not deterministic"
    )
    return first


def synthetic_fingerprints(n: int = 96, dim: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A small fingerprint-like data set ``(R [n, dim], y [n])`` for model checks.

    ``y`` is uniform in [1, 3]; each feature is a smooth, positive function of ``y`` and
    a hidden nuisance variable plus noise, with magnitudes spanning four orders (as raw
    ACSF features do), and the last feature is constant.
    """
    rng = np.random.default_rng(seed)
    y = rng.uniform(1.0, 3.0, n)
    h = rng.normal(size=n)
    k = np.arange(dim)
    mags = 10.0 ** np.linspace(-3, 1, dim)
    R = mags * (1.5 + np.sin(np.outer(y, 1 + k % 3) + k) + 0.3 * np.outer(h, np.cos(k)))
    R += 0.02 * mags * rng.normal(size=R.shape)
    R[:, -1] = 0.5
    return R, y


def check_model(model: Any, *, directory: Any = None, n: int = 96, dim: int = 12, seed: int = 0) -> dict[str, Any]:
    """Check the generative-model contract (``invfp.models.base.GenerativeModel``).

    Give a model configured to train quickly (a few epochs). The check fits it on
    :func:`synthetic_fingerprints` and asserts:

    - ``fit`` returns a JSON-serialisable dict; ``dimension`` and ``y_range`` are set;
    - ``sample`` returns a finite float array ``[n, D]`` at raw scale (the constant
      feature comes back at its value), the same for the same seed, different for
      another seed;
    - ``save`` then ``load`` gives a model whose samples for a seed are identical;
    - loading a missing directory raises :class:`~invfp.errors.ModelLoadError`;
    - the target is validated: NaN raises ``InputError`` (a ``ValueError``).

    Args:
        model: an unfitted model instance.
        directory: where to save (a temporary directory when ``None``).

    Returns:
        The fit report.
    """
    import json
    import tempfile
    from pathlib import Path

    from invfp.errors import InputError, ModelLoadError
    from invfp.models.base import GenerativeModel

    assert isinstance(model, GenerativeModel), f"{type(model).__name__} does not derive from GenerativeModel"
    R, y = synthetic_fingerprints(n, dim, seed)
    report = model.fit(R, y, seed=seed, progress=False, device="cpu")
    assert isinstance(report, dict), "fit() must return a dict report"
    json.dumps(report)  # must be JSON-serialisable
    assert model.dimension == dim, f"model.dimension is {model.dimension}, expected {dim}"
    assert model.y_range is not None and np.allclose(model.y_range, (y.min(), y.max())), "y_range not the data range"
    target = float(np.median(y))
    a = model.sample(target, 17, seed=3)
    assert isinstance(a, np.ndarray) and a.shape == (17, dim), f"sample() shape {getattr(a, 'shape', None)} != (17, {dim})"
    assert np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)), "samples must be finite floats"
    np.testing.assert_allclose(a[:, -1], 0.5, rtol=1e-6, err_msg="a constant feature is not restored (raw scale?)")
    assert np.abs(a[:, 0]).max() < 1.0 < np.abs(a[:, -2]).mean(), "samples are not at raw scale"
    np.testing.assert_array_equal(model.sample(target, 17, seed=3), a, err_msg="sampling with a seed is not deterministic")
    assert not np.array_equal(model.sample(target, 17, seed=4), a), "different seeds give identical samples"
    try:
        model.sample(float("nan"), 3, seed=0)
    except InputError:
        pass
    else:
        raise AssertionError("sample(nan) must raise InputError")
    with tempfile.TemporaryDirectory() as tmp:
        where = Path(directory) if directory is not None else Path(tmp) / "model"
        model.save(where)
        loaded = type(model).load(where)
        np.testing.assert_array_equal(loaded.sample(target, 17, seed=3), a, err_msg="save -> load changed the samples")
        try:
            type(model).load(Path(tmp) / "does-not-exist")
        except ModelLoadError:
            pass
        else:
            raise AssertionError("loading a missing directory must raise ModelLoadError")
    return report


def random_pt5_clusters(n: int, *, seed: int = 0) -> list[ase.Atoms]:
    """``n`` random Pt5 clusters (uniform in a 5 Å box, pairs at least 2.2 Å apart) in a 20 Å cell.

    Each carries its EMT formation energy (eV/atom) in ``info["formation_energy"]``, the
    definition of :mod:`invfp.data`: seconds-fast labelled data for tests of training and runs.
    """
    import ase

    from invfp.validators.builtin import EnergyValidator

    rng = np.random.default_rng(seed)
    frames = []
    while len(frames) < n:
        positions = rng.uniform(-2.5, 2.5, (5, 3))
        distances = np.linalg.norm(positions[:, None] - positions[None], axis=-1)[np.triu_indices(5, 1)]
        if distances.min() > 2.2:
            frames.append(ase.Atoms("Pt5", positions=positions + 10.0, cell=[20.0] * 3))
    oracle = EnergyValidator()
    for atoms in frames:
        atoms.info["formation_energy"] = oracle.true_property(atoms, "formation_energy")
    return frames


def tiny_pipeline(*, seed: int = 0, n_data: int = 60, epochs: int = 40) -> tuple[Any, np.ndarray, np.ndarray]:
    """A complete, seconds-fast :class:`~invfp.engine.Pipeline` for tests of runs, executors and reports.

    Pt5 clusters (random, minimum separation 2.2 Å, in a 20 Å box) labelled with their
    EMT formation energy, a 14-feature ACSF, a small cVAE, a short adam-hopping
    reconstruction, the ``loss-threshold`` (0.05) and ``geometry`` filters and the EMT
    oracle. Everything is seeded, so two builds give the same samples.

    Returns:
        ``(pipeline, R, y)``: the pipeline and its training data (fingerprints, formation
        energies in eV/atom).
    """
    from invfp import get_representation
    from invfp.engine import Pipeline
    from invfp.models.cvae import CVAE

    frames = random_pt5_clusters(n_data, seed=seed)
    y = np.array([atoms.info["formation_energy"] for atoms in frames])
    rep = get_representation(
        "acsf", species=["Pt"], r_cut=6.0,
        g2_params=[[0.5, 2.0], [0.5, 3.0], [0.5, 4.0], [1.0, 2.5]], g5_params=[[0.1, 1.0, 1.0], [0.1, 1.0, -1.0]],
    )
    R = rep.featurize(frames)
    generator = CVAE(epochs=epochs, hidden=32, latent=4, batch_size=16)
    generator.fit(R, y, seed=seed, device="cpu")
    pipeline = Pipeline(
        rep, generator, numbers=[78] * 5, cell=20.0, filters=("loss-threshold", "geometry"), oracle="energy",
        optimizer_options={"restarts": 4, "hops": 1, "steps": 60, "refine_steps": 20},
        loss_threshold=0.05, feature_scale=np.ones(R.shape[1]), device="cpu",
    )
    return pipeline, R, y


def check_optimizer(
    optimizer: Any,
    representation: Any,
    atoms: ase.Atoms | list[ase.Atoms],
    *,
    seed: int = 0,
    rtol: float = 1e-4,
    atol: float = 1e-6,
) -> list[Any]:
    """Check the optimizer contract on one structure (or a list of one composition).

    Featurizes ``atoms`` with ``representation``, reconstructs twice with ``seed``
    (in float64 on the CPU) and checks:

    - one result per target, in order (``target_index``), with the right composition,
      cell and pbc, and ``info["loss"]`` equal to ``loss``;
    - a finite loss, one finite loss per restart, a positive step count;
    - the same positions and losses for the same seed (determinism);
    - ``loss`` equals the MAE between the target and the representation's fingerprint
      of the returned atoms, recomputed here.

    Args:
        optimizer: a ready optimizer object (small settings keep the check fast).
        representation: a ready representation object.
        atoms: the structure(s) whose fingerprints are the targets.
        seed: the seed of both runs.
        rtol: relative tolerance of the loss comparison.
        atol: absolute tolerance of the loss comparison.

    Returns:
        The results of the first run, for further checks by the caller.
    """
    from ase import Atoms

    from invfp.optimizers.base import Optimizer
    from invfp.reconstruction import reconstruct

    assert isinstance(optimizer, Optimizer), f"{type(optimizer).__name__} does not derive from Optimizer"
    frames = [atoms] if isinstance(atoms, Atoms) else list(atoms)
    targets = np.atleast_2d(representation.featurize(frames))
    first = frames[0]
    has_cell = bool(np.abs(first.cell.array).sum() > 0)
    kwargs = {
        "numbers": first.numbers,
        "cell": first.cell.array if has_cell else None,
        "pbc": tuple(bool(p) for p in first.pbc),
        "representation": representation,
        "optimizer": optimizer,
        "seed": seed,
        "device": "cpu",
        "dtype": "float64",
    }
    results = reconstruct(targets, **kwargs)
    again = reconstruct(targets, **kwargs)
    assert len(results) == len(targets), f"{len(results)} results for {len(targets)} targets"
    for k, (res, res2) in enumerate(zip(results, again, strict=True)):
        out = res.atoms
        assert res.target_index == k, f"result {k} has target_index {res.target_index}"
        assert sorted(out.numbers.tolist()) == sorted(first.numbers.tolist()), f"result {k}: wrong composition"
        assert np.array_equal(out.pbc, first.pbc), f"result {k}: pbc {out.pbc} != {first.pbc}"
        if has_cell:
            np.testing.assert_allclose(out.cell.array, first.cell.array, atol=1e-8, err_msg=f"result {k}: wrong cell")
        assert np.isfinite(res.loss), f"result {k}: loss {res.loss} is not finite"
        assert out.info.get("loss") == res.loss, f"result {k}: atoms.info['loss'] differs from loss"
        assert res.restart_losses and np.all(np.isfinite(res.restart_losses)), f"result {k}: bad restart_losses"
        assert res.steps > 0, f"result {k}: no steps counted"
        np.testing.assert_array_equal(
            out.positions, res2.atoms.positions, err_msg=f"result {k}: not deterministic for seed {seed}"
        )
        assert res.loss == res2.loss, f"result {k}: loss not deterministic for seed {seed}"
        recomputed = float(np.abs(_features(representation, out) - targets[k]).mean())
        assert np.isclose(res.loss, recomputed, rtol=rtol, atol=atol), (
            f"result {k}: reported loss {res.loss} != recomputed {recomputed}"
        )
    return results
