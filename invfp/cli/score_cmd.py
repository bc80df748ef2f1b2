"""``invfp score``: the surrogate's property predictions for fingerprints in a .npy or .csv file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def score(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by `invfp train`.")],
    fingerprints: Annotated[Path, typer.Argument(help="Fingerprints [n, D] (raw scale): .npy or comma-separated .csv.")],
    target: Annotated[Optional[float], typer.Option("--target", "-t", help="Compare with this target.")] = None,
    delta: Annotated[float, typer.Option(help="Half-width of the on-target window.")] = 0.1,
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Also save the predictions [n]: .npy or .csv.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for machines.")] = False,
) -> None:
    """Predict the property of each fingerprint with the bundle's surrogate; with --target, score them."""
    from invfp.cli.app import error

    if delta <= 0:
        error(f"--delta must be > 0, got {delta}")
    if target is not None and not abs(target) < float("inf"):
        error(f"--target must be a finite number, got {target}")

    import numpy as np

    from invfp.errors import InputError
    from invfp.models.io import load_bundle
    from invfp.utils import check_array_output, read_array, write_array

    if output is not None:
        check_array_output(output)
    R = read_array(fingerprints, "fingerprints")
    b = load_bundle(bundle)
    if R.ndim == 1:
        R = R[None]
    if R.ndim != 2 or R.shape[0] == 0:  # read_array has already refused anything but real numbers
        raise InputError(f"{fingerprints} holds an array of shape {R.shape}; expected [n, D] numbers")
    pred = b.surrogate.predict(R)
    if output is not None:
        write_array(output, pred)
    result: dict[str, object] = {
        "n": int(pred.size), "property": b.property, "units": b.units,
        "mean": float(pred.mean()), "std": float(pred.std()), "min": float(pred.min()), "max": float(pred.max()),
    }
    if target is not None:
        err = np.abs(pred - target)
        result.update(target=target, delta=delta, mae=float(err.mean()), within_delta=float((err <= delta).mean()))
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    units = f" {b.units}" if b.units else ""
    typer.echo(f"{pred.size} fingerprints: predicted {b.property} mean {result['mean']:.4g}{units} "
               f"(std {result['std']:.4g}, min {result['min']:.4g}, max {result['max']:.4g})")
    if target is not None:
        typer.echo(f"target {target:g}{units}: MAE {result['mae']:.4g}{units}, "
                   f"{100 * result['within_delta']:.1f} % within ±{delta:g}{units}")
