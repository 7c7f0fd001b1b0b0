"""Open any scene file bayesfluo reads: one entry point, dispatched by file type.

:func:`open_scene` returns a scene in the scene format (README, "Scene format") from

* netCDF-4 (``.nc``, ``.nc4``, ``.h5``): :func:`bayesfluo.io.netcdf.read_scene`;
* Zarr (a ``.zarr`` directory): :func:`xarray.open_zarr`, then validated;
* ENVI (``.hdr``, or the data file beside one): :mod:`bayesfluo.io.envi`;
* DESIS Level-1 (a ``.tif``/``.tiff`` with its metadata ``.xml`` beside it, the ``.xml``,
  or the product directory): :mod:`bayesfluo.io.desis`;
* FloX top-of-canopy series: CSV tables (``.csv``, the ``rows``, ``long`` and ``wide``
  layouts) and netCDF files holding ``L`` and ``E`` over time and wavelength rather than a
  bayesfluo scene (:func:`bayesfluo.io.flox.is_flox_netcdf`): :mod:`bayesfluo.io.flox`.

Every reader raises :class:`SceneReadError` (a :class:`ValueError`) naming the file and the
problem, when the file is opened and when its lazily read arrays are loaded (a damaged
chunk, a truncated image; see :mod:`bayesfluo.io.common`). An error a reader did not foresee
is turned into a :class:`SceneReadError` too ("unexpected ... while reading"), so callers
need to catch one type. What the format readers share lives in :mod:`bayesfluo.io.common`;
this module only dispatches to them.

A Zarr store must hold every chunk of its ``radiance`` (and ``irradiance``): Zarr reads a
missing chunk as fill values (NaN), so a store with a chunk deleted would open as a
scene with NaN pixels; it is refused instead. Stores written by
:func:`bayesfluo.io.writers.write_zarr` hold every chunk; others whose all-NaN chunks were
left out (``write_empty_chunks=False``) must be rewritten with
``write_empty_chunks=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from bayesfluo.io.common import SceneReadError, prepare_xarray_scene
from bayesfluo.io.desis import read_desis
from bayesfluo.io.envi import read_envi
from bayesfluo.io.flox import is_flox_netcdf, read_flox_csv, read_flox_netcdf
from bayesfluo.io.netcdf import read_scene

__all__ = ["open_scene", "SceneReadError", "SUPPORTED_FORMATS", "check_zarr_chunks"]

#: What :func:`open_scene` reads, for messages and the README.
SUPPORTED_FORMATS = (
    "netCDF-4 scene (.nc, .nc4, .h5)",
    "Zarr scene (.zarr directory)",
    "ENVI cube (.hdr and its data file)",
    "DESIS Level-1 product (GeoTIFF + metadata XML, or the product directory)",
    "FloX series (.csv table in the rows, long or wide layout; .nc with L and E over time "
    "and wavelength)",
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
        if os.path.lexists(path):
            raise SceneReadError(f"{path}: a symbolic link that leads nowhere (a missing "
                                 "target or a loop)")
        raise FileNotFoundError(f"scene file not found: {path}")
    try:
        return _open(path, geometry, instrument, chunks)
    except (SceneReadError, FileNotFoundError, MemoryError):
        raise
    except Exception as err:  # noqa: BLE001 - one error type for callers, cause kept
        raise SceneReadError(f"{path}: unexpected {type(err).__name__} while reading the "
                             f"scene: {err}") from err


def _open(path: Path, geometry: dict | None, instrument: str | None, chunks) -> xr.Dataset:
    """The reader of ``path``'s kind, called."""
    kind = _kind(path)
    if kind == "netcdf":
        if is_flox_netcdf(path):
            return read_flox_netcdf(path, geometry=geometry, instrument=instrument)
        return read_scene(path, geometry=geometry, instrument=instrument)
    if kind == "zarr":
        return _open_zarr(path, chunks, geometry, instrument)
    if kind == "envi":
        return read_envi(path, geometry=geometry, instrument=instrument, chunks=chunks)
    if kind == "desis":
        return read_desis(path, geometry=geometry, instrument=instrument, chunks=chunks)
    if kind == "flox":
        return read_flox_csv(path, geometry=geometry, instrument=instrument)
    raise SceneReadError(f"{path}: unknown scene file type; bayesfluo reads "
                         + "; ".join(SUPPORTED_FORMATS))


def _open_zarr(path: Path, chunks, geometry: dict | None, instrument: str | None
               ) -> xr.Dataset:
    """A Zarr scene: every radiance chunk present (:func:`check_zarr_chunks`), variables
    guarded and checked (:func:`bayesfluo.io.common.prepare_xarray_scene`)."""
    try:
        ds = xr.open_zarr(path, chunks=None)
    except Exception as err:  # noqa: BLE001 - zarr raises several types for a broken store
        raise SceneReadError(f"cannot read {path} as a Zarr scene: {err}") from err
    check_zarr_chunks(path)
    st = path.stat()
    try:
        return prepare_xarray_scene(ds, str(path), chunks=chunks,
                                    token=f"{path.resolve()}-{st.st_mtime_ns}",
                                    geometry=geometry, instrument=instrument)
    except BaseException:
        ds.close()
        raise


def check_zarr_chunks(path: str | os.PathLike,
                      names: tuple[str, ...] = ("radiance", "irradiance")) -> None:
    """Check that a Zarr store holds every chunk of the arrays ``names`` (those it has),
    from the store's listing (no chunk is read).

    Raises
    ------
    SceneReadError
        Naming the store, the variable and how many chunks are missing.
    """
    import zarr

    try:
        group = zarr.open_group(str(path), mode="r")
        for name in names:
            if name not in group:
                continue
            arr = group[name]
            have, need = arr.nchunks_initialized, arr.nchunks
            if have < need:
                raise SceneReadError(
                    f"{path}: variable {name!r} has {need - have} of its {need} chunks "
                    "missing from the Zarr store (deleted or never written); they would "
                    "read as NaN. If they were left out on purpose as all-NaN chunks, "
                    "rewrite the store with write_empty_chunks=True")
    except SceneReadError:
        raise
    except Exception as err:  # noqa: BLE001 - zarr raises several types for a broken store
        raise SceneReadError(f"cannot read {path} as a Zarr scene: {err}") from err


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
