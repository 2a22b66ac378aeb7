"""One execution layer: the heavy work of every stage (warp blocks, label blocks, patch shards, scenes) runs here.

A stage hands :meth:`Executor.map` a function and its items (windows, shards, scenes) and gets the
results back **in item order**, whatever ran where, so its outputs are assembled in a fixed order
and the bytes do not depend on the number of threads, workers or machines. At most ``ahead``
results are in flight or waiting, so the memory of the stage's process is bounded too.

- Local (default, ``compute.scheduler: null``): a thread pool of ``compute.threads`` in the stage's
  own process. No start-up cost (a process-based cluster takes seconds and ~150 MB per worker
  to import rasterio, zarr and geopandas, more than a demo stage runs), one GDAL block cache
  bounded once for the process, and GDAL, zstd and numpy release the GIL in the hot loops.
  ``compute.local: processes`` starts a ``dask.distributed.LocalCluster`` instead (one process
  per thread, for stages whose Python share is high).
- Distributed (``sareo --scheduler tcp://HOST:8786`` or ``compute.scheduler``): every item is one
  dask.distributed task. A task that raises is retried ``compute.retries`` times by the
  scheduler; a task whose worker dies is re-run elsewhere (dask's ``allowed-failures``); a task
  failing for good raises :class:`TaskError` naming the stage, the region and the item. Workers
  read inputs and write outputs by path, so ``data/`` must be on a file system every worker
  mounts (docs/compute.md).

See docs/compute.md for the memory each task holds.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import logging
import re
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

from pipeline.params import param

log = logging.getLogger("sareo.execute")

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class ComputeParams:
    """Where the heavy work runs (local threads, a local cluster or a dask.distributed scheduler); never changes outputs."""

    section: ClassVar[str] = "compute"
    scheduler: str | None = param(None, "dask.distributed scheduler address (tcp://HOST:8786); null = local; "
                                        "`sareo --scheduler ADDRESS` overrides it")
    local: Literal["threads", "processes"] = param(
        "threads", "without a scheduler: a thread pool in the stage's process, or a LocalCluster of processes")
    threads: int = param(2, "local: tasks run at once (threads, or processes of one thread each)")
    retries: int = param(2, "distributed: a task that raises is run again this many times before the stage fails")
    connect_timeout_s: float = param(10.0, "distributed: seconds to wait for the scheduler (and one worker) before failing")
    task_memory_mb: int = param(2048, "refuse to start tasks estimated to need more memory each than this (MiB)")

    def __post_init__(self) -> None:
        for key in ("threads", "task_memory_mb"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key}: {getattr(self, key)!r}; expected a positive integer")
        if self.retries < 0:
            raise ValueError(f"retries: {self.retries!r}; expected 0 or more")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"connect_timeout_s: {self.connect_timeout_s!r}; expected seconds > 0")
        if self.scheduler is not None and not re.match(r"^[a-z+]+://", self.scheduler):
            raise ValueError(f"scheduler: {self.scheduler!r}; expected an address such as tcp://HOST:8786")


class ComputeError(RuntimeError):
    """The execution layer cannot run (no scheduler answers, no workers, a task too large); names what."""


class TaskError(ComputeError):
    """A task failed for good (after its retries): names the stage, region and item."""


def bound_gdal_cache(mb: int) -> None:
    """Bound GDAL's block cache of *this process* to ``mb`` MiB.

    Called by every task (GDAL's cache is per process; a worker process does not inherit the
    client's setting). Note rasterio reads ``GDAL_CACHEMAX`` as bytes: ``Env(GDAL_CACHEMAX=256)``
    is a 256-byte cache.
    """
    from rasterio.env import set_gdal_config

    set_gdal_config("GDAL_CACHEMAX", int(mb) * 2**20)


@contextlib.contextmanager
def gdal_cache(mb: int) -> Iterator[None]:
    """GDAL's block cache bounded to ``mb`` MiB while the block runs (the process's setting after)."""
    import rasterio

    with rasterio.Env(GDAL_CACHEMAX=int(mb) * 2**20):
        yield


def _run_task(fn: Callable[..., R], shared: Any, item: Any, gdal_cache_mb: int | None, has_shared: bool) -> R:
    """What a worker runs: bound its GDAL cache, then the stage's function (its error made portable)."""
    if gdal_cache_mb is not None:
        bound_gdal_cache(gdal_cache_mb)
    try:
        return fn(shared, item) if has_shared else fn(item)
    except Exception as exc:
        error = _portable(exc)
    raise error  # outside the handler: no chained GDAL error (dask pickles the chain, and GDAL's do not pickle)


