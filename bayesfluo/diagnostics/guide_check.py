"""Validation of an amortized guide: against the truth of simulations and against NUTS.

:func:`evaluate_simulated` draws fresh patches from the guide's model's prior predictive
at nominal conditions (:data:`bayesfluo.diagnostics.sbc.NOMINAL`, seeds not used in
training; :func:`bayesfluo.scene.prior.simulate_patch`), applies the guide and returns
per-pixel truth, posterior summaries and the Cramer-Rao bound. :func:`compare_with_nuts`
regenerates the patches of a NUTS validation run (:func:`bayesfluo.diagnostics.sbc.validate`,
same seed) and puts the guide's F760 posterior beside NUTS's. Both take ``refine`` to
evaluate the guide after its Laplace refinement (:mod:`bayesfluo.inference.refine`).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.diagnostics.sbc import NOMINAL
from bayesfluo.inference.guide import (
    AmortizedGuide,
    GuideInputs,
    GuideOutput,
    ancillary_inputs,
    calibrate,
    fit_chi2,
    pixel_features,
    reference_log_radiance,
    summaries,
)
from bayesfluo.inference.refine import RefineOptions, laplace_refine
from bayesfluo.instruments import get_instrument
from bayesfluo.model import Patch
from bayesfluo.scene.grid import INPUT_FLAGS
from bayesfluo.scene.prior import simulate_patch

__all__ = ["patch_batch", "evaluate_simulated", "compare_with_nuts"]


def patch_batch(guide: AmortizedGuide, patches: list[Patch]) -> GuideInputs:
    """Stack single patches (as :func:`bayesfluo.scene.prior.simulate_patch` returns
    them, radiance included) into a batch with the guide's inputs: the encoder's features
    with the exact reference spectrum at each patch's geometry
    (:func:`bayesfluo.inference.guide.reference_log_radiance`), and the input flag
    ``masked`` where a pixel's mask is 0."""
    ref = get_instrument(guide.instrument).reference_radiance
    feats = []
    for p in patches:
        g = p.geometry
        anc = ancillary_inputs(g.sza_deg, g.vza_deg, g.raa_deg, g.surface_altitude_m,
                               g.sensor_altitude_m, p.noise_a, p.noise_b, p.ndvi, ref)
        ref_log = reference_log_radiance(guide.model, g.sza_deg, g.vza_deg,
                                         g.surface_altitude_m, g.sensor_altitude_m)
        feats.append(pixel_features(p.radiance, anc, guide.feature_mean, guide.feature_sd,
                                    ref_log))
    batch = jax.tree.map(lambda *v: jnp.stack([jnp.asarray(x) for x in v]), *patches)
    flag = jnp.where(batch.mask > 0, 0, INPUT_FLAGS["masked"]).astype(jnp.int32)
    return GuideInputs(batch, jnp.stack(feats), flag)


def _apply(guide: AmortizedGuide, inputs: GuideInputs, refine: RefineOptions | None = None
           ) -> tuple[GuideOutput, dict]:
    """The guide's output and summaries for a batch (refined when ``refine`` is given)."""
    model, patches = guide.model, inputs.patches
    params, static = eqx.partition(guide.encoder, eqx.is_inexact_array)
    q = jax.jit(lambda p, f, m: eqx.combine(p, static).encode(f, m))(
        params, inputs.features, patches.mask)
    infl = guide.info.get("f760_sd_inflation")
    if infl:
        c2 = jax.jit(lambda qq, pp: fit_chi2(model, qq, pp))(q, patches)
        q = calibrate(q, model, guide.info, patches.ndvi, c2)
    if refine is not None:
        q, _ = jax.jit(lambda qq, pp: laplace_refine(model, qq, pp, refine))(q, patches)
    s = jax.jit(lambda qq, nd, p0: summaries(qq, model, nd, p0))(
        q, patches.ndvi, patches.surface_pressure0)
    return q, jax.device_get(s)


