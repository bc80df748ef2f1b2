"""``invfp data make`` and ``invfp data info``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

data = typer.Typer(
    name="data",
    help="Make the built-in Pt10-EMT data set (or any composition), inspect data files.",
    no_args_is_help=True,
)

RECIPES = ("pt10-emt",)


@data.command("make")
def make(
    recipe: Annotated[
        str, typer.Argument(help="The recipe: 'pt10-emt' (random clusters relaxed with FIRE).")
    ],
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Output ase.db file (*.db); resumed if it exists.")
    ],
    relaxations: Annotated[
        int, typer.Option(help="Number of relaxations (about 210 frames each for Pt10).")
    ] = 160,
    seed: Annotated[int, typer.Option(help="Base seed; relaxation r uses (seed, r).", min=0)] = 0,
    formula: Annotated[str, typer.Option(help="Composition, e.g. Pt10 or Pt8Au2.")] = "Pt10",
    calculator: Annotated[
        str, typer.Option(help="ASE calculator by name (no external program): emt, lj, ...")
    ] = "emt",
    box: Annotated[float, typer.Option(help="Random starts are uniform in a ±BOX Å cube.")] = 3.5,
    min_distance: Annotated[float, typer.Option(help="Minimum interatomic distance of a start, Å.")] = 2.2,
    cell: Annotated[float, typer.Option(help="Edge of the cubic cell, Å (no periodic boundaries).")] = 20.0,
    fmax: Annotated[float, typer.Option(help="FIRE convergence: largest force, eV/Å.")] = 0.05,
    max_steps: Annotated[int, typer.Option(help="Most FIRE steps per relaxation.")] = 300,
    workers: Annotated[
        Optional[int], typer.Option(help="Worker processes (default: every available core).")
    ] = None,
) -> None:
    """Relax random starts with FIRE and keep every frame (resumable: rerun the same command)."""
    from invfp.cli.app import error

    if recipe not in RECIPES:
        error(
            f"unknown recipe {recipe!r}; recipes: {', '.join(RECIPES)} (use --formula for other compositions)"
        )
    from invfp.data import make_dataset
    from invfp.data.make import row_keys
    from invfp.utils import check_output_path

    check_output_path(output)

    path = make_dataset(
        output,
        formula=formula,
        relaxations=relaxations,
        seed=seed,
        calculator=calculator,
        box=box,
        min_distance=min_distance,
        cell=cell,
        fmax=fmax,
        max_steps=max_steps,
        workers=workers,
        progress=True,
    )
    keys = [kv for _, kv in row_keys(path)]
    y = [kv["formation_energy"] for kv in keys]
    typer.echo(
        f"{path}: {len(keys)} frames ({sum(bool(kv.get('is_minimum')) for kv in keys)} minima) from "
        f"{len({kv['relaxation'] for kv in keys})} relaxations; formation energy {min(y):.3f} to "
        f"{max(y):.3f} eV/atom"
    )


@data.command("info")
def info(
    source: Annotated[
        str, typer.Argument(help="An ase.db / extxyz / any ase.io file, or a built-in name (pt10-emt).")
    ],
    property: Annotated[
        str, typer.Option("--property", "-p", help="The per-frame property key.")
    ] = "formation_energy",
    formula: Annotated[
        Optional[str], typer.Option(help="Only frames of this composition (for the property summary).")
    ] = None,
    bins: Annotated[int, typer.Option(min=1, max=200, help="Histogram bins.")] = 12,
) -> None:
    """Frame count, compositions, property range and a text histogram."""
    from collections import Counter

    from invfp.data import BUILTIN, load, read_frames, text_histogram
    from invfp.data.datasets import UNITS, check_finite_property, property_values, select_formula

    if source in BUILTIN and not Path(source).exists():
        frames = load(source, property=property, progress=True).atoms
    else:
        frames = read_frames(source)
    counts = Counter(frame.get_chemical_formula(mode="hill") for frame in frames)
    if formula is not None:
        frames = select_formula(frames, formula, source)
    y = property_values(frames, property, source)
    check_finite_property(y, property, source)
    units = UNITS.get(property, "")
    typer.echo(f"{source}: {sum(counts.values())} frames")
    typer.echo("compositions: " + ", ".join(f"{f} ({n})" for f, n in counts.most_common()))
    minima = sum(bool(frame.info.get("is_minimum")) for frame in frames)
    if minima:
        typer.echo(f"minima: {minima}")
    typer.echo(
        f"{property}{f' [{units}]' if units else ''} over {len(y)} frames: min {y.min():.4f}, "
        f"max {y.max():.4f}, mean {y.mean():.4f}, std {y.std():.4f}"
    )
    typer.echo(text_histogram(y, bins=bins))
