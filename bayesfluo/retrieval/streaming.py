"""Retrieval of scenes larger than memory: chunk by chunk, streamed to disk.

:func:`retrieve_to_file` cuts the scene as :func:`bayesfluo.retrieval.api.retrieve` does
(:func:`bayesfluo.retrieval.chunk.plan_retrieval`), retrieves one chunk of patch rows at a time
(reading only those rows of a lazily opened, dask-backed scene) and writes each chunk's
maps into its region of a Zarr store as soon as it is done, so memory is bounded by the
chunk size (``RetrieveOptions.chunk_pixels``), not the scene. The store is a temporary
directory; when every chunk is in, it is renamed to a ``.zarr`` output, or converted chunk
by chunk to netCDF-4 or GeoTIFF maps (:mod:`bayesfluo.io.writers`) and removed.

Who computes the chunks is an executor: :class:`LocalExecutor` (this process) or
:class:`bayesfluo.retrieval.executors.DaskExecutor` (a dask cluster). Both run the same jitted
functions on the same padded chunks, so the results are the same.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import dask.array as da
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo.io.writers import (
    atomic_dir,
    georeference,
    output_format,
    write_geotiff,
    write_netcdf,
    write_result,
    zarr_encoding,
)
from bayesfluo.retrieval.chunk import (
    RetrievalPlan,
    RetrieveOptions,
    Retriever,
    plan_retrieval,
    read_chunk,
    retrieve_chunk,
)
from bayesfluo.retrieval.result import QUALITY_FLAGS, result_attrs, result_dataset
from bayesfluo.retrieval.series import is_series, retrieve_series
from bayesfluo.scene.grid import INPUT_FLAGS, check_radiance_level

try:
    import fcntl
except ImportError:  # not POSIX: outputs are not locked
    fcntl = None

__all__ = ["ChunkExecutor", "LocalExecutor", "FlagSummary", "OutputBusyError", "open_input",
           "retrieve_to_file", "temporary_tag", "temporary_owner", "lock_output",
           "unlock_output", "output_lock", "remove_temporaries", "remove_stale_temporaries"]


def _host() -> str:
    """This machine's name as it appears in temporary names (letters, digits, ``-``,
    ``_``)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def temporary_tag() -> str:
    """``pid<PID>@<host>``: the owner of a temporary, part of its name (``.<output
    name>.pid<PID>@<host>.<random>.zarr.tmp``), so that another run can tell whether it
    belongs to a live process (:func:`temporary_owner`)."""
    return f"pid{os.getpid()}@{_host()}"


_TAG = re.compile(r"\.pid(\d+)@([A-Za-z0-9_-]+)\.")


def temporary_owner(name: str) -> tuple[int, str, bool] | None:
    """The owner of a temporary named by :func:`temporary_tag`: ``(pid, host,
    alive)``, where ``alive`` is False only for a process of this host that no longer
    runs; None for a name without a tag."""
    m = _TAG.search(name)
    if m is None:
        return None
    pid, host = int(m.group(1)), m.group(2)
    if host != _host():
        return pid, host, True   # another machine's: assume it is alive
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return pid, host, False
    except PermissionError:   # exists, another user's
        pass
    return pid, host, True


class OutputBusyError(OSError):
    """An output is being written by another live process (it holds the output's lock);
    ``errno`` EBUSY, ``filename`` the output."""


def _lock_path(out: Path) -> Path:
    return out.parent / f".{out.name}.lock"


