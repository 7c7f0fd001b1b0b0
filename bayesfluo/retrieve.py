"""Whole-scene retrieval with a trained amortized guide: posterior maps.

:func:`retrieve` cuts the scene into the guide's patches, takes them a band of patch rows
at a time (bounded memory; every chunk has the same static shape, so one compilation),
runs the encoder once per patch and turns its Gaussian into per-pixel posterior summaries
in closed form (:func:`bayesfluo.guide.summaries`). Optionally it checks each pixel's fit
(the radiance predicted at the posterior mean through the patch's exact band operator,
against the noise model) and draws posterior samples.

Scenes larger than memory are retrieved chunk by chunk and streamed to disk, in one
process or on a dask cluster, by :mod:`bayesfluo.streaming` and
:mod:`bayesfluo.distributed` (:func:`retrieve_file`), with the same plan
(:func:`plan_retrieval`) and per-chunk function (:func:`retrieve_chunk`) as here.

Output (``shared/SCENE_FORMAT.md`` section 4): for ``f760``, ``sif_peak``,
``reflectance760`` (and ``f687`` where the window has the O2-B band) and each free
atmospheric or sensor latent: ``Q_mean``, ``Q_sd``, ``Q_q05``, ``Q_q50``, ``Q_q95`` over
(y, x); ``quality_flag`` (bits: :data:`QUALITY_FLAGS`), ``input_flag`` (what was wrong
with a masked input pixel), ``fit_chi2`` (reduced chi-square of the fit, when checked),
and optionally ``f760_draws`` (draw, y, x). CF attributes and units on every variable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo import __version__
from bayesfluo.guide import (
    ANCILLARY,
    AmortizedGuide,
    GuideOutput,
    _knee_softplus,
    sample_draws,
    summaries,
)
from bayesfluo.instruments import get_instrument
from bayesfluo.model import _reflectance_prior, shared_parameters, sif_scale
from bayesfluo.patches import (
    INPUT_FLAGS,
    PatchGrid,
    _patch_inputs,
    check_scene_for_model,
    reference_centre,
)
from bayesfluo.physics.forward import (
    ForwardModel,
    Geometry,
    band_operator,
    build_forward_model,
    radiance_from_operator,
)
from bayesfluo.physics.surface import SifParams, sif_spectrum
from bayesfluo.refine import laplace_refine, patch_model_data

__all__ = ["retrieve", "QUALITY_FLAGS", "RetrieveOptions", "Retriever", "RetrievalPlan",
           "plan_retrieval", "retrieve_chunk", "predicted_radiance", "result_attrs",
           "retrieve_file"]

#: Bits of ``quality_flag``
QUALITY_FLAGS = {"masked_input": 1, "poor_fit": 2, "out_of_distribution": 4,
                 "few_pixels_in_patch": 8, "not_refined": 16}

_ATTRS = {
    "f760": ("sun-induced chlorophyll fluorescence at 760 nm", "mW m-2 sr-1 nm-1", None),
    "f687": ("sun-induced chlorophyll fluorescence at 687 nm", "mW m-2 sr-1 nm-1", None),
    "sif_peak": ("sun-induced chlorophyll fluorescence at its far-red peak",
                 "mW m-2 sr-1 nm-1", None),
    "reflectance760": ("surface reflectance at 760 nm", "1",
                       "surface_bidirectional_reflectance"),
    "surface_pressure": ("surface air pressure of the pixel's patch", "hPa",
                         "surface_air_pressure"),
    "aot550": ("aerosol optical thickness at 550 nm of the pixel's patch", "1",
               "atmosphere_optical_thickness_due_to_ambient_aerosol_particles"),
    "diffuse_path": ("diffuse-path factor of the pixel's patch", "1", None),
    "spectral_shift": ("spectral shift of the sensor's bands (patch)", "nm", None),
    "fwhm_scale": ("scale of the sensor's band FWHM (patch)", "1", None),
}
_STATS = {"mean": "posterior mean", "sd": "posterior standard deviation",
          "q05": "posterior 5 % quantile", "q50": "posterior median",
          "q95": "posterior 95 % quantile"}


@dataclass(frozen=True)
class RetrieveOptions:
    """Options of :func:`retrieve`.

    Attributes
    ----------
    quality : bool
        Check each pixel's fit (``poor_fit`` flag, ``fit_chi2``); costs one exact band
        operator per patch.
    n_draws : int
        Posterior draws of F760 to write per pixel (0: none).
    seed : int
        Seed of the draws.
    chunk_pixels : int
        About how many pixels go through the encoder at once (whole patch rows; memory
        bound). Small chunks keep the encoder's activations in the CPU's caches: on 2
        cores, 8,192 pixels ran 1.2-1.6x faster than 32,768 or 65,536.
    poor_fit_rate : float
        False-flag rate of ``poor_fit`` on data the model explains: the threshold is the
        ``1 - poor_fit_rate`` quantile of ``fit_chi2`` on the model's own simulations,
        measured after training (``info["fit_chi2_quantiles"]`` of the guide: 0.99 or
        0.999); without it, the chi-square quantile with one degree of freedom per band.
    ood_sigma : float
        An input whose normalised spectrum leaves the training distribution by more than
        this many standard deviations in any band is flagged ``out_of_distribution``.
    min_patch_pixels : int
        Patches with fewer usable pixels are flagged ``few_pixels_in_patch`` (their
        atmosphere rests on little data).
    refine : bool
        Refine each patch's posterior from the guide's to the Laplace approximation at
        the model's mode (:mod:`bayesfluo.refine`): agrees with NUTS where the guide
        alone pays an amortization gap, at a fraction of its speed. Patches where the
        refinement does not converge keep the guide's posterior and are flagged
        ``not_refined``.
    refine_batch : int
        Patches refined at once (memory: ~20 MB each for HyPlant FLUO).
    """

    quality: bool = True
    n_draws: int = 0
    seed: int = 0
    chunk_pixels: int = 8192
    poor_fit_rate: float = 1e-3
    ood_sigma: float = 8.0
    min_patch_pixels: int = 8
    refine: bool = False
    refine_batch: int = 16


class Retriever:
    """Jitted retrieval functions of one guide (build once, apply to many chunks)."""

    def __init__(self, guide: AmortizedGuide, fm: ForwardModel | None = None):
        self.guide = guide
        self.fm = fm or build_forward_model(guide.instrument)
        g, fm = guide, self.fm
        cfg = g.config
        params, static = eqx.partition(g.encoder, eqx.is_inexact_array)
        self._params = params

        @jax.jit
        def encode(params, feats, mask):
            return eqx.combine(params, static).encode(feats, mask)

        @jax.jit
        def summarise(q, ndvi, p0):
            return summaries(q, fm, cfg, ndvi, p0, g.has_red)

        @jax.jit
        def chi2(q, d):
            return _fit_chi2(fm, cfg, g.has_red, q, d)

        def draws(q, ndvi, key, n):
            return _f760_draws(fm, cfg, q, ndvi, key, n)

        self.encode_fn, self._chi2_fn = encode, partial(_fit_chi2, fm, cfg, g.has_red)
        self.encode = lambda f, m: encode(self._params, f, m)
        self.summarise, self.chi2 = summarise, chi2
        self.draws = jax.jit(draws, static_argnums=3)
        self._chunk_fn = jax.jit(partial(_chunk_maps, g, fm, static),
                                 static_argnames=("min_patch_pixels", "refine_batch"))

    def chunk_maps(self, d: dict, ood_sigma: float, min_patch_pixels: int,
                   refine_batch: int | None = None) -> tuple[GuideOutput, dict, jax.Array]:
        """The guide's output, the per-pixel posterior summaries and the quality flags of
        a chunk, in one compiled pass (:func:`_chunk_maps`; ``d`` as
        :func:`bayesfluo.patches.patch_inputs` returns it, with the radiance when
        refining). With ``refine_batch``, the guide's output is refined
        (:func:`bayesfluo.refine.laplace_refine`, that many patches at once) before the
        summaries."""
        model_data = None
        if refine_batch:
            model_data = patch_model_data({k: d[k] for k in (
                "radiance", "mask", "ndvi", "geometry", "noise_a", "noise_b",
                "surface_pressure0")})
        return self._chunk_fn(self._params, d["features"], d["mask"], d["ndvi"],
                              d["surface_pressure0"], d["input_flag"], ood_sigma,
                              model_data, min_patch_pixels=min_patch_pixels,
                              refine_batch=refine_batch)

    def posterior(self, d: dict) -> GuideOutput:
        """The guide's output for patch inputs ``d`` (:func:`bayesfluo.patches.patch_inputs`)."""
        return self.encode(jnp.asarray(d["features"]), jnp.asarray(d["mask"]))


