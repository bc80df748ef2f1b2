"""Fused CPU kernels (numba) for the ACSF's hot spots: G5 and G2 sums, max/min pooling.

A fung2022 forward and backward pass of Pt10 in torch is some sixty passes over
``[B, N, K, ...]`` intermediates and thousands of tiny batched matrix products. Here:

- G5: for each structure b, atom i and neighbour-element pair q,

      a[b, i, q, e, c] = sum over i's neighbour pairs (j, k) of pair q of
                         g[b, i, j, e] g[b, i, k, e] base_c(cos theta_ijk) ** zeta_c

  (``g`` = exp(-eta r^2) f_c(r) per neighbour, ``base_c`` = max(0.5 + 0.5 lambda_c cos, 0)),
  and its gradient with respect to the unit vectors and ``g``, in one pass over the pairs.
- G2: the Gaussians' row sums and their gradient with respect to r and f_c, in one pass
  each (the exponentials themselves are torch's, which are vectorised).
- Max/min pooling over atoms and its scatter backward.
- Clusters with only G1/G2 and integer-zeta G5 terms (fung2022): the whole per-atom ACSF
  from positions and its gradient back to positions (``ClusterACSF``), distances,
  cutoffs, unit vectors and the output layout included; only the exponentials are torch's.

Every inner loop runs over a 1-D row view with the structures innermost, which LLVM
vectorises. Outside ``ClusterACSF``, distances, cutoffs and unit vectors stay in torch,
whose autograd carries the gradients on to positions and cell.

Used on the CPU (float32, float64) when numba is importable (a dependency of invfp) and
``INVFP_NUMBA`` is not ``0``; G5 only for integer zeta >= 1 and one element pair per
neighbour pair (clusters, or periodic cells of one element). torch's own code runs
otherwise (CUDA included) and is the reference the tests compare with
(``tests/test_kernels.py``). Measured in ``benchmarks/bench_acsf.py``.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.autograd.function import once_differentiable

try:  # numba is a dependency; a platform without its wheels still runs torch's code
    from numba import njit
except ImportError:  # pragma: no cover - exercised only where numba is missing
    njit = None


def enabled() -> bool:
    """Whether the kernels can run here (numba importable, ``INVFP_NUMBA`` not ``0``)."""
    return njit is not None and os.environ.get("INVFP_NUMBA", "1") != "0"


_FAST = {"reassoc", "contract", "arcp", "afn", "nsz"}
"""LLVM's fast-math flags but no-NaN and no-inf: sums may be reordered (so that loops with
a reduction vectorise), while a NaN or inf still propagates as in torch."""


def _jit(fn: Any) -> Any:
    """Compile lazily on first call, cached on disk; uncached where no cache folder is writable."""
    if njit is None:
        return fn
    try:
        return njit(fastmath=_FAST, cache=True, nogil=True)(fn)
    except RuntimeError:  # numba found no writable place for its cache (read-only install and home)
        return njit(fastmath=_FAST, nogil=True)(fn)


# Every inner loop runs over the structures of a 1-D row view (C-contiguous), which LLVM
# vectorises; the same loops written with the full multi-dimensional index ran about 5x
# slower (not vectorised).


@_jit
def _powers(base: Any, n_bits: int, table: Any) -> None:
    """``table[l, s] = base[l] ** (2 ** s)`` for s < n_bits."""
    for lam in range(base.shape[0]):
        first, row = table[lam, 0], base[lam]
        for b in range(row.shape[0]):
            first[b] = row[b]
        for s in range(1, n_bits):
            prev, cur = table[lam, s - 1], table[lam, s]
            for b in range(cur.shape[0]):
                cur[b] = prev[b] * prev[b]


@_jit
def _int_power(table: Any, lam: int, z: int, out: Any) -> None:
    """``out = base[lam] ** z`` (z >= 0) as a product of the table's squares."""
    for b in range(out.shape[0]):
        out[b] = 1.0
    s = 0
    while z:
        if z & 1:
            row = table[lam, s]
            for b in range(out.shape[0]):
                out[b] *= row[b]
        z >>= 1
        s += 1


