"""The example plugin passes invfp's conformance checks and is found through its entry point."""

import numpy as np
import pytest
from ase.build import molecule
from invfp_example.representation import SortedDistances

from invfp import testing


def test_conformance():
    testing.check_representation(SortedDistances(), molecule("CH3CH2OH"))


def test_values_are_sorted_distances():
    atoms = molecule("H2O")
    rep = SortedDistances()
    got = rep.featurize(atoms)
    d = atoms.get_all_distances()[np.triu_indices(3, 1)]
    np.testing.assert_allclose(got, np.sort(d), rtol=1e-10)


def test_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        SortedDistances(scale=-1.0)
