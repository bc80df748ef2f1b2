"""Built-in optimizers, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl


def adam_hopping(**params: Any) -> Any:
    """Batched Adam with basin hopping (Metropolis), restarts and a final refinement."""
    from invfp.optimizers.adam_hopping import AdamHopping

    return AdamHopping(**params)


def lbfgs(**params: Any) -> Any:
    """Batched L-BFGS on the fingerprint loss, with random restarts."""
    from invfp.optimizers.lbfgs import LBFGS

    return LBFGS(**params)


@hookimpl
def register_optimizers(register):  # type: ignore[no-untyped-def]
    register("adam-hopping", adam_hopping, aliases=("adam",))
    register("lbfgs", lbfgs)
