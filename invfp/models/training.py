"""The training loop shared by invfp's models (and reusable by model plugins).

:func:`check_training_data` rejects malformed input with a clear message;
:func:`split_indices` makes a seeded train/validation(/test) split; :func:`train`
runs mini-batch Adam over tensors already on the device, evaluates the validation loss
after every epoch, keeps the best checkpoint by validation loss, optionally stops early,
and shows the losses on a progress bar. A model supplies only its loss::

    def loss_fn(net, batch, gen):          # batch: the tensors, sliced to one batch
        x, y = batch
        return {"loss": ..., "recon": ..., "kl": ...}   # "loss" is minimised

    result = train(net, loss_fn, (x_tr, y_tr), (x_va, y_va), epochs=..., batch_size=...,
                   lr=..., seed=..., progress=True, description="cvae")
    net.load_state_dict(result.best_state)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from invfp.errors import InputError
from invfp.utils import check_seed, make_generator

LossFn = Callable[[torch.nn.Module, Sequence[torch.Tensor], torch.Generator], Mapping[str, torch.Tensor]]


def check_training_data(R: Any, y: Any, *, min_samples: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Validate fingerprints ``R`` ``[n, D]`` and properties ``y`` ``[n]``; float64 copies.

    Raises:
        InputError: wrong shapes, too few rows, or NaN/inf values (naming the first bad row).
    """
    R = np.asarray(R, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if R.ndim != 2:
        raise InputError(f"fingerprints must be a 2-D array [n, D], got shape {R.shape}")
    if y.ndim != 1 or y.shape[0] != R.shape[0]:
        raise InputError(f"{R.shape[0]} fingerprints but property array of shape {np.shape(y)}; give one value per row")
    if R.shape[0] < min_samples:
        raise InputError(f"need at least {min_samples} training samples, got {R.shape[0]}")
    for name, arr in (("fingerprints", R), ("property values", y)):
        bad = ~np.isfinite(arr) if arr.ndim == 1 else ~np.all(np.isfinite(arr), axis=1)
        if bad.any():
            rows = np.flatnonzero(bad)
            raise InputError(
                f"{name} contain NaN or infinite values in {rows.size} row(s) (first: row {rows[0]}); "
                "drop or fix those rows before training"
            )
    return R, y


def split_indices(
    n: int, fractions: Sequence[float], seed: int | None
) -> list[np.ndarray]:
    """Seeded random split of ``range(n)``: ``[train, *held_out]`` for each fraction.

    Each held-out part gets ``round(n * fraction)`` rows but at least 1 when its
    fraction is > 0, and the training part keeps at least 1 row.
    """
    perm = np.random.default_rng(check_seed(seed)).permutation(n)
    sizes = [max(1, round(n * f)) if f > 0 else 0 for f in fractions]
    if sum(sizes) >= n:
        raise InputError(f"{n} samples are too few for held-out fractions {list(fractions)}; give more data")
    parts, start = [], n - sum(sizes)
    train = np.sort(perm[:start])
    for size in sizes:
        parts.append(np.sort(perm[start : start + size]))
        start += size
    return [train, *parts]


@dataclasses.dataclass
class TrainResult:
    """What :func:`train` returns."""

    best_state: dict[str, torch.Tensor]
    """``state_dict`` at the epoch with the lowest validation loss."""
    best_epoch: int
    """1-based epoch of ``best_state``."""
    best: dict[str, float]
    """Validation losses at ``best_epoch``."""
    epochs_run: int
    history: dict[str, list[float]]
    """Per-epoch losses: ``train_<name>`` and ``val_<name>`` for each loss the model returns."""
    stopped_early: bool

    def report(self) -> dict[str, Any]:
        """A JSON-serialisable summary (history included)."""
        return {
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "stopped_early": self.stopped_early,
            **{f"best_val_{k}": v for k, v in self.best.items()},
            "history": self.history,
        }


def _show_progress(enabled: bool) -> bool:
    return enabled and (sys.stderr.isatty() or os.environ.get("INVFP_PROGRESS") == "1")


@contextlib.contextmanager
def _loss_bar(total: int, description: str, enabled: bool) -> Iterator[Callable[[str], None]]:
    """Yield ``step(text)``: advance one epoch and show ``text`` (the losses)."""
    if not _show_progress(enabled):
        yield lambda text: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[losses]}"),
        console=Console(stderr=True),
    ) as bar:
        task = bar.add_task(description, total=total, losses="")
        yield lambda text: bar.update(task, advance=1, losses=text)


def _evaluate(
    net: torch.nn.Module, loss_fn: LossFn, data: Sequence[torch.Tensor], batch_size: int, seed: int
) -> dict[str, float]:
    """Mean losses over ``data`` (in eval mode, no grad, fixed noise for a stable curve)."""
    net.eval()
    gen = make_generator(seed, data[0].device)
    n = data[0].shape[0]
    sums: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, n, batch_size):
            batch = [t[start : start + batch_size] for t in data]
            for k, v in loss_fn(net, batch, gen).items():
                sums[k] = sums.get(k, 0.0) + float(v) * batch[0].shape[0]
    return {k: v / n for k, v in sums.items()}


