"""The layouts a FloX series comes in, parsed into one :class:`FloxSeries`.

A FloX (or FluoWat, or any field spectrometer pair) series is, per time stamp, one
upwelling radiance spectrum ``L`` and one downwelling irradiance spectrum ``E`` on the
spectrometer's own wavelength grid. Users have it in one of these layouts; this module
only reads the values, their time stamps and per-time columns as the file holds them
(units, conventions, geometry and the scene are :mod:`bayesfluo.io.flox`'s work).

CSV tables (separated by ``,``, ``;`` or tabs, decimal point ``.``, after optional
``# key = value`` header lines); the layout is told from the column names:

* ``rows`` (what ``bayesfluo simulate --out x.csv`` and
  :func:`bayesfluo.io.flox.write_flox_csv` write): columns ``time``, ``quantity``, any
  per-time columns, then one column per band named by its wavelength; one ``L_up`` row
  and one ``E_down`` row per time stamp, and optionally one ``fwhm`` row (empty time)::

      time,quantity,sza,655.10,655.25,...
      ,fwhm,,0.35,0.35,...
      2026-06-29T08:00:00,L_up,54.6,13.88,13.44,...
      2026-06-29T08:00:00,E_down,54.6,805.1,797.4,...

* ``long`` (one row per time stamp and band, as databases and tidy exports have it):
  columns ``time``, ``wavelength``, the radiance (``L``, ``L_up`` or ``radiance``), the
  irradiance (``E``, ``E_down`` or ``irradiance``), optionally ``fwhm`` (per band: the
  same at every time stamp) and per-time columns (the same in every row of a time
  stamp)::

      time,wavelength,L,E,sza
      2026-06-29T08:00:00,655.10,13.88,805.1,54.6
      2026-06-29T08:00:00,655.25,13.44,797.4,54.6

  A time stamp without a row for some band has NaN there (and is masked).

* ``wide`` (one row per time stamp): columns ``time``, per-time columns, then
  ``L_<wavelength>`` (or ``L_up_<wavelength>``) and ``E_<wavelength>`` (or
  ``E_down_<wavelength>``) for the same wavelengths; optionally one row whose ``time`` is
  ``fwhm`` gives the band widths in its ``L_`` columns::

      time,sza,L_655.10,L_655.25,...,E_655.10,E_655.25,...
      fwhm,,0.35,0.35,...,,,...
      2026-06-29T08:00:00,54.6,13.88,13.44,...,805.1,797.4,...

netCDF (``.nc``): ``L`` and ``E`` (or ``L_up``/``E_down``, ``radiance``/``irradiance``)
over a time dimension (``time``, ``UTC_time``, ``utc_time``, ``timestamp`` or
``datetime``) and a wavelength dimension, in either order, the wavelengths in a
coordinate or variable ``wavelength`` (or ``wl``) over that dimension, the times in the
time dimension's coordinate (CF-decoded or ISO 8601 strings); ``fwhm`` over the
wavelength dimension and per-time or scalar variables optional
(:func:`flox_netcdf_names` tells such a file from a bayesfluo scene).

Per-time columns (and netCDF variables) are :data:`ANCILLARY_COLUMNS`: the geometry
(``sza``, ``saa``, ``vza``, ``vaa`` in degrees, ``surface_altitude``,
``sensor_altitude`` in m above sea level), ``ndvi``, ``mask`` (1 usable, 0 excluded),
``latitude`` and ``longitude`` (degrees north and east). Time stamps are ISO 8601, taken
as UTC unless they carry an offset (converted to UTC).
"""

from __future__ import annotations

import io
import re
from typing import NamedTuple

import numpy as np
import xarray as xr

from bayesfluo.io.common import (
    GEOMETRY_VARIABLES,
    SceneReadError,
    is_number,
    wavelength_unit_factor,
)

__all__ = ["FloxSeries", "ANCILLARY_COLUMNS", "RADIANCE_NAMES", "IRRADIANCE_NAMES",
           "TIME_NAMES", "TABLE_LAYOUTS", "read_table", "table_layout", "parse_times",
           "flox_netcdf_names", "read_netcdf_series"]

