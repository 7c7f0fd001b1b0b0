"""Atomic file writes: write to a temporary name beside the target, rename when complete.

A killed process never leaves a half-written file under the final name (the rename is
atomic on POSIX file systems); a failed write removes its temporary file. Attributes that
are NumPy scalars or strings (``numpy.str_`` has no netCDF type) are written as plain
Python values (:func:`plain_attrs`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = ["atomic_path", "to_netcdf_atomically", "plain_value", "plain_attrs"]


def plain_value(value):
    """An attribute value as netCDF and Zarr store it: NumPy scalars (``numpy.str_``,
    ``numpy.float32``, ``numpy.bool_``, ...) and 0-d arrays as the Python ``str``,
    ``float``, ``int`` or ``bool``; lists and tuples item by item; anything else as is."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple) and any(isinstance(v, np.generic) for v in value):
        return type(value)(v.item() if isinstance(v, np.generic) else v for v in value)
    return value


def plain_attrs(ds):
    """A shallow copy of an :class:`xarray.Dataset` whose global and variable attributes
    hold plain Python values (:func:`plain_value`); the data are not copied. Anything else
    (a DataTree) is returned as it is."""
    import xarray as xr

    if not isinstance(ds, xr.Dataset):
        return ds
    out = ds.copy(deep=False)
    out.attrs = {k: plain_value(v) for k, v in ds.attrs.items()}
    for name, var in out.variables.items():
        var.attrs = {k: plain_value(v) for k, v in ds.variables[name].attrs.items()}
    return out


def _default_mode(path: str) -> None:
    """Give a temporary file (created 0600) the permissions of a normally created one."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Context manager yielding a temporary file name beside ``path``; on a clean exit
    the file is renamed to ``path``, on an exception it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_netcdf_atomically(obj, path: str | os.PathLike, encoding: dict | None = None) -> Path:
    """Write an :class:`xarray.Dataset` or :class:`xarray.DataTree` to netCDF-4 (h5netcdf)
    under a temporary name beside ``path``, renamed to ``path`` when complete.

    Parameters
    ----------
    obj : xarray.Dataset or xarray.DataTree
        What to write (its ``to_netcdf`` method is called).
    path : str or path-like
        The final file name; parent folders are created.
    encoding : dict, optional
        Per-variable encoding (a DataTree: per group path), as ``to_netcdf`` takes it.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    obj = plain_attrs(obj)
    with atomic_path(path) as tmp:
        obj.to_netcdf(tmp, engine="h5netcdf", encoding=encoding or {})
    return Path(path)