def lock_output(out: str | os.PathLike) -> int | None:
    """Take the lock of an output without waiting: the file descriptor of
    ``.<name>.lock`` beside it (``flock``-ed; the kernel releases it when the process
    dies, so a killed run never blocks a later one), or None where another process
    holds it. Release it with :func:`unlock_output`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    path = _lock_path(out)
    if fcntl is None:
        return -1
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        # the previous holder may have removed the file between our open and flock:
        # then we hold a lock on a file nobody else sees, so start again
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{temporary_tag()}\n".encode())
            return fd
        os.close(fd)


def unlock_output(out: str | os.PathLike, fd: int | None) -> None:
    """Release the lock taken by :func:`lock_output` (and remove its file)."""
    if fd is None or fd < 0:
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_lock_path(Path(out)))
    os.close(fd)


def _holder(out: Path) -> str:
    try:
        tag = _lock_path(out).read_text().strip()
    except OSError:
        tag = ""
    m = re.fullmatch(r"pid(\d+)@(.+)", tag)
    return f"process {m.group(1)} on {m.group(2)}" if m else "another process"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, wait_s: float | None = 0.0, poll_s: float = 0.25):
    """Hold the lock of an output (:func:`lock_output`) for the ``with`` block, waiting
    up to ``wait_s`` seconds (None: as long as the holder runs) for another process to
    release it.

    Raises
    ------
    OutputBusyError
        If another process still holds it after ``wait_s``.
    """
    out = Path(out)
    t0 = time.monotonic()
    while (fd := lock_output(out)) is None:
        if wait_s is not None and time.monotonic() - t0 >= wait_s:
            raise OutputBusyError(errno.EBUSY, f"being written by {_holder(out)}", str(out))
        time.sleep(poll_s)
    try:
        yield
    finally:
        unlock_output(out, fd)


def _temporaries(out: Path) -> list[Path]:
    """Temporaries of an output: ``.<name>.*.tmp`` and ``.<name>.*.old``."""
    return [p for pat in (f".{out.name}.*.tmp", f".{out.name}.*.old")
            for p in out.parent.glob(pat)]


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


def remove_temporaries(out: str | os.PathLike) -> None:
    """Remove the temporaries of ``out`` left by killed runs: call it holding the
    output's lock (:func:`output_lock`). Temporaries whose name says they belong to a
    live process (:func:`temporary_owner`; another machine's are taken as live) are
    kept; untagged ones (older versions, writers that do not tag) are removed."""
    for p in _temporaries(Path(out)):
        owner = temporary_owner(p.name)
        if owner is None or not owner[2]:
            _remove(p)


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the tagged temporaries (``.*.tmp``, ``.*.old``) in ``folder`` of processes
    of this machine that no longer run (a run killed just after renaming its output
    leaves its store behind); bayesfluo's lock files nobody holds. Returns what was
    removed."""
    gone = []
    folder = Path(folder)
    if not folder.is_dir():
        return gone
    for p in folder.iterdir():
        if not p.name.startswith("."):
            continue
        if p.name.endswith((".tmp", ".old")):
            owner = temporary_owner(p.name)
            if owner is not None and not owner[2]:
                _remove(p)
                gone.append(p)
        elif p.name.endswith(".lock") and fcntl is not None:
            try:   # only bayesfluo's own lock files (they name their holder)
                ours = re.fullmatch(r"pid\d+@\S+", p.read_text().strip()) is not None
            except OSError:
                ours = False
            if not ours:
                continue
            target = folder / p.name[1:-len(".lock")]
            fd = lock_output(target)
            if fd is not None:   # nobody holds it: a leftover
                unlock_output(target, fd)
                gone.append(p)
    return gone


@dataclass
class FlagSummary:
    """Pixels per quality flag (and per input problem of the masked ones) of one or more
    retrievals, for a one-line report (:meth:`line`).

    Attributes
    ----------
    pixels : int
        Pixels retrieved.
    scans : int
        Scans of time series (towers) retrieved.
    quality : dict of str to int
        Pixels with each bit of :data:`bayesfluo.retrieval.result.QUALITY_FLAGS`.
    inputs : dict of str to int
        Pixels with each bit of :data:`bayesfluo.scene.grid.INPUT_FLAGS`.
    """

    pixels: int = 0
    scans: int = 0
    quality: dict = field(default_factory=lambda: dict.fromkeys(QUALITY_FLAGS, 0))
    inputs: dict = field(default_factory=lambda: dict.fromkeys(INPUT_FLAGS, 0))

    def add(self, quality_flag, input_flag, scans: bool = False) -> None:
        """Count the pixels of flag maps (any shape), or with ``scans`` the scans of a
        time series."""
        q = np.asarray(quality_flag).astype(np.int64)
        i = np.asarray(input_flag).astype(np.int64)
        if scans:
            self.scans += int(q.size)
        else:
            self.pixels += int(q.size)
        for k, bit in QUALITY_FLAGS.items():
            self.quality[k] += int(np.count_nonzero(q & bit))
        for k, bit in INPUT_FLAGS.items():
            self.inputs[k] += int(np.count_nonzero(i & bit))

    @classmethod
    def of(cls, result: xr.Dataset) -> FlagSummary:
        """The summary of a retrieval result (``quality_flag``, ``input_flag``)."""
        out = cls()
        out.add(result["quality_flag"].values, result["input_flag"].values,
                scans="time" in result["quality_flag"].dims)
        return out

    def line(self) -> str:
        """``flags: 12 masked_input (3 not_finite, 9 invalid_ancillary), 40 poor_fit,
        0 out_of_distribution, ... of 4096 pixels``."""
        parts = []
        for k, n in self.quality.items():
            text = f"{n} {k}"
            if k == "masked_input":
                why = [f"{m} {r}" for r, m in self.inputs.items() if m]
                if why:
                    text += f" ({', '.join(why)})"
            parts.append(text)
        units = [f"{n} {u}" for n, u in ((self.pixels, "pixels"), (self.scans, "scans"))
                 if n] or ["0 pixels"]
        return f"flags: {', '.join(parts)} of {' and '.join(units)}"


class ChunkExecutor(Protocol):
    """Computes the chunks of a retrieval plan; yields ``(pr0, pieces)`` in any order."""

    def chunks(self, scene: xr.Dataset, plan: RetrievalPlan, options: RetrieveOptions,
               scene_path: str | None = None) -> Iterator[tuple[int, dict]]:
        """Pieces (:func:`bayesfluo.retrieval.chunk.retrieve_chunk`) of every chunk of
        ``plan``."""
        ...


class LocalExecutor:
    """Chunks computed one after the other in this process, the next chunk's rows read
    by a thread while one is computed (``read_ahead``; the same rows read the same way,
    so the results are the same bit for bit; at most two chunks' rows in memory).

    Parameters
    ----------
    retriever : Retriever
        The compiled guide.
    read_ahead : bool
        Read the next chunk in a thread (a file's reading and decompression overlap the
        computation); False reads each chunk when it is computed.
    """

    def __init__(self, retriever: Retriever, read_ahead: bool = True):
        self.retriever = retriever
        self.read_ahead = read_ahead

    def chunks(self, scene: xr.Dataset, plan: RetrievalPlan, options: RetrieveOptions,
               scene_path: str | None = None) -> Iterator[tuple[int, dict]]:
        """Pieces of every chunk of ``plan``, in order."""
        starts, r = list(plan.starts), self.retriever
        if not self.read_ahead or len(starts) < 2:
            for pr0 in starts:
                yield pr0, retrieve_chunk(scene, pr0, plan, r, options)
            return
        with ThreadPoolExecutor(1, thread_name_prefix="bayesfluo-read") as pool:
            ahead = pool.submit(read_chunk, scene, starts[0], plan, r)
            for i, pr0 in enumerate(starts):
                pixels = ahead.result()
                if i + 1 < len(starts):
                    ahead = pool.submit(read_chunk, scene, starts[i + 1], plan, r)
                yield pr0, retrieve_chunk(scene, pr0, plan, r, options, pixels=pixels)


def open_input(path: str | os.PathLike, **reader_kwargs) -> xr.Dataset:
    """Open a scene lazily (dask-backed) with :func:`bayesfluo.io.readers.open_scene`
    (any supported format), falling back to the netCDF reader where that is missing.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If it cannot be read as a scene (the reason named).
    """
    try:
        from bayesfluo.io.readers import open_scene
    except ImportError:  # readers not installed: netCDF scenes only
        from bayesfluo.io.netcdf import read_scene
        return read_scene(path)
    return open_scene(path, **reader_kwargs)


def _template(piece: xr.Dataset, scene: xr.Dataset, chunk_rows: int) -> xr.Dataset:
    """A full-size, lazily zero result with the variables, dtypes and attributes of one
    chunk's ``piece`` (only its metadata is written)."""
    ny = scene.sizes["y"]
    coords = {c: scene.coords[c] for c in ("y", "x") if c in scene.coords}
    tmpl = xr.Dataset(coords=coords, attrs=piece.attrs)
    for k, v in piece.data_vars.items():
        shape = tuple(ny if d == "y" else n for d, n in zip(v.dims, v.shape, strict=True))
        chunks = tuple(chunk_rows if d == "y" else n for d, n in zip(v.dims, shape,
                                                                    strict=True))
        tmpl[k] = (v.dims, da.zeros(shape, dtype=v.dtype, chunks=chunks), v.attrs)
    return tmpl


def retrieve_to_file(scene: xr.Dataset, out: str | os.PathLike, retriever: Retriever,
                     options: RetrieveOptions | None = None, *,
                     executor: ChunkExecutor | None = None, scene_path: str | None = None,
                     source: str | None = None, model_name: str | None = None,
                     progress: bool = True, variables: Sequence[str] | None = None,
                     separate: bool = False, flags: FlagSummary | None = None,
                     overlap: bool = True) -> list[Path]:
    """Retrieve a scene chunk by chunk and stream the maps to ``out`` (atomically).

    Temporaries beside ``out`` carry this process's id and host in their name
    (:func:`temporary_tag`).

    Parameters
    ----------
    scene : xarray.Dataset
        The scene, best opened lazily (:func:`open_input`): only one chunk's rows are
        read at a time.
    out : path-like
        Output: ``.zarr``, ``.nc`` or ``.tif`` (:func:`bayesfluo.io.writers.output_format`).
    retriever : Retriever
        The compiled guide (reused across scenes).
    options : RetrieveOptions
    executor : ChunkExecutor, optional
        Who computes the chunks (default: this process, :class:`LocalExecutor`).
    scene_path : str, optional
        Where the scene was read from (a dask executor lets its workers read it there).
    source, model_name : str, optional
        Global attributes ``input`` and ``model`` of the result.
    variables, separate
        GeoTIFF maps to write, and whether one file per variable
        (:func:`bayesfluo.io.writers.write_geotiff`).
    flags : FlagSummary, optional
        Add the written pixels' flags to it (for a one-line report).
    overlap : bool
        Read the next chunk (:class:`LocalExecutor`'s ``read_ahead``) and write the last
        one in threads while a chunk is computed; False does one after the other (the
        same output bit for bit; ``benchmarks/bench_large_scene.py`` compares them).

    Returns
    -------
    list of Path
        The output(s) written. Nothing is left under a final name if the retrieval fails
        or is killed.

    Raises
    ------
    ValueError
        If the scene cannot be retrieved with the guide, or its radiance cannot be in
        mW m-2 sr-1 nm-1 (:func:`bayesfluo.scene.grid.check_radiance_level`).
    """
    opt = options or RetrieveOptions()
    fmt = output_format(out)
    out = Path(out)
    t0 = time.perf_counter()
    guide = retriever.guide
    if is_series(scene) or guide.model.top_of_canopy:
        return _series_to_file(scene, out, fmt, guide, opt, scene_path, source, model_name,
                               progress, flags)
    try:
        plan = plan_retrieval(scene, guide, opt, retriever.fm, retriever)
        check_radiance_level(scene)  # a unit mistake is refused before any work
    except ValueError as err:  # name the input file where the check does not
        if scene_path is None or str(scene_path) in str(err):
            raise
        raise type(err)(f"{scene_path}: {err}") from err
    executor = executor or LocalExecutor(retriever, read_ahead=overlap)
    attrs = result_attrs(guide, source=source or scene.encoding.get("source", ""),
                         model_name=model_name, elapsed_s=0.0, refined=opt.refine,
                         bands=plan.bands, n_scene_bands=scene.sizes["band"])
    tally = FlagSummary()
    if fmt == "zarr":
        with atomic_dir(out) as store:
            _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0,
                    tally, overlap)
        written = [out]
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        store = tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{temporary_tag()}.",
                                 suffix=".zarr.tmp")
        try:
            _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0,
                    tally, overlap)
            with xr.open_zarr(store, consolidated=True) as ds:
                if fmt == "geotiff":
                    written = write_geotiff(ds.load(), out, variables, separate)
                else:
                    written = [write_netcdf(ds, out, plan.chunk_rows)]
        finally:
            shutil.rmtree(store, ignore_errors=True)
    if flags is not None:
        flags.pixels += tally.pixels
        flags.scans += tally.scans
        for k, n in tally.quality.items():
            flags.quality[k] += n
        for k, n in tally.inputs.items():
            flags.inputs[k] += n
    return written


