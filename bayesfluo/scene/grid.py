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

import functools
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.typing import ArrayLike

from bayesfluo.instruments import INSTRUMENTS, get_instrument
from bayesfluo.model import Patch
from bayesfluo.physics.forward import Geometry, standard_pressure_hpa
from bayesfluo.physics.solar import (
    earth_sun_distance_factor,
    solar_irradiance,
    solar_range_air_nm,
)
from bayesfluo.scene.bands import scene_bands

__all__ = ["PatchGrid", "check_scene_for_model", "SceneWindowError", "INPUT_FLAGS",
           "ANCILLARY_RANGES", "OUTLIER_FACTOR", "OUTLIER_SIGMA", "OUTLIER_WINDOW",
           "noise_coefficients",
           "pixel_values", "reference_centre", "ancillary_valid", "radiance_ceiling", "PixelRows",
           "read_rows", "flag_pixels", "running_median", "cut_patches", "assemble_patches",
           "patch_of_pixels",
           "patch_geometry", "prior_pressure", "prior_pressure_vec", "sun_distance",
           "REFLECTANCE_LEVEL_RANGE", "apparent_reflectance_level", "check_radiance_level"]

#: Input problems per pixel (bits of ``input_flag``): ``masked`` by the user's mask (or
#: padding), a ``not_finite`` radiance, a band ``negative`` beyond noise, a band at or
#: above the ``saturated`` level (the scene's ``saturation_radiance``, or a physical
#: ceiling, :func:`radiance_ceiling`), ``invalid_ancillary`` (a geometry value or the
#: NDVI missing or outside :data:`ANCILLARY_RANGES`), ``outlier_band`` (a band far from
#: what the pixel's other bands imply: a spike or a dropout, see :func:`flag_pixels`).
INPUT_FLAGS = {"masked": 1, "not_finite": 2, "negative": 4, "saturated": 8,
               "invalid_ancillary": 16, "outlier_band": 32}

#: Valid range of each ancillary variable (bounds included, but zenith angles below 90
#: degrees and the sensor below 1e6 m): angles in degrees, altitudes in m above sea
#: level; the sensor must also be above the surface (:func:`ancillary_valid`).
#: ``day_of_year`` is a scene attribute (checked by :func:`sun_distance`).
ANCILLARY_RANGES = {"sza": (0.0, 90.0), "vza": (0.0, 90.0), "saa": (-360.0, 360.0),
                    "vaa": (-360.0, 360.0), "surface_altitude": (-500.0, 9000.0),
                    "sensor_altitude": (-500.0, 1.0e6), "day_of_year": (1, 366),
                    "ndvi": (-1.0, 1.0)}

#: A band is an ``outlier_band`` where it lies more than this factor (above or below)
#: away from the level the pixel's other bands imply, and more than
#: :data:`OUTLIER_SIGMA` noise sd.
OUTLIER_FACTOR = 2.5
#: See :data:`OUTLIER_FACTOR`.
OUTLIER_SIGMA = 8.0
#: Bands of the running median an ``outlier_band`` is judged against (fixed: a
#: compare-exchange network of 7).
OUTLIER_WINDOW = 7

# values given to the geometry of a pixel whose ancillary input is invalid (its outputs
# are masked; finite values keep NaN out of every compiled pass)
_NEUTRAL = {"sza": 30.0, "vza": 0.0, "raa": 0.0, "surface_altitude": 0.0,
            "sensor_altitude": 1000.0, "ndvi": 0.0}


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


class SceneWindowError(ValueError):
    """A scene whose window does not hold the model's. ``fits`` names the instrument of
    the scene's own window (a model for it would take the scene), where known."""

    fits: str | None = None


