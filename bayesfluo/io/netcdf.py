"""Scenes and results as netCDF-4 files (h5netcdf engine), written atomically.

:func:`write_dataset` writes to a temporary file beside the target and renames it when
complete, so a killed process never leaves a half-written output under the final name.
:func:`read_scene` opens a scene and :func:`validate_scene` checks it against the scene
format (README, "Scene format"), raising :class:`ValueError` with every problem named.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import xarray as xr

from bayesfluo.instruments import INSTRUMENTS
from bayesfluo.io.atomic import to_netcdf_atomically

__all__ = ["write_dataset", "write_datatree", "read_scene", "validate_scene"]

_RADIANCE_UNITS = {"mW m-2 sr-1 nm-1", "mW/m2/sr/nm", "mW m^-2 sr^-1 nm^-1"}


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


def read_scene(path: str | os.PathLike, validate: bool = True) -> xr.Dataset:
    """Open a scene file (netCDF) lazily; check it against the scene format.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If the file cannot be read as netCDF (truncated or not netCDF), or the scene
        breaks the format (see :func:`validate_scene`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"scene file not found: {path}")
    try:
        ds = xr.open_dataset(path, engine="h5netcdf")
    except Exception as err:  # h5py raises OSError, xarray ValueError, ...
        raise ValueError(f"cannot read {path} as netCDF-4 (truncated or not netCDF?): "
                         f"{err}") from err
    if validate:
        validate_scene(ds, name=str(path))
    return ds


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
        elif units not in _RADIANCE_UNITS:
            problems.append(f"'radiance' units are {units!r}; expected mW m-2 sr-1 nm-1")
    if "wavelength" not in ds.coords and "wavelength" not in ds:
        problems.append("no 'wavelength' coordinate")
    else:
        wl = ds["wavelength"]
        if wl.attrs.get("units") not in ("nm", "nanometer", "nanometers"):
            problems.append(f"'wavelength' units are {wl.attrs.get('units')!r}; expected nm")
        if wl.attrs.get("medium") not in ("air", "vacuum"):
            problems.append("'wavelength' needs attribute medium = 'air' or 'vacuum'")
        values = np.asarray(wl.values, dtype=np.float64)
        if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0):
            problems.append("'wavelength' must be finite and strictly increasing")
        elif values.size and (values.min() < 300 or values.max() > 2600):
            problems.append(f"'wavelength' spans {values.min():.4g}-{values.max():.4g}; "
                            "not a grid in nm")
        if "radiance" in ds and "band" in ds["radiance"].dims and \
                ds.sizes.get("band") != values.size:
            problems.append("'wavelength' and the band dimension of 'radiance' differ in length")
    if "fwhm" not in ds.coords and "fwhm" not in ds:
        problems.append("no 'fwhm' coordinate")
    inst = ds.attrs.get("instrument")
    if inst is None:
        problems.append("no global attribute 'instrument'")
    elif inst not in INSTRUMENTS:
        problems.append(f"unknown instrument {inst!r}; known: {', '.join(sorted(INSTRUMENTS))}")
    for angle in ("sza", "vza"):
        if angle not in ds:
            problems.append(f"no '{angle}' variable (degrees)")
    if problems:
        raise ValueError(f"{name} is not a valid bayesfluo scene: " + "; ".join(problems))
