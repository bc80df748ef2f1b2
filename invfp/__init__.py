"""invfp: turn structural fingerprints back into atoms, and generate new structures.

Public API (heavy modules such as torch are imported only when first used)::

    import invfp
    rep = invfp.get_representation("acsf", preset="fung2022")
    R = rep.featurize(atoms_list)                      # [B, D] NumPy
    results = invfp.reconstruct(R, numbers=[78] * 10, cell=20.0, representation=rep)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from invfp.errors import (
    ConfigError,
    DataError,
    DuplicateComponentError,
    InputError,
    InvfpError,
    ModelLoadError,
    OptionalDependencyError,
    PluginError,
    UnknownComponentError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "DuplicateComponentError",
    "InputError",
    "InvfpError",
    "ModelLoadError",
    "OptionalDependencyError",
    "PluginError",
    "UnknownComponentError",
    "__version__",
    "get_model",
    "get_optimizer",
    "get_representation",
    "get_validator",
    "list_components",
    "reconstruct",
]

if TYPE_CHECKING:
    from invfp.reconstruction import reconstruct


def get_representation(name: str = "acsf", **params: Any) -> Any:
    """Build a representation plugin by name, e.g. ``get_representation("acsf", preset="fung2022")``."""
    from invfp.plugins import create

    return create("representation", name, **params)


def get_optimizer(name: str = "adam-hopping", **params: Any) -> Any:
    """Build an optimizer plugin by name."""
    from invfp.plugins import create

    return create("optimizer", name, **params)


def get_model(name: str = "cvae", **params: Any) -> Any:
    """Build a (not yet fitted) generative model plugin by name."""
    from invfp.plugins import create

    return create("model", name, **params)


def get_validator(name: str, **params: Any) -> Any:
    """Build a validator plugin by name."""
    from invfp.plugins import create

    return create("validator", name, **params)


def list_components(kind: str | None = None) -> list[dict[str, Any]]:
    """Every registered component (of one kind or all), with the plugin that provides it."""
    from invfp.plugins import get_registry

    return [entry.as_dict() for entry in get_registry().entries(kind)]


def __getattr__(name: str) -> Any:
    if name == "reconstruct":
        from invfp.reconstruction import reconstruct

        return reconstruct
    raise AttributeError(f"module 'invfp' has no attribute {name!r}")
