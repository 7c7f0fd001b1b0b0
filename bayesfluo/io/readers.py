"""Open any scene file bayesfluo reads: one entry point, dispatched by file type.

:func:`open_scene` returns a scene in the scene format (README, "Scene format") from

* netCDF-4 (``.nc``, ``.nc4``, ``.h5``): :func:`bayesfluo.io.netcdf.read_scene`;
* Zarr (a ``.zarr`` directory): :func:`xarray.open_zarr`, then validated;
* ENVI (``.hdr``, or the data file beside one): :mod:`bayesfluo.io.envi`;
* DESIS Level-1 (a ``.tif``/``.tiff`` with its metadata ``.xml`` beside it, the ``.xml``,
  or the product directory): :mod:`bayesfluo.io.desis`;
* FloX-style top-of-canopy tables (``.csv``): :mod:`bayesfluo.io.flox`.

Every reader raises :class:`SceneReadError` (a :class:`ValueError`) naming the file and the
problem. What the format readers share lives in :mod:`bayesfluo.io.common`; this module only
dispatches to them.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from bayesfluo.io.common import GEOMETRY_VARIABLES, SceneReadError, finish, geometry_array
from bayesfluo.io.desis import read_desis
from bayesfluo.io.envi import read_envi
from bayesfluo.io.flox import read_flox_csv
from bayesfluo.io.netcdf import read_scene

__all__ = ["open_scene", "SceneReadError", "SUPPORTED_FORMATS"]

#: What :func:`open_scene` reads, for messages and the README.
SUPPORTED_FORMATS = (
    "netCDF-4 scene (.nc, .nc4, .h5)",
    "Zarr scene (.zarr directory)",
    "ENVI cube (.hdr and its data file)",
    "DESIS Level-1 product (GeoTIFF + metadata XML, or the product directory)",
    "FloX-style table (.csv)",
)


def open_scene(path: str | os.PathLike, *, geometry: dict | None = None,
               instrument: str | None = None, chunks="auto") -> xr.Dataset:
    """Open a scene file of any supported format, lazily where the format allows.

    Parameters
    ----------
    path : str or path-like
        The file (or Zarr / DESIS product directory).
    geometry : dict, optional
        Values the file lacks or that override it: ``sza``, ``saa``, ``vza``, ``vaa``
        (degrees), ``surface_altitude``, ``sensor_altitude`` (m), ``day_of_year``.
    instrument : str, optional
        The bayesfluo instrument name, where the file does not say it.
    chunks : "auto", int, dict or None
        Dask chunks of the radiance (None reads into memory).

    Returns
    -------
    xarray.Dataset
        A validated scene.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    SceneReadError
        If the file type is unknown or the file cannot be read as a scene.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file not found: {path}")
    kind = _kind(path)
    if kind == "netcdf":
        try:
            ds = read_scene(path)
        except ValueError as err:
            raise SceneReadError(str(err)) from err
        return _override(ds, geometry, instrument, path)
    if kind == "zarr":
        try:
            ds = xr.open_zarr(path, chunks=chunks)
        except Exception as err:  # zarr raises several types for a broken store
            raise SceneReadError(f"cannot read {path} as a Zarr scene: {err}") from err
        return _override(ds, geometry, instrument, path)
    if kind == "envi":
        return read_envi(path, geometry=geometry, instrument=instrument, chunks=chunks)
    if kind == "desis":
        return read_desis(path, geometry=geometry, instrument=instrument, chunks=chunks)
    if kind == "flox":
        return read_flox_csv(path, geometry=geometry, instrument=instrument)
    raise SceneReadError(f"{path}: unknown scene file type; bayesfluo reads "
                         + "; ".join(SUPPORTED_FORMATS))


def _kind(path: Path) -> str | None:
    """The reader for ``path``: netcdf, zarr, envi, desis, flox or None."""
    suffix = path.suffix.lower()
    if path.is_dir():
        if suffix == ".zarr" or (path / "zarr.json").exists() or (path / ".zgroup").exists():
            return "zarr"
        if list(path.glob("*SPECTRAL_IMAGE*.tif")) or list(path.glob("*.tif")):
            return "desis"
        return None
    if suffix in (".nc", ".nc4", ".h5", ".hdf5", ".cdf"):
        return "netcdf"
    if suffix == ".hdr":
        return "envi"
    if suffix == ".csv":
        return "flox"
    if suffix in (".tif", ".tiff", ".xml"):
        return "desis"
    if path.with_suffix(".hdr").exists() or Path(str(path) + ".hdr").exists():
        return "envi"
    return None


def _override(ds: xr.Dataset, geometry: dict | None, instrument: str | None,
              path: Path) -> xr.Dataset:
    """Apply user geometry / instrument to a scene read from netCDF or Zarr, validate."""
    if instrument is not None:
        ds = ds.assign_attrs(instrument=instrument)
    ny = ds.sizes.get("y", ds.sizes.get("time"))
    nx = ds.sizes.get("x")
    for key, value in (geometry or {}).items():
        if key == "day_of_year":
            ds = ds.assign_attrs(day_of_year=int(value))
        elif key in GEOMETRY_VARIABLES or key == "ndvi":
            ds[key] = geometry_array(key, value, ny, nx, str(path))
        else:
            raise SceneReadError(f"{path}: unknown geometry key {key!r} (known: "
                                 f"{', '.join(GEOMETRY_VARIABLES)}, ndvi, day_of_year)")
    return finish(ds, str(path))
