"""The sorted-distances representation: a minimal, complete representation plugin."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from invfp.components import Param, positive
from invfp.representations.base import Representation


class SortedDistances(Representation):
    """All N(N-1)/2 interatomic distances in ascending order (non-periodic).

    Optionally the distances pass through ``exp(-d / scale)`` so far pairs matter less.
    """

    name = "sorted-distances"
    description = "All interatomic distances, sorted (example plugin)."
    parameters = {
        "scale": Param(None, "If set, features are exp(-d / scale) instead of d.", check=positive),
    }

    def __init__(self, scale: float | None = None) -> None:
        super().__init__()
        self.params = self.resolve_params({"scale": scale})
        self.scale = scale
        self.pooling = "sorted"

    def dim(self, numbers: Sequence[int] | np.ndarray | torch.Tensor) -> int:
        n = len(numbers)
        return n * (n - 1) // 2

    def forward(self, positions, numbers, cell=None, pbc=False):  # type: ignore[no-untyped-def]
        n = positions.shape[-2]
        i, j = torch.triu_indices(n, n, offset=1, device=positions.device)
        diff = positions[..., i, :] - positions[..., j, :]
        d = torch.sqrt((diff * diff).sum(-1) + 1e-12)
        feats = torch.sort(d, dim=-1).values
        if self.scale is not None:
            feats = torch.exp(-feats / self.scale)
        return feats
