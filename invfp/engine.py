"""The end-to-end pipeline: generate → reconstruct → validate, streamed to a results store.

A :class:`Pipeline` holds a representation, a fitted generative model (and optionally a
surrogate), an optimizer, the *filters* (validators that decide acceptance) and an
*oracle* (a validator whose value is the true property, e.g. EMT; it is recorded but
never filters, so the share of accepted structures near the target is an honest
measure). :meth:`Pipeline.run` works through targets × samples in chunks::

    pipe = Pipeline(rep, generator, numbers=[78] * 10, cell=20.0, surrogate=surrogate)
    pipe.calibrate(training_fingerprints, seed=0)      # the default loss threshold
    with ResultsStore("runs/demo", config) as store:
        result = pipe.run([1.5, 2.0, 2.5], n=100, store=store, seed=0)

Each chunk (one target, ``chunk_size`` consecutive samples) draws its samples and its
reconstruction starts from seeds derived from (seed, target index, chunk index) only,
and is committed in one transaction; a rerun after an interruption skips the
committed chunks and recomputes the missing ones identically (on the same machine and
code: a resume elsewhere, or on CUDA where scatter-adds are not bitwise reproducible,
adds the missing rows with possibly different last digits, never duplicates or gaps).

Where chunks are computed is an :class:`~invfp.executors.Executor` (``run(...,
executor=)``): in this process by default, or on a Dask cluster; either way results
stream back here and only this process writes the store.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from invfp.errors import ConfigError, InputError, InvfpError
from invfp.results import ResultsStore, SampleRecord, summarize
from invfp.validators.base import ValidationContext, Validator

DEFAULT_FILTERS: tuple[str, ...] = ("loss-threshold", "geometry", "surrogate")
"""Validators that decide acceptance by default (none of them sees the true property)."""


def chunk_seeds(seed: int, target_index: int, chunk: int) -> tuple[int, int]:
    """Seeds (sampling, reconstruction) of one chunk: a function of its identity only."""
    state = np.random.SeedSequence([int(seed), int(target_index), int(chunk)]).generate_state(2)
    return int(state[0]), int(state[1])


def plan_chunks(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """``(first sample, count)`` of each chunk of a target's ``n`` samples."""
    if n < 1 or chunk_size < 1:
        raise ConfigError(f"need n >= 1 and chunk_size >= 1, got n={n}, chunk_size={chunk_size}")
    return [(start, min(chunk_size, n - start)) for start in range(0, n, chunk_size)]


