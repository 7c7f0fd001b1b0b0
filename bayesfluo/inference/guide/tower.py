"""The guide's inputs for a top-of-canopy time series (FloX-like towers).

A tower measures, per scan, the upwelling radiance ``L`` and the downwelling irradiance
``E`` with the same spectrometer; the model is ``L = E/pi R + F`` per band
(:class:`bayesfluo.model.SifModel` with ``top_of_canopy``). The encoder reads each scan
against its own irradiance: the log apparent reflectance ``log(pi L / E)`` per band (the
reflectance plus the SIF's fill-in ``pi F / E``, which the O2 bands show), the
ancillary inputs of :data:`~bayesfluo.inference.guide.ANCILLARY` (a tower looks at
nadir: view zenith 0, relative azimuth 0), the irradiance's level (``log_irradiance``:
the log of its window mean ``E/pi`` over the instrument's reference radiance), since the
SIF ``F = (pi L / E - R) E / pi`` needs it, and the scan's linear estimate of F760 and
F687 with their standard errors (:func:`linear_sif`).

The tower's model is linear in what a scan says: ``L = E/pi (B c) + A_far s_far + A_red
s_red`` with ``B`` the reflectance's B-spline basis and ``s`` the two SIF peaks' shapes.
Its weighted least-squares solution is, on the model's own draws, close to the
posterior mode (the priors and the bounds of ``c`` and ``A`` aside), a precision a
network reading only the spectrum reaches slowly: the O2 bands' fill-in is a fraction
of a percent of the radiance, and the reflectance under it must be interpolated to the
noise. Given the estimate and its error, the guide learns what the priors, the bounds
and, from the world phase, the model's misfit (other SIF shapes, other canopies) do to
it.

A series is cut into patches of ``patch_size**2`` consecutive scans, the last padded
with masked scans. A tower's model has no shared latents, so a patch is only a unit of
work: each scan's posterior is its own.

On a band grid other than the guide's (a spectrometer's own calibrated centres and
widths), the radiance and the irradiance are both interpolated linearly onto the guide's
grid (:func:`bayesfluo.scene.bands.resampling_matrix`); the likelihood (fit check, NUTS)
stays on the scene's own bands. One linear map applied to both keeps the model's form:
with ``R`` and ``F`` smooth over a band's neighbours, ``W L = (W E)/pi R + F``, so the
resampled scan is a scan under the resampled irradiance ``W E``, whose O2 lines are
shallower or deeper than the nominal grid's. Radiance and irradiance share the
spectrometer's response, so what a grid changes is only that depth, which the guide's
training varies (:func:`bayesfluo.inference.tower.build_tower_pool`: shifts, FWHM
scales; the world phase: perturbed grids).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.typing import ArrayLike

from bayesfluo.inference.guide.features import (
    ANCILLARY,
    GuideInputs,
    ancillary_inputs,
    pixel_features,
)
from bayesfluo.model import Patch, SifModel
from bayesfluo.model.toc_least_squares import scan_least_squares, sif_shapes
from bayesfluo.physics.forward import Geometry
from bayesfluo.scene.bands import SceneBands, resampling_matrix, same_grid, scene_bands
from bayesfluo.scene.grid import INPUT_FLAGS, patch_of_pixels

__all__ = ["TOWER_ANCILLARY", "linear_sif", "tower_ancillary",
           "tower_reference", "tower_inputs", "series_patches"]

#: Ancillary inputs of a tower's scan (after the spectrum).
TOWER_ANCILLARY = ANCILLARY + ("log_irradiance", "f760_linear", "log_f760_linear_se",
                               "f687_linear", "log_f687_linear_se")
_E_FLOOR = 1e-3  # E/pi floor (mW m-2 sr-1 nm-1) before the logarithm


def tower_reference(irradiance: ArrayLike) -> jax.Array:
    """The log spectrum (..., B) a tower's radiance is read against: ``log(E/pi)``,
    ``E`` the measured irradiance (mW m-2 nm-1), floored at 1e-3."""
    return jnp.log(jnp.maximum(jnp.asarray(irradiance, jnp.float32) / jnp.pi, _E_FLOOR))


def linear_sif(model: SifModel, radiance: ArrayLike, irradiance: ArrayLike,
               noise_a: ArrayLike, noise_b: ArrayLike) -> jax.Array:
    """Weighted linear least squares of each scan (module docstring): F760 and F687 of
    the solution and their standard errors, (..., 4) in mW m-2 sr-1 nm-1 (F687 and its
    error 0 without the O2-B band).

    The weights are the inverse noise variance of each band, ``a L + b`` plus the
    irradiance's noise carried through (``rho^2 (a E/pi + b)``, ``rho = pi L / E`` for
    the reflectance); the reflectance coefficients are free (no bounds, no prior), the
    columns scaled to unit norm and a ridge of 1e-6 keeping float32 solvable.

    Parameters
    ----------
    model : SifModel
        The tower's model (basis, SIF shapes, band grid).
    radiance, irradiance : array_like (..., B)
        mW m-2 sr-1 nm-1 and mW m-2 nm-1, on the model's bands.
    noise_a, noise_b : array_like (...)
        Noise variance coefficients of each scan (radiance and ``E/pi``).
    """
    rad = jnp.asarray(radiance, jnp.float32)
    e = jnp.maximum(jnp.asarray(irradiance, jnp.float32) / jnp.pi, _E_FLOOR)
    a = jnp.asarray(noise_a, jnp.float32)[..., None]
    b = jnp.asarray(noise_b, jnp.float32)[..., None]
    rho = rad / e
    w = 1.0 / (a * jnp.maximum(rad, 0.0) + b + rho**2 * (a * e + b))       # (..., B)
    # without refinement steps: the features the shipped tower guide was trained on
    theta, cov = scan_least_squares(model, rad, e, w, refine_steps=0)
    k = model.fm.n_basis
    out = []
    for wl in (760.0, 687.0):
        if wl == 687.0 and not model.has_red:
            out += [jnp.zeros(theta.shape[:-1]), jnp.zeros(theta.shape[:-1])]
            continue
        gv = jnp.zeros(theta.shape[-1]).at[k:].set(sif_shapes(model, wl))
        out += [theta @ gv, jnp.sqrt(jnp.maximum(jnp.einsum("i,...ij,j->...", gv, cov, gv),
                                                 0.0))]
    return jnp.stack(out, -1)


def tower_ancillary(model: SifModel, radiance: ArrayLike, irradiance: ArrayLike,
                    sza: ArrayLike, surface_altitude: ArrayLike, sensor_altitude: ArrayLike,
                    noise_a: ArrayLike, noise_b: ArrayLike, ndvi: ArrayLike,
                    reference_radiance: float) -> jax.Array:
    """The :data:`TOWER_ANCILLARY` inputs (..., 13) of scans, broadcast together.

    Parameters
    ----------
    model : SifModel
        The tower's model (:func:`linear_sif`).
    radiance : array_like (..., B)
        Measured radiance, mW m-2 sr-1 nm-1, on the model's bands.
    sza : array_like
        Sun zenith angle, degrees.
    surface_altitude, sensor_altitude : array_like
        Altitudes, m.
    noise_a, noise_b : array_like
        Radiance noise variance ``a L + b`` ((mW m-2 sr-1 nm-1)^2).
    ndvi : array_like
    reference_radiance : float
        The instrument's reference radiance, mW m-2 sr-1 nm-1.
    """
    base = ancillary_inputs(sza, 0.0, 0.0, surface_altitude, sensor_altitude, noise_a,
                            noise_b, ndvi, reference_radiance)
    e = jnp.mean(jnp.asarray(irradiance, jnp.float32), -1) / jnp.pi
    level = jnp.log(jnp.maximum(e, _E_FLOOR) / reference_radiance)
    level = jnp.broadcast_to(level, base.shape[:-1])
    lin = linear_sif(model, radiance, irradiance, *jnp.broadcast_arrays(
        jnp.asarray(noise_a, jnp.float32), jnp.asarray(noise_b, jnp.float32)))
    lin = jnp.broadcast_to(lin, base.shape[:-1] + (4,))
    lin = jnp.stack([lin[..., 0], jnp.log(jnp.maximum(lin[..., 1], 1e-4)), lin[..., 2],
                     jnp.log(jnp.maximum(lin[..., 3], 1e-4))], -1)
    return jnp.concatenate([base, level[..., None], lin], -1)


def series_patches(scene: xr.Dataset, patch_size: int, bands: SceneBands | None = None
                   ) -> tuple[Patch, dict, np.ndarray]:
    """A time series cut into patches of ``patch_size**2`` consecutive scans.

    Returns
    -------
    patches : Patch
        Leading dims (N, P): radiance and irradiance on the scene's usable bands
        (``bands``), mask (0 for unusable scans and the padding after the last scan),
        NDVI, noise, each patch's mean geometry.
    scans : dict of numpy.ndarray (N, P)
        Each scan's ``sza`` (degrees), ``surface_altitude`` and ``sensor_altitude`` (m).
    input_flag : numpy.ndarray (N, P) int32
        Bits of :data:`bayesfluo.scene.grid.INPUT_FLAGS` (``masked`` for the padding and
        for scans whose radiance or irradiance is not finite or not positive, or whose
        mask is 0; ``invalid_ancillary`` for angles or altitudes out of range).
    """
    if bands is not None and bands.index.size != scene.sizes["band"]:
        scene = scene.isel(band=bands.index)
    n = scene.sizes["time"]
    p = patch_size**2
    n_patch = max(1, -(-n // p))
    rows = np.minimum(np.arange(n_patch * p), n - 1)
    one = patch_of_pixels(scene, rows, np.zeros_like(rows))
    pad = np.arange(n_patch * p) >= n
    mask = np.asarray(one.mask) > 0
    user = (np.asarray(scene["mask"].values)[rows] > 0 if "mask" in scene
            else np.ones(rows.size, bool))
    flag = np.where(mask, 0, INPUT_FLAGS["masked"])
    # masked only for an invalid angle or altitude: say so
    flag = np.where(~mask & user & ~pad & _finite_scans(scene, rows) & ~_ancillary_ok(
        scene, rows), INPUT_FLAGS["masked"] | INPUT_FLAGS["invalid_ancillary"], flag)
    flag = np.where(pad, INPUT_FLAGS["masked"], flag).astype(np.int32)
    mask = mask & ~pad

    def cut(v):
        v = np.asarray(v)
        return v.reshape((n_patch, p) + v.shape[1:])

    sza = np.asarray(scene["sza"].values, np.float64)[rows]
    surf = np.asarray(scene["surface_altitude"].values, np.float64)
    surf = np.broadcast_to(surf, (n,))[rows] if surf.ndim else np.full(rows.size, float(surf))
    sens = np.asarray(scene["sensor_altitude"].values, np.float64)
    sens = np.broadcast_to(sens, (n,))[rows] if sens.ndim else np.full(rows.size, float(sens))
    w = cut(mask).astype(np.float64)
    wsum = np.maximum(w.sum(1), 1.0)

    def mean(v):
        return np.where(w.sum(1) > 0, (cut(v) * w).sum(1) / wsum, cut(v)[:, 0])

    f32 = jnp.float32
    geom = Geometry(*(jnp.asarray(v, f32) for v in (
        mean(sza), np.zeros(n_patch), np.zeros(n_patch), mean(surf), mean(sens),
        np.full(n_patch, float(one.geometry.sun_distance_factor)))))
    patches = Patch(
        radiance=jnp.asarray(cut(one.radiance), f32), mask=jnp.asarray(cut(mask), f32),
        ndvi=jnp.asarray(cut(one.ndvi), f32), geometry=geom,
        noise_a=jnp.full(n_patch, one.noise_a, f32), noise_b=jnp.full(n_patch, one.noise_b,
                                                                     f32),
        surface_pressure0=jnp.full(n_patch, one.surface_pressure0, f32),
        irradiance=jnp.asarray(cut(one.irradiance), f32),
        irradiance_noise_a=jnp.full(n_patch, one.irradiance_noise_a, f32),
        irradiance_noise_b=jnp.full(n_patch, one.irradiance_noise_b, f32))
    return patches, dict(sza=cut(sza), surface_altitude=cut(surf),
                         sensor_altitude=cut(sens)), cut(flag)


def _finite_scans(scene: xr.Dataset, rows: np.ndarray) -> np.ndarray:
    rad = np.asarray(scene["radiance"].transpose("time", "band").values)[rows]
    irr = np.asarray(scene["irradiance"].transpose("time", "band").values)[rows]
    return np.all(np.isfinite(rad), -1) & np.all(np.isfinite(irr) & (irr > 0), -1)


def _ancillary_ok(scene: xr.Dataset, rows: np.ndarray) -> np.ndarray:
    sza = np.asarray(scene["sza"].values, np.float64)[rows]
    return np.isfinite(sza) & (sza >= 0) & (sza < 90)


def tower_inputs(scene: xr.Dataset, model: SifModel, feature_mean: ArrayLike,
                 feature_sd: ArrayLike, reference_radiance: float, patch_size: int,
                 bands: SceneBands | None = None) -> GuideInputs:
    """The patches of a time series (:func:`series_patches`) and the guide's inputs for
    them (module docstring): the encoder's features (N, P, B_guide + 9), zero where
    the scan is flagged.

    Parameters
    ----------
    scene : xarray.Dataset
        A top-of-canopy time series (time, band) with ``radiance``, ``irradiance``,
        ``sza``, ``ndvi``, ``surface_altitude``, ``sensor_altitude``.
    model : SifModel
        The guide's (top-of-canopy) model.
    feature_mean, feature_sd : array_like (F,)
        The guide's input normalisation.
    reference_radiance : float
        The instrument's reference radiance, mW m-2 sr-1 nm-1.
    patch_size : int
        The guide's patch side (``patch_size**2`` scans per patch).
    bands : SceneBands, optional
        The scene's usable bands (found here when not given).
    """
    bands = scene_bands(scene, model.instrument) if bands is None else bands
    patches, scans, flag = series_patches(scene, patch_size, bands)
    rad, irr = patches.radiance, patches.irradiance
    if not same_grid(bands, model, scene.sizes["band"]):
        m = jnp.asarray(resampling_matrix(bands.centre_nm, model.fm.band_centre_nm),
                        jnp.float32)
        rad, irr = rad @ m.T, irr @ m.T
    anc = tower_ancillary(model, rad, irr, scans["sza"], scans["surface_altitude"],
                          scans["sensor_altitude"], patches.noise_a[:, None],
                          patches.noise_b[:, None], patches.ndvi, reference_radiance)
    feats = pixel_features(rad, anc, jnp.asarray(feature_mean), jnp.asarray(feature_sd),
                           tower_reference(irr))
    ok = jnp.asarray(flag == 0)[..., None]
    feats = jnp.where(ok, feats, 0.0)
    return GuideInputs(patches, feats, jnp.asarray(flag))
