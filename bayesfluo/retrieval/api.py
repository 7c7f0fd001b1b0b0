"""Whole-scene retrieval with a trained amortized guide: posterior maps.

:func:`retrieve` cuts the scene into the guide's patches, takes them a band of patch rows
at a time (bounded memory; every chunk has the same static shape, so one compilation),
runs the encoder once per patch and turns its Gaussian into per-pixel posterior summaries
in closed form (:func:`bayesfluo.inference.guide.summaries`). Optionally it checks each
pixel's fit (the radiance predicted at the posterior mean through the patch's exact band
operator, against the model's noise) and draws posterior samples. The plan and the
per-chunk function live in :mod:`bayesfluo.retrieval.chunk`, the result's variables and
attributes in :mod:`bayesfluo.retrieval.result`.

Scenes larger than memory are retrieved chunk by chunk and streamed to disk, in one
process or on a dask cluster (:func:`retrieve_file`,
:mod:`bayesfluo.retrieval.streaming`, :mod:`bayesfluo.retrieval.executors`), with the
same plan (:func:`plan_retrieval`) and per-chunk function (:func:`retrieve_chunk`) as
here.

Output (the README's "Use" section): for ``f760``, ``sif_peak``,
``reflectance760`` (and ``f687`` where the window has the O2-B band) and each free
atmospheric or sensor latent: ``Q_mean``, ``Q_sd``, ``Q_q05``, ``Q_q50``, ``Q_q95`` over
(y, x); ``quality_flag`` (bits: :data:`QUALITY_FLAGS`), ``input_flag`` (what was wrong
with a masked input pixel), ``fit_chi2`` (reduced chi-square of the fit, when checked),
and optionally ``f760_draws`` (y, x, draw). CF attributes and units on every variable.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.inference.guide import AmortizedGuide, load_guide
from bayesfluo.io.writers import output_format
from bayesfluo.retrieval.chunk import (
    RetrievalPlan,
    RetrieveOptions,
    Retriever,
    plan_retrieval,
    retrieve_chunk,
)
from bayesfluo.retrieval.result import QUALITY_FLAGS, result_attrs, result_dataset
from bayesfluo.retrieval.series import is_series, retrieve_series
from bayesfluo.retrieval.streaming import (
    FlagSummary,
    open_input,
    output_lock,
    remove_temporaries,
    retrieve_to_file,
)
from bayesfluo.scene.grid import check_radiance_level

__all__ = ["retrieve", "retrieve_file", "QUALITY_FLAGS", "RetrieveOptions", "Retriever",
           "RetrievalPlan", "plan_retrieval", "retrieve_chunk", "result_attrs",
           "result_dataset", "FlagSummary"]


def retrieve(scene: xr.Dataset, guide: AmortizedGuide, options: RetrieveOptions | None = None,
             *, retriever: Retriever | None = None, progress: bool = True,
             source: str | None = None, model_name: str | None = None) -> xr.Dataset:
    """Posterior maps of a scene (see the module docstring for the variables), in memory.

    For scenes larger than memory, stream the output to disk instead
    (:func:`bayesfluo.retrieval.streaming.retrieve_to_file`).

    Parameters
    ----------
    scene : xarray.Dataset
        A scene (y, x, band) of the guide's instrument, with ``ndvi`` and geometry; or a
        top-of-canopy time series (time, band) with its measured irradiance, for a
        tower's guide (:func:`bayesfluo.retrieval.series.retrieve_series`: a result over
        time).
    guide : AmortizedGuide
        A trained guide (:func:`bayesfluo.inference.guide.load_guide`).
    options : RetrieveOptions
    retriever : Retriever, optional
        Reuse the compiled functions of an earlier call with the same guide.

    Raises
    ------
    ValueError
        If the scene cannot be retrieved with the guide (the reason named), or its
        radiance cannot be in mW m-2 sr-1 nm-1 (a unit mistake, an all-zero scene:
        :func:`bayesfluo.scene.grid.check_radiance_level`).
    """
    opt = options or RetrieveOptions()
    if is_series(scene) or guide.model.top_of_canopy:
        return retrieve_series(scene, guide, opt, progress=progress, source=source,
                               model_name=model_name)
    t0 = time.perf_counter()
    r = retriever or Retriever(guide)
    plan = plan_retrieval(scene, guide, opt, r.fm, r)
    check_radiance_level(scene)
    pieces: dict[str, list] = {}
    for pr0 in tqdm(plan.starts, desc="retrieve", disable=not progress, unit="chunk"):
        for k, v in retrieve_chunk(scene, pr0, plan, r, opt).items():
            pieces.setdefault(k, []).append(v)
    ds = result_dataset(pieces, scene, plan.chi2_max)
    ds.attrs.update(result_attrs(guide, source=source or scene.encoding.get("source", ""),
                                 model_name=model_name, elapsed_s=time.perf_counter() - t0,
                                 refined=opt.refine, bands=plan.bands,
                                 n_scene_bands=scene.sizes["band"]))
    return ds


def retrieve_file(scene_path: str | Path, model_dir: str | Path, out: str | Path,
                  options: RetrieveOptions | None = None, progress: bool = True, *,
                  retriever: Retriever | None = None, reader_kwargs: dict | None = None,
                  executor=None, variables=None, separate: bool = False,
                  flags: FlagSummary | None = None, lock: bool = True,
                  overlap: bool = True) -> Path:
    """Read a scene (any format :func:`bayesfluo.io.readers.open_scene` knows, lazily),
    retrieve it with the model in ``model_dir`` chunk by chunk and stream the maps to
    ``out`` (netCDF ``.nc``, Zarr ``.zarr`` or GeoTIFF ``.tif``, atomically; see
    :func:`bayesfluo.retrieval.streaming.retrieve_to_file`). Memory is bounded by
    ``options.chunk_pixels``, not the scene.

    Parameters
    ----------
    retriever : Retriever, optional
        The compiled guide of ``model_dir`` (reuse across files).
    reader_kwargs : dict, optional
        ``geometry`` and ``instrument`` for the reader.
    executor : optional
        Who computes the chunks (default this process; see
        :class:`bayesfluo.retrieval.executors.DaskExecutor`).
    variables, separate
        GeoTIFF maps (:func:`bayesfluo.io.writers.write_geotiff`).
    flags : FlagSummary, optional
        Add the written pixels' flags to it (for a one-line report).
    lock : bool
        Hold ``out``'s lock while writing (:func:`bayesfluo.retrieval.streaming.output_lock`;
        temporaries of ``out`` left by killed runs are removed first). False where the
        caller holds it (a batch).
    overlap : bool
        Read and write in threads while chunks are computed (the same output; see
        :func:`bayesfluo.retrieval.streaming.retrieve_to_file`).

    Returns
    -------
    Path
        ``out`` (the first file, with ``separate`` GeoTIFFs).

    Raises
    ------
    ValueError
        As :func:`retrieve` (checked before any chunk is retrieved).
    bayesfluo.retrieval.streaming.OutputBusyError
        If another process is writing ``out``.
    """
    output_format(out)  # a bad extension fails before any work
    with output_lock(out) if lock else contextlib.nullcontext():
        if lock:
            remove_temporaries(out)
        scene = open_input(scene_path, **(reader_kwargs or {}))
        try:
            r = retriever or Retriever(load_guide(model_dir))
            paths = retrieve_to_file(scene, out, r, options, executor=executor,
                                     scene_path=str(scene_path),
                                     source=Path(scene_path).name,
                                     model_name=Path(model_dir).name, progress=progress,
                                     variables=variables, separate=separate, flags=flags,
                                     overlap=overlap)
        finally:
            scene.close()
    return paths[0]
