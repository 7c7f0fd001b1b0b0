"""Pieces shared by the scene readers (:mod:`bayesfluo.io.envi`, :mod:`bayesfluo.io.desis`,
:mod:`bayesfluo.io.flox` and the dispatcher :mod:`bayesfluo.io.readers`).

The error every reader raises (:class:`SceneReadError`), the geometry variables a scene
carries with their units and valid ranges, radiance unit conversion, the apparent NDVI of
a cube, the choice of an instrument's bands from a file's grid, and the final validation
of a reader's scene.
"""

from __future__ import annotations

import re

import numpy as np
import xarray as xr

from bayesfluo.instruments import INSTRUMENTS, get_instrument
from bayesfluo.io.netcdf import validate_scene

__all__ = ["SceneReadError", "GEOMETRY_VARIABLES", "radiance_unit_factor", "geometry_array",
           "check_geometry_keys", "require_geometry", "apparent_ndvi", "select_window",
           "check_instrument", "finish"]


class SceneReadError(ValueError):
    """A file cannot be read as a scene; the message names the file and the problem."""

#: Geometry the model needs, with units and CF names
GEOMETRY_VARIABLES = {
    "sza": ("degree", "solar zenith angle", "solar_zenith_angle"),
    "saa": ("degree", "solar azimuth angle (clockwise from north)", "solar_azimuth_angle"),
    "vza": ("degree", "view zenith angle", "sensor_zenith_angle"),
    "vaa": ("degree", "azimuth of the sensor seen from the pixel (clockwise from north)",
            "sensor_azimuth_angle"),
    "surface_altitude": ("m", "ground elevation above sea level", "surface_altitude"),
    "sensor_altitude": ("m", "sensor altitude above sea level", "altitude"),
}

_RANGES = {"sza": (0.0, 90.0), "vza": (0.0, 90.0), "saa": (-360.0, 360.0),
           "vaa": (-360.0, 360.0), "surface_altitude": (-500.0, 9000.0),
           "sensor_altitude": (-500.0, 1.0e6)}

#: Powers of ten of the unit prefixes a radiance unit string may use
_PREFIX = {"": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9, "c": 1e-2, "k": 1e3}


def radiance_unit_factor(units: str, per_steradian: bool = True) -> float:
    """Factor converting radiance in ``units`` to mW m-2 sr-1 nm-1 (or, with
    ``per_steradian=False``, irradiance to mW m-2 nm-1).

    Understands the usual spellings: ``mW m-2 sr-1 nm-1``, ``mW/m2/sr/nm``,
    ``uW cm-2 sr-1 nm-1`` (factor 10), ``W m-2 sr-1 um-1`` (factor 1),
    ``mW/(cm2 sr um)`` (factor 10), ``W/m^2/sr/nm`` (factor 1000).

    Raises
    ------
    ValueError
        If the string is not a spectral radiance unit (power per area, solid angle and
        wavelength) or, with ``per_steradian=False``, a spectral irradiance unit.
    """
    s = units.strip().replace("µ", "u").replace("μ", "u").replace("micro", "u")
    s = s.replace("microns", "um").replace("micron", "um").replace("**", "").replace("^", "")
    s = s.replace("·", " ").replace("*", " ").replace("²", "2").replace("⁻¹", "-1")
    # "a/b/c" and "a/(b c)": everything after a slash is in the denominator
    num, _, den = s.partition("/")
    den = den.replace("(", " ").replace(")", " ").replace("/", " ")
    tokens = [(t, 1) for t in num.replace("(", " ").replace(")", " ").split()]
    tokens += [(t, -1) for t in den.split()]
    power = area = wavel = sr = None
    for tok, sign in tokens:
        m = re.fullmatch(r"([a-zA-Z]+?)(-?\d+)?", tok)
        if not m:
            raise ValueError(f"radiance units {units!r} not understood (token {tok!r})")
        name, exp = m.group(1), sign * int(m.group(2) or 1)
        if name.endswith("W") and name[:-1] in _PREFIX and exp == 1:
            power = _PREFIX[name[:-1]]
        elif name == "sr" and exp == -1:
            sr = 1.0
        elif name.endswith("m") and name[:-1].lower() in _PREFIX and exp == -2:
            area = _PREFIX[name[:-1].lower()] ** 2
        elif name.endswith("m") and name[:-1].lower() in _PREFIX and exp == -1:
            wavel = _PREFIX[name[:-1].lower()]
        else:
            raise ValueError(f"radiance units {units!r} not understood (token {tok!r})")
    if per_steradian and None in (power, area, wavel, sr):
        raise ValueError(f"radiance units {units!r} are not power per area, solid angle "
                         "and wavelength (e.g. mW m-2 sr-1 nm-1)")
    if not per_steradian and (None in (power, area, wavel) or sr is not None):
        raise ValueError(f"irradiance units {units!r} are not power per area and "
                         "wavelength (e.g. mW m-2 nm-1)")
    si = power / (area * wavel)  # W m-2 sr-1 m-1
    return float(f"{si / 1e6:.12g}")  # 1 mW m-2 sr-1 nm-1 = 1e6 W m-2 sr-1 m-1


