"""Reconstruct a periodic crystal (rocksalt NaCl) from its ACSF fingerprint, cell given.

The fingerprint uses every periodic image within the cutoff; the answer is unique only up
to a translation and a permutation of same-element atoms, which the RMSD accounts for.

    python examples/crystal.py [--quick]
"""

from __future__ import annotations

import argparse

from ase.build import bulk

import invfp
from invfp.metrics import rmsd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer restarts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", help="write the reconstructed crystal here (any ASE format)")
    args = parser.parse_args()

    truth = bulk("NaCl", "rocksalt", a=5.64, cubic=True)  # 8 atoms, 5.64 Å cube
    truth.rattle(0.05, seed=1)  # off the high-symmetry point, a generic structure
    rep = invfp.get_representation(
        "acsf",
        species=["Na", "Cl"],
        r_cut=6.0,
        g2_params=[[eta, rs] for eta in (0.5, 1.0, 2.0) for rs in (2.5, 3.0, 4.0, 5.0)],
        g4_params=[[0.05, zeta, lam] for zeta in (1.0, 4.0) for lam in (-1.0, 1.0)],
        periodic=True,
    )
    target = rep.featurize(truth)
    (result,) = invfp.reconstruct(
        target,
        numbers=truth.numbers,
        cell=truth.cell.array,
        pbc=True,
        representation=rep,
        seed=args.seed,
        **({"restarts": 4, "hops": 1, "steps": 150, "refine_steps": 100} if args.quick else {"restarts": 16}),
    )
    print(f"fingerprint length: {target.shape[0]}")
    print(f"reconstruction loss (MAE): {result.loss:.3g}")
    print(f"RMSD to the truth: {rmsd(truth, result.atoms):.4f} Å")
    if args.output:
        result.atoms.write(args.output)


if __name__ == "__main__":
    main()