def check_scene_for_model(scene: xr.Dataset, instrument: str, band_centre_nm) -> None:
    """Raise ValueError naming the problem if the scene cannot be retrieved with a model
    for ``instrument`` (instrument, band grid, layout, needed variables).

    A scene of the instrument's family whose window holds the model's (a
    ``hyplant-fluo`` scene for the ``hyplant-fluo-o2a`` model) is accepted and cut to the
    model's window; the band grid may be the scene's own (shifted, other widths, other
    sampling, bands missing or masked: :func:`bayesfluo.scene.bands.scene_bands`) as
    long as it covers the model's window (``band_centre_nm``: the model's nominal band
    centres, nm, used only in messages)."""
    inst = scene.attrs.get("instrument")
    if "y" not in scene["radiance"].dims or "x" not in scene["radiance"].dims:
        raise ValueError(
            f"the {instrument!r} model retrieves images (y, x, band); a top-of-canopy "
            f"time series ({inst or 'FloX'}, with measured irradiance) needs a tower's "
            "model: --model flox")
    if not isinstance(inst, str) or not (inst == instrument
                                         or instrument.startswith(inst + "-")):
        known = {n: get_instrument(n).window_nm for n in (inst, instrument)
                 if isinstance(n, str) and n in INSTRUMENTS}
        if len(known) == 2 and (known[inst][0] > known[instrument][0]
                                or known[inst][1] < known[instrument][1]):
            (a, b), (c, d) = known[inst], known[instrument]
            err = SceneWindowError(
                f"the scene is from {inst!r} ({a:g}-{b:g} nm), which does not hold the "
                f"window of the model for {instrument!r} ({c:g}-{d:g} nm): retrieve it "
                f"with a model for {inst!r}")
            err.fits = inst
            raise err
        raise ValueError(f"the scene is from {inst!r}, the model is for {instrument!r}")
    scene_bands(scene, instrument)
    if scene["wavelength"].attrs.get("medium", "air") != "air":
        raise ValueError("the scene's wavelengths are in vacuum; the model's are in air")
    for v in ("ndvi", "sza", "vza", "surface_altitude", "sensor_altitude"):
        if v not in scene:
            raise ValueError(f"the scene has no {v!r} (needed by the model)")


def reference_centre(scene: xr.Dataset) -> tuple[float, float, float, float]:
    """Mean sza, vza (degrees), surface and sensor altitude (m) of a scene over its
    pixels with valid ancillary inputs (:func:`ancillary_valid`; neutral values where
    none is): where the guide's reference spectrum is expanded
    (:func:`bayesfluo.inference.guide.reference_expansion`)."""
    rows = slice(None)
    ok = ancillary_valid(scene, rows)
    names = ("sza", "vza", "surface_altitude", "sensor_altitude")
    if not ok.any():
        return tuple(_NEUTRAL[v] for v in names)
    return tuple(float(np.mean(pixel_values(scene, v, rows)[ok])) for v in names)


def _in_range(name: str, v: np.ndarray) -> np.ndarray:
    """Where the values ``v`` of an ancillary variable are valid
    (:data:`ANCILLARY_RANGES`)."""
    lo, hi = ANCILLARY_RANGES[name]
    good = np.isfinite(v) & (v >= lo) & (v <= hi)
    if name in ("sza", "vza", "sensor_altitude"):
        good &= v < hi
    return good


def ancillary_valid(scene: xr.Dataset, rows: slice) -> np.ndarray:
    """(rows, nx) bool: where every ancillary input of a pixel (sza, vza, saa, vaa,
    surface and sensor altitude, NDVI; those the scene has) is finite and inside
    :data:`ANCILLARY_RANGES`, the zenith angles below 90 degrees and the sensor above the
    surface."""
    ok = None
    for name in ("sza", "vza", "saa", "vaa", "surface_altitude", "sensor_altitude", "ndvi"):
        if name not in scene:
            continue
        good = _in_range(name, pixel_values(scene, name, rows))
        ok = good if ok is None else ok & good
    if "surface_altitude" in scene and "sensor_altitude" in scene:
        ok &= (pixel_values(scene, "sensor_altitude", rows)
               > pixel_values(scene, "surface_altitude", rows))
    if ok is None:
        ny, nx = scene.sizes["y"], scene.sizes["x"]
        ok = np.ones((len(range(*rows.indices(ny))), nx), bool)
    return ok


