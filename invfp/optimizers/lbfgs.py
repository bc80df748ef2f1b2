"""Batched L-BFGS on the fingerprint objective, with random restarts.

Each member (target × restart) runs its own L-BFGS: its own history of steps and
gradient changes, its own two-loop recursion and its own backtracking (Armijo) line
search, all as batched tensor operations over the members still running. Members that
converge (target reached, or no progress) drop out of the active set.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from invfp.components import Param, positive, positive_int
from invfp.optimizers.common import SEARCH_PARAMETERS, STRUCTURE_PARAMETERS, Batch, SearchAgain, nan_safe

if TYPE_CHECKING:
    from invfp.reconstruction import ReconstructionProblem, ReconstructionResult


class LBFGS(SearchAgain):
    """Independent batched L-BFGS per member, random restarts, best member per target."""

    name = "lbfgs"
    supports_start = True
    description = "Batched L-BFGS on the fingerprint loss, with random restarts."
    parameters = {
        "restarts": Param(32, "Independent random starts per target, optimised together.", check=positive_int),
        "steps": Param(500, "L-BFGS iterations per member.", check=positive_int),
        "history": Param(10, "Number of (step, gradient change) pairs kept per member.", check=positive_int),
        "max_step": Param(0.3, "Largest displacement of any atom in one iteration (Å).", check=positive),
        "loss": Param("mse", "Fingerprint loss: 'mse' (smooth, suits L-BFGS) or 'mae'.", choices=("mae", "mse")),
        "tol": Param(1e-4, "A target is done when a member's raw fingerprint MAE falls below this.", check=positive),
        **SEARCH_PARAMETERS,
        **STRUCTURE_PARAMETERS,
    }

    def _search(
        self, problem: ReconstructionProblem, generator: torch.Generator, advance: Callable[[int], Any]
    ) -> list[ReconstructionResult]:
        """One search from fresh random starts for every target of ``problem``."""
        p = self.params
        b = Batch.of(problem, p)
        n_targets, restarts, members, dev, dt = b.n_targets, b.restarts, b.members, b.device, b.dtype
        objective, target_of = b.objective, b.target_of

        x = problem.initial_positions(
            target_of, generator, kick=p["start_kick"], packing=p["packing"], packing_min=p["packing_min"]
        )
        shape = x.shape
        best_x = x.clone()
        best_f = torch.full((members,), math.inf, device=dev, dtype=dt)
        best_raw = torch.full_like(best_f, math.inf)
        steps = torch.zeros(members, dtype=torch.long, device=dev)
        done = torch.zeros(n_targets, dtype=torch.bool, device=dev)

        f, raw, g = objective(x, target_of)
        f = nan_safe(f)
        steps += 1
        hist = p["history"]
        size = x[0].numel()
        s_hist = torch.zeros(members, hist, size, device=dev, dtype=dt)
        y_hist = torch.zeros_like(s_hist)
        rho = torch.zeros(members, hist, device=dev, dtype=dt)
        gamma = torch.zeros(members, device=dev, dtype=dt)
        active = torch.ones(members, dtype=torch.bool, device=dev)
        stall = torch.zeros(members, dtype=torch.long, device=dev)

        def keep_best() -> None:
            nonlocal best_f, best_raw, best_x
            improved = f < best_f
            best_f = torch.where(improved, f, best_f)
            best_raw = torch.where(improved, raw, best_raw)
            best_x = torch.where(improved[:, None, None], x, best_x)

        for it in range(p["steps"]):
            keep_best()
            reached = torch.zeros(n_targets, dtype=torch.bool, device=dev)
            reached.index_put_((target_of,), best_raw < p["tol"], accumulate=True)
            if int((reached & ~done).sum()):
                advance(int((reached & ~done).sum()))
            done |= reached
            active &= ~done[target_of] & (stall < 20)
            idx = torch.nonzero(active).squeeze(1)
            if idx.numel() == 0:
                break
            gi = g[idx].reshape(len(idx), -1)
            d = -self._two_loop(gi, s_hist[idx], y_hist[idx], rho[idx], gamma[idx], it, hist)
            slope = (d * gi).sum(-1)
            uphill = slope >= 0
            d = torch.where(uphill[:, None], -gi, d)
            slope = torch.where(uphill, -(gi * gi).sum(-1), slope)
            # Cap the largest atomic displacement, then backtrack until Armijo holds.
            atom_max = d.view(len(idx), -1, 3).norm(dim=-1).amax(-1).clamp_min(1e-30)
            t = p["max_step"] / atom_max
            # With curvature information the quasi-Newton step length 1 is the natural first try;
            # without (first iteration), the capped gradient step is.
            t = torch.where(gamma[idx] > 0, t.clamp(max=1.0), t)
            x0, f0, tgt = x[idx].reshape(len(idx), -1), f[idx], target_of[idx]
            pending = torch.ones(len(idx), dtype=torch.bool, device=dev)
            x_new, f_new, raw_new, g_new = x0.clone(), f0.clone(), raw[idx].clone(), gi.clone()
            for _ in range(12):
                sel = torch.nonzero(pending).squeeze(1)
                if sel.numel() == 0:
                    break
                trial = x0[sel] + t[sel, None] * d[sel]
                ft, rt, gt = objective(trial.view(-1, *shape[1:]), tgt[sel])
                ft = nan_safe(ft)
                steps[idx[sel]] += 1
                ok = ft <= f0[sel] + 1e-4 * t[sel] * slope[sel]
                acc = sel[ok]
                x_new[acc], f_new[acc], raw_new[acc] = trial[ok], ft[ok], rt[ok]
                g_new[acc] = gt[ok].flatten(1)
                pending[acc] = False
                t[sel[~ok]] *= 0.5
            moved = ~pending
            s_vec = x_new - x0
            y_vec = g_new - gi
            sy = (s_vec * y_vec).sum(-1)
            good = moved & (sy > 1e-12)
            slot = it % hist
            rho[idx, slot] = 0.0  # the pair this slot held is now too old
            rows = idx[good]
            s_hist[rows, slot] = s_vec[good]
            y_hist[rows, slot] = y_vec[good]
            rho[rows, slot] = 1.0 / sy[good]
            gamma[rows] = sy[good] / (y_vec[good] * y_vec[good]).sum(-1)
            rel = (f0 - f_new) / f0.abs().clamp_min(1e-30)
            stall[idx] = torch.where(moved & (rel > 1e-6), torch.zeros_like(stall[idx]), stall[idx] + 1)
            x[idx] = x_new.view(-1, *shape[1:])
            f[idx], raw[idx], g[idx] = f_new, raw_new, g_new.view(-1, *shape[1:])

        keep_best()  # the last iteration's step
        choice = torch.argmin(best_f.view(n_targets, restarts), dim=1)
        pick = torch.arange(n_targets, device=dev) * restarts + choice
        restart_losses = best_raw.view(n_targets, restarts).cpu().tolist()
        per_target = steps.view(n_targets, restarts).sum(1).cpu().tolist()
        # time: with_attempts sets it from the whole call (all searches).
        return problem.finish(best_x[pick], restart_losses, per_target, 0.0)

    @staticmethod
    def _two_loop(
        g: torch.Tensor, s: torch.Tensor, y: torch.Tensor, rho: torch.Tensor, gamma: torch.Tensor, it: int, hist: int
    ) -> torch.Tensor:
        """H·g for every member by the L-BFGS two-loop recursion (batched, newest pair first).

        Slots a member never filled (or skipped for lack of curvature) have ``rho = 0``
        and drop out of the recursion; a member without any pair gets ``H = 1``.
        """
        order = [(it - 1 - k) % hist for k in range(min(it, hist))]
        q = g.clone()
        alphas = []
        for k in order:
            a = rho[:, k] * (s[:, k] * q).sum(-1)
            q = q - a[:, None] * y[:, k]
            alphas.append(a)
        h0 = torch.where(gamma > 0, gamma, torch.ones_like(gamma))
        r = h0[:, None] * q
        for k, a in zip(reversed(order), reversed(alphas), strict=True):
            b = rho[:, k] * (y[:, k] * r).sum(-1)
            r = r + (a - b)[:, None] * s[:, k]
        return r
