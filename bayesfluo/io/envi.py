"""ENVI radiance cubes (HyPlant FLUO Level-1 and the like): read lazily, write atomically.

An ENVI cube is a flat binary file of ``lines x samples x bands`` numbers and a text header
(``.hdr``) of ``key = value`` lines (``{...}`` lists may span lines). :func:`read_envi`
returns a scene (README, "Scene format") whose ``radiance`` is a dask array over a
memory map of the file, so cubes larger than memory are read chunk by chunk. A key given
twice with the same value is read once, with different values refused; keys that hold one
value (:data:`SCALAR_KEYS`) given as a ``{...}`` list are refused. Band widths must lie in
(0, 50] nm; geometry out of :data:`bayesfluo.io.common.ANCILLARY_RANGES` is refused when
scene-wide (header keys) and set to NaN pixel by pixel (ancillary file).

Standard header keys used
-------------------------
``samples``, ``lines``, ``bands``, ``header offset``, ``data type`` (1 uint8, 2 int16,
3 int32, 4 float32, 5 float64, 12 uint16, 13 uint32, 14 int64, 15 uint64), ``byte order``
(0 little-, 1 big-endian), ``interleave`` (bsq, bil, bip), ``wavelength``, ``fwhm``,
``wavelength units`` (Nanometers or Micrometers; when missing the unit is guessed from
the values and ``wavelength_units_guessed`` is recorded), ``data gain values`` and
``data offset values`` (radiance = DN * gain + offset, per band), ``data ignore value``
(those pixels are masked), ``map info`` and ``coordinate system string`` (the scene gets
``x``/``y`` coordinates of pixel centres and a ``spatial_ref`` CRS), ``band names``,
``description``.

bayesfluo header keys
---------------------
``radiance units``
    Units of DN * gain + offset, e.g. ``mW m-2 sr-1 nm-1`` (the default, HyPlant L1),
    ``uW cm-2 sr-1 nm-1`` or ``W m-2 sr-1 um-1``; converted to mW m-2 sr-1 nm-1. When
    neither this key (nor ``data units``) nor the ``radiance_units`` argument gives them,
    mW m-2 sr-1 nm-1 is assumed, a warning is issued and ``units_guessed`` recorded.
``radiance scale factor``
    Radiance = (DN * gain + offset) / factor (as ENVI's reflectance scale factor).
``bayesfluo instrument``
    The bayesfluo instrument name (``hyplant-fluo``, ``hyplant-fluo-o2a``, ...).
``wavelength medium``
    ``air`` (default) or ``vacuum``.
``sun zenith``, ``sun azimuth``, ``view zenith``, ``view azimuth``
    Scene-wide angles, degrees (azimuths clockwise from north; the view azimuth is that of
    the sensor seen from the ground).
``surface altitude``, ``sensor altitude``
    Metres above sea level.
``acquisition time`` (ISO 8601) or ``day of year``
    Sets the Earth-Sun distance.
``saturation value``
    DN at or above which a pixel is saturated (masked); integer files default to the
    largest value of their type unless that is the ``data ignore value``.
``detector column``
    The across-track detector column of each sample (default 0, 1, ...).
``ancillary file``
    An ENVI file beside the header (float, bands named by ``band names``) of per-pixel
    ``sza``, ``saa``, ``vza``, ``vaa``, ``surface_altitude``, ``sensor_altitude``,
    ``ndvi`` and ``mask``; these override the scene-wide keys.

Values given in the ``geometry`` argument override both. ``ndvi`` comes from the ancillary
file or ``geometry``, else from the apparent reflectance of the bands nearest 670 and
800 nm (beyond 772 nm) where the cube has them (:func:`bayesfluo.io.common.apparent_ndvi`).
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bayesfluo.io.atomic import atomic_path
from bayesfluo.io.common import (
    GEOMETRY_VARIABLES,
    SceneReadError,
    apparent_ndvi,
    check_band_grid,
    check_day_of_year,
    check_geometry_keys,
    check_instrument,
    finish,
    geometry_array,
    radiance_unit_factor,
    require_geometry,
    select_window,
)

__all__ = ["read_envi", "write_envi", "read_envi_header", "ENVI_DTYPES",
           "BAYESFLUO_HEADER_KEYS", "SCALAR_KEYS"]

#: ENVI ``data type`` codes
ENVI_DTYPES = {1: "u1", 2: "i2", 3: "i4", 4: "f4", 5: "f8", 12: "u2", 13: "u4", 14: "i8",
               15: "u8"}

#: Header keys bayesfluo defines (see the module docstring), and the scene names of those
#: that hold geometry
BAYESFLUO_HEADER_KEYS = {
    "sun zenith": "sza", "sun azimuth": "saa", "view zenith": "vza", "view azimuth": "vaa",
    "surface altitude": "surface_altitude", "sensor altitude": "sensor_altitude",
    "radiance units": None, "radiance scale factor": None, "bayesfluo instrument": None,
    "wavelength medium": None, "acquisition time": None, "day of year": None,
    "saturation value": None, "detector column": None, "ancillary file": None,
}

_ANCILLARY_BANDS = tuple(GEOMETRY_VARIABLES) + ("ndvi", "mask")
_DATA_SUFFIXES = ("", ".img", ".dat", ".bsq", ".bil", ".bip", ".raw", ".bin")
_HOW = "to read_envi/open_scene, or add them to the header (see bayesfluo.io.envi)"


# --------------------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------------------

def read_envi_header(path: str | os.PathLike) -> dict[str, str | list[str]]:
    """Parse an ENVI header into ``{key: value}`` (keys lower case; ``{...}`` values as
    lists of stripped strings).

    A key given twice with the same value is read once; with different values it is
    refused (which one would be meant?).

    Raises
    ------
    SceneReadError
        If the file cannot be read (a folder, a symbolic link loop, no permission), does
        not start with ``ENVI``, a line is neither ``key = value`` nor a continuation of a
        ``{...}`` list, or a key is given twice with different values.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError as err:
        raise SceneReadError(f"{path}: not an ENVI header (not text: {err})") from None
    except OSError as err:
        raise SceneReadError(f"{path}: cannot read the ENVI header ({err.strerror or err})"
                             ) from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != "ENVI":
        raise SceneReadError(f"{path}: not an ENVI header (the first line must be 'ENVI')")
    out: dict[str, str | list[str]] = {}
    i = 1
    while i < len(lines):
        line = lines[i].strip()
        i += 1
        start = i
        if not line or line.startswith(";"):
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise SceneReadError(f"{path}, line {i}: expected 'key = value', got {line[:60]!r}")
        key, value = key.strip().lower(), value.strip()
        if value.startswith("{"):
            while "}" not in value:
                if i >= len(lines):
                    raise SceneReadError(f"{path}: the value of {key!r} has no closing '}}'")
                value += " " + lines[i].strip()
                i += 1
            inner = value[1:value.index("}")]
            parsed = [v.strip() for v in inner.split(",")] if key not in (
                "description", "coordinate system string") else inner.strip()
        else:
            parsed = value
        if key in out and out[key] != parsed:
            raise SceneReadError(f"{path}, line {start}: key {key!r} is given twice with "
                                 f"different values ({_short(out[key])} and "
                                 f"{_short(parsed)})")
        out[key] = parsed
    return out


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: Standard and bayesfluo header keys that hold one value, not a {...} list
SCALAR_KEYS = ("samples", "lines", "bands", "header offset", "data type", "byte order",
               "interleave", "wavelength units", "data ignore value", "file type",
               "data units", "reflectance scale factor") + tuple(
    k for k in BAYESFLUO_HEADER_KEYS if k != "detector column")


