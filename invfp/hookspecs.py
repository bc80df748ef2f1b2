"""Hook specifications: how plugins add components to invfp.

Each hook receives a ``register`` callback::

    register(name, factory, *, aliases=(), description="")

``factory(**params)`` returns the component; keep heavy imports (torch) inside it so
that listing plugins stays fast. The host records which plugin supplied each name.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("invfp")
hookimpl = pluggy.HookimplMarker("invfp")


@hookspec
def register_representations(register):  # type: ignore[no-untyped-def]
    """Register representations: positions -> fingerprint (torch, differentiable)."""


@hookspec
def register_optimizers(register):  # type: ignore[no-untyped-def]
    """Register optimizers: target fingerprints -> positions."""


@hookspec
def register_models(register):  # type: ignore[no-untyped-def]
    """Register generative models: fit(R, y), sample(y, n) -> R."""


@hookspec
def register_validators(register):  # type: ignore[no-untyped-def]
    """Register validators: accept or reject reconstructed structures."""
