"""Reading and writing transfer-function tables (netCDF and MODTRAN-style text).

The table itself is defined in :mod:`bayesfluo.physics.external`. Two file layouts:

netCDF (``.nc``)
    The :class:`xarray.Dataset` as it is (h5netcdf, compressed, written atomically).

Text (any other suffix)
    Whitespace-separated columns. Lines starting with ``#`` are comments; a comment
    ``# key = value`` sets an attribute (the geometry ``sza_deg``, ``vza_deg``,
    ``raa_deg``, ``surface_altitude_m``, ``sensor_altitude_m`` must be given there or as
    keyword arguments of :func:`read_table_text`). The first other line is the header:
    column names, each optionally followed by its unit in brackets, ``name(unit)`` or
    ``name [unit]``. Then one row per wavelength. Accepted columns (case-insensitive):

    ======================================  =========================================
    column                                  meaning, accepted units
    ======================================  =========================================
    ``wavelength``, ``wl``, ``lambda``      wavelength; nm (default) or um/micrometer
    ``wn``, ``wavenumber``                  vacuum wavenumber, cm-1 (used in
                                            preference to a wavelength column)
    ``e0_cos_pi``, ``toasun``, ``T1``       E0 cos(sza)/pi; radiance units below
    ``e0``, ``esun``, ``solar_irradiance``  E0 (needs ``sza_deg``); irradiance units
    ``rho_so``, ``rso``, ``T2``             path reflectance, 1
    ``rho_dd``, ``rdd``, ``T3``             spherical albedo, 1
    ``t_ss``, ``tss``, ``T4``               direct transmittance sun -> ground, 1
    ``t_sd``, ``tsd``, ``T5``               diffuse transmittance sun -> ground, 1
    ``t_oo``, ``too``, ``T6``               direct transmittance ground -> sensor, 1
    ``t_do``, ``tdo``, ``T7``               diffuse transmittance ground -> sensor, 1
    ======================================  =========================================

    ``T1``-``T7`` follow the 18-function layout of the MODTRAN interrogation technique
    (Verhoef and Bach 2003; the ``.atm`` files of SCOPE and FLEX chains: header
    ``WN (cm-1) WL (nm) T1 ... T18``, a second header line of names ``toasun rso rdd tss
    tsd too tdo tsstoo ...``, then rows). Columns ``T8``-``T18`` (products of the first
    seven and thermal terms) and any other unknown columns are ignored. In that layout
    ``WL`` is a vacuum wavelength (``1e7 / WN``); a wavelength-only file is taken as air
    unless it says ``# wavelength_medium = vacuum`` (or ``medium=`` is given).

    Radiance units (for ``e0_cos_pi``; default mW m-2 sr-1 nm-1, which is also what the
    interrogation technique's ``toasun`` holds): ``mW m-2 sr-1 nm-1``,
    ``W m-2 sr-1 um-1`` (the same numbers), ``W m-2 sr-1 nm-1``, ``W cm-2 sr-1 nm-1``,
    ``uW cm-2 sr-1 nm-1``, ``mW cm-2 sr-1 um-1``, ``uW cm-2 sr-1 um-1`` and per
    wavenumber ``W cm-2 sr-1 / cm-1`` (MODTRAN's native unit, converted with the
    wavenumber column). Irradiance units (for ``e0``) are the same without ``sr-1``.

Wrong input gets a ValueError naming the problem: a missing column, an unknown unit,
a grid that looks like micrometres while the header says (or defaults to) nm, a
wavenumber column that looks like wavelengths, rows of the wrong length, non-numbers.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import numpy as np
import xarray as xr

from bayesfluo.io.atomic import atomic_path
from bayesfluo.io.netcdf import write_dataset
from bayesfluo.physics.air import air_to_vacuum, vacuum_to_air
from bayesfluo.physics.external import GEOMETRY_ATTRS, TABLE_VARIABLES, validate_table

__all__ = ["read_table", "write_table", "read_table_text", "write_table_text",
           "read_table_netcdf", "write_table_netcdf"]

_ALIASES = {
    "e0_cos_pi": ("e0_cos_pi", "toasun", "t1"),
    "rho_so": ("rho_so", "rso", "t2"),
    "rho_dd": ("rho_dd", "rdd", "t3"),
    "t_ss": ("t_ss", "tss", "t4"),
    "t_sd": ("t_sd", "tsd", "t5"),
    "t_oo": ("t_oo", "too", "t6"),
    "t_do": ("t_do", "tdo", "t7"),
    "e0": ("e0", "esun", "solar_irradiance"),
    "wavelength": ("wavelength", "wl", "lambda"),
    "wavenumber": ("wn", "wavenumber"),
}
_T18_NAMES = ("toasun", "rso", "rdd", "tss", "tsd", "too", "tdo", "tsstoo", "tsdtoo",
              "tsstdo", "tsdtdo", "tssrdd", "toordd", "tssrddtoo", "lat", "lab", "labtoo",
              "labtdo")

# factor to mW m-2 [sr-1] nm-1; None marks the per-wavenumber unit (factor wn**2)
_RADIANCE_UNITS = {
    "mw m-2 sr-1 nm-1": 1.0, "mw/m2/sr/nm": 1.0, "w m-2 sr-1 um-1": 1.0,
    "w/m2/sr/um": 1.0, "w m-2 sr-1 nm-1": 1.0e3, "w/m2/sr/nm": 1.0e3,
    "w cm-2 sr-1 nm-1": 1.0e7, "w/cm2/sr/nm": 1.0e7, "uw cm-2 sr-1 nm-1": 10.0,
    "uw/cm2/sr/nm": 10.0, "mw cm-2 sr-1 um-1": 10.0, "mw/cm2/sr/um": 10.0,
    "uw cm-2 sr-1 um-1": 1.0e-2, "uw/cm2/sr/um": 1.0e-2,
    "w cm-2 sr-1 / cm-1": None, "w cm-2 sr-1 (cm-1)-1": None, "w/cm2/sr/cm-1": None,
}
_IRRADIANCE_UNITS = {k.replace(" sr-1", "").replace("/sr", ""): v
                     for k, v in _RADIANCE_UNITS.items()}
_WAVELENGTH_UNITS = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1.0e3,
                     "micrometer": 1.0e3, "micrometers": 1.0e3, "micron": 1.0e3}
_HEADER_TOKEN = re.compile(r"([^\s\(\[]+)\s*(?:[\(\[]([^\)\]]*)[\)\]])?")


def _norm_unit(u: str) -> str:
    u = u.strip().lower().replace("µ", "u").replace("^", "").replace("*", " ")
    return re.sub(r"\s+", " ", u)


def _is_number(tok: str) -> bool:
    try:
        float(tok)
    except ValueError:
        return False
    return True


def read_table(path: str | os.PathLike, **kwargs) -> xr.Dataset:
    """Read a transfer-function table: netCDF for ``.nc``/``.nc4``, text otherwise
    (keyword arguments go to :func:`read_table_text`)."""
    if Path(path).suffix.lower() in (".nc", ".nc4", ".netcdf"):
        return read_table_netcdf(path)
    return read_table_text(path, **kwargs)


def write_table(table: xr.Dataset, path: str | os.PathLike, **kwargs) -> Path:
    """Write a transfer-function table atomically: netCDF for ``.nc``, text otherwise."""
    if Path(path).suffix.lower() in (".nc", ".nc4", ".netcdf"):
        return write_table_netcdf(table, path)
    return write_table_text(table, path, **kwargs)


def read_table_netcdf(path: str | os.PathLike) -> xr.Dataset:
    """Read a table from netCDF (loaded into memory) and validate it."""
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        table = ds.load()
    validate_table(table, name=str(path))
    return table


def write_table_netcdf(table: xr.Dataset, path: str | os.PathLike) -> Path:
    """Validate and write a table to netCDF-4 (compressed; temporary name, then rename)."""
    validate_table(table)
    return write_dataset(table, path)


def read_table_text(path: str | os.PathLike, *, medium: str | None = None,
                    units: dict[str, str] | None = None, **attrs) -> xr.Dataset:
    """Read a MODTRAN-style text table (layout and units: module docstring).

    Parameters
    ----------
    path : path
    medium : {"air", "vacuum"}, optional
        Medium of a wavelength column; default from ``# wavelength_medium``, else vacuum
        when the file is in the T1..T18 layout and air otherwise. A wavenumber column is
        always vacuum.
    units : dict, optional
        Units of columns (by the name in the file), overriding the header's.
    **attrs
        Attributes of the table (e.g. the geometry), overriding the file's comments.

    Returns
    -------
    xarray.Dataset
        The table on an increasing air-wavelength grid (nm).
    """
    name = str(path)
    lines = Path(path).read_text().splitlines()
    file_attrs: dict[str, object] = {}
    body = []
    for ln in lines:
        s = ln.strip()
        if not s:
            continue
        if s.startswith("#"):
            m = re.match(r"#\s*([A-Za-z_][\w]*)\s*[=:]\s*(.+)$", s)
            if m:
                key, val = m.group(1), m.group(2).strip()
                file_attrs[key] = float(val) if _is_number(val) else val
            continue
        body.append(s)
    if not body:
        raise ValueError(f"{name}: no header line and no data")
    header = [(m.group(1), m.group(2)) for m in _HEADER_TOKEN.finditer(body[0])]
    if any(_is_number(h) for h, _ in header):
        raise ValueError(f"{name}: the first line must be a header of column names, found "
                         f"numbers: {body[0][:60]!r}")
    rows = body[1:]
    if rows and not any(_is_number(t) for t in rows[0].split()):  # names line (T18 layout)
        names = rows[0].lower().split()
        tcols = [h.lower() for h, _ in header if re.fullmatch(r"t\d+", h.lower())]
        if tcols and names[:7] != list(_T18_NAMES[:7]):
            raise ValueError(f"{name}: second header line {names[:7]} does not follow the "
                             f"T18 layout ({' '.join(_T18_NAMES[:7])} ...)")
        rows = rows[1:]
    if not rows:
        raise ValueError(f"{name}: no data rows")
    widths = {len(r.split()) for r in rows}
    if widths != {len(header)}:
        raise ValueError(f"{name}: rows have {sorted(widths)} values, the header names "
                         f"{len(header)} columns")
    try:
        data = np.array([[float(t) for t in r.split()] for r in rows])
    except ValueError as err:
        raise ValueError(f"{name}: a data row holds something that is not a number ({err})"
                         ) from None

    col_units = {h.lower(): (u or "") for h, u in header}
    for k, u in (units or {}).items():
        col_units[k.lower()] = u
    index = {h.lower(): i for i, (h, _) in enumerate(header)}

    def find(quantity):
        for alias in _ALIASES[quantity]:
            if alias in index:
                return alias
        return None

    t_layout = any(re.fullmatch(r"t\d+", h) for h in index)
    # --- wavelength grid (air, nm) ---------------------------------------------------------
    wn_col, wl_col = find("wavenumber"), find("wavelength")
    wn = None
    if wn_col is not None:
        u = _norm_unit(col_units[wn_col] or "cm-1")
        if u not in ("cm-1", "1/cm"):
            raise ValueError(f"{name}: wavenumber column {wn_col!r} must be in cm-1, "
                             f"header says {u!r}")
        wn = data[:, index[wn_col]]
        if np.nanmin(wn) < 1000.0:
            raise ValueError(f"{name}: wavenumber column {wn_col!r} holds "
                             f"{np.nanmin(wn):.4g}-{np.nanmax(wn):.4g}, which looks like "
                             "wavelengths, not cm-1")
        if np.any(wn <= 0) or not np.all(np.isfinite(wn)):
            raise ValueError(f"{name}: wavenumbers must be finite and positive")
        wl = vacuum_to_air(1.0e7 / wn)
    elif wl_col is not None:
        stated = col_units[wl_col]
        u = _norm_unit(stated or "nm")
        if u not in _WAVELENGTH_UNITS:
            raise ValueError(f"{name}: wavelength unit {stated!r} not understood (use nm or "
                             "um)")
        wl = data[:, index[wl_col]] * _WAVELENGTH_UNITS[u]
        if _WAVELENGTH_UNITS[u] == 1.0 and np.nanmax(wl) < 50.0:
            raise ValueError(f"{name}: wavelength column {wl_col!r} holds "
                             f"{np.nanmin(wl):.4g}-{np.nanmax(wl):.4g}, which looks like "
                             f"micrometres, but its unit is {'nm' if stated else 'unstated (nm)'}"
                             f"; write the header as {wl_col}(um) or convert to nm")
        med = (medium or str(file_attrs.get("wavelength_medium", ""))
               or ("vacuum" if t_layout else "air")).lower()
        if med not in ("air", "vacuum"):
            raise ValueError(f"{name}: wavelength medium must be air or vacuum, got {med!r}")
        if med == "vacuum":
            wl = vacuum_to_air(wl)
    else:
        raise ValueError(f"{name}: no wavelength column (one of "
                         f"{_ALIASES['wavelength'] + _ALIASES['wavenumber']}); columns are "
                         f"{[h for h, _ in header]}")
    if not np.all(np.isfinite(wl)):
        raise ValueError(f"{name}: wavelength column contains NaN or infinite values")

    # --- quantities ----------------------------------------------------------------------
    all_attrs = {**file_attrs, **attrs}
    values = {}
    missing = []
    for q in TABLE_VARIABLES:
        col = find(q)
        if col is None and q == "e0_cos_pi":
            col = find("e0")
        if col is None:
            missing.append(q)
            continue
        v = data[:, index[col]].astype(np.float64)
        if q == "e0_cos_pi":
            is_irr = col in _ALIASES["e0"]
            table_units = _IRRADIANCE_UNITS if is_irr else _RADIANCE_UNITS
            stated = col_units[col]
            u = _norm_unit(stated or ("mw m-2 nm-1" if is_irr else "mw m-2 sr-1 nm-1"))
            if u not in table_units:
                raise ValueError(f"{name}: unit {stated!r} of column {col!r} not understood; "
                                 f"accepted: {sorted(table_units)}")
            factor = table_units[u]
            if factor is None:
                if wn is None:
                    raise ValueError(f"{name}: column {col!r} is per wavenumber ({stated}); "
                                     "that needs a wavenumber column")
                v = v * wn**2  # W cm-2 (cm-1)-1 -> W cm-2 nm-1 is wn**2 / 1e7; -> mW m-2 * 1e7
            else:
                v = v * factor
            if is_irr:
                if "sza_deg" not in all_attrs:
                    raise ValueError(f"{name}: column {col!r} is E0; converting it to "
                                     "E0 cos(sza)/pi needs sza_deg (a '# sza_deg = ...' line "
                                     "or keyword)")
                v = v * math.cos(math.radians(float(all_attrs["sza_deg"]))) / math.pi
        else:
            stated = col_units[col]
            if stated and _norm_unit(stated) not in ("1", "", "-", "none", "unitless"):
                raise ValueError(f"{name}: column {col!r} ({q}) is dimensionless; header "
                                 f"gives unit {stated!r}")
        values[q] = v
    if missing:
        raise ValueError(f"{name}: missing column(s) for {missing}; columns are "
                         f"{[h for h, _ in header]} (accepted names: "
                         f"{ {q: _ALIASES[q] for q in missing} })")
    absent = [a for a in GEOMETRY_ATTRS if a not in all_attrs]
    if absent:
        raise ValueError(f"{name}: geometry attribute(s) {absent} not given: add "
                         "'# sza_deg = 30' style comment lines or pass them as keywords")

    order = np.argsort(wl)
    wl = wl[order]
    if np.any(np.diff(wl) <= 0):
        raise ValueError(f"{name}: repeated wavelengths in the grid")
    ds = xr.Dataset(
        {q: (("wavelength",), values[q][order].astype(np.float32),
             {"units": TABLE_VARIABLES[q][0], "long_name": TABLE_VARIABLES[q][1]})
         for q in TABLE_VARIABLES},
        coords={"wavelength": ("wavelength", wl, {
            "units": "nm", "medium": "air", "long_name": "wavelength in air",
            "standard_name": "radiation_wavelength"})},
        attrs={"title": "atmospheric transfer-function table", "Conventions": "CF-1.10",
               "source": f"text table {Path(path).name}",
               **{k: v for k, v in all_attrs.items() if k != "wavelength_medium"}})
    for a in GEOMETRY_ATTRS:
        ds.attrs[a] = float(ds.attrs[a])
    validate_table(ds, name=name)
    return ds


def write_table_text(table: xr.Dataset, path: str | os.PathLike, layout: str = "named"
                     ) -> Path:
    """Write a table as text, atomically (temporary name, then rename).

    Parameters
    ----------
    table : xarray.Dataset
        A transfer-function table without further dimensions.
    path : path
    layout : {"named", "t18"}
        ``"named"``: columns ``wavelength(nm)`` (air) and the table's variables with
        units. ``"t18"``: the interrogation technique's layout, ``WN (cm-1)`` (vacuum),
        ``WL (nm)`` (vacuum, ``1e7/WN``), ``T1``-``T18`` with the names line; ``T8``-``T14``
        are written as the products of ``T1``-``T7`` their names say (``tsstoo = tss *
        too`` ...), the thermal ``T15``-``T18`` as 0 (negligible below 1 um).

    Numbers are written with 9 significant digits (float32 values read back exactly),
    wavelengths with 1e-9 nm, wavenumbers with 1e-8 cm-1. Attributes become ``# key =
    value`` comment lines.
    """
    validate_table(table)
    extra = [d for d in table.dims if d != "wavelength"]
    if extra:
        raise ValueError(f"a text table holds one table; select along {extra} first")
    if layout not in ("named", "t18"):
        raise ValueError(f"layout must be 'named' or 't18', got {layout!r}")
    wl = np.asarray(table["wavelength"].values, dtype=np.float64)
    v = {q: np.asarray(table[q].values, dtype=np.float64) for q in TABLE_VARIABLES}
    out = ["# bayesfluo atmospheric transfer-function table"]
    for k, val in table.attrs.items():
        if isinstance(val, (int, float, np.integer, np.floating)):
            out.append(f"# {k} = {float(val)!r}")
        elif isinstance(val, str) and val and "\n" not in val:
            out.append(f"# {k} = {val}")
    if layout == "named":
        out.append("# wavelength_medium = air")
        out.append("wavelength(nm) " + " ".join(
            f"{q}({TABLE_VARIABLES[q][0]})" for q in TABLE_VARIABLES))
        cols = [wl] + [v[q] for q in TABLE_VARIABLES]
        fmt = ["%.9f"] + ["%.9g"] * len(TABLE_VARIABLES)
        order = slice(None)
    else:
        wl_vac = air_to_vacuum(wl)
        wn = 1.0e7 / wl_vac
        zeros = np.zeros_like(wl)
        t = [v["e0_cos_pi"], v["rho_so"], v["rho_dd"], v["t_ss"], v["t_sd"], v["t_oo"],
             v["t_do"], v["t_ss"] * v["t_oo"], v["t_sd"] * v["t_oo"], v["t_ss"] * v["t_do"],
             v["t_sd"] * v["t_do"], v["t_ss"] * v["rho_dd"], v["t_oo"] * v["rho_dd"],
             v["t_ss"] * v["rho_dd"] * v["t_oo"], zeros, zeros, zeros, zeros]
        out.append("WN (cm-1) WL (nm) " + " ".join(
            ["T1 [mW m-2 sr-1 nm-1]"] + [f"T{i}" for i in range(2, 19)]))
        out.append("                   " + " ".join(_T18_NAMES[:14])
                   + " Lat Lab Labtoo Labtdo")
        cols = [wn, wl_vac] + t
        fmt = ["%.8f", "%.9f"] + ["%.9g"] * 18
        order = slice(None, None, -1)  # increasing wavenumber, as MODTRAN writes
    arr = np.column_stack(cols)[order]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as fh:
            fh.write("\n".join(out) + "\n")
            np.savetxt(fh, arr, fmt=" ".join(fmt))
    return Path(path)