def _check_scalar_keys(h: dict, where: str) -> None:
    """SceneReadError for a key of :data:`SCALAR_KEYS` given as a ``{...}`` list."""
    for key in SCALAR_KEYS:
        if isinstance(h.get(key), list):
            raise SceneReadError(f"{where}: {key!r} must be one value, not a list "
                                 f"({_short(h[key])})")


def _int(h: dict, key: str, where: str, default: int | None = None) -> int:
    if key not in h:
        if default is not None:
            return default
        raise SceneReadError(f"{where}: the header has no {key!r}")
    try:
        v = int(str(h[key]).strip())
    except ValueError:
        raise SceneReadError(f"{where}: {key!r} = {h[key]!r} is not an integer") from None
    if v < 0 or (key in ("samples", "lines", "bands") and v == 0):
        raise SceneReadError(f"{where}: {key!r} = {v} must be positive")
    return v


def _floats(h: dict, key: str, n: int | None, where: str) -> np.ndarray | None:
    if key not in h:
        return None
    v = h[key]
    items = v if isinstance(v, list) else [v]
    try:
        a = np.array([float(x) for x in items if x != ""], np.float64)
    except ValueError:
        raise SceneReadError(f"{where}: {key!r} holds values that are not numbers") from None
    if n is not None and a.size == 1 and key in ("data gain values", "data offset values"):
        a = np.full(n, a[0])
    if n is not None and a.size != n:
        raise SceneReadError(f"{where}: {key!r} has {a.size} values but the header says "
                             f"bands = {n}")
    return a


def _float(h: dict, key: str, where: str) -> float | None:
    if key not in h:
        return None
    try:
        return float(str(h[key]).strip())
    except ValueError:
        raise SceneReadError(f"{where}: {key!r} = {h[key]!r} is not a number") from None


# --------------------------------------------------------------------------------------
# raw data
# --------------------------------------------------------------------------------------

