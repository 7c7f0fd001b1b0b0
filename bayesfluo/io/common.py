"""Pieces shared by the scene readers (:mod:`bayesfluo.io.envi`, :mod:`bayesfluo.io.desis`,
:mod:`bayesfluo.io.flox`, :mod:`bayesfluo.io.netcdf` and the dispatcher
:mod:`bayesfluo.io.readers`).

The error every reader raises (:class:`SceneReadError`), the geometry variables a scene
carries with their units and valid ranges (:data:`ANCILLARY_RANGES`, the one place the
ranges are written down: the retrieval's input flags use them too), radiance and
wavelength unit conversion, the apparent NDVI of a cube, the choice of an instrument's
bands from a file's grid, the scene format's validation and the final checks of every
reader's scene (:func:`finish`).

Bad values in files
-------------------
A scene-wide (scalar) geometry value, ``day_of_year`` or NDVI outside its range, or a
per-pixel variable with no valid value at all, raises :class:`SceneReadError` naming the
file, the variable and the value. A per-pixel variable with some values out of range or
not finite is kept with those values set to NaN (and a warning when some were out of
range), so that the retrieval flags those pixels and goes on with the others.

Errors at load time
-------------------
Readers return scenes whose radiance is read lazily (on ``.load()``, ``.values`` or dask
compute). Every lazily read array of a scene is wrapped so that a failure to read it (a
netCDF chunk that fails its compression filter, a truncated GeoTIFF or ENVI file, a
damaged Zarr chunk) raises :class:`SceneReadError` naming the file and the variable
(:class:`GuardedArray`; the ENVI and DESIS readers wrap their own array views the same
way). Checking every chunk when the file is opened would read the whole cube; only cheap
checks run then (sizes, the last block of a GeoTIFF, the chunk listing of a Zarr store).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import xarray as xr
from xarray.backends import BackendArray
from xarray.core import indexing

from bayesfluo.instruments import INSTRUMENTS, get_instrument
from bayesfluo.io.atomic import plain_attrs

__all__ = ["SceneReadError", "is_number", "GEOMETRY_VARIABLES", "ANCILLARY_RANGES",
           "ANCILLARY_UPPER_EXCLUSIVE", "ancillary_valid", "describe_range",
           "check_ancillary", "check_day_of_year", "check_scene_ancillaries",
           "radiance_unit_factor", "wavelength_unit_factor", "check_band_grid",
           "MAX_FWHM_NM", "geometry_array", "check_geometry_keys", "require_geometry",
           "apparent_ndvi", "select_window", "check_instrument", "validate_scene",
           "GuardedArray", "guard_lazy", "prepare_xarray_scene", "apply_overrides",
           "finish"]


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

#: Valid ranges (lower, upper) of a scene's geometry and ancillary values, for every
#: reader and for the retrieval's input flags. Bounds are inclusive, except the upper
#: bound of the names in :data:`ANCILLARY_UPPER_EXCLUSIVE`; ``sensor_altitude`` must in
#: addition lie above ``surface_altitude`` (pixel by pixel).
ANCILLARY_RANGES = {
    "sza": (0.0, 90.0),                    # degree, [0, 90): the sun above the horizon
    "vza": (0.0, 90.0),                    # degree, [0, 90)
    "saa": (-360.0, 360.0),                # degree, clockwise from north
    "vaa": (-360.0, 360.0),                # degree, clockwise from north
    "surface_altitude": (-500.0, 9000.0),  # m above sea level
    "sensor_altitude": (-500.0, 1.0e6),    # m above sea level, below 1000 km (satellites)
    "day_of_year": (1, 366),               # day of the year (an integer)
    "ndvi": (-1.0, 1.0),                   # 1
}

#: Names whose upper bound in :data:`ANCILLARY_RANGES` is excluded
ANCILLARY_UPPER_EXCLUSIVE = frozenset({"sza", "vza", "sensor_altitude"})

#: Largest band FWHM a reader accepts, nm (after unit conversion)
MAX_FWHM_NM = 50.0

_UNITS = {**{k: v[0] for k, v in GEOMETRY_VARIABLES.items()}, "ndvi": "",
          "day_of_year": ""}


def ancillary_valid(name: str, values) -> np.ndarray:
    """Where ``values`` of the ancillary ``name`` (a key of :data:`ANCILLARY_RANGES`) are
    finite and inside its range: a boolean array of the shape of ``values``."""
    a = np.asarray(values, dtype=np.float64)
    lo, hi = ANCILLARY_RANGES[name]
    with np.errstate(invalid="ignore"):
        above = a < hi if name in ANCILLARY_UPPER_EXCLUSIVE else a <= hi
        return np.isfinite(a) & (a >= lo) & above


def describe_range(name: str) -> str:
    """The range of ``name`` as text, e.g. ``[0, 90) degree``."""
    lo, hi = ANCILLARY_RANGES[name]
    close = ")" if name in ANCILLARY_UPPER_EXCLUSIVE else "]"
    return f"[{lo:g}, {hi:g}{close}" + (f" {_UNITS[name]}" if _UNITS.get(name) else "")


def check_ancillary(name: str, value, where: str) -> np.ndarray:
    """Check the values of the geometry or ancillary variable ``name`` against
    :data:`ANCILLARY_RANGES`.

    Parameters
    ----------
    name : str
        A key of :data:`ANCILLARY_RANGES`.
    value : scalar or array
        A scene-wide value or one value per pixel (row, column or time step).
    where : str
        The file, for messages.

    Returns
    -------
    numpy.ndarray
        The values (float64), with those out of range or not finite set to NaN.

    Raises
    ------
    SceneReadError
        If a scene-wide value is out of range or not finite, or no value of an array is
        valid (the message names the file, the variable and the values).
    """
    a = np.asarray(value, dtype=np.float64)
    ok = ancillary_valid(name, a)
    if ok.all() and a.size:
        return a
    rng = describe_range(name)
    if a.ndim == 0:
        raise SceneReadError(f"{where}: {name} = {a.item():.6g} is outside {rng}")
    if not ok.any():
        finite = a[np.isfinite(a)]
        found = (f"found {finite.min():.6g} to {finite.max():.6g}" if finite.size else
                 "no finite value")
        raise SceneReadError(f"{where}: no value of {name} is valid: all {a.size} are "
                             f"outside {rng} or not finite ({found})")
    out = np.isfinite(a) & ~ok
    if out.any():
        first = a[out].flat[0]
        warnings.warn(f"{where}: {int(out.sum())} of {a.size} values of {name} are outside "
                      f"{rng} (e.g. {first:.6g}); set to NaN, those pixels are flagged",
                      stacklevel=3)
    return np.where(ok, a, np.nan)


def check_day_of_year(value, where: str) -> int:
    """``day_of_year`` as an int in 1-366.

    Raises
    ------
    SceneReadError
        If it is not an integer (a whole number) in 1-366, naming ``where`` and the value.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    ok = isinstance(value, int | np.integer | float | np.floating) and not isinstance(
        value, bool | np.bool_) and np.isfinite(value) and float(value) == int(value)
    if not ok or not ancillary_valid("day_of_year", float(value)):
        raise SceneReadError(f"{where}: day_of_year = {value!r} must be an integer in "
                             f"{describe_range('day_of_year')}")
    return int(value)


