"""``invfp featurize``: fingerprints of every frame of ASE-readable files, saved as .npy or .csv."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def featurize(
    files: Annotated[list[Path], typer.Argument(help="Structure files ASE can read (every frame is used).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Output .npy or comma-separated .csv (pooled only), written atomically.")],
    representation: Annotated[
        str, typer.Option("--repr", help="Representation name (see `invfp plugins`).")
    ] = "acsf",
    preset: Annotated[
        Optional[str], typer.Option(help="A preset of the representation, e.g. fung2022.")
    ] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option(
            "--param",
            help="A parameter as key=value, value in JSON; repeat it: --param r_cut=6.0 --param 'g2_params=[[1,0]]'.",
        ),
    ] = None,
    per_atom: Annotated[
        bool, typer.Option("--per-atom", help="Per-atom features [B, N, F] instead of pooled [B, D].")
    ] = False,
    dtype: Annotated[str, typer.Option(help="Computation precision: float64 or float32.")] = "float64",
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto (CUDA when available).")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Structures per batch.")] = 256,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Compute the fingerprint of every frame of FILES and save them as one array (.npy or .csv)."""
    from invfp.cli.app import error, key_values

    if dtype not in ("float64", "float32"):
        error(f"--dtype {dtype!r} is not allowed; use float64 or float32")
    if batch_size < 1:
        error("--batch-size must be >= 1")
    params = key_values(param, "--param", "r_cut=6.0")
    if preset is not None:
        params["preset"] = preset
    if per_atom:
        params["pooling"] = None

    import torch

    import invfp
    from invfp.utils import (
        check_array_output,
        read_structures,
        require_file,
        resolve_device,
        write_array,
    )

    for path in files:
        require_file(path)
    check_array_output(output, ndim=3 if per_atom else 2)
    rep = invfp.get_representation(representation, **params)
    frames = [atoms for path in files for atoms in read_structures(path)]
    values = rep.featurize(
        frames,
        batch_size=batch_size,
        progress=progress,
        dtype=getattr(torch, dtype),
        device=resolve_device(device),
    )
    write_array(output, values)
    typer.echo(f"wrote {output}: {len(frames)} structures, array {list(values.shape)} ({rep.name})")
