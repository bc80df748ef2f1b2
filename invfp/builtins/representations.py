"""Built-in representations, registered through the same hook as third-party plugins."""

from __future__ import annotations

from typing import Any

from invfp.hookspecs import hookimpl


def acsf(**params: Any) -> Any:
    """Behler atom-centred symmetry functions in torch (dscribe-compatible, batched, periodic)."""
    from invfp.representations.acsf import ACSF

    return ACSF(**params)


def soap(**params: Any) -> Any:
    """dscribe's SOAP wrapped for torch autograd (needs `pip install 'invfp[soap]'`)."""
    from invfp.representations.soap import SOAP

    return SOAP(**params)


@hookimpl
def register_representations(register):  # type: ignore[no-untyped-def]
    register("acsf", acsf)
    register("soap", soap)