def predicted_radiance(fm: ForwardModel, cfg, has_red: bool, q: GuideOutput, d: dict
                       ) -> jax.Array:
    """Band radiance of every pixel at the guide's posterior mean (N, P, B), mW m-2 sr-1
    nm-1: the patch's exact band operator at the mean of its atmosphere and sensor
    latents, each pixel's reflectance and SIF at their means (``d`` as
    :func:`bayesfluo.patches.patch_inputs` returns it)."""
    geom = Geometry(*d["geometry"])
    k = fm.n_basis
    mu, chol = _reflectance_prior(fm, cfg)
    shape760 = sif_spectrum(760.0, SifParams(0.0, 1.0))

    def patch(qs, g, p0):
        atm, sens, _ = shared_parameters(cfg, {"surface_pressure0": p0},
                                         dict(zip(cfg.free, qs, strict=True)))
        return band_operator(fm, atm, g, sens)

    # the fine-grid operator of 32 patches at a time: bounded memory
    op = jax.lax.map(lambda a: patch(*a), (q.shared_loc, geom, d["surface_pressure0"]),
                     batch_size=32)
    coeffs = jax.nn.sigmoid(mu + q.local_loc[..., :k] @ chol.T)
    scale = sif_scale(d["ndvi"], cfg) / shape760
    far = scale * _knee_softplus(q.local_loc[..., k])
    red = (cfg.sif_red_ratio * scale * _knee_softplus(q.local_loc[..., k + 1]) if has_red
           else jnp.zeros_like(far))
    return jax.vmap(jax.vmap(lambda o, c, r, f: radiance_from_operator(fm, o, c,
                                                                       SifParams(r, f)),
                             in_axes=(None, 0, 0, 0)))(op, coeffs, red, far)


