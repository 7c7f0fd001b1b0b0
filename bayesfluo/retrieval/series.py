"""Retrieval of a top-of-canopy time series (a FloX-like tower) with a tower's guide.

Each scan is a pixel: the series is cut into patches of consecutive scans
(:func:`bayesfluo.inference.guide.tower.tower_inputs`), the encoder maps each scan's
apparent reflectance and irradiance level to its posterior, and the summaries are closed
form (:func:`bayesfluo.inference.guide.summaries`, with both SIF peaks and the
integrated SIF where the window holds the O2-B band). The fit check predicts each scan's
radiance from its own measured irradiance on the scene's own bands (exact: a tower's
model has no operator to approximate), with the irradiance's noise carried into the
noise variance.

Output over ``time``: ``Q_mean``, ``Q_sd``, ``Q_q05``, ``Q_q50``, ``Q_q95`` (F760 also
``lo90``/``hi90``) for ``f760``, ``f687``, ``sif_peak`` (far-red), ``sif_red_peak``,
``sif_integrated`` (650-800 nm) and ``reflectance760``; ``quality_flag``,
``input_flag``, ``fit_chi2``; the scan's ``sza`` and measured ``irradiance750`` (beside
the SIF in the report's time series); optionally ``f760_draws`` (time, draw).
"""

from __future__ import annotations

import time
from functools import partial

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from bayesfluo.inference.guide import (
    AmortizedGuide,
    calibrate,
    fit_check,
    sample_draws,
    summaries,
)
from bayesfluo.inference.guide.tower import TOWER_ANCILLARY, tower_inputs
from bayesfluo.instruments import get_instrument
from bayesfluo.model import knee_softplus
from bayesfluo.retrieval.result import QUALITY_FLAGS, describe_variables, result_attrs
from bayesfluo.scene.bands import model_on_scene_grid, same_grid, scene_bands

__all__ = ["is_series", "check_series_for_guide", "retrieve_series", "SERIES_CHUNK_PATCHES"]

#: Patches (of ``patch_size**2`` scans) per compiled call: one static shape per series.
SERIES_CHUNK_PATCHES = 32


def is_series(scene: xr.Dataset) -> bool:
    """Whether a scene is a top-of-canopy time series (radiance over time and band)."""
    return "radiance" in scene and "time" in scene["radiance"].dims


def check_series_for_guide(scene: xr.Dataset, guide: AmortizedGuide) -> None:
    """Raise ValueError naming the problem if a series cannot be retrieved with
    ``guide`` (an image guide, another instrument, no irradiance, no NDVI)."""
    if not guide.model.top_of_canopy:
        raise ValueError(
            f"the {guide.instrument!r} model retrieves images; a top-of-canopy time series "
            "(with measured irradiance) needs a tower's model: --model flox")
    inst = scene.attrs.get("instrument")
    if inst != guide.instrument:
        raise ValueError(f"the series is from {inst!r}, the model is for "
                         f"{guide.instrument!r}")
    for v in ("irradiance", "sza", "ndvi", "surface_altitude", "sensor_altitude"):
        if v not in scene:
            raise ValueError(f"the series has no {v!r} (needed by the {guide.instrument} "
                             "model)")


def _ood(guide: AmortizedGuide, feats: jax.Array, ood_sigma: float) -> jax.Array:
    """Scans whose inputs leave the training distribution (N, P) bool."""
    na = len(TOWER_ANCILLARY)
    bad = jnp.max(jnp.abs(feats[..., :-na]), -1) > ood_sigma
    raw = (feats[..., -na:] * jnp.asarray(guide.feature_sd[-na:])
           + jnp.asarray(guide.feature_mean[-na:]))
    for name, (lo, hi) in guide.ranges.items():
        if name in TOWER_ANCILLARY:
            v = raw[..., TOWER_ANCILLARY.index(name)]
            tol = 0.02 * (hi - lo) + 1e-3
            bad |= (v < lo - tol) | (v > hi + tol)
    return bad


_FUNCTIONS: dict = {}