def evaluate_simulated(guide: AmortizedGuide, n_patches: int, *, seed: int = 12345,
                       with_bound: bool = True, progress: bool = True,
                       refine: RefineOptions | None = None, **conditions) -> xr.Dataset:
    """Per-pixel truth and guide posterior of F760 on ``n_patches`` fresh simulated patches
    at nominal conditions (overridable by keyword, as
    :func:`bayesfluo.scene.prior.simulate_patch`); with ``refine``, the posterior after
    :func:`bayesfluo.inference.refine.laplace_refine`.

    Variables (pixel): ``truth_f760``, ``mean_f760``, ``sd_f760``, ``q05_f760``,
    ``q95_f760`` (mW m-2 sr-1 nm-1), ``ndvi``, ``patch_of_pixel``, and ``crb_shared``
    (the Cramer-Rao bound with the patch's atmosphere estimated from the patch) when
    ``with_bound``; (patch): truth and guide means and sd of the shared latents.
    """
    from bayesfluo.diagnostics.fisher import patch_cramer_rao_f760
    cond = {k: v for k, v in NOMINAL.items() if k != "instrument"} | conditions
    key = jax.random.PRNGKey(seed)
    model = guide.model
    patches, truths = [], []
    for i in tqdm(range(n_patches), desc="simulate", disable=not progress):
        p, t = simulate_patch(model, jax.random.fold_in(key, i), **cond)
        patches.append(p)
        truths.append(t)
    batch = patch_batch(guide, patches)
    ndvi = batch.patches.ndvi
    q, s = _apply(guide, batch, refine)
    out = {"truth_f760": np.concatenate([t["f760"] for t in truths]),
           "ndvi": np.asarray(ndvi).ravel(),
           "patch_of_pixel": np.repeat(np.arange(n_patches), ndvi.shape[1])}
    for stat in ("mean", "sd", "q05", "q95"):
        out[f"{stat}_f760"] = np.asarray(s["f760"][stat]).ravel()
    if with_bound:
        crb = []
        for p, t in tqdm(list(zip(patches, truths, strict=True)), desc="bound",
                         disable=not progress):
            crb.append(patch_cramer_rao_f760(model, p, t)["shared"])
        out["crb_shared"] = np.concatenate(crb)
    ds = xr.Dataset({k: ("pixel", v) for k, v in out.items()})
    for n in model.free:
        ds[f"truth_{n}"] = ("patch", np.array([float(t[n]) for t in truths]))
        ds[f"mean_{n}"] = ("patch", np.asarray(s[n]["mean"]))
        ds[f"sd_{n}"] = ("patch", np.asarray(s[n]["sd"]))
    ds.attrs.update({k: (float(v) if isinstance(v, int | float) else str(v))
                     for k, v in cond.items()} | {"seed": seed})
    return ds


def compare_with_nuts(guide: AmortizedGuide, nuts_validation: xr.Dataset,
                      refine: RefineOptions | None = None) -> xr.Dataset:
    """The guide's F760 posterior on the pixels of a NUTS validation run (the output of
    :func:`bayesfluo.diagnostics.sbc.validate`, whose patches are regenerated from its
    seed), beside NUTS's: ``nuts_mean``, ``nuts_sd``, ``guide_mean``, ``guide_sd``,
    ``truth``, ``z`` = (guide mean - NUTS mean) / NUTS sd, ``sd_ratio``; with
    ``refine``, the guide refined by :func:`bayesfluo.inference.refine.laplace_refine`.

    Raises
    ------
    ValueError
        If a regenerated patch's truth is not the run's (another model configuration or
        version made it).
    """
    a = nuts_validation.attrs
    cond = {k: a[k] for k in ("height_m", "surface_altitude_m", "sza_deg", "snr",
                              "bare_fraction") if k in a}
    cond["n_pixels"] = int(a.get("n_pixels", 64))
    key = jax.random.PRNGKey(int(a["seed"]))
    n_patches = int(nuts_validation.sizes["patch"])
    patches = []
    for i in range(n_patches):
        k_sim, _ = jax.random.split(jax.random.fold_in(key, i))
        p, t = simulate_patch(guide.model, k_sim, **cond)
        if not np.allclose(t["f760"], nuts_validation["truth_f760"].values[
                i * cond["n_pixels"]:(i + 1) * cond["n_pixels"]], rtol=1e-4, atol=1e-5):
            raise ValueError(f"patch {i} does not regenerate the NUTS run's truth; was it "
                             "made with another model configuration or version?")
        patches.append(p)
    _, s = _apply(guide, patch_batch(guide, patches), refine)
    gm = np.asarray(s["f760"]["mean"]).ravel()
    gs = np.asarray(s["f760"]["sd"]).ravel()
    nm = nuts_validation["mean_f760"].values
    ns = nuts_validation["sd_f760"].values
    return xr.Dataset({"nuts_mean": ("pixel", nm), "nuts_sd": ("pixel", ns),
                       "guide_mean": ("pixel", gm), "guide_sd": ("pixel", gs),
                       "truth": ("pixel", nuts_validation["truth_f760"].values),
                       "ndvi": ("pixel", nuts_validation["ndvi"].values),
                       "z": ("pixel", (gm - nm) / ns), "sd_ratio": ("pixel", gs / ns)})
