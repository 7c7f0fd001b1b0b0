"""Simulation-based calibration of the NUTS posteriors at nominal conditions.

Nominal conditions (issue 3, used wherever a figure is quoted): HyPlant FLUO O2-A window
at 600 m above ground, sun zenith 30 deg, signal-to-noise 150 at the 100
mW m-2 sr-1 nm-1 continuum with shot noise only (variance proportional to signal),
patches of 64 pixels sharing atmosphere and sensor, a quarter of them bare
(NDVI 0-0.25), truth drawn from the model's prior.

Every simulation is a draw of the model's own prior predictive (the same program that is
inverted), so a correct sampler gives uniform ranks exactly; the gap between the fast band
operator and the fine-grid physics is a separate, tested question.

Other instruments (:data:`CONDITIONS`): DESIS from the ISS (400 km, sun zenith 30 deg, the
instrument's own noise model: SNR 150 at 100 mW m-2 sr-1 nm-1 with 10 % read noise), and
a FloX-like tower (5 m, measured irradiance, SNR 300, 10 % read noise). A tower patch is a
block of time steps through an afternoon (sun zenith from ``sza_deg`` to ``sza_deg`` + 35
deg), each with its own downwelling irradiance from the model's atmosphere at the prior
atmospheric state (:func:`bayesfluo.physics.forward.irradiance_exact`); the surface of
each time step is a prior draw (as pixels are for an image), the radiance is
``E/pi R + F`` with the instrument's noise, and the irradiance the model is given is
measured with the same relative noise (:func:`bayesfluo.simulate.simulate_scene` does the
same). The irradiance noise is simulated as it occurs, not from the model's first-order
treatment of it, so SBC tests that treatment too.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro.infer import Predictive
from tqdm.auto import tqdm

from bayesfluo.instruments import get_instrument
from bayesfluo.model import (
    ATMOSPHERE_LATENTS,
    SENSOR_LATENTS,
    ModelConfig,
    patch_geometry,
    prior_pressure,
    shared_parameters,
    sif_model,
    toc_operator,
)
from bayesfluo.physics.forward import (
    ForwardModel,
    Geometry,
    irradiance_exact,
    radiance_from_operator,
)
from bayesfluo.physics.surface import SifParams

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


def simulate_patch(fm: ForwardModel, cfg: ModelConfig, key: jax.Array, *,
                   n_pixels: int = 64, bare_fraction: float = 0.25, sza_deg: float = 30.0,
                   height_m: float = 600.0, surface_altitude_m: float = 100.0,
                   snr: float | None = 150.0, shot_noise_only: bool = True,
                   has_red: bool = False) -> tuple[dict, dict]:
    """One patch drawn from the prior predictive: ``(data, truth)``.

    ``data`` is the model's input (radiance included); ``truth`` holds every site of the
    draw as numpy arrays (latents, deterministics; for a tower also the noise-free
    radiance ``radiance_clean`` and irradiance ``irradiance_true``). ``snr=None`` takes
    the instrument's own. For a tower instrument (``platform == "tower"``) the patch is
    a block of time steps with measured irradiance (module docstring) and ``cfg.free``
    is ignored (there are no shared latents).
    """
    k_ndvi, k_draw, k_noise = jax.random.split(key, 3)
    u = np.asarray(jax.random.uniform(k_ndvi, (2, n_pixels)), np.float64)
    bare = np.arange(n_pixels) < int(round(bare_fraction * n_pixels))
    ndvi = np.where(bare, 0.25 * u[0], 0.5 + 0.35 * u[0])
    inst = get_instrument(fm.instrument)
    if shot_noise_only:
        inst = inst.replace(read_noise_fraction=0.0)
    a, b = inst.noise_coefficients(snr)
    tower = inst.platform == "tower"
    sza = sza_deg + 35.0 * u[1] if tower else sza_deg
    data = dict(ndvi=jnp.asarray(ndvi, jnp.float32), mask=jnp.ones(n_pixels, jnp.float32),
                geometry=patch_geometry(sza, 0.0, 0.0, surface_altitude_m,
                                        surface_altitude_m + height_m),
                noise_a=jnp.float32(a), noise_b=jnp.float32(b),
                surface_pressure0=prior_pressure(surface_altitude_m), radiance=None)
    if tower:
        return _simulate_tower(fm, cfg.replace(free=()), data, k_draw, k_noise, sza,
                               surface_altitude_m, height_m, has_red)
    draw = Predictive(sif_model, num_samples=1)(k_draw, fm, cfg, data, has_red)
    truth = {k: np.asarray(v[0]) for k, v in draw.items()}
    data["radiance"] = jnp.asarray(truth["radiance"])
    return data, truth


_IRRADIANCE_FNS: dict = {}


def tower_irradiance(fm: ForwardModel, sza_deg, surface_altitude_m: float = 100.0,
                     height_m: float = 5.0, cfg: ModelConfig | None = None) -> np.ndarray:
    """Band downwelling irradiance (mW m-2 nm-1) at the top of the canopy at each sun
    zenith angle (degrees), through the model's atmosphere at the prior medians of
    ``cfg``'s atmospheric and sensor latents (surface pressure of the standard atmosphere,
    AOT 0.12, diffuse-path factor 1.5)."""
    cfg = cfg or ModelConfig()
    key = (id(fm), repr(cfg))
    if key not in _IRRADIANCE_FNS or _IRRADIANCE_FNS[key][0] is not fm:
        def many(sza, alt, height):
            p0 = prior_pressure(alt)
            names = ATMOSPHERE_LATENTS + SENSOR_LATENTS  # all at their prior medians
            atm, sens, _ = shared_parameters(cfg.replace(free=names), {"surface_pressure0": p0},
                                             {n: jnp.float32(0.0) for n in names})
            zero = jnp.zeros_like(fm.fine_nm)
            return jax.lax.map(lambda s: irradiance_exact(
                fm, zero, atm, Geometry(s, 0.0, 0.0, alt, alt + height, 1.0), sens), sza,
                batch_size=8)

        _IRRADIANCE_FNS[key] = (fm, jax.jit(many))
    sza = jnp.atleast_1d(jnp.asarray(sza_deg, jnp.float32))
    return np.asarray(_IRRADIANCE_FNS[key][1](sza, jnp.float32(surface_altitude_m),
                                              jnp.float32(height_m)), np.float64)


def _simulate_tower(fm, cfg, data, k_draw, k_noise, sza, surface_altitude_m, height_m,
                    has_red):
    e_true = tower_irradiance(fm, sza, surface_altitude_m, height_m, cfg)
    a, b = float(data["noise_a"]), float(data["noise_b"])
    data = dict(data, irradiance=jnp.asarray(e_true, jnp.float32),
                irradiance_noise_a=jnp.float32(a), irradiance_noise_b=jnp.float32(b))
    draw = Predictive(sif_model, num_samples=1)(k_draw, fm, cfg, data, has_red)
    truth = {k: np.asarray(v[0]) for k, v in draw.items() if k != "radiance"}
    op = toc_operator(data["irradiance"])
    clean = np.asarray(jax.vmap(lambda o, c, r, f: radiance_from_operator(
        fm, o, c, SifParams(r, f)))(op, jnp.asarray(truth["reflectance_coeffs"]),
                                   jnp.asarray(truth.get("sif_red", np.zeros_like(
                                       truth["sif_far_red"]))),
                                   jnp.asarray(truth["sif_far_red"])), np.float64)
    n = np.asarray(jax.random.normal(k_noise, (2,) + clean.shape), np.float64)
    rad = clean + np.sqrt(a * np.maximum(clean, 0.0) + b) * n[0]
    # irradiance channel: the same relative noise at its own level (var(E/pi) = a E/pi + b)
    e_meas = e_true + np.pi * np.sqrt(a * e_true / np.pi + b) * n[1]
    truth.update(radiance=rad, radiance_clean=clean, irradiance_true=e_true)
    data.update(radiance=jnp.asarray(rad, jnp.float32),
                irradiance=jnp.asarray(e_meas, jnp.float32))
    return data, truth


def _prior_sd_f760(ndvi: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Prior standard deviation of F760 given NDVI: ``scale * sqrt(1 - 2/pi)`` of the
    half-normal (F760 is the far-red amplitude times the peak shape at 760 nm)."""
    from bayesfluo.model import sif_scale

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
    from bayesfluo.nuts import NutsConfig, sample_patch, to_datatree

    cfg = cfg or ModelConfig()
    nuts = nuts or NutsConfig(predictive_draws=0)
    cond = CONDITIONS.get(fm.instrument, CONDITIONS["hyplant-fluo-o2a"]) | conditions
    tower = get_instrument(fm.instrument).platform == "tower"
    if tower:  # no shared latents: nothing to expand
        cfg = cfg.replace(free=())
        nuts = dataclasses.replace(nuts, operator="exact")
    key = jax.random.PRNGKey(seed)
    has_red = bool(float(fm.band_centre_nm[0]) < 690.0)  # the window holds the O2-B band
    pix, patch = [], []
    for i in tqdm(range(n_patches), desc="validate", disable=not progress):
        k_sim, k_fit = jax.random.split(jax.random.fold_in(key, i))
        data, truth = simulate_patch(fm, cfg, k_sim, has_red=has_red, **cond)
        post = sample_patch(fm, cfg, data, k_fit, nuts, has_red=has_red)
        dt = to_datatree([post], [data], fm, max_tree_depth=nuts.max_tree_depth)
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
        values = {n: truth.get(n, cfg.fixed.get(n)) for n in
                  ("reflectance_coeffs", "sif_far_red", "sif_red", "surface_pressure",
                   "aot550",
                   "angstrom", "diffuse_path", "spectral_shift", "fwhm_scale")}
        values = {k: v for k, v in values.items() if v is not None}
        if tower:
            crb = toc_cramer_rao_f760(fm, data, values, has_red=has_red)
        else:
            crb = patch_cramer_rao_f760(fm, data, values, list(cfg.free), has_red=has_red)
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