def geometry_array(name: str, value, ny: int | None, nx: int | None, where: str
                   ) -> xr.Variable:
    """A geometry value (scalar, per row, per column or per pixel) as a float32 variable
    with units; checks it is finite and in range.

    A 1-D value of length ``nx`` is taken per column (``x``), of length ``ny`` per row
    (``y``; preferred for ``sensor_altitude``); for a time series (``nx`` None) per time.

    Raises
    ------
    SceneReadError
        If the shape fits neither, or a value is not finite or out of range.
    """
    a = np.asarray(value, dtype=np.float64)
    if nx is None:  # time series
        dims = () if a.ndim == 0 else ("time",)
        if a.ndim > 1 or (a.ndim == 1 and a.size != ny):
            raise SceneReadError(f"{where}: {name} has shape {a.shape}; expected a scalar "
                                 f"or ({ny},) per time step")
    elif a.ndim == 0:
        dims = ()
    elif a.ndim == 1 and name == "sensor_altitude" and a.size == ny:
        dims = ("y",)
    elif a.ndim == 1 and a.size == nx:
        dims = ("x",)
    elif a.ndim == 1 and a.size == ny:
        dims = ("y",)
    elif a.shape == (ny, nx):
        dims = ("y", "x")
    else:
        raise SceneReadError(f"{where}: {name} has shape {a.shape}; expected a scalar, "
                             f"({ny},), ({nx},) or ({ny}, {nx})")
    finite = np.isfinite(a)
    lo, hi = _RANGES.get(name, (-np.inf, np.inf))
    if name in ("sza", "vza", "saa", "vaa", "surface_altitude", "sensor_altitude") and \
            (not finite.all() or a[finite].min(initial=lo) < lo or
             a[finite].max(initial=hi) > hi):
        raise SceneReadError(f"{where}: {name} must be finite and within [{lo}, {hi}] "
                             f"{GEOMETRY_VARIABLES[name][0]}; found "
                             f"{np.nanmin(a):.4g} to {np.nanmax(a):.4g}"
                             + (" with non-finite values" if not finite.all() else ""))
    units, long_name, std = GEOMETRY_VARIABLES.get(name, ("1", name, None))
    attrs = {"units": units, "long_name": long_name}
    if std:
        attrs["standard_name"] = std
    return xr.Variable(dims, a.astype(np.float32), attrs)


def check_geometry_keys(geometry: dict | None, where: str,
                        extra: tuple[str, ...] = ("ndvi", "day_of_year")) -> dict:
    """A copy of the user's ``geometry`` dict; SceneReadError on an unknown key."""
    geometry = dict(geometry or {})
    known = tuple(GEOMETRY_VARIABLES) + extra
    for key in geometry:
        if key not in known:
            raise SceneReadError(f"{where}: unknown geometry key {key!r} (known: "
                                 f"{', '.join(known)})")
    return geometry


def require_geometry(values: dict, ny: int | None, nx: int | None, where: str,
                     how: str) -> dict[str, xr.Variable]:
    """Geometry variables from ``values`` (file values already overridden by the user's);
    raise SceneReadError naming every missing one and how to give it (``how``)."""
    missing = [k for k in GEOMETRY_VARIABLES if values.get(k) is None]
    if missing:
        raise SceneReadError(
            f"{where}: no {', '.join(missing)} in the file; pass them as "
            f"geometry={{{', '.join(repr(k) + ': ...' for k in missing)}}} "
            f"(angles in degrees, altitudes in m above sea level) {how}")
    return {k: geometry_array(k, values[k], ny, nx, where) for k in GEOMETRY_VARIABLES}