@_jit
def _cos_bases(uj: Any, uk: Any, lams: Any, cos: Any, base: Any) -> None:
    """cos theta_ijk from the unit vectors ``[3, B]``, and max(0.5 + 0.5 lambda cos, 0) per lambda."""
    a0, a1, a2, c0, c1, c2 = uj[0], uj[1], uj[2], uk[0], uk[1], uk[2]
    for b in range(cos.shape[0]):
        cos[b] = a0[b] * c0[b] + a1[b] * c1[b] + a2[b] * c2[b]
    for lam in range(lams.shape[0]):
        h, row = 0.5 * lams[lam], base[lam]
        for b in range(cos.shape[0]):
            row[b] = max(0.5 + h * cos[b], 0.0)


@_jit
def _n_bits(zeta: Any) -> int:
    n = 1
    while (1 << n) <= zeta.max():
        n += 1
    return n


@_jit
def _pair_scratch(u: Any, g: Any, zeta: Any, lams: Any) -> Any:
    """The rows :func:`_pair_terms` fills, for ``u [N, M, 3, B]`` and ``g [N, M, E, B]``:
    ``cos [B]``, ``base [L, B]``, ``table [L, bits, B]``, ``pw [C, B]``, ``gg [E, B]``."""
    n_b, n_l = u.shape[3], lams.shape[0]
    return (
        np.empty(n_b, dtype=u.dtype),
        np.empty((n_l, n_b), dtype=u.dtype),
        np.empty((n_l, _n_bits(zeta), n_b), dtype=u.dtype),
        np.empty((zeta.shape[0], n_b), dtype=u.dtype),
        np.empty((g.shape[2], n_b), dtype=u.dtype),
    )


@_jit
def _pair_terms(
    u: Any,
    g: Any,
    i: int,
    j: int,
    k: int,
    zeta: Any,
    lam_of: Any,
    lams: Any,
    cos: Any,
    base: Any,
    table: Any,
    pw: Any,
    gg: Any,
) -> None:
    """For atom i's neighbour pair (j, k): cos theta, the bases and their squares, the
    powers ``pw [C, B]`` = base_c ** zeta_c and ``gg [E, B]`` = g_ij g_ik."""
    _cos_bases(u[i, j], u[i, k], lams, cos, base)
    _powers(base, table.shape[1], table)
    for c in range(zeta.shape[0]):
        _int_power(table, lam_of[c], zeta[c], pw[c])
    for e in range(gg.shape[0]):
        ge, gj, gk = gg[e], g[i, j, e], g[i, k, e]
        for b in range(ge.shape[0]):
            ge[b] = gj[b] * gk[b]


@_jit
def _g5_forward(
    u: Any, g: Any, jj: Any, kk: Any, qq: Any, zeta: Any, lam_of: Any, lams: Any, n_pairs: int
) -> Any:
    """``a [N, Q, E, C, B]`` from ``u [N, M, 3, B]`` and ``g [N, M, E, B]`` (structures last)."""
    n, n_b = u.shape[0], u.shape[3]
    n_e, n_c = g.shape[2], zeta.shape[0]
    out = np.zeros((n, n_pairs, n_e, n_c, n_b), dtype=u.dtype)
    cos, base, table, pw, gg = _pair_scratch(u, g, zeta, lams)
    for i in range(n):
        for t in range(jj.shape[1]):
            j, k, q = jj[i, t], kk[i, t], qq[i, t]
            _pair_terms(u, g, i, j, k, zeta, lam_of, lams, cos, base, table, pw, gg)
            for e in range(n_e):
                ge = gg[e]
                for c in range(n_c):
                    o, pc = out[i, q, e, c], pw[c]
                    for b in range(n_b):
                        o[b] += ge[b] * pc[b]
    return out