def _fit_chi2(fm, cfg, has_red, q: GuideOutput, d: dict):
    """Reduced chi-square of each pixel's radiance at the posterior mean (N, P)."""
    pred = predicted_radiance(fm, cfg, has_red, q, d)
    a, b = d["noise_a"], d["noise_b"]
    var = a[:, None, None] * jnp.maximum(pred, 0.0) + b[:, None, None]
    return jnp.mean((d["radiance"] - pred) ** 2 / var, -1)


def _f760_draws(fm, cfg, q, ndvi, keys, n):
    """(n, N, P) draws of F760, each patch from its own key (chunking does not matter)."""
    _, u = jax.vmap(lambda qq, k: sample_draws(qq, k, n))(q, keys)   # (N, n, P, D)
    return jnp.moveaxis(sif_scale(ndvi[:, None], cfg) * _knee_softplus(u[..., fm.n_basis]),
                        1, 0)


def _ood(guide: AmortizedGuide, feats, ood_sigma):
    """Pixels whose inputs leave the training distribution (N, P) bool (JAX or numpy
    features (N, P, F), normalised)."""
    xp = np if isinstance(feats, np.ndarray) else jnp
    nb = feats.shape[-1] - len(ANCILLARY)
    bad = xp.max(xp.abs(feats[..., :nb]), -1) > ood_sigma
    raw = feats[..., nb:] * guide.feature_sd[nb:] + guide.feature_mean[nb:]
    for name, (lo, hi) in guide.ranges.items():
        if name in ANCILLARY:
            v = raw[..., ANCILLARY.index(name)]
            tol = 0.02 * (hi - lo) + 1e-3
            bad |= (v < lo - tol) | (v > hi + tol)
    return bad


