"""Simulation-based calibration of the NUTS posteriors at nominal conditions.

Nominal conditions (issue 3, used wherever a figure is quoted): HyPlant FLUO O2-A window
at 600 m above ground, sun zenith 30 deg, signal-to-noise 150 at the 100
mW m-2 sr-1 nm-1 continuum with shot noise only (variance proportional to signal),
patches of 64 pixels sharing atmosphere and sensor, a quarter of them bare
(NDVI 0-0.25), truth drawn from the model's prior.

Every simulation is a draw of the model's own prior predictive (the same program that is
inverted; :func:`bayesfluo.scene.prior.simulate_patch`), so a correct sampler gives uniform
ranks exactly; the gap between the fast band operator and the fine-grid physics is a
separate, tested question.

Other instruments (:data:`CONDITIONS`): DESIS from the ISS (400 km, sun zenith 30 deg, the
instrument's own noise model: SNR 150 at 100 mW m-2 sr-1 nm-1 with 10 % read noise), and
a FloX-like tower (5 m, measured irradiance, SNR 300, 10 % read noise). A tower patch is a
block of time steps through an afternoon (sun zenith from ``sza_deg`` to ``sza_deg`` + 35
deg), each with its own downwelling irradiance from the model's atmosphere at the prior
atmospheric state (:func:`bayesfluo.scene.prior.tower_irradiance`); the surface of each
time step is a prior draw (as pixels are for an image), the radiance is ``E/pi R + F``
with the instrument's noise, and the irradiance the model is given is measured with the
same relative noise (:func:`bayesfluo.scene.simulate.simulate_scene` does the same). The
irradiance noise is simulated as it occurs, not from the model's first-order treatment of
it, so SBC tests that treatment too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig, SifModel, sif_scale
from bayesfluo.physics.forward import ForwardModel
from bayesfluo.scene.prior import simulate_patch

__all__ = ["NOMINAL", "CONDITIONS", "simulate_patch", "validate", "RANKED"]

NOMINAL = dict(instrument="hyplant-fluo-o2a", height_m=600.0, surface_altitude_m=100.0,
               sza_deg=30.0, snr=150.0, n_pixels=64, bare_fraction=0.25)

#: Nominal-like conditions per instrument (``snr=None``: the instrument's own noise model)
CONDITIONS = {
    "hyplant-fluo-o2a": {k: v for k, v in NOMINAL.items() if k != "instrument"},
    "desis": dict(height_m=400000.0, surface_altitude_m=100.0, sza_deg=30.0, snr=None,
                  shot_noise_only=False, n_pixels=64, bare_fraction=0.25),
    "flox": dict(height_m=5.0, surface_altitude_m=100.0, sza_deg=30.0, snr=None,
                 shot_noise_only=False, n_pixels=64, bare_fraction=0.25),
}

#: Latents whose ranks are tested: name -> (site, index into trailing dims or None)
RANKED = {"f760": ("f760", None), "reflectance760": ("reflectance760", None),
          "reflectance_z0": ("reflectance_z", 0), "reflectance_z3": ("reflectance_z", 3),
          "sif_peak": ("sif_peak", None)}
SHARED = ("surface_pressure", "aot550", "spectral_shift")


def _prior_sd_f760(ndvi: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Prior standard deviation of F760 given NDVI: ``scale * sqrt(1 - 2/pi)`` of the
    half-normal (F760 is the far-red amplitude times the peak shape at 760 nm)."""
    return np.asarray(sif_scale(jnp.asarray(ndvi), cfg), np.float64) * np.sqrt(1 - 2 / np.pi)


def _interval_hits(truth, draws, levels):
    out = {}
    for lev in levels:
        lo, hi = np.quantile(draws, [(1 - lev) / 2, (1 + lev) / 2], axis=0)
        out[lev] = (truth >= lo) & (truth <= hi)
    return out