@_jit
def _g5_backward(
    u: Any, g: Any, jj: Any, kk: Any, qq: Any, zeta: Any, lam_of: Any, lams: Any, grad: Any
) -> Any:
    """Gradients of ``sum(grad * a)`` with respect to ``u`` and ``g`` (same layouts)."""
    n, n_b = u.shape[0], u.shape[3]
    n_e, n_c = g.shape[2], zeta.shape[0]
    grad_u = np.zeros_like(u)
    grad_g = np.zeros_like(g)
    cos, base, table, pw, gg = _pair_scratch(u, g, zeta, lams)
    lower = np.empty(n_b, dtype=u.dtype)
    d_pw = np.empty((n_c, n_b), dtype=u.dtype)
    d_gg = np.empty((n_e, n_b), dtype=u.dtype)
    d_cos = np.empty(n_b, dtype=u.dtype)
    for i in range(n):
        for t in range(jj.shape[1]):
            j, k, q = jj[i, t], kk[i, t], qq[i, t]
            _pair_terms(u, g, i, j, k, zeta, lam_of, lams, cos, base, table, pw, gg)
            d_pw[:] = 0.0
            d_gg[:] = 0.0
            for e in range(n_e):
                ge, de = gg[e], d_gg[e]
                for c in range(n_c):
                    w, pc, dc = grad[i, q, e, c], pw[c], d_pw[c]
                    for b in range(n_b):
                        de[b] += w[b] * pc[b]
                        dc[b] += w[b] * ge[b]
            # d base^z / d cos = z base^(z-1) lambda / 2 where base > 0 (it is clamped at 0)
            d_cos[:] = 0.0
            for c in range(n_c):
                lam = lam_of[c]
                _int_power(table, lam, zeta[c] - 1, lower)
                f, row, dc = 0.5 * lams[lam] * zeta[c], base[lam], d_pw[c]
                for b in range(n_b):
                    d_cos[b] += dc[b] * f * (lower[b] if row[b] > 0.0 else 0.0)
            for e in range(n_e):
                de, gj, gk, oj, ok = d_gg[e], g[i, j, e], g[i, k, e], grad_g[i, j, e], grad_g[i, k, e]
                for b in range(n_b):
                    oj[b] += de[b] * gk[b]
                    ok[b] += de[b] * gj[b]
            for d in range(3):
                uj, uk, oj, ok = u[i, j, d], u[i, k, d], grad_u[i, j, d], grad_u[i, k, d]
                for b in range(n_b):
                    oj[b] += d_cos[b] * uk[b]
                    ok[b] += d_cos[b] * uj[b]
    return grad_u, grad_g