def _chunk_maps(guide: AmortizedGuide, fm: ForwardModel, static, params, feats, mask, ndvi,
                p0, input_flag, ood_sigma, model_data=None, *, min_patch_pixels: int,
                refine_batch: int | None = None):
    """Encoder (and refinement), summaries and flags of a chunk of patches: the
    posterior in the guide's form, the summaries ``{"Q_stat": (N, P) float32}``
    (per-patch quantities repeated over their pixels, NaN where the input is unusable)
    and the quality flags (N, P) of everything but the fit."""
    q = eqx.combine(params, static).encode(feats, mask)
    not_refined = jnp.zeros(mask.shape[0], bool)
    if refine_batch:
        q, info = laplace_refine(fm, guide.config, guide.has_red, q, model_data,
                                 batch_size=refine_batch)
        not_refined = ~info.converged
    summ = summaries(q, fm, guide.config, ndvi, p0, guide.has_red)
    ok = input_flag == 0
    out = {}
    for name, st in summ.items():
        for stat, v in st.items():
            if v.ndim == 1:  # per patch -> its pixels
                v = jnp.broadcast_to(v[:, None], mask.shape)
            out[f"{name}_{stat}"] = jnp.where(ok, v.astype(jnp.float32), jnp.nan)
    flag = jnp.where(ok, 0, QUALITY_FLAGS["masked_input"])
    flag |= jnp.where(_ood(guide, feats, ood_sigma) & ok,
                      QUALITY_FLAGS["out_of_distribution"], 0)
    few = jnp.sum(mask, 1) < min_patch_pixels
    flag |= jnp.where(few[:, None] & ok, QUALITY_FLAGS["few_pixels_in_patch"], 0)
    flag |= jnp.where(not_refined[:, None] & ok, QUALITY_FLAGS["not_refined"], 0)
    return q, out, flag


@dataclass(frozen=True)
class RetrievalPlan:
    """How a scene is cut for retrieval: the same for every executor (one process,
    streamed to disk, or a dask cluster), so results do not depend on which one runs.

    Attributes
    ----------
    grid : PatchGrid
        The scene's patches.
    rows_per_chunk : int
        Patch rows per chunk (every chunk is padded to ``n_chunk_patches`` patches, so
        the jitted functions compile once).
    n_chunk_patches : int
        Patches per (padded) chunk.
    centre : tuple of float
        Whole-scene reference geometry (:func:`bayesfluo.patches.reference_centre`).
    reference_radiance : float
        The instrument's reference radiance, mW m-2 sr-1 nm-1.
    chi2_max : float or None
        ``poor_fit`` threshold of ``fit_chi2`` (None without the quality check).
    """

    grid: PatchGrid
    rows_per_chunk: int
    n_chunk_patches: int
    centre: tuple
    reference_radiance: float
    chi2_max: float | None

    @property
    def starts(self) -> list[int]:
        """First patch row of each chunk."""
        return list(range(0, self.grid.n_rows, self.rows_per_chunk))

    def rows(self, pr0: int) -> slice:
        """Image rows of the chunk starting at patch row ``pr0``."""
        s = self.grid.patch_size
        return slice(pr0 * s, min((pr0 + self.rows_per_chunk) * s, self.grid.shape[0]))

    @property
    def chunk_rows(self) -> int:
        """Image rows of a full chunk (the natural chunk height of an output store)."""
        return self.rows_per_chunk * self.grid.patch_size