def train(
    net: torch.nn.Module,
    loss_fn: LossFn,
    train_data: Sequence[torch.Tensor],
    val_data: Sequence[torch.Tensor],
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int | None = None,
    patience: int | None = None,
    weight_decay: float = 0.0,
    progress: bool = False,
    description: str = "train",
    sample_weights: np.ndarray | None = None,
) -> TrainResult:
    """Mini-batch Adam with the best checkpoint by validation loss.

    Args:
        net: the network, already on the device of the data.
        loss_fn: ``loss_fn(net, batch, generator) -> {"loss": scalar, ...}``; the
            per-batch means; ``"loss"`` is minimised, every entry is logged.
        train_data: tensors with the same first dimension (e.g. ``(x, y)``).
        val_data: validation tensors; the checkpoint with the lowest mean ``"loss"`` on
            them is returned.
        epochs: maximum number of passes over ``train_data``.
        batch_size: mini-batch size (the last batch of an epoch may be smaller).
        lr: Adam learning rate.
        seed: seeds the initial shuffle order and the loss's noise.
        patience: stop after this many epochs without a better validation loss
            (``None``: run every epoch).
        weight_decay: Adam weight decay.
        progress: show a progress bar with the latest losses.
        description: the bar's label.
        sample_weights: per-example weights ``[n]``; each epoch then draws ``n``
            examples with replacement in proportion to them (e.g.
            :func:`balanced_weights`) instead of a plain shuffle.
    """
    device = train_data[0].device
    seed = int(np.random.default_rng(seed).integers(2**31)) if seed is None else int(seed)
    shuffle = torch.Generator().manual_seed(seed)
    noise = make_generator(seed + 1, device)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = train_data[0].shape[0]
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.asarray(sample_weights, dtype=np.float64))
        if weights.shape != (n,) or not bool(torch.all(weights >= 0)) or not float(weights.sum()) > 0:
            raise InputError(f"sample_weights must be {n} non-negative numbers, not all zero")
    history: dict[str, list[float]] = {}
    best_val, best_epoch, best_state, best = math.inf, 0, copy.deepcopy(net.state_dict()), {}
    epoch = 0
    with _loss_bar(epochs, description, progress) as step:
        for epoch in range(1, epochs + 1):
            net.train()
            if weights is None:
                order = torch.randperm(n, generator=shuffle).to(device)
            else:
                order = torch.multinomial(weights, n, replacement=True, generator=shuffle).to(device)
            sums: dict[str, float] = {}
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                batch = [t[idx] for t in train_data]
                losses = loss_fn(net, batch, noise)
                opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                opt.step()
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * idx.shape[0]
            val = _evaluate(net, loss_fn, val_data, max(batch_size, 1024), seed + 2)
            for k, v in sums.items():
                history.setdefault(f"train_{k}", []).append(v / n)
            for k, v in val.items():
                history.setdefault(f"val_{k}", []).append(v)
            if not math.isfinite(val["loss"]):
                raise InputError(
                    f"{description}: the validation loss became {val['loss']} at epoch {epoch}; "
                    "lower the learning rate or check the data for extreme values"
                )
            if val["loss"] < best_val:
                best_val, best_epoch, best = val["loss"], epoch, val
                best_state = copy.deepcopy(net.state_dict())
            step(f"train {sums['loss'] / n:.4g}  val {val['loss']:.4g}  best {best_val:.4g} @{best_epoch}")
            if patience is not None and epoch - best_epoch >= patience:
                break
    return TrainResult(
        best_state=best_state,
        best_epoch=best_epoch,
        best=best,
        epochs_run=epoch,
        history=history,
        stopped_early=epoch < epochs,
    )


def balanced_weights(y: np.ndarray, power: float = 1.0, bins: int = 20) -> np.ndarray:
    """Per-example weights ``density(y)^-power`` from a ``bins``-bin histogram of ``y``.

    ``power = 1`` makes every occupied bin equally likely (flat in ``y``); ``0`` gives
    equal weights. Used for property-balanced minibatches when ``y`` is skewed.
    """
    y = np.asarray(y, dtype=np.float64)
    edges = np.linspace(y.min(), y.max(), bins + 1)
    which = np.clip(np.searchsorted(edges, y, side="right") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    w = counts[which] ** -float(power)
    return w / w.sum()


ACTIVATIONS: dict[str, Callable[[], torch.nn.Module]] = {
    "elu": torch.nn.ELU,
    "relu": torch.nn.ReLU,
    "silu": torch.nn.SiLU,
    "tanh": torch.nn.Tanh,
}
"""Activation functions a model's ``activation`` parameter may name."""


def mlp(n_in: int, hidden: int, layers: int, n_out: int, activation: str = "elu") -> torch.nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ``activation``, then a linear output."""
    mods: list[torch.nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [torch.nn.Linear(width, hidden), ACTIVATIONS[activation]()]
        width = hidden
    mods.append(torch.nn.Linear(width, n_out))
    return torch.nn.Sequential(*mods)


def seeded_init(seed: int | None, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """Build a network with its weights drawn from ``seed``, leaving torch's global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        return build()


def fraction(value: Any) -> str | None:
    """Parameter check: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        return "must be a number in [0, 1)"
    return None


def torch_dtype(name: str) -> torch.dtype:
    """``"float32"`` or ``"float64"`` -> the torch dtype."""
    return {"float32": torch.float32, "float64": torch.float64}[name]
