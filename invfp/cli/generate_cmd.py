"""``invfp generate``: sample fingerprints for a target property from a trained bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def generate(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `invfp train`.")],
    target: Annotated[float, typer.Option("--target", "-t", help="Target property value.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output [n, D]: .npy or comma-separated .csv (written atomically).")],
    n: Annotated[int, typer.Option("--n", "-n", help="Number of fingerprints to sample.")] = 1000,
    seed: Annotated[Optional[int], typer.Option(help="Seed (the same seed gives the same samples).", min=0)] = None,
    delta: Annotated[float, typer.Option(help="Half-width of the on-target window in the summary.")] = 0.1,
    temperature: Annotated[
        Optional[float],
        typer.Option(help="Sampling temperature of models that have one (cvae: scales the latent noise; "
                     "below 1: closer to the target, less diverse). Default: the model's."),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON.")] = False,
) -> None:
    """Sample N raw-scale fingerprints for TARGET and save them; print the surrogate's view of them."""
    from invfp.cli.app import error

    if n < 1:
        error(f"--n must be >= 1, got {n}")
    if delta <= 0:
        error(f"--delta must be > 0, got {delta}")
    if temperature is not None and not (0 < temperature < float("inf")):
        error(f"--temperature must be a finite number > 0, got {temperature}")

    import warnings

    import numpy as np

    from invfp.models.base import TargetOutOfRangeWarning
    from invfp.models.io import load_bundle
    from invfp.utils import check_array_output, write_array

    check_array_output(output)
    b = load_bundle(bundle)
    if hasattr(b.generator, "to"):  # plugin models need not support devices
        b.generator.to(device)
    extra = {}
    if temperature is not None:
        import inspect

        if "temperature" not in inspect.signature(b.generator.sample).parameters:
            error(f"--temperature: the {getattr(b.generator, 'name', 'bundle')!r} model has no sampling temperature; "
                  "leave the option out")
        extra["temperature"] = temperature
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TargetOutOfRangeWarning)
        R = b.generator.sample(target, n, seed=seed, **extra)
    for w in caught:
        if issubclass(w.category, TargetOutOfRangeWarning):
            typer.secho(f"warning: {w.message}", err=True, fg="yellow")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    write_array(output, R)
    pred = b.surrogate.predict(R)
    err = np.abs(pred - target)
    summary = {
        "output": str(output), "n": int(R.shape[0]), "dimension": int(R.shape[1]), "target": target,
        "property": b.property, "units": b.units, "y_range": list(b.y_range),
        "surrogate_mae": float(err.mean()), "within_delta": float((err <= delta).mean()), "delta": delta,
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    units = f" {b.units}" if b.units else ""
    typer.echo(f"wrote {R.shape[0]} fingerprints (D = {R.shape[1]}) for {b.property} = {target:g}{units} to {output}")
    typer.echo(f"surrogate: MAE {summary['surrogate_mae']:.4g}{units}, "
               f"{100 * summary['within_delta']:.1f} % within ±{delta:g}{units}")