@functools.lru_cache(maxsize=32)
def _solar_max(lo_nm: float, hi_nm: float) -> float:
    s_lo, s_hi = solar_range_air_nm()
    lo, hi = max(lo_nm - 1.0, s_lo + 0.5), min(hi_nm + 1.0, s_hi - 0.5)
    if not hi > lo:  # outside the shipped spectrum: its overall maximum
        lo, hi = s_lo + 0.5, s_hi - 0.5
    return float(np.max(solar_irradiance(np.linspace(lo, hi, int((hi - lo) / 0.05) + 2))))


def radiance_ceiling(wavelength_nm) -> float:
    """Highest believable at-sensor radiance (mW m-2 sr-1 nm-1) at these wavelengths:
    three times that of a white Lambertian surface under an overhead sun at the top of
    the atmosphere at perihelion (``3 E0 d / pi``, E0 the solar irradiance's maximum
    in the band range, 0.05 nm bins). Anything above it is not light the instrument
    can have seen (a fill value, a saturated reading, wrong units)."""
    wl = np.asarray(wavelength_nm, np.float64)
    return 3.0 * 1.0343 * _solar_max(round(float(wl.min()), 1),
                                     round(float(wl.max()), 1)) / np.pi


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
        The ``masked`` bit of :data:`INPUT_FLAGS` where the scene's ``mask`` is 0, the
        ``invalid_ancillary`` bit where an ancillary input is invalid
        (:func:`ancillary_valid`).
    sza, vza, raa, surface_altitude, sensor_altitude : numpy.ndarray (rows, nx) float64
        Sun and view zenith and relative azimuth (degrees), surface and sensor altitude
        (m); neutral finite values where the pixel's ancillary input is invalid (its
        outputs are masked).
    ndvi : numpy.ndarray (rows, nx) float64
        NDVI (0 where the ancillary input is invalid).
    noise_a, noise_b : float
        Noise variance ``a L + b`` of the scene (:func:`noise_coefficients`).
    limits : tuple of float
        Lowest believable and saturation radiance, mW m-2 sr-1 nm-1 (see
        :func:`flag_pixels`; the saturation level is the scene's
        ``saturation_radiance`` or the physical ceiling of :func:`radiance_ceiling`,
        whichever is lower).
    smile_shift, smile_fwhm : numpy.ndarray (rows, nx) float64
        The instrument's characterised smile at each pixel's detector column (spectral
        shift, nm; FWHM scale, 1; :func:`pixel_smile`).
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
    smile_shift: np.ndarray | None = None
    smile_fwhm: np.ndarray | None = None


