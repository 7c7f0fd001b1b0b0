"""Validation of an amortized guide: against the truth of simulations and against NUTS.

:func:`evaluate_simulated` draws fresh patches from the model's prior predictive at
nominal conditions (:data:`bayesfluo.diagnostics.sbc.NOMINAL`, seeds not used in
training), applies the guide and returns per-pixel truth, posterior summaries and the
Cramer-Rao bound. :func:`compare_with_nuts` regenerates the patches of a NUTS validation
run (:func:`bayesfluo.diagnostics.sbc.validate`, same seed) and puts the guide's F760
posterior beside NUTS's. Both take ``refine`` to evaluate the guide after its Laplace
refinement (:mod:`bayesfluo.refine`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.diagnostics.sbc import NOMINAL, simulate_patch
from bayesfluo.guide import (
    AmortizedGuide,
    ancillary_inputs,
    pixel_features,
    reference_log_radiance,
)
from bayesfluo.instruments import get_instrument
from bayesfluo.physics.forward import ForwardModel
from bayesfluo.refine import RefineOptions, laplace_refine, patch_model_data

__all__ = ["patch_batch", "evaluate_simulated", "compare_with_nuts"]


def patch_batch(guide: AmortizedGuide, fm: ForwardModel, datas: list[dict]) -> dict:
    """Stack single-patch model data (as :func:`simulate_patch` returns) into the guide's
    batched inputs: ``features``, ``mask``, ``ndvi``, ``surface_pressure0``, and the
    model's ``radiance``, ``geometry``, ``noise_a``, ``noise_b`` (for the refinement)."""
    ref = get_instrument(guide.instrument).reference_radiance
    feats = []
    for d in datas:
        g = d["geometry"]
        anc = ancillary_inputs(g.sza_deg, g.vza_deg, g.raa_deg, g.surface_altitude_m,
                               g.sensor_altitude_m, d["noise_a"], d["noise_b"], d["ndvi"],
                               ref)
        ref_log = reference_log_radiance(fm, guide.config, g.sza_deg, g.vza_deg,
                                         g.surface_altitude_m, g.sensor_altitude_m)
        feats.append(pixel_features(d["radiance"], anc, guide.feature_mean, guide.feature_sd,
                                    ref_log))
    return dict(features=jnp.stack(feats), mask=jnp.stack([d["mask"] for d in datas]),
                ndvi=jnp.stack([d["ndvi"] for d in datas]),
                radiance=jnp.stack([d["radiance"] for d in datas]),
                geometry=jax.tree.map(lambda *g: jnp.stack([jnp.asarray(v, jnp.float32)
                                                            for v in g]),
                                      *[d["geometry"] for d in datas]),
                noise_a=jnp.stack([jnp.asarray(d["noise_a"]) for d in datas]),
                noise_b=jnp.stack([jnp.asarray(d["noise_b"]) for d in datas]),
                surface_pressure0=jnp.stack([jnp.asarray(d["surface_pressure0"])
                                             for d in datas]))


def _apply(guide, fm, batch, refine: RefineOptions | None = None):
    """The guide's output and summaries for a batch (refined when ``refine`` is given)."""
    from bayesfluo.retrieve import Retriever
    r = Retriever(guide, fm)
    q = r.encode(batch["features"], batch["mask"])
    if refine is not None:
        fn = jax.jit(lambda qq, dd: laplace_refine(fm, guide.config, guide.has_red, qq, dd,
                                                   refine))
        q, _ = fn(q, patch_model_data(batch))
    return q, jax.device_get(r.summarise(q, batch["ndvi"], batch["surface_pressure0"]))


