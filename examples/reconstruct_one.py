"""Reconstruct one structure from its fingerprint (the paper's Algorithm 1, batched).

A Pt cluster is relaxed with ASE's EMT, featurized with the paper's ACSF (``fung2022``),
and rebuilt from that 380-number fingerprint alone; the result is compared with the
truth by a permutation- and rotation-invariant RMSD. Then a guess (the truth displaced
by 0.1 Å per coordinate) is refined by one local L-BFGS search started from it
(``start=``), the way to polish a structure you already have.

    python examples/reconstruct_one.py            # Pt10, default settings
    python examples/reconstruct_one.py --quick    # Pt6, fewer restarts (seconds)
"""

from __future__ import annotations

import argparse

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.optimize import FIRE

import invfp
from invfp.metrics import rmsd


def random_cluster(n: int, seed: int) -> Atoms:
    """n Pt atoms uniform in a ±3.5 Å box, at least 2.2 Å apart, in a 20 Å cell."""
    rng = np.random.default_rng(seed)
    while True:
        pos = rng.uniform(-3.5, 3.5, (n, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(n, 1)]
        if d.min() > 2.2:
            return Atoms(f"Pt{n}", positions=pos + 10.0, cell=[20.0] * 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smaller cluster and fewer restarts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    truth = random_cluster(6 if args.quick else 10, args.seed)
    truth.calc = EMT()
    FIRE(truth, logfile=None).run(fmax=0.05, steps=300)

    rep = invfp.get_representation("acsf", preset="fung2022")
    target = rep.featurize(truth)  # [380] for Pt10
    options = {"restarts": 16, "hops": 2} if args.quick else {}
    (result,) = invfp.reconstruct(
        target, numbers=truth.numbers, cell=20.0, representation=rep, seed=args.seed, **options
    )
    print(f"fingerprint length: {target.shape[0]}")
    print(f"reconstruction loss (MAE): {result.loss:.3g}")
    print(f"RMSD to the truth: {rmsd(truth, result.atoms, allow_reflection=True):.4f} Å")
    print(f"time: {result.time:.1f} s, gradient steps: {result.steps}")

    guess = truth.copy()
    guess.positions += np.random.default_rng(args.seed).normal(0.0, 0.1, guess.positions.shape)
    (refined,) = invfp.reconstruct(
        target, numbers=truth.numbers, cell=20.0, representation=rep, seed=args.seed,
        start=guess, optimizer="lbfgs", restarts=1, attempts=1,
    )
    print(f"guess RMSD to the truth: {rmsd(truth, guess):.4f} Å")
    print(f"refined from the guess: RMSD {rmsd(truth, refined.atoms, allow_reflection=True):.4f} Å, "
          f"loss {refined.loss:.3g}, {refined.steps} steps")


if __name__ == "__main__":
    main()