def pixel_smile(scene: xr.Dataset, rows: slice | np.ndarray,
                cols: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The instrument's characterised smile at each pixel's detector column
    (:meth:`bayesfluo.instruments.Instrument.smile`): ``(shift_nm, fwhm_scale)`` of the
    pixels ``rows`` (a slice of image rows: (rows, nx); or pixel indices with ``cols``).

    Zero shift and unit scale where the scene has no ``column`` coordinate, its
    instrument is not a known one, or its attribute ``smile_corrected`` is true (its
    bands are already on one grid across track)."""
    tower = "time" in scene["radiance"].dims
    if cols is None:
        ny = len(range(*rows.indices(scene.sizes["y"]))) if isinstance(rows, slice) else 1
        shape = (ny, scene.sizes.get("x", 1))
    else:
        shape = np.shape(rows)
    zero, one = np.zeros(shape), np.ones(shape)
    if tower or "column" not in scene.coords or scene.attrs.get("smile_corrected"):
        return zero, one
    try:
        inst = get_instrument(str(scene.attrs.get("instrument", "")))
    except (KeyError, ValueError):
        return zero, one
    col = np.asarray(scene["column"].values, dtype=np.float64)
    if col.ndim != 1:
        return zero, one
    col = col[np.asarray(cols)] if cols is not None else np.broadcast_to(col, shape)
    shift, fwhm = inst.smile(col)
    return np.broadcast_to(shift, shape), np.broadcast_to(fwhm, shape)


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
    sat = min(sat, radiance_ceiling(scene["wavelength"].values))
    ok = ancillary_valid(scene, rows)
    mask_flag = mask_flag | np.where(ok, 0, INPUT_FLAGS["invalid_ancillary"]).astype(np.int32)
    raa = (pixel_values(scene, "saa", rows, 0.0) - pixel_values(scene, "vaa", rows, 0.0)) % 360
    values = {"sza": pixel_values(scene, "sza", rows), "vza": pixel_values(scene, "vza", rows),
              "raa": raa, "surface_altitude": pixel_values(scene, "surface_altitude", rows),
              "sensor_altitude": pixel_values(scene, "sensor_altitude", rows),
              "ndvi": pixel_values(scene, "ndvi", rows, 0.0)}
    values = {k: np.where(ok, v, _NEUTRAL[k]) for k, v in values.items()}
    smile_shift, smile_fwhm = pixel_smile(scene, rows)
    return PixelRows(rad, mask_flag, values["sza"], values["vza"], values["raa"],
                     values["surface_altitude"], values["sensor_altitude"], values["ndvi"],
                     a, b, (neg_limit, sat), smile_shift, smile_fwhm)


def flag_pixels(radiance: jax.Array, mask_flag: jax.Array, limits: jax.Array,
                reference: jax.Array | None = None, noise: ArrayLike | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """Input flags (bits of :data:`INPUT_FLAGS`) of pixels (..., B) and the radiance with
    flagged pixels zeroed (traceable: part of a caller's compiled pass).

    ``mask_flag`` holds the ``masked`` (and ``invalid_ancillary``) bits; ``limits`` =
    (lowest, saturation) radiance: a pixel with a finite value below the lowest is
    ``negative``, one at or above a finite saturation ``saturated``, one with a
    non-finite value ``not_finite``.

    With ``reference`` (..., B), the log radiance of a grey surface at each pixel's
    geometry (the guide's reference spectrum), and ``noise`` = (a, b) of the noise
    variance ``a L + b``, each band is also compared with the level its neighbours imply:
    ``L_hat = m exp(reference)``, ``m`` the running median of ``L / exp(reference)`` over
    :data:`OUTLIER_WINDOW` bands (robust to up to 3 adjacent bad bands; a smooth trend
    such as the red edge is followed). A band below
    ``L_hat / OUTLIER_FACTOR - OUTLIER_SIGMA sd`` or above
    ``OUTLIER_FACTOR L_hat + OUTLIER_SIGMA sd`` (``sd`` the noise sd at ``L_hat``) is a
    spike or a dropout no surface, fluorescence or atmosphere makes: the pixel is
    ``outlier_band`` (and ``negative`` where such a band is below zero). What the model
    produces (fluorescence fill-in, pressure and aerosol departures, a spectral shift of
    0.2 nm: tens of percent in the deepest bands) stays inside the factor: simulated
    HyPlant FLUO (both windows) and DESIS scenes at sun zenith 30-65 deg, sensors at
    0.7-3 km and smile shifts up to 0.2 nm had no band flagged (at a factor 1.5 and 3 sd,
    up to 2 % of the pixels would have been).
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
    if reference is not None:
        shape = jnp.exp(reference)
        level = running_median(radiance / shape, OUTLIER_WINDOW)
        expected = jnp.maximum(level, 0.0) * shape
        sd = jnp.sqrt(noise[0] * expected + noise[1])
        # judged only where the neighbours give a positive level (a dark or negative
        # stretch is the ``negative`` test's)
        low = (level > 0) & (radiance < expected / OUTLIER_FACTOR - OUTLIER_SIGMA * sd)
        high = (level > 0) & (radiance > expected * OUTLIER_FACTOR + OUTLIER_SIGMA * sd)
        out = jnp.any(low | high, -1)
        neg = jnp.any(low & (radiance < 0.0), -1)
        flag = (flag | jnp.where(out, INPUT_FLAGS["outlier_band"], 0)
                | jnp.where(neg, INPUT_FLAGS["negative"], 0))
    return flag, jnp.where((flag == 0)[..., None], radiance, 0.0)


# compare-exchange network of the median of 7 (Devillard, "Fast median search", 1998):
# 13 exchanges, element 3 is the median (each a min and a max over whole arrays: far
# cheaper than sorting)
_MEDIAN7 = ((0, 5), (0, 3), (1, 6), (2, 4), (0, 1), (3, 5), (2, 6), (2, 3), (3, 6), (4, 5),
            (1, 4), (1, 3), (3, 4))


def running_median(x: jax.Array, width: int = 7) -> jax.Array:
    """Median over 7 neighbouring values along the last axis (edges repeated): a
    selection network of 13 exchanges on shifted copies (:data:`_MEDIAN7`), exact, and
    several times cheaper than a sort or ``jnp.median`` per position.

    Parameters
    ----------
    x : jax.Array (..., n)
    width : int
        Must be 7.

    Returns
    -------
    jax.Array (..., n)
    """
    if width != 7:
        raise ValueError("the running median is over 7 values")
    n = x.shape[-1]
    xp = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(3, 3)], mode="edge")
    p = [xp[..., i:i + n] for i in range(7)]
    for i, j in _MEDIAN7:
        p[i], p[j] = jnp.minimum(p[i], p[j]), jnp.maximum(p[i], p[j])
    return p[3]


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
    p0 = np.asarray(prior_pressure_vec(geom[3]), np.float32)

    def pixel_offset(v, centre):
        # each usable pixel's value minus the patch's (0 for masked and padding pixels)
        off = P(v) - centre[:n_real, None]
        return np.pad(np.where(mask_p > 0, off, 0.0), ((0, n_patches - n_real), (0, 0)))

    def pixel_value(v):
        # a pixel's own value (0 for masked and padding pixels)
        return np.pad(np.where(mask_p > 0, P(v), 0.0), ((0, n_patches - n_real), (0, 0)))

    # Patch.pixel_offset: pressure and view zenith relative to the patch's, the smile's
    # own (absolute) shift and FWHM scale - 1
    zero = np.zeros_like(px.sza)
    offset = [pixel_offset(prior_pressure_vec(px.surface_altitude).astype(np.float64), p0),
              pixel_value(zero if px.smile_shift is None else px.smile_shift),
              pixel_value(zero if px.smile_fwhm is None else px.smile_fwhm - 1.0),
              pixel_offset(px.vza, geom[1])]
    return Patch(radiance=radiance, mask=(input_flag == 0).astype(jnp.float32), ndvi=ndvi,
                 geometry=Geometry(*(g.astype(np.float32) for g in geom)),
                 noise_a=np.full(n_patches, px.noise_a, np.float32),
                 noise_b=np.full(n_patches, px.noise_b, np.float32),
                 surface_pressure0=p0,
                 pixel_offset=np.stack(offset, -1).astype(np.float32))


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

    Geometry is the patch mean (the model has one atmosphere per patch) over the pixels
    whose ancillary inputs are valid (:data:`ANCILLARY_RANGES`; the others are masked,
    their NDVI read as 0); the noise coefficients are the scene's (``noise_a``,
    ``noise_b`` attributes) or the instrument's at ``snr``.

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
    # pixels with invalid ancillary inputs are masked and left out of the patch's geometry
    valid = np.ones(rows.size, bool)
    for name in ANCILLARY_RANGES:
        if name in scene and name != "day_of_year":
            valid &= _in_range(name, pick(name))
    if "surface_altitude" in scene and "sensor_altitude" in scene:
        valid &= pick("sensor_altitude") > pick("surface_altitude")
    mask &= valid
    geo_px = valid if valid.any() else np.ones(rows.size, bool)
    rad = np.where(np.isfinite(rad), rad, 0.0).astype(np.float32)
    if "ndvi" not in scene:
        raise KeyError("scene has no 'ndvi' (the SIF prior needs it; give it as an "
                       "ancillary variable, e.g. from the sensor's VNIR module)")
    if snr is not None:
        a, b = get_instrument(scene.attrs["instrument"]).noise_coefficients(snr)
    else:
        a, b = noise_coefficients(scene)
    raa = (pick("saa", 0.0 if tower else None) - pick("vaa", 0.0)) % 360.0
    surf = pick("surface_altitude")[geo_px]
    p0 = prior_pressure(surf)
    offset = None
    if not tower:
        shift, fwhm = pixel_smile(scene, rows, cols)
        vza = pick("vza")
        use = mask & valid
        offset = np.stack([prior_pressure_vec(pick("surface_altitude")) - float(p0), shift,
                           fwhm - 1.0, vza - np.mean(vza[geo_px])], -1)
        offset = jnp.asarray(np.where(use[:, None], offset, 0.0), jnp.float32)
    out = Patch(
        radiance=jnp.asarray(rad), mask=jnp.asarray(mask, jnp.float32),
        ndvi=jnp.asarray(np.where(valid, pick("ndvi"), 0.0), jnp.float32),
        geometry=patch_geometry(pick("sza")[geo_px],
                                pick("vza", 0.0 if tower else None)[geo_px], raa[geo_px],
                                surf, pick("sensor_altitude")[geo_px], sun_distance(scene)),
        noise_a=jnp.float32(a), noise_b=jnp.float32(b),
        surface_pressure0=p0, pixel_offset=offset)
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
    """Earth-Sun distance factor of the scene's ``day_of_year`` (1 when unknown).

    Raises
    ------
    ValueError
        If ``day_of_year`` is not a number in 1-366.
    """
    doy = scene.attrs.get("day_of_year")
    if doy is None:
        return 1.0
    lo, hi = ANCILLARY_RANGES["day_of_year"]
    try:
        ok = lo <= float(doy) <= hi
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"the scene's day_of_year {doy!r} is not a day of the year "
                         f"({lo}-{hi})")
    return float(earth_sun_distance_factor(int(doy)))


