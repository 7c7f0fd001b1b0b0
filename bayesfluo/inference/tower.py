"""Training data of a top-of-canopy (tower) guide.

A tower's model (``L = E/pi R + F`` with the measured irradiance ``E``,
:class:`bayesfluo.model.SifModel` with ``top_of_canopy``) has no atmosphere of its own:
what the guide must read its scans under is the irradiance. Pre-training therefore draws
from the model's prior predictive (reflectance, SIF, noise) under a pool of irradiance
spectra that is broader than one clear sky (:func:`build_tower_pool`):

* the built-in atmosphere at sun zenith angles through a day, surface altitudes and
  pressures, aerosol optical thickness 0.03-1.2 (log-uniform), Angstrom exponent 0.8-1.8
  and diffuse-path factor 1.2-2.5;
* in 30 % of the draws a cloud: the irradiance scaled by 0.1-0.9 with a spectral tilt of
  up to 15 % per 70 nm and the diffuse-path factor 2-4 (longer photon paths deepen the
  O2 bands);
* the spectrometer's calibration, which radiance and irradiance share: a spectral shift
  of up to 0.1 nm and a FWHM scale of 0.8-1.25 (so a spectrometer on its own band grid
  reads like one of the draws).

Each scan of a patch takes its own irradiance from the pool: the radiance is simulated
with the true irradiance and the radiance's noise, then the irradiance the guide and
the model are given is measured with its own noise (the same relative noise), as
:func:`bayesfluo.scene.prior.simulate_patch` does for SBC.

The world phase (:func:`bayesfluo.inference.world.build_world_pool`) adds series from the
package's fine-grid simulator (:func:`bayesfluo.inference.world.world_scene` of the tower
instrument: the few metres of air between canopy and sensor, perturbed band grids, bad
bands) with PROSAIL surfaces and SIF of shapes outside the model's family.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bayesfluo.inference.guide.tower import tower_ancillary, tower_reference
from bayesfluo.model import Patch, SifModel, inverse_knee_softplus, toc_operator
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import Geometry, irradiance_exact, standard_pressure_hpa
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.scene.prior import noise_and_ndvi, prior_predictive

__all__ = ["TowerPool", "build_tower_pool", "simulate_tower_batch", "CLOUD_FRACTION"]

#: Share of the pool's irradiance draws under a cloud.
CLOUD_FRACTION = 0.3


class TowerPool(NamedTuple):
    """Irradiance spectra of a tower's pre-training (a pytree).

    Attributes
    ----------
    irradiance : array (n, B)
        True band downwelling irradiance at the canopy, mW m-2 nm-1.
    sza : array (n,)
        Sun zenith angle, degrees.
    surface_altitude : array (n,)
        m above sea level.
    height : array (n,)
        Sensor height above the canopy, m.
    """

    irradiance: jax.Array
    sza: jax.Array
    surface_altitude: jax.Array
    height: jax.Array


def _uniform(key, lo, hi, n):
    return jax.random.uniform(key, (n,), jnp.float32, lo, hi)


def build_tower_pool(model: SifModel, ranges: dict, key: jax.Array, n: int,
                     progress: bool = True) -> TowerPool:
    """``n`` irradiance spectra (module docstring) at sun zenith angles, surface
    altitudes and sensor heights uniform in ``ranges`` (``sza_deg``,
    ``surface_altitude_m``, ``height_m``)."""
    fm = model.fm
    ks = jax.random.split(key, 12)
    sza = _uniform(ks[0], *ranges["sza_deg"], n)
    alt = _uniform(ks[1], *ranges["surface_altitude_m"], n)
    height = _uniform(ks[2], *ranges["height_m"], n)
    p = standard_pressure_hpa(alt) * (1.0 + _uniform(ks[3], -0.02, 0.02, n))
    aot = jnp.exp(_uniform(ks[4], np.log(0.03), np.log(1.2), n))
    angstrom = _uniform(ks[5], 0.8, 1.8, n)
    cloudy = jax.random.uniform(ks[6], (n,)) < CLOUD_FRACTION
    diffuse = jnp.where(cloudy, _uniform(ks[7], 2.0, 4.0, n), _uniform(ks[8], 1.2, 2.5, n))
    shift = _uniform(ks[9], -0.1, 0.1, n)
    fwhm = jnp.exp(_uniform(ks[10], np.log(0.8), np.log(1.25), n))
    kc = jax.random.split(ks[11], 2)
    level = jnp.where(cloudy, _uniform(kc[0], 0.1, 0.9, n), 1.0)
    tilt = jnp.where(cloudy, _uniform(kc[1], -0.15, 0.15, n), 0.0)
    zero = jnp.zeros_like(fm.fine_nm)

    @jax.jit
    def chunk(a):
        def one(s, al, h, pp, t, an, d, sh, fw):
            return irradiance_exact(fm, zero, AtmosphereParams(pp, t, an, d),
                                    Geometry(s, 0.0, 0.0, al, al + h, 1.0),
                                    SensorParams(sh, fw))
        return jax.lax.map(lambda v: one(*v), a, batch_size=8)

    size = 64
    parts = []
    args = (sza, alt, height, p, aot, angstrom, diffuse, shift, fwhm)
    for i in tqdm(range(0, n, size), desc="irradiances", disable=not progress, unit="chunk"):
        m = min(size, n - i)
        a = tuple(jnp.pad(v[i:i + m], (0, size - m), mode="edge") for v in args)
        parts.append(chunk(a)[:m])
    e = jnp.concatenate(parts)
    lam = (fm.band_centre_nm - 725.0) / 70.0
    e = e * level[:, None] * (1.0 + tilt[:, None] * lam[None, :])
    return TowerPool(e.astype(jnp.float32), sza, alt, height)


def simulate_tower_batch(model: SifModel, pool: TowerPool, key: jax.Array, n_patches: int,
                         n_pixels: int, ranges: dict, bare_fraction: float,
                         reference_radiance: float):
    """A minibatch of tower patches from the model's prior predictive (module
    docstring): ``(patches, ancillary (N, P, 9), reference (N, P, B), z_true (N, 0),
    u_true (N, P, D))`` as :class:`bayesfluo.inference.train.TrainingBatch` holds them.

    ``ranges`` as :func:`bayesfluo.scene.prior.simulate_batch`'s (``snr``,
    ``read_noise_fraction``, ``ndvi_bare``, ``ndvi_vegetated``)."""
    k_idx, k_snr, k_rf, k_bare, k_nd, k_model, k_noise = jax.random.split(key, 7)
    idx = jax.random.randint(k_idx, (n_patches, n_pixels), 0, pool.sza.shape[0])
    e_true = pool.irradiance[idx]                                     # (N, P, B)
    noise_a, noise_b, ndvi = noise_and_ndvi((k_snr, k_rf, k_bare, k_nd), n_patches, n_pixels,
                                            ranges, bare_fraction, reference_radiance)
    sza, alt, height = pool.sza[idx], pool.surface_altitude[idx], pool.height[idx]
    geom = Geometry(sza.mean(1), jnp.zeros(n_patches), jnp.zeros(n_patches), alt.mean(1),
                    (alt + height).mean(1), jnp.ones(n_patches))
    patches = Patch(radiance=None, mask=jnp.ones((n_patches, n_pixels), jnp.float32),
                    ndvi=ndvi, geometry=geom, noise_a=noise_a, noise_b=noise_b,
                    surface_pressure0=standard_pressure_hpa(alt.mean(1)),
                    irradiance=e_true, irradiance_noise_a=noise_a, irradiance_noise_b=noise_b)
    # the radiance from the true irradiance with the radiance's noise only
    patches, truth = prior_predictive(model, k_model, patches,
                                      shared_z=jnp.zeros((n_patches, 0), jnp.float32),
                                      operator=toc_operator(e_true))
    # then the irradiance as measured: var(E/pi) = a E/pi + b
    e = e_true / jnp.pi
    var_e = noise_a[:, None, None] * e + noise_b[:, None, None]
    e_meas = e_true + jnp.pi * jnp.sqrt(var_e) * jax.random.normal(k_noise, e.shape)
    e_meas = jnp.maximum(e_meas, 1e-3)
    patches = patches.replace(irradiance=e_meas)
    k = model.fm.n_basis
    u_true = jnp.concatenate([truth["reflectance_z"]]
                             + [inverse_knee_softplus(truth[n])[..., None]
                                for n in model.local_names()[k:]], -1)
    anc = tower_ancillary(model, patches.radiance, e_meas, sza, alt, alt + height,
                          noise_a[:, None], noise_b[:, None], ndvi, reference_radiance)
    return (patches, anc, tower_reference(e_meas), jnp.zeros((n_patches, 0), jnp.float32),
            u_true)
