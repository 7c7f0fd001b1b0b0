"""The guide's inputs: each pixel's spectrum, read relative to a reference, and its
ancillary inputs, normalised by the training statistics.

The encoder reads each spectrum as the log radiance relative to a *reference*: the log
band radiance of a grey surface (reflectance 0.3, no SIF) under the model's prior
atmosphere at the pixel's geometry (:func:`reference_log_radiance`). The O2 band's depth,
set mostly by geometry, is divided out; what remains (surface, SIF fill-in, the departure
of pressure and aerosol from the prior) is what the encoder has to read. Over a scene the
reference is a second-order expansion in the geometry about the scene's mean geometry
(:func:`reference_expansion`, :func:`expand_reference`).

:func:`guide_inputs` turns image rows of a scene into a batch of patches and their
encoder features in one compiled pass (input flags, features, cutting into patches).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.typing import ArrayLike

from bayesfluo.model import Patch, SifModel
from bayesfluo.physics.forward import Geometry, standard_pressure_hpa
from bayesfluo.scene.bands import (
    SceneBands,
    model_on_scene_grid,
    resampling_matrix,
    same_grid,
    scene_bands,
)
from bayesfluo.scene.grid import (
    INPUT_FLAGS,
    PatchGrid,
    PixelRows,
    assemble_patches,
    cut_patches,
    flag_pixels,
    read_rows,
    reference_centre,
    sun_distance,
)

__all__ = ["ANCILLARY", "read_guide_rows", "ancillary_inputs", "pixel_features",
           "geometry_coordinates",
           "ReferenceExpansion", "reference_function", "reference_log_radiance",
           "reference_expansion", "expand_reference", "ratio_resample", "GuideInputs",
           "guide_inputs"]

#: Ancillary inputs of every pixel, after the spectrum (see :func:`pixel_features`).
ANCILLARY = ("cos_sza", "vza_deg", "cos_raa", "surface_altitude_km", "height_km",
             "log_noise_sd", "read_noise_fraction", "ndvi")
_LOG_FLOOR = 1e-3  # radiance floor (mW m-2 sr-1 nm-1) before the logarithm


def ancillary_inputs(sza: ArrayLike, vza: ArrayLike, raa: ArrayLike,
                     surface_altitude: ArrayLike, sensor_altitude: ArrayLike,
                     noise_a: ArrayLike, noise_b: ArrayLike, ndvi: ArrayLike,
                     reference_radiance: float) -> jax.Array:
    """The :data:`ANCILLARY` inputs (..., 8), broadcast together.

    Parameters
    ----------
    sza, vza, raa : array_like
        Sun and view zenith angles and relative azimuth, degrees.
    surface_altitude, sensor_altitude : array_like
        Altitudes, m.
    noise_a, noise_b : array_like
        Noise variance ``a L + b`` ((mW m-2 sr-1 nm-1)^2).
    ndvi : array_like
        NDVI.
    reference_radiance : float
        The instrument's reference radiance (mW m-2 sr-1 nm-1) at which the noise sd
        and the read-noise fraction are given.
    """
    var_ref = noise_a * reference_radiance + noise_b
    cols = [jnp.cos(jnp.deg2rad(sza)), vza, jnp.cos(jnp.deg2rad(raa)),
            surface_altitude / 1000.0, (sensor_altitude - surface_altitude) / 1000.0,
            0.5 * jnp.log(var_ref), noise_b / var_ref, ndvi]
    cols = jnp.broadcast_arrays(*[jnp.asarray(c, jnp.float32) for c in cols])
    return jnp.stack(cols, -1)


def pixel_features(radiance: ArrayLike, ancillary: ArrayLike, mean: ArrayLike,
                   sd: ArrayLike, reference: ArrayLike) -> jax.Array:
    """Normalised encoder input (..., B + 8): log radiance per band (mW m-2 sr-1 nm-1,
    floored at 1e-3) relative to the ``reference`` log radiance
    (:func:`reference_log_radiance`), then the ancillary inputs, standardised by the
    training statistics ``mean``/``sd``."""
    x = jnp.concatenate([jnp.log(jnp.maximum(radiance, _LOG_FLOOR)) - reference, ancillary],
                        -1)
    return (x - mean) / sd


class ReferenceExpansion(NamedTuple):
    """Second-order expansion of the log band radiance of a grey surface (reflectance
    0.3, no SIF) under the prior atmosphere, in ``g`` = (sun air mass, view air mass,
    surface altitude km, sensor height above ground km), about ``g0``."""

    g0: jax.Array
    value: jax.Array
    jac: jax.Array
    hess: jax.Array


def geometry_coordinates(sza: ArrayLike, vza: ArrayLike, surface_altitude_m: ArrayLike,
                         sensor_altitude_m: ArrayLike) -> jax.Array:
    """The coordinates ``g`` (..., 4) of :class:`ReferenceExpansion` from zenith angles
    (degrees) and altitudes (m)."""
    return jnp.stack([1.0 / jnp.cos(jnp.deg2rad(sza)), 1.0 / jnp.cos(jnp.deg2rad(vza)),
                      surface_altitude_m / 1000.0,
                      (sensor_altitude_m - surface_altitude_m) / 1000.0], -1)


def reference_function(model: SifModel) -> Callable[[jax.Array], jax.Array]:
    """``g -> log band radiance (B,)`` of a grey surface (reflectance 0.3, no SIF) under
    the model's prior atmosphere (every free shared latent at its prior median), ``g``
    as :func:`geometry_coordinates`; the operator is the model's
    (:meth:`SifModel.operator`) of a patch at that geometry."""
    fm = model.fm
    grey = jnp.full((1, fm.n_basis), 0.3, jnp.float32)
    no_sif = jnp.zeros(1, jnp.float32)

    def f(g):
        surf = g[2] * 1000.0
        sza, vza = jnp.rad2deg(jnp.arccos(jnp.minimum(1.0 / g[:2], 1.0)))
        geom = Geometry(sza, vza, jnp.float32(0.0), surf, surf + g[3] * 1000.0,
                        jnp.float32(1.0))
        patch = Patch(radiance=None, mask=None, ndvi=None, geometry=geom, noise_a=None,
                      noise_b=None, surface_pressure0=standard_pressure_hpa(surf))
        op = model.operator(patch)
        return jnp.log(model.predict(op, grey, no_sif, no_sif)[0])
    return f


def reference_log_radiance(model: SifModel, sza: ArrayLike, vza: ArrayLike,
                           surface_altitude_m: ArrayLike, sensor_altitude_m: ArrayLike
                           ) -> jax.Array:
    """Log band radiance (..., B) of a grey surface (reflectance 0.3, no SIF) under the
    prior atmosphere at each geometry (degrees, m), exactly (one band operator each):
    the reference the encoder reads each spectrum against (module docstring)."""
    g = geometry_coordinates(*(jnp.asarray(v, jnp.float32) for v in
                               (sza, vza, surface_altitude_m, sensor_altitude_m)))
    f = reference_function(model)
    flat = g.reshape(-1, 4)
    return jax.lax.map(f, flat).reshape(g.shape[:-1] + (model.fm.n_bands,))


def reference_expansion(model: SifModel, sza: ArrayLike, vza: ArrayLike,
                        surface_altitude_m: ArrayLike, sensor_altitude_m: ArrayLike
                        ) -> ReferenceExpansion:
    """:func:`reference_log_radiance` expanded to second order about one geometry
    (degrees, m), for the many pixels of a scene whose geometries are close to it."""
    g0 = geometry_coordinates(*(jnp.asarray(v, jnp.float32) for v in
                                (sza, vza, surface_altitude_m, sensor_altitude_m)))
    # zenith angle as a function of airmass has an infinite slope at 0 deg: a nadir (or
    # overhead-sun) scene is expanded about airmass 1.001 (2.6 deg), 1e-3 away
    g0 = g0.at[:2].set(jnp.maximum(g0[:2], 1.001))
    f = reference_function(model)
    return ReferenceExpansion(g0, f(g0), jax.jacfwd(f)(g0), jax.jacfwd(jax.jacfwd(f))(g0))


def expand_reference(ref: ReferenceExpansion, sza: ArrayLike, vza: ArrayLike,
                     surface_altitude_m: ArrayLike, sensor_altitude_m: ArrayLike
                     ) -> jax.Array:
    """Evaluate a :class:`ReferenceExpansion` at geometries (...; degrees, m) ->
    (..., B) log radiance."""
    d = geometry_coordinates(sza, vza, surface_altitude_m, sensor_altitude_m) - ref.g0
    return (ref.value + jnp.einsum("bj,...j->...b", ref.jac, d)
            + 0.5 * jnp.einsum("bjk,...j,...k->...b", ref.hess, d, d))


def ratio_resample(radiance: ArrayLike, log_reference: ArrayLike,
                   log_reference_scene: ArrayLike, resample: ArrayLike) -> jax.Array:
    """Radiance on a scene's own band grid resampled onto the guide's, through the
    reference spectrum: ``exp(ref) * ((L / exp(ref_scene)) @ resample.T)``.

    Linear interpolation of the radiance itself smears the O2 lines (a grid shifted by
    half a band, another FWHM, another sampling step, bands bridged over a gap); the
    ratio to the reference spectrum (the model's radiance at the prior atmosphere and
    the pixel's geometry, :func:`expand_reference`) on each grid is smooth, so it is the
    ratio that is interpolated and the lines are the reference's on the guide's grid.

    Parameters
    ----------
    radiance : array_like (..., B_scene)
        Radiance on the scene's usable bands, mW m-2 sr-1 nm-1.
    log_reference, log_reference_scene : array_like (..., B) and (..., B_scene)
        Log reference spectra on the guide's and on the scene's grid.
    resample : array_like (B, B_scene)
        Linear interpolation between the grids
        (:func:`bayesfluo.scene.bands.resampling_matrix`).

    Returns
    -------
    jax.Array (..., B)
        Radiance on the guide's grid, mW m-2 sr-1 nm-1.
    """
    return jnp.exp(log_reference) * ((radiance * jnp.exp(-log_reference_scene))
                                     @ jnp.asarray(resample).T)


# --- a scene's image rows -> patches and encoder features ----------------------------------

class GuideInputs(NamedTuple):
    """Patches of a scene and the guide's inputs for them (leading patch dimension N).

    Attributes
    ----------
    patches : Patch
        The batch of patches (``radiance`` (N, P, B) with unusable pixels zeroed, or None
        when not asked for; ``mask`` 1 where ``input_flag`` is 0).
    features : array (N, P, F)
        The encoder's normalised inputs (:func:`pixel_features`; 0 where flagged).
    input_flag : array (N, P) int32
        Bits of :data:`bayesfluo.scene.grid.INPUT_FLAGS` (padding pixels ``masked``).
    """

    patches: Patch
    features: jax.Array
    input_flag: jax.Array


@partial(jax.jit, static_argnames=("patch_size", "n_cols", "n_patches", "with_radiance"))
def _prepare(exp, rad, mask_flag, sza, vza, raa, surf, sens, ndvi, noise, limits, mean, sd,
             resample=None, exp_scene=None, *, patch_size: int, n_cols: int,
             n_patches: int, with_radiance: bool):
    """Input flags and guide inputs of image rows in one compiled pass, cut into patches.

    ``rad`` (rows, nx, B) as read; ``mask_flag`` (rows, nx) the ``masked`` and
    ``invalid_ancillary`` bits of each pixel; the geometry (degrees, m) and NDVI
    (rows, nx); ``noise`` = (a, b, reference radiance); ``limits`` = (lowest, saturation)
    radiance. Returns the input flags (the bits of :data:`INPUT_FLAGS`, from
    :func:`bayesfluo.scene.grid.flag_pixels` with the reference spectrum, so spikes and
    dropouts are flagged too) and, in patches (``n_patches``, P, ...; padding pixels
    flagged ``masked``, zero otherwise), the flags, the encoder's features
    (:func:`pixel_features` with the reference spectrum expanded at each pixel's
    geometry; zero where flagged), NDVI and (``with_radiance``) the radiance (zero where
    flagged). ``resample`` (B_guide, B) resamples a scene on its own band grid onto the
    guide's (:func:`bayesfluo.scene.bands.resampling_matrix`) for the flags and features;
    the radiance stays on the scene's grid. What is resampled is the ratio of the radiance
    to the reference spectrum on the scene's grid (``exp_scene``, the reference expansion
    of the model on that grid), multiplied back by the reference on the guide's grid: the
    O2 lines, which linear interpolation of the radiance smears (a shifted grid, another
    FWHM or sampling step, bands bridged over a gap), are the reference's, and only the
    smooth ratio is interpolated.
    """
    ref = expand_reference(exp, sza, vza, surf, sens)
    rad_g = rad if resample is None else ratio_resample(
        rad, ref, expand_reference(exp_scene, sza, vza, surf, sens), resample)
    # the reference spectrum also judges each band against the pixel's other bands
    flag, rad_g = flag_pixels(rad_g, mask_flag, limits, ref, noise[:2])
    ok = (flag == 0)[..., None]
    anc = ancillary_inputs(sza, vza, raa, surf, sens, noise[0], noise[1], ndvi, noise[2])
    feats = pixel_features(rad_g, anc, mean, sd, ref)
    feats = jnp.where(ok, feats, 0.0)
    cut = partial(cut_patches, patch_size=patch_size, n_cols=n_cols, n_patches=n_patches)
    out = dict(flag=flag, input_flag=cut(flag, fill=INPUT_FLAGS["masked"]),
               features=cut(feats), ndvi=cut(ndvi))
    if with_radiance:
        out["radiance"] = cut(rad_g if resample is None else jnp.where(ok, rad, 0.0))
    return out


_EXPANSION_VALUES: dict = {}
_EXPANSIONS: dict = {}
_EXPANSION_FUNCTIONS = 8   # compiled reference expansions kept (a model and grid each)


def _expansion_about(model: SifModel, centre: tuple) -> ReferenceExpansion:
    """The reference expansion about ``centre``, computed once per forward model,
    configuration and centre (every chunk of a scene shares its centre)."""
    fm, cfg = model.fm, model.cfg
    key = (id(fm), repr(cfg), centre)
    if key not in _EXPANSION_VALUES:
        if len(_EXPANSION_VALUES) > 64:
            _EXPANSION_VALUES.clear()
        _EXPANSION_VALUES[key] = (fm, _reference_expansion_jit(model)(
            *(jnp.float32(c) for c in centre)))
    return _EXPANSION_VALUES[key][1]


def _reference_expansion_jit(model: SifModel):
    """Jitted :func:`reference_expansion` about a chunk's mean geometry (compiled once
    per forward model and configuration; the model is kept alive with it)."""
    key = (id(model.fm), repr(model.cfg))
    if key not in _EXPANSIONS:
        # bounded: scenes on their own band grids (a model each,
        # :func:`bayesfluo.scene.bands.model_on_scene_grid`) would otherwise keep one
        # compiled function per grid alive, and a world phase of hundreds of perturbed
        # grids ran out of memory for compiled code
        if len(_EXPANSIONS) >= _EXPANSION_FUNCTIONS:
            _EXPANSIONS.clear()
        _EXPANSIONS[key] = (model, jax.jit(lambda *g: reference_expansion(model, *g)))
    return _EXPANSIONS[key][1]


def read_guide_rows(scene: xr.Dataset, rows: slice, model: SifModel,
                    bands: SceneBands | None = None) -> PixelRows:
    """The image rows ``rows`` of a scene as :func:`guide_inputs` reads them: on the
    scene's usable bands (``bands``, :func:`bayesfluo.scene.bands.scene_bands`), pixel by
    pixel (:func:`bayesfluo.scene.grid.read_rows`). The only part of the guide's inputs
    that reads the file: a reading thread can run it ahead of the computation."""
    bands = scene_bands(scene, model.instrument) if bands is None else bands
    if not same_grid(bands, model, scene.sizes["band"]):
        scene = scene.isel(band=bands.index)
    return read_rows(scene, rows)


def guide_inputs(scene: xr.Dataset, grid: PatchGrid, rows: slice, model: SifModel,
                 feature_mean: ArrayLike, feature_sd: ArrayLike, reference_radiance: float,
                 centre: tuple | None = None, *, n_patches: int | None = None,
                 with_radiance: bool = True, device: bool = False,
                 bands: SceneBands | None = None, pixels: PixelRows | None = None
                 ) -> GuideInputs:
    """The patches of the image rows ``rows`` (whole patch rows) of a scene and the
    guide's inputs for them, flagging the pixels whose input is unusable.

    Input flags, encoder features and the cutting into patches are one compiled pass.

    Parameters
    ----------
    scene : xarray.Dataset
        A scene (y, x, band) of the model's instrument
        (:func:`bayesfluo.scene.grid.check_scene_for_model`).
    grid : PatchGrid
        The scene's patches.
    rows : slice
        Image rows (a whole number of patch rows; the last may be short).
    model : SifModel
        The guide's model (its prior atmosphere makes the reference spectra).
    feature_mean, feature_sd : array_like (F,)
        The guide's input normalisation.
    reference_radiance : float
        The instrument's reference radiance, mW m-2 sr-1 nm-1.
    centre : tuple of float, optional
        Geometry about which the reference spectra are expanded
        (:func:`bayesfluo.scene.grid.reference_centre` of the whole scene by default, so
        that results do not depend on how a scene is cut into chunks).
    n_patches : int, optional
        Pad with masked patches to this many (padding patches take the last patch's
        geometry, noise and prior pressure).
    with_radiance : bool
        Include the radiance (needed by the fit check and the refinement).
    device : bool
        Keep the arrays cut into patches (``radiance``, ``mask``, ``ndvi``, ``features``,
        ``input_flag``) as JAX arrays (no host copy); else everything is numpy.
    bands : SceneBands, optional
        The scene's usable bands (:func:`bayesfluo.scene.bands.scene_bands`; found here
        when not given). On a grid other than the model's, the guide reads the spectra
        resampled onto its grid and the radiance of the patches (the likelihood's) is
        the scene's usable bands.
    pixels : PixelRows, optional
        The rows already read (:func:`read_guide_rows` of the same ``scene``, ``rows`` and
        ``bands``; for example by a thread reading the next chunk while this one is
        computed): then nothing is read from ``scene`` here.

    Returns
    -------
    GuideInputs
    """
    bands = scene_bands(scene, model.instrument) if bands is None else bands
    resample = exp_scene = model_s = None
    if not same_grid(bands, model, scene.sizes["band"]):
        scene = scene.isel(band=bands.index)
        resample = jnp.asarray(resampling_matrix(bands.centre_nm, model.fm.band_centre_nm),
                               jnp.float32)
        model_s = model_on_scene_grid(model, bands)
    px = read_rows(scene, rows) if pixels is None else pixels
    ny = px.radiance.shape[0]
    n_patches = n_patches or -(-ny // grid.patch_size) * grid.n_cols
    centre = reference_centre(scene) if centre is None else centre
    exp = _expansion_about(model, tuple(float(c) for c in centre))
    if model_s is not None:
        exp_scene = _expansion_about(model_s, tuple(float(c) for c in centre))
    f32 = partial(np.asarray, dtype=np.float32)
    prep = _prepare(exp, px.radiance, px.mask_flag,
                    *map(f32, (px.sza, px.vza, px.raa, px.surface_altitude,
                               px.sensor_altitude, px.ndvi)),
                    f32([px.noise_a, px.noise_b, reference_radiance]), f32(px.limits),
                    f32(feature_mean), f32(feature_sd), resample, exp_scene,
                    patch_size=grid.patch_size,
                    n_cols=grid.n_cols, n_patches=n_patches, with_radiance=with_radiance)
    patches = assemble_patches(grid, px, np.asarray(prep["flag"]), prep["input_flag"],
                               prep["ndvi"], prep.get("radiance"), sun_distance(scene),
                               n_patches)
    out = GuideInputs(patches, prep["features"], prep["input_flag"])
    if not device:
        out = jax.tree.map(np.asarray, out)
    return out
