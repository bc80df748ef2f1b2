"""``invfp run``: the whole pipeline in one command (data → models → generate → reconstruct → filter)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer

# Settings that --quick changes (small data, few epochs, few samples: about a minute).
FULL = {
    "size": "full",
    "train_size": 3000,
    "epochs": None,
    "n": 100,
    "calibrate": 12,
    "optimizer_options": {"restarts": 8, "hops": 2, "steps": 200, "refine_steps": 200},
}
QUICK = {
    "size": "small",
    "train_size": 300,
    "epochs": 150,
    "n": 8,
    "calibrate": 4,
    "optimizer_options": {"restarts": 4, "hops": 1, "steps": 120, "refine_steps": 60},
}
DEFAULT_POOLING = "maxmin+mean"
"""The run's acsf fingerprint: the paper's fung2022 values (max and min over atoms) plus
their mean over atoms. The energy sums over every atom, and max/min see only the
extreme ones: on the default run the surrogate filter then passes structures whose EMT
energy is far off (measured: 90 / 98 / 39 % within ±0.1 eV/atom among accepted at the
low / middle / high target with maxmin, 100 / 99 / 77 % with maxmin+mean). The
paper's exact fingerprint: --repr-param pooling=maxmin."""
TARGET_QUANTILES = (0.1, 0.5, 0.9)
"""Default targets: low, middle and high quantiles of the training data's property."""


def _csv(value: str | None) -> list[str]:
    return [part.strip() for part in (value or "").split(",") if part.strip()]


def _check_names(representation: str, model: str, optimizer: str, validators: list[str]) -> None:
    """Fail fast (before data and training) on an unknown component name."""
    from invfp.plugins import get_registry

    registry = get_registry()
    registry.get("representation", representation)
    registry.get("model", model)
    registry.get("optimizer", optimizer)
    for name in validators:
        registry.get("validator", name)