def apparent_ndvi(radiance, wavelength, fwhm, sza, day_of_year: int | None,
                  red_nm: float = 670.0, nir_nm: float = 800.0):
    """NDVI of apparent (at-sensor) reflectance ``pi L / (E0 cos(sza))``, from the band
    nearest ``red_nm`` (within 10 nm) and the band nearest ``nir_nm`` at or above 772 nm
    (beyond the O2-A band), or None when the bands do not reach.

    Parameters
    ----------
    radiance : array (..., band)
        Radiance, mW m-2 sr-1 nm-1 (NumPy or dask).
    wavelength, fwhm : array (band,)
        Band centres and widths, nm (air).
    sza : array broadcastable to radiance[..., 0]
        Sun zenith angle, degrees.

    Returns
    -------
    ndvi : array (...,) or None
    bands : (float, float) or None
        The red and NIR band centres used, nm.
    """
    from bayesfluo.physics.solar import solar_irradiance, solar_range_air_nm

    wl = np.asarray(wavelength, np.float64)
    red = int(np.argmin(np.abs(wl - red_nm)))
    nir_ok = np.flatnonzero(wl >= 772.0)
    if abs(wl[red] - red_nm) > 10.0 or nir_ok.size == 0:
        return None, None
    nir = int(nir_ok[np.argmin(np.abs(wl[nir_ok] - nir_nm))])
    lo_s, hi_s = solar_range_air_nm()
    e0 = []
    for i in (red, nir):
        half = max(float(np.asarray(fwhm)[i]), 0.1)
        lo, hi = max(wl[i] - half, lo_s + 0.05), min(wl[i] + half, hi_s - 0.05)
        if hi - lo < 0.1:
            return None, None
        e0.append(float(np.mean(solar_irradiance(np.linspace(lo, hi, 64), day_of_year))))
    mu = np.cos(np.radians(np.asarray(sza, np.float64))).astype(np.float32)
    r_red = radiance[..., red] * np.float32(np.pi / e0[0]) / mu
    r_nir = radiance[..., nir] * np.float32(np.pi / e0[1]) / mu
    ndvi = (r_nir - r_red) / (r_nir + r_red)
    return ndvi, (float(wl[red]), float(wl[nir]))


def select_window(wavelength, instrument: str, where: str):
    """Index of the bands of the instrument's window: the band nearest each of the
    instrument's nominal band centres where every one lies within half a band spacing
    (so a file grid shifted a little still gives the model's band count), else the bands
    inside the window with a quarter of a band spacing to spare.

    Raises
    ------
    SceneReadError
        If no band lies inside the window.
    """
    inst = get_instrument(instrument)
    lo, hi = inst.window_nm
    wl = np.asarray(wavelength, np.float64)
    nominal = inst.band_centres()
    near = np.clip(np.searchsorted(wl, nominal), 1, wl.size - 1)
    near = np.where(np.abs(wl[near - 1] - nominal) <= np.abs(wl[near] - nominal),
                    near - 1, near) if wl.size > 1 else np.zeros(nominal.size, int)
    if np.all(np.abs(wl[near] - nominal) <= 0.5 * inst.sampling_nm) and \
            np.unique(near).size == near.size:
        return near
    tol = 0.25 * inst.sampling_nm
    keep = np.flatnonzero((wl >= lo - tol) & (wl <= hi + tol))
    if keep.size == 0:
        raise SceneReadError(f"{where}: no band inside the {inst.name} window "
                             f"{lo:g}-{hi:g} nm (the file spans {wl.min():.4g}-"
                             f"{wl.max():.4g} nm)")
    return keep


def check_instrument(instrument: str | None, where: str, how: str) -> str:
    """The instrument name, checked against the known ones."""
    if instrument is None:
        raise SceneReadError(f"{where}: the file does not say which instrument it is from; "
                             f"pass instrument=... ({', '.join(sorted(INSTRUMENTS))}) {how}")
    if instrument not in INSTRUMENTS:
        raise SceneReadError(f"{where}: unknown instrument {instrument!r}; known: "
                             f"{', '.join(sorted(INSTRUMENTS))}")
    return instrument


def finish(ds: xr.Dataset, where: str) -> xr.Dataset:
    """Validate a reader's scene, turning problems into :class:`SceneReadError`."""
    try:
        validate_scene(ds, name=where)
    except ValueError as err:
        raise SceneReadError(str(err)) from err
    return ds