def check_scene_ancillaries(ds: xr.Dataset, where: str, derived: tuple[str, ...] = ()
                            ) -> xr.Dataset:
    """Check a scene's geometry, ``ndvi`` and ``day_of_year`` against
    :data:`ANCILLARY_RANGES` (:func:`check_ancillary`) and that the sensor is above the
    surface; values out of range in per-pixel variables become NaN, and so does
    ``surface_altitude`` where the sensor is not above it.

    A variable held as a dask array (e.g. an NDVI computed from the radiance) and the
    variables named in ``derived`` (computed by the reader, not read from the file) are
    only masked: out-of-range values become NaN (lazily for dask arrays, which are not
    read), without an error or a warning.

    Raises
    ------
    SceneReadError
        Naming the file, the variable and the value (see :func:`check_ancillary`), or
        when the sensor is nowhere above the surface.
    """
    ds = ds.copy(deep=False)
    if "day_of_year" in ds.attrs:
        ds.attrs["day_of_year"] = check_day_of_year(ds.attrs["day_of_year"], where)
    for name in ANCILLARY_RANGES:
        if name not in ds.variables or name == "day_of_year":
            continue
        var = ds[name].variable
        if var.chunks is not None or name in derived:  # mask only; do not read dask
            if var.chunks is None:
                ok = ancillary_valid(name, var.values)
                ds[name] = var.copy(data=np.where(ok, var.values, np.nan).astype(
                    var.dtype if var.dtype.kind == "f" else np.float64))
                continue
            lo, hi = ANCILLARY_RANGES[name]
            data = var.data
            ok = (data >= lo) & ((data < hi) if name in ANCILLARY_UPPER_EXCLUSIVE
                                 else (data <= hi))
            ds[name] = var.copy(data=_dask_where(ok, data))
            continue
        values = check_ancillary(name, var.values, where)
        if not np.array_equal(values, var.values, equal_nan=True):
            ds[name] = var.copy(data=values.astype(var.dtype if var.dtype.kind == "f"
                                                   else np.float64))
    if "sensor_altitude" in ds.variables and "surface_altitude" in ds.variables and \
            ds["sensor_altitude"].chunks is None and ds["surface_altitude"].chunks is None:
        sen, sur = ds["sensor_altitude"], ds["surface_altitude"]
        both = np.isfinite(sen) & np.isfinite(sur)
        below = both & (sen <= sur)
        if bool(below.any()):
            if bool(below.sum() == both.sum()):
                raise SceneReadError(
                    f"{where}: sensor_altitude ({float(sen.max()):.6g} m at most) is not "
                    f"above surface_altitude ({float(sur.min()):.6g} m at least) anywhere")
            warnings.warn(f"{where}: sensor_altitude is not above surface_altitude at "
                          f"{int(below.sum())} of {below.size} pixels; their "
                          "surface_altitude set to NaN, those pixels are flagged",
                          stacklevel=2)
            dims = [d for d in ("time", "y", "x") if d in below.dims]
            new = sur.broadcast_like(below).where(~below).transpose(*dims)
            ds["surface_altitude"] = new.astype(sur.dtype).assign_attrs(sur.attrs)
    return ds


