"""invfp-example: registers the ``sorted-distances`` representation."""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl

__version__ = "0.1.0"


def sorted_distances(**params: Any) -> Any:
    """All interatomic distances, sorted (example plugin)."""
    from invfp_example.representation import SortedDistances

    return SortedDistances(**params)


@hookimpl
def register_representations(register):  # type: ignore[no-untyped-def]
    register("sorted-distances", sorted_distances)
