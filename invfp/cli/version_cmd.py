"""``invfp version``."""

from __future__ import annotations

import typer


def version(
    full: bool = typer.Option(False, "--full", help="Also print the versions of key dependencies."),
) -> None:
    """Print the invfp version (and, with --full, its key dependencies)."""
    from invfp import __version__

    typer.echo(f"invfp {__version__}")
    if full:
        from importlib import metadata

        for dist in ("torch", "ase", "numpy", "numba", "pluggy", "typer", "dscribe", "distributed"):
            try:
                typer.echo(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                typer.echo(f"{dist} (not installed)")
