"""``invfp train``: featurize a data set, train a generator and a surrogate, save a bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer


def train(
    output: Annotated[Path, typer.Option("--output", "-o", help="Bundle directory to write (replaced atomically).")],
    data: Annotated[
        str, typer.Option("--data", help="Built-in data set name (pt10-emt) or an ase.db / extxyz file.")
    ] = "pt10-emt",
    model: Annotated[str, typer.Option("--model", help="Generative model kind (see `invfp plugins`).")] = "cvae",
    representation: Annotated[str, typer.Option("--repr", help="Representation name.")] = "acsf",
    preset: Annotated[Optional[str], typer.Option(help="A preset of the representation, e.g. fung2022.")] = None,
    param: Annotated[
        Optional[list[str]],
        typer.Option("--param", help="A model parameter as key=value (JSON value); repeat it: --param latent=16."),
    ] = None,
    repr_param: Annotated[
        Optional[list[str]], typer.Option("--repr-param", help="A representation parameter as key=value.")
    ] = None,
    property: Annotated[str, typer.Option("--property", help="The per-frame property to condition on.")] = (
        "formation_energy"
    ),
    formula: Annotated[Optional[str], typer.Option(help="Keep only frames of this composition.")] = None,
    size: Annotated[str, typer.Option(help="Size of a built-in data set: full or small.")] = "full",
    epochs: Annotated[Optional[int], typer.Option(help="Generator epochs (default: the model's).")] = None,
    surrogate_epochs: Annotated[Optional[int], typer.Option(help="Surrogate epochs (default 2000).")] = None,
    train_size: Annotated[
        Optional[int],
        typer.Option(help="Train the generator on this many frames chosen by furthest-point sampling."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the split, the weights and the noise.", min=0)] = 0,
    device: Annotated[str, typer.Option(help="cpu, cuda, cuda:N or auto.")] = "auto",
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the training reports as JSON.")] = False,
) -> None:
    """Train a generative model and a property surrogate on a data set's fingerprints.

    The generator learns p(R | property) on --train-size frames picked by furthest-point
    sampling (all frames by default); the surrogate learns property = f(R) on every frame,
    holding out 10 % to report its error. Both are saved with the representation's
    configuration as one bundle for `invfp generate` and `invfp score`.
    """
    from invfp.cli.app import error, key_values

    for name, value in (("--epochs", epochs), ("--surrogate-epochs", surrogate_epochs), ("--train-size", train_size)):
        if value is not None and value < 1:
            error(f"{name} must be >= 1, got {value}")
    model_params = key_values(param, "--param", "latent=16")
    if epochs is not None:
        model_params["epochs"] = epochs
    rep_params = key_values(repr_param, "--repr-param", "r_cut=6.0")
    if preset is not None:
        rep_params["preset"] = preset

    import invfp
    from invfp.data import featurize, furthest_point_sampling, load
    from invfp.models.io import save_bundle
    from invfp.models.surrogate import Surrogate
    from invfp.utils import check_output_path

    check_output_path(output)  # before training, not after

    # build (and so validate) every component before the expensive steps
    generator = invfp.get_model(model, **model_params)
    surrogate = Surrogate(**({"epochs": surrogate_epochs} if surrogate_epochs else {}))
    rep = invfp.get_representation(representation, **rep_params)
    ds = load(data, property=property, formula=formula, size=size, progress=progress)
    R = featurize(ds, rep, progress=progress, device=device)
    idx = None
    if train_size is not None and train_size < len(ds):
        idx = furthest_point_sampling(R, train_size, seed=seed)
    R_gen, y_gen = (R, ds.y) if idx is None else (R[idx], ds.y[idx])
    gen_report = generator.fit(R_gen, y_gen, seed=seed, progress=progress, device=device)
    sur_report = surrogate.fit(R, ds.y, seed=seed, progress=progress, device=device)
    summary = {
        **ds.info(),
        "train_size": int(len(y_gen)),
        "selection": "all" if idx is None else "furthest-point",
        "seed": seed,
    }
    save_bundle(
        output, generator=generator, surrogate=surrogate, representation_config=rep.get_config(),
        property=ds.property, units=ds.units, data_summary=summary,
    )
    strip = ("history",)
    if as_json:
        typer.echo(json.dumps({
            "bundle": str(output),
            "data": summary,
            "generator": {k: v for k, v in gen_report.items() if k not in strip},
            "surrogate": {k: v for k, v in sur_report.items() if k not in strip},
        }, indent=2))
        return
    units = f" {ds.units}" if ds.units else ""
    typer.echo(f"data: {len(ds)} frames of {ds.formula} from {ds.source}; {ds.property} "
               f"{ds.y.min():.4g} to {ds.y.max():.4g}{units}; D = {R.shape[1]}")
    best = {k[len("best_val_"):]: v for k, v in gen_report.items() if k.startswith("best_val_")}
    losses = ", ".join(f"{k} {v:.4g}" for k, v in best.items())
    typer.echo(f"generator ({model}): {gen_report.get('n_train')} training / {gen_report.get('n_val')} validation "
               f"frames; best validation {losses} at epoch {gen_report.get('best_epoch')} "
               f"of {gen_report.get('epochs_run')}")
    typer.echo(f"surrogate: held-out MAE {sur_report['test_mae']:.4g}{units} on {sur_report['n_test']} frames "
               f"(predicting the mean: {sur_report['test_mae_of_mean']:.4g}{units}); "
               f"validation MAE {sur_report['val_mae']:.4g}{units}")
    typer.echo(f"saved bundle to {output}")