def run(
    output: Path = typer.Option(..., "-o", "--output", help="Run directory (runs/NAME); rerun to resume."),
    representation: str = typer.Option("acsf", "--repr", help="Representation plugin."),
    preset: str = typer.Option(
        None, "--preset", help="Representation preset (acsf default: fung2022 with pooling=maxmin+mean; 'none': "
        "no preset, set everything with --repr-param).",
    ),
    repr_param: list[str] = typer.Option(
        [], "--repr-param", help="Representation parameter KEY=VALUE (repeatable), e.g. --repr-param pooling=maxmin "
        "(the paper's fingerprint)."
    ),
    model: str = typer.Option("cvae", "--model", help="Generative-model plugin."),
    data: str = typer.Option("pt10-emt", "--data", help="Built-in data set name or an ase.db / extxyz file."),
    property_name: str = typer.Option("formation_energy", "--property", help="Property key to condition on."),
    formula: str = typer.Option(None, "--formula", help="Keep only this composition of a mixed data file."),
    targets: str = typer.Option(
        None, "--targets", help="Comma-separated target values (default: low, middle, high of the data)."
    ),
    n: int = typer.Option(None, "--n", help="Samples per target (default 100; --quick 8).", min=1),
    quick: bool = typer.Option(False, "--quick", help="Small data, few epochs, few samples (about a minute)."),
    seed: int = typer.Option(0, "--seed", help="Seed of everything (data split, training, sampling, reconstruction).", min=0),
    reconstruct_seed: int = typer.Option(
        None, "--reconstruct-seed", help="Seed of the reconstruction alone (default: --seed): the same generated "
        "fingerprints from other random starts.", min=0,
    ),
    optimizer: str = typer.Option("adam-hopping", "--optimizer", help="Reconstruction optimizer plugin."),
    opt: list[str] = typer.Option(
        [], "--opt", help="Optimizer option KEY=VALUE (repeatable), e.g. --opt restarts=16."
    ),
    validators: str = typer.Option(
        "loss-threshold,geometry,surrogate", "--validators", help="Comma-separated filters (all must accept)."
    ),
    oracle: str = typer.Option(
        "emt", "--oracle", help="ASE calculator computing the true property ('none': no oracle)."
    ),
    loss_threshold: float = typer.Option(
        None, "--loss-threshold", help="Fixed loss threshold (default: derived from training structures)."
    ),
    train_size: int = typer.Option(
        None, "--train-size", help="Training structures, by furthest-point sampling (default 3000).", min=2
    ),
    epochs: int = typer.Option(None, "--epochs", help="Training epochs of both models (default: the models').", min=1),
    chunk: int = typer.Option(25, "--chunk", help="Samples per reconstruction batch and per committed chunk.", min=1),
    model_opt: list[str] = typer.Option(
        [], "--model-opt", help="Generative model parameter KEY=VALUE (repeatable), e.g. --model-opt prior=conditional."
    ),
    prescreen: int = typer.Option(
        0, "--prescreen", help="Draw K x the samples and reconstruct those the surrogate puts closest to the "
        "target (0: reconstruct every draw, the default).", min=0,
    ),
    window: float = typer.Option(0.1, "--window", help="Half-width of the 'within' band (property units)."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:0 (default: CUDA when available)."),
    force: bool = typer.Option(False, "--force", help="Delete a different run found in the output directory."),
    executor: str = typer.Option(
        "local", "--executor", help="Where chunks run: local (this machine's cores) or dask (a cluster)."
    ),
    scheduler: str = typer.Option(
        None, "--scheduler", help="Dask scheduler address, e.g. tcp://host:8786 (a dask-jobqueue cluster's)."
    ),
    workers: int = typer.Option(
        None, "--workers", help="Single-threaded worker processes (local default: one per CPU core, 1 on a GPU; "
        "dask: a local cluster of N).", min=1
    ),
) -> None:
    """Generate structures with target properties: train, generate, reconstruct, validate, store.

    Writes OUTPUT/results.db (one row per sample), accepted.extxyz, summary.json and
    config.json, and prints a table per target before and after filtering.
    """
    import warnings

    import numpy as np

    from invfp.cli.app import error, key_values

    settings = dict(QUICK if quick else FULL)
    filters = _csv(validators)
    if oracle.lower() != "none" and "energy" in filters:
        error("'energy' is the oracle (--oracle); listing it in --validators too would filter on the true property")
    if not (window > 0):
        error(f"--window must be > 0, got {window}")
    if loss_threshold is not None and not (0 < loss_threshold < float("inf")):
        error(f"--loss-threshold must be a finite number > 0, got {loss_threshold} (leave it out to calibrate one)")
    _check_names(representation, model, optimizer, filters + ([] if oracle.lower() == "none" else ["energy"]))
    from invfp.executors import check_executor_options, create_executor, local_workers

    check_executor_options(executor, scheduler=scheduler, workers=workers)
    from invfp.utils import check_output_path

    check_output_path(output)  # before data and training
    target_values: list[float] | None = None
    if targets is not None:
        try:
            target_values = [float(t) for t in _csv(targets)]
        except ValueError:
            error(f"--targets {targets!r}: give comma-separated numbers, e.g. 1.5,2.0,2.5")
        if not target_values or not all(np.isfinite(target_values)):
            error(f"--targets {targets!r}: give comma-separated finite numbers")

    import invfp
    from invfp.data import featurize, furthest_point_sampling, load
    from invfp.data.datasets import BUILTIN, UNITS
    from invfp.engine import Pipeline, train_or_load
    from invfp.models.base import TargetOutOfRangeWarning
    from invfp.reconstruction import auto_feature_scale
    from invfp.results import ResultsStore
    from invfp.utils import resolve_device
    from invfp.validators.builtin import EnergyValidator

    started = time.perf_counter()
    dev = resolve_device(device)
    if executor == "local" and workers is None:
        # One chunk keeps one core busy: use every core, but one process on a GPU.
        workers = local_workers(dev)
    out = _console()
    n = int(n or settings["n"])
    opt_options = {**settings["optimizer_options"], **key_values(opt, "--opt", "restarts=16")}
    invfp.get_optimizer(optimizer, **opt_options)  # bad --opt values fail now, not after training
    rep_params = key_values(repr_param, "--repr-param", "pooling=mean")
    if preset is not None and preset.lower() != "none":
        rep_params["preset"] = preset
    elif preset is None and representation == "acsf":
        rep_params["preset"] = "fung2022"
        rep_params.setdefault("pooling", DEFAULT_POOLING)
    from invfp.errors import ConfigError

    try:
        rep = invfp.get_representation(representation, **rep_params)  # bad --repr-param values fail now
    except ConfigError as exc:
        if "preset" not in str(exc):
            raise
        error(f"{exc} (here: --preset none)")
    model_options = key_values(model_opt, "--model-opt", "prior=conditional")
    if "epochs" in model_options:
        error("--model-opt epochs=...: use --epochs (it sets both models' epochs)")
    invfp.get_model(model, **model_options)  # bad --model-opt values fail now too

    # 1. data and fingerprints
    builtin = data in BUILTIN
    dataset = load(
        data, property=property_name, formula=formula, size=settings["size"] if builtin else "full", progress=True
    )
    units = UNITS.get(property_name, "")
    R = featurize(dataset, rep, cache=True, progress=True)
    data_hash = dataset.content_hash()
    size = min(int(train_size or settings["train_size"]), len(dataset))
    train_idx = np.sort(furthest_point_sampling(R, size, seed=seed)) if size < len(dataset) else np.arange(len(dataset))
    R_train, y_train = R[train_idx], dataset.y[train_idx]
    lo, hi = float(dataset.y.min()), float(dataset.y.max())
    if target_values is None:
        target_values = [round(float(v), 2) for v in np.quantile(y_train, TARGET_QUANTILES)]
        target_note = (
            f"targets {', '.join(f'{t:g}' for t in target_values)} {units}: the 10th, 50th and 90th "
            f"percentiles of the training data's {property_name} (range {lo:.3f} to {hi:.3f})"
        )
    else:
        target_note = f"targets {', '.join(f'{t:g}' for t in target_values)} {units} (given)"
    target_warnings = []
    for t in target_values:
        if not lo <= t <= hi:
            gap = lo - t if t < lo else t - hi
            side = "below" if t < lo else "above"
            target_warnings.append(
                f"target {t:g} lies {gap:.3g} {units} {side} the data's range [{lo:.3f}, {hi:.3f}]; "
                "the model extrapolates there"
            )
    for message in target_warnings:
        out.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    # 2. the run directory (refuses a different run before any training)
    epoch_params = {} if (epochs or settings["epochs"]) is None else {"epochs": int(epochs or settings["epochs"])}
    model_params = {**model_options, **epoch_params}
    oracle_validator = None if oracle.lower() == "none" else EnergyValidator(calculator=oracle, tolerance=window)
    filter_objects = [invfp.get_validator(name) for name in filters]
    config = {
        "data": {"source": data, "size": settings["size"] if builtin else None, "hash": data_hash,
                 "frames": len(dataset), "formula": dataset.formula},
        "property": property_name,
        "units": units,
        "representation": rep.get_config(),
        "model": {"name": model, **model_params},
        "surrogate": epoch_params,
        "train_size": int(size),
        "seed": int(seed),
        **({} if reconstruct_seed is None else {"reconstruct_seed": int(reconstruct_seed)}),
        "optimizer": {"name": optimizer, **opt_options},
        "filters": [v.get_config() for v in filter_objects],
        "oracle": None if oracle_validator is None else oracle_validator.get_config(),
        "loss_threshold": {"fixed": loss_threshold} if loss_threshold is not None
        else {"calibrate": settings["calibrate"], "quantile": 0.9, "factor": 2.0},
        "targets": target_values,
        "n": n,
        "chunk": int(chunk),
        "prescreen": int(prescreen),
        "window": float(window),
    }
    store = ResultsStore(output, config, force=force)
    try:
        # 3. models: trained, or reused from the cache
        t0 = time.perf_counter()
        bundle, reused = train_or_load(
            R_train, y_train, representation=rep, model=model, model_params=model_params,
            surrogate_params=epoch_params, property_name=property_name, units=units, seed=seed,
            processes=2 if executor == "local" and workers >= 2 else 1,
            data_summary={"source": data, "hash": data_hash, "train_size": int(size)},
            progress=True, device=dev,
        )
        train_seconds = time.perf_counter() - t0
        out.print(
            f"models: {model} + surrogate {'reused from the cache' if reused else f'trained in {train_seconds:.0f} s'}"
            f" on {size} of {len(dataset)} structures ({data})",
            highlight=False,
        )
        store.write_reference(R_train, y_train)
        pipe = Pipeline(
            rep, bundle.generator, numbers=dataset.numbers, cell=dataset.cell, pbc=dataset.pbc,
            surrogate=bundle.surrogate, optimizer=optimizer, optimizer_options=opt_options, filters=filter_objects,
            oracle=oracle_validator, property_name=property_name, window=window, loss_threshold=loss_threshold,
            # Scaled, not raw as in `invfp reconstruct`: the default run measured 90/96/24 % within
            # ±0.1 (low/middle/high) this way against 58/96/25 % with raw features.
            feature_scale=auto_feature_scale(R_train), device=dev, prescreen=prescreen,
        )

        # 4. the loss threshold: fixed, or derived from real training structures (once per run)
        if loss_threshold is not None:
            threshold_note = f"loss threshold {loss_threshold:.3g} (given)"
        else:
            calibration = store.read_json("calibration.json")
            if calibration is None:
                count = min(settings["calibrate"], size)
                pick = np.random.default_rng(seed).choice(size, count, replace=False)
                calibration = pipe.calibrate(
                    R_train[np.sort(pick)], seed=seed, quantile=0.9, factor=2.0, progress=True
                )
                store.write_json("calibration.json", calibration)
            pipe.loss_threshold = float(calibration["threshold"])
            threshold_note = (
                f"loss threshold {pipe.loss_threshold:.3g}: 2 × the 90th percentile of the reconstruction "
                f"losses of {calibration['n']} real training structures (median "
                f"{float(np.median(calibration['losses'])):.3g})"
            )
        rep_note = f"fingerprint: {representation} {rep.dim(dataset.numbers)} values"
        if rep_params:
            rep_note += " (" + ", ".join(f"{k}={v}" for k, v in rep_params.items()) + ")"
        out.print(rep_note, highlight=False)
        out.print(threshold_note, highlight=False)
        out.print(target_note, highlight=False)

        # 5. generate → reconstruct → validate, chunk by chunk (where: --executor; only we write the store)
        with create_executor(executor, scheduler=scheduler, workers=workers) as runner, warnings.catch_warnings():
            # Out-of-range targets were reported once above; the model would repeat it per chunk.
            warnings.simplefilter("ignore", TargetOutOfRangeWarning)
            result = pipe.run(
                target_values, n, store=store, seed=seed, chunk_size=chunk, progress=True, executor=runner,
                reconstruct_seed=reconstruct_seed,
                summary_extra={
                    "units": units,
                    "data": config["data"],
                    "representation_note": rep_note,
                    "targets_note": target_note,
                    "threshold_note": threshold_note,
                    "warnings": target_warnings,
                    "seconds": round(time.perf_counter() - started, 1),
                    "device": str(dev),
                    "executor": executor,
                    "workers": workers,
                },
            )
    finally:
        store.close()
    if result.skipped_chunks:
        out.print(f"resumed: {result.skipped_chunks} chunks were already stored, {result.computed_chunks} computed")
    _print_table(out, result.table, property_name, units, window, oracle_validator is not None)
    out.print(
        f"wrote {output}/results.db ({len(result.records)} rows), accepted.extxyz "
        f"({sum(r.accepted for r in result.records)} structures), summary.json in "
        f"{time.perf_counter() - started:.0f} s",
        highlight=False,
    )


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=False, soft_wrap=True)


def _print_table(out: Any, table: list[dict[str, Any]], prop: str, units: str, window: float, oracle: bool) -> None:
    from rich.table import Table

    def fmt(value: Any, spec: str) -> str:
        return "–" if value is None else format(value, spec)

    grid = Table(title=f"{prop}: generated vs accepted (true value by the oracle; within ±{window:g} {units})")
    for col in ("target", "generated", "accepted", "MAE all", "within all", "MAE accepted", "within accepted"):
        grid.add_column(col, justify="right")
    for row in table:
        grid.add_row(
            f"{row['target']:g}", str(row["generated"]), str(row["accepted"]),
            fmt(row["mae_all"], ".3f"), fmt(row["within_all"], ".0f") + ("%" if row["within_all"] is not None else ""),
            fmt(row["mae_accepted"], ".3f"),
            fmt(row["within_accepted"], ".0f") + ("%" if row["within_accepted"] is not None else ""),
        )
    out.print(grid)
    if not oracle:
        out.print("no oracle (--oracle none): true-property columns are empty")
