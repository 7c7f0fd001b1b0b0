"""FloX-style top-of-canopy series (CSV tables and netCDF): upwelling radiance and
downwelling irradiance per time stamp.

Field spectrometer systems such as the FloX (JB Hyperspectral) or FluoWat record, per time
stamp, the upwelling radiance seen by a downward-looking fibre and the downwelling
irradiance from a cosine receptor, on the spectrometer's own wavelength grid.
:func:`read_flox_csv` reads them from a CSV table and :func:`read_flox_netcdf` from a
netCDF file, both as a (time, band) scene; :func:`bayesfluo.io.readers.open_scene`
dispatches to them (``.csv``; ``.nc`` files that hold ``L`` and ``E`` over time and
wavelength rather than a bayesfluo scene).

Supported layouts (details and examples in :mod:`bayesfluo.io.flox_layouts`):

* CSV ``rows``: ``time``, ``quantity``, per-time columns, one column per wavelength; an
  ``L_up`` and an ``E_down`` row per time stamp, an optional ``fwhm`` row. What
  ``bayesfluo simulate --out x.csv`` and :func:`write_flox_csv` write::

      # bayesfluo FloX table
      # instrument = flox
      # radiance_units = mW m-2 sr-1 nm-1
      # irradiance_units = mW m-2 nm-1
      # wavelength_medium = air
      # surface_altitude = 100.0
      time,quantity,sza,saa,vza,vaa,sensor_altitude,mask,655.1,655.25,...,794.9
      ,fwhm,,,,,,,0.35,0.35,...,0.35
      2026-06-29T08:00:00,L_up,54.59,120.0,0.0,0.0,105.0,1,13.88,13.44,...
      2026-06-29T08:00:00,E_down,54.59,120.0,0.0,0.0,105.0,1,805.1,797.4,...

* CSV ``long``: one row per time stamp and band, columns ``time``, ``wavelength``, ``L``
  and ``E`` (or ``L_up``/``E_down``, ``radiance``/``irradiance``), optional ``fwhm``
  and per-time columns.
* CSV ``wide``: one row per time stamp, columns ``time``, per-time columns,
  ``L_<wavelength>`` and ``E_<wavelength>``; an optional row with ``time = fwhm``.
* netCDF: ``L`` and ``E`` over a time dimension (``time``, ``UTC_time``, ...) and a
  wavelength dimension, in either order, with a ``wavelength`` coordinate; ``units``
  attributes on the variables, per-time or scalar geometry variables, file-wide values
  as global attributes. (A bayesfluo scene netCDF with ``radiance`` and ``irradiance``
  over (time, band), as ``bayesfluo simulate --instrument flox --out x.nc`` writes it, is
  read by :func:`bayesfluo.io.netcdf.read_scene` and checked the same way.)

A CSV table's separator (``,``, ``;`` or tab) is told from its first line and its layout
from its column names; a table that fits no layout is refused naming the file and what
each layout needs. ``docs/flox.md`` has the same with examples.

File-wide values
----------------
``# key = value`` lines before a CSV table (global attributes of a netCDF file) give:
``instrument`` (default ``flox``); ``radiance_units`` and ``irradiance_units`` (default
mW m-2 sr-1 nm-1 and mW m-2 nm-1, recorded as ``units_guessed`` when absent; W m-2
sr-1 um-1, uW cm-2 sr-1 nm-1 and other spellings are converted; in netCDF the
variables' ``units`` attributes); ``wavelength_units`` (nm or um; without it, wavelengths
all below 10 are taken as um with a warning and ``wavelength_units_guessed`` recorded);
``wavelength_medium`` (air, the default, or vacuum); ``fwhm`` (one band width for all
bands, in the wavelength units, where the layout gives none per band; without either
the instrument's nominal FWHM is used and ``fwhm_assumed`` recorded); any geometry that
does not change with time (``sza``, ``saa``, ``vza``, ``vaa`` in degrees,
``surface_altitude`` and ``sensor_altitude`` in m above sea level); ``latitude`` and
``longitude`` (degrees north and east); ``irradiance_convention`` (``E``, or ``E/pi``,
which is multiplied by pi; an irradiance in per-steradian units is taken as ``E/pi``;
unstated, the convention is told from physics, below); ``noise_a`` and ``noise_b`` (and
``irradiance_noise_a``, ``irradiance_noise_b``, for ``E / pi``), the noise variance
``a L + b`` (mW m-2 sr-1 nm-1 squared); ``response_exponent``, the shape of the
spectrometer's band response (2, the default, a Gaussian; up to 8, flat-topped:
``exp(-ln2 |2 x / FWHM|**p)``). A key given twice with different values is
refused. Per-time columns override file-wide values, the caller's ``geometry``
overrides both.

Time and place
--------------
Time stamps are ISO 8601 and taken as UTC unless they carry an offset. Where the sun
zenith angle is not given but ``latitude`` and ``longitude`` are, ``sza`` (and ``saa``
where it is missing) is computed per time stamp from the UTC time and the place
(:func:`bayesfluo.physics.solar.solar_position`; attribute ``sza_computed``).
``day_of_year`` is the first time stamp's (UTC). Empty or NaN spectrum values mask that
time step; a geometry or NDVI value that is empty or out of range becomes NaN (see
:data:`bayesfluo.io.common.ANCILLARY_RANGES`).

Units and conventions are then checked from physics
(:func:`check_irradiance_conventions`): an irradiance exported as ``E / pi`` without
saying so (``pi L / E`` pi times a surface's, the irradiance a third of sunlight's), or
radiance and irradiance both in W instead of mW (the irradiance 1000 times off the
top-of-atmosphere irradiance times cos(sza)), is converted with a warning and an
attribute saying what was assumed; a series that reads as well in ``E`` (overcast all
along) as in ``E / pi`` (clear) and other mismatches are refused, naming the line to
add. Without a stated noise, the noise model
is estimated from the series (:func:`bayesfluo.io.flox_noise.estimate_noise`, at least
:data:`~bayesfluo.io.flox_noise.MIN_SCANS` scans) and stored as the attributes
``noise_a``, ``noise_b``, ``irradiance_noise_a`` and ``irradiance_noise_b`` the retrieval
reads; ``noise_source`` says where the noise came from (or why the instrument's default
applies).

The scene (README, "Scene format") has ``radiance`` and ``irradiance`` over
(time, band), geometry over (time), and ``ndvi`` from the canopy reflectance
``pi L_up / E_down`` at the bands nearest 670 and 800 nm when no ``ndvi`` column is given;
attribute ``layout`` names the layout read.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayesfluo.instruments import get_instrument
from bayesfluo.io.atomic import atomic_path, plain_value
from bayesfluo.io.common import (
    GEOMETRY_VARIABLES,
    SceneReadError,
    check_band_grid,
    check_day_of_year,
    check_geometry_keys,
    check_instrument,
    finish,
    radiance_unit_factor,
    require_geometry,
    select_window,
    wavelength_unit_factor,
)
from bayesfluo.io.flox_layouts import (
    ANCILLARY_COLUMNS,
    TABLE_LAYOUTS,
    FloxSeries,
    flox_netcdf_names,
    read_netcdf_series,
    read_table,
)
from bayesfluo.io.flox_noise import MIN_SCANS, estimate_noise
from bayesfluo.physics.sensor import check_response_exponent

__all__ = ["read_flox_csv", "read_flox_netcdf", "is_flox_netcdf", "write_flox_csv",
           "scene_from_series", "check_irradiance_conventions", "attach_noise",
           "check_series", "stated_noise", "CONTINUUM_GAPS_NM", "REFLECTANCE_RANGE",
           "E_OVER_PI_RANGE", "BRIGHT_SURFACE", "IRRADIANCE_LEVEL_RANGE",
           "IRRADIANCE_LEVEL_RANGE_NO_SZA"]

#: Keys of the caller's ``geometry`` a FloX reader takes besides the geometry variables.
_GEOMETRY_EXTRA = ("day_of_year", "latitude", "longitude")


def _header(text: str, where: str) -> tuple[dict[str, str], str]:
    """``# key = value`` lines and the rest of the file."""
    keys: dict[str, str] = {}
    lines = text.splitlines(keepends=True)
    i = 0
    while i < len(lines) and (lines[i].startswith("#") or not lines[i].strip()):
        key, eq, value = lines[i].lstrip("#").partition("=")
        if eq:
            key, value = key.strip().lower(), value.strip()
            if key in keys and keys[key] != value:
                raise SceneReadError(f"{where}, line {i + 1}: '# {key}' is given twice "
                                     f"with different values ({keys[key]!r} and {value!r})")
            keys[key] = value
        i += 1
    if i == len(lines):
        raise SceneReadError(f"{where}: no table after the '#' header lines")
    return keys, "".join(lines[i:])


