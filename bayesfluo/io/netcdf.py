"""Scenes and results as netCDF-4 files (h5netcdf engine), written atomically.

:func:`write_dataset` writes to a temporary file beside the target and renames it when
complete, so a killed process never leaves a half-written output under the final name.
:func:`read_scene` opens a scene lazily, converts the units it states, checks its geometry
(:data:`bayesfluo.io.common.ANCILLARY_RANGES`) and validates it against the scene format
(:func:`validate_scene`, README "Scene format"), raising
:class:`~bayesfluo.io.common.SceneReadError` (a :class:`ValueError`) with the problem named;
a variable that fails to read later (a damaged chunk) raises it too, naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import xarray as xr

from bayesfluo.io.atomic import to_netcdf_atomically
from bayesfluo.io.common import SceneReadError, prepare_xarray_scene, validate_scene
from bayesfluo.io.flox import check_series, stated_noise

__all__ = ["write_dataset", "write_datatree", "read_scene", "validate_scene"]


def _compressed(ds) -> dict:
    """gzip (level 4) encoding of the float and integer variables with dimensions."""
    return {name: {"zlib": True, "complevel": 4} for name, var in ds.variables.items()
            if var.ndim and var.dtype.kind in "fiu"}


def write_dataset(ds: xr.Dataset, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write a Dataset to netCDF-4 atomically (temporary file, then rename).

    Float and integer variables with dimensions are gzip-compressed (level 4) when
    ``compress`` is true.
    """
    return to_netcdf_atomically(ds, path, _compressed(ds) if compress else {})


def write_datatree(dt: xr.DataTree, path: str | os.PathLike) -> Path:
    """Write a DataTree (e.g. NUTS reference posteriors) to netCDF-4 atomically, one
    group per node, float and integer variables gzip-compressed."""
    encoding = {node.path: enc for node in dt.subtree if (enc := _compressed(node))}
    return to_netcdf_atomically(dt, path, encoding)


def read_scene(path: str | os.PathLike, validate: bool = True, *,
               geometry: dict | None = None, instrument: str | None = None) -> xr.Dataset:
    """Open a scene file (netCDF) lazily; convert the units it states and check it.

    A top-of-canopy time series (``radiance`` and ``irradiance`` over (time, band)) has
    its irradiance convention and units checked from physics and its noise estimated
    from the series unless the file states ``noise_a`` and ``noise_b``
    (:func:`bayesfluo.io.flox.check_series`; the global attribute
    ``irradiance_convention`` = ``E`` or ``E/pi`` states the convention).

    Radiance and irradiance in other units than the scene format's, and wavelengths in um,
    are converted (:func:`bayesfluo.io.common.prepare_xarray_scene`); geometry, ``ndvi``
    and ``day_of_year`` are checked against
    :data:`bayesfluo.io.common.ANCILLARY_RANGES` (per-pixel values out of range become
    NaN). Variables are read when used; one that fails to read (a chunk failing its
    compression filter) raises :class:`~bayesfluo.io.common.SceneReadError` naming the
    file and the variable.

    Parameters
    ----------
    path : str or path-like
    validate : bool
        Convert units and check (default); False opens the file as it is (still with
        read errors named).
    geometry : dict, optional
        Values that fill in or override the file's: ``sza``, ``saa``, ``vza``, ``vaa``
        (degrees), ``surface_altitude``, ``sensor_altitude`` (m), ``ndvi``,
        ``day_of_year``.
    instrument : str, optional
        Overrides the file's ``instrument`` attribute.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    SceneReadError
        A :class:`ValueError`: if the file cannot be read as netCDF (truncated or not
        netCDF), states units that are not understood, or breaks the scene format (see
        :func:`validate_scene`) or the geometry ranges.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file not found: {path}")
    try:
        ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:  # noqa: BLE001 - h5py raises OSError, xarray ValueError, ...
        raise SceneReadError(f"cannot read {path} as netCDF-4 (truncated or not netCDF?): "
                             f"{err}") from err
    try:
        out = prepare_xarray_scene(ds, str(path), validate=validate, geometry=geometry,
                                   instrument=instrument)
    except BaseException:
        ds.close()
        raise
    if not validate or "irradiance" not in out or \
            tuple(out["radiance"].dims) != ("time", "band"):
        return out
    try:  # a top-of-canopy time series: conventions and noise (bayesfluo.io.flox)
        checked = check_series(out, str(path),
                               convention=out.attrs.get("irradiance_convention"),
                               stated_noise=stated_noise(out.attrs, str(path)), how="netcdf")
    except BaseException:
        out.close()
        raise
    checked.set_close(out.close)
    return checked
