"""Benchmark the torch ACSF (fung2022 preset) against dscribe on random Pt10 clusters.

Prints, for 1, 100 and 1000 structures, the time per structure of the forward pass
and of forward + backward (gradient w.r.t. positions, as in reconstruction), in
float32 and float64, beside dscribe's ``ACSF.create`` (values only, n_jobs=1) on the
same 100 structures, with ratios from the same run. Each figure is taken twice, back to
back: with the fused CPU kernels (``kernels``, the default where numba is installed) and
with torch's own code (``torch``, as ``INVFP_NUMBA=0`` and CUDA run); the last column is
torch's time over the kernels'.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_acsf.py [--threads 1] [--repeats 5]

Wall times depend on what else runs on the machine: run it alone and report the load
(``uptime``) with the figures.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from ase import Atoms

from invfp.representations import _kernels
from invfp.representations.acsf import ACSF


def random_pt10(n: int, seed: int = 0, box: float = 3.5, min_distance: float = 2.2) -> np.ndarray:
    """``[n, 10, 3]`` positions uniform in a ±box Å cube with all pairs >= min_distance apart."""
    rng = np.random.default_rng(seed)
    out = np.empty((n, 10, 3))
    for k in range(n):
        while True:
            pos = rng.uniform(-box, box, (10, 3))
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
            if d[np.triu_indices(10, 1)].min() >= min_distance:
                out[k] = pos + 10.0  # centred in the 20 Å cell
                break
    return out


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall time and median CPU time of ``fn`` over ``repeats`` runs after a warm-up.

    With one thread, the CPU time is what the work costs on one core; the wall time also
    counts waiting for a core when other processes compete for them.
    """
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per figure (median)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 100, 1000])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rep = ACSF.fung2022()
    numbers = [78] * 10
    positions = random_pt10(max(args.sizes))
    rows = []
    paths = ("kernels", "torch") if _kernels.enabled() else ("torch",)
    for dtype, n, path in itertools.product((torch.float32, torch.float64), args.sizes, paths):
        os.environ["INVFP_NUMBA"] = "1" if path == "kernels" else "0"
        pos = torch.as_tensor(positions[:n], dtype=dtype)

        def forward(pos: torch.Tensor = pos) -> None:
            with torch.no_grad():
                rep(pos, numbers)

        def forward_backward(pos: torch.Tensor = pos) -> None:
            p = pos.clone().requires_grad_(True)
            rep(p, numbers).sum().backward()

        rows.append(
            (
                path,
                str(dtype).replace("torch.", ""),
                n,
                timed(forward, args.repeats),
                timed(forward_backward, args.repeats),
            )
        )
    os.environ.pop("INVFP_NUMBA", None)

    from dscribe.descriptors import ACSF as DscribeACSF

    n_ds = 100 if 100 in args.sizes else min(args.sizes)
    params = rep.params
    dscribe = DscribeACSF(
        species=["Pt"], r_cut=params["r_cut"], g2_params=params["g2_params"], g5_params=params["g5_params"]
    )
    frames = [Atoms("Pt10", positions=p, cell=[20.0] * 3) for p in positions[:n_ds]]
    t_ds = timed(lambda: dscribe.create(frames, n_jobs=1), args.repeats)

    load = os.getloadavg()
    print(
        f"torch {torch.__version__}, torch threads {torch.get_num_threads()}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {args.repeats} repeats (median)"
    )
    print(
        f"dscribe ACSF.create, {n_ds} structures, values only, n_jobs=1: "
        f"wall {t_ds[0] * 1e3:.1f} ms ({t_ds[0] / n_ds * 1e3:.3f} ms/structure), "
        f"CPU {t_ds[1] * 1e3:.1f} ms ({t_ds[1] / n_ds * 1e3:.3f} ms/structure)"
    )
    for k, clock in enumerate(("wall", "CPU")):
        print(f"\n{clock} time")
        header = (
            f"{'path':8} {'dtype':8} {'B':>5} {'fwd ms/str':>11} {'f+b ms/str':>11} {'f+b total ms':>13} "
            f"{'dscribe/fwd':>12} {'dscribe/f+b':>12} {'torch/kernels f+b':>18}"
        )
        print(header)
        print("-" * len(header))
        per_ds = t_ds[k] / n_ds
        torch_fb = {(dtype, n): t_fb[k] for path, dtype, n, _, t_fb in rows if path == "torch"}
        for path, dtype, n, t_f, t_fb in rows:
            f, fb = t_f[k] / n, t_fb[k] / n
            ratio = f"{torch_fb[dtype, n] / t_fb[k]:>17.2f}x" if path == "kernels" else ""
            print(
                f"{path:8} {dtype:8} {n:>5} {f * 1e3:>11.3f} {fb * 1e3:>11.3f} {t_fb[k] * 1e3:>13.1f} "
                f"{per_ds / f:>11.1f}x {per_ds / fb:>11.1f}x {ratio}"
            )
    print("\n(dscribe ratios > 1: the torch ACSF per structure is that many times faster than dscribe's create)")


if __name__ == "__main__":
    main()
