"""Where the chunks of a run are computed: in this process, or on a Dask cluster.

An :class:`Executor` maps a function over work items and streams back
``(item, result)`` pairs as they complete. :meth:`invfp.engine.Pipeline.run` gives it
``process_chunk`` and the chunks still to compute, and writes every result to the
results store itself, so only the calling process ever writes ``results.db``::

    from invfp.executors import DaskExecutor
    with DaskExecutor(workers=4) as executor:          # or scheduler="tcp://host:8786"
        pipeline.run(targets, n=1000, store=store, executor=executor)

- :class:`LocalExecutor` (the default): one item after the other, in order, in this
  process; or, with ``workers > 1``, in that many single-threaded worker processes on
  this machine (``invfp run`` uses one per CPU core: the reconstruction of a chunk
  runs on one core, so a 2-core machine computes two chunks at once).
- :class:`DaskExecutor`: every item is one dask.distributed task. The shared object
  (the pipeline: models, representation, validators) is pickled once into a task
  that rebuilds it on a worker, so when the worker holding it dies the scheduler
  recomputes it from its lineage instead of losing it (scattered data would be
  lost). A worker that dies mid-task loses nothing: the scheduler runs its tasks
  again elsewhere (up to ``distributed.scheduler.allowed-failures`` deaths per task,
  3 by default); ``retries`` re-runs a task that raised. The functions must be pure
  in ``(shared, item)`` — a chunk computed twice gives the same rows — which
  :meth:`~invfp.engine.Pipeline.process_chunk` is (seeds derive from the chunk's
  identity). Each task limits torch to ``torch_threads`` threads (1 by default: on a
  shared node, spinning OpenMP threads of several workers slow each other down).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

from invfp.errors import ConfigError, InvfpError, OptionalDependencyError

__all__ = [
    "EXECUTORS", "DaskExecutor", "Executor", "LocalExecutor", "check_executor_options", "create_executor",
    "local_workers", "spawn_pool", "stop_pool", "usable_cores",
]

S = TypeVar("S")
T = TypeVar("T")
R = TypeVar("R")

_counter = itertools.count()


class Executor:
    """Runs ``fn(shared, item)`` for every item; yields ``(item, result)`` as each completes.

    Subclasses implement :meth:`map`; use an executor as a context manager (or call
    :meth:`close`) to release what it started.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> Iterator[tuple[T, R]]:
        """Apply ``fn(shared, item)`` to every item, yielding ``(item, result)`` in completion order.

        Stopping the iteration early (or an exception in the consumer) cancels the
        items not yet computed. An exception raised by ``fn`` propagates.
        """
        raise NotImplementedError

    def close(self) -> None:
        """Release workers and connections this executor started."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """On this machine: in this process (``workers=1``, the default) or in worker processes.

    With ``workers > 1`` the shared object is pickled once into each of ``workers``
    spawned processes (spawn, not fork: a forked torch with live OpenMP threads can
    hang), each limited to ``torch_threads`` torch threads; items stream back in
    completion order. Inside ``with``, the processes stay for the next map with the same
    function and shared object. Workers ignore Ctrl-C, and closing the executor early (an
    interrupt, an error in the consumer) terminates them, so nothing keeps running.

    Args:
        workers: processes; 1 computes in this process, in order.
        torch_threads: torch threads in each worker process.
    """

    name = "local"
    description = "On this machine: in this process, or in N single-threaded worker processes (--workers N)."

    def __init__(self, workers: int = 1, *, torch_threads: int = 1) -> None:
        for label, value in (("workers", workers), ("torch_threads", torch_threads)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"local executor: {label} must be an integer >= 1, got {value!r}")
        self.workers = workers
        self.torch_threads = torch_threads
        self._pool: Any = None
        self._pool_key: tuple[bytes, int] | None = None
        self._keep = False

    def __enter__(self) -> LocalExecutor:
        # Inside ``with``, worker processes outlive one map: a caller that maps again with the
        # same function and shared object (rounds of retries) pays their start-up once.
        self._keep = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._keep = False
        self.close()

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> Iterator[tuple[T, R]]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            for item in items:
                yield item, fn(shared, item)
            return
        import pickle
        from concurrent.futures import FIRST_COMPLETED, wait

        try:
            blob = pickle.dumps((fn, shared), protocol=pickle.HIGHEST_PROTOCOL)
        except (pickle.PicklingError, AttributeError, TypeError) as exc:
            raise ConfigError(
                f"the local executor with workers > 1 sends the function and the shared object to other processes, "
                f"but they do not pickle ({exc}); use module-level functions (no lambdas), or workers=1"
            ) from exc
        size = min(self.workers, len(items))
        if self._pool_key is not None and (self._pool_key[0] != blob or self._pool_key[1] < size):
            self.close()
        if self._pool is None:
            self._pool = spawn_pool(size, torch_threads=self.torch_threads, state=blob)
            self._pool_key = (blob, size)
        futures = {self._pool.submit(_run_in_process, item): index for index, item in enumerate(items)}
        completed = False
        try:
            pending = set(futures)
            while pending:
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(finished, key=futures.__getitem__):
                    item = items[futures[future]]
                    yield item, _result(future, item)
            completed = True
        finally:
            if not (completed and self._keep):  # stopped early, failed, or not inside ``with``
                self.close()

    def close(self) -> None:
        """Stop the worker processes (at once: an unfinished item is abandoned, not awaited)."""
        pool, self._pool, self._pool_key = self._pool, None, None
        if pool is not None:
            stop_pool(pool)


def spawn_pool(workers: int, *, torch_threads: int = 1, state: bytes | None = None) -> Any:
    """A ``ProcessPoolExecutor`` of ``workers`` spawned processes that behave as invfp's workers must.

    Each worker, before it takes any task: dies with this process (even by SIGKILL),
    ignores Ctrl-C (this process handles it and stops them with :func:`stop_pool`),
    runs ``torch_threads`` torch threads and, given a pickled ``state`` ``(fn, shared)``,
    keeps it for :func:`_run_in_process`. Spawn, not fork: a forked torch with live
    OpenMP threads can hang. The caller's script is not re-run in the workers (see
    :func:`_main_script_hidden`).
    """
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    class WorkerPool(ProcessPoolExecutor):
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
            # submit is where the processes start
            with _main_script_hidden(state or b""), _signals_held():
                return super().submit(fn, *args, **kwargs)

    return WorkerPool(
        max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_process, initargs=(os.getpid(), torch_threads, state),
    )


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """While processes start: hold Ctrl-C and SIGTERM, and deliver them afterwards.

    A signal that unwinds this process half-way through starting a worker closes the pipe
    the worker reads its start-up data from, and the worker prints multiprocessing's
    traceback (EOFError) after invfp's one-line message. Starting takes milliseconds;
    a signal held that long is then handled as usual (main thread only, where Python
    handles signals).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous: dict[int, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler is not None:  # None: installed outside Python, cannot be put back
            previous[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


@contextlib.contextmanager
def _main_script_hidden(payload: bytes) -> Iterator[None]:
    """While processes are spawned: keep them from re-running the caller's script.

    A spawned process first re-imports the parent's ``__main__`` script, so a script
    without an ``if __name__ == "__main__":`` guard would run again in every worker (and
    fail there as soon as it starts workers itself). Workers need that import only to
    unpickle things defined in the script; when the pickled ``payload`` names nothing
    from ``__main__``, the script's path is hidden from multiprocessing while processes
    start, and unguarded scripts and notebooks work.
    """
    import sys

    main = sys.modules.get("__main__")
    missing = object()
    path, spec = getattr(main, "__file__", missing), getattr(main, "__spec__", None)
    if main is None or (path is missing and spec is None) or b"__main__" in payload:
        yield
        return
    if path is not missing:
        del main.__file__
    main.__spec__ = None
    try:
        yield
    finally:
        if path is not missing:
            main.__file__ = path
        main.__spec__ = spec


def stop_pool(pool: Any) -> None:
    """Terminate the workers of :func:`spawn_pool` at once (unfinished tasks are abandoned)."""
    for process in list(getattr(pool, "_processes", {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


_PROCESS_STATE: dict[str, Any] = {}
"""In a worker process of :func:`spawn_pool`: the function and the shared object."""


def _die_with_parent(parent_pid: int) -> None:
    """In a worker process: exit when the process ``parent_pid`` dies (even by SIGKILL).

    A killed run must not leave orphans computing (and holding its terminal's pipes);
    Linux delivers SIGKILL on the parent's death, elsewhere a daemon thread polls.
    """
    import os
    import signal
    import sys

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    else:
        import threading
        import time

        def watch() -> None:
            while os.getppid() == parent_pid:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent_pid:  # the parent died before the above took effect
        os._exit(1)


def _init_process(parent_pid: int, torch_threads: int, state: bytes | None) -> None:
    import pickle
    import signal

    # First: a parent killed while we start must not leave us waiting for a task.
    _die_with_parent(parent_pid)
    # Ctrl-C reaches the whole process group; the parent handles it and stops us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _limit_threads(torch_threads)
    if state is not None:
        fn, shared = pickle.loads(state)
        _PROCESS_STATE.update(fn=fn, shared=shared)


def _run_in_process(item: Any) -> Any:
    return _PROCESS_STATE["fn"](_PROCESS_STATE["shared"], item)


def _result(future: Any, item: Any) -> Any:
    from concurrent.futures.process import BrokenProcessPool

    try:
        return future.result()
    except BrokenProcessPool as exc:
        raise InvfpError(
            f"a worker process died while computing {item!r} (out of memory, or killed); "
            "rerun the same command to resume, with fewer --workers or smaller chunks"
        ) from exc


def _load_shared(blob: bytes, torch_threads: int) -> Any:
    import cloudpickle

    _limit_threads(torch_threads)
    return cloudpickle.loads(blob)


def _run_item(fn: Callable[[Any, Any], Any], shared: Any, item: Any, torch_threads: int) -> Any:
    _limit_threads(torch_threads)
    return fn(shared, item)


def _limit_threads(n: int) -> None:
    import torch

    if torch.get_num_threads() != n:
        torch.set_num_threads(n)


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise OptionalDependencyError(
            "the dask executor needs dask.distributed: pip install 'invfp[dask]'"
        ) from exc
    return distributed


class DaskExecutor(Executor):
    """On a dask.distributed cluster; results stream back to this process.

    Give at most one of ``client``, ``scheduler`` and ``workers``; with none, a
    local cluster of one single-threaded worker process per CPU core starts.

    Args:
        client: an existing ``distributed.Client`` (left open by :meth:`close`).
        scheduler: the address of a running scheduler (``tcp://host:8786``), e.g. of a
            dask-jobqueue ``SLURMCluster``; the workers must have invfp installed.
        workers: start a ``LocalCluster`` of this many single-threaded worker
            processes on this machine (loopback only).
        retries: re-runs of a task that raised an exception (a worker's death is
            handled by the scheduler separately and needs none).
        torch_threads: torch threads in each task.
    """

    name = "dask"
    description = "On a dask.distributed cluster (a scheduler address, or a local cluster of N workers)."

    def __init__(
        self,
        client: Any = None,
        *,
        scheduler: str | None = None,
        workers: int | None = None,
        retries: int = 2,
        torch_threads: int = 1,
    ) -> None:
        given = [name for name, value in (("client", client), ("scheduler", scheduler), ("workers", workers))
                 if value is not None]
        if len(given) > 1:
            raise ConfigError(f"give the dask executor one of client, scheduler and workers, not {' and '.join(given)}")
        for label, value, low in (("workers", workers, 1), ("retries", retries, 0), ("torch_threads", torch_threads, 1)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise ConfigError(f"dask executor: {label} must be an integer >= {low}, got {value!r}")
        distributed = _import_distributed()
        self.retries = retries
        self.torch_threads = torch_threads
        self._cluster: Any = None
        self._own_client = client is None
        if client is not None:
            self.client = client
        elif scheduler is not None:
            try:
                self.client = distributed.Client(scheduler, timeout="30s")
            except (OSError, TimeoutError, ValueError) as exc:
                raise ConfigError(
                    f"cannot reach the dask scheduler at {scheduler!r} ({exc}); check the address "
                    "(tcp://host:port) and that the scheduler is running"
                ) from exc
        else:
            import os

            self._cluster = distributed.LocalCluster(
                n_workers=workers or os.cpu_count() or 1, threads_per_worker=1, processes=True,
                host="127.0.0.1", dashboard_address=None,
            )
            self.client = distributed.Client(self._cluster)

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> Iterator[tuple[T, R]]:
        import cloudpickle

        distributed = _import_distributed()
        items = list(items)
        if not items:
            return
        blob = cloudpickle.dumps(shared)
        # Unique keys per call: a task's key names its result on the cluster, and two
        # runs with the same pipeline in one session must not share half-released keys.
        token = f"{hashlib.sha256(blob).hexdigest()[:12]}-{next(_counter)}"
        shared_future = self.client.submit(
            _load_shared, blob, self.torch_threads, key=f"invfp-shared-{token}", pure=False
        )
        futures = {
            self.client.submit(
                _run_item, fn, shared_future, item, self.torch_threads,
                key=f"invfp-item-{token}-{index}", retries=self.retries, pure=False,
            ): item
            for index, item in enumerate(items)
        }
        try:
            for future in distributed.as_completed(futures):
                try:
                    result = future.result()
                except distributed.client.FutureCancelledError as exc:
                    raise InvfpError(f"dask cancelled the task of {futures[future]!r}; the cluster shut down?") from exc
                except distributed.KilledWorker as exc:
                    raise InvfpError(
                        f"the task of {futures[future]!r} killed every worker that ran it ({exc}); out of memory? "
                        "Rerun with smaller chunks or on workers with more memory"
                    ) from exc
                yield futures[future], result
                future.release()
        finally:
            self.client.cancel(list(futures) + [shared_future])

    def close(self) -> None:
        """Close the client and the local cluster when this executor started them."""
        if self._own_client and self.client is not None:
            self.client.close()
            self.client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


EXECUTORS: dict[str, type[Executor]] = {"local": LocalExecutor, "dask": DaskExecutor}
"""Executors by name (``invfp run --executor NAME``)."""


def check_executor_options(name: str = "local", *, scheduler: str | None = None, workers: int | None = None) -> None:
    """Check ``--executor NAME [--scheduler ADDRESS | --workers N]`` without starting anything.

    Raises:
        ConfigError: an unknown name (listing the known ones), ``scheduler`` with the
            local executor, ``scheduler`` and ``workers`` at once, or ``workers`` < 1.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "local" and scheduler is not None:
        raise ConfigError("--scheduler needs --executor dask")
    if scheduler is not None and workers is not None:
        raise ConfigError("give --scheduler (a running cluster) or --workers (a local cluster), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if name == "dask":
        _import_distributed()


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    import os

    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def local_workers(device: Any) -> int:
    """The default number of local worker processes: one per usable CPU core, one on a GPU."""
    return usable_cores() if getattr(device, "type", device) == "cpu" else 1


def create_executor(name: str = "local", *, scheduler: str | None = None, workers: int | None = None) -> Executor:
    """The executor for ``invfp run --executor NAME [--scheduler ADDRESS | --workers N]``.

    ``local`` without ``workers`` computes in this process.

    Raises:
        ConfigError: see :func:`check_executor_options`; an unreachable scheduler.
        OptionalDependencyError: dask.distributed is not installed.
    """
    check_executor_options(name, scheduler=scheduler, workers=workers)
    if name == "local":
        return LocalExecutor(workers or 1)
    return DaskExecutor(scheduler=scheduler, workers=workers)
