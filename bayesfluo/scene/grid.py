"""Scenes cut into patches: the unit that shares an atmosphere in the model and the guide.

A scene of ``ny x nx`` pixels is cut into square patches of ``patch_size`` pixels a side
(the last row and column of patches padded with masked pixels, so every patch has the same
static shape and a retrieval compiles once). Here a band of image rows is read
(:func:`read_rows`), its pixels flagged where their input is unusable
(:func:`flag_pixels`, :data:`INPUT_FLAGS`), cut into patches (:func:`cut_patches`) and made
a batch of :class:`~bayesfluo.model.Patch` (:func:`assemble_patches`); the guide adds its
encoder features to the same compiled pass
(:func:`bayesfluo.inference.guide.guide_inputs`). :func:`patch_of_pixels` makes one patch
of any set of pixels (e.g. for NUTS).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.typing import ArrayLike

from bayesfluo.instruments import get_instrument
from bayesfluo.model import Patch
from bayesfluo.physics.forward import Geometry, standard_pressure_hpa
from bayesfluo.physics.solar import earth_sun_distance_factor

__all__ = ["PatchGrid", "check_scene_for_model", "INPUT_FLAGS", "noise_coefficients",
           "pixel_values", "reference_centre", "PixelRows", "read_rows", "flag_pixels",
           "cut_patches", "assemble_patches", "patch_of_pixels", "patch_geometry",
           "prior_pressure", "prior_pressure_vec", "sun_distance"]

#: Input problems per pixel (bits of ``input_flag``)
INPUT_FLAGS = {"masked": 1, "not_finite": 2, "negative": 4, "saturated": 8}


@dataclass(frozen=True)
class PatchGrid:
    """Square patches over an image of ``shape`` (ny, nx)."""

    shape: tuple[int, int]
    patch_size: int

    @property
    def n_rows(self) -> int:
        """Rows of patches."""
        return -(-self.shape[0] // self.patch_size)

    @property
    def n_cols(self) -> int:
        """Columns of patches."""
        return -(-self.shape[1] // self.patch_size)

    def to_patches(self, a: np.ndarray, fill=0) -> np.ndarray:
        """(ny', nx, ...) image rows (a whole number of patch rows, the last may be
        short) -> (n_patches, P, ...)."""
        s = self.patch_size
        ny = a.shape[0]
        pr = -(-ny // s)
        pad = [(0, pr * s - ny), (0, self.n_cols * s - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, constant_values=fill)
        a = a.reshape((pr, s, self.n_cols, s) + a.shape[2:])
        a = np.moveaxis(a, 2, 1)
        return a.reshape((pr * self.n_cols, s * s) + a.shape[4:])

    def to_image(self, p: np.ndarray, ny: int) -> np.ndarray:
        """Inverse of :meth:`to_patches` for ``ny`` image rows."""
        s = self.patch_size
        pr = p.shape[0] // self.n_cols
        a = p.reshape((pr, self.n_cols, s, s) + p.shape[2:])
        a = np.moveaxis(a, 1, 2).reshape((pr * s, self.n_cols * s) + p.shape[2:])
        return a[:ny, :self.shape[1]]


def noise_coefficients(scene: xr.Dataset) -> tuple[float, float]:
    """``(a, b)`` of the noise variance ``a L + b``: the scene's attributes ``noise_a``,
    ``noise_b`` where given, else the instrument's defaults."""
    if "noise_a" in scene.attrs and "noise_b" in scene.attrs:
        return float(scene.attrs["noise_a"]), float(scene.attrs["noise_b"])
    return get_instrument(scene.attrs["instrument"]).noise_coefficients()