def evaluate_simulated(guide: AmortizedGuide, fm: ForwardModel, n_patches: int, *,
                       seed: int = 12345, with_bound: bool = True, progress: bool = True,
                       refine: RefineOptions | None = None, **conditions) -> xr.Dataset:
    """Per-pixel truth and guide posterior of F760 on ``n_patches`` fresh simulated patches
    at nominal conditions (overridable by keyword, as :func:`simulate_patch`); with
    ``refine``, the posterior after :func:`bayesfluo.refine.laplace_refine`.

    Variables (pixel): ``truth_f760``, ``mean_f760``, ``sd_f760``, ``q05_f760``,
    ``q95_f760``, ``ndvi``, ``patch_of_pixel``, and ``crb_shared`` (the Cramer-Rao bound with the
    patch's atmosphere estimated from the patch) when ``with_bound``; (patch): truth and
    guide means of the shared latents.
    """
    from bayesfluo.diagnostics.fisher import patch_cramer_rao_f760
    cond = {k: v for k, v in NOMINAL.items() if k != "instrument"} | conditions
    key = jax.random.PRNGKey(seed)
    cfg = guide.config
    datas, truths = [], []
    for i in tqdm(range(n_patches), desc="simulate", disable=not progress):
        d, t = simulate_patch(fm, cfg, jax.random.fold_in(key, i), has_red=guide.has_red,
                              **cond)
        datas.append(d)
        truths.append(t)
    batch = patch_batch(guide, fm, datas)
    q, s = _apply(guide, fm, batch, refine)
    out = {"truth_f760": np.concatenate([t["f760"] for t in truths]),
           "ndvi": np.asarray(batch["ndvi"]).ravel(),
           "patch_of_pixel": np.repeat(np.arange(n_patches), batch["ndvi"].shape[1])}
    for stat in ("mean", "sd", "q05", "q95"):
        out[f"{stat}_f760"] = np.asarray(s["f760"][stat]).ravel()
    if with_bound:
        crb = []
        for d, t in tqdm(list(zip(datas, truths, strict=True)), desc="bound",
                         disable=not progress):
            values = {n: t.get(n, cfg.fixed.get(n)) for n in
                      ("reflectance_coeffs", "sif_far_red", "sif_red", "surface_pressure",
                       "aot550", "angstrom", "diffuse_path", "spectral_shift", "fwhm_scale")}
            values = {k: v for k, v in values.items() if v is not None}
            crb.append(patch_cramer_rao_f760(fm, d, values, list(cfg.free),
                                             has_red=guide.has_red)["shared"])
        out["crb_shared"] = np.concatenate(crb)
    ds = xr.Dataset({k: ("pixel", v) for k, v in out.items()})
    for n in cfg.free:
        ds[f"truth_{n}"] = ("patch", np.array([float(t[n]) for t in truths]))
        ds[f"mean_{n}"] = ("patch", np.asarray(s[n]["mean"]))
        ds[f"sd_{n}"] = ("patch", np.asarray(s[n]["sd"]))
    ds.attrs.update({k: (float(v) if isinstance(v, int | float) else str(v))
                     for k, v in cond.items()} | {"seed": seed})
    return ds


def compare_with_nuts(guide: AmortizedGuide, fm: ForwardModel, nuts_validation: xr.Dataset,
                      refine: RefineOptions | None = None) -> xr.Dataset:
    """The guide's F760 posterior on the pixels of a NUTS validation run (the output of
    :func:`bayesfluo.diagnostics.sbc.validate`, whose patches are regenerated from its
    seed), beside NUTS's: ``nuts_mean``, ``nuts_sd``, ``guide_mean``, ``guide_sd``,
    ``truth``, ``z`` = (guide mean - NUTS mean) / NUTS sd, ``sd_ratio``; with
    ``refine``, the guide refined by :func:`bayesfluo.refine.laplace_refine`."""
    a = nuts_validation.attrs
    cond = {k: a[k] for k in ("height_m", "surface_altitude_m", "sza_deg", "snr",
                              "bare_fraction") if k in a}
    cond["n_pixels"] = int(a.get("n_pixels", 64))
    key = jax.random.PRNGKey(int(a["seed"]))
    n_patches = int(nuts_validation.sizes["patch"])
    datas = []
    for i in range(n_patches):
        k_sim, _ = jax.random.split(jax.random.fold_in(key, i))
        d, t = simulate_patch(fm, guide.config, k_sim, has_red=guide.has_red, **cond)
        if not np.allclose(t["f760"], nuts_validation["truth_f760"].values[
                i * cond["n_pixels"]:(i + 1) * cond["n_pixels"]], rtol=1e-4, atol=1e-5):
            raise ValueError(f"patch {i} does not regenerate the NUTS run's truth; was it "
                             "made with another model configuration or version?")
        datas.append(d)
    _, s = _apply(guide, fm, patch_batch(guide, fm, datas), refine)
    gm = np.asarray(s["f760"]["mean"]).ravel()
    gs = np.asarray(s["f760"]["sd"]).ravel()
    nm = nuts_validation["mean_f760"].values
    ns = nuts_validation["sd_f760"].values
    return xr.Dataset({"nuts_mean": ("pixel", nm), "nuts_sd": ("pixel", ns),
                       "guide_mean": ("pixel", gm), "guide_sd": ("pixel", gs),
                       "truth": ("pixel", nuts_validation["truth_f760"].values),
                       "ndvi": ("pixel", nuts_validation["ndvi"].values),
                       "z": ("pixel", (gm - nm) / ns), "sd_ratio": ("pixel", gs / ns)})
