"""How wide is the answer's basin? Single descents of the hard EMT Pt10 frames from starts built from the answer.

The frames of issue 4's item 1 that searches miss (indices 10, 12, 14, 34, 46, 48 of
``bench_reconstruct.pt10_set(50, 0)``) are found by few searches from random starts. This
script measures what a single local descent does from starts that already know part of the
answer, to tell a search problem (the descent works once near enough) from a landscape
problem (it fails even from close by):

- ``--start random``: uniform in a 3.5 Å sphere, no pair closer than 2 Å (no knowledge);
- ``--start displaced --sigma S``: the answer with every coordinate displaced by N(0, S²) Å;
- ``--start partial --keep K``: K atoms (drawn per start) at their true places, the others
  uniform in the sphere (pairs >= 2 Å); ``--frozen`` holds those K atoms fixed, so only the
  others' 3 (10 - K) coordinates are searched;
- ``--start shell``: the atom that holds most of the G2 maxima at the origin, every other atom
  at its true distance from it in a random direction (what a perfect decoding of one atom's
  radial environment from the pooled fingerprint would give).

Each start gets one descent shaped like adam-hopping's (``invfp.optimizers.common.Objective``:
the raw fingerprint MAE plus the default overlap penalty; Adam with a cosine step size from
0.1 to 0.005 Å over ``--steps`` 300, random kicks of 0.03 Å cooling to zero over the first
half). ``--smooth S`` takes each gradient at positions displaced by N(0, s²), s falling from S
to 0 over the first 70 % of the steps (randomized smoothing of the landscape). Prints, per
frame, how many starts end within RMSD 0.1 Å of the answer (mirror images allowed).

    OMP_NUM_THREADS=1 python benchmarks/bench_landscape.py --start partial --keep 9 --frozen --starts 256
    OMP_NUM_THREADS=1 python benchmarks/bench_landscape.py --start displaced --sigma 0.4 --starts 32
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

HARD = (10, 12, 14, 34, 46, 48)
SPHERE = 3.5
MIN_PAIR = 2.0


def directions(rng: np.random.Generator, n_atoms: int) -> np.ndarray:
    """Uniform random unit vectors ``[n_atoms, 3]``."""
    v = rng.normal(size=(n_atoms, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sphere(rng: np.random.Generator, n_atoms: int) -> np.ndarray:
    """Uniform points in the start sphere (centred at the origin)."""
    return directions(rng, n_atoms) * SPHERE * rng.uniform(size=(n_atoms, 1)) ** (1 / 3)


def spread(positions: np.ndarray) -> bool:
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1) + np.eye(len(positions)) * 1e9
    return bool(d.min() >= MIN_PAIR)


def starts(args: argparse.Namespace, truth: np.ndarray, centre: int, rng: np.random.Generator) -> tuple:
    """``(positions [S, N, 3], free [S, N, 1])``: the starts and which atoms the descent may move."""
    n = len(truth)
    truth = truth - truth.mean(0)
    shell = np.linalg.norm(truth - truth[centre], axis=1)[:, None]  # each atom's true distance to the centre
    pos, free = np.zeros((args.starts, n, 3)), np.ones((args.starts, n, 1))
    for s in range(args.starts):
        for _ in range(1000):  # redraw until no pair is closer than MIN_PAIR (displaced starts: as drawn)
            if args.start == "displaced":
                p = truth + args.sigma * rng.normal(size=truth.shape)
                break
            if args.start == "random":
                p = sphere(rng, n)
            elif args.start == "partial":
                moved = np.ones(n, dtype=bool)
                moved[rng.permutation(n)[: args.keep]] = False
                p = np.where(moved[:, None], sphere(rng, n), truth)
                if args.frozen:
                    free[s] = moved[:, None]
            else:  # shell
                p = directions(rng, n) * shell
            if spread(p):
                break
        pos[s] = p
    return pos, free


def descend(objective, x0, free, args: argparse.Namespace, generator):  # type: ignore[no-untyped-def]
    """One descent of every start at once: final positions and raw MAE."""
    import torch

    from invfp.optimizers.common import cosine

    index = torch.zeros(x0.shape[0], dtype=torch.long)
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=0.1)
    for step in range(args.steps):
        frac = step / max(args.steps - 1, 1)
        for group in opt.param_groups:
            group["lr"] = cosine(step, args.steps, 0.1, 0.005)
        at = x.detach()
        if args.smooth > 0 and frac < 0.7:
            at = at + args.smooth * (1 - frac / 0.7) * torch.randn(at.shape, generator=generator) * free
        _, _, grad = objective(at, index)
        x.grad = grad * free
        opt.step()
        if frac < 0.5:
            with torch.no_grad():
                x += 0.03 * (1 - 2 * frac) * torch.randn(x.shape, generator=generator) * free
    _, raw, _ = objective(x.detach(), index, grad=False)
    return x.detach(), raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--start", choices=("random", "displaced", "partial", "shell"), default="partial")
    parser.add_argument("--sigma", type=float, default=0.4, help="displaced: Å per coordinate")
    parser.add_argument("--keep", type=int, default=9, help="partial: atoms at their true places")
    parser.add_argument("--frozen", action="store_true", help="partial: hold the kept atoms fixed")
    parser.add_argument("--smooth", type=float, default=0.0, help="randomized smoothing (Å) of the gradient")
    parser.add_argument("--starts", type=int, default=256, help="starts per frame")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--frames", type=int, nargs="+", default=list(HARD), help="indices of pt10_set(50, 0)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not 0 <= args.keep <= 10:
        parser.error("--keep must lie in 0..10 (Pt10 has 10 atoms)")
    if args.starts < 1 or args.steps < 1:
        parser.error("--starts and --steps must be at least 1")
    if args.sigma < 0 or args.smooth < 0:
        parser.error("--sigma and --smooth must not be negative")
    if any(not 0 <= i < 50 for i in args.frames):
        parser.error("--frames indices must lie in 0..49 (the set has 50 structures)")

    import torch
    from bench_reconstruct import load, pt10_set

    import invfp
    from invfp.metrics import rmsd
    from invfp.optimizers.common import Objective
    from invfp.reconstruction import ReconstructionProblem

    torch.set_num_threads(1)
    frames = pt10_set(max(args.frames) + 1, 0)
    rep = invfp.get_representation("acsf", preset="fung2022")
    per_atom = invfp.get_representation("acsf", preset="fung2022", pooling=None)
    what = {"random": "random", "displaced": f"displaced by {args.sigma} Å", "shell": "shell",
            "partial": f"{args.keep} atoms true{' (frozen)' if args.frozen else ''}"}[args.start]
    print(f"single descents ({args.steps} steps) of EMT Pt10 frames from starts: {what}; smooth {args.smooth} Å; "
          f"{args.starts} starts per frame; {load()}")
    total = 0
    for index in args.frames:
        truth = frames[index]
        rng = np.random.default_rng([args.seed, index])
        generator = torch.Generator().manual_seed(args.seed * 1000 + index)
        centre = int(np.bincount(np.argmax(per_atom.featurize(truth)[:, :140], axis=0)).argmax())
        pos, free = starts(args, truth.positions, centre, rng)
        problem = ReconstructionProblem(
            representation=rep, targets=torch.as_tensor(rep.featurize(truth)[None], dtype=torch.float32),
            numbers=torch.as_tensor(truth.numbers), cell=None, pbc=(False, False, False),
            device=torch.device("cpu"), dtype=torch.float32, feature_scale=torch.ones(rep.dim(truth.numbers)),
        )
        objective = Objective(problem, "mae", min_distance=0.6, penalty=1.0, chunk=None)
        began = time.perf_counter()
        x, raw = descend(objective, torch.as_tensor(pos, dtype=torch.float32),
                         torch.as_tensor(free, dtype=torch.float32), args, generator)
        found = 0
        for k in range(len(x)):
            atoms = truth.copy()
            atoms.positions = x[k].double().numpy()
            found += rmsd(truth, atoms, allow_reflection=True) <= 0.1
        total += found
        print(f"frame {index}: recovered {found}/{args.starts}; final MAE median {raw.median():.2e}, "
              f"min {raw.min():.2e}; {time.perf_counter() - began:.0f} s")
    print(f"all frames: recovered {total}/{args.starts * len(args.frames)}")


if __name__ == "__main__":
    main()
