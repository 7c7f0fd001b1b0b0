"""Retrieval of scenes larger than memory: chunk by chunk, streamed to disk.

:func:`retrieve_to_file` cuts the scene as :func:`bayesfluo.retrieval.api.retrieve` does
(:func:`bayesfluo.retrieval.chunk.plan_retrieval`), retrieves one chunk of patch rows at a time
(reading only those rows of a lazily opened, dask-backed scene) and writes each chunk's
maps into its region of a Zarr store as soon as it is done, so memory is bounded by the
chunk size (``RetrieveOptions.chunk_pixels``), not the scene. The store is a temporary
directory; when every chunk is in, it is renamed to a ``.zarr`` output, or converted chunk
by chunk to netCDF-4 or GeoTIFF maps (:mod:`bayesfluo.io.writers`) and removed.

Who computes the chunks is an executor: :class:`LocalExecutor` (this process) or
:class:`bayesfluo.retrieval.executors.DaskExecutor` (a dask cluster). Both run the same jitted
functions on the same padded chunks, so the results are the same.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol

import dask.array as da
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.io.writers import (
    atomic_dir,
    georeference,
    output_format,
    write_geotiff,
    write_netcdf,
    zarr_encoding,
)
from bayesfluo.retrieval.chunk import (
    RetrievalPlan,
    RetrieveOptions,
    Retriever,
    plan_retrieval,
    retrieve_chunk,
)
from bayesfluo.retrieval.result import result_attrs, result_dataset

__all__ = ["ChunkExecutor", "LocalExecutor", "open_input", "retrieve_to_file"]


class ChunkExecutor(Protocol):
    """Computes the chunks of a retrieval plan; yields ``(pr0, pieces)`` in any order."""

    def chunks(self, scene: xr.Dataset, plan: RetrievalPlan, options: RetrieveOptions,
               scene_path: str | None = None) -> Iterator[tuple[int, dict]]:
        """Pieces (:func:`bayesfluo.retrieval.chunk.retrieve_chunk`) of every chunk of
        ``plan``."""
        ...


class LocalExecutor:
    """Chunks computed one after the other in this process."""

    def __init__(self, retriever: Retriever):
        self.retriever = retriever

    def chunks(self, scene: xr.Dataset, plan: RetrievalPlan, options: RetrieveOptions,
               scene_path: str | None = None) -> Iterator[tuple[int, dict]]:
        """Pieces of every chunk of ``plan``, in order."""
        for pr0 in plan.starts:
            yield pr0, retrieve_chunk(scene, pr0, plan, self.retriever, options)


def open_input(path: str | os.PathLike, **reader_kwargs) -> xr.Dataset:
    """Open a scene lazily (dask-backed) with :func:`bayesfluo.io.readers.open_scene`
    (any supported format), falling back to the netCDF reader where that is missing.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be read as a scene (the reason named).
    """
    try:
        from bayesfluo.io.readers import open_scene
    except ImportError:  # readers not installed: netCDF scenes only
        from bayesfluo.io.netcdf import read_scene
        return read_scene(path)
    return open_scene(path, **reader_kwargs)


def _template(piece: xr.Dataset, scene: xr.Dataset, chunk_rows: int) -> xr.Dataset:
    """A full-size, lazily zero result with the variables, dtypes and attributes of one
    chunk's ``piece`` (only its metadata is written)."""
    ny = scene.sizes["y"]
    coords = {c: scene.coords[c] for c in ("y", "x") if c in scene.coords}
    tmpl = xr.Dataset(coords=coords, attrs=piece.attrs)
    for k, v in piece.data_vars.items():
        shape = tuple(ny if d == "y" else n for d, n in zip(v.dims, v.shape, strict=True))
        chunks = tuple(chunk_rows if d == "y" else n for d, n in zip(v.dims, shape,
                                                                    strict=True))
        tmpl[k] = (v.dims, da.zeros(shape, dtype=v.dtype, chunks=chunks), v.attrs)
    return tmpl