#: Median apparent reflectance (:func:`apparent_reflectance_level`) below which, or above
#: which, a scene's radiance is refused as being in the wrong units
#: (:func:`check_radiance_level`).
REFLECTANCE_LEVEL_RANGE = (0.002, 1.5)


def _band_solar(wavelength_nm: np.ndarray, fwhm_nm: np.ndarray) -> np.ndarray:
    """Solar irradiance at 1 AU averaged over each band's FWHM (mW m-2 nm-1; NaN for a
    band outside the shipped spectrum)."""
    s_lo, s_hi = solar_range_air_nm()
    lo = max(float(np.min(wavelength_nm - fwhm_nm)), s_lo + 0.05)
    hi = min(float(np.max(wavelength_nm + fwhm_nm)), s_hi - 0.05)
    out = np.full(wavelength_nm.shape, np.nan)
    if not hi > lo + 0.1:
        return out
    grid = np.linspace(lo, hi, int((hi - lo) / 0.01) + 2)
    e0 = solar_irradiance(grid)
    cum = np.concatenate([[0.0], np.cumsum(e0)])
    half = np.maximum(np.asarray(fwhm_nm, np.float64), 0.02) / 2
    i0 = np.searchsorted(grid, wavelength_nm - half)
    i1 = np.searchsorted(grid, wavelength_nm + half)
    inside = (wavelength_nm - half >= grid[0]) & (wavelength_nm + half <= grid[-1]) & (i1 > i0)
    out[inside] = ((cum[i1] - cum[i0]) / np.maximum(i1 - i0, 1))[inside]
    return out


