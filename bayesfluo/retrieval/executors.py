"""Retrieval on a dask distributed cluster: chunks of patch rows as tasks.

:class:`DaskExecutor` sends each chunk of a retrieval plan
(:func:`bayesfluo.retrieval.chunk.plan_retrieval`) to the cluster as one task; the client
writes the returned maps into their region of the output store as they come
(:func:`bayesfluo.retrieval.streaming.retrieve_to_file`), keeping at most ``window`` chunks
in flight.
Workers read their chunk's rows of the scene themselves when the scene is a file they can
reach (else the client reads the rows and sends them), and load and compile the guide once
per worker process (a per-process cache), so a batch of scenes compiles once per worker.

Workers run the same jitted functions on the same padded chunk shapes as a single process,
so the results are the same bit for bit (``tests/test_writers_scale.py``).

JAX and dask: JAX uses its own thread pool, so give each worker process one dask thread
(:func:`dask_client` does); JAX is not fork-safe, and distributed starts worker processes
with ``spawn``.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask
import xarray as xr

from bayesfluo.retrieval.chunk import RetrievalPlan, RetrieveOptions, Retriever, retrieve_chunk
from bayesfluo.retrieval.streaming import open_input

__all__ = ["DaskExecutor", "dask_client", "executor_context"]

#: Per-process cache of the worker side: retrievers by model directory, the last scene
_CACHE: dict = {}


def _worker_retriever(model_dir: str) -> Retriever:
    """The compiled guide of ``model_dir`` in this process (loaded once)."""
    key = ("retriever", model_dir)
    if key not in _CACHE:
        from bayesfluo.inference.guide import load_guide
        _CACHE[key] = Retriever(load_guide(model_dir))
    return _CACHE[key]


def _worker_scene(path: str, reader_kwargs: dict) -> xr.Dataset:
    """The scene at ``path``, opened lazily once per process (the last one is kept)."""
    key = (path, os.stat(path).st_mtime_ns, repr(sorted(reader_kwargs.items())))
    if _CACHE.get("scene_key") != key:
        _CACHE["scene"] = open_input(path, **reader_kwargs)
        _CACHE["scene_key"] = key
    return _CACHE["scene"]


def _run_chunk(model_dir: str, scene: str | xr.Dataset, reader_kwargs: dict, pr0: int,
               plan: RetrievalPlan, options: RetrieveOptions) -> dict:
    """The task: pieces of the chunk at patch row ``pr0`` (``scene`` a path, or the
    chunk's rows already read)."""
    # reading a dask-backed scene inside a task: no nested tasks on the cluster
    with dask.config.set(scheduler="synchronous"):
        r = _worker_retriever(model_dir)
        if isinstance(scene, str):
            return retrieve_chunk(_worker_scene(scene, reader_kwargs), pr0, plan, r, options)
        return retrieve_chunk(scene, pr0, plan, r, options, sliced=True)


class DaskExecutor:
    """Chunks computed as tasks on a dask cluster.

    Parameters
    ----------
    client : distributed.Client
        A client of the cluster (:func:`dask_client`).
    model_dir : path-like
        The guide's model directory, readable by the workers.
    retriever : Retriever
        The same guide on the client (for the plan and the result's attributes).
    reader_kwargs : dict, optional
        Keyword arguments of :func:`bayesfluo.io.readers.open_scene` for the workers.
    window : int, optional
        Most chunks in flight at once (default twice the workers' threads): bounds the
        memory of results waiting to be written.
    """

    def __init__(self, client, model_dir: str | os.PathLike, retriever: Retriever,
                 reader_kwargs: dict | None = None, window: int | None = None):
        self.client = client
        self.model_dir = str(Path(model_dir).resolve())
        self.retriever = retriever
        self.reader_kwargs = dict(reader_kwargs or {})
        self.window = window

    def chunks(self, scene: xr.Dataset, plan: RetrievalPlan, options: RetrieveOptions,
               scene_path: str | None = None) -> Iterator[tuple[int, dict]]:
        """Pieces of every chunk of ``plan``, in the order they finish."""
        from distributed import as_completed

        window = self.window or max(2, 2 * sum(self.client.nthreads().values()))
        path = str(Path(scene_path).resolve()) if scene_path else None
        tag = uuid.uuid4().hex[:8]
        keys = {}

        def submit(pr0):
            arg = path if path else scene.isel(y=plan.rows(pr0)).load()
            fut = self.client.submit(_run_chunk, self.model_dir, arg, self.reader_kwargs,
                                     pr0, plan, options, key=f"bayesfluo-{tag}-{pr0}",
                                     pure=False, retries=0)
            keys[fut.key] = pr0
            return fut

        todo = iter(plan.starts)
        ac = as_completed([submit(p) for p in itertools.islice(todo, window)],
                          with_results=True)
        try:
            for fut, pieces in ac:
                nxt = next(todo, None)
                if nxt is not None:
                    ac.add(submit(nxt))
                pr0 = keys.pop(fut.key)
                fut.release()
                yield pr0, pieces
        finally:
            ac.clear()


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str | None = "auto"):
    """A dask client: of the scheduler at ``scheduler`` (an address such as
    ``tcp://host:8786`` or a scheduler file), or of a new local cluster of ``workers``
    processes with one thread each (closed on exit).

    Raises
    ------
    ValueError
        If neither or both are given, or ``workers`` < 1.
    """
    from distributed import Client, LocalCluster

    if (scheduler is None) == (workers is None):
        raise ValueError("give a scheduler address or a number of workers (one of them)")
    if scheduler is not None:
        kw = ({"scheduler_file": scheduler} if scheduler.endswith(".json")
              else {"address": scheduler})
        with Client(**kw) as client:
            yield client
        return
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, not {workers}")
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, memory_limit=memory_limit) as cluster, \
            Client(cluster) as client:
        yield client


@contextlib.contextmanager
def executor_context(model_dir: str | os.PathLike, retriever: Retriever, *,
                     scheduler: str | None = None, workers: int | None = None,
                     reader_kwargs: dict | None = None) -> Iterator[DaskExecutor | None]:
    """None (chunks computed in this process) when neither ``scheduler`` nor ``workers``
    is given, else a :class:`DaskExecutor` on that cluster (closed on exit)."""
    if scheduler is None and workers is None:
        yield None
        return
    with dask_client(scheduler, workers) as client:
        yield DaskExecutor(client, model_dir, retriever, reader_kwargs)
