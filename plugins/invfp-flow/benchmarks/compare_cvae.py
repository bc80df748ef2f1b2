"""The flow beside the cVAE on the paper's Table 1 protocol (reduced), one surrogate for both.

Protocol (Fung et al. 2022, Table 1; as invfp's benchmarks/table1.py runs it for the
cVAE): the built-in Pt10-EMT set featurized with ACSF ``fung2022``; a surrogate trained
on everything but a held-out test split scores the samples; each generative model is
trained on n structures picked by furthest-point sampling from the same pool and draws
``--samples`` fingerprints per target; targets spread evenly between the 1st and 99th
percentiles of the formation energy. Reported per model and n: the surrogate's MAE to
the target and the % of samples within ±0.1 eV/atom. Both models see identical data,
splits, targets and surrogate, so only the model differs.

    OMP_NUM_THREADS=1 python plugins/invfp-flow/benchmarks/compare_cvae.py \\
        --data-size small --sizes 100,300 --epochs 300 --surrogate-epochs 300 --samples 2000
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-size", default="small", choices=("full", "small"), help="built-in Pt10-EMT size")
    parser.add_argument("--sizes", default="100,300", help="comma-separated training sizes")
    parser.add_argument("--epochs", type=int, default=300, help="epochs of both generative models")
    parser.add_argument("--surrogate-epochs", type=int, default=300)
    parser.add_argument("--samples", type=int, default=2000, help="samples per target (paper: 10000)")
    parser.add_argument("--targets", type=int, default=7)
    parser.add_argument("--delta", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-params", default="{}", help='JSON, e.g. \'{"temperature": 0.7}\'')
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from invfp_flow.model import ConditionalFlow

    from invfp import get_representation
    from invfp.data import featurize, furthest_point_sampling, load
    from invfp.models.cvae import CVAE
    from invfp.models.surrogate import Surrogate
    from invfp.models.training import split_indices

    t0 = time.perf_counter()
    ds = load("pt10-emt", size=args.data_size)
    R = featurize(ds, get_representation("acsf", preset="fung2022"))
    y = ds.y
    pool, test = split_indices(len(y), [0.1], args.seed)
    sur = Surrogate(epochs=args.surrogate_epochs, test_fraction=0.0)
    sur.fit(R[pool], y[pool], seed=args.seed, device="cpu")
    sur_mae = float(np.abs(sur.predict(R[test]) - y[test]).mean())
    print(f"data: {len(y)} frames, y {y.min():.2f}..{y.max():.2f} eV/atom, D={R.shape[1]}; "
          f"surrogate test MAE {sur_mae:.3f} eV/atom; load {os.getloadavg()[0]:.1f}")
    targets = np.round(np.linspace(*np.percentile(y, [1, 99]), args.targets), 2)
    models = {"cvae": lambda: CVAE(epochs=args.epochs), "flow": lambda: ConditionalFlow(epochs=args.epochs, **json.loads(args.flow_params))}
    results: dict[str, dict[int, list[tuple[float, float]]]] = {name: {} for name in models}
    seconds: dict[str, dict[int, float]] = {name: {} for name in models}
    for n in (int(s) for s in args.sizes.split(",")):
        n_used = min(n, pool.size)
        idx = pool[furthest_point_sampling(R[pool], n_used, seed=args.seed)] if n_used < pool.size else pool
        for name, make in models.items():
            start = time.perf_counter()
            model = make()
            model.fit(R[idx], y[idx], seed=args.seed, device="cpu")
            rows = []
            for k, target in enumerate(targets):
                err = np.abs(sur.predict(model.sample(float(target), args.samples, seed=args.seed + k)) - target)
                rows.append((float(err.mean()), float(100 * (err <= args.delta).mean())))
            results[name][n_used] = rows
            seconds[name][n_used] = time.perf_counter() - start
            pcts = [p for _, p in rows]
            print(f"{name} n={n_used}: % within ±{args.delta:g}: {min(pcts):.1f}-{max(pcts):.1f} "
                  f"(mean {np.mean(pcts):.1f}); MAE mean {np.mean([m for m, _ in rows]):.3f}; "
                  f"{seconds[name][n_used]:.0f} s", flush=True)
    print(f"\n| target (eV/atom) | {' | '.join(f'{m} n={n}' for m in models for n in results[m])} |")
    print("|---" * (1 + sum(len(r) for r in results.values())) + "|")
    for k, target in enumerate(targets):
        cells = [f"{results[m][n][k][1]:.1f} % ({results[m][n][k][0]:.3f})" for m in models for n in results[m]]
        print(f"| {target:.2f} | {' | '.join(cells)} |")
    print(f"total {time.perf_counter() - t0:.0f} s; load {os.getloadavg()[0]:.1f}")
    if args.json:
        from invfp.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps({"args": vars(args), "targets": targets.tolist(),
                                                 "surrogate_test_mae": sur_mae, "results": results,
                                                 "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
