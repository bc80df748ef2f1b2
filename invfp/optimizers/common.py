"""Pieces shared by the built-in optimizers: the batched objective and its gradient."""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch

from invfp.components import Param, fraction, non_negative, positive, positive_int
from invfp.optimizers.base import Optimizer
from invfp.reconstruction import timer

if TYPE_CHECKING:
    from invfp.reconstruction import ReconstructionProblem, ReconstructionResult

STRUCTURE_PARAMETERS: dict[str, Param] = {
    "min_distance": Param(
        0.6, "Overlap penalty below this fraction of the sum of covalent radii (0: off).", check=non_negative
    ),
    "penalty": Param(1.0, "Weight of the overlap penalty.", check=non_negative),
    "packing": Param(
        0.35, "Clusters start in a sphere holding the covalent spheres at this volume fraction.", check=fraction
    ),
    "packing_min": Param(
        None, "Clusters: each start draws its packing log-uniformly between this and `packing` (None: all "
        "at `packing`); spread-out targets need spread-out starts.", check=fraction,
    ),
    "start_kick": Param(
        0.3, "With start positions: standard deviation (Å) of the displacement of every restart but the first "
        "of each target.", check=non_negative,
    ),
    "chunk": Param(
        None, "At most this many members per representation call (default: by system size).", check=positive_int
    ),
}
"""Parameters every built-in optimizer shares: the overlap penalty, the starting density
and the memory bound of the :class:`Objective`."""


