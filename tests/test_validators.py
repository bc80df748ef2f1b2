"""The built-in validators on hand-made structures with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

import invfp
from invfp import testing
from invfp.errors import ConfigError
from invfp.validators.base import ValidationContext


def _pair(d: float, symbol: str = "Pt") -> Atoms:
    return Atoms(f"{symbol}2", positions=[[0, 0, 0], [d, 0, 0]], cell=[20, 20, 20])


def _ctx(n: int, targets: float | list[float] = 0.0, losses: list[float] | None = None, **extras) -> ValidationContext:
    t = targets if isinstance(targets, list) else [targets] * n
    return ValidationContext(targets=t, losses=losses if losses is not None else [0.0] * n, extras=extras)


def test_loss_threshold_rejects_a_loss_above_it():
    v = invfp.get_validator("loss-threshold", threshold=0.01)
    atoms = [_pair(2.5)] * 3
    verdicts = testing.check_validator(v, atoms, _ctx(3, losses=[0.001, 0.01, 0.0101]))
    assert [x.accepted for x in verdicts] == [True, True, False]
    assert [x.value for x in verdicts] == [0.001, 0.01, 0.0101]


def test_loss_threshold_takes_the_pipeline_threshold_and_needs_one():
    v = invfp.get_validator("loss-threshold")
    verdicts = v.validate([_pair(2.5)] * 2, _ctx(2, losses=[0.02, 0.04], loss_threshold=0.03))
    assert [x.accepted for x in verdicts] == [True, False]
    with pytest.raises(ConfigError, match="no threshold"):
        v.validate([_pair(2.5)], _ctx(1))
    with pytest.raises(ConfigError, match="threshold"):
        invfp.get_validator("loss-threshold", threshold=-1.0)


def test_geometry_rejects_two_atoms_too_close():
    v = invfp.get_validator("geometry")
    # Pt covalent radius 1.36 Å: default d_min = 0.75 * 2.72 = 2.04 Å.
    verdicts = testing.check_validator(v, [_pair(1.5), _pair(2.03), _pair(2.05), _pair(2.77)])
    assert [x.accepted for x in verdicts] == [False, False, True, True]
    np.testing.assert_allclose([x.value for x in verdicts], [1.5, 2.03, 2.05, 2.77])
    explicit = invfp.get_validator("geometry", d_min=1.0)
    assert explicit.validate([_pair(1.5)], _ctx(1))[0].accepted


def test_geometry_sees_periodic_images():
    crystal = bulk("Pt", "fcc", a=3.92)  # one atom; its nearest image is a / sqrt(2) away
    verdict = invfp.get_validator("geometry").validate([crystal], _ctx(1))[0]
    assert verdict.accepted
    assert verdict.value == pytest.approx(3.92 / np.sqrt(2))
    squeezed = bulk("Pt", "fcc", a=2.6)  # nearest image 1.84 Å < 2.04 Å
    assert not invfp.get_validator("geometry").validate([squeezed], _ctx(1))[0].accepted


def test_geometry_connectivity_rejects_an_isolated_atom():
    compact = Atoms("Pt3", positions=[[0, 0, 0], [2.6, 0, 0], [1.3, 2.2, 0]], cell=[20] * 3)
    split = Atoms("Pt3", positions=[[0, 0, 0], [2.6, 0, 0], [9.0, 0, 0]], cell=[20] * 3)
    v = invfp.get_validator("geometry", connectivity=True)
    verdicts = v.validate([compact, split], _ctx(2))
    assert [x.accepted for x in verdicts] == [True, False]
    assert "2 fragments" in verdicts[1].detail
    # Off by default: dissociated high-energy clusters are legitimate.
    assert invfp.get_validator("geometry").validate([split], _ctx(1))[0].accepted


def test_energy_equals_a_direct_emt_calculation():
    atoms = Atoms("Pt4", positions=[[0, 0, 0], [2.6, 0, 0], [1.3, 2.2, 0], [1.3, 0.8, 2.1]], cell=[20] * 3)
    ref = bulk("Pt", "fcc", a=3.92)
    ref.calc = EMT()
    e_bulk = ref.get_potential_energy() / len(ref)
    probe = atoms.copy()
    probe.calc = EMT()
    expected = (probe.get_potential_energy() - 4 * e_bulk) / 4

    v = invfp.get_validator("energy")
    verdicts = testing.check_validator(v, [atoms, atoms], _ctx(2, targets=[expected + 0.05, expected + 0.2]))
    assert verdicts[0].value == pytest.approx(expected, abs=1e-10)
    assert [x.accepted for x in verdicts] == [True, False]
    assert 0.5 < expected < 4.0  # a Pt4 cluster: above bulk, in the EMT Pt10 range

    total = invfp.get_validator("energy").validate(
        [atoms], ValidationContext(targets=[0.0], losses=[0.0], property_name="energy")
    )[0]
    assert total.value == pytest.approx(probe.get_potential_energy(), abs=1e-10)
    with pytest.raises(ConfigError, match="band_gap"):
        v.validate([atoms], ValidationContext(targets=[0.0], losses=[0.0], property_name="band_gap"))


def test_energy_unknown_calculator_is_a_clear_error():
    v = invfp.get_validator("energy", calculator="no-such-calculator")
    with pytest.raises(invfp.InvfpError, match="no-such-calculator"):
        v.validate([_pair(2.5)], _ctx(1))


class _LinearSurrogate:
    """predict(R) = sum of features: a known answer for the surrogate validator."""

    def predict(self, R):
        return np.asarray(R).sum(axis=1)


def test_surrogate_compares_the_prediction_with_the_target():
    from invfp_example.representation import SortedDistances

    rep = SortedDistances()
    atoms = [_pair(2.0), _pair(2.5)]
    ctx = _ctx(2, targets=[2.05, 2.7], surrogate=_LinearSurrogate(), representation=rep)
    verdicts = testing.check_validator(invfp.get_validator("surrogate", tolerance=0.1), atoms, ctx)
    np.testing.assert_allclose([x.value for x in verdicts], [2.0, 2.5], atol=1e-6)
    assert [x.accepted for x in verdicts] == [True, False]
    with pytest.raises(ConfigError, match="surrogate"):
        invfp.get_validator("surrogate").validate(atoms, _ctx(2))


def test_check_validator_catches_a_broken_validator():
    from invfp.validators.base import Validator, Verdict

    class Short(Validator):
        name = "short"
        description = "Returns one verdict too few."

        def validate(self, structures, context):
            return [Verdict(True, 1.0) for _ in structures[1:]]

    with pytest.raises(AssertionError, match="verdicts for 2 structures"):
        testing.check_validator(Short(), [_pair(2.5), _pair(2.6)])
