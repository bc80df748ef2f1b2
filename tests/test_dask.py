"""Executors: a real Dask LocalCluster with worker processes, one of them killed mid-run."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest

from invfp.errors import ConfigError

TARGETS = [2.0, 3.0]
N = 8
CHUNK = 2  # 8 chunks: plenty still running or queued when the first one comes back


@pytest.fixture(scope="module")
def tiny():
    import torch

    from invfp.testing import tiny_pipeline

    torch.set_num_threads(1)
    pipeline, _, _ = tiny_pipeline()
    return pipeline


@pytest.fixture(scope="module")
def cluster_client():
    """A real local cluster: 2 worker processes of 1 thread, loopback only."""
    import distributed

    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1", dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def local_records(tiny):
    """The reference: the whole run in this process (the default executor)."""
    return tiny.run(TARGETS, n=N, chunk_size=CHUNK, progress=False).records


def _rows(records):
    return [(r.target_index, r.sample, r.chunk, r.loss, r.true_property, r.accepted) for r in records]


def _pid_and_executing(dask_worker):
    return os.getpid(), [str(ts.key) for ts in dask_worker.state.executing]


def _transitions(dask_scheduler):
    return [(str(e[0]), e[1], e[2], str(e[4])) for e in dask_scheduler.transition_log]


def test_local_executor_maps_in_order():
    from invfp.executors import LocalExecutor

    out = list(LocalExecutor().map(lambda shared, item: shared * item, 3, [1, 2, 5]))
    assert out == [(1, 3), (2, 6), (5, 15)]


def _square_plus(shared, item):
    return shared + item * item


def _die(shared, item):
    os._exit(3)


def test_local_executor_with_worker_processes_streams_every_item():
    from invfp.executors import LocalExecutor

    out = dict(LocalExecutor(workers=2).map(_square_plus, 100, list(range(7))))
    assert out == {i: 100 + i * i for i in range(7)}


def _pid(shared, item):
    return os.getpid()


def test_local_executor_keeps_its_workers_between_maps_only_inside_with():
    from invfp.executors import LocalExecutor

    with LocalExecutor(workers=2) as executor:
        first = set(dict(executor.map(_pid, 0, [1, 2, 3, 4])).values())
        pool = executor._pool
        workers = set(pool._processes)  # one worker may take every item while the other still starts
        again = set(dict(executor.map(_pid, 0, [5, 6])).values())
        assert executor._pool is pool and first | again <= workers and os.getpid() not in workers
        other = set(dict(executor.map(_pid, 1, [7, 8])).values())  # another shared object: new workers
        assert executor._pool is not pool and not other & workers
    assert executor._pool is None  # leaving ``with`` stops them
    loose = LocalExecutor(workers=2)
    list(loose.map(_pid, 0, [1, 2]))
    assert loose._pool is None  # outside ``with`` each map stops its workers


def test_local_executor_worker_processes_match_the_in_process_run(tiny, local_records):
    from invfp.executors import LocalExecutor

    records = tiny.run(TARGETS, n=N, chunk_size=CHUNK, progress=False, executor=LocalExecutor(workers=2)).records
    assert _rows(records) == _rows(local_records)  # the same rows, bit for bit


def test_local_executor_reports_a_dead_worker_and_unpicklable_work():
    from invfp.errors import InvfpError
    from invfp.executors import LocalExecutor

    with pytest.raises(InvfpError, match="worker process died"):
        list(LocalExecutor(workers=2).map(_die, 0, [1, 2]))
    with pytest.raises(ConfigError, match="do not pickle"):
        list(LocalExecutor(workers=2).map(lambda shared, item: item, 0, [1, 2]))
    with pytest.raises(ConfigError, match="workers must be an integer >= 1"):
        LocalExecutor(workers=0)


def test_signals_arriving_while_workers_start_are_held_then_delivered():
    # A SIGTERM or Ctrl-C that unwound the parent half-way through starting a worker left
    # the worker reading a closed pipe, and it printed multiprocessing's EOFError traceback.
    from invfp.executors import _signals_held

    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    # Python's own Ctrl-C handler, also where this process started with SIGINT ignored (a background job)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with _signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)
            assert seen == []  # held while inside
        assert seen == [signal.SIGTERM]  # delivered once afterwards, to the handler that was there
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        reached = []
        with pytest.raises(KeyboardInterrupt), _signals_held():
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: raised on leaving, as Python would
            reached.append(True)
        assert reached == [True]  # not raised inside
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def test_create_executor_checks_its_options():
    from invfp.executors import LocalExecutor, create_executor

    assert isinstance(create_executor("local"), LocalExecutor)
    with pytest.raises(ConfigError, match="choose one of: local, dask"):
        create_executor("spark")
    assert create_executor("local", workers=2).workers == 2
    with pytest.raises(ConfigError, match="--scheduler needs --executor dask"):
        create_executor("local", scheduler="tcp://127.0.0.1:1")
    with pytest.raises(ConfigError, match="not both"):
        create_executor("dask", scheduler="tcp://127.0.0.1:1", workers=2)
    with pytest.raises(ConfigError, match="--workers must be an integer >= 1"):
        create_executor("dask", workers=0)


def test_run_cli_checks_executor_options_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from invfp.cli.app import app

    for args, message in (
        (["--scheduler", "tcp://127.0.0.1:1"], "--scheduler needs --executor dask"),
        (["--executor", "spark"], "choose one of: local, dask"),
        (["--executor", "dask", "--workers", "2", "--scheduler", "tcp://127.0.0.1:1"], "not both"),
    ):
        result = CliRunner().invoke(app, ["run", "-o", str(tmp_path / "run"), *args])
        assert isinstance(result.exception, ConfigError) and message in str(result.exception), result.output
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def _fail_on_three(path, item):
    with open(path, "a") as handle:
        handle.write(f"{item}\n")
    if item == 3:
        raise ValueError("item 3 is bad")
    return item * item


def test_dask_map_streams_every_result_and_retries_failures(cluster_client, tmp_path):
    from invfp.executors import DaskExecutor

    executor = DaskExecutor(cluster_client, retries=2)
    out = dict(executor.map(lambda shared, item: shared + item, 100, list(range(10))))
    assert out == {i: 100 + i for i in range(10)}
    attempts = tmp_path / "attempts.txt"
    with pytest.raises(ValueError, match="item 3 is bad"):
        dict(executor.map(_fail_on_three, str(attempts), [1, 2, 3]))
    assert attempts.read_text().split().count("3") == 3  # the first try and 2 retries
    assert list(executor.map(_fail_on_three, str(attempts), [])) == []


def test_dask_run_survives_a_killed_worker(tiny, local_records, cluster_client, tmp_path):
    """Kill a worker process while it computes a chunk: its chunk runs again; results.db is complete."""
    from invfp.executors import DaskExecutor
    from invfp.results import ResultsStore

    killed: dict[str, object] = {}

    class KillAfterFirstChunk(ResultsStore):
        def write_chunk(self, target_index, chunk, records):
            super().write_chunk(target_index, chunk, records)
            if killed:
                return
            # the worker that is computing a chunk right now (any, when both wait for work)
            state = client.run(_pid_and_executing)
            address = max(sorted(state), key=lambda w: len(state[w][1]))
            killed.update(address=address, pid=state[address][0], executing=state[address][1])
            os.kill(killed["pid"], signal.SIGKILL)

    client = cluster_client
    executor = DaskExecutor(client)
    with KillAfterFirstChunk(tmp_path / "run", {"test": "dask"}) as store:
        result = tiny.run(TARGETS, n=N, chunk_size=CHUNK, store=store, progress=False, executor=executor)
    assert killed, "no worker was killed"
    # the scheduler took back the chunks the dead worker was computing or holding and ran them again
    log = [e for e in client.run_on_scheduler(_transitions) if e[0].startswith("invfp-item")]
    lost = {key for key, start, _, stimulus in log
            if start in ("processing", "memory") and stimulus.startswith("handle-worker-cleanup")}
    assert lost, "the killed worker held no chunk"
    assert set(killed["executing"]) <= lost
    for key in lost:
        last = max(i for i, e in enumerate(log) if e[0] == key and e[3].startswith("handle-worker-cleanup"))
        assert any(e[0] == key and e[2] == "memory" for e in log[last:]), f"{key} was not recomputed"
    assert killed["pid"] not in client.run(os.getpid).values()
    executor.close()  # a client given to the executor stays open
    assert client.status == "running"
    assert result.computed_chunks == len(TARGETS) * N // CHUNK and result.skipped_chunks == 0

    import ase.db

    db = ase.db.connect(str(tmp_path / "run" / "results.db"))
    keys = [(row.target_index, row.sample) for row in db.select()]
    assert len(keys) == len(set(keys)) == len(TARGETS) * N, "missing or duplicated rows"
    assert sorted(keys) == [(t, s) for t in range(len(TARGETS)) for s in range(N)]
    # a chunk computed on any worker (or twice) gives the rows the local run gives
    with ResultsStore(tmp_path / "run", {"test": "dask"}) as store:
        stored = store.records()
    for got, want in zip(_rows(stored), _rows(local_records), strict=True):
        assert got[:3] == want[:3] and got[5] == want[5]
        np.testing.assert_allclose(got[3:5], want[3:5], rtol=1e-6)
    for got, want in zip(stored, local_records, strict=True):
        np.testing.assert_allclose(got.atoms.positions, want.atoms.positions, atol=1e-6)
        np.testing.assert_allclose(got.fingerprint, want.fingerprint, rtol=1e-12)
