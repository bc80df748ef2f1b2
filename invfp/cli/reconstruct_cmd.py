"""``invfp reconstruct``: fingerprints (.npy or .csv) back to atoms (.extxyz)."""

from __future__ import annotations

from pathlib import Path

import typer

FAR_LOSS = 0.05
"""A median fingerprint MAE above which ``invfp reconstruct`` warns. The default search leaves
real Pt10 fingerprints below 1.3e-2 (the released DFT set's worst); Pt9, Pt11 and Pt13
fingerprints reconstructed as Pt10 (whose pooled fung2022 ACSF has the same length) end at
0.09-0.7, one search each."""


def _cell(text: str | None) -> object:
    from invfp.errors import ConfigError

    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError as exc:
        raise ConfigError(f"--cell {text!r}: give one length, three lengths or nine numbers") from exc
    if len(values) == 1:
        return values[0]
    if len(values) == 3:
        return values
    if len(values) == 9:
        return [values[0:3], values[3:6], values[6:9]]
    raise ConfigError(f"--cell {text!r}: give one length, three lengths or nine numbers")


def reconstruct(
    fingerprints: Path = typer.Argument(..., help="Target fingerprints [B, D] or [D]: .npy or comma-separated .csv."),
    formula: str = typer.Option(..., "--formula", "-f", help="Composition of every target, e.g. Pt10 or NaCl4."),
    output: Path = typer.Option(..., "--output", "-o", help="Where to write the structures: .extxyz, .xyz (extended XYZ) or .traj (ASE trajectory)."),
    cell: str = typer.Option(None, "--cell", help="Cell in Å: one length (cubic), 'a,b,c' or nine numbers."),
    pbc: bool = typer.Option(False, "--pbc", help="Periodic in all three directions (needs --cell)."),
    repr_name: str = typer.Option("acsf", "--repr", help="Representation that made the fingerprints."),
    preset: str = typer.Option(None, "--preset", help="Representation preset, e.g. fung2022."),
    param: list[str] = typer.Option(None, "--param", help="Representation parameter KEY=VALUE (JSON values)."),
    optimizer: str = typer.Option("adam-hopping", "--optimizer", help="Optimizer: adam-hopping or lbfgs."),
    option: list[str] = typer.Option(None, "--option", help="Optimizer parameter KEY=VALUE, e.g. steps=500."),
    restarts: int = typer.Option(None, "--restarts", help="Random starts per target."),
    hops: int = typer.Option(None, "--hops", help="Basin hops per start (adam-hopping)."),
    seed: int = typer.Option(None, "--seed", help="Seed: the same seed gives the same structures.", min=0),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:0 (default: CUDA if available)."),
    dtype: str = typer.Option("float32", "--dtype", help="float32 or float64."),
    feature_scale: str = typer.Option("none", "--feature-scale", help="Per-feature loss scaling: none or auto."),
    workers: int = typer.Option(
        None, "--workers", help="Single-threaded worker processes, each on a shard of the targets (default: one "
        "per CPU core, 1 on a GPU). The same seed and --workers give the same structures.", min=1,
    ),
    start: Path = typer.Option(
        None, "--start", help="Start from these structures (any file ASE reads: one frame for every target, or one "
        "per target) instead of random ones.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Reconstruct atoms from fingerprints; each frame's info carries its loss (MAE)."""
    import numpy as np

    import invfp
    from invfp.cli.app import key_values
    from invfp.plugins import create
    from invfp.utils import atomic_write, check_output_path, read_array, read_structures

    # formats that keep each frame's info (its loss); ase.db and CIF would drop it
    formats = {".extxyz": "extxyz", ".xyz": "extxyz", ".traj": "traj"}
    if output.suffix not in formats:
        from invfp.cli.app import error

        error(f"--output {str(output)!r}: write .extxyz, .xyz or .traj (formats that keep each frame's loss)")
    check_output_path(output)
    targets = read_array(fingerprints, "fingerprints")
    start_frames = None if start is None else read_structures(start)
    rep_params = key_values(param, "--param", "r_cut=6.0")
    if preset is not None:
        rep_params["preset"] = preset
    options = key_values(option, "--option", "steps=500")
    if restarts is not None:
        options["restarts"] = restarts
    if hops is not None:
        options["hops"] = hops
    rep = create("representation", repr_name, **rep_params)
    if workers is None:
        from invfp.executors import local_workers
        from invfp.utils import resolve_device

        workers = local_workers(resolve_device(device))
    results = invfp.reconstruct(
        targets,
        numbers=formula,
        cell=_cell(cell),
        pbc=pbc,
        representation=rep,
        optimizer=optimizer,
        seed=seed,
        device=device,
        dtype=dtype,
        progress=not quiet,
        feature_scale=feature_scale,
        workers=workers,
        start=start_frames,
        **options,
    )

    def write(tmp: Path) -> None:
        from ase.io import write as ase_write

        ase_write(tmp, [r.atoms for r in results], format=formats[output.suffix])

    atomic_write(output, write)
    losses = np.array([r.loss for r in results])
    median = float(np.median(losses))
    if not quiet:
        typer.echo(
            f"{len(results)} structures -> {output}; loss (MAE) median {median:.3g}, "
            f"max {losses.max():.3g}; {sum(r.time for r in results):.1f} s"
        )
    if median > FAR_LOSS:
        typer.secho(
            f"warning: the median loss {median:.3g} is far above what fingerprints of real structures "
            f"reach (below ~0.01); check that --formula ({formula}) has the atoms the fingerprints were made "
            "from and that the representation settings are those that made them",
            err=True, fg="yellow",
        )
