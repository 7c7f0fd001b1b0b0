"""FloX-style top-of-canopy tables (CSV): upwelling radiance and downwelling irradiance.

Field spectrometer systems such as the FloX (JB Hyperspectral) or FluoWat record, per time
stamp, the upwelling radiance seen by a downward-looking fibre and the downwelling
irradiance from a cosine receptor. bayesfluo reads them from one CSV file laid out like
this (``write_flox_csv`` writes it)::

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

* ``# key = value`` lines before the table give file-wide values: ``instrument``,
  ``radiance_units`` and ``irradiance_units`` (default mW m-2 sr-1 nm-1 and mW m-2 nm-1,
  recorded as ``units_guessed`` when absent; W m-2 sr-1 um-1, uW cm-2 sr-1 nm-1 and other
  spellings are converted), ``wavelength_units`` (nm or um; without it, wavelength
  columns all below 10 are taken as um with a warning and ``wavelength_units_guessed``
  recorded), ``wavelength_medium``, and any geometry (``sza``, ``saa``, ``vza``, ``vaa``
  in degrees, ``surface_altitude`` and ``sensor_altitude`` in m above sea level) that
  does not change with time. A key given twice with different values is refused.
* The column names after the fixed columns are the band centres. The fixed columns are
  ``time`` (ISO 8601) and ``quantity``, then any of ``sza``, ``saa``, ``vza``, ``vaa``,
  ``surface_altitude``, ``sensor_altitude``, ``ndvi`` and ``mask`` (1 usable, 0 excluded).
* One row with ``quantity = fwhm`` gives the band widths (in the wavelength units,
  (0, 50] nm); without it the instrument's nominal FWHM is used and ``fwhm_assumed``
  recorded.
* Each time stamp has one ``L_up`` row (radiance) and one ``E_down`` row (irradiance);
  geometry is read from the ``L_up`` row. Empty or NaN cells mask that time step (a
  geometry or NDVI value that is empty or out of range becomes NaN, see
  :data:`bayesfluo.io.common.ANCILLARY_RANGES`); an empty time stamp is refused.

The scene (README, "Scene format") has ``radiance`` and ``irradiance`` over
(time, band), geometry over (time), and ``ndvi`` from the canopy reflectance
``pi L_up / E_down`` at the bands nearest 670 and 800 nm when no ``ndvi`` column is given.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import xarray as xr

from bayesfluo.instruments import get_instrument
from bayesfluo.io.atomic import atomic_path
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

__all__ = ["read_flox_csv", "write_flox_csv"]

_FIXED = ("time", "quantity") + tuple(GEOMETRY_VARIABLES) + ("ndvi", "mask")
_HOW = "to read_flox_csv/open_scene, or add '# name = value' lines or columns to the table"


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
    """Read a FloX-style CSV table (module docstring) as a (time, band) scene.

    Parameters
    ----------
    path : str or path-like
        The CSV file.
    geometry : dict, optional
        Overrides and fills in ``sza``, ``saa``, ``vza``, ``vaa`` (degrees),
        ``surface_altitude``, ``sensor_altitude`` (m above sea level), scalars or one value
        per time step; ``day_of_year``.
    instrument : str, optional
        Default the file's ``# instrument`` line, else ``"flox"``.

    Raises
    ------
    SceneReadError
        Naming the file and the problem (missing columns or rows, values that are not
        numbers, unknown units, missing geometry).
    """
    import pandas as pd

    path = Path(path)
    where = str(path)
    if not path.exists():
        raise FileNotFoundError(f"FloX table not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise SceneReadError(f"{where}: not a text CSV file ({err})") from None
    keys, table = _header(text, where)
    geometry = check_geometry_keys(geometry, where, ("day_of_year",))
    instrument = check_instrument(instrument or keys.get("instrument", "flox"), where, _HOW)
    try:
        df = pd.read_csv(io.StringIO(table), dtype={"time": str, "quantity": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise SceneReadError(f"{where}: cannot parse the table ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    for col in ("time", "quantity"):
        if col not in df.columns:
            raise SceneReadError(f"{where}: the table has no {col!r} column")
    band_cols = [c for c in df.columns if c not in _FIXED]
    try:
        wl = np.array([float(c) for c in band_cols], np.float64)
    except ValueError:
        bad = next(c for c in band_cols if not _isfloat(c))
        raise SceneReadError(f"{where}: column {bad!r} is neither a known column "
                             f"({', '.join(_FIXED)}) nor a wavelength") from None
    if wl.size == 0:
        raise SceneReadError(f"{where}: the table has no wavelength columns")
    attrs: dict = {}
    wunit = keys.get("wavelength_units", "").lower()
    if wunit:
        try:
            wscale = wavelength_unit_factor(wunit)
        except ValueError:
            raise SceneReadError(f"{where}: wavelength_units {wunit!r} must be nm or um"
                                 ) from None
        if wscale != 1.0:
            attrs["wavelength_units_converted"] = "micrometres in the file, converted to nm"
    elif np.all(np.isfinite(wl)) and wl.max() < 10:
        wscale = 1e3
        attrs["wavelength_units_guessed"] = ("micrometres (no wavelength_units; the "
                                             "wavelength columns are below 10)")
        warnings.warn(f"{where}: no '# wavelength_units' and the wavelength columns are "
                      "below 10: assumed micrometres, converted to nm", stacklevel=2)
    else:
        wscale = 1.0
    wl = wl * wscale
    if not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0) or wl.min() < 300 or \
            wl.max() > 2600:
        raise SceneReadError(f"{where}: wavelength columns must increase and lie in "
                             f"300-2600 nm (found {wl.min():.4g}-{wl.max():.4g})")
    q = df["quantity"].astype(str).str.strip()
    known = {"L_up", "E_down", "fwhm"}
    if not set(q.unique()) <= known:
        other = sorted(set(q.unique()) - known)
        raise SceneReadError(f"{where}: unknown quantity {other[0]!r} (expected L_up, "
                             "E_down or fwhm)")
    text_cols = [c for c, t in df.dtypes.items() if c in set(band_cols) and t.kind not in "fiu"]
    for c in text_cols:  # a column pandas could not read as numbers: name the cell
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna() & df[c].notna()
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise SceneReadError(f"{where}: table row {r + 1}, column {c!r}: "
                                 f"{df[c].iloc[r]!r} is not a number")
        df[c] = num
    values = df[band_cols].to_numpy(np.float64)

    fw_rows = np.flatnonzero(q == "fwhm")
    if fw_rows.size > 1:
        raise SceneReadError(f"{where}: more than one fwhm row")
    if fw_rows.size:
        fwhm = values[fw_rows[0]] * wscale
        if not np.all(np.isfinite(fwhm)) or np.any(fwhm <= 0):
            raise SceneReadError(f"{where}: the fwhm row must be positive numbers")
        check_band_grid(wl, fwhm, where, "the wavelength columns")
    else:
        fwhm = np.full(wl.size, get_instrument(instrument).fwhm_nm)
        attrs["fwhm_assumed"] = f"no fwhm row; the {instrument} nominal FWHM"
        warnings.warn(f"{where}: no fwhm row; assumed the {instrument} nominal "
                      f"{fwhm[0]:g} nm", stacklevel=2)

    missing = df["time"].isna().to_numpy() & (q != "fwhm").to_numpy()
    if missing.any():
        r = int(np.flatnonzero(missing)[0])
        raise SceneReadError(f"{where}: table row {r + 1} ({q.iloc[r]}) has no time stamp")
    times = df["time"].astype(str).str.strip()
    up = df[q == "L_up"]
    t_up, t_down = times[q == "L_up"].to_numpy(), times[q == "E_down"].to_numpy()
    if len(up) == 0:
        raise SceneReadError(f"{where}: no L_up rows")
    if len(set(t_up)) != len(t_up) or len(set(t_down)) != len(t_down):
        raise SceneReadError(f"{where}: a time stamp has more than one L_up or E_down row")
    if set(t_up) != set(t_down):
        lone = sorted(set(t_up) ^ set(t_down))[0]
        raise SceneReadError(f"{where}: time stamp {lone} has L_up without E_down or the "
                             "reverse; each needs both")
    order_down = {t: i for i, t in enumerate(t_down)}
    idx_down = [order_down[t] for t in t_up]
    rad = values[(q == "L_up").to_numpy()]
    irr = values[(q == "E_down").to_numpy()][idx_down]
    try:
        time = pd.to_datetime(pd.Series(t_up), format="ISO8601").to_numpy()
    except (ValueError, TypeError) as err:
        raise SceneReadError(f"{where}: time stamps are not ISO 8601 ({err})") from None
    order = np.argsort(time, kind="stable")
    time, rad, irr = time[order], rad[order], irr[order]
    up = up.iloc[order]

    # units
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
            raise SceneReadError(f"{where}: {err}") from None
        if fac != 1.0:
            attrs[f"{name}_units_converted"] = f"{units} in the file, times {fac:g}"
            if name == "radiance":
                rad = rad * fac
            else:
                irr = irr * fac
    if "units_guessed" in attrs:
        warnings.warn(f"{where}: {attrs['units_guessed'].strip()}", stacklevel=2)

    n = rad.shape[0]
    vals: dict = {}
    for g in GEOMETRY_VARIABLES:
        if g in up.columns:
            vals[g] = pd.to_numeric(up[g], errors="coerce").to_numpy(np.float64)
        elif g in keys:
            try:
                vals[g] = float(keys[g])
            except ValueError:
                raise SceneReadError(f"{where}: '# {g} = {keys[g]}' is not a number"
                                     ) from None
    vals.update({k: v for k, v in geometry.items() if k in GEOMETRY_VARIABLES})
    geo = require_geometry(vals, n, None, where, _HOW)
    mask = np.all(np.isfinite(rad), 1) & np.all(np.isfinite(irr), 1)
    if "mask" in up.columns:
        mask &= pd.to_numeric(up["mask"], errors="coerce").fillna(0).to_numpy() > 0
    if "ndvi" in up.columns:
        ndvi = pd.to_numeric(up["ndvi"], errors="coerce").to_numpy(np.float64)
        ndvi_name = "NDVI (given)"
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
    t0 = str(np.datetime_as_string(time[0], unit="s"))
    if "day_of_year" in geometry:
        doy = check_day_of_year(geometry["day_of_year"], where)
    else:
        doy = int(np.datetime64(time[0], "D").astype("datetime64[D]").item()
                  .timetuple().tm_yday)
    ds = xr.Dataset(variables, coords={
        "time": ("time", time),
        "wavelength": ("band", wl[keep], {"units": "nm", "medium": medium,
                                          "long_name": "band centre wavelength",
                                          "standard_name": "radiation_wavelength"}),
        "fwhm": ("band", fwhm[keep], {"units": "nm",
                                      "long_name": "full width at half maximum"}),
    }, attrs={"Conventions": "CF-1.10", "instrument": instrument,
              "source": f"FloX table {path.name}", "day_of_year": int(doy),
              "time_coverage_start": t0, **attrs})
    return finish(ds, where, () if "ndvi" in up.columns else ("ndvi",))


def _isfloat(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def write_flox_csv(scene: xr.Dataset, path: str | os.PathLike) -> Path:
    """Write a (time, band) scene with ``irradiance`` as a FloX-style CSV table (module
    docstring), atomically. Float32 values are written so that they read back exactly.

    Returns
    -------
    pathlib.Path
    """
    path = Path(path)
    rad = scene["radiance"]
    if tuple(rad.dims) != ("time", "band") or "irradiance" not in scene:
        raise ValueError("write_flox_csv needs radiance and irradiance over (time, band)")
    wl = np.asarray(scene["wavelength"].values, np.float64)
    times = np.datetime_as_string(np.asarray(scene["time"].values), unit="us")
    fixed = [g for g in GEOMETRY_VARIABLES if g in scene] + \
        [g for g in ("ndvi", "mask") if g in scene]
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
    lines.append(",".join(["time", "quantity"] + per_time + [repr(float(w)) for w in wl]))
    lines.append(",".join(["", "fwhm"] + [""] * len(per_time) +
                          [repr(float(v)) for v in np.asarray(scene["fwhm"].values)]))
    cols = {g: f32(scene[g].values) for g in per_time}
    r = np.asarray(rad.values, np.float32)
    e = np.asarray(scene["irradiance"].transpose("time", "band").values, np.float32)
    for i, t in enumerate(times):
        geo = [cols[g][i] for g in per_time]
        lines.append(",".join([t, "L_up"] + geo + f32(r[i])))
        lines.append(",".join([t, "E_down"] + geo + f32(e[i])))
    with atomic_path(path) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
