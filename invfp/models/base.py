"""The interface every generative-model plugin implements.

A generative model learns p(R | y) from fingerprints ``R`` ``[n, D]`` and a scalar
property ``y`` ``[n]``, and samples raw-scale fingerprints (the scale that
reconstruction needs) for a target property. Nothing here assumes a VAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from invfp.components import Component


class GenerativeModel(Component):
    """Base class of generative-model plugins."""

    kind: ClassVar[str] = "model"

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
