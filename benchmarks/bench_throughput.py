"""Throughput of a run: samples generated, reconstructed and validated per second, by executor.

Runs the same tiny pipeline (``invfp.testing.tiny_pipeline``: Pt5, 14-feature ACSF,
small cVAE, 4 restarts × 2 descents of adam-hopping, geometry + loss filters, EMT
oracle) with the local executor (in this process) and with a Dask LocalCluster of 1
and 2 single-threaded worker processes, writing a results store each time, and prints
a table. Cluster start-up and the workers' first imports are not timed (one warm-up
chunk runs first); shipping the pipeline to the workers is. Beside the wall time it
prints the CPU time spent per sample (this process plus every worker process), which
a busy machine inflates much less than the wall time: it shows Dask's overhead.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_throughput.py [--n 24] [--chunk-size 4] [--workers 1,2]

Wall times depend on what else runs on the machine: the load average (``uptime``)
before and after is printed with the figures; run it alone for clean numbers.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from invfp.executors import DaskExecutor, LocalExecutor
from invfp.results import ResultsStore
from invfp.testing import tiny_pipeline

TARGETS = [2.0, 3.0]


def _cpu_seconds(client) -> float:
    """CPU seconds used so far by this process and, with a client, by every worker process."""
    own = time.process_time()
    return own if client is None else own + sum(client.run(time.process_time).values())


def timed_run(pipeline, executor, n: int, chunk_size: int, directory: Path, client=None) -> tuple[float, float]:
    """Wall seconds and CPU seconds of one run of ``len(TARGETS) × n`` samples into a fresh store."""
    with ResultsStore(directory, {"bench": str(directory)}) as store:
        cpu = _cpu_seconds(client)
        start = time.perf_counter()
        result = pipeline.run(TARGETS, n=n, chunk_size=chunk_size, store=store, progress=False, executor=executor)
        seconds = time.perf_counter() - start
        cpu = _cpu_seconds(client) - cpu
    assert result.computed_chunks == len(TARGETS) * -(-n // chunk_size)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=24, help="samples per target (2 targets)")
    parser.add_argument("--chunk-size", type=int, default=4, help="samples per chunk (one task)")
    parser.add_argument("--workers", default="1,2", help="Dask LocalCluster sizes to time, comma-separated")
    args = parser.parse_args()
    torch.set_num_threads(1)
    import distributed

    print(f"load before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f} "
          f"on {os.cpu_count()} cores; torch threads 1 per process")
    pipeline, _, _ = tiny_pipeline()
    samples = len(TARGETS) * args.n
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(("local (in process)", "-", *timed_run(pipeline, LocalExecutor(), args.n, args.chunk_size,
                                                             Path(tmp) / "local")))
        for workers in (int(w) for w in args.workers.split(",")):
            with (
                distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                         host="127.0.0.1", dashboard_address=None) as cluster,
                distributed.Client(cluster) as client,
            ):
                executor = DaskExecutor(client)
                # warm-up: every worker imports torch and invfp once
                client.run(lambda: __import__("invfp.engine") and None)
                timed_run(pipeline, executor, args.chunk_size, args.chunk_size, Path(tmp) / f"warm{workers}")
                rows.append(("dask LocalCluster", str(workers),
                             *timed_run(pipeline, executor, args.n, args.chunk_size, Path(tmp) / f"dask{workers}",
                                        client)))
    local = rows[0][2]
    print(f"\n{samples} samples ({len(TARGETS)} targets × {args.n}), chunks of {args.chunk_size}\n")
    print(f"{'executor':<20} {'workers':>7} {'seconds':>8} {'samples/s':>10} {'vs local':>9} {'CPU ms/sample':>14}")
    for name, workers, seconds, cpu in rows:
        print(f"{name:<20} {workers:>7} {seconds:8.2f} {samples / seconds:10.2f} {local / seconds:8.2f}× "
              f"{1000 * cpu / samples:14.0f}")
    print(f"\nload after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