def _chunk_function(guide: AmortizedGuide):
    """The jitted ``(params, fit_model, feats, patches, key) -> (summaries, fit, draws)``
    of a guide (compiled once per guide, chunk shape and options)."""
    key = id(guide)
    if key in _FUNCTIONS and _FUNCTIONS[key][0] is guide:
        return _FUNCTIONS[key][1]
    if len(_FUNCTIONS) > 8:
        _FUNCTIONS.clear()
    _, static = eqx.partition(guide.encoder, eqx.is_inexact_array)
    model, info = guide.model, guide.info

    @partial(jax.jit, static_argnames=("with_fit", "n_draws"))
    def run(params, fit_model, feats, patches, key, *, with_fit: bool, n_draws: int):
        q = eqx.combine(params, static).encode(feats, patches.mask)
        fit = fit_check(fit_model, q, patches) if with_fit else None
        q = calibrate(q, model, info, patches.ndvi, None if fit is None else fit.chi2)
        summ = summaries(q, model, patches.ndvi, patches.surface_pressure0,
                         both_peaks=True)
        draws = None
        if n_draws:
            keys = jax.random.split(key, feats.shape[0])
            _, u = jax.vmap(lambda qq, k: sample_draws(qq, k, n_draws))(q, keys)
            draws = (model.sif_scale(patches.ndvi[:, None])
                     * knee_softplus(u[..., model.fm.n_basis]))          # (N, n, P)
        return summ, fit, draws

    _FUNCTIONS[key] = (guide, run)
    return run