def train_or_load(
    R: np.ndarray,
    y: np.ndarray,
    *,
    representation: Any,
    model: str = "cvae",
    model_params: Mapping[str, Any] | None = None,
    surrogate_params: Mapping[str, Any] | None = None,
    property_name: str = "formation_energy",
    units: str = "",
    seed: int = 0,
    data_summary: Mapping[str, Any] | None = None,
    cache: bool = True,
    progress: bool = True,
    device: Any = None,
    processes: int = 1,
) -> tuple[Any, bool]:
    """Train the generative model and the surrogate on ``R``, ``y``, or reuse a cached pair.

    With ``processes >= 2`` on the CPU the surrogate trains in a second process while
    the generative model trains in this one (each on one core; the result is the same
    as training them one after the other).

    The cache (``$INVFP_CACHE_DIR/models/<key>``) is keyed by the training data itself
    (a hash of ``R`` and ``y``), the representation's configuration, the model kind and
    both models' parameters, the property and the seed: any change trains anew.

    Returns:
        ``(bundle, reused)``: an :class:`invfp.models.io.Bundle` and whether it came
        from the cache.
    """
    import hashlib
    import json

    from invfp.data.cache import cache_dir
    from invfp.models.io import load_bundle, save_bundle
    from invfp.models.surrogate import Surrogate
    from invfp.plugins import create

    R = np.ascontiguousarray(R, dtype=np.float64)
    y = np.ascontiguousarray(y, dtype=np.float64)
    generator = create("model", model, **dict(model_params or {}))
    surrogate = Surrogate(**dict(surrogate_params or {}))
    rep_config = representation.get_config()
    digest = hashlib.sha256(R.tobytes() + y.tobytes() + str(R.shape).encode())
    identity = {
        "data": digest.hexdigest(),
        "representation": rep_config,
        "model": generator.get_config(),
        "surrogate": surrogate.get_config(),
        "property": property_name,
        "seed": int(seed),
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
    path = cache_dir() / "models" / f"{generator.name}-{key}"
    if cache and path.is_dir():
        return load_bundle(path, representation_config=rep_config), True
    from invfp.utils import resolve_device

    if processes >= 2 and resolve_device(device).type == "cpu":
        surrogate = _fit_beside(surrogate, lambda: generator.fit(R, y, seed=seed, progress=progress, device=device),
                                R, y, seed)
    else:
        generator.fit(R, y, seed=seed, progress=progress, device=device)
        surrogate.fit(R, y, seed=seed, progress=progress, device=device)
    if cache:
        save_bundle(
            path,
            generator=generator,
            surrogate=surrogate,
            representation_config=rep_config,
            property=property_name,
            units=units,
            data_summary=dict(data_summary or {}),
        )
        # Use the saved copy, so a first run and a rerun that finds the cache sample
        # from bit-identical models (resumed chunks must match the ones before).
        return load_bundle(path, representation_config=rep_config), False
    from invfp.models.io import Bundle

    bundle = Bundle(
        generator=generator,
        surrogate=surrogate,
        representation_config=rep_config,
        property=property_name,
        units=units,
        y_range=(float(y.min()), float(y.max())),
        dimension=int(R.shape[1]),
        data_summary=dict(data_summary or {}),
    )
    return bundle, False


def _fit_surrogate_in_process(params: dict[str, Any], R: np.ndarray, y: np.ndarray, seed: int, directory: str) -> None:
    from invfp.models.surrogate import Surrogate

    model = Surrogate(**params)
    model.fit(R, y, seed=seed, progress=False, device="cpu")
    model.save(directory)


def _fit_beside(surrogate: Any, fit_main: Any, R: np.ndarray, y: np.ndarray, seed: int) -> Any:
    """Fit ``surrogate`` in a spawned process while ``fit_main()`` runs here; the fitted surrogate."""
    import tempfile
    from concurrent.futures.process import BrokenProcessPool

    import torch

    from invfp.executors import spawn_pool, stop_pool
    from invfp.models.surrogate import Surrogate

    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="invfp-surrogate-") as tmp:
        pool = spawn_pool(1)
        try:
            job = pool.submit(_fit_surrogate_in_process, surrogate.params, R, y, seed, tmp)
            # One core each: torch threads here would spin against the other training.
            torch.set_num_threads(1)
            fit_main()
            job.result()
        except BrokenProcessPool as exc:
            raise InvfpError("the process training the surrogate died (out of memory, or killed); rerun") from exc
        finally:
            torch.set_num_threads(threads)
            # on Ctrl-C or a failure here the other training must not go on; after success it has ended
            stop_pool(pool)
        return Surrogate.load(tmp)


@dataclasses.dataclass
class RunResult:
    """What :meth:`Pipeline.run` returns."""

    records: list[SampleRecord]
    """Every sample of the run (resumed chunks included), by target then sample index."""
    table: list[dict[str, Any]]
    """Per target: generated, accepted, MAE and % within the window, all vs accepted."""
    computed_chunks: int
    """Chunks computed by this call (the rest were already stored)."""
    skipped_chunks: int


