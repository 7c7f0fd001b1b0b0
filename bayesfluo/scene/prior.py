"""Draws from the model's prior predictive: the one simulator of training and SBC.

:func:`prior_predictive` runs the model's own NumPyro program
(:meth:`~bayesfluo.model.SifModel.program` for one patch,
:meth:`~bayesfluo.model.SifModel.batch_program` for a batch) forward: the latents come
from the model's priors, the patch's band operator from the model (or, for a batch, a
precomputed one per patch, with the shared latents it was computed for), the radiance
from the model's noise (:meth:`~bayesfluo.model.SifModel.noise_variance`). So a correct
posterior gives uniform SBC ranks exactly, and training learns the posterior of the same
model that NUTS samples.

Two sets of conditions use it:

:func:`simulate_patch`
    One patch at fixed (nominal) conditions, for simulation-based calibration
    (:mod:`bayesfluo.diagnostics.sbc`) and the guide's validation: HyPlant-like 600 m
    above ground, sun zenith 30 deg, SNR 150, a quarter of the pixels bare. For a
    top-of-canopy model (FloX-like tower) the patch is a block of time steps through an
    afternoon (sun zenith from ``sza_deg`` to ``sza_deg`` + 35 deg), each with its own
    downwelling irradiance from the model's atmosphere at its prior medians
    (:func:`tower_irradiance`); the radiance is ``E/pi R + F`` with the instrument's
    noise, and the irradiance the model is given is measured with the same relative
    noise. The irradiance noise is simulated as it occurs, not from the model's
    first-order treatment of it, so SBC tests that treatment too.
:func:`simulate_batch`
    A minibatch of patches for pre-training the guide: each patch's atmosphere, sensor
    state and geometry drawn from a pool (:class:`Atmospheres`, band operators computed
    once), its signal-to-noise, read-noise share and NDVI uniform in given ranges.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from numpyro import handlers

from bayesfluo.instruments import get_instrument
from bayesfluo.model import ATMOSPHERE_LATENTS, SENSOR_LATENTS, Patch, SifModel, shared_values
from bayesfluo.physics.forward import BandOperator, Geometry, irradiance_exact
from bayesfluo.scene.grid import patch_geometry, prior_pressure

__all__ = ["prior_predictive", "simulate_patch", "tower_irradiance", "Atmospheres",
           "simulate_batch", "noise_and_ndvi", "tower_series"]


def prior_predictive(model: SifModel, key: jax.Array, patches: Patch, *,
                     shared_z=None, operator: BandOperator | None = None
                     ) -> tuple[Patch, dict]:
    """One draw of the model's prior predictive for a patch or a batch of patches.

    Parameters
    ----------
    model : SifModel
    key : jax.Array
        PRNG key of the draw (NumPyro's ``seed`` handler splits it over the sample
        sites in program order).
    patches : Patch
        One patch (pixel arrays (P, ...)) or a batch (leading dim N); its ``radiance``
        is ignored.
    shared_z : array (S,) or (N, S), optional
        The free shared latents' standard-normal coordinates (``model.free`` order),
        conditioned on instead of drawn.
    operator : BandOperator, optional
        Batch only: each patch's band operator (leading dim N), computed for
        ``shared_z`` (which must then be given), used instead of computing it.

    Returns
    -------
    patches : Patch
        ``patches`` with the simulated ``radiance``.
    truth : dict
        Every sample and deterministic site of the draw except the conditioned ones
        (``radiance`` included), as the program returns them.
    """
    batch = patches.ndvi.ndim == 2
    if operator is not None and (not batch or shared_z is None):
        raise ValueError("a precomputed operator needs a batch of patches and the shared "
                         "latents it was computed for")
    cond = {}
    if shared_z is not None:
        z = jnp.asarray(shared_z)
        cond = {f"{n}_z": (z[:, i, None] if batch else z[i]) for i, n in
                enumerate(model.free)}
    if batch:
        def program(p):
            return model.batch_program(p, operator=operator)
    else:
        program = model.program
    tr = handlers.trace(handlers.seed(handlers.condition(program, cond), key)).get_trace(
        patches.replace(radiance=None))
    truth = {k: v["value"] for k, v in tr.items()
             if v["type"] in ("sample", "deterministic") and k not in cond}
    return patches.replace(radiance=truth["radiance"]), truth


# --- one patch at fixed conditions (SBC, guide validation) ------------------------------

def simulate_patch(model: SifModel, key: jax.Array, *, n_pixels: int = 64,
                   bare_fraction: float = 0.25, sza_deg: float = 30.0,
                   height_m: float = 600.0, surface_altitude_m: float = 100.0,
                   snr: float | None = 150.0, shot_noise_only: bool = True
                   ) -> tuple[Patch, dict]:
    """One patch drawn from the model's prior predictive at fixed conditions (module
    docstring): ``(patch, truth)``.

    Parameters
    ----------
    model : SifModel
        A top-of-canopy model (``model.top_of_canopy``) gets a tower's block of time
        steps with measured irradiance.
    key : jax.Array
    n_pixels : int
        Pixels (time steps) of the patch.
    bare_fraction : float
        Share of bare pixels (NDVI 0-0.25; the others 0.5-0.85).
    sza_deg, height_m, surface_altitude_m : float
        Sun zenith (degrees; a tower's first time step), sensor height above ground and
        surface altitude (m); nadir view.
    snr : float or None
        Signal-to-noise at the instrument's reference radiance (None: the instrument's
        own noise model).
    shot_noise_only : bool
        No read noise (variance proportional to the signal).

    Returns
    -------
    patch : Patch
        The model's input, radiance included (a tower's with its measured
        ``irradiance``).
    truth : dict of numpy.ndarray
        Every site of the draw (latents, deterministics); for a tower also the
        noise-free radiance ``radiance_clean``, the true irradiance
        ``irradiance_true`` (mW m-2 nm-1) and each time step's sun zenith ``sza_deg``.
    """
    k_ndvi, k_draw, k_noise = jax.random.split(key, 3)
    u = np.asarray(jax.random.uniform(k_ndvi, (2, n_pixels)), np.float64)
    bare = np.arange(n_pixels) < int(round(bare_fraction * n_pixels))
    ndvi = np.where(bare, 0.25 * u[0], 0.5 + 0.35 * u[0])
    inst = get_instrument(model.instrument)
    if shot_noise_only:
        inst = inst.replace(read_noise_fraction=0.0)
    a, b = inst.noise_coefficients(snr)
    tower = model.top_of_canopy
    sza = sza_deg + 35.0 * u[1] if tower else sza_deg
    patch = Patch(radiance=None, mask=jnp.ones(n_pixels, jnp.float32),
                  ndvi=jnp.asarray(ndvi, jnp.float32),
                  geometry=patch_geometry(sza, 0.0, 0.0, surface_altitude_m,
                                          surface_altitude_m + height_m),
                  noise_a=jnp.float32(a), noise_b=jnp.float32(b),
                  surface_pressure0=prior_pressure(surface_altitude_m))
    if tower:
        return _simulate_tower(model, patch, k_draw, k_noise, sza, surface_altitude_m,
                               height_m)
    patch, truth = prior_predictive(model, k_draw, patch)
    return patch, {k: np.asarray(v) for k, v in truth.items()}


_IRRADIANCE_FNS: dict = {}


def tower_irradiance(model: SifModel, sza_deg, surface_altitude_m: float = 100.0,
                     height_m: float = 5.0) -> np.ndarray:
    """Band downwelling irradiance (mW m-2 nm-1) at the top of the canopy at each sun
    zenith angle (degrees), through the built-in atmosphere at the prior medians of the
    model's atmospheric and sensor latents (surface pressure of the standard atmosphere,
    ``cfg.fixed``/prior AOT, diffuse-path factor)."""
    fm, cfg = model.fm, model.cfg
    key = (id(fm), repr(cfg))
    if key not in _IRRADIANCE_FNS or _IRRADIANCE_FNS[key][0] is not fm:
        def many(sza, alt, height):
            p0 = prior_pressure(alt)
            names = ATMOSPHERE_LATENTS + SENSOR_LATENTS  # all at their prior medians
            atm, sens, _ = shared_values(cfg.replace(free=names), p0,
                                         {n: jnp.float32(0.0) for n in names})
            zero = jnp.zeros_like(fm.fine_nm)
            return jax.lax.map(lambda s: irradiance_exact(
                fm, zero, atm, Geometry(s, 0.0, 0.0, alt, alt + height, 1.0), sens), sza,
                batch_size=8)

        _IRRADIANCE_FNS[key] = (fm, jax.jit(many))
    sza = jnp.atleast_1d(jnp.asarray(sza_deg, jnp.float32))
    return np.asarray(_IRRADIANCE_FNS[key][1](sza, jnp.float32(surface_altitude_m),
                                              jnp.float32(height_m)), np.float64)


def _simulate_tower(model: SifModel, patch: Patch, k_draw, k_noise, sza, surface_altitude_m,
                    height_m) -> tuple[Patch, dict]:
    """A tower's patch: the surface from the prior predictive at the true irradiance,
    then the radiance and the measured irradiance with their own noise."""
    e_true = tower_irradiance(model, sza, surface_altitude_m, height_m)
    patch = patch.replace(irradiance=jnp.asarray(e_true, jnp.float32),
                          irradiance_noise_a=patch.noise_a, irradiance_noise_b=patch.noise_b)
    _, draw = prior_predictive(model, k_draw, patch)
    truth = {k: np.asarray(v) for k, v in draw.items() if k != "radiance"}
    far = jnp.asarray(truth["sif_far_red"])
    red = jnp.asarray(truth.get("sif_red", np.zeros_like(truth["sif_far_red"])))
    clean = model.predict(model.operator(patch), jnp.asarray(truth["reflectance_coeffs"]),
                          red, far)
    n = jax.random.normal(k_noise, (2,) + clean.shape)
    rad = clean + jnp.sqrt(model.noise_variance(clean, patch.noise_a, patch.noise_b)) * n[0]
    # irradiance channel: the same relative noise at its own level (var(E/pi) = a E/pi + b)
    e = patch.irradiance
    e_meas = e + jnp.pi * jnp.sqrt(model.noise_variance(e / jnp.pi, patch.noise_a,
                                                        patch.noise_b)) * n[1]
    truth.update(radiance=np.asarray(rad, np.float64), radiance_clean=np.asarray(
        clean, np.float64), irradiance_true=e_true,
        sza_deg=np.broadcast_to(np.asarray(sza, np.float64), e_true.shape[:1]).copy())
    return patch.replace(radiance=rad, irradiance=e_meas), truth


# --- minibatches of patches for pre-training ------------------------------------------------

class Atmospheres(NamedTuple):
    """A pool of ``n`` patch conditions whose band operators are computed once (a
    pytree: pass it to jitted functions as an argument).

    Attributes
    ----------
    geometry : Geometry
        (n,) arrays (degrees, m).
    z : array (n, S)
        Standard-normal coordinates of the free shared latents (``model.free`` order).
    operator : BandOperator
        The band operator of each (leading dim n; :meth:`SifModel.operator`).
    surface_pressure0 : array (n,)
        Prior mean surface pressure (hPa).
    """

    geometry: Geometry
    z: jax.Array
    operator: BandOperator
    surface_pressure0: jax.Array


def _uniform(key, lohi, n):
    lo, hi = lohi
    return jax.random.uniform(key, (n,), jnp.float32, lo, hi)


def noise_and_ndvi(keys, n_patches: int, n_pixels: int, ranges: dict, bare_fraction: float,
                   reference_radiance: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Each patch's noise coefficients ``(noise_a, noise_b)`` (N,) (signal-to-noise
    log-uniform in ``ranges["snr"]`` at ``reference_radiance``, the read-noise share
    uniform in ``ranges["read_noise_fraction"]``) and each pixel's NDVI (N, P) (bare
    with probability ``bare_fraction``, uniform in ``ranges["ndvi_bare"]``, else in
    ``ranges["ndvi_vegetated"]``), from four PRNG keys."""
    k_snr, k_rf, k_bare, k_nd = keys
    lo, hi = np.log(ranges["snr"])
    snr = jnp.exp(jax.random.uniform(k_snr, (n_patches,), minval=lo, maxval=hi))
    rf = _uniform(k_rf, ranges["read_noise_fraction"], n_patches)
    var_ref = (reference_radiance / snr) ** 2
    noise_b = rf * var_ref
    noise_a = (1.0 - rf) * var_ref / reference_radiance
    bare = jax.random.uniform(k_bare, (n_patches, n_pixels)) < bare_fraction
    u = jax.random.uniform(k_nd, (n_patches, n_pixels))
    (bl, bh), (vl, vh) = ranges["ndvi_bare"], ranges["ndvi_vegetated"]
    ndvi = jnp.where(bare, bl + (bh - bl) * u, vl + (vh - vl) * u).astype(jnp.float32)
    return noise_a, noise_b, ndvi