def retrieve_series(scene: xr.Dataset, guide: AmortizedGuide, options=None, *,
                    progress: bool = True, source: str | None = None,
                    model_name: str | None = None) -> xr.Dataset:
    """Posterior time series of a tower's scans (module docstring), in memory.

    Parameters
    ----------
    scene : xarray.Dataset
        A top-of-canopy series (time, band) of the guide's instrument, with the measured
        ``irradiance`` (mW m-2 nm-1), ``sza``, ``ndvi``, ``surface_altitude`` and
        ``sensor_altitude``, on the model's band grid or the spectrometer's own.
    guide : AmortizedGuide
        A tower's guide (``guide.model.top_of_canopy``).
    options : RetrieveOptions, optional
        ``quality``, ``n_draws``, ``seed``, ``poor_fit_rate``, ``ood_sigma`` apply
        (:class:`bayesfluo.retrieval.chunk.RetrieveOptions`); ``refine`` is refused (a
        tower's posterior has no shared latents to refine).

    Raises
    ------
    ValueError
        If the series cannot be retrieved with the guide (the reason named).
    """
    from bayesfluo.retrieval.chunk import RetrieveOptions

    opt = options or RetrieveOptions()
    if opt.refine:
        raise ValueError("--refine is for images (it refines a patch's shared atmosphere); "
                         "a tower's scans have none: use 'bayesfluo nuts' for reference "
                         "posteriors of chosen scans")
    t0 = time.perf_counter()
    check_series_for_guide(scene, guide)
    scene = scene.load()
    model = guide.model
    bands = scene_bands(scene, guide.instrument)
    fit_model = (model if same_grid(bands, model, scene.sizes["band"])
                 else model_on_scene_grid(model, bands))
    ref = float(get_instrument(guide.instrument).reference_radiance)
    d = tower_inputs(scene, model, guide.feature_mean, guide.feature_sd, ref,
                     guide.patch_size, bands)
    n_patch, p = d.input_flag.shape
    params, _ = eqx.partition(guide.encoder, eqx.is_inexact_array)
    run = _chunk_function(guide)
    chunk = min(SERIES_CHUNK_PATCHES, n_patch)
    n_pad = -(-n_patch // chunk) * chunk

    def pad(v):
        v = jnp.asarray(v)
        if v.ndim == 0:
            return v
        return jnp.concatenate([v, jnp.repeat(v[-1:], n_pad - n_patch, 0)]) \
            if n_pad > n_patch else v

    patches = jax.tree.map(pad, d.patches)
    patches = patches.replace(mask=patches.mask.at[n_patch:].set(0.0))
    feats = pad(d.features)
    pieces: dict[str, list] = {}
    for i in range(0, n_pad, chunk):
        sl = slice(i, i + chunk)
        summ, fit, draws = run(params, fit_model, feats[sl],
                               jax.tree.map(lambda v, sl=sl: v[sl] if jnp.ndim(v) else v,
                                            patches),
                               jax.random.fold_in(jax.random.PRNGKey(opt.seed), i),
                               with_fit=opt.quality, n_draws=opt.n_draws)
        for name, st in summ.items():
            for stat, v in st.items():
                pieces.setdefault(f"{name}_{stat}", []).append(np.asarray(v))
        if fit is not None:
            pieces.setdefault("fit_chi2", []).append(np.asarray(fit.chi2))
            pieces.setdefault("fit_spike", []).append(np.asarray(fit.spike))
        if draws is not None:
            pieces.setdefault("f760_draws", []).append(np.moveaxis(np.asarray(draws), 1, -1))
        pieces.setdefault("ood", []).append(np.asarray(_ood(guide, feats[sl], opt.ood_sigma)))
    n = scene.sizes["time"]

    def scans(name):
        v = np.concatenate(pieces[name])[:n_patch]
        return v.reshape((n_patch * p,) + v.shape[2:])[:n]

    input_flag = d.input_flag.reshape(-1)[:n]
    bad = np.asarray(input_flag) != 0
    ds = xr.Dataset(coords={"time": scene["time"]})
    for name in pieces:
        if name in ("ood", "fit_spike", "f760_draws", "fit_chi2"):
            continue
        ds[name] = ("time", np.where(bad, np.nan, scans(name)).astype(np.float32))
    flag = np.where(bad, QUALITY_FLAGS["masked_input"], 0)
    flag |= np.where(scans("ood") & ~bad, QUALITY_FLAGS["out_of_distribution"], 0)
    chi2_max = None
    if opt.quality:
        q = str(1.0 - opt.poor_fit_rate)
        known = guide.info.get("fit_chi2_quantiles", {})
        chi2_max = (float(known[q]) if q in known else
                    float(scipy.stats.chi2.isf(opt.poor_fit_rate, bands.index.size)
                          / bands.index.size))
        c2 = np.where(bad, np.nan, scans("fit_chi2"))
        ds["fit_chi2"] = ("time", c2.astype(np.float32))
        poor = c2 > chi2_max
        spike_max = (guide.info.get("fit_spike_quantiles") or {}).get(q)
        if spike_max is not None:
            poor |= np.where(bad, False, scans("fit_spike") > spike_max)
        flag |= np.where(poor, QUALITY_FLAGS["poor_fit"], 0)
    if opt.n_draws:
        dr = scans("f760_draws")
        ds["f760_draws"] = (("time", "draw"),
                            np.where(bad[:, None], np.nan, dr).astype(np.float32))
    ds["quality_flag"] = ("time", flag.astype(np.int8))
    ds["input_flag"] = ("time", np.asarray(input_flag).astype(np.int8))
    ds["sza"] = ("time", np.asarray(scene["sza"].values, np.float32),
                 {"long_name": "solar zenith angle", "units": "degree",
                  "standard_name": "solar_zenith_angle"})
    wl = np.asarray(scene["wavelength"].values, np.float64)
    near = np.abs(wl - 750.0) <= 1.0
    e750 = np.nanmean(np.asarray(scene["irradiance"].transpose("time", "band").values,
                                 np.float64)[:, near if near.any() else [np.argmin(
                                     np.abs(wl - 750.0))]], -1)
    ds["irradiance750"] = ("time", e750.astype(np.float32),
                           {"long_name": "measured downwelling irradiance at 749-751 nm",
                            "units": "mW m-2 nm-1"})
    describe_variables(ds, chi2_max)
    ds.attrs.update(result_attrs(guide, source=source or scene.encoding.get("source", ""),
                                 model_name=model_name, elapsed_s=time.perf_counter() - t0,
                                 bands=bands, n_scene_bands=scene.sizes["band"]))
    ds.attrs["featureType"] = "timeSeries"
    return ds