def _portable(exc: Exception) -> Exception:
    """``exc`` as the client can unpickle it: the same type and message, without the chain of causes
    (dask would otherwise hand back a bare ``Exception(repr)``), else a RuntimeError naming the type."""
    import pickle

    try:
        new = type(exc)(*exc.args)
        pickle.loads(pickle.dumps(new))
        return new
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


_NO_SHARED = object()


class Executor:
    """Runs a stage's items, in parallel, returning results in item order (see the module docstring)."""

    def __init__(self, p: ComputeParams | None = None, scheduler: str | None = None) -> None:
        self.p = p or ComputeParams()
        self.address = scheduler or self.p.scheduler
        if self.address is not None and not re.match(r"^[a-z+]+://", self.address):
            raise ComputeError(f"--scheduler {self.address!r}: expected a dask scheduler address such as "
                               "tcp://HOST:8786")
        self._client: Any = None
        self._cluster: Any = None

    @property
    def distributed(self) -> bool:
        """True when tasks run on dask.distributed workers (a scheduler or a LocalCluster)."""
        return self.address is not None or self.p.local == "processes"

    def describe(self) -> str:
        if self.address:
            return f"dask scheduler {self.address}"
        return f"local {self.p.local} x {self.p.threads}"

    # ------------------------------------------------------------------ the one call stages make

    def map(self, fn: Callable[..., R], items: Sequence[T], what: str, name: Callable[[T], str] = str,
            shared: Any = _NO_SHARED, gdal_cache_mb: int | None = None, memory_mb: float | None = None,
            ahead: int | None = None, local_threads: int | None = None) -> Iterator[R]:
        """Yield ``fn(item)`` (or ``fn(shared, item)``) for every item, in order.

        ``what`` names the stage and region ("grid helsinki: scene X sar"), ``name(item)`` the item
        ("block row 0 col 2048"): both appear in a failure. ``shared`` is sent to each worker once.
        ``gdal_cache_mb`` bounds GDAL's cache in each worker process (locally the stage's process
        bounds its own, around the whole stage). ``memory_mb`` is the
        caller's estimate of one task's peak memory, refused above ``compute.task_memory_mb``.
        ``local_threads`` caps the local thread pool (a task with threads of its own).
        """
        items = list(items)
        if memory_mb is not None and memory_mb > self.p.task_memory_mb:
            raise ComputeError(f"{what}: each task needs about {memory_mb:.0f} MiB, over compute.task_memory_mb "
                               f"({self.p.task_memory_mb}); raise it or use smaller blocks/shards")
        if not items:
            return iter(())
        has_shared = shared is not _NO_SHARED
        if self.distributed:
            return self._map_distributed(fn, items, what, name, shared, has_shared, gdal_cache_mb, ahead)
        threads = min(self.p.threads, local_threads or self.p.threads)
        return self._map_threads(fn, items, what, name, shared, has_shared, threads, ahead)

    # ------------------------------------------------------------------ local threads

    def _map_threads(self, fn, items, what, name, shared, has_shared, threads, ahead) -> Iterator[Any]:
        def one(item: Any) -> Any:
            try:
                return _run_task(fn, shared, item, None, has_shared)
            except Exception as exc:  # the original error (it names the file), plus where it happened
                exc.add_note(f"in {what}: {name(item)}")
                raise

        # GDAL's cache is the stage process's own here: the stage bounds it around its whole run
        if threads <= 1 or len(items) == 1:
            for item in items:
                yield one(item)
            return
        limit = ahead or 2 * threads
        with concurrent.futures.ThreadPoolExecutor(max_workers=threads) as pool:
            pending: collections.deque = collections.deque()
            try:
                for item in items:
                    pending.append(pool.submit(one, item))
                    if len(pending) >= limit:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for f in pending:
                    f.cancel()

    # ------------------------------------------------------------------ dask.distributed

    def client(self) -> Any:
        """The dask.distributed client (connected on first use; a LocalCluster for ``local: processes``)."""
        if self._client is not None:
            return self._client
        from distributed import Client, LocalCluster

        t = self.p.connect_timeout_s
        if self.address is None:
            self._cluster = LocalCluster(n_workers=self.p.threads, threads_per_worker=1, processes=True,
                                         dashboard_address=None, silence_logs=logging.WARNING)
            self._client = Client(self._cluster, set_as_default=False)
            return self._client
        try:
            client = Client(self.address, timeout=f"{t}s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            raise ComputeError(f"compute.scheduler {self.address}: no dask scheduler answered within {t:g} s "
                               f"({exc}); start one (`dask scheduler`) or drop --scheduler to run locally") from None
        try:
            client.wait_for_workers(1, timeout=t)
        except (OSError, TimeoutError):
            client.close()
            raise ComputeError(f"compute.scheduler {self.address}: the scheduler has no workers after {t:g} s; "
                               "start some (`dask worker ADDRESS`)") from None
        log.info("compute: %s, %d worker(s)", self.address, len(client.scheduler_info()["workers"]))
        self._client = client
        return client

    def _slots(self, client: Any) -> int:
        return max(1, sum(client.nthreads().values()))

    def _map_distributed(self, fn, items, what, name, shared, has_shared, gdal_cache_mb, ahead) -> Iterator[Any]:
        client = self.client()
        token = secrets.token_hex(4)
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", what).strip("-")[:60]
        shared_ref = client.scatter(shared, broadcast=True, hash=False) if has_shared else None
        limit = ahead or 2 * self._slots(client)
        pending: collections.deque = collections.deque()
        it = iter(enumerate(items))

        def submit(i: int, item: Any) -> None:
            fut = client.submit(_run_task, fn, shared_ref, item, gdal_cache_mb, has_shared,
                                key=f"sareo-{slug}-{i}-{token}", retries=self.p.retries, pure=False)
            pending.append((item, fut))

        try:
            for i, item in it:
                submit(i, item)
                if len(pending) >= limit:
                    yield self._result(*pending.popleft(), what, name)
            while pending:
                yield self._result(*pending.popleft(), what, name)
        finally:
            if pending:
                client.cancel([f for _, f in pending])

    def _result(self, item: Any, fut: Any, what: str, name: Callable[[Any], str]) -> Any:
        try:
            return fut.result()
        except Exception as exc:
            raise TaskError(f"{what}: {name(item)}: failed for good on {self.describe()} "
                            f"({self.p.retries} retries): {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        """Close the client (and the LocalCluster this executor started)."""
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


_EXECUTORS: dict[tuple[Any, ...], Executor] = {}


def executor_for(p: ComputeParams | None = None, scheduler: str | None = None) -> Executor:
    """The process's executor for these settings (one client per scheduler, connected on first use)."""
    p = p or ComputeParams()
    key = (p, scheduler)
    if key not in _EXECUTORS:
        _EXECUTORS[key] = Executor(p, scheduler)
    return _EXECUTORS[key]


def close_all() -> None:
    """Close every client and local cluster this process opened (the CLI, at exit)."""
    for ex in _EXECUTORS.values():
        ex.close()
    _EXECUTORS.clear()


def local(threads: int = ComputeParams.threads) -> Executor:
    """A local thread executor (the default of stage functions called without one)."""
    return executor_for(ComputeParams(threads=threads))