def _dask_where(ok, data):
    import dask.array as da

    return da.where(ok, data, np.nan).astype(data.dtype)


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


def wavelength_unit_factor(units: str) -> float:
    """Factor converting wavelengths in ``units`` to nm: 1 for nm (nanometer(s),
    nanometre(s)), 1000 for um (micrometer(s), micrometre(s), micron(s), µm).

    Raises
    ------
    ValueError
        For any other unit.
    """
    u = str(units).strip().lower().replace("µ", "u").replace("μ", "u")
    if u in ("nm", "nanometer", "nanometers", "nanometre", "nanometres"):
        return 1.0
    if u in ("um", "micrometer", "micrometers", "micrometre", "micrometres", "micron",
             "microns"):
        return 1e3
    raise ValueError(f"wavelength units {units!r} not understood (nm or um)")


def check_band_grid(wavelength, fwhm, where: str, what: str = "the wavelengths") -> None:
    """Check band centres and widths in nm (after any unit conversion): centres finite,
    strictly increasing and within 300-2600 nm, widths in (0, :data:`MAX_FWHM_NM`] nm.

    Raises
    ------
    SceneReadError
        Naming ``where`` and what is wrong.
    """
    wl = np.asarray(wavelength, np.float64)
    fw = np.asarray(fwhm, np.float64)
    if wl.size == 0:
        raise SceneReadError(f"{where}: no bands")
    if not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0):
        raise SceneReadError(f"{where}: {what} must be finite and increasing")
    if wl.min() < 300.0 or wl.max() > 2600.0:
        raise SceneReadError(f"{where}: {what} span {wl.min():.4g}-{wl.max():.4g} nm "
                             "after unit conversion: wrong wavelength units?")
    if fw.shape != wl.shape or not np.all(np.isfinite(fw)) or np.any(fw <= 0) or \
            np.any(fw > MAX_FWHM_NM):
        found = (f"{np.nanmin(fw):.3g}-{np.nanmax(fw):.3g} nm" if fw.size and
                 np.isfinite(fw).any() else f"{fw.size} values")
        raise SceneReadError(f"{where}: fwhm must be in (0, {MAX_FWHM_NM:g}] nm after unit "
                             f"conversion, one per band; found {found}")