def read_flox_csv(path: str | os.PathLike, *, geometry: dict | None = None,
                  instrument: str | None = None) -> xr.Dataset:
    """Read a FloX CSV table in any supported layout (module docstring: ``rows``,
    ``long`` or ``wide``) as a (time, band) scene.

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    geometry : dict, optional
        Overrides and fills in ``sza``, ``saa``, ``vza``, ``vaa`` (degrees),
        ``surface_altitude``, ``sensor_altitude`` (m above sea level), scalars or one value
        per time step; ``latitude``, ``longitude`` (degrees north and east, for the sun's
        position where ``sza`` is missing); ``day_of_year``.
    instrument : str, optional
        Default the file's ``# instrument`` line, else ``"flox"``.

    Returns
    -------
    xarray.Dataset
        The scene (radiance mW m-2 sr-1 nm-1, irradiance mW m-2 nm-1, wavelength nm),
        its irradiance convention and units checked from physics
        (:func:`check_irradiance_conventions`) and its noise model estimated from the
        series or stated (:func:`attach_noise`).

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SceneReadError
        Naming the file and the problem (a layout it cannot tell, missing columns or
        rows, values that are not numbers, unknown units, missing geometry, radiance
        and irradiance whose levels no real measurement has).
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"FloX table not found: {path}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise SceneReadError(f"{where}: not a text CSV file ({err})") from None
    keys, table = _header(text, where)
    geometry = check_geometry_keys(geometry, where, _GEOMETRY_EXTRA)
    series = read_table(table, where)
    return scene_from_series(series, keys, where, geometry=geometry, instrument=instrument,
                             source=f"FloX table {path.name}", how="csv")


def is_flox_netcdf(path: str | os.PathLike) -> bool:
    """Whether a netCDF file holds a FloX-style series (``L`` and ``E`` over time and
    wavelength, :func:`bayesfluo.io.flox_layouts.flox_netcdf_names`) rather than a
    bayesfluo scene; False for files that cannot be opened (the scene reader then says
    why)."""
    try:
        with xr.open_dataset(path, engine="h5netcdf", decode_times=False) as ds:
            return flox_netcdf_names(ds) is not None
    except Exception:  # noqa: BLE001 - h5py and xarray raise many types for bad files
        return False


def read_flox_netcdf(path: str | os.PathLike, *, geometry: dict | None = None,
                     instrument: str | None = None) -> xr.Dataset:
    """Read a FloX-style netCDF series (module docstring) as a (time, band) scene.

    Parameters
    ----------
    path : str or path-like
        The netCDF-4 file: ``L`` and ``E`` (or ``L_up``/``E_down``,
        ``radiance``/``irradiance``) over a time and a wavelength dimension, their
        ``units`` attributes, file-wide values as global attributes.
    geometry : dict, optional
        As :func:`read_flox_csv`.
    instrument : str, optional
        Default the file's ``instrument`` attribute, else ``"flox"``.

    Returns
    -------
    xarray.Dataset
        The scene, read into memory, checked as :func:`read_flox_csv`'s.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SceneReadError
        Naming the file and the problem.
    """
    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"FloX netCDF not found: {path}")
    geometry = check_geometry_keys(geometry, where, _GEOMETRY_EXTRA)
    try:
        ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:  # noqa: BLE001 - h5py raises OSError, xarray ValueError, ...
        raise SceneReadError(f"cannot read {path} as netCDF-4 (truncated or not netCDF?): "
                             f"{err}") from err
    with ds:
        keys = {}
        for k, v in ds.attrs.items():
            v = plain_value(v)
            if isinstance(v, str | int | float) and not isinstance(v, bool):
                keys[str(k).strip().lower()] = str(v).strip()
        try:
            series, units = read_netcdf_series(ds, where)
        except SceneReadError:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged variable: name the file
            raise SceneReadError(f"{where}: cannot read the FloX series "
                                 f"({type(err).__name__}: {err})") from err
    keys.update(units)
    return scene_from_series(series, keys, where, geometry=geometry, instrument=instrument,
                             source=f"FloX netCDF {path.name}", how="netcdf")


def _wavelength_scale(wl: np.ndarray, keys: dict, where: str, attrs: dict) -> float:
    """Factor to nm of the series' wavelengths (stated, or um guessed below 10)."""
    wunit = keys.get("wavelength_units", "")
    if wunit:
        try:
            wscale = wavelength_unit_factor(wunit)
        except ValueError:
            raise SceneReadError(f"{where}: wavelength_units {wunit!r} must be nm or um"
                                 ) from None
        if wscale != 1.0:
            attrs["wavelength_units_converted"] = "micrometres in the file, converted to nm"
        return wscale
    if np.all(np.isfinite(wl)) and wl.max() < 10:
        attrs["wavelength_units_guessed"] = ("micrometres (no wavelength_units; the "
                                             "wavelengths are below 10)")
        warnings.warn(f"{where}: no wavelength_units and the wavelengths are below 10: "
                      "assumed micrometres, converted to nm", stacklevel=4)
        return 1e3
    return 1.0


