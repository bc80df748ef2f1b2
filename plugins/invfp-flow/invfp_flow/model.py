"""A conditional normalizing flow p(R | y): RealNVP affine couplings conditioned on y.

The flow works on standardized fingerprints (:class:`invfp.models.scaling.FeatureScaler`).
Features that are constant on the training data are left out of the flow (a zero-
variance dimension has no density) and restored exactly by the scaler. Each coupling
layer keeps a fixed random half of the features, and shifts and scales the other half
by an MLP of (kept half, standardized y)::

    x' = m * x + (1 - m) * (x * exp(s) + t),   (s, t) = MLP(m * x, y),  s = 2 tanh(raw / 2)

so log p(x | y) = log N(f(x; y); 0, I) + sum_layers sum (1 - m) s, exact and cheap both
ways. The last layer of every MLP starts at zero: the untrained flow is the identity.
Training maximises the likelihood with invfp's shared loop (best checkpoint by
held-out NLL); sampling draws z ~ N(0, temperature^2 I) and inverts the couplings.
Scalers, device handling and the safetensors + config.json save/load come from
:class:`invfp.models.network.ScaledNetworkModel`, as for the built-in cVAE.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import numpy as np
import torch

from invfp.components import Param, non_negative, positive, positive_int
from invfp.errors import InputError
from invfp.models.base import GenerativeModel, check_target
from invfp.models.network import ScaledNetworkModel
from invfp.models.training import (
    ACTIVATIONS,
    check_training_data,
    fraction,
    mlp,
    seeded_init,
    split_indices,
    train,
)
from invfp.utils import make_generator

_LOG_2PI = float(np.log(2 * np.pi))


class _Coupling(torch.nn.Module):
    """One affine coupling layer with a fixed binary mask and y as context."""

    def __init__(self, mask: torch.Tensor, hidden: int, layers: int, activation: str) -> None:
        super().__init__()
        self.register_buffer("mask", mask)
        dim = mask.shape[0]
        self.net = mlp(dim + 1, hidden, layers, 2 * dim, activation)
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def _shift_scale(self, kept: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw_s, t = self.net(torch.cat([kept, y], dim=-1)).chunk(2, dim=-1)
        free = 1 - self.mask
        # a bounded log-scale keeps exp(s) from overflowing early in training
        return 2 * torch.tanh(raw_s / 2) * free, t * free

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s, t = self._shift_scale(x * self.mask, y)
        return x * torch.exp(s) + t, s.sum(-1)

    def inverse(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s, t = self._shift_scale(z * self.mask, y)
        return (z - t) * torch.exp(-s)


class FlowNet(torch.nn.Module):
    """Couplings on the free (non-constant) features of a ``D``-dimensional fingerprint.

    ``log_prob`` takes scaled fingerprints ``[n, D]``; ``inverse`` returns them ``[n, D]``
    with the constant features at 0 (their scaled value).
    """

    def __init__(
        self, dim: int, free: torch.Tensor, n_layers: int, hidden: int, hidden_layers: int, activation: str
    ) -> None:
        super().__init__()
        self.dim = dim
        self.register_buffer("free", free)
        width = int(free.shape[0])
        gen = torch.Generator().manual_seed(0)
        layers, last = [], torch.zeros(width)
        for k in range(n_layers):
            mask = torch.zeros(width)
            if width > 1:
                # a random half, then its complement, so every feature is transformed
                if k % 2 == 0:
                    mask[torch.randperm(width, generator=gen)[: width // 2]] = 1.0
                    last = mask
                else:
                    mask = 1.0 - last
            layers.append(_Coupling(mask, hidden, hidden_layers, activation))
        self.layers = torch.nn.ModuleList(layers)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(x | y) per row, over the free features (nats)."""
        x = x[:, self.free]
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x, y)
            logdet = logdet + ld
        return -0.5 * (x * x).sum(-1) - 0.5 * x.shape[-1] * _LOG_2PI + logdet

    def inverse(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latent ``z`` ``[n, free]`` to scaled fingerprints ``[n, D]`` given ``y``."""
        for layer in reversed(self.layers):
            z = layer.inverse(z, y)
        out = torch.zeros(z.shape[0], self.dim, dtype=z.dtype, device=z.device)
        out[:, self.free] = z
        return out


def _nll_loss(net: torch.nn.Module, batch: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    x, y = batch
    # per free dimension, so that the loss scale does not grow with D
    nll = -net.log_prob(x, y).mean() / net.free.shape[0]  # type: ignore[operator,union-attr]
    return {"loss": nll}


class ConditionalFlow(ScaledNetworkModel, GenerativeModel):
    """Conditional RealNVP of fingerprints R given a scalar property y."""

    name: ClassVar[str] = "flow"
    description: ClassVar[str] = "Conditional normalizing flow (RealNVP affine couplings) of fingerprints given y."
    parameters: ClassVar[dict[str, Param]] = {
        "n_layers": Param(8, "Number of affine coupling layers.", check=positive_int),
        "hidden": Param(128, "Width of the coupling MLPs.", check=positive_int),
        "hidden_layers": Param(2, "Hidden layers per coupling MLP.", check=positive_int),
        "activation": Param("elu", "Activation of the coupling MLPs.", choices=tuple(ACTIVATIONS)),
        "epochs": Param(300, "Maximum training epochs.", check=positive_int),
        "batch_size": Param(64, "Mini-batch size.", check=positive_int),
        "lr": Param(1e-3, "Adam learning rate.", check=positive),
        "weight_decay": Param(0.0, "Adam weight decay.", check=non_negative),
        "val_fraction": Param(0.1, "Held-out fraction for the best checkpoint (0: use the training NLL).",
                              check=fraction),
        "patience": Param(50, "Stop after this many epochs without a better held-out NLL (None: never).",
                          check=positive_int),
        "temperature": Param(1.0, "Latent standard deviation when sampling (< 1: more typical samples).",
                             check=positive),
        "scaling": Param("standard", "Feature scaling before the flow.", choices=("standard", "minmax")),
        "dtype": Param("float32", "Computation dtype.", choices=("float32", "float64")),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._init_state()

    def _build(self, dim: int, seed: int | None) -> FlowNet:
        # the scaler is set before _build both in fit (_prepare) and in load
        assert self.scaler is not None and self.scaler.constant is not None
        free = torch.as_tensor(np.flatnonzero(~self.scaler.constant), dtype=torch.long)
        if free.numel() == 0:
            raise InputError("every fingerprint feature is constant over the training data; nothing to learn")
        p = self.params
        net = seeded_init(
            seed, lambda: FlowNet(dim, free, p["n_layers"], p["hidden"], p["hidden_layers"], p["activation"])
        )
        return net.to(device=self.device, dtype=self.dtype)  # type: ignore[return-value]

    def fit(
        self,
        R: np.ndarray,
        y: np.ndarray,
        *,
        seed: int | None = None,
        progress: bool = False,
        device: Any = None,
    ) -> dict[str, Any]:
        """Maximise the likelihood of ``R`` ``[n, D]`` given ``y`` ``[n]``.

        Returns:
            A JSON-serialisable report: ``best_val_loss`` (held-out NLL per free
            feature, scaled space, nats), ``best_epoch``, ``epochs_run``,
            ``stopped_early``, sizes, ``free_features``, seconds and the ``history``.

        Raises:
            InputError: malformed data, NaN/inf values, or only constant features.
        """
        R, y = check_training_data(R, y)
        p = self.params
        start = time.perf_counter()
        if p["val_fraction"] > 0:
            train_idx, val_idx = split_indices(len(y), [p["val_fraction"]], seed)
        else:  # no hold-out: the best checkpoint is chosen on the training data itself
            train_idx, val_idx = np.arange(len(y)), np.arange(0)
        self._prepare(R, y, train_idx, device)
        self.net = self._build(self.dimension, seed)  # type: ignore[arg-type]
        x, t = self._tensors(R, y)
        train_data = (x[train_idx], t[train_idx, None])
        val_data = (x[val_idx], t[val_idx, None]) if val_idx.size else train_data
        result = train(
            self.net, _nll_loss, train_data, val_data,
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], seed=seed,
            patience=p["patience"], weight_decay=p["weight_decay"], progress=progress, description="flow",
        )
        self.net.load_state_dict(result.best_state)
        self.net.eval()
        report = {
            "kind": self.name,
            "n_train": int(train_idx.size),
            "n_val": int(val_idx.size),
            "dimension": self.dimension,
            "free_features": int(self.net.free.shape[0]),
            "device": str(self.device),
            **result.report(),
            "seconds": time.perf_counter() - start,
        }
        self.training_summary = {k: v for k, v in report.items() if k != "history"}
        return report

    def nll(self, R: np.ndarray, y: np.ndarray) -> float:
        """Mean negative log-likelihood per free feature (scaled space, nats) of ``R`` given ``y``."""
        net = self._require_fitted()
        R, y = check_training_data(R, y, min_samples=1)
        if R.shape[1] != self.dimension:
            raise InputError(f"the flow was fitted on D={self.dimension} features, got D={R.shape[1]}")
        x, t = self._tensors(R, y)
        with torch.no_grad():
            return float(-net.log_prob(x, t[:, None]).mean() / net.free.shape[0])  # type: ignore[operator]

    def sample(self, y_target: float, n: int, *, seed: int | None = None) -> np.ndarray:
        """``n`` raw-scale fingerprints ``[n, D]`` (float64) for the property ``y_target``.

        The latent noise is drawn on the CPU from ``seed``, so a seed gives the same
        samples on every device (to float precision).
        """
        net = self._require_fitted()
        value = check_target(y_target, self.y_range)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"number of samples must be an integer >= 1, got {n!r}")
        gen = make_generator(seed, "cpu")
        z = torch.randn((int(n), int(net.free.shape[0])), generator=gen, dtype=self.dtype)
        z = z * self.params["temperature"]
        y_scaled = float(self.y_scaler.transform(value))  # type: ignore[union-attr]
        out = []
        with torch.no_grad():
            for start in range(0, int(n), 65536):
                zc = z[start : start + 65536].to(self.device)
                yc = torch.full((zc.shape[0], 1), y_scaled, dtype=self.dtype, device=self.device)
                out.append(net.inverse(zc, yc).cpu().double().numpy())  # type: ignore[operator]
        return self.scaler.inverse_transform(np.concatenate(out))  # type: ignore[union-attr]
