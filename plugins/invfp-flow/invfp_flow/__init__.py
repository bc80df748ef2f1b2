"""invfp-flow: registers the ``flow`` generative model (a conditional RealNVP).

Found by invfp only through the entry point ``[project.entry-points.invfp] flow =
"invfp_flow"``; torch is imported only when the model is built.
"""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl

__version__ = "0.1.0"


def flow(**params: Any) -> Any:
    """Conditional normalizing flow (RealNVP affine couplings) of fingerprints given a property."""
    from invfp_flow.model import ConditionalFlow

    return ConditionalFlow(**params)


@hookimpl
def register_models(register):  # type: ignore[no-untyped-def]
    register("flow", flow)