def _fwhm(series: FloxSeries, keys: dict, wscale: float, wl: np.ndarray, instrument: str,
          where: str, attrs: dict) -> np.ndarray:
    """Band widths in nm: the file's per band, its ``fwhm`` key, or the nominal one."""
    if series.fwhm is not None:
        fwhm = series.fwhm * wscale
        if not np.all(np.isfinite(fwhm)) or np.any(fwhm <= 0):
            raise SceneReadError(f"{where}: the fwhm values must be positive numbers")
    elif "fwhm" in keys:
        try:
            fwhm = np.full(wl.size, float(keys["fwhm"]) * wscale)
        except ValueError:
            raise SceneReadError(f"{where}: fwhm = {keys['fwhm']!r} is not a number"
                                 ) from None
    else:
        fwhm = np.full(wl.size, get_instrument(instrument).fwhm_nm)
        attrs["fwhm_assumed"] = f"no fwhm given; the {instrument} nominal FWHM"
        warnings.warn(f"{where}: no fwhm given; assumed the {instrument} nominal "
                      f"{fwhm[0]:g} nm", stacklevel=4)
    check_band_grid(wl, fwhm, where, "the wavelengths")
    return fwhm


def _place(series: FloxSeries, keys: dict, geometry: dict, where: str
           ) -> tuple[np.ndarray, np.ndarray] | None:
    """Latitude and longitude (degrees, per time step) from the caller's geometry, the
    per-time columns or the file-wide keys; None where either is unknown."""
    n = series.time.size
    out = []
    for name in ("latitude", "longitude"):
        if name in geometry:
            value = geometry[name]
        elif name in series.columns:
            value = series.columns[name]
        elif name in keys:
            value = keys[name]
        else:
            return None
        try:
            a = np.broadcast_to(np.asarray(value, np.float64), (n,))
        except (TypeError, ValueError):
            raise SceneReadError(f"{where}: {name} = {value!r} is not a number (degrees "
                                 "north or east) or one per time step") from None
        out.append(a)
    return out[0], out[1]


