"""Retrieval of a top-of-canopy time series (a FloX-like tower) with a tower's guide.

Each scan is a pixel: the series is cut into patches of consecutive scans
(:func:`bayesfluo.inference.guide.tower.tower_inputs`), the encoder maps each scan's
apparent reflectance and irradiance level to its posterior, and the summaries are closed
form (:func:`bayesfluo.inference.guide.summaries`, with both SIF peaks and the
integrated SIF where the window holds the O2-B band). The fit check predicts each scan's
radiance from its own measured irradiance on the scene's own bands (exact: a tower's
model has no operator to approximate), with the irradiance's noise carried into the
noise variance.

By default (``refine``; ``retrieve --no-refine`` turns it off) each scan's posterior
becomes the Laplace approximation at the mode of the model's own
(:func:`bayesfluo.inference.refine.laplace_refine` on patches of one scan: a tower
shares no latents between scans), searched from the
guide's mean or the scan's weighted least squares, whichever fits better; a scan that
does not converge, or fits worse than the guide's mean, keeps the guide (flag
``not_refined``). F760, the far-red peak and R760 then agree with NUTS; the red peak
(F687 and the integrated SIF) stays the guide's (:data:`GUIDE_QUANTITIES`).

Output over ``time``: ``Q_mean``, ``Q_sd``, ``Q_q05``, ``Q_q50``, ``Q_q95`` (and the
shortest 90 % interval ``lo90``/``hi90`` but for R760) for ``f760``, ``f687``,
``sif_peak`` (far-red), ``sif_red_peak``, ``sif_integrated`` (650-800 nm) and
``reflectance760``; ``quality_flag``,
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
from bayesfluo.inference.refine import RefineOptions, laplace_refine
from bayesfluo.instruments import get_instrument
from bayesfluo.model import knee_softplus
from bayesfluo.model.laplace import SEARCH_DAMPING, Layout, toc_start
from bayesfluo.retrieval.acceptance import out_of_distribution, refinement_accepted
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


#: A scan's refinement: the exact potential (a tower has no operator to expand), from the
#: guide's mean or the scan's least squares, with the unclipped steps of a search from
#: least squares (on PROSAIL canopies the guide's mean can fit at chi-square ~1000 and
#: clipped steps crawl; these reach the mode within 5 rounds, measured)
TOWER_REFINE = RefineOptions(expansions=10, newton_steps=3, damping=SEARCH_DAMPING)


#: Quantities a refined series takes from the guide (the red peak and what depends on
#: it), not from the refinement.
GUIDE_QUANTITIES = ("f687", "sif_red_peak", "sif_integrated", "sif_red")


def _per_scan(tree, p: int):
    """Patches (or guide outputs) of ``p`` scans, leading dims (N, p), as N * p patches
    of one scan each (a per-patch value repeated over its scans)."""
    def f(v):
        if v.ndim >= 2 and v.shape[1] == p:
            return v.reshape((v.shape[0] * p, 1) + v.shape[2:])
        return jnp.repeat(v, p, axis=0)
    return jax.tree.map(f, tree)


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

    @partial(jax.jit, static_argnames=("with_fit", "n_draws", "refine_batch"))
    def run(params, fit_model, feats, patches, key, *, with_fit: bool, n_draws: int,
            refine_batch: int | None):
        q = eqx.combine(params, static).encode(feats, patches.mask)
        fit = fit_check(fit_model, q, patches) if with_fit or refine_batch else None
        q = calibrate(q, model, info, patches.ndvi, None if fit is None else fit.chi2)
        not_refined = jnp.zeros(patches.mask.shape, bool)
        q_guide = q
        if refine_batch:
            # each scan's posterior at the mode of the model's own, on the file's own
            # bands; a tower has no shared latents, so each scan is refined (and kept or
            # not: flag not_refined) on its own, as a patch of one scan. The search
            # starts where the radiance fits better: the guide's mean or the scan's own
            # weighted least squares (close to the mode where the surface is outside
            # what the guide was trained on)
            n, p = patches.mask.shape
            one = _per_scan(patches, p)
            layout = Layout.of(fit_model, one.index(0))
            ls = jax.vmap(lambda pt: toc_start(fit_model, pt, layout))(one)
            q1 = _per_scan(q, p)
            chi2_ls = fit_check(fit_model, eqx.tree_at(lambda o: o.local_loc, q1, ls),
                                one).chi2
            c2 = fit.chi2.reshape(n * p, 1)
            start = jnp.where((chi2_ls < c2)[..., None], ls, q1.local_loc)
            q_ref, rinfo = laplace_refine(fit_model, q1, one, batch_size=refine_batch * p,
                                          options=TOWER_REFINE, start_local=start)
            fit_ref = fit_check(fit_model, q_ref, one)
            accept = refinement_accepted(rinfo, fit_ref.chi2, c2, one.mask)

            def pick(new, old):
                if old.ndim < 2 or old.shape[1] != p:      # per patch: none for a tower
                    return old
                a = accept.reshape((n, p) + (1,) * (old.ndim - 2))
                return jnp.where(a, new.reshape(old.shape), old)

            q = jax.tree.map(pick, q_ref, q)
            fit = jax.tree.map(pick, fit_ref, fit)
            not_refined = ~accept.reshape(n, p)
        summ = summaries(q, model, patches.ndvi, patches.surface_pressure0,
                         both_peaks=True)
        if refine_batch:
            # the red peak stays the guide's: the model's own posterior of F687 fails
            # off its family (PROSAIL canopies: 18 % coverage of equal-tailed 90 %
            # intervals, bias +0.26, RMSE 0.64), where the guide, trained on such
            # series, errs a third as much (benchmarks/validate_flox.py)
            guide_summ = summaries(q_guide, model, patches.ndvi, patches.surface_pressure0,
                                   both_peaks=True)
            summ.update({name: guide_summ[name] for name in GUIDE_QUANTITIES
                         if name in guide_summ})
        draws = None
        if n_draws:
            keys = jax.random.split(key, feats.shape[0])
            _, u = jax.vmap(lambda qq, k: sample_draws(qq, k, n_draws))(q, keys)
            draws = (model.sif_scale(patches.ndvi[:, None])
                     * knee_softplus(u[..., model.fm.n_basis]))          # (N, n, P)
        return summ, (fit if with_fit else None), draws, not_refined

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
        ``quality``, ``n_draws``, ``seed``, ``poor_fit_rate``, ``ood_sigma``,
        ``refine`` and ``refine_batch`` apply
        (:class:`bayesfluo.retrieval.chunk.RetrieveOptions`). With ``refine`` (the
        default for a series; ``refine=False``: the guide alone) each scan's
        posterior is the Laplace approximation at the mode of the model's own
        (:func:`bayesfluo.inference.refine.laplace_refine`; a tower has no shared
        latents, so only the scan's reflectance and SIF move), on the file's own bands.

    Raises
    ------
    ValueError
        If the series cannot be retrieved with the guide (the reason named).
    """
    from bayesfluo.retrieval.chunk import RetrieveOptions

    opt = options or RetrieveOptions()
    refine = True if opt.refine is None else bool(opt.refine)
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
        summ, fit, draws, not_refined = run(params, fit_model, feats[sl],
                               jax.tree.map(lambda v, sl=sl: v[sl] if jnp.ndim(v) else v,
                                            patches),
                               jax.random.fold_in(jax.random.PRNGKey(opt.seed), i),
                               with_fit=opt.quality, n_draws=opt.n_draws,
                               refine_batch=opt.refine_batch if refine else None)
        for name, st in summ.items():
            for stat, v in st.items():
                pieces.setdefault(f"{name}_{stat}", []).append(np.asarray(v))
        if fit is not None:
            pieces.setdefault("fit_chi2", []).append(np.asarray(fit.chi2))
            pieces.setdefault("fit_spike", []).append(np.asarray(fit.spike))
        if draws is not None:
            pieces.setdefault("f760_draws", []).append(np.moveaxis(np.asarray(draws), 1, -1))
        pieces.setdefault("not_refined", []).append(np.asarray(not_refined))
        pieces.setdefault("ood", []).append(np.asarray(out_of_distribution(
            guide, feats[sl], opt.ood_sigma, TOWER_ANCILLARY)))
    n = scene.sizes["time"]

    def scans(name):
        v = np.concatenate(pieces[name])[:n_patch]
        return v.reshape((n_patch * p,) + v.shape[2:])[:n]

    input_flag = d.input_flag.reshape(-1)[:n]
    bad = np.asarray(input_flag) != 0
    ds = xr.Dataset(coords={"time": scene["time"]})
    for name in pieces:
        if name in ("ood", "fit_spike", "f760_draws", "fit_chi2", "not_refined"):
            continue
        ds[name] = ("time", np.where(bad, np.nan, scans(name)).astype(np.float32))
    flag = np.where(bad, QUALITY_FLAGS["masked_input"], 0)
    flag |= np.where(scans("ood") & ~bad, QUALITY_FLAGS["out_of_distribution"], 0)
    flag |= np.where(scans("not_refined") & ~bad, QUALITY_FLAGS["not_refined"], 0)
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
                                 bands=bands, n_scene_bands=scene.sizes["band"],
                                 refined=refine))
    ds.attrs["featureType"] = "timeSeries"
    if refine:
        ds.attrs["posterior"] += ("; " + ", ".join(GUIDE_QUANTITIES)
                                  + " from the amortized guide (calibrated)")
    return ds
