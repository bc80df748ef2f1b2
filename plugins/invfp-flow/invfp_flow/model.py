"""A conditional normalizing flow p(R | y): RealNVP affine couplings conditioned on y.

Fingerprints are scaled per feature (:class:`invfp.models.scaling.FeatureScaler`), then
projected on their k leading principal components (those holding ``variance`` of the
training variance, at most n - 1) and whitened. The flow models those k values u:
fingerprint features are strongly correlated (Pt10 ACSF: D = 380 with n = 100-300
training structures), and a flow on all D directions learns a density collapsed onto
the data's subspace whose samples leave it. Each coupling layer keeps a fixed random
half of u, and shifts and scales the other half by an MLP of (kept half, standardized
y)::

    x' = m * x + (1 - m) * (x * exp(s) + t),   (s, t) = MLP(m * x, y),  s = 2 tanh(raw / 2)

so log p(u | y) = log N(f(u; y); 0, I) + sum_layers sum (1 - m) s, exact and cheap both
ways. The last layer of every MLP starts at zero: the untrained flow is the identity.
Training maximises the likelihood with invfp's shared loop (best checkpoint by
held-out NLL); sampling draws z ~ N(0, temperature^2 I), inverts the couplings and maps
u back to raw-scale fingerprints (constant features come back exactly).
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


def _unit_interval(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        return "must be a number in (0, 1]"
    return None


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
    """Couplings on the whitened principal components of scaled fingerprints ``[n, D]``.

    ``center`` ``[D]``, ``basis`` ``[k, D]`` (orthonormal rows) and ``std`` ``[k]`` are
    buffers filled by :meth:`ConditionalFlow.fit` (and saved with the weights).
    ``log_prob`` takes scaled fingerprints; ``inverse`` returns them.
    """

    def __init__(self, dim: int, k: int, n_layers: int, hidden: int, hidden_layers: int, activation: str) -> None:
        super().__init__()
        self.register_buffer("center", torch.zeros(dim))
        self.register_buffer("basis", torch.zeros(k, dim))
        self.register_buffer("std", torch.ones(k))
        gen = torch.Generator().manual_seed(0)
        layers, last = [], torch.zeros(k)
        for i in range(n_layers):
            mask = torch.zeros(k)
            if k > 1:
                # a random half, then its complement, so every component is transformed
                if i % 2 == 0:
                    mask[torch.randperm(k, generator=gen)[: k // 2]] = 1.0
                    last = mask
                else:
                    mask = 1.0 - last
            layers.append(_Coupling(mask, hidden, hidden_layers, activation))
        self.layers = torch.nn.ModuleList(layers)

    @property
    def k(self) -> int:
        """Number of modelled components."""
        return int(self.std.shape[0])

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(u | y) per row of the whitened components u of ``x`` (nats)."""
        u = ((x - self.center) @ self.basis.T) / self.std
        logdet = torch.zeros(u.shape[0], dtype=u.dtype, device=u.device)
        for layer in self.layers:
            u, ld = layer(u, y)
            logdet = logdet + ld
        return -0.5 * (u * u).sum(-1) - 0.5 * u.shape[-1] * _LOG_2PI + logdet

    def inverse(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Latent ``z`` ``[n, k]`` to scaled fingerprints ``[n, D]`` given ``y``."""
        for layer in reversed(self.layers):
            z = layer.inverse(z, y)
        return (z * self.std) @ self.basis + self.center


def _nll_loss(net: torch.nn.Module, batch: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    x, y = batch
    # per component, so that the loss scale does not grow with k
    nll = -net.log_prob(x, y).mean() / net.k  # type: ignore[operator,union-attr]
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
        "variance": Param(
            0.999, "Share of the (scaled) feature variance kept as principal components for the flow.",
            check=_unit_interval,
        ),
        "temperature": Param(1.0, "Latent standard deviation when sampling (< 1: more typical samples).",
                             check=positive),
        "scaling": Param("standard", "Feature scaling before the flow.", choices=("standard", "minmax")),
        "dtype": Param("float32", "Computation dtype.", choices=("float32", "float64")),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._init_state()

    def _build(self, dim: int, seed: int | None) -> FlowNet:
        # fit() and ScaledNetworkModel.load() both set training_summary before building
        k = int(self.training_summary["components"])
        p = self.params
        net = seeded_init(
            seed, lambda: FlowNet(dim, k, p["n_layers"], p["hidden"], p["hidden_layers"], p["activation"])
        )
        return net.to(device=self.device, dtype=self.dtype)  # type: ignore[return-value]

    def _principal_components(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Center, basis ``[k, D]`` and std ``[k]`` of scaled training fingerprints ``X``.

        k is the fewest components holding ``variance`` of the total, at most n - 1
        (more directions than samples have no density to learn).
        """
        center = X.mean(axis=0)
        _, sv, vt = np.linalg.svd(X - center, full_matrices=False)
        var = sv**2 / max(X.shape[0] - 1, 1)
        total = var.sum()
        if not total > 0:
            raise InputError("every fingerprint feature is constant over the training data; nothing to learn")
        k = int(np.searchsorted(np.cumsum(var) / total, self.params["variance"] - 1e-12) + 1)
        k = max(1, min(k, int((var > total * 1e-12).sum()), X.shape[0] - 1))
        return center, vt[:k], np.sqrt(var[:k])

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
            A JSON-serialisable report: ``best_val_loss`` (held-out NLL per
            component, whitened principal components, nats), ``best_epoch``,
            ``epochs_run``, ``stopped_early``, sizes, ``components`` (k), seconds and
            the ``history``.

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
        x, t = self._tensors(R, y)
        center, basis, std = self._principal_components(x[train_idx].double().cpu().numpy())
        self.training_summary = {"components": int(std.shape[0])}
        net = self._build(self.dimension, seed)  # type: ignore[arg-type]
        for name, value in (("center", center), ("basis", basis), ("std", std)):
            getattr(net, name).copy_(torch.as_tensor(value))
        self.net = net
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
            "components": net.k,
            "device": str(self.device),
            **result.report(),
            "seconds": time.perf_counter() - start,
        }
        self.training_summary = {k: v for k, v in report.items() if k != "history"}
        return report

    def nll(self, R: np.ndarray, y: np.ndarray) -> float:
        """Mean negative log-likelihood per component (whitened principal components, nats) of ``R`` given ``y``."""
        net = self._require_fitted()
        R, y = check_training_data(R, y, min_samples=1)
        if R.shape[1] != self.dimension:
            raise InputError(f"the flow was fitted on D={self.dimension} features, got D={R.shape[1]}")
        x, t = self._tensors(R, y)
        with torch.no_grad():
            return float(-net.log_prob(x, t[:, None]).mean() / net.k)  # type: ignore[operator]

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
        z = torch.randn((int(n), net.k), generator=gen, dtype=self.dtype)  # type: ignore[arg-type]
        z = z * self.params["temperature"]
        y_scaled = float(self.y_scaler.transform(value))  # type: ignore[union-attr]
        out = []
        with torch.no_grad():
            for start in range(0, int(n), 65536):
                zc = z[start : start + 65536].to(self.device)
                yc = torch.full((zc.shape[0], 1), y_scaled, dtype=self.dtype, device=self.device)
                out.append(net.inverse(zc, yc).cpu().double().numpy())  # type: ignore[operator]
        return self.scaler.inverse_transform(np.concatenate(out))  # type: ignore[union-attr]