def scene_from_series(series: FloxSeries, keys: dict[str, str], where: str, *,
                      geometry: dict | None = None, instrument: str | None = None,
                      source: str = "", how: str = "csv") -> xr.Dataset:
    """Build and check the scene of a FloX series read from a file.

    Parameters
    ----------
    series : FloxSeries
        The values as the file holds them
        (:func:`bayesfluo.io.flox_layouts.read_table`,
        :func:`~bayesfluo.io.flox_layouts.read_netcdf_series`).
    keys : dict
        File-wide values (module docstring, "File-wide values"), lower-case keys, string
        values.
    where : str
        The file, for messages.
    geometry : dict, optional
        The caller's values, overriding the file's (as :func:`read_flox_csv`).
    instrument : str, optional
        Overrides the file's ``instrument`` key (default ``flox``).
    source : str
        The scene's ``source`` attribute.
    how : {"csv", "netcdf"}
        The kind of file, for saying in messages how to give a missing value.

    Returns
    -------
    xarray.Dataset
        The (time, band) scene, radiance in mW m-2 sr-1 nm-1, irradiance in
        mW m-2 nm-1, wavelength in nm, its conventions checked and its noise attached
        (:func:`check_series`).

    Raises
    ------
    SceneReadError
        Naming ``where`` and the problem.
    """
    geometry = check_geometry_keys(geometry, where, _GEOMETRY_EXTRA)
    how_text = _HOW[how]["geometry"]
    instrument = check_instrument(instrument or keys.get("instrument", "flox"), where,
                                  how_text)
    attrs: dict = {"layout": series.layout}
    wscale = _wavelength_scale(series.wavelength, keys, where, attrs)
    wl = series.wavelength * wscale
    if not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0) or wl.min() < 300 or \
            wl.max() > 2600:
        raise SceneReadError(f"{where}: wavelengths must increase and lie in "
                             f"300-2600 nm (found {wl.min():.4g}-{wl.max():.4g})")
    fwhm = _fwhm(series, keys, wscale, wl, instrument, where, attrs)
    rad, irr = series.radiance, series.irradiance
    convention = keys.get("irradiance_convention")
    for name, key, per_sr, default in (("radiance", "radiance_units", True,
                                        "mW m-2 sr-1 nm-1"),
                                       ("irradiance", "irradiance_units", False,
                                        "mW m-2 nm-1")):
        units = keys.get(key)
        if units is None:
            attrs.setdefault("units_guessed", "")
            attrs["units_guessed"] += f"{name} assumed {default}; "
            units = default
        try:
            fac = radiance_unit_factor(units, per_steradian=per_sr)
        except ValueError as err:
            fac = _per_steradian_irradiance(units) if name == "irradiance" else None
            if fac is None:
                raise SceneReadError(f"{where}: {err}") from None
            # an irradiance in radiance units is E/pi (the FloX "incoming radiance")
            if str(convention or "").replace(" ", "").lower() == "e":
                raise SceneReadError(
                    f"{where}: the irradiance is in {units} (per steradian: E/pi) but the "
                    "file states irradiance_convention = E; state E/pi, or give its "
                    "units without sr-1") from None
            convention = "E/pi"
            attrs["irradiance_convention_from_units"] = (
                f"{units}: per steradian, so E/pi (multiplied by pi)")
        if fac != 1.0:
            attrs[f"{name}_units_converted"] = f"{units} in the file, times {fac:g}"
            if name == "radiance":
                rad = rad * fac
            else:
                irr = irr * fac
    if "units_guessed" in attrs:
        warnings.warn(f"{where}: {attrs['units_guessed'].strip()}", stacklevel=3)

    n = rad.shape[0]
    vals: dict = {}
    for g in GEOMETRY_VARIABLES:
        if g in series.columns:
            vals[g] = series.columns[g]
        elif g in keys:
            try:
                vals[g] = float(keys[g])
            except ValueError:
                raise SceneReadError(f"{where}: '{g} = {keys[g]}' is not a number"
                                     ) from None
    vals.update({k: v for k, v in geometry.items() if k in GEOMETRY_VARIABLES})
    place = _place(series, keys, geometry, where)
    if place is not None:
        lat, lon = place
        if np.all(lat == lat[0]) and np.all(lon == lon[0]):
            attrs["latitude"], attrs["longitude"] = float(lat[0]), float(lon[0])
        if vals.get("sza") is None:
            from bayesfluo.physics.solar import solar_position

            try:
                sza, saa = solar_position(series.time, lat, lon)
            except ValueError as err:
                raise SceneReadError(f"{where}: {err}") from None
            vals["sza"] = sza
            if vals.get("saa") is None:
                vals["saa"] = saa
            attrs["sza_computed"] = (
                "sza" + (" and saa" if vals["saa"] is saa else "") + " from the UTC time "
                f"stamps and the place (latitude {np.nanmean(lat):.4f}, longitude "
                f"{np.nanmean(lon):.4f}; bayesfluo.physics.solar.solar_position)")
    if vals.get("sza") is None:  # the sun's position can come from the place instead
        how_text += (" (sza and saa can instead be computed from the time stamps and "
                     "geometry={'latitude': ..., 'longitude': ...}, degrees north and east)")
    geo = require_geometry(vals, n, None, where, how_text)
    mask = np.all(np.isfinite(rad), 1) & np.all(np.isfinite(irr), 1)
    if "mask" in series.columns:
        mask &= np.nan_to_num(series.columns["mask"], nan=0.0) > 0
    if "ndvi" in series.columns:
        ndvi, ndvi_name = series.columns["ndvi"], "NDVI (given)"
    else:
        red = int(np.argmin(np.abs(wl - 670.0)))
        nir_ok = np.flatnonzero(wl >= 772.0)
        ndvi, ndvi_name = None, None
        if abs(wl[red] - 670.0) <= 10.0 and nir_ok.size:
            nir = int(nir_ok[np.argmin(np.abs(wl[nir_ok] - 800.0))])
            with np.errstate(invalid="ignore", divide="ignore"):
                r_red, r_nir = rad[:, red] / irr[:, red], rad[:, nir] / irr[:, nir]
                ndvi = (r_nir - r_red) / (r_nir + r_red)
            ndvi_name = (f"NDVI of canopy reflectance pi L_up / E_down at {wl[red]:.2f} "
                         f"and {wl[nir]:.2f} nm")
    keep = select_window(wl, instrument, where)
    medium = keys.get("wavelength_medium", "air").lower()
    if medium not in ("air", "vacuum"):
        raise SceneReadError(f"{where}: wavelength_medium {medium!r} must be air or vacuum")
    variables = {
        "radiance": (("time", "band"), rad[:, keep].astype(np.float32),
                     {"units": "mW m-2 sr-1 nm-1",
                      "long_name": "upwelling top-of-canopy spectral radiance"}),
        "irradiance": (("time", "band"), irr[:, keep].astype(np.float32),
                       {"units": "mW m-2 nm-1",
                        "long_name": "downwelling irradiance at the top of canopy",
                        "standard_name": "surface_downwelling_spectral_irradiance_in_air"}),
        "mask": (("time",), mask.astype(np.int8),
                 {"units": "1", "long_name": "usable time step (1) or excluded (0)",
                  "flag_values": np.array([0, 1], np.int8), "flag_meanings": "excluded usable"}),
        **geo,
    }
    if ndvi is not None:
        variables["ndvi"] = (("time",), np.asarray(ndvi).astype(np.float32),
                             {"units": "1", "long_name": ndvi_name,
                              "standard_name": "normalized_difference_vegetation_index"})
    time = series.time
    t0 = str(np.datetime_as_string(time[0], unit="s"))
    if "day_of_year" in geometry:
        doy = check_day_of_year(geometry["day_of_year"], where)
    elif "day_of_year" in keys:
        doy = check_day_of_year(keys["day_of_year"], where)
    else:
        doy = int(np.datetime64(time[0], "D").astype("datetime64[D]").item()
                  .timetuple().tm_yday)
    if "response_exponent" in keys:  # the spectrometer's response shape (2: Gaussian)
        try:
            attrs["response_exponent"] = check_response_exponent(keys["response_exponent"])
        except ValueError as e:
            raise SceneReadError(f"{where}: {e}") from None
    ds = xr.Dataset(variables, coords={
        "time": ("time", time),
        "wavelength": ("band", wl[keep], {"units": "nm", "medium": medium,
                                          "long_name": "band centre wavelength",
                                          "standard_name": "radiation_wavelength"}),
        "fwhm": ("band", fwhm[keep], {"units": "nm",
                                      "long_name": "full width at half maximum"}),
    }, attrs={"Conventions": "CF-1.10", "instrument": instrument,
              "source": source, "day_of_year": int(doy),
              "time_coverage_start": t0, **attrs})
    ds = finish(ds, where, () if "ndvi" in series.columns else ("ndvi",))
    return check_series(ds, where, convention=convention,
                        stated_noise=stated_noise(keys, where), how=how)


def _per_steradian_irradiance(units: str) -> float | None:
    """Factor to mW m-2 sr-1 nm-1 of an irradiance given in radiance units (E/pi), or
    None where ``units`` are not a spectral radiance unit either."""
    try:
        return radiance_unit_factor(units, per_steradian=True)
    except ValueError:
        return None


