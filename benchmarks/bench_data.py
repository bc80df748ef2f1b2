"""Benchmark the built-in Pt10-EMT data set: build time, contents, FPS and featurization.

Builds ``load("pt10-emt")`` from scratch in a fresh cache directory (all cores, one
thread per worker), then prints the frame count, the minima, a text histogram of the
formation energies, the time of a cached reload, of furthest-point sampling 3,000 and
300 of the frames, and of featurizing every frame with ACSF ``fung2022``.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_data.py [--size full|small] [--cache-dir DIR]
        [--no-featurize]

Wall times depend on what else runs on the machine: run it alone and report the load
(``uptime``) with the figures.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="full", choices=("full", "small"))
    parser.add_argument("--cache-dir", type=Path, default=None, help="default: a fresh temporary directory")
    parser.add_argument("--no-featurize", action="store_true", help="skip the ACSF featurization")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    cache = args.cache_dir or Path(tempfile.mkdtemp(prefix="invfp-bench-data-"))
    os.environ["INVFP_CACHE_DIR"] = str(cache)

    from invfp.data import BUILTIN, builtin_path, featurize, furthest_point_sampling, load, text_histogram
    from invfp.data.make import available_cores

    print(f"load average before: {os.getloadavg()}; {available_cores()} worker processes; cache {cache}")
    print(f"recipe: {BUILTIN['pt10-emt'][args.size]}")
    t0 = time.perf_counter()
    ds = load("pt10-emt", size=args.size, progress=True)
    build = time.perf_counter() - t0
    print(f"load average after build: {os.getloadavg()}; ase.db: {builtin_path('pt10-emt', args.size)}")

    minima = ds.column("is_minimum").astype(bool)
    relax = ds.column("relaxation")
    print(
        f"\nbuilt pt10-emt/{args.size}: {len(ds)} frames, {len(set(relax.tolist()))} relaxations, "
        f"{int(minima.sum())} minima, in {build:.1f} s"
    )
    print(
        f"formation energy [eV/atom]: min {ds.y.min():.3f}, max {ds.y.max():.3f}, mean {ds.y.mean():.3f}; "
        f"minima {ds.y[minima].min():.3f} to {ds.y[minima].max():.3f}"
    )
    print(text_histogram(ds.y, bins=16))

    t0 = time.perf_counter()
    again = load("pt10-emt", size=args.size)
    print(f"\ncached reload: {time.perf_counter() - t0:.2f} s ({len(again)} frames)")

    R = None
    if not args.no_featurize:
        from invfp.representations.acsf import ACSF

        rep = ACSF(preset="fung2022")
        t0 = time.perf_counter()
        R = featurize(ds, rep, progress=True, device="cpu")
        print(
            f"featurize (ACSF fung2022, CPU, float64, 1 thread): {R.shape} in {time.perf_counter() - t0:.1f} s"
        )
        t0 = time.perf_counter()
        featurize(ds, rep, device="cpu")
        print(f"featurize again (cache hit): {time.perf_counter() - t0:.2f} s")
    if R is None:
        R = np.random.default_rng(0).normal(size=(len(ds), 380))
        print("(FPS below on random [n, 380] features)")
    for n in (3000, 300):
        if n <= len(R):
            t0 = time.perf_counter()
            idx = furthest_point_sampling(R, n)
            took = time.perf_counter() - t0
            print(
                f"FPS {n} of {len(R)}: {took:.1f} s; y of the picks {ds.y[idx].min():.3f} to {ds.y[idx].max():.3f}"
            )
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