#: Per-time columns a FloX table (or netCDF variables over time) may have.
ANCILLARY_COLUMNS = tuple(GEOMETRY_VARIABLES) + ("ndvi", "mask", "latitude", "longitude")
#: Names of the upwelling radiance (long layout column, netCDF variable), first preferred.
RADIANCE_NAMES = ("L", "L_up", "radiance")
#: Names of the downwelling irradiance.
IRRADIANCE_NAMES = ("E", "E_down", "irradiance")
#: Names of a netCDF time dimension.
TIME_NAMES = ("time", "UTC_time", "utc_time", "timestamp", "datetime")
#: The CSV layouts (module docstring).
TABLE_LAYOUTS = ("rows", "long", "wide")

_WIDE = re.compile(r"^(L|L_up|E|E_down)_(.+)$")


class FloxSeries(NamedTuple):
    """A FloX series as its file holds it, before units, conventions and geometry are
    checked.

    Attributes
    ----------
    layout : str
        ``rows``, ``long``, ``wide`` or ``netcdf``.
    time : ndarray (time,)
        UTC time stamps, ``datetime64[ns]``, increasing.
    wavelength : ndarray (band,)
        Band centres in the file's wavelength units (nm or um), increasing.
    fwhm : ndarray (band,) or None
        Band widths in the same units, where the file gives them.
    radiance, irradiance : ndarray (time, band)
        Upwelling radiance and downwelling irradiance in the file's units, float64 (NaN
        where the file has no value).
    columns : dict of str to ndarray (time,)
        The per-time values of :data:`ANCILLARY_COLUMNS` the file has, float64 (NaN where
        empty or not a number).
    """

    layout: str
    time: np.ndarray
    wavelength: np.ndarray
    fwhm: np.ndarray | None
    radiance: np.ndarray
    irradiance: np.ndarray
    columns: dict[str, np.ndarray]


def parse_times(values, where: str) -> np.ndarray:
    """Time stamps (ISO 8601 strings or datetime64) as UTC ``datetime64[ns]``; those with
    a UTC offset are converted to UTC, those without are taken as UTC.

    Raises
    ------
    SceneReadError
        Naming ``where`` and the first time stamp that is not ISO 8601.
    """
    import pandas as pd

    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]")
    strings = pd.Series([str(v).strip() for v in arr.ravel()])
    try:
        parsed = pd.to_datetime(strings, format="ISO8601", utc=True)
    except (ValueError, TypeError) as err:
        bad = next((s for s in strings if not _is_time(s)), strings.iloc[0])
        raise SceneReadError(f"{where}: time stamp {bad!r} is not ISO 8601 "
                             f"(e.g. 2026-06-29T08:00:00, UTC; {err})") from None
    return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]")


def _is_time(s: str) -> bool:
    import pandas as pd

    try:
        pd.to_datetime(s, format="ISO8601")
    except (ValueError, TypeError):
        return False
    return True


def _separator(table: str) -> str:
    """The column separator of a CSV table, from its first line: ``;``, tab or ``,``."""
    first = table.split("\n", 1)[0]
    counts = {sep: first.count(sep) for sep in (",", ";", "\t")}
    return max(counts, key=lambda s: (counts[s], s == ","))


def table_layout(columns: list[str], where: str) -> str:
    """The layout (``rows``, ``long`` or ``wide``) of a table with these column names.

    Raises
    ------
    SceneReadError
        If the names fit no layout, saying what each needs.
    """
    cols = set(columns)
    if "time" not in cols:
        raise SceneReadError(f"{where}: the table has no 'time' column")
    if "quantity" in cols:
        return "rows"
    if "wavelength" in cols:
        return "long"
    if any(_WIDE.match(c) and is_number(_WIDE.match(c).group(2)) for c in columns):
        return "wide"
    raise SceneReadError(
        f"{where}: cannot tell the table's layout: expected a 'quantity' column (rows "
        "layout: L_up and E_down rows, one column per wavelength), a 'wavelength' column "
        "with L and E columns (long layout: one row per time and band) or L_<nm> and "
        "E_<nm> columns (wide layout: one row per time); see bayesfluo.io.flox_layouts")


