"""Write a plugin: a new validator, registered at run time and used by name.

A plugin is a module or object with hook implementations; in a package it is declared as
an entry point (``[project.entry-points.invfp]``) and found automatically. Here it is
registered in-process with :func:`invfp.plugins.register_plugin`, which goes through the
same plugin manager and hooks. ``invfp.testing.check_validator`` is the conformance check.

    python examples/custom_plugin.py
"""

from __future__ import annotations

import numpy as np
from ase.build import molecule

import invfp
from invfp.components import Param, positive
from invfp.hookspecs import hookimpl
from invfp.plugins import register_plugin
from invfp.validators.base import ValidationContext, Validator, Verdict


class Compactness(Validator):
    """Accept structures whose radius of gyration is at most ``max_radius`` Å."""

    name = "compactness"
    description = "Radius of gyration at most max_radius (rejects dissociated structures)."
    parameters = {"max_radius": Param(3.0, "Largest accepted radius of gyration (Å).", check=positive)}

    def validate(self, structures, context):  # type: ignore[no-untyped-def]
        verdicts = []
        for atoms in structures:
            pos = atoms.positions - atoms.positions.mean(axis=0)
            radius = float(np.sqrt((pos**2).sum(axis=1).mean()))
            verdicts.append(Verdict(radius <= self.params["max_radius"], radius, f"Rg = {radius:.2f} Å"))
        return verdicts


class CompactnessPlugin:
    """The plugin: one hook implementation registering one validator."""

    @staticmethod
    @hookimpl
    def register_validators(register):  # type: ignore[no-untyped-def]
        register("compactness", Compactness, aliases=("rg",))


def main() -> None:
    register_plugin(CompactnessPlugin, name="compactness-plugin")
    entry = next(c for c in invfp.list_components("validator") if c["name"] == "compactness")
    print(f"registered {entry['name']!r} from plugin {entry['plugin']!r}: {entry['description']}")

    validator = invfp.get_validator("compactness", max_radius=1.5)
    small, large = molecule("H2O"), molecule("C6H6")
    for atoms, verdict in zip((small, large), validator.validate([small, large], ValidationContext()), strict=True):
        print(f"{atoms.get_chemical_formula():>5}: accepted={verdict.accepted}  {verdict.detail}")

    from invfp import testing

    testing.check_validator(validator, [small, large])
    print("conformance check passed")


if __name__ == "__main__":
    main()