def write_flox_csv(scene: xr.Dataset, path: str | os.PathLike, layout: str = "rows") -> Path:
    """Write a (time, band) scene with ``irradiance`` as a FloX CSV table, atomically.
    Float32 values are written so that they read back exactly.

    Parameters
    ----------
    scene : xarray.Dataset
        ``radiance`` (mW m-2 sr-1 nm-1) and ``irradiance`` (mW m-2 nm-1) over
        (time, band), ``wavelength`` and ``fwhm`` (nm), geometry scalars or over time.
    path : str or path-like
        The CSV file.
    layout : {"rows", "long", "wide"}
        The table layout (module docstring; :mod:`bayesfluo.io.flox_layouts`).

    Returns
    -------
    pathlib.Path
        ``path``.

    Raises
    ------
    ValueError
        If the scene is not a (time, band) series with irradiance, or the layout unknown.
    """
    path = Path(path)
    rad = scene["radiance"]
    if tuple(rad.dims) != ("time", "band") or "irradiance" not in scene:
        raise ValueError("write_flox_csv needs radiance and irradiance over (time, band)")
    if layout not in TABLE_LAYOUTS:
        raise ValueError(f"layout must be one of {', '.join(TABLE_LAYOUTS)}, not {layout!r}")
    wl = [repr(float(w)) for w in np.asarray(scene["wavelength"].values, np.float64)]
    fw = [repr(float(v)) for v in np.asarray(scene["fwhm"].values, np.float64)]
    times = list(np.datetime_as_string(np.asarray(scene["time"].values), unit="us"))
    fixed = [g for g in ANCILLARY_COLUMNS if g in scene and g not in ("latitude",
                                                                       "longitude")]
    per_time = [g for g in fixed if scene[g].dims == ("time",)]
    const = [g for g in fixed if scene[g].ndim == 0]

    def f32(a) -> list[str]:
        return [repr(float(v)) if np.isfinite(v) else "nan"
                for v in np.asarray(a, np.float32).ravel()]

    lines = ["# bayesfluo FloX table",
             f"# instrument = {scene.attrs.get('instrument', 'flox')}",
             "# radiance_units = mW m-2 sr-1 nm-1", "# irradiance_units = mW m-2 nm-1",
             "# wavelength_units = nm",
             f"# wavelength_medium = {scene['wavelength'].attrs.get('medium', 'air')}"]
    lines += [f"# {g} = {float(scene[g].values)!r}" for g in const]
    if "response_exponent" in scene.attrs:
        lines.append(f"# response_exponent = {float(scene.attrs['response_exponent'])!r}")
    cols = {g: f32(scene[g].values) for g in per_time}
    r = np.asarray(rad.values, np.float32)
    e = np.asarray(scene["irradiance"].transpose("time", "band").values, np.float32)
    if layout == "rows":
        lines.append(",".join(["time", "quantity"] + per_time + wl))
        lines.append(",".join(["", "fwhm"] + [""] * len(per_time) + fw))
        for i, t in enumerate(times):
            geo = [cols[g][i] for g in per_time]
            lines.append(",".join([t, "L_up"] + geo + f32(r[i])))
            lines.append(",".join([t, "E_down"] + geo + f32(e[i])))
    elif layout == "long":
        lines.append(",".join(["time", "wavelength", "fwhm", "L", "E"] + per_time))
        for i, t in enumerate(times):
            geo = ",".join(cols[g][i] for g in per_time)
            tail = "," + geo if per_time else ""
            lines += [f"{t},{w},{f},{lv},{ev}{tail}"
                      for w, f, lv, ev in zip(wl, fw, f32(r[i]), f32(e[i]), strict=True)]
    else:
        lines.append(",".join(["time"] + per_time + [f"L_{w}" for w in wl]
                              + [f"E_{w}" for w in wl]))
        lines.append(",".join(["fwhm"] + [""] * len(per_time) + fw + [""] * len(wl)))
        for i, t in enumerate(times):
            lines.append(",".join([t] + [cols[g][i] for g in per_time] + f32(r[i])
                                  + f32(e[i])))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------
# conventions and noise of a time series, checked from physics
# --------------------------------------------------------------------------------------

#: Bands left out of the continuum (nm): the O2-B band, the water band and the O2-A band.
CONTINUUM_GAPS_NM = ((686.0, 697.0), (715.0, 735.0), (758.5, 771.0))
#: Continuum ``pi L / E`` (:func:`check_irradiance_conventions`) of a real surface
#: (vegetation, soil, snow, water).
REFLECTANCE_RANGE = (0.002, 1.2)
#: Continuum ``pi L / E`` taken as the sign of an irradiance exported as ``E / pi``: pi
#: times a real surface's, above what a real surface has. A surface whose continuum is
#: below ``1.2 / pi`` (0.38) gives, under ``E / pi``, a ``pi L / E`` a real surface could
#: have; the irradiance level then decides (:data:`BRIGHT_SURFACE`).
E_OVER_PI_RANGE = (REFLECTANCE_RANGE[1], float(np.pi) * REFLECTANCE_RANGE[1])
#: Where a series' irradiance could be ``E / pi`` by its level (no usable scan, by the
#: 90th percentile, above ``1 / pi`` of the brightest irradiance
#: :data:`IRRADIANCE_LEVEL_RANGE` allows) and its ``pi L / E`` could be a real surface's
#: either way: above this continuum ``pi L / E`` the irradiance is taken as ``E / pi``
#: with a warning (as ``E`` the surface would be brighter than any canopy or soil, under
#: a sky overcast at every scan); at or below it the file is refused as ambiguous (an
#: overcast series in ``E`` or a clear one in ``E / pi``), asking for the convention.
BRIGHT_SURFACE = 0.8
#: Continuum irradiance (740-790 nm) over ``E0 cos(sza)`` (``E0`` the top-of-atmosphere
#: irradiance at the day's Earth-Sun distance): clear days ~0.7-1, overcast down to
#: ~0.05, broken clouds up to ~1.3.
IRRADIANCE_LEVEL_RANGE = (0.03, 1.6)
#: The same over ``E0`` alone, where no sun zenith angle is known.
IRRADIANCE_LEVEL_RANGE_NO_SZA = (0.003, 1.6)

