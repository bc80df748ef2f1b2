"""Built-in generative models, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl


def cvae(**params: Any) -> Any:
    """Conditional VAE of fingerprints given a property (the paper's settings)."""
    from invfp.models.cvae import CVAE

    return CVAE(**params)


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    register("cvae", cvae)