def apparent_reflectance_level(scene: xr.Dataset, max_rows: int = 16,
                               max_cols: int = 64) -> tuple[float, int] | None:
    """The scene's typical apparent reflectance ``pi L / (E0 cos(sza))`` and how many
    pixels it rests on, from a small sample (cheap on a lazily opened scene).

    Two blocks of ``max_rows / 2`` contiguous image rows (a quarter and three quarters
    down the scene; the whole scene, in such blocks, if it has no more than ``max_rows``
    rows), every ``nx / max_cols``-th column,
    pixels not masked, with finite radiance and valid ancillary inputs
    (:func:`ancillary_valid`). For each, the 90th percentile over bands of the apparent
    reflectance (E0 the solar irradiance averaged over the band's FWHM, at the scene's
    Earth-Sun distance): the continuum, above the O2 bands' dips; then the median over
    the pixels.

    Returns
    -------
    (level, n_pixels) or None
        None where no sampled pixel is usable.
    """
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    h = max(max_rows // 2, 1)   # rows read at once (no more than a chunk of patch rows)
    starts = (range(0, ny, h) if ny <= max_rows
              else sorted({ny // 4, (3 * ny) // 4 - h // 2}))
    blocks = [slice(s, min(s + h, ny)) for s in starts]
    cols = np.arange(0, nx, max(1, -(-nx // max_cols)))
    wl = np.asarray(scene["wavelength"].values, np.float64)
    fwhm = (np.asarray(scene["fwhm"].values, np.float64) if "fwhm" in scene.variables
            else np.full(wl.shape, np.median(np.diff(wl)) if wl.size > 1 else 1.0))
    e0 = _band_solar(wl, np.broadcast_to(fwhm, wl.shape)) * sun_distance(scene)
    use = np.isfinite(e0) & (e0 > 0)
    if not use.any():
        return None
    levels = []
    for rows in blocks:
        rad = np.asarray(scene["radiance"].isel(y=rows, x=cols).transpose("y", "x", "band")
                         .values, np.float64)[..., use]
        ok = ancillary_valid(scene, rows)[:, cols] & np.all(np.isfinite(rad), -1)
        if "mask" in scene:
            ok &= pixel_values(scene, "mask", rows)[:, cols] > 0
        if not ok.any():
            continue
        mu = np.cos(np.deg2rad(pixel_values(scene, "sza", rows)[:, cols]))[ok]
        rho = np.pi * rad[ok] / (e0[use] * mu[:, None])
        levels.append(np.percentile(rho, 90, axis=-1))
    if not levels:
        return None
    levels = np.concatenate(levels)
    return float(np.median(levels)), int(levels.size)


def check_radiance_level(scene: xr.Dataset) -> None:
    """Refuse a scene whose radiance cannot be in mW m-2 sr-1 nm-1: its median apparent
    reflectance (:func:`apparent_reflectance_level`) outside
    :data:`REFLECTANCE_LEVEL_RANGE` (a unit mistake: W vs mW, per um vs per nm, ...; or
    an empty, all-zero scene).

    Raises
    ------
    ValueError
        Naming the level found, how far off it is and the likely mistake.
    """
    found = apparent_reflectance_level(scene)
    if found is None:
        return
    level, n = found
    lo, hi = REFLECTANCE_LEVEL_RANGE
    what = (f"the median apparent reflectance pi L / (E0 cos(sza)) of {n} sampled pixels "
            f"is {level:.3g}, where a real scene lies between {lo:g} and {hi:g}")
    if level > hi:
        factor = 10.0 ** round(np.log10(level / 0.3))
        raise ValueError(f"the radiance looks about {factor:g}x too large ({what}): it "
                         f"must be in mW m-2 sr-1 nm-1; was it given in uW (uW vs mW), per um "
                         f"instead of per nm, or as raw counts without their gain?")
    if level < lo:
        if not level > 0:
            raise ValueError(f"the radiance is zero (or below) in the sampled pixels ({what}): "
                             f"an empty or all-dark scene, nothing to retrieve")
        factor = 10.0 ** round(np.log10(0.3 / level))
        raise ValueError(f"the radiance looks about {factor:g}x too small ({what}): it "
                         f"must be in mW m-2 sr-1 nm-1; was it given in W m-2 sr-1 nm-1 "
                         f"(W vs mW)?")