class G5Sums(torch.autograd.Function):
    """``a [B, N, Q, E, C]`` from unit vectors ``[B, N, M, 3]`` and ``g [B, N, M, E]`` (see the module)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, unit: torch.Tensor, g: torch.Tensor, pairs: tuple[np.ndarray, ...], terms: Any, n_pairs: int
    ) -> torch.Tensor:
        u_np = unit.detach().permute(1, 2, 3, 0).contiguous().numpy()  # structures innermost
        g_np = g.detach().permute(1, 2, 3, 0).contiguous().numpy()
        lams = terms.lam.cpu().numpy().astype(u_np.dtype)
        a = _g5_forward(u_np, g_np, *pairs, terms.zeta_int, terms.lam_of, lams, n_pairs)
        ctx.inputs = (u_np, g_np, pairs, terms.zeta_int, terms.lam_of, lams)
        return torch.from_numpy(a).permute(4, 0, 1, 2, 3)

    @staticmethod
    @once_differentiable  # NumPy inside: a second derivative raises instead of coming out wrong
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        u_np, g_np, pairs, zeta, lam_of, lams = ctx.inputs
        grad_np = grad.permute(1, 2, 3, 4, 0).contiguous().numpy()
        grad_u, grad_g = _g5_backward(u_np, g_np, *pairs, zeta, lam_of, lams, grad_np)
        return (
            torch.from_numpy(grad_u).permute(3, 0, 1, 2),
            torch.from_numpy(grad_g).permute(3, 0, 1, 2),
            None,
            None,
            None,
        )


def g5_sums(
    unit: torch.Tensor,
    g: torch.Tensor,
    jj: torch.Tensor,
    kk: torch.Tensor,
    pair_onehot: torch.Tensor | None,
    terms: Any,
) -> torch.Tensor:
    """The G5 pair sums ``[B, N, Q, E, C]`` (without the factor 2) by the fused kernels."""
    qq = torch.zeros_like(jj) if pair_onehot is None else pair_onehot.argmax(-1)
    n_pairs = 1 if pair_onehot is None else pair_onehot.shape[-1]
    pairs = tuple(np.ascontiguousarray(t.cpu().numpy(), dtype=np.int64) for t in (jj, kk, qq))
    return G5Sums.apply(unit, g, pairs, terms, n_pairs)


def usable(terms: Any, unit: torch.Tensor, pair_onehot: torch.Tensor | None) -> bool:
    """Whether ``g5_sums`` can compute these terms for this input."""
    return (
        terms.kind == "g5"
        and terms.zeta_int is not None
        and (pair_onehot is None or pair_onehot.dim() == 3)  # one element pair per (atom, pair)
        and runs_on(unit)
    )


@_jit
def _g2_exponents(r: Any, eta: Any, rs: Any, floor: float, out: Any) -> None:
    """``out [B, P, F] = max(-eta (r - R_s)^2, floor)`` for pair distances ``r [B, P]``."""
    for b in range(r.shape[0]):
        for p in range(r.shape[1]):
            rp, o = r[b, p], out[b, p]
            for f in range(o.shape[0]):
                d = rp - rs[f]
                o[f] = max(-eta[f] * d * d, floor)


@_jit
def _g2_forward(gauss: Any, fc: Any, targets: Any, rows: int) -> Any:
    """Row sums ``[B, rows, F]``: pair p adds gauss[b, p] f_c[b, p] to row targets[t, p] for each t."""
    n_b, n_p, n_f = gauss.shape
    out = np.zeros((n_b, rows, n_f), dtype=gauss.dtype)
    for b in range(n_b):
        for p in range(n_p):
            c, gp = fc[b, p], gauss[b, p]
            for t in range(targets.shape[0]):
                o = out[b, targets[t, p]]
                for f in range(n_f):
                    o[f] += gp[f] * c
    return out


@_jit
def _g2_backward(grad: Any, gauss: Any, r: Any, fc: Any, targets: Any, eta: Any, eta_rs: Any) -> Any:
    """Gradients of ``sum(grad * out)`` with respect to ``r`` and ``f_c`` (both ``[B, P]``)."""
    n_b, n_p, n_f = gauss.shape
    grad_r = np.empty((n_b, n_p), dtype=gauss.dtype)
    grad_fc = np.empty((n_b, n_p), dtype=gauss.dtype)
    acc = np.empty(n_f, dtype=gauss.dtype)
    for b in range(n_b):
        for p in range(n_p):
            first = grad[b, targets[0, p]]
            for f in range(n_f):
                acc[f] = first[f]
            for t in range(1, targets.shape[0]):
                more = grad[b, targets[t, p]]
                for f in range(n_f):
                    acc[f] += more[f]
            gp = gauss[b, p]
            s0 = s1 = s2 = 0.0
            for f in range(n_f):
                w = acc[f] * gp[f]
                s0 += w
                s1 += w * eta[f]
                s2 += w * eta_rs[f]
            grad_fc[b, p] = s0
            # d/dr exp(-eta (r - R_s)^2) = -2 eta (r - R_s) exp(...)
            grad_r[b, p] = 2.0 * fc[b, p] * (s2 - r[b, p] * s1)
    return grad_r, grad_fc


class GaussianSums(torch.autograd.Function):
    """G2 row sums ``[B, rows, F]`` of f_c(r_p) exp(-eta (r_p - R_s)^2) over pairs ``r [B, P]``.

    The same values as ``acsf._GaussianSum``; the exponentials are torch's (vectorised),
    the rest is two fused passes here instead of about ten torch passes.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        r: torch.Tensor,
        fc: torch.Tensor,
        eta: torch.Tensor,
        rs: torch.Tensor,
        targets: np.ndarray,
        rows: int,
        floor: float,
    ) -> torch.Tensor:
        r_np = r.detach().contiguous().numpy()
        fc_np = fc.detach().contiguous().numpy()
        eta_np, rs_np = eta.numpy().astype(r_np.dtype), rs.numpy().astype(r_np.dtype)
        gauss = np.empty((*r_np.shape, eta_np.shape[0]), dtype=r_np.dtype)
        _g2_exponents(r_np, eta_np, rs_np, floor, gauss)
        torch.from_numpy(gauss).exp_()
        ctx.inputs = (gauss, r_np, fc_np, targets, eta_np, eta_np * rs_np)
        return torch.from_numpy(_g2_forward(gauss, fc_np, targets, rows))

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        gauss, r_np, fc_np, targets, eta, eta_rs = ctx.inputs
        grad_r, grad_fc = _g2_backward(grad.contiguous().numpy(), gauss, r_np, fc_np, targets, eta, eta_rs)
        return torch.from_numpy(grad_r), torch.from_numpy(grad_fc), None, None, None, None, None


def gaussian_sums(
    r: torch.Tensor,
    fc: torch.Tensor,
    eta: torch.Tensor,
    rs: torch.Tensor,
    targets: list[torch.Tensor],
    rows: int,
    floor: float,
) -> torch.Tensor:
    """G2 row sums ``[B, rows, F]`` by the fused kernels (see :class:`GaussianSums`)."""
    idx = np.ascontiguousarray(torch.stack(targets).cpu().numpy(), dtype=np.int64)
    return GaussianSums.apply(r, fc, eta.cpu(), rs.cpu(), idx, rows, floor)