class _RawFile:
    """Array-like view of a flat binary file, read through a memory map on each slice
    (small and picklable, so dask can send it to workers)."""

    def __init__(self, path: str, offset: int, dtype: np.dtype, shape: tuple[int, ...]):
        self.path, self.offset, self.dtype, self.shape = path, offset, dtype, shape
        self.ndim = len(shape)

    def __getitem__(self, key):
        try:
            mm = np.memmap(self.path, dtype=self.dtype, mode="r", offset=self.offset,
                           shape=self.shape)
            return np.array(mm[key])
        except (OSError, ValueError) as err:  # the file changed since it was opened
            raise SceneReadError(f"{self.path}: cannot read the ENVI data file "
                                 f"({type(err).__name__}: {err}); truncated or replaced "
                                 "since it was opened?") from None


def _layout(interleave: str, lines: int, samples: int, bands: int) -> tuple:
    """File-order shape and the transpose to (line, sample, band)."""
    return {"bsq": ((bands, lines, samples), (1, 2, 0)),
            "bil": ((lines, bands, samples), (0, 2, 1)),
            "bip": ((lines, samples, bands), (0, 1, 2))}[interleave]


def _find_files(path: Path) -> tuple[Path, Path]:
    """(header, data file) of an ENVI cube given either."""
    if path.suffix.lower() == ".hdr":
        hdr = path
        stem = path.with_suffix("")
        for suf in _DATA_SUFFIXES:
            cand = Path(str(stem) + suf)
            if cand.is_file() and cand != hdr:
                return hdr, cand
        raise SceneReadError(f"{hdr}: no data file beside the header (looked for "
                             f"{', '.join(stem.name + s for s in _DATA_SUFFIXES)})")
    for hdr in (path.with_suffix(".hdr"), Path(str(path) + ".hdr")):
        if hdr.is_file():
            return hdr, path
    raise SceneReadError(f"{path}: no ENVI header (.hdr) beside the data file")