def retrieve_to_file(scene: xr.Dataset, out: str | os.PathLike, retriever: Retriever,
                     options: RetrieveOptions | None = None, *,
                     executor: ChunkExecutor | None = None, scene_path: str | None = None,
                     source: str | None = None, model_name: str | None = None,
                     progress: bool = True, variables: Sequence[str] | None = None,
                     separate: bool = False) -> list[Path]:
    """Retrieve a scene chunk by chunk and stream the maps to ``out`` (atomically).

    Parameters
    ----------
    scene : xarray.Dataset
        The scene, best opened lazily (:func:`open_input`): only one chunk's rows are
        read at a time.
    out : path-like
        Output: ``.zarr``, ``.nc`` or ``.tif`` (:func:`bayesfluo.io.writers.output_format`).
    retriever : Retriever
        The compiled guide (reused across scenes).
    options : RetrieveOptions
    executor : ChunkExecutor, optional
        Who computes the chunks (default: this process, :class:`LocalExecutor`).
    scene_path : str, optional
        Where the scene was read from (a dask executor lets its workers read it there).
    source, model_name : str, optional
        Global attributes ``input`` and ``model`` of the result.
    variables, separate
        GeoTIFF maps to write, and whether one file per variable
        (:func:`bayesfluo.io.writers.write_geotiff`).

    Returns
    -------
    list of Path
        The output(s) written. Nothing is left under a final name if the retrieval fails
        or is killed.
    """
    opt = options or RetrieveOptions()
    fmt = output_format(out)
    out = Path(out)
    t0 = time.perf_counter()
    guide = retriever.guide
    plan = plan_retrieval(scene, guide, opt, retriever.fm)
    executor = executor or LocalExecutor(retriever)
    attrs = result_attrs(guide, source=source or scene.encoding.get("source", ""),
                         model_name=model_name, elapsed_s=0.0, refined=opt.refine)
    if fmt == "zarr":
        with atomic_dir(out) as store:
            _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0)
        return [out]
    out.parent.mkdir(parents=True, exist_ok=True)
    store = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".zarr.tmp")
    try:
        _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0)
        with xr.open_zarr(store, consolidated=True) as ds:
            if fmt == "geotiff":
                return write_geotiff(ds.load(), out, variables, separate)
            return [write_netcdf(ds, out, plan.chunk_rows)]
    finally:
        shutil.rmtree(store, ignore_errors=True)


def _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0) -> None:
    """Write every chunk of ``plan`` into its region of the Zarr ``store``."""
    import zarr

    group = None
    bar = tqdm(total=len(plan.starts), desc="retrieve", disable=not progress, unit="chunk")
    with bar:
        for pr0, pieces in executor.chunks(scene, plan, opt, scene_path):
            rows = plan.rows(pr0)
            if group is None:  # the store's metadata, from the first chunk done
                piece = result_dataset({k: [v] for k, v in pieces.items()},
                                       scene.isel(y=rows), plan.chi2_max)
                tmpl = georeference(_template(piece, scene, plan.chunk_rows), scene)
                tmpl.attrs.update(attrs)
                tmpl.to_zarr(store, mode="w", compute=False, zarr_format=2,
                             consolidated=True,
                             encoding=zarr_encoding(tmpl, plan.chunk_rows))
                group = zarr.open_group(store, mode="r+", zarr_format=2)
                arrays = {k: group[k] for k in pieces}
            # raw values into the chunk's rows (the variables need no CF encoding: float
            # NaN is their fill value, flags are int8)
            for k, v in pieces.items():
                arrays[k][rows.start:rows.stop] = np.asarray(v, arrays[k].dtype)
            bar.update()
    if group is None:
        raise ValueError("the scene has no rows to retrieve")
    group.attrs.update(retrieval_time_s=round(time.perf_counter() - t0, 3),
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    zarr.consolidate_metadata(store)
