"""A mixin for models that are one torch network trained on scaled fingerprints.

It holds the fitted state every such model needs (network, feature scaler, property
scaler, dimension, device, training summary) and implements ``to``, ``save`` and
``load`` on top of :mod:`invfp.models.io`, so a model defines only ``_build`` (the
network for a dimension D), its loss and ``fit`` / ``sample`` / ``predict``. The
built-in :class:`~invfp.models.cvae.CVAE` and :class:`~invfp.models.surrogate.Surrogate`
use it; a model plugin may too::

    class MyFlow(ScaledNetworkModel, GenerativeModel):
        name = "my-flow"
        def _build(self, dim, seed): ...
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from invfp.errors import InputError, ModelLoadError
from invfp.models import io
from invfp.models.scaling import FeatureScaler, PropertyScaler
from invfp.models.training import torch_dtype
from invfp.utils import resolve_device


class ScaledNetworkModel:
    """Fitted state, device handling and safe save/load for a single-network model.

    Subclasses set ``name`` (the kind saved in ``config.json``), keep their validated
    parameters in ``self.params`` (with ``"dtype"`` and ``"scaling"`` among them) and
    implement :meth:`_build`.
    """

    name: ClassVar[str]
    params: dict[str, Any]
    legacy_params: ClassVar[dict[str, Any]] = {}
    """Values for parameters added after a model was saved: :meth:`load` fills in
    these (not the current defaults) where an older ``config.json`` lacks them."""

    def _init_state(self) -> None:
        self.net: torch.nn.Module | None = None
        self.scaler: FeatureScaler | None = None
        self.y_scaler: PropertyScaler | None = None
        self.dimension: int | None = None
        self.device = torch.device("cpu")
        self.training_summary: dict[str, Any] = {}

    def _build(self, dim: int, seed: int | None) -> torch.nn.Module:
        """A fresh network for fingerprints of dimension ``dim`` (weights drawn from ``seed``)."""
        raise NotImplementedError

    @property
    def fitted(self) -> bool:
        """Whether the model has been fitted or loaded."""
        return self.net is not None

    @property
    def y_range(self) -> tuple[float, float] | None:  # type: ignore[override]
        """Smallest and largest training property value (``None`` before fitting)."""
        return None if self.y_scaler is None else self.y_scaler.y_range

    @property
    def dtype(self) -> torch.dtype:
        """The network's floating-point type."""
        return torch_dtype(self.params["dtype"])

    def _prepare(self, R: np.ndarray, y: np.ndarray, train_idx: np.ndarray, device: Any) -> None:
        """Fit the scalers on the training rows, set the device, dimension and a new network."""
        self.device = resolve_device(device)
        self.scaler = FeatureScaler(self.params["scaling"]).fit(R[train_idx])
        self.y_scaler = PropertyScaler.fit(y[train_idx], y)
        self.dimension = int(R.shape[1])

    def _tensors(self, R: np.ndarray, y: np.ndarray | None = None) -> tuple[torch.Tensor, ...]:
        """Scaled ``(x,)`` or ``(x, y)`` tensors on the model's device and dtype."""
        assert self.scaler is not None and self.y_scaler is not None
        x = torch.as_tensor(self.scaler.transform(R), dtype=self.dtype, device=self.device)
        if y is None:
            return (x,)
        return x, torch.as_tensor(self.y_scaler.transform(y), dtype=self.dtype, device=self.device)

    def _require_fitted(self) -> torch.nn.Module:
        if self.net is None or self.scaler is None or self.y_scaler is None:
            raise InputError(
                f"the {self.name} model is not fitted; call fit() or {type(self).__name__}.load(directory) first"
            )
        return self.net

    def to(self, device: Any) -> Any:
        """Move the network to ``device`` (``"cpu"``, ``"cuda"``, ``"auto"``); returns self."""
        self.device = resolve_device(device)
        if self.net is not None:
            self.net.to(self.device)
        return self

    def save(self, directory: str | Path) -> None:
        """Write ``config.json`` (parameters, scalers, D) and safetensors weights, atomically."""
        net = self._require_fitted()
        config = {
            "params": self.params,
            "dimension": self.dimension,
            "scaler": self.scaler.to_dict(),  # type: ignore[union-attr]
            "y_scaler": self.y_scaler.to_dict(),  # type: ignore[union-attr]
            "training": self.training_summary,
        }
        io.save_model_dir(directory, kind=self.name, config=config, tensors=net.state_dict())

    @classmethod
    def load(cls, directory: str | Path, *, device: Any = None) -> Any:
        """Rebuild a model saved by :meth:`save` (on the CPU unless ``device`` says otherwise).

        Never unpickles: weights come from safetensors and are checked by name, shape
        and dtype against the network the saved parameters describe.

        Raises:
            ModelLoadError: missing, incomplete or tampered directory, or another kind.
        """
        config, tensors = io.load_model_dir(directory, kind=cls.name)
        try:
            model = cls(**{**cls.legacy_params, **config["params"]})
            model.dimension = int(config["dimension"])
            model.scaler = FeatureScaler.from_dict(config["scaler"])
            model.y_scaler = PropertyScaler.from_dict(config["y_scaler"])
            model.training_summary = dict(config.get("training", {}))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(
                f"{directory}: config.json is incomplete or invalid ({type(exc).__name__}: {exc}); train it again"
            ) from exc
        if model.scaler.dim != model.dimension or model.dimension < 1:
            raise ModelLoadError(
                f"{directory}: the scaler has {model.scaler.dim} features but config.json says D={model.dimension}"
            )
        model.device = resolve_device(device) if device is not None else torch.device("cpu")
        net = model._build(model.dimension, seed=0)
        io.load_state(net, tensors, directory)
        net.eval()
        model.net = net
        return model
