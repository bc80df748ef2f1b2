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
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from invfp.components import Param, non_negative, positive, positive_int
from invfp.errors import InputError, InvfpError, ModelLoadError
from invfp.models.base import GenerativeModel, check_target
from invfp.models.io import load_model_dir, load_state, save_model_dir
from invfp.models.scaling import FeatureScaler
from invfp.models.training import (
    ACTIVATIONS,
    check_training_data,
    fraction,
    mlp,
    seeded_init,
    split_indices,
    torch_dtype,
    train,
)
from invfp.utils import make_generator, resolve_device

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
    """A stack of conditional couplings: data ``x`` ``[n, d]`` <-> latent ``z`` ``[n, d]``."""

    def __init__(self, dim: int, n_layers: int, hidden: int, hidden_layers: int, activation: str) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        layers = []
        for k in range(n_layers):
            mask = torch.zeros(dim)
            if dim > 1:
                # alternate a random half with its complement so every feature is transformed
                if k % 2 == 0:
                    keep = torch.randperm(dim, generator=gen)[: dim // 2]
                    mask[keep] = 1.0
                    last = mask
                else:
                    mask = 1.0 - last
            layers.append(_Coupling(mask, hidden, hidden_layers, activation))
        self.layers = torch.nn.ModuleList(layers)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log p(x | y) per row."""
        logdet = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        for layer in self.layers:
            x, ld = layer(x, y)
            logdet = logdet + ld
        return -0.5 * (x * x).sum(-1) - 0.5 * x.shape[-1] * _LOG_2PI + logdet

    def inverse(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Map latent ``z`` to data space given ``y``."""
        for layer in reversed(self.layers):
            z = layer.inverse(z, y)
        return z


def _nll_loss(net: torch.nn.Module, batch: Any, gen: torch.Generator) -> dict[str, torch.Tensor]:
    x, y = batch
    # per-dimension NLL so that the loss scale does not grow with D
    nll = -net.log_prob(x, y).mean() / x.shape[-1]
    return {"loss": nll}


class ConditionalFlow(GenerativeModel):
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
        "val_fraction": Param(0.1, "Held-out fraction for the best checkpoint.", check=fraction),
        "patience": Param(50, "Stop after this many epochs without a better held-out NLL (None: never).",
                          check=positive_int),
        "temperature": Param(1.0, "Latent standard deviation when sampling (< 1: more typical samples).",
                             check=positive),
        "scaling": Param("standard", "Feature scaling before the flow.", choices=("standard", "minmax")),
        "dtype": Param("float32", "Computation dtype.", choices=("float32", "float64")),
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.net: FlowNet | None = None
        self.scaler: FeatureScaler | None = None
        self.y_center = 0.0
        self.y_scale = 1.0
        self.device = torch.device("cpu")

    # -- internals ----------------------------------------------------------------
    def _build(self, dim: int) -> FlowNet:
        p = self.params
        return FlowNet(dim, p["n_layers"], p["hidden"], p["hidden_layers"], p["activation"])

    def _require_fitted(self) -> tuple[FlowNet, FeatureScaler]:
        if self.net is None or self.scaler is None:
            raise InvfpError("the flow is not fitted; call fit() or load() first")
        return self.net, self.scaler

    def _tensors(self, R: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled, non-constant features and standardized y as tensors on the model's device."""
        _, scaler = self._require_fitted()
        assert scaler.constant is not None
        Z = scaler.transform(R)[:, ~scaler.constant]
        dtype = torch_dtype(self.params["dtype"])
        x = torch.as_tensor(Z, dtype=dtype, device=self.device)
        ys = torch.as_tensor((y - self.y_center) / self.y_scale, dtype=dtype, device=self.device)[:, None]
        return x, ys

    # -- the GenerativeModel interface ---------------------------------------------
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
            ``best_val_loss`` (held-out NLL per dimension, scaled features, nats),
            ``best_epoch``, ``epochs_run``, ``stopped_early``, ``history``, sizes and
            the wall time in seconds.
        """
        start = time.perf_counter()
        R, y = check_training_data(R, y)
        p = self.params
        self.device = resolve_device(device)
        self.scaler = FeatureScaler(p["scaling"]).fit(R)
        assert self.scaler.constant is not None
        free = int((~self.scaler.constant).sum())
        if free == 0:
            raise InputError("every fingerprint feature is constant over the training data; nothing to learn")
        self.y_center = float(y.mean())
        self.y_scale = float(y.std()) or 1.0
        self.y_range = (float(y.min()), float(y.max()))
        self.dimension = int(R.shape[1])
        dtype = torch_dtype(p["dtype"])
        self.net = seeded_init(seed, lambda: self._build(free)).to(self.device, dtype)  # type: ignore[assignment]
        if p["val_fraction"] > 0:
            tr, va = split_indices(R.shape[0], [p["val_fraction"]], seed)
        else:  # no hold-out: the best checkpoint is chosen on the training data itself
            tr = va = np.arange(R.shape[0])
        x, ys = self._tensors(R, y)
        result = train(
            self.net, _nll_loss, (x[tr], ys[tr]), (x[va], ys[va]),
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], seed=seed,
            patience=p["patience"], weight_decay=p["weight_decay"], progress=progress, description="flow",
        )
        self.net.load_state_dict(result.best_state)
        self.net.eval()
        return {
            **result.report(),
            "n_train": int(len(tr)),
            "n_val": int(len(va)) if p["val_fraction"] > 0 else 0,
            "free_features": free,
            "seconds": time.perf_counter() - start,
        }

    def nll(self, R: np.ndarray, y: np.ndarray) -> float:
        """Mean negative log-likelihood per modelled feature (scaled space, nats) of ``R`` given ``y``."""
        net, _ = self._require_fitted()
        R, y = check_training_data(R, y, min_samples=1)
        if R.shape[1] != self.dimension:
            raise InputError(f"the flow was fitted on D={self.dimension} features, got D={R.shape[1]}")
        x, ys = self._tensors(R, y)
        with torch.no_grad():
            return float(-net.log_prob(x, ys).mean() / x.shape[-1])

    def sample(self, y_target: float, n: int, *, seed: int | None = None) -> np.ndarray:
        """``n`` raw-scale fingerprints ``[n, D]`` (float64) for the target property."""
        net, scaler = self._require_fitted()
        assert scaler.constant is not None
        value = check_target(y_target, self.y_range)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise InputError(f"number of samples must be an integer >= 1, got {n!r}")
        dtype = torch_dtype(self.params["dtype"])
        gen = make_generator(seed, self.device)
        free = int((~scaler.constant).sum())
        z = torch.randn(int(n), free, generator=gen, device=self.device, dtype=dtype) * self.params["temperature"]
        ys = torch.full((int(n), 1), (value - self.y_center) / self.y_scale, device=self.device, dtype=dtype)
        with torch.no_grad():
            x = net.inverse(z, ys).cpu().numpy().astype(np.float64)
        Z = np.zeros((int(n), scaler.dim))
        Z[:, ~scaler.constant] = x
        return scaler.inverse_transform(Z)

    def save(self, directory: str | Path) -> None:
        """Write ``weights.safetensors`` and ``config.json`` (params, scaler, y scaling) atomically."""
        net, scaler = self._require_fitted()
        assert self.y_range is not None
        config = {
            "params": self.params,
            "dimension": self.dimension,
            "free_features": int((~scaler.constant).sum()) if scaler.constant is not None else 0,
            "scaler": scaler.to_dict(),
            "y_center": self.y_center,
            "y_scale": self.y_scale,
            "y_range": list(self.y_range),
        }
        save_model_dir(directory, kind=self.name, config=config, tensors=net.state_dict())

    @classmethod
    def load(cls, directory: str | Path) -> ConditionalFlow:
        """Rebuild a fitted flow saved by :meth:`save` (on the CPU); never unpickles."""
        config, tensors = load_model_dir(directory, kind=cls.name)
        try:
            model = cls(**config["params"])
            model.scaler = FeatureScaler.from_dict(config["scaler"])
            model.dimension = int(config["dimension"])
            model.y_center = float(config["y_center"])
            model.y_scale = float(config["y_scale"])
            model.y_range = (float(config["y_range"][0]), float(config["y_range"][1]))
            free = int(config["free_features"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ModelLoadError(f"{directory}: config.json of the flow is incomplete or invalid ({exc})") from exc
        assert model.scaler.constant is not None
        if model.scaler.dim != model.dimension or int((~model.scaler.constant).sum()) != free:
            raise ModelLoadError(f"{directory}: scaler statistics do not match the flow's dimensions; tampered")
        net = model._build(free).to(dtype=torch_dtype(model.params["dtype"]))
        load_state(net, tensors, directory)
        net.eval()
        model.net = net
        return model