#: What a user of each format states or passes, in the readers' messages.
_HOW = {"csv": {"geometry": "to read_flox_csv/open_scene, or add '# name = value' lines or "
                            "columns to the table",
                "convention": "'# irradiance_convention = E' or "
                              "'# irradiance_convention = E/pi'",
                "irradiance": "'# irradiance_units = ...' (e.g. W m-2 nm-1)",
                "radiance": "'# radiance_units = ...' (e.g. W m-2 sr-1 nm-1)"},
        "netcdf": {"geometry": "to read_flox_netcdf/open_scene, or add them to the file as "
                               "variables over time or global attributes",
                   "convention": "the global attribute irradiance_convention = 'E' or 'E/pi'",
                   "irradiance": "the right 'units' attribute of the irradiance variable "
                                 "(e.g. W m-2 nm-1)",
                   "radiance": "the right 'units' attribute of the radiance variable (e.g. "
                               "W m-2 sr-1 nm-1)"}}


def _continuum(wl: np.ndarray, lo: float = -np.inf, hi: float = np.inf) -> np.ndarray:
    """Bands of ``wl`` in [lo, hi] outside :data:`CONTINUUM_GAPS_NM`."""
    use = (wl >= lo) & (wl <= hi)
    for a, b in CONTINUUM_GAPS_NM:
        use &= (wl < a) | (wl > b)
    return use


def _band_e0(wl: np.ndarray, fwhm: np.ndarray) -> np.ndarray:
    """Top-of-atmosphere irradiance at 1 AU over each band's FWHM (mW m-2 nm-1; NaN
    outside the shipped solar spectrum)."""
    from bayesfluo.physics.solar import solar_irradiance, solar_range_air_nm

    out = np.full(wl.shape, np.nan)
    half = np.maximum(fwhm, 0.02) / 2
    s_lo, s_hi = solar_range_air_nm()
    inside = (wl - half > s_lo + 0.05) & (wl + half < s_hi - 0.05)
    if not inside.any():
        return out
    lo, hi = float(np.min((wl - half)[inside])), float(np.max((wl + half)[inside]))
    grid = np.linspace(lo, hi, max(int((hi - lo) / 0.01) + 2, 2))
    cum = np.concatenate([[0.0], np.cumsum(solar_irradiance(grid))])
    i0 = np.searchsorted(grid, wl - half)
    i1 = np.searchsorted(grid, wl + half)
    good = inside & (i1 > i0)
    out[good] = ((cum[i1] - cum[i0]) / np.maximum(i1 - i0, 1))[good]
    return out


def _convention(value, where: str, how: str) -> str | None:
    """``E``, ``E/pi`` or None from a stated irradiance convention."""
    if value is None:
        return None
    v = str(value).replace(" ", "").lower()
    if v in ("e", "e/pi"):
        return {"e": "E", "e/pi": "E/pi"}[v]
    raise SceneReadError(f"{where}: irradiance_convention {value!r} must be E or E/pi "
                         f"({how})")


