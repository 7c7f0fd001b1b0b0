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

On a Slurm cluster, :func:`slurm_cluster` builds a dask-jobqueue ``SLURMCluster`` from a
TOML file (``bayesfluo retrieve --cluster slurm.toml``; ``docs/cluster.md``, an example in
``docs/examples/slurm.toml``); it needs the ``hpc`` extra (``pip install
"bayesfluo[hpc]"``). :func:`slurm_job_script` shows the job script it would submit.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import dask
import xarray as xr

from bayesfluo.retrieval.chunk import RetrievalPlan, RetrieveOptions, Retriever, retrieve_chunk
from bayesfluo.retrieval.streaming import open_input

__all__ = ["DaskExecutor", "SLURM_KEYS", "dask_client", "executor_context",
           "read_cluster_config", "slurm_cluster", "slurm_job_script"]

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


#: Keys of the ``[slurm]`` table of a cluster configuration file, their types and what
#: they mean (``cores`` and ``memory`` are required)
SLURM_KEYS: dict[str, tuple[type, str]] = {
    "queue": (str, "partition (sbatch -p)"),
    "account": (str, "account charged (sbatch -A)"),
    "cores": (int, "CPU cores per job (sbatch --cpus-per-task)"),
    "memory": (str, "memory per job, e.g. '32GiB' (sbatch --mem)"),
    "walltime": (str, "time limit per job, 'HH:MM:SS' (sbatch -t)"),
    "processes": (int, "dask worker processes per job, one thread each (default 1)"),
    "jobs": (int, "jobs to submit (default 1)"),
    "job_extra_directives": (list, "more #SBATCH lines, e.g. ['--gres=gpu:1']"),
    "job_script_prologue": (list, "shell lines run before the workers start, e.g. "
                            "['module load cuda']"),
    "python": (str, "the Python of the workers, with bayesfluo installed (default: this "
               "one's)"),
    "local_directory": (str, "workers' scratch directory on the node"),
    "log_directory": (str, "directory of the jobs' Slurm logs"),
    "interface": (str, "network interface of the workers and scheduler, e.g. 'ib0'"),
    "job_name": (str, "Slurm job name (default dask-worker)"),
}
_SLURM_REQUIRED = ("cores", "memory")


def read_cluster_config(path: str | os.PathLike) -> dict:
    """The ``[slurm]`` table of a cluster configuration file (TOML), checked.

    Parameters
    ----------
    path : path-like
        The file (``docs/examples/slurm.toml``; keys: :data:`SLURM_KEYS`).

    Returns
    -------
    dict
        The table's keys, ``processes`` and ``jobs`` filled in (default 1).

    Raises
    ------
    FileNotFoundError
        If there is no file at ``path``.
    ValueError
        If the file is not TOML, has no ``[slurm]`` table, or a key is unknown, missing,
        of the wrong type or out of range (the message names the file and the key).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no cluster configuration file at {path}")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a TOML file: {err}") from None
    other = sorted(set(doc) - {"slurm"})
    if other:
        raise ValueError(f"{path}: unknown table or key {other[0]!r} (the file holds one "
                         "[slurm] table)")
    table = doc.get("slurm")
    if not isinstance(table, dict):
        raise ValueError(f"{path}: no [slurm] table")
    for key, value in table.items():
        if key not in SLURM_KEYS:
            raise ValueError(f"{path}: unknown key {key!r} in [slurm] (known: "
                             f"{', '.join(SLURM_KEYS)})")
        kind = SLURM_KEYS[key][0]
        ok = (isinstance(value, kind) and not isinstance(value, bool)
              and (kind is not list or all(isinstance(v, str) for v in value)))
        if not ok:
            want = "a list of strings" if kind is list else f"a {kind.__name__}"
            raise ValueError(f"{path}: [slurm] {key} must be {want} "
                             f"({SLURM_KEYS[key][1]}), not {value!r}")
    for key in _SLURM_REQUIRED:
        if key not in table:
            raise ValueError(f"{path}: [slurm] lacks {key!r} ({SLURM_KEYS[key][1]})")
    cfg = {"processes": 1, "jobs": 1, **table}
    for key in ("cores", "processes", "jobs"):
        if cfg[key] < 1:
            raise ValueError(f"{path}: [slurm] {key} must be at least 1, not {cfg[key]}")
    if cfg["processes"] > cfg["cores"]:
        raise ValueError(f"{path}: [slurm] processes ({cfg['processes']}) exceeds cores "
                         f"({cfg['cores']})")
    return cfg


def _slurm_cluster_class():
    """dask-jobqueue's ``SLURMCluster`` (imported on first use)."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError as err:
        raise ImportError("a Slurm cluster needs dask-jobqueue: pip install "
                          "\"bayesfluo[hpc]\"") from err
    return SLURMCluster