def simulate_batch(model: SifModel, key: jax.Array, atmospheres: Atmospheres,
                   n_patches: int, n_pixels: int, ranges: dict, bare_fraction: float,
                   reference_radiance: float) -> tuple[Patch, dict]:
    """A batch of ``n_patches`` patches of ``n_pixels`` drawn from the model's prior
    predictive, each under an atmosphere of the pool (drawn uniformly).

    Parameters
    ----------
    model : SifModel
    key : jax.Array
    atmospheres : Atmospheres
    n_patches, n_pixels : int
    ranges : dict
        ``snr`` (signal-to-noise at ``reference_radiance``, log-uniform),
        ``read_noise_fraction`` (read-noise share of the variance there),
        ``ndvi_bare``, ``ndvi_vegetated`` (NDVI of bare and vegetated pixels), each
        ``(low, high)``.
    bare_fraction : float
        Probability that a pixel is bare.
    reference_radiance : float
        mW m-2 sr-1 nm-1.

    Returns
    -------
    patches : Patch
        The batch (leading dim ``n_patches``), radiance included.
    truth : dict
        The draw's sites (:func:`prior_predictive`) plus ``atmosphere`` (N,), the index
        of each patch's atmosphere in the pool, and ``shared_z`` (N, S), its shared
        latents.
    """
    k_idx, k_snr, k_rf, k_bare, k_nd, k_model = jax.random.split(key, 6)
    idx = jax.random.randint(k_idx, (n_patches,), 0, atmospheres.z.shape[0])
    pool = jax.tree.map(lambda v: v[idx], atmospheres)
    noise_a, noise_b, ndvi = noise_and_ndvi((k_snr, k_rf, k_bare, k_nd), n_patches, n_pixels,
                                            ranges, bare_fraction, reference_radiance)
    patches = Patch(radiance=None, mask=jnp.ones((n_patches, n_pixels), jnp.float32),
                    ndvi=ndvi, geometry=pool.geometry, noise_a=noise_a, noise_b=noise_b,
                    surface_pressure0=pool.surface_pressure0)
    patches, truth = prior_predictive(model, k_model, patches, shared_z=pool.z,
                                      operator=pool.operator)
    truth.update(atmosphere=idx, shared_z=pool.z)
    return patches, truth


