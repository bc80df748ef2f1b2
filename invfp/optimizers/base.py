"""The interface every optimizer plugin implements.

An optimizer finds positions ``x`` with ``representation(x) ≈ R`` for a batch of
targets. :func:`invfp.reconstruct` prepares the tensors and calls :meth:`Optimizer.run`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from invfp.components import Component

if TYPE_CHECKING:
    import torch

    from invfp.reconstruction import ReconstructionProblem, ReconstructionResult


class Optimizer(Component):
    """Base class of optimizer plugins."""

    kind: ClassVar[str] = "optimizer"
    supports_start: ClassVar[bool] = False
    """Whether :meth:`run` honours :attr:`ReconstructionProblem.start
    <invfp.reconstruction.ReconstructionProblem.start>` (the caller's start positions);
    :func:`invfp.reconstruct` refuses ``start=`` for optimizers that do not."""

    def __init__(self, **params: Any) -> None:
        self.params = self.resolve_params(params)

    def run(
        self,
        problem: ReconstructionProblem,
        *,
        generator: torch.Generator,
        progress: Any = None,
    ) -> list[ReconstructionResult]:
        """Reconstruct every target of ``problem``; one result per target, in order."""
        raise NotImplementedError
