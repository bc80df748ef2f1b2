"""A feed-forward surrogate y ≈ f(R) that scores fingerprints (the paper's Table 1).

It predicts the property of generated fingerprints before reconstruction, and of
reconstructed structures after. Defaults are the paper's: 5 hidden layers of width 256,
Adam lr 5e-4, batch 256, 2,000 epochs; features scaled as for the generator; an 80:20
train/validation split picks the best checkpoint, and a further ``test_fraction`` of the
data, never seen in training or checkpoint choice, gives the held-out MAE that
:meth:`Surrogate.fit` reports.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from invfp.components import Component, Param, non_negative, positive, positive_int
from invfp.errors import InputError
from invfp.models.network import ScaledNetworkModel
from invfp.models.scaling import METHODS
from invfp.models.training import (
    ACTIVATIONS,
    check_training_data,
    fraction,
    mlp,
    seeded_init,
    split_indices,
    train,
)


class Surrogate(ScaledNetworkModel, Component):
    """Feed-forward regression of a scalar property from a fingerprint."""

    kind = "surrogate"
    name = "surrogate"
    description = "Feed-forward property model y = f(R) (the paper's surrogate)."
    parameters = {
        "hidden": Param(256, "Width of each hidden layer.", check=positive_int),
        "layers": Param(5, "Hidden layers.", check=positive_int),
        "lr": Param(5e-4, "Adam learning rate.", check=positive),
        "epochs": Param(2000, "Maximum training epochs.", check=positive_int),
        "batch_size": Param(256, "Mini-batch size.", check=positive_int),
        "val_fraction": Param(0.2, "Share held out for checkpoint choice (0: use the training loss).", check=fraction),
        "test_fraction": Param(0.1, "Share held out for the reported MAE (0: none).", check=fraction),
        "patience": Param(None, "Stop after this many epochs without a better validation loss (None: never).",
                          check=positive_int),
        "weight_decay": Param(0.0, "Adam weight decay.", check=non_negative),
        "scaling": Param("standard", "Per-feature scaling fitted on the training data.", choices=METHODS),
        "activation": Param("elu", "Hidden-layer activation.", choices=tuple(ACTIVATIONS)),
        "dtype": Param("float32", "Floating-point type of the network.", choices=("float32", "float64")),
    }

    def __init__(self, **params: Any) -> None:
        self.params = self.resolve_params(params)
        self._init_state()

    def _build(self, dim: int, seed: int | None) -> torch.nn.Module:
        p = self.params
        net = seeded_init(seed, lambda: mlp(dim, p["hidden"], p["layers"], 1, p["activation"]))
        return net.to(device=self.device, dtype=self.dtype)

    @staticmethod
    def _loss(net: torch.nn.Module, batch: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
        x, y = batch
        err = net(x)[:, 0] - y
        return {"loss": (err**2).mean(), "mae_scaled": err.abs().mean()}

    def fit(
        self,
        R: np.ndarray,
        y: np.ndarray,
        *,
        seed: int | None = None,
        progress: bool = False,
        device: Any = None,
    ) -> dict[str, Any]:
        """Train on raw fingerprints ``R`` ``[n, D]`` and properties ``y`` ``[n]``.

        Returns:
            A JSON-serialisable report with ``val_mae`` (on the checkpoint-choice split)
            and ``test_mae`` / ``test_rmse`` (on the held-out split, property units;
            ``None`` when ``test_fraction`` is 0) beside ``test_mae_of_mean`` (the MAE of
            predicting the training mean, the baseline to beat), sizes, best epoch and
            the per-epoch ``history``.

        Raises:
            InputError: malformed data or NaN/inf values.
        """
        R, y = check_training_data(R, y)
        p = self.params
        start = time.perf_counter()
        train_idx, val_idx, test_idx = split_indices(len(y), [p["val_fraction"], p["test_fraction"]], seed)
        has_val = val_idx.size > 0
        self._prepare(R, y, train_idx, device)
        self.net = self._build(self.dimension, seed)  # type: ignore[arg-type]
        x, t = self._tensors(R, y)
        train_data = (x[train_idx], t[train_idx])
        val_data = (x[val_idx], t[val_idx]) if has_val else train_data
        result = train(
            self.net, self._loss, train_data, val_data,
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], seed=seed,
            patience=p["patience"], weight_decay=p["weight_decay"], progress=progress, description="surrogate",
        )
        self.net.load_state_dict(result.best_state)
        self.net.eval()
        val_err = self.predict(R[val_idx if has_val else train_idx]) - y[val_idx if has_val else train_idx]
        test_err = self.predict(R[test_idx]) - y[test_idx] if test_idx.size else None
        report = {
            "kind": self.name,
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "n_test": int(test_idx.size),
            "dimension": self.dimension,
            "device": str(self.device),
            "val_mae": float(np.abs(val_err).mean()),
            "test_mae": None if test_err is None else float(np.abs(test_err).mean()),
            "test_rmse": None if test_err is None else float(np.sqrt((test_err**2).mean())),
            "test_mae_of_mean": None if test_err is None else float(np.abs(y[test_idx] - y[train_idx].mean()).mean()),
            **result.report(),
            "seconds": time.perf_counter() - start,
        }
        self.training_summary = {k: v for k, v in report.items() if k != "history"}
        return report

    def predict(self, R: np.ndarray, *, batch_size: int = 65536) -> np.ndarray:
        """Predicted property ``[n]`` (float64, property units) for raw fingerprints ``R`` ``[n, D]``.

        Raises:
            InputError: wrong number of features or non-finite values.
        """
        net = self._require_fitted()
        R = np.asarray(R, dtype=np.float64)
        if R.ndim != 2 or R.shape[1] != self.dimension:
            raise InputError(
                f"the surrogate expects fingerprints of shape [n, {self.dimension}], got {R.shape}; "
                "were they made with the same representation?"
            )
        if not np.all(np.isfinite(R)):
            raise InputError("fingerprints to score contain NaN or infinite values")
        out = [np.zeros(0)]
        with torch.no_grad():
            for start in range(0, R.shape[0], batch_size):
                (x,) = self._tensors(R[start : start + batch_size])
                out.append(net(x)[:, 0].cpu().double().numpy())
        return self.y_scaler.inverse_transform(np.concatenate(out))  # type: ignore[union-attr]
