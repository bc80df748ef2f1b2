"""Where the chunks of a run are computed: in this process, or on a Dask cluster.

An :class:`Executor` maps a function over work items and streams back
``(item, result)`` pairs as they complete. :meth:`invfp.engine.Pipeline.run` gives it
``process_chunk`` and the chunks still to compute, and writes every result to the
results store itself, so only the calling process ever writes ``results.db``::

    from invfp.executors import DaskExecutor
    with DaskExecutor(workers=4) as executor:          # or scheduler="tcp://host:8786"
        pipeline.run(targets, n=1000, store=store, executor=executor)

- :class:`LocalExecutor` (the default): one item after the other, in order, in this
  process.
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

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

from invfp.errors import ConfigError, InvfpError, OptionalDependencyError

__all__ = ["EXECUTORS", "DaskExecutor", "Executor", "LocalExecutor", "check_executor_options", "create_executor"]

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
    """In this process, one item after the other, in order (the default)."""

    name = "local"
    description = "In this process, one chunk after the other."

    def map(self, fn: Callable[[S, T], R], shared: S, items: Sequence[T]) -> Iterator[tuple[T, R]]:
        for item in items:
            yield item, fn(shared, item)


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
        ConfigError: an unknown name (listing the known ones), ``scheduler`` or
            ``workers`` with the local executor, both at once, or ``workers`` < 1.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}")
    if name == "local" and (scheduler is not None or workers is not None):
        raise ConfigError("--scheduler and --workers need --executor dask")
    if scheduler is not None and workers is not None:
        raise ConfigError("give --scheduler (a running cluster) or --workers (a local cluster), not both")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ConfigError(f"--workers must be an integer >= 1, got {workers!r}")
    if name == "dask":
        _import_distributed()


def create_executor(name: str = "local", *, scheduler: str | None = None, workers: int | None = None) -> Executor:
    """The executor for ``invfp run --executor NAME [--scheduler ADDRESS | --workers N]``.

    Raises:
        ConfigError: see :func:`check_executor_options`; an unreachable scheduler.
        OptionalDependencyError: dask.distributed is not installed.
    """
    check_executor_options(name, scheduler=scheduler, workers=workers)
    if name == "local":
        return LocalExecutor()
    return DaskExecutor(scheduler=scheduler, workers=workers)