def geometry_array(name: str, value, ny: int | None, nx: int | None, where: str
                   ) -> xr.Variable:
    """A geometry value (scalar, per row, per column or per pixel) as a float32 variable
    with units, checked against :data:`ANCILLARY_RANGES` (:func:`check_ancillary`:
    per-pixel values out of range become NaN).

    A 1-D value of length ``nx`` is taken per column (``x``), of length ``ny`` per row
    (``y``; preferred for ``sensor_altitude``); for a time series (``nx`` None) per time.

    Raises
    ------
    SceneReadError
        If the shape fits neither, a value is not a number, a scene-wide value is out of
        range or no value of an array is valid.
    """
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise SceneReadError(f"{where}: {name} = {value!r} is not a number") from None
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
    if name in ANCILLARY_RANGES:
        a = check_ancillary(name, a, where)
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


def check_instrument(instrument, where: str, how: str) -> str:
    """The instrument name, checked against the known ones."""
    if instrument is None:
        raise SceneReadError(f"{where}: the file does not say which instrument it is from; "
                             f"pass instrument=... ({', '.join(sorted(INSTRUMENTS))}) {how}")
    if not isinstance(instrument, str):
        raise SceneReadError(f"{where}: the instrument must be one name, got {instrument!r} "
                             f"(known: {', '.join(sorted(INSTRUMENTS))})")
    if instrument not in INSTRUMENTS:
        raise SceneReadError(f"{where}: unknown instrument {instrument!r}; known: "
                             f"{', '.join(sorted(INSTRUMENTS))}")
    return instrument


# --------------------------------------------------------------------------------------
# the scene format
# --------------------------------------------------------------------------------------

_RADIANCE_UNITS = {"mW m-2 sr-1 nm-1", "mW/m2/sr/nm", "mW m^-2 sr^-1 nm^-1"}


def validate_scene(ds: xr.Dataset, name: str = "scene") -> None:
    """Check a scene against the scene format; raise ValueError listing every problem."""
    problems = []
    if "radiance" not in ds:
        problems.append("no 'radiance' variable")
    else:
        rad = ds["radiance"]
        if "band" not in rad.dims:
            problems.append("'radiance' has no 'band' dimension")
        units = rad.attrs.get("units")
        if units is None:
            problems.append("'radiance' has no units attribute (expected mW m-2 sr-1 nm-1)")
        elif not isinstance(units, str) or units not in _RADIANCE_UNITS:
            problems.append(f"'radiance' units are {units!r}; expected mW m-2 sr-1 nm-1")
    if "wavelength" not in ds.coords and "wavelength" not in ds:
        problems.append("no 'wavelength' coordinate")
    else:
        wl = ds["wavelength"]
        wl_units = wl.attrs.get("units")
        if not isinstance(wl_units, str) or wl_units not in ("nm", "nanometer",
                                                             "nanometers"):
            problems.append(f"'wavelength' units are {wl_units!r}; expected nm")
        medium = wl.attrs.get("medium")
        if not isinstance(medium, str) or medium not in ("air", "vacuum"):
            problems.append("'wavelength' needs attribute medium = 'air' or 'vacuum'")
        if wl.ndim != 1:
            problems.append(f"'wavelength' has dimensions {wl.dims}; expected (band,)")
        else:
            try:
                values = np.asarray(wl.values, dtype=np.float64)
            except (TypeError, ValueError):
                values = np.array([np.nan])
            if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
                problems.append("'wavelength' must be finite and strictly increasing")
            elif values.size and (values.min() < 300 or values.max() > 2600):
                problems.append(f"'wavelength' spans {values.min():.4g}-{values.max():.4g}; "
                                "not a grid in nm")
            if "radiance" in ds and "band" in ds["radiance"].dims and \
                    ds.sizes.get("band") != values.size:
                problems.append("'wavelength' and the band dimension of 'radiance' differ "
                                "in length")
    if "fwhm" not in ds.coords and "fwhm" not in ds:
        problems.append("no 'fwhm' coordinate")
    inst = ds.attrs.get("instrument")
    if inst is None:
        problems.append("no global attribute 'instrument'")
    elif not isinstance(inst, str):
        problems.append(f"global attribute 'instrument' is {inst!r}; expected one name")
    elif inst not in INSTRUMENTS:
        problems.append(f"unknown instrument {inst!r}; known: {', '.join(sorted(INSTRUMENTS))}")
    for angle in ("sza", "vza"):
        if angle not in ds:
            problems.append(f"no '{angle}' variable (degrees)")
    if problems:
        raise ValueError(f"{name} is not a valid bayesfluo scene: " + "; ".join(problems))