def check_irradiance_conventions(scene: xr.Dataset, where: str, convention: str | None = None,
                                 how: str = "csv") -> xr.Dataset:
    """Check a top-of-canopy series' irradiance against physics and convert or refuse.

    Two mistakes leave a series that reads without error but yields a wrong posterior:

    * the irradiance exported as ``E / pi`` (a radiance-like convention): the
      continuum ``pi L / E`` (the 90th percentile over the bands outside
      :data:`CONTINUUM_GAPS_NM`, the upper envelope; the median over usable scans) is
      then pi times a real surface's, and the irradiance ``1 / pi`` of sunlight's. In
      :data:`E_OVER_PI_RANGE`, with ``pi L / (pi E)`` in :data:`REFLECTANCE_RANGE`, the
      irradiance is multiplied by pi with a warning (attribute
      ``irradiance_convention_assumed``). Below that range, where no scan's
      irradiance is brighter than ``E / pi`` allows, ``pi L / E`` above
      :data:`BRIGHT_SURFACE` is taken as ``E / pi`` the same way and anything darker is
      refused as ambiguous (an overcast series in ``E`` or a clear one in ``E / pi``).
      A stated ``convention = "E/pi"`` converts without a warning
      (``irradiance_convention_converted``); a stated ``"E"`` is kept where the data
      allow it.
    * radiance and irradiance both in W instead of mW (or the reverse): ``pi L / E`` is
      unchanged, but the continuum irradiance (740-790 nm) over the top-of-atmosphere
      ``E0 cos(sza)`` lies 1000 times outside :data:`IRRADIANCE_LEVEL_RANGE`
      (:data:`IRRADIANCE_LEVEL_RANGE_NO_SZA` over ``E0`` where no sun zenith angle is
      known); both are then multiplied (or divided) by 1000 with a warning
      (``units_scale_assumed``).

    Anything else out of range (one of the two off alone, a factor other than 1000 or
    pi) is refused. ``conventions_checked`` records the levels found, and
    ``irradiance_convention = "E"`` that the scene's irradiance is now ``E`` (so that a
    scene saved and read again is not converted twice, nor refused as ambiguous).

    Parameters
    ----------
    scene : xarray.Dataset
        ``radiance`` and ``irradiance`` over (time, band) in the scene format's units,
        ``wavelength``, ``fwhm``, ``sza``, optionally ``mask``, attribute
        ``day_of_year``. Other scenes are returned as they are.
    where : str
        The file, for messages.
    convention : {"E", "E/pi"}, optional
        The irradiance convention the file states.
    how : {"csv", "netcdf"}
        The kind of file, for saying in messages how to state the convention and units
        (the FloX table's header lines, or netCDF attributes).

    Returns
    -------
    xarray.Dataset
        The scene with the attribute ``conventions_checked``, converted where needed.

    Raises
    ------
    SceneReadError
        Naming the file, the levels found, the likely mistake and what to state.
    """
    from bayesfluo.physics.solar import earth_sun_distance_factor

    how = _HOW[how]
    if "irradiance" not in scene or tuple(scene["radiance"].dims) != ("time", "band"):
        return scene
    convention = _convention(convention, where, how["convention"])
    rad = np.asarray(scene["radiance"].values, np.float64)
    irr = np.asarray(scene["irradiance"].transpose("time", "band").values, np.float64)
    wl = np.asarray(scene["wavelength"].values, np.float64)
    fwhm = np.broadcast_to(np.asarray(scene["fwhm"].values, np.float64), wl.shape) \
        if "fwhm" in scene.variables else np.full(wl.shape, 0.3)
    cont = _continuum(wl)
    nt = rad.shape[0]
    sza = np.broadcast_to(np.asarray(scene["sza"].values, np.float64), (nt,)) \
        if "sza" in scene else np.full(nt, np.nan)
    with np.errstate(all="ignore"):
        ok = np.all(np.isfinite(rad[:, cont]), 1) & np.all(
            np.isfinite(irr[:, cont]) & (irr[:, cont] > 0), 1)
        if "mask" in scene:
            ok &= np.asarray(scene["mask"].values) > 0
        if not ok.any() or not cont.any():
            return scene.assign_attrs(conventions_checked="not checked: no usable scan with "
                                      "continuum bands")
        rho = float(np.median(np.percentile(np.pi * rad[ok][:, cont] / irr[ok][:, cont],
                                            90, axis=1)))
        e0 = _band_e0(wl, fwhm)
        lev_bands = _continuum(wl, 740.0, 790.0) & np.isfinite(e0)
        if not lev_bands.any():
            lev_bands = cont & np.isfinite(e0)
        doy = scene.attrs.get("day_of_year")
        try:
            dist = float(earth_sun_distance_factor(float(doy))) if doy is not None else 1.0
        except (TypeError, ValueError):
            dist = 1.0
        mu = np.cos(np.radians(sza))
        has_sza = ok & np.isfinite(mu) & (mu > 0.01)
        level = level_hi = None
        if lev_bands.any():
            ratio = irr[:, lev_bands] / (e0[lev_bands] * dist)
            if has_sza.any():
                per_scan = np.median(ratio[has_sza], 1) / mu[has_sza]
                lev_range, lev_what = IRRADIANCE_LEVEL_RANGE, "E0 cos(sza)"
            else:
                per_scan = np.median(ratio[ok], 1)
                lev_range, lev_what = IRRADIANCE_LEVEL_RANGE_NO_SZA, "E0 (no sza known)"
            # the median scan, and the brightest scans (a clear spell) by the 90th percentile
            level = float(np.median(per_scan))
            level_hi = float(np.percentile(per_scan, 90))

    def inside(v, rng):
        return v is not None and np.isfinite(v) and rng[0] <= v <= rng[1]

    attrs: dict[str, str] = {}
    irr_fac = 1.0
    found = f"continuum pi L / E {rho:.4g}"
    if level is not None:
        found += f", continuum irradiance {level:.4g} x the top-of-atmosphere {lev_what}"
    if convention == "E/pi":
        irr_fac = np.pi
        attrs["irradiance_convention_converted"] = ("E/pi in the file (stated), "
                                                    "irradiance times pi")
    elif convention is None and inside(rho, E_OVER_PI_RANGE) and \
            inside(rho / np.pi, REFLECTANCE_RANGE):
        irr_fac = np.pi
        attrs["irradiance_convention_assumed"] = (
            f"E/pi: the continuum pi L / E is {rho:.3g}, pi times a surface's "
            f"({rho / np.pi:.3g}); irradiance times pi")
        warnings.warn(f"{where}: the irradiance looks exported as E/pi ({found}, pi "
                      f"times a surface's {rho / np.pi:.3g}): assumed E/pi and "
                      f"multiplied by pi; state {how['convention']} to silence this",
                      stacklevel=3)
    rho_c = rho / irr_fac
    level_c = None if level is None else level * irr_fac

    def refuse(problem: str, hint: str):
        raise SceneReadError(f"{where}: {problem} ({found}; a real surface has pi L / E "
                             f"in {REFLECTANCE_RANGE[0]:g}-{REFLECTANCE_RANGE[1]:g}"
                             + ("" if level is None else
                                f" and an irradiance {lev_range[0]:g}-{lev_range[1]:g} x "
                                f"{lev_what}") + f"). {hint}")

    level_ok = level is None or inside(level_c, lev_range)
    if not inside(rho_c, REFLECTANCE_RANGE):
        stated = " although the file states the irradiance is E" if convention == "E" else ""
        if level is not None and not level_ok and inside(level_c * 1e3, lev_range) and \
                inside(rho_c / 1e3, REFLECTANCE_RANGE):
            refuse("the irradiance looks 1000 times too small while the radiance is not "
                   "(irradiance in W, radiance in mW?)",
                   f"If so, state {how['irradiance']}.")
        if level is not None and not level_ok and inside(level_c / 1e3, lev_range) and \
                inside(rho_c * 1e3, REFLECTANCE_RANGE):
            refuse("the irradiance looks 1000 times too large while the radiance is not",
                   f"State the irradiance's units: {how['irradiance']}.")
        if rho_c > REFLECTANCE_RANGE[1]:
            refuse("the radiance is too large for the irradiance" + stated
                   + (": is the irradiance E/pi?" if inside(rho_c, E_OVER_PI_RANGE) else ""),
                   f"State the convention, {how['convention']}, or the units: "
                   f"{how['irradiance']} and {how['radiance']}.")
        refuse("the radiance is too small for the irradiance (radiance in W, irradiance "
               "in mW?)", f"State the units: {how['radiance']} and {how['irradiance']}.")
    unit_fac = 1.0
    if not level_ok:
        for fac, what in ((1e3, "W instead of mW"), (1e-3, "mW where W was stated (or "
                                                           "uW instead of mW)")):
            if inside(level_c * fac, lev_range):
                unit_fac = fac
                attrs["units_scale_assumed"] = (
                    f"{what} for both radiance and irradiance: the continuum irradiance "
                    f"was {level_c:.3g} x {lev_what}; both times {fac:g}")
                warnings.warn(f"{where}: the irradiance is {level_c:.3g} times the "
                              f"top-of-atmosphere {lev_what} while pi L / E is a surface's "
                              f"({rho_c:.3g}): radiance and irradiance assumed in {what}, "
                              f"both multiplied by {fac:g}; state {how['irradiance']} and "
                              f"{how['radiance']} to silence this", stacklevel=3)
                break
        else:
            off = level_c / 0.8 if level_c else 0.0  # a clear day's level
            refuse("the irradiance is not at the level of sunlight"
                   + (f" (about {10.0 ** round(np.log10(off)):g} times "
                      f"{'too large' if off > 1 else 'too small'})" if off > 0 else ""),
                   f"State the units: {how['irradiance']} and {how['radiance']}.")
    if convention is None and irr_fac == 1.0 and level_hi is not None:
        # both readings possible? E / pi by the level (no scan brighter than E / pi of
        # the brightest sky allows) and by the surface (pi L / E over pi a real one's)
        hi = level_hi * unit_fac
        if hi * np.pi <= lev_range[1] and inside(rho_c / np.pi, REFLECTANCE_RANGE) and \
                inside(level_c * unit_fac * np.pi, lev_range):
            readings = (f"as E, a surface with a continuum pi L / E of {rho_c:.3g} under a "
                        f"sky overcast at every scan (irradiance at most {hi:.3g} x "
                        f"{lev_what}); as E/pi, a surface of {rho_c / np.pi:.3g} under a "
                        f"clear sky ({hi * np.pi:.3g} x {lev_what})")
            if rho_c <= BRIGHT_SURFACE:
                raise SceneReadError(
                    f"{where}: cannot tell whether the irradiance is E or E/pi ({found}; "
                    f"{readings}). State {how['convention']}.")
            irr_fac = np.pi
            attrs["irradiance_convention_assumed"] = (
                f"E/pi: {readings}; the surface would be brighter than {BRIGHT_SURFACE:g} "
                "as E; irradiance times pi")
            warnings.warn(f"{where}: the irradiance looks exported as E/pi ({found}; "
                          f"{readings}): assumed E/pi and multiplied by pi; state "
                          f"{how['convention']} to silence this", stacklevel=3)
    attrs["conventions_checked"] = found
    attrs["irradiance_convention"] = "E"  # checked (and converted): saved again, it is E
    out = scene.assign_attrs(attrs)
    if irr_fac != 1.0 or unit_fac != 1.0:
        e, r = out["irradiance"], out["radiance"]
        out["irradiance"] = e.copy(data=(np.asarray(e.values, np.float64) * irr_fac
                                         * unit_fac).astype(e.dtype))
        if unit_fac != 1.0:
            out["radiance"] = r.copy(data=(np.asarray(r.values, np.float64) * unit_fac
                                           ).astype(r.dtype))
    return out