def slurm_cluster(config_path: str | os.PathLike, *, scale: bool = True):
    """A dask-jobqueue ``SLURMCluster`` as a cluster configuration file describes it.

    Each job asks Slurm for ``cores`` CPU cores and ``memory``, and runs ``processes``
    dask worker processes of one dask thread each (JAX has its own threads: the
    processes share the job's cores).

    Parameters
    ----------
    config_path : path-like
        The configuration file (:func:`read_cluster_config`).
    scale : bool, optional
        Submit the file's ``jobs`` jobs (default); without it no job is submitted.

    Returns
    -------
    dask_jobqueue.SLURMCluster
        The cluster (its scheduler runs in this process); close it when done.

    Raises
    ------
    ImportError
        If dask-jobqueue is not installed (the ``hpc`` extra).
    FileNotFoundError, ValueError
        As :func:`read_cluster_config`.
    """
    cfg = read_cluster_config(config_path)
    cls = _slurm_cluster_class()
    jobs = cfg.pop("jobs")
    processes = cfg.pop("processes")
    cores = cfg.pop("cores")
    memory = cfg.pop("memory")
    name = cfg.pop("job_name", None)
    # dask threads = cores // processes: ``cores=processes`` gives each worker one thread,
    # ``job_cpu`` asks Slurm for the job's cores all the same
    cluster = cls(cores=processes, processes=processes, job_cpu=cores, memory=memory,
                  job_name=name, **cfg)
    if scale:
        cluster.scale(jobs=jobs)
    return cluster


def slurm_job_script(config_path: str | os.PathLike) -> str:
    """The job script the cluster of a configuration file would submit (nothing is
    submitted; the scheduler address in it is a local one that closes again)."""
    cluster = slurm_cluster(config_path, scale=False)
    try:
        return cluster.job_script()
    finally:
        cluster.close()


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None,
                memory_limit: str | None = "auto", *,
                cluster_config: str | os.PathLike | None = None):
    """A dask client: of the scheduler at ``scheduler`` (an address such as
    ``tcp://host:8786`` or a scheduler file), of a new local cluster of ``workers``
    processes with one thread each, or of a Slurm cluster described by the file
    ``cluster_config`` (:func:`slurm_cluster`); a cluster it starts is closed on exit.

    Raises
    ------
    ValueError
        If none or more than one of ``scheduler``, ``workers`` and ``cluster_config`` is
        given, or ``workers`` < 1.
    """
    from distributed import Client, LocalCluster

    if sum(x is not None for x in (scheduler, workers, cluster_config)) != 1:
        raise ValueError("give a scheduler address, a number of workers or a cluster "
                         "configuration file (one of them)")
    if cluster_config is not None:
        with slurm_cluster(cluster_config) as cluster, Client(cluster) as client:
            yield client
        return
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
                     cluster_config: str | os.PathLike | None = None,
                     reader_kwargs: dict | None = None) -> Iterator[DaskExecutor | None]:
    """None (chunks computed in this process) when none of ``scheduler``, ``workers`` and
    ``cluster_config`` is given, else a :class:`DaskExecutor` on that cluster (closed on
    exit). On a Slurm cluster the executor keeps two chunks in flight per worker the
    file asks for, whether or not its jobs have started yet."""
    if scheduler is None and workers is None and cluster_config is None:
        yield None
        return
    window = None
    if cluster_config is not None:
        cfg = read_cluster_config(cluster_config)
        window = 2 * cfg["jobs"] * cfg["processes"]
    with dask_client(scheduler, workers, cluster_config=cluster_config) as client:
        yield DaskExecutor(client, model_dir, retriever, reader_kwargs, window=window)