# --------------------------------------------------------------------------------------
# lazily read arrays: errors at load time name the file
# --------------------------------------------------------------------------------------

class GuardedArray(BackendArray):
    """A lazily read variable of a scene file whose read errors (a chunk failing its
    compression filter or checksum, a truncated file, ...) raise :class:`SceneReadError`
    naming the file and the variable; optionally scaled by a unit conversion factor.

    Parameters
    ----------
    variable : xarray.Variable
        The variable as the backend opened it (lazily indexed; picklable).
    where : str
        The file, for messages.
    name : str
        The variable's name, for messages.
    scale : float, optional
        Factor applied to every value read (unit conversion).
    """

    def __init__(self, variable: xr.Variable, where: str, name: str,
                 scale: float | None = None):
        self.variable, self.where, self.name, self.scale = variable, where, name, scale
        self.shape = variable.shape
        self.dtype = variable.dtype if scale is None else np.result_type(variable.dtype,
                                                                         np.float32)

    def __getitem__(self, key):
        return indexing.explicit_indexing_adapter(key, self.shape,
                                                  indexing.IndexingSupport.OUTER, self._read)

    def _read(self, key: tuple) -> np.ndarray:
        try:
            out = np.asarray(self.variable[key].values)
        except (SceneReadError, MemoryError):
            raise
        except Exception as err:  # noqa: BLE001 - h5py, zarr and codecs raise many types
            raise SceneReadError(
                f"{self.where}: cannot read variable {self.name!r} ({type(err).__name__}: "
                f"{err}); the file is damaged (a chunk failing its compression filter or "
                "checksum, or a truncated file?)") from err
        if self.scale is not None:
            out = (out * self.dtype.type(self.scale)).astype(self.dtype, copy=False)
        return out


def guard_lazy(ds: xr.Dataset, where: str, scales: dict[str, float] | None = None
               ) -> xr.Dataset:
    """``ds`` with every variable that is not an index (data variables and coordinates
    such as ``wavelength``) read through a :class:`GuardedArray`, still lazily; ``scales``
    multiplies the named variables (unit conversion) without reading them."""
    scales = scales or {}
    indexes = set(ds.xindexes)
    coords, data = {}, {}
    for name, var in ds.variables.items():
        if name in indexes:
            continue
        if var.chunks is not None:
            raise ValueError("guard_lazy needs a dataset opened without dask chunks")
        guarded = GuardedArray(var, where, str(name), scales.get(name))
        encoding = var.encoding
        if name in scales:  # converted values: the file's packing no longer applies
            encoding = {k: v for k, v in encoding.items() if k not in (
                "dtype", "scale_factor", "add_offset", "_FillValue", "missing_value")}
        new = xr.Variable(var.dims, indexing.MemoryCachedArray(
            indexing.LazilyIndexedArray(guarded)), var.attrs, encoding)
        (coords if name in ds.coords else data)[name] = new
    out = ds.assign_coords(coords)
    for name, new in data.items():
        out[name] = new
    return out


#: Units of the scene format, and whether they are per steradian
_CANONICAL = {"radiance": ("mW m-2 sr-1 nm-1", True), "irradiance": ("mW m-2 nm-1", False)}