class Pipeline:
    """Generate fingerprints for target properties, reconstruct them to atoms, validate.

    The composition, cell, pbc, optimizer parameters and ``loss_threshold`` are checked
    when the pipeline is made, so a bad one fails before any sampling or reconstruction.

    Args:
        representation: the representation the models were trained on (an object).
        generator: a fitted generative model (``sample(y, n, seed=) -> [n, D]`` raw scale).
        numbers: the composition of every generated structure (atomic numbers or
            symbols, or a formula such as ``"Pt10"``).
        cell: the reconstruction cell (a number, three lengths or 3×3), or ``None``.
        pbc: periodic directions (a bool or three).
        surrogate: a fitted surrogate (``predict(R) -> [B]``), needed by the
            ``surrogate`` filter.
        optimizer: an optimizer name, with ``optimizer_options`` its parameters (the
            optimizer's defaults, except ``attempts=1`` where it has that parameter).
        filters: validators (names or objects) that must all accept a structure.
        oracle: a validator (name or object) whose ``value`` is the true property, or
            ``None``; recorded for every sample, never used to filter.
        property_name: the property the model is conditioned on.
        window: half-width of the "within" band in the summary (property units).
        loss_threshold: the ``loss-threshold`` filter's threshold when it has none of
            its own; :meth:`calibrate` derives it from training structures.
        feature_scale: per-feature weights of the reconstruction objective (see
            :func:`invfp.reconstruct`); fix it (e.g. from training fingerprints) so that a
            chunk's result does not depend on the other samples in it.
        device: torch device for reconstruction (default: CUDA when available).
        dtype: reconstruction dtype (default: the reconstruction's default).
        prescreen: draw this many times more fingerprints than a chunk needs and
            reconstruct those the surrogate predicts closest to the target (0 or 1:
            reconstruct every draw). Sampling and the surrogate cost microseconds, a
            reconstruction seconds: screening first spends the reconstructions on
            fingerprints that are on target (the paper's Table 1 filter, used as one).
    """

    def __init__(
        self,
        representation: Any,
        generator: Any,
        *,
        numbers: Sequence[int],
        cell: Any = None,
        pbc: Any = False,
        surrogate: Any = None,
        optimizer: str = "adam-hopping",
        optimizer_options: Mapping[str, Any] | None = None,
        filters: Sequence[str | Validator] = DEFAULT_FILTERS,
        oracle: str | Validator | None = "energy",
        property_name: str = "formation_energy",
        window: float = 0.1,
        loss_threshold: float | None = None,
        feature_scale: Any = None,
        device: Any = None,
        dtype: Any = None,
        prescreen: int = 0,
    ) -> None:
        from invfp.plugins import create
        from invfp.reconstruction import parse_system

        # What reconstruction would refuse is refused here, before any sampling or chunk.
        self.numbers = [int(v) for v in parse_system(numbers, cell, pbc)[0]]
        self.representation = representation
        self.generator = generator
        self.cell = cell
        self.pbc = pbc
        self.surrogate = surrogate
        self.optimizer = optimizer
        self.optimizer_options = dict(optimizer_options or {})
        # unknown names and bad values (reconstruct's own keywords, e.g. workers, pass through)
        create("optimizer", optimizer, **{k: v for k, v in self.optimizer_options.items() if k not in ("workers", "start")})
        if loss_threshold is not None and (
            isinstance(loss_threshold, bool)
            or not isinstance(loss_threshold, (int, float, np.integer, np.floating))
            or not (0 < loss_threshold < math.inf)
        ):
            raise ConfigError(f"loss_threshold must be a finite number > 0 (or None: calibrate), got {loss_threshold!r}")
        self.filters: list[Validator] = [create("validator", v) for v in filters]
        self.oracle: Validator | None = None if oracle is None else create("validator", oracle)
        names = [v.name for v in self.filters] + ([self.oracle.name] if self.oracle else [])
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ConfigError(f"validator {duplicated[0]!r} is listed twice (filters and oracle must differ)")
        if any(v.name == "surrogate" for v in self.filters) and surrogate is None:
            raise ConfigError("the 'surrogate' filter needs a trained surrogate; pass surrogate= or drop the filter")
        if not (window > 0 and math.isfinite(window)):
            raise ConfigError(f"window must be a finite number > 0, got {window}")
        if isinstance(prescreen, bool) or not isinstance(prescreen, int) or prescreen < 0:
            raise ConfigError(f"prescreen must be an integer >= 0 (0: off), got {prescreen!r}")
        if prescreen > 1 and surrogate is None:
            raise ConfigError("prescreen needs a trained surrogate; pass surrogate= or prescreen=0")
        self.prescreen = int(prescreen)
        self.property_name = property_name
        self.window = float(window)
        self.loss_threshold = loss_threshold
        self.feature_scale = feature_scale
        self.device = device
        self.dtype = dtype

    # -- pieces ----------------------------------------------------------------------
    def reconstruct(self, fingerprints: np.ndarray, *, seed: int, progress: bool = False) -> list[Any]:
        """Reconstruct ``fingerprints`` ``[B, D]`` with the pipeline's optimizer and settings."""
        from invfp.plugins import create
        from invfp.reconstruction import reconstruct

        options = dict(self.optimizer_options)
        if "attempts" not in options and "attempts" in create("optimizer", self.optimizer).parameters:
            # Generated fingerprints rarely reach the optimizer's tol, so further whole
            # searches would multiply the time of every sample: one, unless asked.
            options["attempts"] = 1
        return reconstruct(
            fingerprints,
            numbers=self.numbers,
            cell=self.cell,
            pbc=self.pbc,
            representation=self.representation,
            optimizer=self.optimizer,
            seed=seed,
            device=self.device,
            dtype=self.dtype,
            feature_scale=self.feature_scale,
            progress=progress,
            **options,
        )

    def calibrate(
        self,
        fingerprints: np.ndarray,
        *,
        seed: int = 0,
        quantile: float = 0.9,
        factor: float = 2.0,
        progress: bool = False,
    ) -> dict[str, Any]:
        """Derive the default loss threshold from fingerprints of real training structures.

        A real structure's fingerprint is reachable, so its reconstruction loss shows
        what the optimizer achieves on a valid fingerprint; the threshold is ``factor``
        times the ``quantile`` of those losses. Sets :attr:`loss_threshold`.

        Returns:
            ``{"threshold", "losses", "quantile", "factor", "n"}`` (JSON-serialisable).
        """
        arr = np.asarray(fingerprints, dtype=float)
        if arr.ndim != 2 or len(arr) == 0:
            raise InputError(f"calibration needs fingerprints [B, D] of training structures, got shape {arr.shape}")
        if not (0 < quantile <= 1) or not factor > 0:
            raise ConfigError(f"calibration needs 0 < quantile <= 1 and factor > 0, got {quantile}, {factor}")
        losses = [float(r.loss) for r in self.reconstruct(arr, seed=seed, progress=progress)]
        threshold = float(factor * np.quantile(losses, quantile))
        self.loss_threshold = threshold
        return {"threshold": threshold, "losses": losses, "quantile": quantile, "factor": factor, "n": len(losses)}

    def process_chunk(
        self,
        target_index: int,
        target: float,
        chunk: int,
        first_sample: int,
        count: int,
        seed: int,
        reconstruct_seed: int | None = None,
    ) -> list[SampleRecord]:
        """Generate, reconstruct and validate one chunk; a pure function of its arguments.

        ``reconstruct_seed`` (default: ``seed``) seeds only the reconstruction, so the same
        generated fingerprints can be reconstructed from other random starts.
        """
        sample_seed, recon_seed = chunk_seeds(seed, target_index, chunk)
        if reconstruct_seed is not None:
            recon_seed = chunk_seeds(reconstruct_seed, target_index, chunk)[1]
        draws = count * max(self.prescreen, 1)
        fingerprints = np.asarray(self.generator.sample(float(target), draws, seed=sample_seed), dtype=float)
        if fingerprints.ndim != 2 or fingerprints.shape[0] != draws:
            raise ConfigError(
                f"model {getattr(self.generator, 'name', '?')!r} returned {fingerprints.shape[0]} samples, asked {draws}"
            )
        if draws > count:
            gap = np.abs(np.asarray(self.surrogate.predict(fingerprints), dtype=float) - float(target))
            fingerprints = fingerprints[np.sort(np.argsort(gap, kind="stable")[:count])]
        results = self.reconstruct(fingerprints, seed=recon_seed)
        structures = [r.atoms for r in results]
        context = ValidationContext(
            targets=[float(target)] * count,
            losses=[float(r.loss) for r in results],
            property_name=self.property_name,
            extras={
                "surrogate": self.surrogate,
                "representation": self.representation,
                "loss_threshold": self.loss_threshold,
                "fingerprints": fingerprints,
            },
        )
        verdicts: dict[str, list[Any]] = {}
        for validator in self.filters + ([self.oracle] if self.oracle else []):
            out = validator.validate(structures, context)
            if len(out) != count:
                raise ConfigError(f"validator {validator.name!r} returned {len(out)} verdicts for {count} structures")
            verdicts[validator.name] = out
        records = []
        for k, result in enumerate(results):
            mine = {name: out[k] for name, out in verdicts.items()}
            true_value = mine[self.oracle.name].value if self.oracle else None
            records.append(
                SampleRecord(
                    target_index=target_index,
                    target=float(target),
                    chunk=chunk,
                    sample=first_sample + k,
                    atoms=result.atoms,
                    loss=float(result.loss),
                    steps=int(result.steps),
                    time=float(result.time),
                    restart_losses=list(result.restart_losses),
                    verdicts=mine,
                    accepted=all(mine[v.name].accepted for v in self.filters),
                    true_property=None if true_value is None else float(true_value),
                    fingerprint=fingerprints[k],
                )
            )
        return records

    # -- the run ---------------------------------------------------------------------
    def run(
        self,
        targets: Sequence[float],
        n: int,
        *,
        store: ResultsStore | None = None,
        seed: int = 0,
        chunk_size: int = 25,
        progress: bool = True,
        summary_extra: Mapping[str, Any] | None = None,
        executor: Any = None,
        reconstruct_seed: int | None = None,
    ) -> RunResult:
        """Run every target × ``n`` samples, chunk by chunk, streaming to ``store``.

        Args:
            targets: target property values.
            n: samples per target.
            store: where rows go (and which chunks exist already); ``None`` keeps
                the records in memory only.
            seed: the run's seed; with the store it makes reruns resume exactly.
            chunk_size: samples per chunk (one reconstruction batch, one transaction).
            progress: show a progress bar over samples.
            summary_extra: more facts for ``summary.json`` (data, timings, ...).
            executor: where chunks are computed (an :class:`~invfp.executors.Executor`;
                default: in this process). Chunks may complete in any order.
            reconstruct_seed: seeds the reconstruction alone (default: ``seed`` seeds it):
                the same samples, reconstructed from other random starts.
        """
        from invfp.executors import LocalExecutor
        from invfp.utils import check_seed, progress_bar

        seed = check_seed(seed)
        reconstruct_seed = check_seed(reconstruct_seed, "reconstruct_seed")
        if seed is None:
            raise ConfigError("seed must be an integer >= 0: a run's chunks are seeded from it (resume needs that)")
        targets = [float(t) for t in targets]
        if not targets or not all(math.isfinite(t) for t in targets):
            raise InputError(f"targets must be finite numbers, got {targets}")
        plan = plan_chunks(int(n), int(chunk_size))
        done = store.committed_chunks() if store is not None else set()
        memory: list[SampleRecord] = []
        computed = skipped = 0
        pending = []
        for ti, target in enumerate(targets):
            for chunk, (first, count) in enumerate(plan):
                if (ti, chunk) in done:
                    skipped += 1
                else:
                    pending.append((ti, target, chunk, first, count, seed, reconstruct_seed))
        with progress_bar(len(targets) * n, "generate → reconstruct → validate", enabled=progress) as advance:
            advance(len(targets) * n - sum(spec[4] for spec in pending))
            for (ti, _, chunk, _, count, *_), records in (executor or LocalExecutor()).map(_chunk, self, pending):
                if store is not None:
                    store.write_chunk(ti, chunk, records)
                else:
                    memory.extend(records)
                computed += 1
                advance(count)
        records = store.records() if store is not None else sorted(memory, key=lambda r: (r.target_index, r.sample))
        table = summarize(records, targets, window=self.window)
        if store is not None:
            summary = {
                "property": self.property_name,
                "window": self.window,
                "loss_threshold": self.loss_threshold,
                "filters": [v.name for v in self.filters],
                "oracle": self.oracle.name if self.oracle else None,
                "targets": table,
                **dict(summary_extra or {}),
            }
            store.write_outputs(records, summary)
        return RunResult(records=records, table=table, computed_chunks=computed, skipped_chunks=skipped)


def _chunk(pipeline: Pipeline, spec: tuple[int, float, int, int, int, int, int | None]) -> list[SampleRecord]:
    """One chunk, as an executor task: ``spec`` is ``process_chunk``'s arguments."""
    return pipeline.process_chunk(*spec)
