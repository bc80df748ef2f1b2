"""The interface every representation plugin implements.

A representation is a :class:`torch.nn.Module`. Its call
``rep(positions, numbers, cell=None, pbc=False)`` takes positions ``[B, N, 3]`` of one
composition (``numbers`` is ``[N]``) and returns the pooled fingerprint ``[B, D]``, or
per-atom features ``[B, N, F]`` when the representation was built with
``pooling=None``. Reconstruction differentiates through that call, so it must be
differentiable with respect to ``positions`` (and ``cell``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch

from invfp.components import Component
from invfp.errors import InputError
from invfp.representations import _kernels

if TYPE_CHECKING:
    import ase


POOLINGS: tuple[str | None, ...] = ("maxmin", "mean", "sum", "maxmin+mean", None)
"""How per-atom features ``[B, N, F]`` become one vector per structure:
``"maxmin"`` ([max over atoms, min over atoms], the paper's, ``2F`` values), ``"mean"``
or ``"sum"`` (``F``), ``"maxmin+mean"`` (both, ``3F``); ``None`` keeps the per-atom features."""


def pooled_width(pooling: str | None) -> int:
    """How many multiples of the per-atom length F a pooling gives (1 for ``None``)."""
    return {"maxmin": 2, "maxmin+mean": 3}.get(pooling, 1)  # type: ignore[arg-type]


def empty_batch(positions: torch.Tensor, width: int, pooled: bool) -> torch.Tensor:
    """The output for a batch of no structures (``positions`` ``[0, N, 3]``): ``[0, width]``
    pooled or ``[0, N, width]`` per atom, still attached to ``positions``' autograd graph."""
    if pooled:
        return positions.flatten(1).sum(1, keepdim=True).expand(0, width).clone()
    return positions.sum(2, keepdim=True).expand(0, positions.shape[1], width).clone()


def pool(feats: torch.Tensor, pooling: str | None) -> torch.Tensor:
    """Per-atom features ``[B, N, F]`` pooled as :data:`POOLINGS` describes."""
    if pooling is None:
        return feats
    if pooling in ("maxmin", "maxmin+mean"):
        if _kernels.runs_on(feats) and feats.shape[1] > 0:
            parts = [_kernels.MaxMin.apply(feats)]
        else:
            # max/min with indices: their backward is a scatter, far cheaper than amax's tie masks
            parts = [feats.max(dim=1).values, feats.min(dim=1).values]
        if pooling == "maxmin+mean":
            parts.append(feats.mean(dim=1))
        return torch.cat(parts, dim=-1)
    if pooling == "mean":
        return feats.mean(dim=1)
    if pooling == "sum":
        return feats.sum(dim=1)
    raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")


class Representation(Component, torch.nn.Module):
    """Base class of representation plugins (see the module docstring)."""

    kind: ClassVar[str] = "representation"
    differentiable: ClassVar[bool] = True
    """Whether gradients w.r.t. positions are available (needed for reconstruction)."""

    def __init__(self) -> None:
        torch.nn.Module.__init__(self)

    # -- to implement -------------------------------------------------------------
    def dim(self, numbers: Sequence[int] | np.ndarray | torch.Tensor) -> int:
        """Length D of the pooled vector (or F per atom when ``pooling is None``)."""
        raise NotImplementedError

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor | Sequence[int],
        cell: torch.Tensor | None = None,
        pbc: bool | Sequence[bool] = False,
    ) -> torch.Tensor:
        """Fingerprints of a batch of structures of one composition."""
        raise NotImplementedError

    # -- provided -----------------------------------------------------------------
    @property
    def pooled(self) -> bool:
        """True when the output is one vector per structure (the default)."""
        return getattr(self, "pooling", "maxmin") is not None

    def featurize(
        self,
        atoms: ase.Atoms | Sequence[ase.Atoms],
        *,
        batch_size: int = 256,
        progress: bool = False,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> np.ndarray:
        """Fingerprints of ASE structures as NumPy.

        Args:
            atoms: one ``ase.Atoms`` or a list of them (compositions may differ
                between structures when the output is pooled; structures are grouped
                by composition and batched).
            batch_size: structures per forward call.
            progress: show a progress bar.
            dtype: computation dtype (default: the module's, float64 for exactness).
            device: where to compute (default: CPU).

        Returns:
            ``[B, D]`` pooled (``[D]`` for a single ``Atoms``); with ``pooling=None``,
            ``[N, F]`` for one structure or ``[B, N, F]`` for a list of one size.
        """
        from ase import Atoms

        from invfp.utils import progress_bar

        single = isinstance(atoms, Atoms)
        frames = [atoms] if single else list(atoms)
        if not frames:
            raise InputError("featurize needs at least one structure")
        for i, frame in enumerate(frames):
            if not isinstance(frame, Atoms):
                raise InputError(
                    f"featurize takes ase.Atoms or a list of them; item {i} is a {type(frame).__name__} "
                    "(read files with ase.io.read)"
                )
            if not (np.isfinite(frame.positions).all() and np.isfinite(frame.cell.array).all()):
                raise InputError(f"structure {i} has NaN or infinite positions or cell values; fix or drop it")
        dtype = dtype or torch.float64
        device = torch.device(device) if device is not None else torch.device("cpu")
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, frame in enumerate(frames):
            groups.setdefault(tuple(int(z) for z in frame.numbers), []).append(i)
        if not self.pooled and len({len(k) for k in groups}) > 1:
            raise InputError(
                "per-atom features of structures with different atom counts cannot be "
                "stacked; featurize them one at a time or use a pooled representation"
            )
        out: list[np.ndarray | None] = [None] * len(frames)
        with progress_bar(len(frames), "featurize", enabled=progress) as advance:
            for numbers, idx in groups.items():
                for start in range(0, len(idx), batch_size):
                    chunk = idx[start : start + batch_size]
                    pos = torch.as_tensor(
                        np.stack([frames[i].positions for i in chunk]), dtype=dtype, device=device
                    )
                    cells = [np.asarray(frames[i].cell.array) for i in chunk]
                    pbcs = {tuple(bool(p) for p in frames[i].pbc) for i in chunk}
                    if len(pbcs) > 1:
                        raise InputError("structures of one composition mix periodic and non-periodic cells")
                    pbc = next(iter(pbcs))
                    cell = (
                        torch.as_tensor(np.stack(cells), dtype=dtype, device=device)
                        if any(pbc) or any(np.abs(c).sum() > 0 for c in cells)
                        else None
                    )
                    with torch.no_grad():
                        values = self(pos, torch.as_tensor(numbers), cell=cell, pbc=pbc)
                    values = values.detach().cpu().numpy()
                    for j, i in enumerate(chunk):
                        out[i] = values[j]
                    advance(len(chunk))
        shapes = {v.shape for v in out if v is not None}
        if len(shapes) > 1:
            raise InputError(
                f"these structures give fingerprints of different shapes ({sorted(shapes)}), e.g. "
                "because the element channels follow each structure's elements; fix the elements "
                "(species=[...]) or featurize each composition separately"
            )
        result = np.stack(out)  # type: ignore[arg-type]
        return result[0] if single else result

    def get_config(self) -> dict[str, Any]:
        """Everything needed to rebuild this representation (used for caches and saved models)."""
        return {"name": self.name, **getattr(self, "params", {})}
