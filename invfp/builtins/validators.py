"""Built-in validators, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl


def loss_threshold(**params: Any) -> Any:
    """Accept structures whose reconstruction loss is below a threshold (the paper's filter)."""
    from invfp.validators.builtin import LossThreshold

    return LossThreshold(**params)


def geometry(**params: Any) -> Any:
    """Minimum interatomic distance and, optionally, connectivity (no isolated fragments)."""
    from invfp.validators.builtin import Geometry

    return Geometry(**params)


def surrogate(**params: Any) -> Any:
    """Predict the property of the reconstructed structure with the surrogate; compare with the target."""
    from invfp.validators.builtin import SurrogateValidator

    return SurrogateValidator(**params)


def energy(**params: Any) -> Any:
    """Compute the true property with an ASE calculator (EMT by default); compare with the target."""
    from invfp.validators.builtin import EnergyValidator

    return EnergyValidator(**params)


@hookimpl
def register_validators(register):  # type: ignore[no-untyped-def]
    register("loss-threshold", loss_threshold)
    register("geometry", geometry)
    register("surrogate", surrogate)
    register("energy", energy)