def stated_noise(keys: dict, where: str) -> dict[str, float] | None:
    """The noise a file states: ``noise_a``, ``noise_b`` (and ``irradiance_noise_a``,
    ``irradiance_noise_b``) from its header lines or attributes ``keys``; None if none.

    Raises
    ------
    SceneReadError
        If only one of a pair is given, or a value is not a number, or ``a < 0``,
        ``b <= 0``.
    """
    got = {}
    for prefix in ("noise", "irradiance_noise"):
        a, b = keys.get(f"{prefix}_a"), keys.get(f"{prefix}_b")
        if a is None and b is None:
            continue
        if a is None or b is None:
            raise SceneReadError(f"{where}: '# {prefix}_a' and '# {prefix}_b' go together "
                                 "(noise variance a L + b); give both")
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            raise SceneReadError(f"{where}: '# {prefix}_a = {a}' or '# {prefix}_b = {b}' "
                                 "is not a number") from None
        if not (np.isfinite(fa) and np.isfinite(fb) and fa >= 0 and fb > 0):
            raise SceneReadError(f"{where}: the noise variance a L + b needs a >= 0 and "
                                 f"b > 0 (found {prefix}_a = {a}, {prefix}_b = {b})")
        got[f"{prefix}_a"], got[f"{prefix}_b"] = fa, fb
    if got and "noise_a" not in got:
        raise SceneReadError(f"{where}: '# irradiance_noise_a/_b' without '# noise_a' and "
                             "'# noise_b' (the radiance's)")
    return got or None


def attach_noise(scene: xr.Dataset, stated: dict[str, float] | None = None,
                 min_scans: int = MIN_SCANS) -> xr.Dataset:
    """The noise model of a top-of-canopy series as the attributes the retrieval reads.

    ``stated`` values (``noise_a``, ``noise_b``, optionally ``irradiance_noise_a``,
    ``irradiance_noise_b``) are kept as they are; else the series' own estimate
    (:func:`bayesfluo.io.flox_noise.estimate_noise`) where it has at least ``min_scans``
    usable scans and the estimate is finite and positive; else nothing (the instrument's
    default applies). ``noise_source`` says which, and why.
    """
    if "irradiance" not in scene or tuple(scene["radiance"].dims) != ("time", "band"):
        return scene
    if stated:
        return scene.assign_attrs(**stated, noise_source="stated in the file")
    try:
        est = estimate_noise(scene, min_scans=min_scans)
    except ValueError as err:
        inst = scene.attrs.get("instrument", "flox")
        try:
            snr = f" (SNR {get_instrument(inst).snr:g})"
        except (KeyError, ValueError):
            snr = ""
        return scene.assign_attrs(noise_source=f"the {inst} default{snr}: not estimated "
                                  f"from the series, {err}")
    return scene.assign_attrs(
        noise_a=est["noise_a"], noise_b=est["noise_b"],
        irradiance_noise_a=est["irradiance_noise_a"],
        irradiance_noise_b=est["irradiance_noise_b"],
        noise_source=(f"estimated from the series ({est['method']}; radiance sd "
                      f"{est['radiance_sd_at_mean']:.4g} at its mean "
                      f"{est['radiance_mean']:.4g} mW m-2 sr-1 nm-1, irradiance sd "
                      f"{est['irradiance_sd_at_mean']:.4g} at "
                      f"{est['irradiance_mean']:.4g} mW m-2 nm-1; irradiance change "
                      f"between neighbouring scans {est['irradiance_change_between_scans']:.3g}"
                      ")"))


def check_series(scene: xr.Dataset, where: str, *, convention: str | None = None,
                 stated_noise: dict[str, float] | None = None,
                 how: str = "csv") -> xr.Dataset:
    """:func:`check_irradiance_conventions`, then :func:`attach_noise`, for a
    top-of-canopy time series (other scenes are returned as they are)."""
    return attach_noise(check_irradiance_conventions(scene, where, convention, how),
                        stated_noise)
