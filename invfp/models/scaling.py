"""Per-feature scaling fitted on training data, stored with a model as plain JSON.

Raw fingerprints span orders of magnitude (an ACSF G5 term with zeta = 64 is ~1e-6
where a G2 term is ~10), so models learn in a scaled space and map samples back to raw
scale with :meth:`FeatureScaler.inverse_transform`. Any model plugin (the built-in
cVAE, the surrogate, a normalizing flow) can reuse this class::

    scaler = FeatureScaler("standard").fit(R_train)
    Z = scaler.transform(R)                  # what the network sees
    R_raw = scaler.inverse_transform(Z_gen)  # what reconstruction needs
    config["scaler"] = scaler.to_dict()      # JSON; FeatureScaler.from_dict(...) restores it

Features that are constant on the training data (up to float noise) are flagged: they
map to 0 and are restored exactly to their training value, so a model's small error on
them never turns into a raw-scale error.

Near-constant features are not blown up to unit spread: each feature's scale is at least
``floor`` (default 1 %) of the root-mean-square scale of all features. Without that
floor, the ~1e-7-spread columns of an ACSF fingerprint (large-eta G2 terms at large
R_s, zeta = 64 G5 terms) get the same weight as the informative ones; measured on the
300 released Pt10 fingerprints, a surrogate then overfits at once (held-out MAE 0.39
eV/atom, predicting the mean: 0.41) where with the floor it reaches 0.11-0.14.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from invfp.errors import ConfigError, InputError

METHODS: tuple[str, ...] = ("standard", "minmax", "none")
"""``standard``: (x - mean) / std. ``minmax``: (x - min) / (max - min), into [0, 1] as the
paper's code does. ``none``: identity (constant features are still restored exactly)."""

# A feature whose spread is below this fraction of the data's largest magnitude is
# float noise around a constant (the released Pt10 fingerprints have columns with
# std ~1e-17 beside columns of std ~3).
_CONSTANT_RTOL = 1e-10


