"""Atomic file writes: write to a temporary name beside the target, rename when complete.

A killed process never leaves a half-written file under the final name (the rename is
atomic on POSIX file systems); a failed write removes its temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "to_netcdf_atomically"]


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
    with atomic_path(path) as tmp:
        obj.to_netcdf(tmp, engine="h5netcdf", encoding=encoding or {})
    return Path(path)