@_jit
def _maxmin_forward(feats: Any) -> Any:
    """``[max over atoms, min over atoms]`` ``[B, 2F]`` of ``[B, N, F]``, with the atoms that hold them."""
    n_b, n, n_f = feats.shape
    out = np.empty((n_b, 2 * n_f), dtype=feats.dtype)
    where = np.zeros((n_b, 2 * n_f), dtype=np.int64)
    for b in range(n_b):
        hi, lo, at_hi, at_lo, first = out[b, :n_f], out[b, n_f:], where[b, :n_f], where[b, n_f:], feats[b, 0]
        for f in range(n_f):
            hi[f] = first[f]
            lo[f] = first[f]
        for a in range(1, n):
            row = feats[b, a]
            for f in range(n_f):  # the first atom holding an extreme, and NaN wins, as in torch
                v = row[f]
                if v > hi[f] or (v != v and hi[f] == hi[f]):
                    hi[f] = v
                    at_hi[f] = a
                if v < lo[f] or (v != v and lo[f] == lo[f]):
                    lo[f] = v
                    at_lo[f] = a
    return out, where


@_jit
def _maxmin_backward(grad: Any, where: Any, n: int) -> Any:
    n_b, n_f = grad.shape[0], grad.shape[1] // 2
    out = np.zeros((n_b, n, n_f), dtype=grad.dtype)
    for b in range(n_b):
        for f in range(2 * n_f):
            out[b, where[b, f], f % n_f] += grad[b, f]
    return out


@_jit
def _maxmin_last_forward(feats: Any) -> Any:
    """As :func:`_maxmin_forward` for structures-innermost ``[N, F, B]``: ``[2F, B]`` and the atoms.

    The loop body is that of :func:`_maxmin_forward` on purpose: with it in one shared
    ``@njit`` helper both ran slower (192 x 10 x 190 float32: 127-132 us against 86-88 us
    here, 162-167 against 144-152 there)."""
    n, n_f, n_b = feats.shape
    out = np.empty((2 * n_f, n_b), dtype=feats.dtype)
    where = np.zeros((2 * n_f, n_b), dtype=np.int64)
    for f in range(n_f):
        hi, lo, at_hi, at_lo, first = out[f], out[n_f + f], where[f], where[n_f + f], feats[0, f]
        for b in range(n_b):
            hi[b] = first[b]
            lo[b] = first[b]
        for a in range(1, n):
            row = feats[a, f]
            for b in range(n_b):
                v = row[b]
                if v > hi[b] or (v != v and hi[b] == hi[b]):
                    hi[b] = v
                    at_hi[b] = a
                if v < lo[b] or (v != v and lo[b] == lo[b]):
                    lo[b] = v
                    at_lo[b] = a
    return out, where


@_jit
def _maxmin_last_backward(grad: Any, where: Any, n: int) -> Any:
    n_f, n_b = grad.shape[0] // 2, grad.shape[1]
    out = np.zeros((n, n_f, n_b), dtype=grad.dtype)
    for f in range(2 * n_f):
        for b in range(n_b):
            out[where[f, b], f % n_f, b] += grad[f, b]
    return out