def check_scene_for_model(scene: xr.Dataset, instrument: str, band_centre_nm) -> None:
    """Raise ValueError naming the problem if the scene cannot be retrieved with a model
    for ``instrument`` (band grid, layout, needed variables)."""
    inst = scene.attrs.get("instrument")
    if inst != instrument:
        raise ValueError(f"the scene is from {inst!r}, the model is for {instrument!r}")
    if "y" not in scene["radiance"].dims or "x" not in scene["radiance"].dims:
        raise ValueError("retrieve needs an image (y, x, band); top-of-canopy time series "
                         "(FloX) need the measured-irradiance model, not available yet")
    wl = np.asarray(scene["wavelength"].values, np.float64)
    want = np.asarray(band_centre_nm, np.float64)
    if wl.size != want.size:
        raise ValueError(f"the scene has {wl.size} bands, the {instrument} model expects "
                         f"{want.size} ({want[0]:.2f}-{want[-1]:.2f} nm)")
    off = float(np.max(np.abs(wl - want)))
    if off > 0.01:
        raise ValueError(f"the scene's wavelength grid differs from the {instrument} model's "
                         f"by up to {off:.3g} nm (more than 0.01 nm)")
    if scene["wavelength"].attrs.get("medium", "air") != "air":
        raise ValueError("the scene's wavelengths are in vacuum; the model's are in air")
    for v in ("ndvi", "sza", "vza", "surface_altitude", "sensor_altitude"):
        if v not in scene:
            raise ValueError(f"the scene has no {v!r} (needed by the model)")


def reference_centre(scene: xr.Dataset) -> tuple[float, float, float, float]:
    """Mean sza, vza (degrees), surface and sensor altitude (m) of a scene: where the
    guide's reference spectrum is expanded
    (:func:`bayesfluo.inference.guide.reference_expansion`)."""
    rows = slice(None)
    return tuple(float(np.nanmean(pixel_values(scene, v, rows)))
                 for v in ("sza", "vza", "surface_altitude", "sensor_altitude"))


def pixel_values(scene: xr.Dataset, name: str, rows: slice,
                 default: float | None = None) -> np.ndarray:
    """A per-pixel variable of the image rows ``rows`` as a (rows, nx) float64 array,
    broadcast from a scalar, a (y,) or a (x,) variable; ``default`` everywhere where
    the scene has no ``name``."""
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    n = len(range(*rows.indices(ny)))
    if name not in scene:
        return np.full((n, nx), default, np.float64)
    v = scene[name]
    if v.ndim == 0:
        return np.full((n, nx), float(v), np.float64)
    if v.dims == ("y",):
        return np.repeat(np.asarray(v.values[rows], np.float64)[:, None], nx, 1)
    if v.dims == ("x",):
        return np.repeat(np.asarray(v.values, np.float64)[None], n, 0)
    return np.asarray(v.transpose("y", "x").values[rows], np.float64)


class PixelRows(NamedTuple):
    """What a band of image rows holds, per pixel, as read (see :func:`read_rows`).

    Attributes
    ----------
    radiance : numpy.ndarray (rows, nx, B) float32
        At-sensor radiance as read, mW m-2 sr-1 nm-1 (not yet checked).
    mask_flag : numpy.ndarray (rows, nx) int32
        The ``masked`` bit of :data:`INPUT_FLAGS` where the scene's ``mask`` is 0.
    sza, vza, raa, surface_altitude, sensor_altitude : numpy.ndarray (rows, nx) float64
        Sun and view zenith and relative azimuth (degrees), surface and sensor altitude
        (m).
    ndvi : numpy.ndarray (rows, nx) float64
        NDVI (NaN read as 0).
    noise_a, noise_b : float
        Noise variance ``a L + b`` of the scene (:func:`noise_coefficients`).
    limits : tuple of float
        Lowest believable and saturation radiance, mW m-2 sr-1 nm-1 (see
        :func:`flag_pixels`).
    """

    radiance: np.ndarray
    mask_flag: np.ndarray
    sza: np.ndarray
    vza: np.ndarray
    raa: np.ndarray
    surface_altitude: np.ndarray
    sensor_altitude: np.ndarray
    ndvi: np.ndarray
    noise_a: float
    noise_b: float
    limits: tuple[float, float]