def _open_raw(hdr: Path, data: Path, h: dict, chunks) -> tuple[da.Array, dict]:
    """Dask array (line, sample, band) of raw numbers and the layout facts."""
    where = str(hdr)
    samples, lines, bands = (_int(h, k, where) for k in ("samples", "lines", "bands"))
    offset = _int(h, "header offset", where, default=0)
    code = _int(h, "data type", where)
    if code not in ENVI_DTYPES:
        raise SceneReadError(f"{where}: data type {code} is not supported (supported: "
                             f"{', '.join(map(str, ENVI_DTYPES))}; complex types are not "
                             "radiance)")
    order = _int(h, "byte order", where, default=0)
    if order not in (0, 1):
        raise SceneReadError(f"{where}: byte order {order} must be 0 or 1")
    dtype = np.dtype(("<" if order == 0 else ">") + ENVI_DTYPES[code])
    interleave = str(h.get("interleave", "bsq")).strip().lower()
    if interleave not in ("bsq", "bil", "bip"):
        raise SceneReadError(f"{where}: interleave {interleave!r} must be bsq, bil or bip")
    expected = offset + lines * samples * bands * dtype.itemsize
    try:
        st = data.stat()
    except OSError as err:
        raise SceneReadError(f"{data}: cannot read the ENVI data file ({err.strerror or err})"
                             ) from None
    size = st.st_size
    if size < expected:
        raise SceneReadError(
            f"{data}: the data file is truncated: {size} bytes, the header (lines={lines}, "
            f"samples={samples}, bands={bands}, {dtype.name}, header offset={offset}) "
            f"needs {expected}")
    if size > expected:
        raise SceneReadError(
            f"{data}: the data file has {size} bytes, {size - expected} more than the "
            f"header (lines={lines}, samples={samples}, bands={bands}, {dtype.name}, "
            f"header offset={offset}) describes: wrong sizes in the header?")
    shape, order_axes = _layout(interleave, lines, samples, bands)
    raw = _RawFile(str(data), offset, dtype, shape)
    line_axis = 1 if interleave == "bsq" else 0
    if chunks is None:
        arr = da.from_array(np.asarray(raw[...]), chunks=shape)
    else:
        rows = chunks if isinstance(chunks, int) else max(
            1, min(lines, (64 * 2**20) // max(1, samples * bands * dtype.itemsize)))
        ch = list(shape)
        ch[line_axis] = rows
        arr = da.from_array(raw, chunks=tuple(ch), meta=np.array((), dtype),
                            name="envi-" + tokenize(str(data.resolve()), st.st_mtime_ns,
                                                    st.st_size, offset, dtype.str, shape))
    return arr.transpose(order_axes), dict(dtype=dtype, lines=lines, samples=samples,
                                           bands=bands, interleave=interleave)


# --------------------------------------------------------------------------------------
# map info
# --------------------------------------------------------------------------------------

def _georeference(h: dict, ny: int, nx: int, where: str):
    """(x, y, crs) from ``map info`` / ``coordinate system string``; Nones when absent."""
    mi = h.get("map info")
    if not isinstance(mi, list) or len(mi) < 7:
        return None, None, None
    try:
        rx, ry, e0, n0, dx, dy = (float(v) for v in mi[1:7])
    except ValueError:
        raise SceneReadError(f"{where}: map info {mi!r} has non-numeric entries") from None
    rotation = 0.0
    for v in mi[7:]:
        key, eq, val = v.partition("=")
        if eq and key.strip().lower() == "rotation":
            try:
                rotation = float(val)
            except ValueError:
                raise SceneReadError(f"{where}: map info has rotation={val.strip()!r}, not a "
                                     "number") from None
    if not np.isfinite(rotation) or rotation != 0.0:
        warnings.warn(f"{where}: map info has a rotation; x/y coordinates not set",
                      stacklevel=3)
        return None, None, None
    x = e0 + (np.arange(nx) + 0.5 - (rx - 1.0)) * dx
    y = n0 - (np.arange(ny) + 0.5 - (ry - 1.0)) * dy
    crs = None
    import pyproj

    cs = h.get("coordinate system string")
    try:
        if cs:
            crs = pyproj.CRS.from_user_input(cs)
        elif mi[0].strip().upper() == "UTM" and len(mi) >= 9:
            zone, hemi = int(mi[7]), mi[8].strip().lower()
            crs = pyproj.CRS.from_epsg((32600 if hemi.startswith("n") else 32700) + zone)
        elif mi[0].strip().lower().startswith("geographic"):
            crs = pyproj.CRS.from_epsg(4326)
    except (pyproj.exceptions.CRSError, ValueError) as err:
        raise SceneReadError(f"{where}: cannot understand the coordinate system: {err}"
                             ) from None
    return x, y, crs


def _map_info(scene: xr.Dataset) -> dict[str, str]:
    """``map info`` and ``coordinate system string`` for a georeferenced scene."""
    from bayesfluo.io.writers import scene_crs

    try:
        crs = scene_crs(scene)
    except Exception:  # noqa: BLE001 - a scene without a readable CRS is written without
        crs = None
    if crs is None or "x" not in scene.coords or "y" not in scene.coords:
        return {}
    x, y = np.asarray(scene["x"], np.float64), np.asarray(scene["y"], np.float64)
    if x.size < 2 or y.size < 2:
        return {}
    dx, dy = float(x[1] - x[0]), float(y[0] - y[1])
    if not (np.allclose(np.diff(x), dx) and np.allclose(-np.diff(y), dy)):
        return {}
    e0, n0 = float(x[0] - dx / 2), float(y[0] + dy / 2)
    if crs.utm_zone:
        zone, hemi = int(crs.utm_zone[:-1]), crs.utm_zone[-1]
        mi = (f"UTM, 1, 1, {e0!r}, {n0!r}, {dx!r}, {dy!r}, {zone}, "
              f"{'North' if hemi.upper() == 'N' else 'South'}, WGS-84, units=Meters")
    elif crs.is_geographic:
        mi = f"Geographic Lat/Lon, 1, 1, {e0!r}, {n0!r}, {dx!r}, {dy!r}, WGS-84, units=Degrees"
    else:
        mi = f"Arbitrary, 1, 1, {e0!r}, {n0!r}, {dx!r}, {dy!r}, units=Meters"
    return {"map info": "{" + mi + "}",
            "coordinate system string": "{" + crs.to_wkt("WKT1_ESRI") + "}"}


# --------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------

def _wavelengths(h: dict, bands: int, where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    wl = _floats(h, "wavelength", None, where)
    if wl is None:
        raise SceneReadError(f"{where}: the header has no 'wavelength' list (band centres)")
    if wl.size != bands:
        raise SceneReadError(f"{where}: the header lists {wl.size} wavelengths but says "
                             f"bands = {bands}")
    fwhm = _floats(h, "fwhm", None, where)
    if fwhm is None:
        raise SceneReadError(f"{where}: the header has no 'fwhm' list (band widths); add "
                             "'fwhm = {...}' in the wavelength units")
    if fwhm.size != bands:
        raise SceneReadError(f"{where}: the header lists {fwhm.size} fwhm values but says "
                             f"bands = {bands}")
    attrs = {}
    unit = str(h.get("wavelength units", "")).strip().lower()
    if unit in ("nanometers", "nanometer", "nm"):
        scale = 1.0
    elif unit in ("micrometers", "micrometer", "microns", "micron", "um", "µm"):
        scale = 1e3
        attrs["wavelength_units_converted"] = "micrometres in the file, converted to nm"
    elif unit in ("", "unknown"):
        scale = 1e3 if np.nanmax(np.abs(wl)) < 10.0 else 1.0
        attrs["wavelength_units_guessed"] = ("micrometres" if scale != 1.0
                                             else "nanometres") + " (from the values)"
        warnings.warn(f"{where}: no 'wavelength units'; guessed "
                      f"{attrs['wavelength_units_guessed']}", stacklevel=3)
    else:
        raise SceneReadError(f"{where}: wavelength units {unit!r} not supported "
                             "(Nanometers or Micrometers)")
    wl, fwhm = wl * scale, fwhm * scale
    check_band_grid(wl, fwhm, where)
    return wl, fwhm, attrs


def _day_of_year(h: dict, geometry: dict, where: str) -> tuple[int | None, str | None]:
    if "day_of_year" in geometry:
        return check_day_of_year(geometry["day_of_year"], where), None
    t = h.get("acquisition time")
    if t:
        try:
            when = _dt.datetime.fromisoformat(str(t).strip().replace("Z", "+00:00"))
        except ValueError:
            raise SceneReadError(f"{where}: acquisition time {t!r} is not ISO 8601") from None
        return when.timetuple().tm_yday, when.isoformat()
    if "day of year" in h:
        return check_day_of_year(_int(h, "day of year", where), where), None
    return None, None


def _ancillary(hdr: Path, h: dict, ny: int, nx: int) -> dict[str, np.ndarray]:
    name = h.get("ancillary file")
    if not name:
        return {}
    path = hdr.parent / str(name).strip()
    if not path.name or path.is_dir():
        raise SceneReadError(f"{hdr}: ancillary file = {name!r} does not name a file "
                             f"({path} is a folder or has no name)")
    anc_hdr, anc_data = _find_files(path if path.suffix == ".hdr" else
                                    Path(str(path)))
    ah = read_envi_header(anc_hdr)
    _check_scalar_keys(ah, str(anc_hdr))
    raw, info = _open_raw(anc_hdr, anc_data, ah, chunks=None)
    if (info["lines"], info["samples"]) != (ny, nx):
        raise SceneReadError(f"{anc_hdr}: the ancillary file is {info['lines']} x "
                             f"{info['samples']} pixels, the cube {ny} x {nx}")
    names = ah.get("band names")
    if not isinstance(names, list) or len(names) != info["bands"]:
        raise SceneReadError(f"{anc_hdr}: the ancillary file needs 'band names' naming "
                             f"each of its {info['bands']} bands ({', '.join(_ANCILLARY_BANDS)})")
    arr = np.asarray(raw, np.float64)
    return {n.strip(): arr[..., i] for i, n in enumerate(names)
            if n.strip() in _ANCILLARY_BANDS}


def read_envi(path: str | os.PathLike, *, geometry: dict | None = None,
              instrument: str | None = None, chunks="auto",
              radiance_units: str | None = None, select_bands: bool = True) -> xr.Dataset:
    """Read an ENVI radiance cube as a scene (lazy, dask-backed).

    Parameters
    ----------
    path : str or path-like
        The header (``.hdr``) or the data file beside it.
    geometry : dict, optional
        Overrides and fills in ``sza``, ``saa``, ``vza``, ``vaa`` (degrees),
        ``surface_altitude``, ``sensor_altitude`` (m above sea level), each a scalar, per
        column (nx,), per row (ny,) or per pixel (ny, nx); ``ndvi`` (ny, nx);
        ``day_of_year``.
    instrument : str, optional
        bayesfluo instrument name; default the header's ``bayesfluo instrument``.
    chunks : "auto", int or None
        Image rows per dask chunk ("auto": about 64 MiB); None reads into memory.
    radiance_units : str, optional
        Units of the file's radiance (overrides the header's ``radiance units``).
    select_bands : bool
        Keep only the bands inside the instrument's window (default), so that the scene
        matches the instrument's models.

    Returns
    -------
    xarray.Dataset
        A validated scene: radiance (y, x, band) float32 in mW m-2 sr-1 nm-1.

    Raises
    ------
    SceneReadError
        Naming the file and the problem: a bad header, a data file of the wrong size,
        missing wavelengths or FWHM, unknown units, missing geometry.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"ENVI file not found: {path}")
    hdr, data = _find_files(path)
    where = str(hdr)
    h = read_envi_header(hdr)
    _check_scalar_keys(h, where)
    geometry = check_geometry_keys(geometry, where, ("ndvi", "mask", "day_of_year"))
    raw, info = _open_raw(hdr, data, h, chunks)
    ny, nx, nb = info["lines"], info["samples"], info["bands"]
    wl, fwhm, attrs = _wavelengths(h, nb, where)
    instrument = check_instrument(instrument or h.get("bayesfluo instrument"), where,
                                  "or add 'bayesfluo instrument = ...' to the header")

    # --- radiance -----------------------------------------------------------------------
    gain = _floats(h, "data gain values", nb, where)
    offset = _floats(h, "data offset values", nb, where)
    factor = _float(h, "radiance scale factor", where)
    if factor is not None and not (np.isfinite(factor) and factor > 0):
        raise SceneReadError(f"{where}: radiance scale factor {factor} must be positive")
    if "reflectance scale factor" in h:
        warnings.warn(f"{where}: 'reflectance scale factor' ignored (bayesfluo reads "
                      "radiance; use 'radiance scale factor' to scale radiance)", stacklevel=2)
    units = radiance_units or h.get("radiance units") or h.get("data units")
    if units:
        try:
            ufac = radiance_unit_factor(str(units))
        except ValueError as err:
            raise SceneReadError(f"{where}: {err}") from None
        if ufac != 1.0:
            attrs["radiance_units_converted"] = f"{units} in the file, times {ufac:g}"
    else:
        ufac = 1.0
        attrs["units_guessed"] = ("radiance units not given; assumed mW m-2 sr-1 nm-1 "
                                  "(HyPlant Level-1)")
        warnings.warn(f"{where}: no 'radiance units' in the header; assumed mW m-2 sr-1 "
                      "nm-1 (pass radiance_units=... if not)", stacklevel=2)
    scale = (np.ones(nb) if gain is None else gain) * ufac / (factor or 1.0)
    shift = (np.zeros(nb) if offset is None else offset) * ufac / (factor or 1.0)
    if not (np.all(np.isfinite(scale)) and np.all(np.isfinite(shift))):
        raise SceneReadError(f"{where}: gain or offset values are not finite")
    rad = raw.astype(np.float32) * scale.astype(np.float32) + shift.astype(np.float32)
    bad = ~da.isfinite(rad)
    ignore = _float(h, "data ignore value", where)
    if ignore is not None:
        bad = bad | (raw == ignore)
    sat_dn = _float(h, "saturation value", where)
    if sat_dn is None and info["dtype"].kind in "iu":
        top = np.iinfo(info["dtype"]).max
        sat_dn = None if ignore == top else float(top)
    saturated = da.zeros(raw.shape[:2], dtype=bool, chunks=raw.chunksize[:2])
    if sat_dn is not None:
        sat = raw >= sat_dn
        if ignore is not None:
            sat = sat & (raw != ignore)
        saturated = sat.any(axis=-1)
    rad = da.where(bad, np.float32(np.nan), rad)

    # --- geometry -----------------------------------------------------------------------
    anc = _ancillary(hdr, h, ny, nx)
    values: dict = {}
    for key, name in BAYESFLUO_HEADER_KEYS.items():
        if name is not None:
            values[name] = _float(h, key, where)
    values.update({k: v for k, v in anc.items() if k in GEOMETRY_VARIABLES})
    values.update({k: v for k, v in geometry.items() if k in GEOMETRY_VARIABLES})
    geo = require_geometry(values, ny, nx, where, _HOW)
    doy, t0 = _day_of_year(h, geometry, where)

    # --- NDVI, band selection -------------------------------------------------------------
    ndvi_attrs = {"units": "1", "standard_name": "normalized_difference_vegetation_index"}
    ndvi = geometry.get("ndvi", anc.get("ndvi"))
    derived: tuple[str, ...] = ()
    if ndvi is not None:
        ndvi = geometry_array("ndvi", ndvi, ny, nx, where).values
        ndvi_attrs["long_name"] = "NDVI (given)"
    else:
        derived = ("ndvi",)  # out-of-range values masked, not refused
        sza = np.broadcast_to(geo["sza"].set_dims(("y", "x"), (ny, nx)).values, (ny, nx))
        ndvi, used = apparent_ndvi(rad, wl, fwhm, sza, doy)
        if ndvi is None:
            warnings.warn(f"{where}: no 'ndvi' (the cube has no bands near 670 and beyond "
                          "772 nm); pass geometry={'ndvi': ...} or an ancillary file, the "
                          "retrieval needs it", stacklevel=2)
        else:
            ndvi_attrs["long_name"] = (f"NDVI of apparent reflectance at {used[0]:.2f} and "
                                       f"{used[1]:.2f} nm")
    keep = select_window(wl, instrument, where) if select_bands else np.arange(nb)
    rad = rad[..., keep]

    mask = ~(bad.any(axis=-1) | saturated)
    if "mask" in anc:
        mask = mask & (anc["mask"] > 0)
    if "mask" in geometry:
        mask = mask & (np.asarray(geometry["mask"]) > 0)

    medium = str(h.get("wavelength medium", "air")).strip().lower()
    if medium not in ("air", "vacuum"):
        raise SceneReadError(f"{where}: wavelength medium {medium!r} must be air or vacuum")
    columns = _floats(h, "detector column", nx, where)
    coords = {
        "wavelength": ("band", wl[keep], {"units": "nm", "medium": medium,
                                          "long_name": "band centre wavelength",
                                          "standard_name": "radiation_wavelength"}),
        "fwhm": ("band", fwhm[keep], {"units": "nm",
                                      "long_name": "full width at half maximum"}),
        "column": ("x", (np.arange(nx) if columns is None else columns).astype(np.int32),
                   {"units": "1", "long_name": "across-track detector column"}),
    }
    x, y, crs = _georeference(h, ny, nx, where)
    if x is not None:
        coords["x"] = ("x", x, {"long_name": "x coordinate of pixel centre"})
        coords["y"] = ("y", y, {"long_name": "y coordinate of pixel centre"})
    rad_attrs = {"units": "mW m-2 sr-1 nm-1", "long_name": "at-sensor spectral radiance"}
    if sat_dn is not None and np.allclose(scale, scale[0]) and np.allclose(shift, shift[0]):
        rad_attrs["saturation_radiance"] = float(sat_dn * scale[0] + shift[0])
    variables = {
        "radiance": (("y", "x", "band"), rad, rad_attrs),
        "mask": (("y", "x"), mask.astype(np.int8),
                 {"units": "1", "long_name": "usable pixel (1) or excluded (0)",
                  "flag_values": np.array([0, 1], np.int8), "flag_meanings": "excluded usable"}),
        "saturated": (("y", "x"), saturated.astype(np.int8),
                      {"units": "1", "long_name": "a band at or above the saturation value"}),
        **geo,
    }
    if ndvi is not None:
        variables["ndvi"] = (("y", "x"), ndvi.astype(np.float32), ndvi_attrs)
    gattrs = {"Conventions": "CF-1.10", "instrument": instrument,
              "source": f"ENVI file {data.name}", "input_interleave": info["interleave"],
              "input_data_type": info["dtype"].name, **attrs}
    if doy is not None:
        gattrs["day_of_year"] = int(doy)
    if t0 is not None:
        gattrs["time_coverage_start"] = t0
    if "description" in h:
        gattrs["comment"] = str(h["description"])
    ds = xr.Dataset(variables, coords=coords, attrs=gattrs)
    if chunks is None:
        ds = ds.compute()
    if crs is not None:
        import rioxarray  # noqa: F401 - registers the .rio accessor

        ds = ds.rio.write_crs(crs).rio.write_coordinate_system()
        ds["radiance"].attrs["grid_mapping"] = "spatial_ref"
    return finish(ds, where, derived)


# --------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------

def _fmt(values) -> str:
    return "{" + ", ".join(repr(float(v)) for v in np.asarray(values).ravel()) + "}"


def _scalar(scene: xr.Dataset, name: str) -> float | None:
    """The value of a geometry variable when it is the same everywhere, else None."""
    if name not in scene:
        return None
    v = np.asarray(scene[name].values, np.float64)
    return float(v.flat[0]) if v.size and np.all(v == v.flat[0]) else None


def write_envi(scene: xr.Dataset, path: str | os.PathLike, interleave: str = "bsq",
               dtype: str | np.dtype = "float32", byte_order: int = 0,
               rows_per_block: int = 256) -> Path:
    """Write a scene's radiance as an ENVI cube with its header (atomically).

    Scene-wide geometry goes into the header (bayesfluo keys, module docstring); geometry
    that varies between pixels, ``ndvi`` and a ``mask`` with excluded pixels go into an
    ancillary ENVI file ``<name>_ancillary.img`` named by the header's ``ancillary file``.

    Parameters
    ----------
    scene : xarray.Dataset
        An image scene (y, x, band), radiance in mW m-2 sr-1 nm-1.
    path : str or path-like
        The data file (e.g. ``flight.img``); the header is the same name with ``.hdr``.
    interleave : "bsq", "bil" or "bip"
    dtype : float32, float64 or an integer type (uint8, int16, uint16, int32, uint32)
        For integer types each band is quantised linearly over its range, with the top
        value of the type reserved as ``data ignore value`` for non-finite radiance;
        ``data gain values`` and ``data offset values`` restore radiance to within half a
        gain step.
    byte_order : 0 (little-endian) or 1 (big-endian)
    rows_per_block : int
        Image rows converted and written at a time (bounds memory for large scenes).

    Returns
    -------
    pathlib.Path
        The header path.
    """
    path = Path(path)
    if path.suffix.lower() == ".hdr":
        path = path.with_suffix(".img")
    hdr = path.with_suffix(".hdr")
    if interleave not in ("bsq", "bil", "bip"):
        raise ValueError(f"interleave must be bsq, bil or bip, got {interleave!r}")
    if byte_order not in (0, 1):
        raise ValueError("byte_order must be 0 or 1")
    rad = scene["radiance"]
    if tuple(rad.dims) != ("y", "x", "band"):
        raise ValueError(f"write_envi needs radiance (y, x, band), got {rad.dims}")
    dt = np.dtype(dtype)
    codes = {v: k for k, v in ENVI_DTYPES.items()}
    if dt.kind + str(dt.itemsize) not in codes:
        raise ValueError(f"dtype {dt} has no ENVI data type")
    dt = dt.newbyteorder("<" if byte_order == 0 else ">")
    ny, nx, nb = rad.shape
    keys: dict[str, str] = {
        "description": "{bayesfluo scene " + str(scene.attrs.get("source", "")).replace(
            "{", "(").replace("}", ")") + "}",
        "samples": str(nx), "lines": str(ny), "bands": str(nb), "header offset": "0",
        "file type": "ENVI Standard", "data type": str(codes[dt.kind + str(dt.itemsize)]),
        "interleave": interleave, "byte order": str(byte_order),
        "wavelength units": "Nanometers",
        "wavelength": _fmt(scene["wavelength"].values), "fwhm": _fmt(scene["fwhm"].values),
        "radiance units": "mW m-2 sr-1 nm-1",
        "wavelength medium": str(scene["wavelength"].attrs.get("medium", "air")),
        "bayesfluo instrument": str(scene.attrs.get("instrument", "")),
    }
    if "day_of_year" in scene.attrs:
        keys["day of year"] = str(int(scene.attrs["day_of_year"]))
    if "column" in scene.coords:
        keys["detector column"] = _fmt(scene["column"].values)
    if dt.kind in "iu":
        lo_dn, hi_dn = np.iinfo(dt).min, np.iinfo(dt).max
        data = rad.data
        lo = np.asarray(da.nanmin(data, axis=(0, 1)) if isinstance(data, da.Array)
                        else np.nanmin(data, axis=(0, 1)), np.float64)
        hi = np.asarray(da.nanmax(data, axis=(0, 1)) if isinstance(data, da.Array)
                        else np.nanmax(data, axis=(0, 1)), np.float64)
        lo, hi = np.nan_to_num(lo), np.nan_to_num(hi)
        gain = np.where(hi > lo, (hi - lo) / (float(hi_dn) - 1.0 - float(lo_dn)), 1.0)
        offset = lo - lo_dn * gain
        keys["data gain values"] = _fmt(gain)
        keys["data offset values"] = _fmt(offset)
        keys["data ignore value"] = str(hi_dn)
    geo_pixel = []
    for key, name in BAYESFLUO_HEADER_KEYS.items():
        if name is None or name not in scene:
            continue
        v = _scalar(scene, name)
        if v is None:
            geo_pixel.append(name)
        else:
            keys[key] = repr(v)
    anc_names = list(geo_pixel)
    if "ndvi" in scene:
        anc_names.append("ndvi")
    if "mask" in scene and not bool(np.all(np.asarray(scene["mask"].values) > 0)):
        anc_names.append("mask")
    if anc_names:
        keys["ancillary file"] = path.stem + "_ancillary.hdr"
    keys.update(_map_info(scene))

    shape, _ = _layout(interleave, ny, nx, nb)
    with atomic_path(path) as tmp:
        mm = np.memmap(tmp, dtype=dt, mode="w+", shape=shape)
        for r0 in range(0, ny, rows_per_block):
            block = np.asarray(rad[r0:r0 + rows_per_block].values, np.float64)
            if dt.kind in "iu":
                q = np.round((block - offset) / gain)
                block = np.where(np.isfinite(q), np.clip(q, lo_dn, hi_dn - 1), hi_dn)
            rows = slice(r0, r0 + block.shape[0])
            if interleave == "bsq":
                mm[:, rows, :] = np.moveaxis(block, 2, 0)
            elif interleave == "bil":
                mm[rows] = np.moveaxis(block, 2, 1)
            else:
                mm[rows] = block
        mm.flush()
        del mm
    if anc_names:
        anc = np.stack([np.broadcast_to(
            scene[n].transpose(*[d for d in ("y", "x") if d in scene[n].dims]).values
            if scene[n].dims != ("y",) else np.asarray(scene[n].values)[:, None],
            (ny, nx)).astype(np.float32) for n in anc_names], 0)
        anc_path = path.with_name(path.stem + "_ancillary.img")
        with atomic_path(anc_path) as tmp:
            anc.astype("<f4").tofile(tmp)
        _write_header(anc_path.with_suffix(".hdr"), {
            "description": "{bayesfluo per-pixel geometry and ancillaries}",
            "samples": str(nx), "lines": str(ny), "bands": str(len(anc_names)),
            "header offset": "0", "file type": "ENVI Standard", "data type": "4",
            "interleave": "bsq", "byte order": "0",
            "band names": "{" + ", ".join(anc_names) + "}"})
    _write_header(hdr, keys)
    return hdr


def _write_header(path: Path, keys: dict[str, str]) -> None:
    text = "ENVI\n" + "".join(f"{k} = {v}\n" for k, v in keys.items())
    if re.search(r"[\x00-\x08]", text):
        raise ValueError("header text contains control characters")
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
