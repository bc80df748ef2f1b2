"""Reconstruction from SOAP fingerprints beside ACSF: recovery rate and time per structure.

Targets: Pt10 local minima made here with ASE's EMT + FIRE (random starts in a ±3.5 Å
box, minimum separation 2.2 Å, fmax 0.05), and a few small molecules from ase.build
(with a small seeded rattle). For each representation the target fingerprint of each
structure is reconstructed with ``invfp.reconstruct`` (adam-hopping, the same settings
for both), and the best structure is compared with the truth by
``invfp.metrics.rmsd`` (best permutation and rigid alignment, mirror images equal
since both fingerprints are reflection invariant). Recovered: RMSD <= 0.1 Å.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soap.py             # defaults
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_soap.py --n-pt10 2 --molecules CH4 --restarts 8

Prints one line per (representation, structure) and a summary table; ``--json PATH``
writes every number.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np


def pt10_minima(count: int, seed: int) -> list:
    """``count`` EMT Pt10 local minima from random starts (the built-in data set's recipe)."""
    from ase import Atoms
    from ase.calculators.emt import EMT
    from ase.optimize import FIRE

    rng = np.random.default_rng(seed)
    out = []
    while len(out) < count:
        pos = rng.uniform(-3.5, 3.5, size=(10, 3))
        d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(10, 1)]
        if d.min() < 2.2:
            continue
        atoms = Atoms("Pt10", positions=pos)
        atoms.calc = EMT()
        FIRE(atoms, logfile=None).run(fmax=0.05, steps=300)
        atoms.calc = None
        out.append(atoms)
    return out


def molecules(names: list[str], seed: int) -> list:
    from ase.build import molecule

    out = []
    for k, name in enumerate(names):
        atoms = molecule(name)
        atoms.rattle(0.02, seed=seed + k)  # off exact symmetry, where max/min pooling has ties
        out.append(atoms)
    return out


def representations(species: list[int], is_pt10: bool, soap: dict) -> dict:
    import invfp

    if is_pt10:
        acsf = invfp.get_representation("acsf", preset="fung2022")
    else:
        acsf = invfp.get_representation(
            "acsf", species=species, r_cut=6.0,
            g2_params=[[eta, rs] for eta in (0.1, 0.5, 1.0, 3.0) for rs in (0.0, 1.0, 1.5, 2.0, 3.0)],
            g5_params=[[eta, z, lam] for eta in (0.1, 0.5) for z in (1.0, 4.0) for lam in (-1.0, 1.0)],
        )
    return {"acsf": acsf, "soap": invfp.get_representation("soap", species=species, **soap)}


def derivative_cost(atoms, soap: dict, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per structure: SOAP forward only, with analytical and with numerical derivatives."""
    import torch

    import invfp

    numbers = torch.as_tensor(atoms.numbers)
    out = {}
    for label, method, grad in (("forward", "auto", False), ("analytical", "analytical", True),
                                ("numerical", "numerical", True)):
        rep = invfp.get_representation("soap", derivatives=method, **soap)
        pos = torch.as_tensor(np.repeat(atoms.positions[None], repeats, axis=0)).requires_grad_(grad)
        start = time.perf_counter()
        value = rep(pos, numbers).sum()
        if grad:
            value.backward()
        out[label] = (time.perf_counter() - start) / repeats * 1e3
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-pt10", type=int, default=3, help="Pt10 EMT minima (default 3)")
    parser.add_argument("--molecules", default="CH4,NH3,CH3OH", help="comma-separated ase.build names ('' for none)")
    parser.add_argument("--reps", default="acsf,soap", help="representations to compare")
    parser.add_argument("--restarts", type=int, default=16)
    parser.add_argument("--hops", type=int, default=2)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soap", default="r_cut=6.0,n_max=6,l_max=4,sigma=0.5", help="SOAP settings k=v,...")
    parser.add_argument("--json", default=None, help="write all results here")
    args = parser.parse_args()

    import torch

    import invfp
    from invfp.metrics import rmsd

    torch.set_num_threads(1)
    soap = {k: (int(v) if k in ("n_max", "l_max") else float(v))
            for k, v in (item.split("=") for item in args.soap.split(","))}
    structures = [("Pt10-EMT", a) for a in pt10_minima(args.n_pt10, args.seed)]
    names = [m for m in args.molecules.split(",") if m]
    structures += list(zip(names, molecules(names, args.seed), strict=True))
    wanted = args.reps.split(",")
    options = {"restarts": args.restarts, "hops": args.hops, "steps": args.steps}
    print(f"threads=1 OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')} load={os.getloadavg()} {options} "
          f"soap={soap}")
    cost = derivative_cost(structures[0][1], soap) if structures else {}
    print("SOAP ms per structure (forward only / + analytical / + numerical derivatives and backward): "
          + " / ".join(f"{v:.2f}" for v in cost.values()))
    rows = []
    for label, atoms in structures:
        species = sorted(set(atoms.numbers.tolist()))
        for rep_name, rep in representations(species, label == "Pt10-EMT", soap).items():
            if rep_name not in wanted:
                continue
            target = rep.featurize(atoms)
            start = time.perf_counter()
            (result,) = invfp.reconstruct(
                target[None], numbers=atoms.numbers, representation=rep, seed=args.seed, **options
            )
            seconds = time.perf_counter() - start
            dist = rmsd(atoms, result.atoms, allow_reflection=True)
            row = {"rep": rep_name, "structure": label, "dim": int(target.shape[0]), "rmsd": dist,
                   "loss": result.loss, "seconds": seconds, "steps": result.steps, "recovered": dist <= 0.1}
            rows.append(row)
            print(f"{rep_name:5s} {label:9s} D={row['dim']:4d} rmsd={dist:6.3f} Å loss={result.loss:.2e} "
                  f"time={seconds:7.1f} s steps={result.steps}", flush=True)
    print("\n| representation | set | recovered (RMSD <= 0.1 Å) | median RMSD (Å) | time / structure (s) |")
    print("|---|---|---|---|---|")
    for rep_name in wanted:
        for group in ("Pt10-EMT", "molecules"):
            sel = [r for r in rows if r["rep"] == rep_name and (r["structure"] == "Pt10-EMT") == (group == "Pt10-EMT")]
            if sel:
                print(f"| {rep_name} | {group} | {sum(r['recovered'] for r in sel)}/{len(sel)} | "
                      f"{np.median([r['rmsd'] for r in sel]):.3f} | {np.mean([r['seconds'] for r in sel]):.1f} |")
    print(f"load after: {os.getloadavg()}")
    if args.json:
        from invfp.utils import atomic_write_text

        atomic_write_text(args.json, json.dumps({"options": options, "soap": soap, "soap_cost_ms": cost, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