def tower_series(model: SifModel, patches: list[Patch], sza_deg=None, time=None
                 ) -> xr.Dataset:
    """Tower patches (:func:`simulate_patch` of a top-of-canopy model) as one time series
    in the scene format (``radiance`` and ``irradiance`` over (time, band), each scan's
    sun zenith, NDVI, altitudes; the noise as attributes): what a FloX file holds.

    Parameters
    ----------
    model : SifModel
        The tower's model (its band grid names the bands).
    patches : list of Patch
        Patches with ``irradiance``; their scans are concatenated in order, at their
        patch's surface and sensor altitude.
    sza_deg : array-like, optional
        Each scan's sun zenith angle, degrees (``simulate_patch``'s truth
        ``sza_deg``; default its patch's mean).
    time : array-like, optional
        The scans' times (default their index).
    """
    def cat(f):
        return np.concatenate([np.asarray(f(p)) for p in patches])

    n = sum(int(p.ndvi.shape[0]) for p in patches)
    sza = (np.concatenate([np.full(p.ndvi.shape[0], float(p.geometry.sza_deg))
                           for p in patches]) if sza_deg is None
           else np.asarray(sza_deg, np.float64))
    surf = np.concatenate([np.full(p.ndvi.shape[0], float(p.geometry.surface_altitude_m))
                           for p in patches])
    sens = np.concatenate([np.full(p.ndvi.shape[0], float(p.geometry.sensor_altitude_m))
                           for p in patches])
    wl = np.asarray(model.fm.band_centre_nm, np.float64)
    fwhm = np.broadcast_to(np.asarray(model.fm.band_fwhm_nm, np.float64), wl.shape)
    return xr.Dataset(
        {"radiance": (("time", "band"), cat(lambda p: p.radiance).astype(np.float32),
                      {"units": "mW m-2 sr-1 nm-1"}),
         "irradiance": (("time", "band"), cat(lambda p: p.irradiance).astype(np.float32),
                        {"units": "mW m-2 nm-1"}),
         "sza": ("time", sza, {"units": "degree"}), "ndvi": ("time", cat(lambda p: p.ndvi)),
         "surface_altitude": ("time", surf, {"units": "m"}),
         "sensor_altitude": ("time", sens, {"units": "m"})},
        coords={"time": np.arange(n) if time is None else np.asarray(time),
                "wavelength": ("band", wl, {"units": "nm", "medium": "air"}),
                "fwhm": ("band", fwhm.copy(), {"units": "nm"})},
        attrs={"instrument": model.instrument, "noise_a": float(patches[0].noise_a),
               "noise_b": float(patches[0].noise_b)})