def _series_to_file(scene, out: Path, fmt: str, guide, opt, scene_path, source, model_name,
                    progress, flags) -> list[Path]:
    """A tower's time series retrieved in memory (it is small: one spectrum per scan)
    and written atomically (netCDF or Zarr; a series has no map for GeoTIFF)."""
    try:
        if fmt == "geotiff":
            raise ValueError("a time series has no map to write as GeoTIFF: write .nc or "
                             ".zarr")
        ds = retrieve_series(scene, guide, opt, progress=progress,
                             source=source or scene.encoding.get("source", ""),
                             model_name=model_name)
    except ValueError as err:  # name the input file where the check does not
        if scene_path is None or str(scene_path) in str(err):
            raise
        raise type(err)(f"{scene_path}: {err}") from err
    written = write_result(ds, out, chunk_rows=None)
    if flags is not None:
        flags.add(ds["quality_flag"].values, ds["input_flag"].values, scans=True)
    return written


def _write_rows(arrays: dict, rows: slice, pieces: dict) -> None:
    """Raw values of one chunk into its rows of the Zarr arrays (the variables need no
    CF encoding: float NaN is their fill value, flags are int8)."""
    for k, v in pieces.items():
        arrays[k][rows.start:rows.stop] = np.asarray(v, arrays[k].dtype)


