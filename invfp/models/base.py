"""The interface every generative-model plugin implements.

A generative model learns p(R | y) from fingerprints ``R`` ``[n, D]`` and a scalar
property ``y`` ``[n]``, and samples raw-scale fingerprints (the scale that
reconstruction needs) for a target property. Nothing here assumes a VAE.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from invfp.components import Component
from invfp.errors import InputError


class TargetOutOfRangeWarning(UserWarning):
    """A target property lies outside the range of the training data (extrapolation)."""


def check_target(y_target: Any, y_range: tuple[float, float] | None, *, units: str = "") -> float:
    """Validate a target property value; warn when it lies outside ``y_range``.

    Returns the target as a float. The warning says by how much the target lies
    outside the training range, since a conditional model extrapolates poorly.

    Raises:
        InputError: the target is not a finite number.
    """
    try:
        value = float(y_target)
    except (TypeError, ValueError) as exc:
        raise InputError(f"target must be a number, got {y_target!r}") from exc
    if not math.isfinite(value):
        raise InputError(f"target must be a finite number, got {value}")
    if y_range is not None:
        lo, hi = float(y_range[0]), float(y_range[1])
        unit = f" {units}" if units else ""
        if value < lo or value > hi:
            side, gap = ("below", lo - value) if value < lo else ("above", value - hi)
            warnings.warn(
                f"target {value:g}{unit} is {gap:.4g}{unit} {side} the training range "
                f"[{lo:g}, {hi:g}]{unit}; samples are an extrapolation",
                TargetOutOfRangeWarning,
                stacklevel=3,
            )
    return value


class GenerativeModel(Component):
    """Base class of generative-model plugins.

    After :meth:`fit` or :meth:`load`, a model sets ``dimension`` (D) and ``y_range``
    (the training property range, for :func:`check_target`). Reusable pieces for
    implementations: :mod:`invfp.models.scaling` (feature scaler),
    :mod:`invfp.models.training` (split, training loop with best checkpoint) and
    :mod:`invfp.models.io` (safe, atomic save/load of weights + ``config.json``).
    """

    kind: ClassVar[str] = "model"
    dimension: int | None = None
    """Fingerprint dimension D once fitted."""
    y_range: tuple[float, float] | None = None
    """Smallest and largest training property value once fitted."""

    def __init__(self, **params: Any) -> None:
        self.params = self.resolve_params(params)

    def fit(
        self,
        R: np.ndarray,
        y: np.ndarray,
        *,
        seed: int | None = None,
        progress: bool = False,
        device: Any = None,
    ) -> dict[str, Any]:
        """Train on fingerprints ``R`` ``[n, D]`` and properties ``y`` ``[n]``.

        Returns a JSON-serialisable report (losses, epochs, validation metrics).
        """
        raise NotImplementedError

    def sample(self, y_target: float, n: int, *, seed: int | None = None) -> np.ndarray:
        """``n`` raw-scale fingerprints ``[n, D]`` for the target property."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> None:
        """Write weights (no pickle) and a JSON config into ``directory``."""
        raise NotImplementedError

    @classmethod
    def load(cls, directory: str | Path) -> GenerativeModel:
        """Rebuild a fitted model saved by :meth:`save`; never unpickles."""
        raise NotImplementedError