def validate(fm: ForwardModel, n_patches: int, *, cfg: ModelConfig | None = None,
             nuts=None, seed: int = 0, levels=(0.5, 0.8, 0.9, 0.95), thin: int = 5,
             progress: bool = True, **conditions) -> xr.Dataset:
    """Simulate ``n_patches`` patches at nominal conditions (overridable by keyword), sample
    each with NUTS and return per-pixel and per-patch validation results.

    Variables (pixel): ``rank_<name>`` for each latent of :data:`RANKED` (rank of the truth
    among the posterior draws, thinned by ``thin``), ``truth_/mean_/sd_`` of F760,
    ``hit_f760`` (level, pixel), ``ndvi``, ``patch_of_pixel``, ``crb_shared``/``crb_known``
    (Cramer-Rao bound of F760 with the patch's atmosphere estimated from the patch, and
    known), the convergence diagnostics; (patch): ranks of the shared latents,
    ``rank_patch_mean_f760``, ``hit_patch_mean_f760``, timing.
    """
    import dataclasses

    from bayesfluo.diagnostics.calibration import sbc_ranks
    from bayesfluo.diagnostics.fisher import patch_cramer_rao_f760, toc_cramer_rao_f760
    from bayesfluo.inference.nuts import NutsConfig, sample_patch, to_datatree

    cfg = cfg or ModelConfig()
    nuts = nuts or NutsConfig(predictive_draws=0)
    cond = CONDITIONS.get(fm.instrument, CONDITIONS["hyplant-fluo-o2a"]) | conditions
    tower = get_instrument(fm.instrument).platform == "tower"
    if tower:  # no shared latents: nothing to expand
        cfg = cfg.replace(free=())
        nuts = dataclasses.replace(nuts, operator="exact")
    key = jax.random.PRNGKey(seed)
    model = SifModel(fm, cfg, top_of_canopy=tower)
    pix, patch = [], []
    for i in tqdm(range(n_patches), desc="validate", disable=not progress):
        k_sim, k_fit = jax.random.split(jax.random.fold_in(key, i))
        sim, truth = simulate_patch(model, k_sim, **cond)
        data = sim._asdict()  # the calls below take the model's data as a dict
        post = sample_patch(model, sim, k_fit, nuts)
        dt = to_datatree([post], [sim], model, max_tree_depth=nuts.max_tree_depth)
        conv = dt["convergence"].to_dataset()
        s = post.samples
        flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in s.items()}
        # ranks from thinned draws (nearly independent, as SBC assumes), one dropped so
        # that the number of rank values (draws + 1) is round and bins evenly
        thinned = {k: v[:, ::thin].reshape((-1,) + v.shape[2:])[:-1] for k, v in s.items()}
        rec = {}
        for name, (site, idx) in RANKED.items():
            d = thinned[site] if idx is None else thinned[site][..., idx]
            t = truth[site] if idx is None else truth[site][..., idx]
            rec[f"rank_{name}"] = sbc_ranks(t, d.T)
        f = flat["f760"]
        crb = (toc_cramer_rao_f760 if tower else patch_cramer_rao_f760)(model, sim, truth)
        rec.update(crb_shared=crb["shared"], crb_known=crb["known"])
        rec.update(truth_f760=truth["f760"], mean_f760=f.mean(0), sd_f760=f.std(0, ddof=1),
                   prior_sd_f760=_prior_sd_f760(np.asarray(data["ndvi"]), cfg),
                   ndvi=np.asarray(data["ndvi"]), patch_of_pixel=np.full(f.shape[1], i))
        hits = _interval_hits(truth["f760"], f, levels)
        rec["hit_f760"] = np.stack([hits[lev] for lev in levels])
        for v in ("r_hat", "ess_bulk", "ess_tail", "r_hat_max", "converged"):
            rec[v] = conv[v].values
        pix.append(rec)
        pm_draws = f.mean(1)
        pm_truth = truth["f760"].mean()
        prec = {f"rank_{n}": sbc_ranks(np.asarray(truth[n])[None], thinned[n][None])[0]
                for n in SHARED if n in flat}
        prec["rank_patch_mean_f760"] = sbc_ranks(np.array([pm_truth]),
                                                 thinned["f760"].mean(1)[None])[0]
        prec["hit_patch_mean_f760"] = np.array(
            [_interval_hits(pm_truth, pm_draws, [lev])[lev] for lev in levels])
        prec["patch_mean_f760_truth"] = pm_truth
        prec["patch_mean_f760_sd"] = pm_draws.std(ddof=1)
        prec["independent_sd"] = np.sqrt(np.sum(f.var(0, ddof=1))) / f.shape[1]
        prec["time_s"] = post.timing["total_s"]
        prec["divergences"] = int(post.stats["diverging"].sum())
        prec["mean_steps"] = float(post.stats["n_steps"].mean())
        patch.append(prec)
    cat = {k: np.concatenate([r[k] for r in pix], axis=-1) for k in pix[0]}
    ds = xr.Dataset(
        {k: (("level", "pixel") if v.ndim == 2 else ("pixel",), v) for k, v in cat.items()},
        coords={"level": list(levels)})
    for k in patch[0]:
        v = np.stack([np.asarray(r[k]) for r in patch])
        ds[k] = (("patch", "level") if v.ndim == 2 else ("patch",), v)
    ds.attrs.update(n_draws=int(nuts.num_chains * nuts.num_samples),
                    n_rank_draws=int(nuts.num_chains * len(range(0, nuts.num_samples, thin))) - 1,
                    seed=seed,
                    **{k: (float(v) if isinstance(v, int | float) else str(v))
                       for k, v in cond.items()})
    return ds