def _stream(scene, store, plan, opt, executor, scene_path, progress, attrs, t0,
            tally: FlagSummary, overlap: bool = True) -> None:
    """Write every chunk of ``plan`` into its region of the Zarr ``store`` (and count
    its flags into ``tally``; with ``overlap`` in a thread, while the next chunk is
    computed)."""
    import zarr

    group = pending = None
    bar = tqdm(total=len(plan.starts), desc="retrieve", disable=not progress, unit="chunk")
    # a thread writes (compresses) one chunk while the next is computed; at most one
    # chunk waits to be written, and a failed write stops the retrieval
    writer = (ThreadPoolExecutor(1, thread_name_prefix="bayesfluo-write") if overlap
              else contextlib.nullcontext())
    with bar, writer:
        for pr0, pieces in executor.chunks(scene, plan, opt, scene_path):
            rows = plan.rows(pr0)
            if group is None:  # the store's metadata, from the first chunk done
                piece = result_dataset({k: [v] for k, v in pieces.items()},
                                       scene.isel(y=rows), plan.chi2_max)
                tmpl = georeference(_template(piece, scene, plan.chunk_rows), scene)
                tmpl.attrs.update(attrs)
                tmpl.to_zarr(store, mode="w", compute=False, zarr_format=2,
                             consolidated=True,
                             encoding=zarr_encoding(tmpl, plan.chunk_rows))
                group = zarr.open_group(store, mode="r+", zarr_format=2)
                arrays = {k: group[k] for k in pieces}
            if pending is not None:
                pending.result()
            if overlap:
                pending = writer.submit(_write_rows, arrays, rows, pieces)
            else:
                _write_rows(arrays, rows, pieces)
            tally.add(pieces["quality_flag"], pieces["input_flag"])
            bar.update()
        if pending is not None:
            pending.result()
    if group is None:
        raise ValueError("the scene has no rows to retrieve")
    group.attrs.update(retrieval_time_s=round(time.perf_counter() - t0, 3),
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    zarr.consolidate_metadata(store)
