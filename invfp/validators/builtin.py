"""The built-in validators: loss threshold, geometry, surrogate and energy (an ASE oracle).

Each judges a batch of reconstructed structures and returns one
:class:`~invfp.validators.base.Verdict` per structure: accepted or not, and the metric
behind the verdict (``value``), which the results store records for every sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from invfp.components import Param, non_negative, positive
from invfp.errors import ConfigError
from invfp.validators.base import ValidationContext, Validator, Verdict

if TYPE_CHECKING:
    import ase


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


class LossThreshold(Validator):
    """Accept a structure when its reconstruction loss is at most a threshold (the paper's filter).

    With ``threshold=None`` the threshold comes from ``context.extras["loss_threshold"]``,
    which :class:`invfp.engine.Pipeline` derives from the reconstruction losses of real
    training structures (a fingerprint no structure has cannot reach their losses).
    """

    name = "loss-threshold"
    description = "Accept structures whose reconstruction loss is at most a threshold (the paper's filter)."
    parameters = {
        "threshold": Param(
            None,
            "Largest accepted loss; None: the pipeline's threshold derived from real training structures.",
            check=non_negative,
        ),
    }

    def validate(self, structures: Sequence[ase.Atoms], context: ValidationContext) -> list[Verdict]:
        """Accept ``loss <= threshold``; ``value`` is the loss."""
        threshold = self.params["threshold"]
        if threshold is None:
            threshold = context.extras.get("loss_threshold")
        if threshold is None:
            raise ConfigError(
                "loss-threshold has no threshold: pass threshold=... or run it in a Pipeline, "
                "which derives one from training structures"
            )
        if len(context.losses) != len(structures):
            raise ConfigError(
                f"loss-threshold needs one loss per structure: got {len(context.losses)} losses "
                f"for {len(structures)} structures"
            )
        return [
            Verdict(bool(loss <= threshold), float(loss), f"loss {loss:.3g} vs threshold {threshold:.3g}")
            for loss in context.losses
        ]


class Geometry(Validator):
    """Physical sanity: no two atoms closer than ``d_min``; optionally one connected piece.

    The default ``d_min`` of a pair of elements is ``fraction`` times the sum of their
    covalent radii (0.75 × 2 × 1.36 Å = 2.04 Å for Pt–Pt). Connectivity joins atoms
    closer than ``bond_factor`` times the sum of their natural cutoffs (ASE covalent
    radii); it is off by default because high-energy structures are legitimately
    dissociated (the paper's 3.7 eV/atom Pt10 samples have isolated atoms).
    """

    name = "geometry"
    description = "Minimum interatomic distance and, optionally, connectivity (no isolated fragments)."
    parameters = {
        "d_min": Param(None, "Minimum distance in Å for every pair; None: fraction × covalent radii.", check=positive),
        "fraction": Param(0.75, "Default d_min as a fraction of the sum of covalent radii.", check=positive),
        "connectivity": Param(False, "Also reject structures made of several fragments.", check=_bool),
        "bond_factor": Param(1.25, "Bond when closer than this × the sum of covalent radii.", check=positive),
    }

    def _pair_min(self, numbers: np.ndarray) -> np.ndarray:
        from ase.data import covalent_radii

        if self.params["d_min"] is not None:
            return np.full((len(numbers), len(numbers)), float(self.params["d_min"]))
        radii = covalent_radii[numbers]
        return self.params["fraction"] * (radii[:, None] + radii[None, :])

    def validate(self, structures: Sequence[ase.Atoms], context: ValidationContext) -> list[Verdict]:
        """``value`` is the shortest interatomic distance (Å, periodic images included)."""
        from ase.neighborlist import neighbor_list

        verdicts = []
        for atoms in structures:
            numbers = atoms.numbers
            if len(atoms) < 2 and not atoms.pbc.any():
                verdicts.append(Verdict(True, None, "a single atom"))
                continue
            limits = self._pair_min(numbers)
            # A cutoff beyond every limit finds every offending pair; the value is exact
            # whenever a pair lies within it (otherwise it is reported as the cutoff).
            cutoff = 2.0 * float(limits.max())
            i, j, d = neighbor_list("ijd", atoms, cutoff)
            if len(d):
                k = int(np.argmin(d))
                dmin = float(d[k])
                ok = bool(np.all(d >= limits[i, j]))
                detail = f"shortest {dmin:.3f} Å ({atoms[int(i[k])].symbol}-{atoms[int(j[k])].symbol})"
            else:
                dmin, ok, detail = cutoff, True, f"no pair within {cutoff:.2f} Å"
            if ok and self.params["connectivity"]:
                fragments = _fragments(atoms, self.params["bond_factor"])
                if fragments > 1:
                    ok, detail = False, f"{fragments} fragments; {detail}"
            verdicts.append(Verdict(ok, dmin, detail))
        return verdicts


def _fragments(atoms: ase.Atoms, bond_factor: float) -> int:
    from ase.neighborlist import NeighborList, natural_cutoffs
    from scipy.sparse.csgraph import connected_components

    nl = NeighborList(natural_cutoffs(atoms, mult=bond_factor), self_interaction=False, bothways=True)
    nl.update(atoms)
    count, _ = connected_components(nl.get_connectivity_matrix(sparse=True), directed=False)
    return int(count)


class SurrogateValidator(Validator):
    """Featurize each structure, predict its property with the surrogate, compare with the target.

    Needs ``context.extras["surrogate"]`` (an object with ``predict(R) -> [B]``) and
    ``context.extras["representation"]``; the pipeline provides both.
    """

    name = "surrogate"
    description = "Predict the property of the reconstructed structure with the surrogate; compare with the target."
    parameters = {
        "tolerance": Param(0.1, "Accept |prediction − target| ≤ tolerance (property units).", check=positive),
    }

    def validate(self, structures: Sequence[ase.Atoms], context: ValidationContext) -> list[Verdict]:
        """``value`` is the surrogate's prediction."""
        surrogate = context.extras.get("surrogate")
        rep = context.extras.get("representation")
        if surrogate is None or rep is None:
            raise ConfigError(
                "the surrogate validator needs a trained surrogate and the representation "
                "(context.extras['surrogate'], ['representation']); train one or drop 'surrogate'"
            )
        if not structures:
            return []
        _check_targets(self.name, structures, context)
        predictions = np.asarray(surrogate.predict(rep.featurize(list(structures))), dtype=float).reshape(-1)
        tol = self.params["tolerance"]
        return [
            Verdict(bool(abs(p - t) <= tol), float(p), f"predicted {p:.3f} vs target {t:.3f}")
            for p, t in zip(predictions, context.targets, strict=True)
        ]


class EnergyValidator(Validator):
    """The oracle: the true property of each structure from an ASE calculator (EMT by default).

    Supported properties: ``formation_energy`` ((E − N·E_bulk)/N per atom, with the same
    definition and bulk references as :mod:`invfp.data`), ``energy`` (total, eV) and
    ``energy_per_atom`` (eV/atom). ``value`` is the true property; a structure is
    accepted when it lies within ``tolerance`` of its target.
    """

    name = "energy"
    description = "Compute the true property with an ASE calculator (EMT by default); compare with the target."
    parameters = {
        "calculator": Param("emt", "An ASE calculator by name (ase.calculators.calculator.names)."),
        "tolerance": Param(0.1, "Accept |true − target| ≤ tolerance (property units).", check=positive),
    }
    properties: ClassVar[tuple[str, ...]] = ("formation_energy", "energy", "energy_per_atom")

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._calculator: Any = None
        self._references: dict[int, float] = {}

    def __getstate__(self) -> dict[str, Any]:
        # A used ASE calculator may hold lambdas and neighbour lists: send the validator
        # to worker processes without it (each makes its own on first use).
        return {**self.__dict__, "_calculator": None}

    def _calc(self) -> Any:
        if self._calculator is None:
            from invfp.data.make import get_calculator

            self._calculator = get_calculator(self.params["calculator"])
        return self._calculator

    def bulk_reference(self, numbers: Sequence[int]) -> float:
        """Sum of the elements' bulk energies per atom over ``numbers`` (N·E_bulk for one element)."""
        from invfp.data.make import bulk_reference_energies

        missing = sorted({int(z) for z in numbers} - set(self._references))
        if missing:
            self._references.update(bulk_reference_energies(missing, self.params["calculator"]))
        return float(sum(self._references[int(z)] for z in numbers))

    def true_property(self, atoms: ase.Atoms, property_name: str) -> float:
        """The property of one structure computed with the calculator."""
        if property_name not in self.properties:
            raise ConfigError(
                f"the energy validator cannot compute {property_name!r}; it knows "
                f"{', '.join(self.properties)} (drop 'energy' from the validators for other properties)"
            )
        atoms = atoms.copy()
        atoms.calc = self._calc()
        energy = float(atoms.get_potential_energy())
        if property_name == "formation_energy":
            # The data module's definition: (E − Σ_i E_bulk(Z_i)) / N.
            return (energy - self.bulk_reference(atoms.numbers)) / len(atoms)
        return energy if property_name == "energy" else energy / len(atoms)

    def validate(self, structures: Sequence[ase.Atoms], context: ValidationContext) -> list[Verdict]:
        """``value`` is the true property computed by the calculator."""
        if not structures:
            return []
        _check_targets(self.name, structures, context)
        tol = self.params["tolerance"]
        verdicts = []
        for atoms, target in zip(structures, context.targets, strict=True):
            value = self.true_property(atoms, context.property_name)
            ok = bool(np.isfinite(value) and abs(value - target) <= tol)
            verdicts.append(Verdict(ok, value, f"{self.params['calculator']} {value:.3f} vs target {target:.3f}"))
        return verdicts


def _check_targets(name: str, structures: Sequence[ase.Atoms], context: ValidationContext) -> None:
    if len(context.targets) != len(structures):
        raise ConfigError(
            f"the {name} validator needs one target per structure: got {len(context.targets)} "
            f"targets for {len(structures)} structures"
        )