def read_rows(scene: xr.Dataset, rows: slice) -> PixelRows:
    """Read the image rows ``rows`` of a scene (y, x, band) pixel by pixel."""
    rad = np.asarray(scene["radiance"].transpose("y", "x", "band").values[rows], np.float32)
    ny, nx = rad.shape[:2]
    mask_flag = (np.where(pixel_values(scene, "mask", rows) > 0, 0, INPUT_FLAGS["masked"])
                 .astype(np.int32) if "mask" in scene else np.zeros((ny, nx), np.int32))
    a, b = noise_coefficients(scene)
    # dark targets (water) legitimately dip below zero by noise: only radiance more than
    # five read-noise sd below zero is an error
    neg_limit = -5.0 * np.sqrt(b) if b > 0 else 0.0
    sat = scene["radiance"].attrs.get("saturation_radiance")
    sat = np.inf if sat is None else float(sat)
    raa = (pixel_values(scene, "saa", rows, 0.0) - pixel_values(scene, "vaa", rows, 0.0)) % 360
    return PixelRows(rad, mask_flag, pixel_values(scene, "sza", rows),
                     pixel_values(scene, "vza", rows), raa,
                     pixel_values(scene, "surface_altitude", rows),
                     pixel_values(scene, "sensor_altitude", rows),
                     np.nan_to_num(pixel_values(scene, "ndvi", rows), nan=0.0), a, b,
                     (neg_limit, sat))