def read_table(table: str, where: str) -> FloxSeries:
    """Parse the table of a FloX CSV file (the text after its ``#`` header lines) in any
    of :data:`TABLE_LAYOUTS`.

    Parameters
    ----------
    table : str
        The CSV text, its first line the column names.
    where : str
        The file, for messages.

    Returns
    -------
    FloxSeries

    Raises
    ------
    SceneReadError
        Naming the file and the problem: a table that cannot be parsed, columns that fit
        no layout, values that are not numbers, time stamps without both spectra or with
        more than one, a time stamp that is not ISO 8601.
    """
    import pandas as pd

    try:
        df = pd.read_csv(io.StringIO(table), sep=_separator(table),
                         dtype={"time": str, "quantity": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as err:
        raise SceneReadError(f"{where}: cannot parse the table ({err})") from None
    df.columns = [str(c).strip() for c in df.columns]
    layout = table_layout(list(df.columns), where)
    return {"rows": _rows, "long": _long, "wide": _wide}[layout](df, where)


def _numbers(df, cols: list[str], where: str) -> np.ndarray:
    """The columns ``cols`` as float64; a cell that is not a number is refused, naming its
    table row and column (empty cells are NaN)."""
    import pandas as pd

    for c in cols:
        if df[c].dtype.kind in "fiu":
            continue
        num = pd.to_numeric(df[c], errors="coerce")
        bad = num.isna() & df[c].notna() & (df[c].astype(str).str.strip() != "")
        if bad.any():
            r = int(np.flatnonzero(bad.to_numpy())[0])
            raise SceneReadError(f"{where}: table row {r + 1}, column {c!r}: "
                                 f"{df[c].iloc[r]!r} is not a number")
        df[c] = num
    return df[cols].to_numpy(np.float64)


def _ancillary(frame, where: str) -> dict[str, np.ndarray]:
    """The per-time columns of ``frame`` (one row per time) as float64; cells that are
    empty or not numbers become NaN (checked against their ranges later)."""
    import pandas as pd

    return {c: pd.to_numeric(frame[c], errors="coerce").to_numpy(np.float64)
            for c in ANCILLARY_COLUMNS if c in frame.columns}


def _unknown(columns, allowed: set[str], where: str, what: str) -> None:
    for c in columns:
        if c not in allowed:
            raise SceneReadError(f"{where}: column {c!r} is neither a known column "
                                 f"({', '.join(sorted(allowed))}) nor {what}")


def _sorted(layout: str, times, wl, fwhm, rad, irr, cols, where: str) -> FloxSeries:
    """A :class:`FloxSeries` in time and wavelength order; repeated time stamps refused."""
    time = parse_times(times, where)
    _, first, counts = np.unique(time, return_index=True, return_counts=True)
    if np.any(counts > 1):
        t = np.datetime_as_string(time[first[np.argmax(counts > 1)]], unit="s")
        raise SceneReadError(f"{where}: time stamp {t} has more than one radiance or "
                             "irradiance spectrum")
    order = np.argsort(time, kind="stable")
    bands = np.argsort(wl, kind="stable")
    wl = np.asarray(wl, np.float64)[bands]
    if np.any(np.diff(wl) == 0):
        dup = wl[np.flatnonzero(np.diff(wl) == 0)[0]]
        raise SceneReadError(f"{where}: wavelength {dup:g} appears twice")
    return FloxSeries(layout, time[order], wl,
                      None if fwhm is None else np.asarray(fwhm, np.float64)[bands],
                      rad[order][:, bands], irr[order][:, bands],
                      {k: v[order] for k, v in cols.items()})


def _rows(df, where: str) -> FloxSeries:
    """The rows layout: L_up and E_down rows, one column per wavelength."""
    fixed = ("time", "quantity") + ANCILLARY_COLUMNS
    band_cols = [c for c in df.columns if c not in fixed]
    for c in band_cols:
        if not is_number(c):
            raise SceneReadError(f"{where}: column {c!r} is neither a known column "
                                 f"({', '.join(fixed)}) nor a wavelength")
    if not band_cols:
        raise SceneReadError(f"{where}: the table has no wavelength columns")
    wl = np.array([float(c) for c in band_cols], np.float64)
    q = df["quantity"].astype(str).str.strip()
    known = {"L_up", "E_down", "fwhm"}
    if not set(q.unique()) <= known:
        other = sorted(set(q.unique()) - known)
        raise SceneReadError(f"{where}: unknown quantity {other[0]!r} (expected L_up, "
                             "E_down or fwhm)")
    values = _numbers(df, band_cols, where)
    fw_rows = np.flatnonzero(q == "fwhm")
    if fw_rows.size > 1:
        raise SceneReadError(f"{where}: more than one fwhm row")
    fwhm = values[fw_rows[0]] if fw_rows.size else None
    missing = df["time"].isna().to_numpy() & (q != "fwhm").to_numpy()
    if missing.any():
        r = int(np.flatnonzero(missing)[0])
        raise SceneReadError(f"{where}: table row {r + 1} ({q.iloc[r]}) has no time stamp")
    times = df["time"].astype(str).str.strip()
    is_up, is_down = (q == "L_up").to_numpy(), (q == "E_down").to_numpy()
    t_up, t_down = times[is_up].to_numpy(), times[is_down].to_numpy()
    if not is_up.any():
        raise SceneReadError(f"{where}: no L_up rows")
    if len(set(t_up)) != len(t_up) or len(set(t_down)) != len(t_down):
        raise SceneReadError(f"{where}: a time stamp has more than one L_up or E_down row")
    if set(t_up) != set(t_down):
        lone = sorted(set(t_up) ^ set(t_down))[0]
        raise SceneReadError(f"{where}: time stamp {lone} has L_up without E_down or the "
                             "reverse; each needs both")
    order_down = {t: i for i, t in enumerate(t_down)}
    idx_down = [order_down[t] for t in t_up]
    rad, irr = values[is_up], values[is_down][idx_down]
    return _sorted("rows", t_up, wl, fwhm, rad, irr, _ancillary(df[is_up], where), where)


def _pick(columns, names: tuple[str, ...], where: str, what: str) -> str:
    found = [n for n in names if n in columns]
    if not found:
        raise SceneReadError(f"{where}: the long layout needs a {what} column, named one "
                             f"of {', '.join(names)}")
    if len(found) > 1:
        raise SceneReadError(f"{where}: more than one {what} column ({', '.join(found)})")
    return found[0]


def _long(df, where: str) -> FloxSeries:
    """The long layout: one row per time stamp and band."""
    import pandas as pd

    lcol = _pick(df.columns, RADIANCE_NAMES, where, "radiance")
    ecol = _pick(df.columns, IRRADIANCE_NAMES, where, "irradiance")
    allowed = {"time", "wavelength", "fwhm", lcol, ecol, *ANCILLARY_COLUMNS}
    _unknown(df.columns, allowed, where, "a radiance or irradiance column")
    if df["time"].isna().any():
        r = int(np.flatnonzero(df["time"].isna().to_numpy())[0])
        raise SceneReadError(f"{where}: table row {r + 1} has no time stamp")
    num_cols = ["wavelength", lcol, ecol] + (["fwhm"] if "fwhm" in df.columns else [])
    values = _numbers(df, num_cols, where)
    wl_all = values[:, 0]
    if not np.all(np.isfinite(wl_all)):
        r = int(np.flatnonzero(~np.isfinite(wl_all))[0])
        raise SceneReadError(f"{where}: table row {r + 1} has no wavelength")
    times = df["time"].astype(str).str.strip().to_numpy()
    t_keys, t_idx = np.unique(times, return_inverse=True)
    wl, b_idx = np.unique(wl_all, return_inverse=True)
    cell = t_idx * wl.size + b_idx
    uniq, counts = np.unique(cell, return_counts=True)
    if np.any(counts > 1):
        c = uniq[np.argmax(counts > 1)]
        raise SceneReadError(f"{where}: time stamp {t_keys[c // wl.size]} has more than one "
                             f"row for wavelength {wl[c % wl.size]:g}")
    rad = np.full((t_keys.size, wl.size), np.nan)
    irr = np.full((t_keys.size, wl.size), np.nan)
    rad[t_idx, b_idx], irr[t_idx, b_idx] = values[:, 1], values[:, 2]
    fwhm = None
    if "fwhm" in df.columns:
        fw = pd.Series(values[:, 3]).groupby(b_idx)
        if np.any(fw.nunique().to_numpy() > 1):
            b = int(np.flatnonzero(fw.nunique().to_numpy() > 1)[0])
            raise SceneReadError(f"{where}: the fwhm of wavelength {wl[b]:g} differs "
                                 "between time stamps; give one width per band")
        fwhm = fw.first().reindex(range(wl.size)).to_numpy(np.float64)
    anc_cols = [c for c in ANCILLARY_COLUMNS if c in df.columns]
    cols: dict[str, np.ndarray] = {}
    if anc_cols:
        anc = pd.DataFrame({c: pd.to_numeric(df[c], errors="coerce") for c in anc_cols})
        groups = anc.groupby(t_idx)
        varying = groups.nunique()
        for c in anc_cols:
            if np.any(varying[c].to_numpy() > 1):
                t = t_keys[int(np.flatnonzero(varying[c].to_numpy() > 1)[0])]
                raise SceneReadError(f"{where}: column {c!r} changes within time stamp {t}; "
                                     "a per-time value must be the same in each of its rows")
        first = groups.first().reindex(range(t_keys.size))
        cols = {c: first[c].to_numpy(np.float64) for c in anc_cols}
    return _sorted("long", t_keys, wl, fwhm, rad, irr, cols, where)


def _wide(df, where: str) -> FloxSeries:
    """The wide layout: one row per time stamp, L_<nm> and E_<nm> columns."""
    l_cols: dict[float, str] = {}
    e_cols: dict[float, str] = {}
    for c in df.columns:
        m = _WIDE.match(c)
        if m and is_number(m.group(2)):
            target = l_cols if m.group(1).startswith("L") else e_cols
            w = float(m.group(2))
            if w in target:
                raise SceneReadError(f"{where}: columns {target[w]!r} and {c!r} are the "
                                     "same wavelength")
            target[w] = c
    _unknown(df.columns, {"time", *ANCILLARY_COLUMNS, *l_cols.values(), *e_cols.values()},
             where, "an L_<nm> or E_<nm> column")
    if set(l_cols) != set(e_cols):
        w = sorted(set(l_cols) ^ set(e_cols))[0]
        has = "L" if w in l_cols else "E"
        raise SceneReadError(f"{where}: wavelength {w:g} has an {has}_ column but no "
                             f"{'E' if has == 'L' else 'L'}_ column; the wide layout needs "
                             "both for every wavelength")
    wl = np.array(sorted(l_cols), np.float64)
    times = df["time"].astype(str).str.strip()
    is_fw = (times.str.lower() == "fwhm").to_numpy()
    if is_fw.sum() > 1:
        raise SceneReadError(f"{where}: more than one fwhm row")
    if df["time"].isna().any():
        r = int(np.flatnonzero(df["time"].isna().to_numpy())[0])
        raise SceneReadError(f"{where}: table row {r + 1} has no time stamp")
    rad = _numbers(df, [l_cols[w] for w in wl], where)
    irr = _numbers(df, [e_cols[w] for w in wl], where)
    fwhm = rad[is_fw][0] if is_fw.any() else None
    keep = ~is_fw
    if not keep.any():
        raise SceneReadError(f"{where}: no time stamps")
    return _sorted("wide", times[keep].to_numpy(), wl, fwhm, rad[keep], irr[keep],
                   _ancillary(df[keep], where), where)


# --------------------------------------------------------------------------------------
# netCDF
# --------------------------------------------------------------------------------------

def flox_netcdf_names(ds: xr.Dataset) -> dict[str, str] | None:
    """The names of a FloX-style netCDF series' variables and dimensions (module
    docstring), or None where ``ds`` is not one (a bayesfluo scene: ``radiance`` over a
    ``band`` dimension, or anything else).

    Returns
    -------
    dict or None
        ``radiance``, ``irradiance`` (variable names), ``time_dim``, ``wavelength_dim``
        and ``wavelength`` (the variable or coordinate holding the band centres).
    """
    if "radiance" in ds.variables and "band" in ds["radiance"].dims:
        return None
    lname = next((n for n in RADIANCE_NAMES if n in ds.variables), None)
    ename = next((n for n in IRRADIANCE_NAMES if n in ds.variables), None)
    if lname is None or ename is None:
        return None
    dims = ds[lname].dims
    if ds[lname].ndim != 2 or set(ds[ename].dims) != set(dims):
        return None
    tdim = next((d for d in dims if d in TIME_NAMES), None)
    if tdim is None:
        return None
    wdim = next(d for d in dims if d != tdim)
    wname = next((n for n in (wdim, "wavelength", "wl", "wavelengths")
                  if n in ds.variables and ds[n].dims == (wdim,)
                  and ds[n].dtype.kind in "fiu"), None)
    if wname is None:
        return None
    return {"radiance": lname, "irradiance": ename, "time_dim": tdim,
            "wavelength_dim": wdim, "wavelength": wname}


def read_netcdf_series(ds: xr.Dataset, where: str) -> tuple[FloxSeries, dict[str, str]]:
    """A FloX-style netCDF series (:func:`flox_netcdf_names`) as a :class:`FloxSeries`,
    with the units its variables state.

    Returns
    -------
    series : FloxSeries
    units : dict
        ``radiance_units``, ``irradiance_units`` and ``wavelength_units`` where the
        variables have a ``units`` attribute.

    Raises
    ------
    SceneReadError
        If ``ds`` is not such a series, or its time stamps are not times.
    """
    names = flox_netcdf_names(ds)
    if names is None:
        raise SceneReadError(f"{where}: not a FloX netCDF series (L and E over a time "
                             f"dimension, one of {', '.join(TIME_NAMES)}, and a wavelength "
                             "dimension)")
    tdim, wdim = names["time_dim"], names["wavelength_dim"]
    rad = np.asarray(ds[names["radiance"]].transpose(tdim, wdim).values, np.float64)
    irr = np.asarray(ds[names["irradiance"]].transpose(tdim, wdim).values, np.float64)
    wl = np.asarray(ds[names["wavelength"]].values, np.float64)
    fwhm = (np.asarray(ds["fwhm"].values, np.float64)
            if "fwhm" in ds.variables and ds["fwhm"].dims == (wdim,) else None)
    if tdim in ds.variables:
        times = ds[tdim].values
    else:
        raise SceneReadError(f"{where}: the time dimension {tdim!r} has no coordinate "
                             "with the time stamps")
    aliases = {"lat": "latitude", "lon": "longitude"}
    cols: dict[str, np.ndarray] = {}
    for name in (*ANCILLARY_COLUMNS, *aliases):
        key = aliases.get(name, name)
        if name in ds.variables and key not in cols and ds[name].dims in ((tdim,), ()):
            try:
                v = np.asarray(ds[name].values, np.float64)
            except (TypeError, ValueError):
                continue
            cols[key] = np.broadcast_to(v, (rad.shape[0],)).copy()
    units = {}
    for key, var in (("radiance_units", names["radiance"]),
                     ("irradiance_units", names["irradiance"]),
                     ("wavelength_units", names["wavelength"])):
        u = ds[var].attrs.get("units")
        if isinstance(u, str) and u.strip():
            units[key] = u.strip()
    if "fwhm" in ds.variables and fwhm is not None:
        fu = ds["fwhm"].attrs.get("units")
        if isinstance(fu, str) and fu.strip() and fu.strip() != units.get(
                "wavelength_units", fu.strip()):
            try:
                fwhm = fwhm * wavelength_unit_factor(fu) / wavelength_unit_factor(
                    units["wavelength_units"])
            except ValueError as err:
                raise SceneReadError(f"{where}: 'fwhm': {err}") from None
    return _sorted("netcdf", times, wl, fwhm, rad, irr, cols, where), units