def prepare_xarray_scene(ds: xr.Dataset, where: str, *, chunks=None, token=None,
                         validate: bool = True, geometry: dict | None = None,
                         instrument: str | None = None) -> xr.Dataset:
    """Make a scene opened by xarray (netCDF or Zarr, lazily and without dask chunks)
    ready: the units it states converted, every variable guarded (:func:`guard_lazy`),
    its geometry and ``ndvi`` read and checked, the scene validated (:func:`finish`),
    then, with ``chunks``, the other data variables put in dask chunks.

    Radiance in any spectral radiance unit :func:`radiance_unit_factor` understands
    (e.g. ``W m-2 sr-1 nm-1``, ``uW cm-2 sr-1 nm-1``) becomes mW m-2 sr-1 nm-1,
    ``irradiance`` becomes mW m-2 nm-1 (both lazily; attribute
    ``<name>_units_converted`` records it); ``wavelength`` and ``fwhm`` in um become nm
    (``wavelength_units_converted``). A ``fwhm`` without a units attribute is taken in the
    units of ``wavelength``.

    Parameters
    ----------
    ds : xarray.Dataset
        As ``xarray.open_dataset`` / ``open_zarr(chunks=None)`` returned it.
    where : str
        The file, for messages.
    chunks : "auto", int, dict or None
        Dask chunks of the data variables other than geometry and ``ndvi``; "auto" keeps
        to multiples of the file's own chunks.
    token : str, optional
        Identifies the file's state (e.g. its modification time) in the dask names.
    validate : bool
        Convert units and check the scene (default); False only guards the variables.
    geometry : dict, optional
        The user's values that fill in or override the file's (:func:`apply_overrides`).
    instrument : str, optional
        Overrides the file's ``instrument`` attribute.

    Raises
    ------
    SceneReadError
        Units that are not understood, a scene that breaks the format, geometry out of
        range, or a variable that cannot be read.
    """
    close = ds.close
    if not validate:
        out = guard_lazy(ds, where)
        out.set_close(close)
        return out
    scales, attrs, units_of = {}, {}, {}
    for name, (canonical, per_sr) in _CANONICAL.items():
        if name not in ds.variables:
            continue
        units = ds[name].attrs.get("units")
        if units is None:
            continue  # validate_scene names missing radiance units
        if not isinstance(units, str):
            raise SceneReadError(f"{where}: the units of {name!r} are {units!r}, not a unit "
                                 "string")
        if units == canonical or (per_sr and units in _RADIANCE_UNITS):
            continue
        try:
            fac = radiance_unit_factor(units, per_steradian=per_sr)
        except ValueError as err:
            raise SceneReadError(f"{where}: variable {name!r}: {err}") from None
        scales[name], units_of[name] = fac, canonical
        attrs[f"{name}_units_converted"] = f"{units} in the file, times {fac:g}"
    out = guard_lazy(ds, where, scales)
    for name, canonical in units_of.items():
        var_attrs = {**out[name].attrs, "units": canonical}
        if "saturation_radiance" in var_attrs:
            try:
                var_attrs["saturation_radiance"] = float(var_attrs["saturation_radiance"]
                                                         ) * scales[name]
            except (TypeError, ValueError):
                del var_attrs["saturation_radiance"]
        out[name].attrs = var_attrs
    out = _convert_wavelengths(out.assign_attrs(attrs), where)
    out = apply_overrides(out, geometry, instrument, where)
    for name in ANCILLARY_RANGES:
        if name in out.variables:
            dims = out.variables[name].dims
            if not set(dims) <= {"y", "x", "time"} or len(dims) > 2:
                raise SceneReadError(f"{where}: {name} has dimensions {dims}; expected a "
                                     "scalar, (y), (x), (y, x) or (time)")
            out.variables[name].load()
    out = finish(out, where)
    if chunks is not None:
        out = _chunk(out, chunks, f"{where}-{token}")
    out.set_close(close)
    return out


def apply_overrides(ds: xr.Dataset, geometry: dict | None, instrument: str | None,
                    where: str) -> xr.Dataset:
    """The user's ``instrument`` and ``geometry`` (``sza``, ``saa``, ``vza``, ``vaa``,
    ``surface_altitude``, ``sensor_altitude``, ``ndvi``: scalars, per row, column, time
    or pixel; ``day_of_year``) put into a scene read from netCDF or Zarr.

    Raises
    ------
    SceneReadError
        For an unknown key or a value of the wrong shape or out of range.
    """
    if instrument is not None:
        ds = ds.assign_attrs(instrument=instrument)
    ny = ds.sizes.get("y", ds.sizes.get("time"))
    nx = ds.sizes.get("x")
    for key, value in (geometry or {}).items():
        if key == "day_of_year":
            ds = ds.assign_attrs(day_of_year=check_day_of_year(value, where))
        elif key in GEOMETRY_VARIABLES or key == "ndvi":
            ds[key] = geometry_array(key, value, ny, nx, where)
        else:
            raise SceneReadError(f"{where}: unknown geometry key {key!r} (known: "
                                 f"{', '.join(GEOMETRY_VARIABLES)}, ndvi, day_of_year)")
    return ds