def flag_pixels(radiance: jax.Array, mask_flag: jax.Array, limits: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Input flags (bits of :data:`INPUT_FLAGS`) of pixels (..., B) and the radiance with
    flagged pixels zeroed (traceable: part of a caller's compiled pass).

    ``mask_flag`` holds the ``masked`` bit; ``limits`` = (lowest, saturation) radiance:
    a pixel with a finite value below the lowest is ``negative``, one at or above a
    finite saturation ``saturated``, one with a non-finite value ``not_finite``.
    """
    # negative and saturated judged on a pixel's finite values (an infinity is not a
    # saturation reading); one min and one max reduction instead of three any/all passes
    finite = jnp.isfinite(radiance)
    lo = jnp.min(jnp.where(finite, radiance, jnp.inf), -1)
    hi = jnp.max(jnp.where(finite, radiance, -jnp.inf), -1)
    flag = (mask_flag
            | jnp.where(jnp.isfinite(jnp.sum(radiance, -1)), 0, INPUT_FLAGS["not_finite"])
            | jnp.where(lo < limits[0], INPUT_FLAGS["negative"], 0)
            | jnp.where((hi >= limits[1]) & jnp.isfinite(limits[1]),
                        INPUT_FLAGS["saturated"], 0))
    return flag, jnp.where((flag == 0)[..., None], radiance, 0.0)


def cut_patches(a: ArrayLike, patch_size: int, n_cols: int, n_patches: int,
                fill: int | float = 0) -> jax.Array:
    """Image rows (rows, nx, ...) -> (``n_patches``, P, ...) (traceable: the JAX form of
    :meth:`PatchGrid.to_patches`, padded with ``fill`` up to ``n_patches`` patches of
    ``n_cols`` per patch row)."""
    s = patch_size
    ny, nx = a.shape[:2]
    a = jnp.pad(a, [(0, n_patches // n_cols * s - ny), (0, n_cols * s - nx)]
                + [(0, 0)] * (a.ndim - 2), constant_values=fill)
    a = a.reshape((n_patches // n_cols, s, n_cols, s) + a.shape[2:])
    return jnp.moveaxis(a, 2, 1).reshape((n_patches, s * s) + a.shape[4:])


def assemble_patches(grid: PatchGrid, px: PixelRows, flag: np.ndarray, input_flag: ArrayLike,
                     ndvi: ArrayLike, radiance: ArrayLike | None, sun_distance_factor: float,
                     n_patches: int | None = None) -> Patch:
    """The batch of patches (leading dim ``n_patches``) of image rows read by
    :func:`read_rows`, from their per-pixel ``flag`` (rows, nx) and the pixel arrays
    already cut into patches (``input_flag``, ``ndvi`` (N, P), ``radiance`` (N, P, B) or
    None; :func:`cut_patches`).

    A patch's geometry is the mean over its usable pixels (over all of them where none is
    usable: its outputs are masked anyway); its prior surface pressure is the standard
    atmosphere's at its mean surface altitude. Padding patches beyond the image take the
    last patch's geometry, noise and prior pressure. ``mask`` is 1 where ``input_flag``
    is 0. The arrays cut into patches stay as they are given (JAX arrays stay on the
    device); the per-patch values are numpy float32.
    """
    ny = flag.shape[0]
    n_real = -(-ny // grid.patch_size) * grid.n_cols
    n_patches = n_patches or n_real
    P = grid.to_patches  # noqa: N806
    flag_p = P(flag, fill=INPUT_FLAGS["masked"])
    mask_p = (flag_p == 0).astype(np.float32)
    w = np.maximum(mask_p.sum(1), 1.0)

    def patch_mean(v):
        vp = P(v)
        # patches without a usable pixel take the mean of their pixels (outputs are masked)
        any_ok = mask_p.sum(1) > 0
        m_ok = (vp * mask_p).sum(1) / w
        m_all = vp.sum(1) / np.maximum(P(np.ones_like(v)).sum(1), 1.0)
        m = np.where(any_ok, m_ok, m_all)
        return np.pad(m, (0, n_patches - n_real), mode="edge")

    geom = (patch_mean(px.sza), patch_mean(px.vza), patch_mean(px.raa),
            patch_mean(px.surface_altitude), patch_mean(px.sensor_altitude),
            np.full(n_patches, sun_distance_factor))
    return Patch(radiance=radiance, mask=(input_flag == 0).astype(jnp.float32), ndvi=ndvi,
                 geometry=Geometry(*(g.astype(np.float32) for g in geom)),
                 noise_a=np.full(n_patches, px.noise_a, np.float32),
                 noise_b=np.full(n_patches, px.noise_b, np.float32),
                 surface_pressure0=np.asarray(prior_pressure_vec(geom[3]), np.float32))


def patch_geometry(sza, vza, raa, surface_altitude, sensor_altitude, sun_distance=1.0
                   ) -> Geometry:
    """The mean geometry of a patch (degrees, m) as a :class:`Geometry` of float32
    scalars."""
    m = lambda v: jnp.asarray(np.mean(np.asarray(v, dtype=np.float64)), jnp.float32)  # noqa
    return Geometry(m(sza), m(vza), m(raa), m(surface_altitude), m(sensor_altitude),
                    m(sun_distance))


def prior_pressure(surface_altitude_m) -> jnp.ndarray:
    """Prior mean of the surface pressure of a patch (hPa): the standard atmosphere at its
    mean surface altitude (m)."""
    return standard_pressure_hpa(jnp.asarray(np.mean(surface_altitude_m), jnp.float32))


def patch_of_pixels(scene: xr.Dataset, rows: np.ndarray, cols: np.ndarray,
                    snr: float | None = None) -> Patch:
    """The :class:`~bayesfluo.model.Patch` of the pixels ``(rows, cols)`` of a scene.

    Geometry is the patch mean (the model has one atmosphere per patch); the noise
    coefficients are the scene's (``noise_a``, ``noise_b`` attributes) or the
    instrument's at ``snr``.

    A top-of-canopy time series (``radiance`` over (time, band), with the measured
    ``irradiance``) gives the time steps ``rows`` (``cols`` must be 0) as the patch's
    pixels, with their ``irradiance`` (mW m-2 nm-1); time steps whose radiance or
    irradiance is not finite, or whose irradiance is not positive, are masked. The
    irradiance noise is the scene's ``irradiance_noise_a``/``_b`` attributes (variance
    of ``E/pi``) where given, else the radiance's.

    Raises
    ------
    KeyError
        If the scene lacks a variable the model needs.
    ValueError
        If a time series lacks its irradiance or ``cols`` are not 0.
    """
    rows = np.asarray(rows, dtype=int)
    cols = np.asarray(cols, dtype=int)
    tower = "time" in scene["radiance"].dims

    def pick(name, default=None):
        if name not in scene:
            if default is None:
                raise KeyError(f"scene has no variable {name!r}")
            return np.full(rows.size, default, dtype=np.float64)
        v = np.asarray(scene[name].values, dtype=np.float64)
        if v.ndim == 0:
            return np.full(rows.size, float(v))
        if v.ndim == 1:  # (y,) e.g. sensor altitude along track; (time,) for a tower
            return v[rows]
        return v[rows, cols]

    if tower:
        if np.any(cols != 0):
            raise ValueError("a top-of-canopy time series has one column: give its time "
                             "steps as rows and 0 as columns")
        if "irradiance" not in scene:
            raise ValueError("a top-of-canopy time series needs the measured downwelling "
                             "'irradiance' (time, band), mW m-2 nm-1")
        rad = np.asarray(scene["radiance"].transpose("time", "band").values[rows],
                         dtype=np.float32)
        irr = np.asarray(scene["irradiance"].transpose("time", "band").values[rows],
                         dtype=np.float32)
    else:
        rad = np.asarray(scene["radiance"].values[rows, cols], dtype=np.float32)
    mask = pick("mask", 1.0) > 0
    mask &= np.all(np.isfinite(rad), axis=-1)
    rad = np.where(np.isfinite(rad), rad, 0.0).astype(np.float32)
    if "ndvi" not in scene:
        raise KeyError("scene has no 'ndvi' (the SIF prior needs it; give it as an "
                       "ancillary variable, e.g. from the sensor's VNIR module)")
    if snr is not None:
        a, b = get_instrument(scene.attrs["instrument"]).noise_coefficients(snr)
    else:
        a, b = noise_coefficients(scene)
    raa = (pick("saa", 0.0 if tower else None) - pick("vaa", 0.0)) % 360.0
    surf = pick("surface_altitude")
    out = Patch(
        radiance=jnp.asarray(rad), mask=jnp.asarray(mask, jnp.float32),
        ndvi=jnp.asarray(pick("ndvi"), jnp.float32),
        geometry=patch_geometry(pick("sza"), pick("vza", 0.0 if tower else None), raa, surf,
                                pick("sensor_altitude"), sun_distance(scene)),
        noise_a=jnp.float32(a), noise_b=jnp.float32(b),
        surface_pressure0=prior_pressure(surf))
    if tower:
        ok = np.all(np.isfinite(irr) & (irr > 0), axis=-1)
        mask &= ok
        out = out.replace(
            mask=jnp.asarray(mask, jnp.float32),
            irradiance=jnp.asarray(np.where(ok[:, None], irr, 1.0), jnp.float32),
            irradiance_noise_a=jnp.float32(scene.attrs.get("irradiance_noise_a", a)),
            irradiance_noise_b=jnp.float32(scene.attrs.get("irradiance_noise_b", b)))
    return out



def prior_pressure_vec(surface_altitude_m) -> np.ndarray:
    """Prior mean of the surface pressure of each patch (hPa): the standard atmosphere at
    its mean surface altitude (m)."""
    return np.asarray(standard_pressure_hpa(jnp.asarray(surface_altitude_m, jnp.float32)))


def sun_distance(scene: xr.Dataset) -> float:
    """Earth-Sun distance factor of the scene's ``day_of_year`` (1 when unknown)."""
    doy = scene.attrs.get("day_of_year")
    return float(earth_sun_distance_factor(int(doy))) if doy is not None else 1.0