class MaxMin(torch.autograd.Function):
    """Max/min pooling over atoms: ``[B, N, F]`` -> ``[B, 2F]`` (torch's max/min over a middle
    dimension with indices cost about 0.5 ms a call at 96 Pt10 members; this about 0.05 ms).

    A view of a structures-innermost ``[N, F, B]`` array (``ClusterACSF``'s output) is pooled
    in that layout, without a copy; its gradient comes back in the same layout."""

    @staticmethod
    def forward(ctx: Any, feats: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.n = feats.shape[1]
        last = feats.permute(1, 2, 0)
        ctx.last = last.is_contiguous() and not feats.is_contiguous()
        if ctx.last:
            out, ctx.where = _maxmin_last_forward(last.detach().numpy())
            return torch.from_numpy(out).t()
        out, ctx.where = _maxmin_forward(feats.detach().contiguous().numpy())
        return torch.from_numpy(out)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        if ctx.last:
            g = _maxmin_last_backward(grad.t().contiguous().numpy(), ctx.where, ctx.n)
            return torch.from_numpy(g).permute(2, 0, 1)
        return torch.from_numpy(_maxmin_backward(grad.contiguous().numpy(), ctx.where, ctx.n))


def runs_on(t: torch.Tensor) -> bool:
    """Whether the kernels can take this tensor (CPU, float32 or float64, kernels enabled)."""
    return t.device.type == "cpu" and t.dtype in (torch.float32, torch.float64) and enabled()


# -- A whole cluster ACSF (G1/G2 and G5) in three kernels -------------------------------
#
# For isolated structures the torch glue around the kernels above (distances, cutoffs,
# unit vectors, layout copies, the Gaussians of G5, the scatter into the output layout,
# about thirty small passes and their backward) cost as much as the kernels themselves.
# Here all of it runs structures-innermost in three passes: geometry and exponents, then
# (after torch's vectorised exp) the sums in the output layout, then the whole backward to
# positions.


@_jit
def _cluster_geometry(
    x: Any, iu: Any, ju: Any, r_cut: float, cosine: bool, eta2: Any, rs2: Any, eta5: Any, floor: float
) -> Any:
    """Per pair p = (iu[p] < ju[p]) of positions ``x [N, 3, B]``: ``r``, ``1/r``, f_c and
    d f_c / dr ``[P, B]``; the unit vectors ``u [N, N, 3, B]`` (u[i, j] along x_j - x_i, zero
    beyond the cutoff); and the exponents ``[P, F2 + E, B]`` of the G2 Gaussians
    (-eta (r - R_s)^2) and of the G5 ones (-eta r^2), floored at ``floor``."""
    n, n_b = x.shape[0], x.shape[2]
    n_p, n_f2, n_e = iu.shape[0], eta2.shape[0], eta5.shape[0]
    d = np.empty((3, n_b), dtype=x.dtype)  # x_j - x_i of the current pair
    r = np.empty((n_p, n_b), dtype=x.dtype)
    inv_r = np.empty((n_p, n_b), dtype=x.dtype)
    fc = np.empty((n_p, n_b), dtype=x.dtype)
    dfc = np.empty((n_p, n_b), dtype=x.dtype)
    u = np.zeros((n, n, 3, n_b), dtype=x.dtype)
    expo = np.empty((n_p, n_f2 + n_e, n_b), dtype=x.dtype)
    r2 = np.empty(n_b, dtype=x.dtype)
    half_w = 0.5 * np.pi / r_cut
    for p in range(n_p):
        i, j = iu[p], ju[p]
        rp, ip, fp, dp = r[p], inv_r[p], fc[p], dfc[p]
        for b in range(n_b):
            r2[b] = 0.0
        for a in range(3):
            xi, xj, da = x[i, a], x[j, a], d[a]
            for b in range(n_b):
                v = xj[b] - xi[b]
                da[b] = v
                r2[b] += v * v
        for b in range(n_b):
            rb = np.sqrt(r2[b])
            rp[b] = rb
            ip[b] = 1.0 / rb
            t = rb / r_cut
            if rb > r_cut:
                fp[b] = 0.0
                dp[b] = 0.0
            elif cosine:
                fp[b] = 0.5 * (np.cos(np.pi * t) + 1.0)
                dp[b] = -half_w * np.sin(np.pi * t)
            else:  # 1 - 10 t^3 + 15 t^4 - 6 t^5
                fp[b] = 1.0 + t * t * t * (-10.0 + t * (15.0 - 6.0 * t))
                dp[b] = -30.0 * t * t * (1.0 - t) * (1.0 - t) / r_cut
        for a in range(3):
            da, uij, uji = d[a], u[i, j, a], u[j, i, a]
            for b in range(n_b):
                v = da[b] * ip[b] if rp[b] <= r_cut else 0.0
                uij[b] = v
                uji[b] = -v
        for f in range(n_f2):
            o, e, s = expo[p, f], -eta2[f], rs2[f]
            for b in range(n_b):
                t = rp[b] - s
                o[b] = max(e * t * t, floor)
        for f in range(n_e):
            o, e = expo[p, n_f2 + f], -eta5[f]
            for b in range(n_b):
                o[b] = max(e * rp[b] * rp[b], floor)
    return r, inv_r, fc, dfc, u, expo


@_jit
def _cluster_forward(
    gauss: Any,
    fc: Any,
    u: Any,
    iu: Any,
    ju: Any,
    ch: Any,
    col2: Any,
    jj: Any,
    kk: Any,
    qq: Any,
    zeta: Any,
    lam_of: Any,
    lams: Any,
    n_pairs: int,
    col5: Any,
    src5: Any,
    n_feats: int,
) -> Any:
    """Per-atom features ``[N, F, B]`` in the output layout from the exponentiated
    ``gauss [P, F2 + E, B]``; also returns ``g [N, N, E, B]`` = exp(-eta r^2) f_c for the backward."""
    n, n_b = u.shape[0], u.shape[3]
    n_f2 = col2.shape[0]
    n_e = gauss.shape[1] - n_f2
    out = np.zeros((n, n_feats, n_b), dtype=gauss.dtype)
    g = np.zeros((n, n, n_e, n_b), dtype=gauss.dtype)
    for p in range(iu.shape[0]):
        i, j = iu[p], ju[p]
        c = fc[p]
        for f in range(n_f2):
            gp, oi, oj = gauss[p, f], out[i, col2[f, ch[j]]], out[j, col2[f, ch[i]]]
            for b in range(n_b):
                v = gp[b] * c[b]
                oi[b] += v
                oj[b] += v
        for e in range(n_e):
            gp, gij, gji = gauss[p, n_f2 + e], g[i, j, e], g[j, i, e]
            for b in range(n_b):
                v = gp[b] * c[b]
                gij[b] = v
                gji[b] = v
    if col5.shape[0] and jj.shape[1]:
        n_c = zeta.shape[0]
        a = _g5_forward(u, g, jj, kk, qq, zeta, lam_of, lams, n_pairs)
        for i in range(n):
            for q in range(n_pairs):
                for t in range(col5.shape[0]):
                    o, s = out[i, col5[t, q]], a[i, q, src5[t] // n_c, src5[t] % n_c]
                    for b in range(n_b):
                        o[b] += 2.0 * s[b]
    return out, g


@_jit
def _cluster_backward(
    grad: Any,
    gauss: Any,
    g: Any,
    r: Any,
    inv_r: Any,
    fc: Any,
    dfc: Any,
    u: Any,
    iu: Any,
    ju: Any,
    ch: Any,
    col2: Any,
    eta2: Any,
    eta2_rs: Any,
    eta5: Any,
    r_cut: float,
    jj: Any,
    kk: Any,
    qq: Any,
    zeta: Any,
    lam_of: Any,
    lams: Any,
    n_pairs: int,
    col5: Any,
    src5: Any,
) -> Any:
    """Gradient ``[N, 3, B]`` of ``sum(grad * features)`` with respect to the positions."""
    n, n_b = u.shape[0], u.shape[3]
    n_f2, n_e = col2.shape[0], eta5.shape[0]
    grad_x = np.zeros((n, 3, n_b), dtype=grad.dtype)
    grad_u = np.zeros_like(u)
    grad_g = np.zeros_like(g)
    if col5.shape[0] and jj.shape[1]:
        n_c = zeta.shape[0]
        grad_a = np.zeros((n, n_pairs, n_e, n_c, n_b), dtype=grad.dtype)
        for i in range(n):
            for q in range(n_pairs):
                for t in range(col5.shape[0]):
                    o, s = grad_a[i, q, src5[t] // n_c, src5[t] % n_c], grad[i, col5[t, q]]
                    for b in range(n_b):
                        o[b] += 2.0 * s[b]
        grad_u, grad_g = _g5_backward(u, g, jj, kk, qq, zeta, lam_of, lams, grad_a)
    s0 = np.empty(n_b, dtype=grad.dtype)
    s1 = np.empty(n_b, dtype=grad.dtype)
    s2 = np.empty(n_b, dtype=grad.dtype)
    dot = np.empty(n_b, dtype=grad.dtype)
    for p in range(iu.shape[0]):
        i, j = iu[p], ju[p]
        for b in range(n_b):
            s0[b] = 0.0
            s1[b] = 0.0
            s2[b] = 0.0
        # G2: d/dr exp(-eta (r - R_s)^2) = -2 eta (r - R_s) exp(...)
        for f in range(n_f2):
            gp, gi, gj = gauss[p, f], grad[i, col2[f, ch[j]]], grad[j, col2[f, ch[i]]]
            e, es = eta2[f], eta2_rs[f]
            for b in range(n_b):
                w = (gi[b] + gj[b]) * gp[b]
                s0[b] += w
                s1[b] += w * e
                s2[b] += w * es
        # G5's exp(-eta r^2) f_c: s0 gathers d/d f_c, s1 and s2 d/dr as above with R_s = 0
        for e in range(n_e):
            gp, gij, gji, h = gauss[p, n_f2 + e], grad_g[i, j, e], grad_g[j, i, e], eta5[e]
            for b in range(n_b):
                w = (gij[b] + gji[b]) * gp[b]
                s0[b] += w
                s1[b] += w * h
        rp, ip, cp, dp = r[p], inv_r[p], fc[p], dfc[p]
        # total d/dr (zero beyond the cutoff, where f_c and its derivative are), times
        # d r / d (x_j - x_i) = u
        for b in range(n_b):
            s0[b] = 2.0 * cp[b] * (s2[b] - rp[b] * s1[b]) + s0[b] * dp[b]
            dot[b] = 0.0
        # unit vectors (zero beyond the cutoff): d u / d d = (1 - u u^T) / r, u_ji = -u_ij
        for a in range(3):
            ua, ga, gb = u[i, j, a], grad_u[i, j, a], grad_u[j, i, a]
            for b in range(n_b):
                dot[b] += ua[b] * (ga[b] - gb[b])
        for a in range(3):
            ua, ga, gb, xi, xj = u[i, j, a], grad_u[i, j, a], grad_u[j, i, a], grad_x[i, a], grad_x[j, a]
            for b in range(n_b):
                v = s0[b] * ua[b]
                if rp[b] <= r_cut:
                    v += (ga[b] - gb[b] - ua[b] * dot[b]) * ip[b]
                xj[b] += v
                xi[b] -= v
    return grad_x


class ClusterSpec(NamedTuple):
    """What ``ClusterACSF`` needs of one ACSF and composition (NumPy, in the input's dtype)."""

    iu: np.ndarray  # [P] first atom of each unordered pair
    ju: np.ndarray  # [P] second atom (iu < ju)
    ch: np.ndarray  # [N] element channel of each atom
    col2: np.ndarray  # [F2, n_el] output column of G2 term f with a neighbour of channel c
    eta2: np.ndarray  # [F2] G2 eta (G1: 0)
    rs2: np.ndarray  # [F2] G2 R_s
    eta2_rs: np.ndarray  # [F2] eta R_s
    eta5: np.ndarray  # [E] the unique G5 eta
    jj: np.ndarray  # [N, K] each atom's neighbour pairs j < k
    kk: np.ndarray  # [N, K]
    qq: np.ndarray  # [N, K] their element pair
    zeta: np.ndarray  # [C] integer zeta of each unique (zeta, lambda)
    lam_of: np.ndarray  # [C] its lambda's index in lams
    lams: np.ndarray  # [L] the unique lambdas
    n_pairs: int  # Q element pairs
    col5: np.ndarray  # [T, Q] output column of G5 term t for element pair q
    src5: np.ndarray  # [T] term t's place e * C + c in the [E, C] grid
    n_feats: int  # F per atom
    r_cut: float
    cosine: bool  # cosine cutoff, else polynomial
    floor: float  # exponents are floored here


class ClusterACSF(torch.autograd.Function):
    """Per-atom ACSF ``[B, N, F]`` of clusters (G1/G2 and integer-zeta G5) from positions
    ``[B, N, 3]`` by the three kernels above, for a :class:`ClusterSpec`.

    The output is a view of a structures-innermost ``[N, F, B]`` array (``MaxMin`` pools
    it without a copy)."""

    @staticmethod
    def forward(ctx: Any, positions: torch.Tensor, spec: ClusterSpec) -> torch.Tensor:  # type: ignore[override]
        s = spec
        x = positions.detach().permute(1, 2, 0).contiguous().numpy()
        r, inv_r, fc, dfc, u, gauss = _cluster_geometry(
            x, s.iu, s.ju, s.r_cut, s.cosine, s.eta2, s.rs2, s.eta5, s.floor
        )
        torch.from_numpy(gauss).exp_()
        g5 = (s.jj, s.kk, s.qq, s.zeta, s.lam_of, s.lams, s.n_pairs, s.col5, s.src5)
        out, g = _cluster_forward(gauss, fc, u, s.iu, s.ju, s.ch, s.col2, *g5, s.n_feats)
        ctx.inputs = (
            gauss, g, r, inv_r, fc, dfc, u, s.iu, s.ju, s.ch, s.col2, s.eta2, s.eta2_rs, s.eta5, s.r_cut, *g5
        )  # fmt: skip
        return torch.from_numpy(out).permute(2, 0, 1)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        grad_np = grad.permute(1, 2, 0).contiguous().numpy()
        grad_x = _cluster_backward(grad_np, *ctx.inputs)
        return torch.from_numpy(grad_x).permute(2, 0, 1), None