def _convert_wavelengths(ds: xr.Dataset, where: str) -> xr.Dataset:
    """``wavelength`` and ``fwhm`` stated in um (or another length unit
    :func:`wavelength_unit_factor` knows) in nm."""
    if "wavelength" not in ds.variables:
        return ds
    units = ds["wavelength"].attrs.get("units")
    if not isinstance(units, str):
        return ds  # missing units: validate_scene names them
    try:
        fac = wavelength_unit_factor(units)
    except ValueError as err:
        raise SceneReadError(f"{where}: 'wavelength': {err}") from None
    fw_fac = fac
    if "fwhm" in ds.variables:
        fw_units = ds["fwhm"].attrs.get("units", units)
        try:
            fw_fac = wavelength_unit_factor(str(fw_units))
        except ValueError as err:
            raise SceneReadError(f"{where}: 'fwhm': {err}") from None
    new = {}
    if fac != 1.0 or units != "nm":
        wl = ds["wavelength"]
        new["wavelength"] = xr.Variable(wl.dims, np.asarray(wl.values, np.float64) * fac,
                                        {**wl.attrs, "units": "nm"})
    if "fwhm" in ds.variables and (fw_fac != 1.0 or ds["fwhm"].attrs.get("units") != "nm"):
        fw = ds["fwhm"]
        new["fwhm"] = xr.Variable(fw.dims, np.asarray(fw.values, np.float64) * fw_fac,
                                  {**fw.attrs, "units": "nm"})
    if not new:
        return ds
    coords = {k: v for k, v in new.items() if k in ds.coords}
    out = ds.assign_coords(coords)
    for k, v in new.items():
        if k not in coords:
            out[k] = v
    if fac != 1.0 or fw_fac != 1.0:
        out.attrs["wavelength_units_converted"] = (f"{units} in the file, converted to nm")
    return out


def _chunk(ds: xr.Dataset, chunks, token: str) -> xr.Dataset:
    """The data variables other than geometry and ndvi in dask chunks ("auto": multiples
    of the file's chunks, about 128 MiB)."""
    from dask.array.core import normalize_chunks
    from dask.base import tokenize

    out = ds.copy(deep=False)
    for name, var in ds.data_vars.items():
        if name in ANCILLARY_RANGES or var.ndim == 0:
            continue
        v = var.variable
        if chunks == "auto":
            prev = v.encoding.get("chunks") or v.encoding.get("chunksizes")
            prev = tuple(prev) if prev is not None and len(prev) == v.ndim else None
            ch = normalize_chunks("auto", v.shape, dtype=v.dtype, previous_chunks=prev)
        elif isinstance(chunks, dict):
            ch = {d: c for d, c in chunks.items() if d in v.dims}
        else:
            ch = chunks
        out[name] = v.chunk(ch, name=f"bayesfluo-{name}-{tokenize(token, name, ch)}")
    return out


def finish(ds: xr.Dataset, where: str, derived: tuple[str, ...] = ()) -> xr.Dataset:
    """The final checks of every reader's scene: the scene format (:func:`validate_scene`),
    the band grid (:func:`check_band_grid`), the geometry, ``ndvi`` and ``day_of_year``
    (:func:`check_scene_ancillaries`; ``derived`` names variables the reader computed,
    e.g. ``ndvi``, which are masked, not refused); attributes become plain Python values
    (so the scene can be saved).

    Raises
    ------
    SceneReadError
        Naming ``where`` and every problem of the format, or the first of the values.
    """
    try:
        validate_scene(ds, name=where)
    except ValueError as err:
        raise SceneReadError(str(err)) from err
    if "fwhm" in ds.variables:
        check_band_grid(ds["wavelength"].values, ds["fwhm"].values, where)
    return plain_attrs(check_scene_ancillaries(ds, where, derived))


def is_number(text: str) -> bool:
    """Whether ``text`` reads as a float (a header token, a column name of a table)."""
    try:
        float(text)
    except ValueError:
        return False
    return True
