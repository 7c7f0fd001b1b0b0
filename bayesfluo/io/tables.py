"""Transfer-function tables (external atmospheres): the Dataset, its checks, its files.

A *transfer-function table* is an :class:`xarray.Dataset` holding the quantities of the
four-stream coupling (SCIENCE.md section 2) on a fine wavelength grid, as MODTRAN-based
processing chains (SFM, SpecFit, SCOPE's MODTRAN interrogation technique) produce them:

=============  ==================  ====================================================
variable       units               meaning
=============  ==================  ====================================================
``e0_cos_pi``  mW m-2 sr-1 nm-1    ``E0 cos(sza) / pi`` at the top of the atmosphere
                                   (TSIS-1 E0 times the day's Sun-distance factor)
``rho_so``     1                   path reflectance (sun -> sensor, no ground contact)
``t_ss``       1                   direct transmittance sun -> ground
``t_sd``       1                   diffuse transmittance sun -> ground
``t_oo``       1                   direct transmittance ground -> sensor
``t_do``       1                   diffuse transmittance ground -> sensor
``rho_dd``     1                   spherical albedo of the atmosphere seen from the ground
=============  ==================  ====================================================

The coordinate ``wavelength`` is in nm, air, increasing. The attributes record the
geometry and altitudes the table was computed for (``sza_deg``, ``vza_deg``, ``raa_deg``,
``surface_altitude_m``, ``sensor_altitude_m``; optional ``sun_distance_factor``,
``surface_pressure_hpa``, ``aot550``, ...). Several tables may be stacked along further
dimensions (e.g. ``surface_pressure`` or ``aot550``); :func:`external_atmosphere`
interpolates them linearly at the values asked for and resamples the table onto a forward
model's fine grid (:class:`bayesfluo.physics.external.ExternalAtmosphere`, the physics of
a table and its perturbations).

:func:`transfer_table` builds a table from arrays, :func:`validate_table` checks one,
:func:`export_atmosphere` writes the built-in atmosphere as one. Two file layouts:

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
import warnings
from pathlib import Path

import equinox as eqx
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo._version import __version__
from bayesfluo.io.atomic import atomic_path
from bayesfluo.io.common import is_number
from bayesfluo.io.netcdf import write_dataset
from bayesfluo.physics.air import air_to_vacuum, vacuum_to_air
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.external import TABLE_TERMS, ExternalAtmosphere, resample_table
from bayesfluo.physics.forward import ForwardModel, Geometry, fine_terms

__all__ = ["TABLE_VARIABLES", "GEOMETRY_ATTRS", "transfer_table", "validate_table",
           "export_atmosphere", "external_atmosphere",
           "read_table", "write_table", "read_table_text", "write_table_text",
           "read_table_netcdf", "write_table_netcdf"]

TABLE_VARIABLES: dict[str, tuple[str, str]] = {
    "e0_cos_pi": ("mW m-2 sr-1 nm-1",
                  "top-of-atmosphere solar irradiance times cos(solar zenith angle) / pi"),
    "rho_so": ("1", "path reflectance (light scattered into the sensor without touching "
                    "the ground)"),
    "t_ss": ("1", "direct transmittance sun to ground"),
    "t_sd": ("1", "diffuse transmittance sun to ground"),
    "t_oo": ("1", "direct transmittance ground to sensor"),
    "t_do": ("1", "diffuse transmittance ground to sensor"),
    "rho_dd": ("1", "spherical albedo of the atmosphere seen from the ground"),
}
"""Variables of a transfer-function table: name -> (units, long_name), in the order of
:data:`bayesfluo.physics.external.TABLE_TERMS`."""

GEOMETRY_ATTRS = ("sza_deg", "vza_deg", "raa_deg", "surface_altitude_m", "sensor_altitude_m")
"""Attributes every table carries: the geometry (degrees) and altitudes (m above sea
level) it was computed for."""

_fine_terms_jit = eqx.filter_jit(fine_terms)


def transfer_table(wavelength_nm, *, e0_cos_pi, rho_so, t_ss, t_sd, t_oo, t_do, rho_dd,
                   sza_deg: float, vza_deg: float, raa_deg: float, surface_altitude_m: float,
                   sensor_altitude_m: float, source: str = "", **attrs) -> xr.Dataset:
    """Build a transfer-function table from arrays on a wavelength grid.

    Parameters
    ----------
    wavelength_nm : array (n,)
        Air wavelengths, nm, strictly increasing.
    e0_cos_pi : array (n,)
        ``E0 cos(sza) / pi``, mW m-2 sr-1 nm-1.
    rho_so, t_ss, t_sd, t_oo, t_do, rho_dd : array (n,)
        Path reflectance, transmittances and spherical albedo (dimensionless).
    sza_deg, vza_deg, raa_deg : float
        Geometry the table was computed for, degrees.
    surface_altitude_m, sensor_altitude_m : float
        Altitudes above sea level, m.
    source : str
        Where the table comes from (kept as the ``source`` attribute).
    **attrs
        Further attributes (e.g. ``surface_pressure_hpa``, ``aot550``).

    Returns
    -------
    xarray.Dataset
        Checked by :func:`validate_table`.

    Raises
    ------
    ValueError
        If an array is not 1-D, or the table breaks :func:`validate_table`.
    """
    wl = np.asarray(wavelength_nm, dtype=np.float64)
    values = dict(e0_cos_pi=e0_cos_pi, rho_so=rho_so, t_ss=t_ss, t_sd=t_sd, t_oo=t_oo,
                  t_do=t_do, rho_dd=rho_dd)
    data_vars = {}
    for name, (units, long_name) in TABLE_VARIABLES.items():
        arr = np.asarray(values[name], dtype=np.float32)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D over wavelength, got shape {arr.shape}")
        data_vars[name] = (("wavelength",), arr, {"units": units, "long_name": long_name})
    ds = xr.Dataset(
        data_vars,
        coords={"wavelength": ("wavelength", wl, {
            "units": "nm", "medium": "air", "long_name": "wavelength in air",
            "standard_name": "radiation_wavelength"})},
        attrs={"title": "bayesfluo atmospheric transfer-function table",
               "Conventions": "CF-1.10", "source": source, "bayesfluo_version": __version__,
               "sza_deg": float(sza_deg), "vza_deg": float(vza_deg),
               "raa_deg": float(raa_deg), "surface_altitude_m": float(surface_altitude_m),
               "sensor_altitude_m": float(sensor_altitude_m),
               **{k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
                  for k, v in attrs.items()}})
    validate_table(ds)
    return ds


def validate_table(ds: xr.Dataset, name: str = "transfer-function table") -> None:
    """Check a transfer-function table; raise ValueError naming the first problem.

    Checks: every variable of :data:`TABLE_VARIABLES` present with a ``wavelength``
    dimension; the wavelength coordinate in nm (air), finite and strictly increasing;
    values finite; transmittances and ``rho_so``, ``rho_dd`` in [0, 1] (1e-4 tolerance
    for rounding); ``e0_cos_pi`` >= 0; the geometry attributes present and finite.

    Raises
    ------
    ValueError
        Naming the table (``name``) and the first problem found.
    """
    missing = [v for v in TABLE_VARIABLES if v not in ds]
    if missing:
        raise ValueError(f"{name}: missing variable(s) {missing}; a table needs "
                         f"{list(TABLE_VARIABLES)}")
    if "wavelength" not in ds.coords:
        raise ValueError(f"{name}: needs a 'wavelength' coordinate in nm")
    wl_da = ds["wavelength"]
    units = str(wl_da.attrs.get("units", "nm")).strip().lower()
    if units not in ("nm", "nanometer", "nanometers"):
        raise ValueError(f"{name}: wavelength units must be nm, found {units!r}")
    if str(wl_da.attrs.get("medium", "air")).lower() != "air":
        raise ValueError(f"{name}: wavelength must be in air (convert vacuum wavelengths with "
                         "bayesfluo.physics.air.vacuum_to_air)")
    wl = np.asarray(wl_da.values, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0):
        raise ValueError(f"{name}: wavelength must be finite and strictly increasing")
    if wl.max() < 50.0:
        raise ValueError(f"{name}: wavelengths {wl.min():.4g}-{wl.max():.4g} look like "
                         "micrometres; the table needs nm")
    for v in TABLE_VARIABLES:
        da = ds[v]
        if "wavelength" not in da.dims:
            raise ValueError(f"{name}: variable {v!r} has no 'wavelength' dimension")
        arr = np.asarray(da.values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: variable {v!r} contains NaN or infinite values")
        lo = 0.0 if v == "e0_cos_pi" else -1e-4
        hi = np.inf if v == "e0_cos_pi" else 1.0 + 1e-4
        if arr.min() < lo or arr.max() > hi:
            rng = "must be >= 0" if v == "e0_cos_pi" else "must lie in [0, 1]"
            raise ValueError(f"{name}: {v} {rng}, found {arr.min():.4g} to {arr.max():.4g}")
    for a in GEOMETRY_ATTRS:
        if a not in ds.attrs:
            raise ValueError(f"{name}: missing attribute {a!r} (the geometry and altitudes "
                             f"the table was computed for: {list(GEOMETRY_ATTRS)})")
        if not np.isfinite(float(ds.attrs[a])):
            raise ValueError(f"{name}: attribute {a!r} must be finite")


def export_atmosphere(model: ForwardModel, atm: AtmosphereParams, geom: Geometry,
                      source: str = "bayesfluo built-in atmosphere") -> xr.Dataset:
    """The built-in atmosphere as a transfer-function table on the model's fine grid.

    Parameters
    ----------
    model : ForwardModel
        Sets the fine wavelength grid (air, nm) and the solar spectrum.
    atm : AtmosphereParams
        Scalar surface pressure (hPa), AOT at 550 nm, Angstrom exponent, diffuse path.
    geom : Geometry
        Scalar angles (degrees), altitudes (m) and Sun-distance factor.
    source : str
        The table's ``source`` attribute.

    Returns
    -------
    xarray.Dataset
        The table (see module docstring), with the atmosphere's parameters and the
        aerosol constants of ``model`` as attributes.
    """
    ft = _fine_terms_jit(model, atm, geom)
    e0 = (model.solar * geom.sun_distance_factor * jnp.cos(jnp.deg2rad(geom.sza_deg))
          / jnp.pi)
    tf = ft.transfer
    f = lambda a: float(np.asarray(a))  # noqa: E731
    return transfer_table(
        np.asarray(model.fine_nm, dtype=np.float64), e0_cos_pi=np.asarray(e0),
        rho_so=np.asarray(tf.rho_so), t_ss=np.asarray(tf.t_ss), t_sd=np.asarray(tf.t_sd),
        t_oo=np.asarray(tf.t_oo), t_do=np.asarray(tf.t_do), rho_dd=np.asarray(tf.rho_dd),
        sza_deg=f(geom.sza_deg), vza_deg=f(geom.vza_deg), raa_deg=f(geom.raa_deg),
        surface_altitude_m=f(geom.surface_altitude_m),
        sensor_altitude_m=f(geom.sensor_altitude_m), source=source,
        sun_distance_factor=f(geom.sun_distance_factor),
        surface_pressure_hpa=f(atm.surface_pressure_hpa), aot550=f(atm.aot550),
        angstrom=f(atm.angstrom), diffuse_path=f(atm.diffuse_path),
        aerosol_omega=model.aerosol_omega, aerosol_g=model.aerosol_g,
        aerosol_scale_height_m=model.aerosol_scale_height_m, instrument=model.instrument)


def external_atmosphere(model: ForwardModel, table: xr.Dataset,
                        group_edges_nm: tuple[float, ...] = (),
                        geometry: Geometry | None = None, max_angle_deg: float = 2.0,
                        max_altitude_m: float = 100.0, **coords) -> ExternalAtmosphere:
    """Resample a table onto ``model``'s fine grid for the forward model.

    Parameters
    ----------
    model : ForwardModel
    table : xarray.Dataset
        A transfer-function table (:func:`validate_table`).
    group_edges_nm : tuple of float
        Wavelengths (nm) splitting the window into band groups for ``up_scale``.
    geometry : Geometry, optional
        The geometry the table will be applied to; a warning is issued when its angles
        differ from the table's by more than ``max_angle_deg`` (degrees) or its altitudes
        by more than ``max_altitude_m`` (m).
    **coords
        Values of the table's further dimensions (e.g. ``surface_pressure=955.0``),
        interpolated linearly (:meth:`xarray.Dataset.interp`).

    Returns
    -------
    ExternalAtmosphere
        The table on the fine grid (:func:`bayesfluo.physics.external.resample_table`).

    Raises
    ------
    ValueError
        If the table is invalid, does not cover the fine grid, has a dimension left
        unresolved, or is too coarse to resolve the band responses (step above a quarter
        of the narrowest FWHM).
    """
    validate_table(table)
    if coords:
        unknown = [k for k in coords if k not in table.dims]
        if unknown:
            raise ValueError(f"table has no dimension(s) {unknown}; its dimensions are "
                             f"{list(table.dims)}")
        table = table.interp(coords)
    extra = [d for d in table.dims if d != "wavelength"]
    if extra:
        raise ValueError(f"table has further dimension(s) {extra}: give their values, e.g. "
                         f"external_atmosphere(model, table, {extra[0]}=...)")
    ext = resample_table(model, table["wavelength"].values,
                         {n: table[n].values for n in TABLE_TERMS}, group_edges_nm,
                         source=str(table.attrs.get("source", "")))
    if geometry is not None:
        _check_geometry(table, geometry, max_angle_deg, max_altitude_m)
    return ext


def _check_geometry(table, geom: Geometry, max_angle: float, max_alt: float) -> None:
    for a in ("sza_deg", "vza_deg"):
        d = float(np.max(np.abs(np.asarray(getattr(geom, a)) - table.attrs[a])))
        if d > max_angle:
            warnings.warn(f"{a} differs from the table's ({table.attrs[a]:.2f}) by {d:.2f} "
                          "degrees: the table's transfer functions are used as they are",
                          stacklevel=3)
    for a in ("surface_altitude_m", "sensor_altitude_m"):
        d = float(np.max(np.abs(np.asarray(getattr(geom, a)) - table.attrs[a])))
        if d > max_alt:
            warnings.warn(f"{a} differs from the table's ({table.attrs[a]:.1f} m) by {d:.1f} m",
                          stacklevel=3)

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
                file_attrs[key] = float(val) if is_number(val) else val
            continue
        body.append(s)
    if not body:
        raise ValueError(f"{name}: no header line and no data")
    header = [(m.group(1), m.group(2)) for m in _HEADER_TOKEN.finditer(body[0])]
    if any(is_number(h) for h, _ in header):
        raise ValueError(f"{name}: the first line must be a header of column names, found "
                         f"numbers: {body[0][:60]!r}")
    rows = body[1:]
    if rows and not any(is_number(t) for t in rows[0].split()):  # names line (T18 layout)
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