class FeatureScaler:
    """Per-column affine scaling ``z = (x - center) / scale`` with exact constant columns.

    Args:
        method: one of :data:`METHODS`.
        floor: smallest per-feature scale, as a fraction of the root-mean-square scale
            over all features (0: none, plain per-feature scaling).
    """

    def __init__(self, method: str = "standard", floor: float = 0.01) -> None:
        if method not in METHODS:
            raise ConfigError(f"unknown scaling {method!r}; choose one of {', '.join(METHODS)}")
        if not 0 <= floor <= 1:
            raise ConfigError(f"scaling floor must be in [0, 1], got {floor!r}")
        self.method = method
        self.floor = float(floor)
        self.center: np.ndarray | None = None
        self.scale: np.ndarray | None = None
        self.constant: np.ndarray | None = None

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` (or :meth:`from_dict`) has set the statistics."""
        return self.center is not None

    @property
    def dim(self) -> int:
        """Number of features D (0 before fitting)."""
        return 0 if self.center is None else int(self.center.shape[0])

    def fit(self, X: np.ndarray) -> FeatureScaler:
        """Compute per-feature statistics from ``X`` ``[n, D]`` (finite values); returns self."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2 or X.shape[0] < 1:
            raise InputError(f"scaler needs a 2-D array [n, D] with n >= 1, got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise InputError("scaler input has NaN or infinite values; clean the data first")
        lo, hi = X.min(axis=0), X.max(axis=0)
        magnitude = max(float(np.abs(X).max()), np.finfo(np.float64).tiny)
        constant = (hi - lo) <= _CONSTANT_RTOL * magnitude
        if self.method == "standard":
            center, scale = X.mean(axis=0), X.std(axis=0)
        elif self.method == "minmax":
            center, scale = lo, hi - lo
        else:
            center, scale = np.zeros(X.shape[1]), np.ones(X.shape[1])
        if self.method != "none" and not constant.all():
            rms = float(np.sqrt(np.mean(scale[~constant] ** 2)))
            scale = np.maximum(scale, self.floor * rms)
        center = np.where(constant, X.mean(axis=0), center)
        scale = np.where(constant | (scale <= 0), 1.0, scale)
        self.center, self.scale, self.constant = center, scale, constant
        return self

    def _check(self, X: np.ndarray) -> np.ndarray:
        if self.center is None:
            raise InputError("the scaler is not fitted; call fit() first")
        X = np.asarray(X, dtype=np.float64)
        squeeze = X.ndim == 1 and self.dim != 1
        X2 = X[None] if squeeze else (X[:, None] if X.ndim == 1 else X)
        if X2.ndim != 2 or X2.shape[1] != self.dim:
            raise InputError(f"expected {self.dim} features per row, got an array of shape {X.shape}")
        return X2

    def transform(self, X: np.ndarray) -> np.ndarray:
        """Raw ``[n, D]`` -> scaled ``[n, D]`` (float64); constant features become 0."""
        X2 = self._check(X)
        Z = (X2 - self.center) / self.scale
        Z[:, self.constant] = 0.0
        return Z

    def inverse_transform(self, Z: np.ndarray) -> np.ndarray:
        """Scaled ``[n, D]`` -> raw ``[n, D]`` (float64); constant features get their training value."""
        Z2 = self._check(Z)
        X = Z2 * self.scale + self.center
        X[:, self.constant] = self.center[self.constant]
        return X

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable statistics (floats round-trip exactly through ``json``)."""
        if self.center is None or self.scale is None or self.constant is None:
            raise InputError("the scaler is not fitted; nothing to save")
        return {
            "method": self.method,
            "floor": self.floor,
            "center": self.center.tolist(),
            "scale": self.scale.tolist(),
            "constant": self.constant.astype(int).tolist(),
        }

    @classmethod
    def from_dict(cls, data: Any) -> FeatureScaler:
        """Rebuild from :meth:`to_dict` output; malformed data raises ``InputError``."""
        try:
            scaler = cls(data["method"], float(data["floor"]))
            center = np.asarray(data["center"], dtype=np.float64)
            scale = np.asarray(data["scale"], dtype=np.float64)
            constant = np.asarray(data["constant"], dtype=np.int64).astype(bool)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise InputError(f"malformed scaler statistics: {type(exc).__name__}: {exc}") from exc
        shapes = {center.shape, scale.shape, constant.shape}
        if len(shapes) != 1 or center.ndim != 1:
            raise InputError("malformed scaler statistics: center, scale and constant differ in shape")
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(scale)) and np.all(scale > 0)):
            raise InputError("malformed scaler statistics: non-finite center or non-positive scale")
        scaler.center, scaler.scale, scaler.constant = center, scale, constant
        return scaler


class PropertyScaler:
    """Standardisation of a scalar property y, with the training range kept for warnings."""

    def __init__(self, center: float = 0.0, scale: float = 1.0, y_range: tuple[float, float] | None = None) -> None:
        self.center = float(center)
        self.scale = float(scale)
        self.y_range = y_range

    @classmethod
    def fit(cls, y_train: np.ndarray, y_all: np.ndarray | None = None) -> PropertyScaler:
        """Mean and std of ``y_train``; the range of ``y_all`` (default ``y_train``)."""
        y_train = np.asarray(y_train, dtype=np.float64)
        y_all = y_train if y_all is None else np.asarray(y_all, dtype=np.float64)
        return cls(float(y_train.mean()), float(y_train.std()) or 1.0, (float(y_all.min()), float(y_all.max())))

    def transform(self, y: Any) -> np.ndarray:
        """Raw property -> standardised."""
        return (np.asarray(y, dtype=np.float64) - self.center) / self.scale

    def inverse_transform(self, t: Any) -> np.ndarray:
        """Standardised -> raw property."""
        return np.asarray(t, dtype=np.float64) * self.scale + self.center

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable statistics."""
        return {"center": self.center, "scale": self.scale, "y_range": list(self.y_range or ())}

    @classmethod
    def from_dict(cls, data: Any) -> PropertyScaler:
        """Rebuild from :meth:`to_dict` output; malformed data raises ``InputError``."""
        try:
            lo, hi = data["y_range"]
            out = cls(float(data["center"]), float(data["scale"]), (float(lo), float(hi)))
        except (KeyError, TypeError, ValueError) as exc:
            raise InputError(f"malformed property statistics: {type(exc).__name__}: {exc}") from exc
        if not (np.isfinite(out.center) and np.isfinite(out.scale) and out.scale > 0):
            raise InputError("malformed property statistics: non-finite center or non-positive scale")
        return out