def plan_retrieval(scene: xr.Dataset, guide: AmortizedGuide, options: RetrieveOptions,
                   fm: ForwardModel) -> RetrievalPlan:
    """Check a scene against the guide's model and cut it into chunks of patch rows.

    Reads only the scene's band grid and its per-pixel geometry (not its radiance).

    Raises
    ------
    ValueError
        If the scene cannot be retrieved with the guide (see
        :func:`bayesfluo.patches.check_scene_for_model`).
    """
    check_scene_for_model(scene, guide.instrument, fm.band_centre_nm)
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    s = guide.patch_size
    grid = PatchGrid((ny, nx), s)
    # no more patch rows per chunk than the scene has (padding a small scene up to a
    # full chunk would only add work)
    rows_per_chunk = max(1, min(grid.n_rows, options.chunk_pixels // (grid.n_cols * s * s)))
    chi2_max = None
    if options.quality:
        known = guide.info.get("fit_chi2_quantiles", {})
        q = str(1.0 - options.poor_fit_rate)
        chi2_max = (float(known[q]) if q in known else
                    float(scipy.stats.chi2.isf(options.poor_fit_rate, fm.n_bands) /
                          fm.n_bands))
    return RetrievalPlan(grid, rows_per_chunk, rows_per_chunk * grid.n_cols,
                         reference_centre(scene),
                         float(get_instrument(guide.instrument).reference_radiance), chi2_max)


def retrieve_chunk(scene: xr.Dataset, pr0: int, plan: RetrievalPlan, r: Retriever,
                   options: RetrieveOptions, *, sliced: bool = False
                   ) -> dict[str, np.ndarray]:
    """Posterior summaries of one chunk of patch rows (starting at patch row ``pr0``).

    Only the chunk's rows of ``scene`` are read (``scene.isel(y=rows)``, lazy for a file
    opened lazily or a dask-backed scene); with ``sliced``, ``scene`` is already just
    those rows (``plan.rows(pr0)``).

    Returns
    -------
    dict of numpy.ndarray
        Image pieces (rows, x) of every output variable (``f760_draws``: (rows, x, draw)),
        in the order :func:`retrieve` writes them.
    """
    opt, guide, grid = options, r.guide, plan.grid
    s = grid.patch_size
    rows = plan.rows(pr0)
    ny = rows.stop - rows.start
    n = -(-ny // s) * grid.n_cols  # the chunk's patches (then padding up to a full chunk)
    d = _patch_inputs(scene if sliced else scene.isel(y=rows), grid, slice(None),
                      guide.feature_mean, guide.feature_sd, plan.reference_radiance, r.fm,
                      guide.config, plan.centre, n_patches=plan.n_chunk_patches,
                      with_radiance=opt.quality or opt.refine, device=True)
    q, maps, flag = r.chunk_maps(d, opt.ood_sigma, opt.min_patch_pixels,
                                 opt.refine_batch if opt.refine else None)
    input_flag = np.asarray(d["input_flag"])[:n]
    bad = input_flag != 0
    extra = {}
    if opt.quality:
        dq = {k: d[k] for k in ("radiance", "geometry", "ndvi", "noise_a", "noise_b",
                                "surface_pressure0")}
        extra["fit_chi2"] = r.chi2(q, dq)
    if opt.n_draws:
        first = pr0 * grid.n_cols  # index of the chunk's first patch in the scene
        keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.PRNGKey(opt.seed), i))(
            jnp.arange(first, first + plan.n_chunk_patches))
        extra["f760_draws"] = r.draws(q, d["ndvi"], keys, opt.n_draws)
    maps, flag, extra = jax.device_get((maps, flag, extra))
    out = {k: v[:n] for k, v in maps.items()}
    flag = flag[:n]
    if opt.quality:
        c2 = np.where(bad, np.nan, extra["fit_chi2"][:n])
        out["fit_chi2"] = c2
        flag = flag | np.where(c2 > plan.chi2_max, QUALITY_FLAGS["poor_fit"], 0)
    if opt.n_draws:
        dr = np.moveaxis(extra["f760_draws"][:, :n], 0, -1).astype(np.float32)
        out["f760_draws"] = np.where(bad[..., None], np.nan, dr)
    out["quality_flag"] = flag.astype(np.int8)
    out["input_flag"] = input_flag.astype(np.int8)
    return {k: grid.to_image(v, ny) for k, v in out.items()}


def result_attrs(guide: AmortizedGuide, *, source: str | None, model_name: str | None,
                 elapsed_s: float, refined: bool = False) -> dict:
    """Global attributes of a result (``shared/SCENE_FORMAT.md`` section 4)."""
    return dict(
        posterior=("amortized guide, refined to the Laplace approximation at the mode "
                   "(bayesfluo.refine)" if refined else "amortized guide"),
        model=model_name or guide.instrument, model_fingerprint=guide.info.get(
            "fingerprint", "")[:12], bayesfluo_version=__version__,
        input=source or "", instrument=guide.instrument,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        Conventions="CF-1.10", retrieval_time_s=round(elapsed_s, 3),
        patch_size=guide.patch_size)


def retrieve(scene: xr.Dataset, guide: AmortizedGuide, options: RetrieveOptions | None = None,
             *, retriever: Retriever | None = None, progress: bool = True,
             source: str | None = None, model_name: str | None = None) -> xr.Dataset:
    """Posterior maps of a scene (see the module docstring for the variables), in memory.

    For scenes larger than memory, stream the output to disk instead
    (:func:`bayesfluo.streaming.retrieve_to_file`).

    Parameters
    ----------
    scene : xarray.Dataset
        A scene (y, x, band) of the guide's instrument, with ``ndvi`` and geometry.
    guide : AmortizedGuide
        A trained guide (:func:`bayesfluo.guide.load_guide`).
    options : RetrieveOptions
    retriever : Retriever, optional
        Reuse the compiled functions of an earlier call with the same guide.
    """
    opt = options or RetrieveOptions()
    t0 = time.perf_counter()
    r = retriever or Retriever(guide)
    plan = plan_retrieval(scene, guide, opt, r.fm)
    pieces: dict[str, list] = {}
    for pr0 in tqdm(plan.starts, desc="retrieve", disable=not progress, unit="chunk"):
        for k, v in retrieve_chunk(scene, pr0, plan, r, opt).items():
            pieces.setdefault(k, []).append(v)
    ds = _to_dataset(pieces, scene, guide, opt, plan.chi2_max)
    ds.attrs.update(result_attrs(guide, source=source or scene.encoding.get("source", ""),
                                 model_name=model_name, elapsed_s=time.perf_counter() - t0,
                                 refined=opt.refine))
    return ds


def _to_dataset(pieces: dict, scene: xr.Dataset, guide: AmortizedGuide,
                opt: RetrieveOptions, chi2_max) -> xr.Dataset:
    coords = {c: scene.coords[c] for c in ("y", "x") if c in scene.coords}
    ds = xr.Dataset(coords=coords)
    for k, parts in pieces.items():
        v = np.concatenate(parts, 0)
        if k == "f760_draws":
            ds[k] = (("y", "x", "draw"), v.astype(np.float32))
            ds[k].attrs.update(long_name="posterior draws of F760", units="mW m-2 sr-1 nm-1")
            continue
        ds[k] = (("y", "x"), v)
    for k in list(ds.data_vars):
        name, _, stat = k.rpartition("_")
        if name in _ATTRS and stat in _STATS:
            long_name, units, std = _ATTRS[name]
            ds[k].attrs.update(long_name=f"{_STATS[stat]} of {long_name}", units=units)
            if std:
                ds[k].attrs["standard_name"] = std
    ds["quality_flag"].attrs.update(
        long_name="retrieval quality flag", units="1",
        flag_masks=np.array(list(QUALITY_FLAGS.values()), np.int8),
        flag_meanings=" ".join(QUALITY_FLAGS))
    ds["input_flag"].attrs.update(
        long_name="problems of the input pixel", units="1",
        flag_masks=np.array(list(INPUT_FLAGS.values()), np.int8),
        flag_meanings=" ".join(INPUT_FLAGS))
    if "fit_chi2" in ds:
        ds["fit_chi2"].attrs.update(
            long_name="reduced chi-square of the radiance at the posterior mean", units="1",
            poor_fit_threshold=chi2_max)
    return ds


def retrieve_file(scene_path: str | Path, model_dir: str | Path, out: str | Path,
                  options: RetrieveOptions | None = None, progress: bool = True, *,
                  retriever: Retriever | None = None, reader_kwargs: dict | None = None,
                  executor=None, variables=None, separate: bool = False) -> Path:
    """Read a scene (any format :func:`bayesfluo.io.readers.open_scene` knows, lazily),
    retrieve it with the model in ``model_dir`` chunk by chunk and stream the maps to
    ``out`` (netCDF ``.nc``, Zarr ``.zarr`` or GeoTIFF ``.tif``, atomically; see
    :func:`bayesfluo.streaming.retrieve_to_file`). Memory is bounded by
    ``options.chunk_pixels``, not the scene.

    Parameters
    ----------
    retriever : Retriever, optional
        The compiled guide of ``model_dir`` (reuse across files).
    reader_kwargs : dict, optional
        ``geometry`` and ``instrument`` for the reader.
    executor : optional
        Who computes the chunks (default this process; see
        :class:`bayesfluo.distributed.DaskExecutor`).
    variables, separate
        GeoTIFF maps (:func:`bayesfluo.io.writers.write_geotiff`).

    Returns
    -------
    Path
        ``out`` (the first file, with ``separate`` GeoTIFFs).
    """
    from bayesfluo.guide import load_guide
    from bayesfluo.io.writers import output_format
    from bayesfluo.streaming import open_input, retrieve_to_file

    output_format(out)  # a bad extension fails before any work
    scene = open_input(scene_path, **(reader_kwargs or {}))
    try:
        r = retriever or Retriever(load_guide(model_dir))
        paths = retrieve_to_file(scene, out, r, options, executor=executor,
                                 scene_path=str(scene_path), source=Path(scene_path).name,
                                 model_name=Path(model_dir).name, progress=progress,
                                 variables=variables, separate=separate)
    finally:
        scene.close()
    return paths[0]
