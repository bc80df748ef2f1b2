"""The paper's Pt10 pipeline through the library API, on the built-in Pt10-EMT data.

data → ACSF (fung2022) → cVAE conditioned on the formation energy → sample fingerprints
for target energies → reconstruct them to atoms → filter (loss threshold, geometry,
surrogate) → check every structure with EMT (the oracle, as DFT was in the paper's
Table 2). ``invfp run`` does the same from the command line, with storage and resume.

    python examples/pt10_pipeline.py            # full built-in set (made once, cached), paper-sized models
    python examples/pt10_pipeline.py --quick    # a few hundred frames, short training (about a minute)
"""

from __future__ import annotations

import argparse

import numpy as np

import invfp
from invfp import data
from invfp.engine import Pipeline
from invfp.models.surrogate import Surrogate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, short training, few samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quick = args.quick

    ds = data.load("pt10-emt", size="small" if quick else "full", progress=not quick)
    rep = invfp.get_representation("acsf", preset="fung2022")
    R = data.featurize(ds, rep, progress=not quick)  # cached on disk, keyed by data and representation
    train = data.furthest_point_sampling(R, 200 if quick else 3000, seed=args.seed)
    print(f"data: {len(ds)} frames of {ds.formula}, {ds.property} {ds.y.min():.2f}–{ds.y.max():.2f} {ds.units}")

    generator = invfp.get_model("cvae", epochs=60 if quick else 2000, patience=None if quick else 200)
    generator.fit(R[train], ds.y[train], seed=args.seed, progress=not quick)
    surrogate = Surrogate(epochs=80 if quick else 2000, patience=None if quick else 200)
    report = surrogate.fit(R, ds.y, seed=args.seed, progress=not quick)
    print(f"surrogate held-out MAE: {report['test_mae']:.3f} {ds.units}")

    options = {"restarts": 8, "hops": 1, "steps": 150, "refine_steps": 50} if quick else {}
    pipeline = Pipeline(
        rep,
        generator,
        numbers=ds.numbers,
        cell=20.0,
        surrogate=surrogate,
        filters=("loss-threshold", "geometry", "surrogate"),
        oracle="energy",  # EMT: the true formation energy of every reconstructed structure
        optimizer_options=options,
    )
    calibration = pipeline.calibrate(R[train[:4 if quick else 12]], seed=args.seed)
    print(f"loss threshold from real training structures: {calibration['threshold']:.3g}")

    targets = np.quantile(ds.y[train], [0.1, 0.5, 0.9]).round(2)
    result = pipeline.run(targets, 4 if quick else 100, seed=args.seed, progress=not quick)
    print("target  generated  accepted  MAE(all)  within±0.1(all)  within±0.1(accepted)")
    for row in result.table:
        within_acc = "-" if row["within_accepted"] is None else f"{row['within_accepted']:.0f} %"
        print(
            f"{row['target']:6.2f}  {row['generated']:9d}  {row['accepted']:8d}  {row['mae_all']:8.3f}"
            f"  {row['within_all']:14.0f} %  {within_acc:>20}"
        )


if __name__ == "__main__":
    main()