class Objective:
    """The per-member objective: fingerprint loss (+ optional soft overlap penalty).

    Every member depends only on its own positions, so the gradient of the summed
    objective is the stack of each member's own gradient: members stay independent.

    Args:
        problem: the reconstruction problem.
        loss: ``"mae"`` or ``"mse"`` on the scaled feature errors.
        min_distance: overlap threshold as a fraction of the sum of covalent radii
            (0 disables the penalty).
        penalty: weight of the overlap penalty.
        chunk: at most this many members per representation call (bounds memory);
            ``None``: about 2e7 / N^3 (angular terms grow as N^3 per member).
    """

    def __init__(
        self, problem: ReconstructionProblem, loss: str, min_distance: float, penalty: float, chunk: int | None
    ) -> None:
        self.problem = problem
        self.loss = loss
        self.min_distance = min_distance
        self.penalty = penalty
        self.chunk = chunk or max(1, 20_000_000 // problem.n_atoms**3)

    def _values(self, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        err = self.problem.errors(x, target)
        obj = err.abs().mean(-1) if self.loss == "mae" else err.pow(2).mean(-1)
        if self.min_distance > 0 and self.penalty > 0:
            obj = obj + self.penalty * self.problem.overlap_penalty(x, self.min_distance)
        raw = (err.detach() * self.problem.feature_scale).abs().mean(-1)
        return obj, raw

    def __call__(
        self, x: torch.Tensor, target: torch.Tensor, *, grad: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Objective ``[M]``, raw MAE ``[M]`` and (if ``grad``) gradient ``[M, N, 3]``."""
        objs, raws, grads = [], [], []
        for start in range(0, x.shape[0], self.chunk):
            xs = x[start : start + self.chunk].detach()
            ts = target[start : start + self.chunk]
            if grad:
                xs.requires_grad_(True)
                with torch.enable_grad():
                    obj, raw = self._values(xs, ts)
                    (g,) = torch.autograd.grad(obj.sum(), xs)
                # A member at a singular point (e.g. coinciding atoms) must not poison the rest.
                grads.append(torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0))
            else:
                with torch.no_grad():
                    obj, raw = self._values(xs, ts)
            objs.append(obj.detach())
            raws.append(raw)
        return torch.cat(objs), torch.cat(raws), (torch.cat(grads) if grad else None)


def cosine(step: int, total: int, start: float, end: float) -> float:
    """Cosine schedule from ``start`` (step 0) to ``end`` (last step)."""
    frac = step / max(total - 1, 1)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * frac))


def nan_safe(values: torch.Tensor) -> torch.Tensor:
    """Replace NaN (a blown-up member) by +inf so it never counts as the best."""
    return torch.where(torch.isnan(values), torch.full_like(values, math.inf), values)


@dataclasses.dataclass
class Batch:
    """The member layout every built-in optimizer starts from: targets × restarts in one tensor."""

    n_targets: int
    restarts: int
    members: int
    """``n_targets * restarts``; member ``k`` works on target ``k // restarts``."""
    device: torch.device
    dtype: torch.dtype
    objective: Objective
    target_of: torch.Tensor
    """``[members]``: the target index of each member."""

    @classmethod
    def of(cls, problem: ReconstructionProblem, params: dict[str, Any]) -> Batch:
        """The layout for ``problem`` with an optimizer's validated ``params``."""
        n_targets, restarts = int(problem.targets.shape[0]), int(params["restarts"])
        dev = problem.device
        return cls(
            n_targets=n_targets,
            restarts=restarts,
            members=n_targets * restarts,
            device=dev,
            dtype=problem.dtype,
            objective=Objective(problem, params["loss"], params["min_distance"], params["penalty"], params["chunk"]),
            target_of=torch.arange(n_targets, device=dev).repeat_interleave(restarts),
        )


SEARCH_PARAMETERS: dict[str, Param] = {
    "attempts": Param(
        3, "Whole searches per target: a target whose loss is still above `tol` after a search gets a new one "
        "from fresh starts, up to this many in all (1: one search; unreachable fingerprints pay every attempt).",
        check=positive_int,
    ),
    "fill": Param(
        8, "Searches per process side by side in the later attempts: when fewer targets than this are left, "
        "each gets several of its remaining searches at once (a few members alone leave a batch mostly idle, "
        "so they cost little more than one).", check=positive_int,
    ),
    "time_limit": Param(
        None, "Seconds after which no later search starts (every target's first search always runs, and a "
        "round under way finishes). None: no limit. With a limit the results depend on the machine's speed, "
        "not only on the seed.", check=positive,
    ),
}
"""The ``attempts``, ``fill`` and ``time_limit`` parameters of the built-in optimizers."""


def retry_rows(todo: Sequence[int], used: Sequence[int], attempts: int, fill: int) -> list[int]:
    """The searches of the next round: each target in ``todo`` once, or more often while fewer than ``fill``.

    ``used[k]`` searches of target ``k`` are done; it gets at most ``attempts - used[k]`` more.
    """
    if not todo:
        return []
    copies = -(-fill // len(todo))
    return [k for k in todo for _ in range(min(copies, attempts - used[k]))]


def with_attempts(
    search: Callable[[ReconstructionProblem, Callable[[int], Any]], list[ReconstructionResult]],
    problem: ReconstructionProblem,
    *,
    attempts: int,
    tol: float,
    fill: int = 1,
    progress: Any = None,
    time_limit: float | None = None,
) -> list[ReconstructionResult]:
    """Run ``search`` on every target, then again on those still above ``tol``, ``attempts`` times in all.

    The later searches run in rounds (:func:`in_rounds`). A later round continues the same
    random stream, so results stay deterministic for a seed; ``time`` is the whole call's
    wall time amortised over targets. ``search(problem, advance)`` reports targets it
    reaches in the first round through ``advance``; later ones are reported after their
    round, and those never reached once, at the end. No round starts after ``time_limit``
    seconds.
    """
    clock = timer()
    total = int(problem.targets.shape[0])
    ticked = 0
    reached: set[int] = set()

    def advance(n: int = 1) -> None:
        nonlocal ticked
        n = min(int(n), total - ticked)
        if n > 0:
            ticked += n
            if progress is not None:
                progress(n)

    def report(rows: Sequence[int]) -> None:
        reached.update(rows)
        advance(len(reached) - ticked)  # the first search may have ticked some already

    def run(rows: list[int], round_: int) -> list[ReconstructionResult]:
        if round_ == 0:
            return search(problem, advance)
        return search(problem.subset(rows), lambda n=1: None)

    results = in_rounds(run, total, attempts=attempts, tol=tol, fill=fill, report=report, time_limit=time_limit)
    elapsed = clock() / max(total, 1)
    for result in results:
        result.time = elapsed
    return results


def in_rounds(
    run: Callable[[list[int], int], list[ReconstructionResult]],
    n: int,
    *,
    attempts: int,
    tol: float,
    fill: int,
    report: Callable[[Sequence[int]], Any],
    time_limit: float | None = None,
) -> list[ReconstructionResult]:
    """Search targets ``0..n-1`` once, then in rounds again while above ``tol``, ``attempts`` searches at most.

    ``run(rows, round)`` returns one search's result for each entry of ``rows`` (round 0:
    every target once; later rounds: :func:`retry_rows`, so a target may appear several
    times). Each target keeps its best structure; its ``restart_losses`` and ``steps`` add
    up over searches. ``report(rows)`` is told the targets reached after each round and
    every target at the end; it may hear a target more than once. Once ``time_limit``
    seconds have passed, no further round starts.
    """
    clock = timer()
    results: dict[int, ReconstructionResult] = {}
    used = [0] * n
    rows = list(range(n))
    for round_ in range(attempts):
        for row, new in zip(rows, run(rows, round_), strict=True):
            best = merge_attempts(results[row], new) if row in results else new
            best.target_index = row
            results[row] = best
            used[row] += 1
        report([k for k in range(n) if results[k].loss < tol])
        rows = retry_rows([k for k in range(n) if not results[k].loss < tol and used[k] < attempts], used, attempts, fill)
        if not rows or (time_limit is not None and clock() >= time_limit):
            break
    report(range(n))
    return [results[k] for k in range(n)]


def merge_attempts(old: ReconstructionResult, new: ReconstructionResult) -> ReconstructionResult:
    """One target's result after another search: the better structure, restart losses and steps of both."""
    best = new if new.loss < old.loss else old
    best.restart_losses = old.restart_losses + new.restart_losses
    best.steps = old.steps + new.steps
    return best


class SearchAgain(Optimizer):
    """A built-in optimizer: :meth:`run` is :meth:`_search`, again for targets still above ``tol``.

    Subclasses implement one whole search and declare the ``attempts`` and ``tol`` parameters.
    """

    def run(
        self,
        problem: ReconstructionProblem,
        *,
        generator: torch.Generator,
        progress: Any = None,
    ) -> list[ReconstructionResult]:
        """Reconstruct every target of ``problem``; one result per target, in order."""
        return with_attempts(
            lambda prob, advance: self._search(prob, generator, advance),
            problem, attempts=self.params["attempts"], tol=self.params["tol"], fill=self.params["fill"],
            progress=progress, time_limit=self.params.get("time_limit"),
        )

    def once(self) -> SearchAgain:
        """A copy that searches once (``attempts=1``): a caller dealing the retries itself runs this."""
        single = copy.copy(self)
        single.params = {**self.params, "attempts": 1}
        return single

    def _search(
        self, problem: ReconstructionProblem, generator: torch.Generator, advance: Callable[[int], Any]
    ) -> list[ReconstructionResult]:
        """One search of every target of ``problem``, reporting reached targets through ``advance``."""
        raise NotImplementedError
