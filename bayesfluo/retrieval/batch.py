"""Batch retrieval: many scenes, one output each in a directory, unattended.

:func:`run_batch` retrieves every input (globs expanded) with one guide, loaded and
compiled once (a :class:`bayesfluo.retrieval.api.Retriever`, or the workers' cache of a dask
cluster), and writes ``<out_dir>/<input stem>.<ext>``. Outputs are written atomically
(temporary name, renamed when complete), so an output under its final name is complete:

- finished outputs are skipped, so a batch killed midway and started again goes on where
  it stopped and ends with the same outputs as an uninterrupted run;
- a file that fails (unreadable, not a scene, wrong instrument, ...) is recorded with the
  reason and the others go on; :class:`BatchReport` lists the failures at the end;
- several batches may run at once into one directory: each output is written holding its
  lock (``.<name>.lock``, :func:`bayesfluo.retrieval.streaming.output_lock`; released by
  the kernel if the process dies), so a second run leaves an output another live run is
  writing alone, goes on with the others, and at the end waits for it (``wait_s``);
- temporaries carry their owner's process id and host in their name
  (:func:`bayesfluo.retrieval.streaming.temporary_tag`): a run removes those of processes
  of this machine that no longer run (e.g. killed just after renaming an output), and,
  holding an output's lock, the untagged temporaries of that output; never those of a
  live process.
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from bayesfluo.io.writers import DEFAULT_MAP_VARIABLES
from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve_file
from bayesfluo.retrieval.streaming import (
    FlagSummary,
    lock_output,
    remove_stale_temporaries,
    remove_temporaries,
    unlock_output,
)

__all__ = ["BatchReport", "expand_inputs", "is_batch", "output_paths", "run_batch",
           "EXTENSIONS"]

#: Output file extension of each batch format
EXTENSIONS = {"nc": ".nc", "zarr": ".zarr", "tif": ".tif"}


@dataclass
class BatchReport:
    """What a batch did: outputs written, outputs already there (or written meanwhile by
    another run), inputs that failed, and the flags of the pixels it wrote."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    flags: FlagSummary = field(default_factory=FlagSummary)

    @property
    def ok(self) -> bool:
        """True if no input failed."""
        return not self.failed

    def summary(self) -> str:
        """A few lines for the user: counts, the flags of the pixels written
        (:meth:`FlagSummary.line`), then each failed input with its reason."""
        lines = [f"{len(self.done)} written, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed"]
        if self.flags.pixels or self.flags.scans:
            lines.append(f"  {self.flags.line()} (outputs written by this run)")
        lines += [f"  FAILED {name}: {reason}" for name, reason in self.failed]
        return "\n".join(lines)


def is_batch(inputs: Sequence[str], out: str | os.PathLike) -> bool:
    """Whether a command line means a batch: several inputs, a glob pattern, or an output
    that is a directory (ends with a separator, or exists and is not a ``.zarr`` store)."""
    out_s = str(out)
    return (len(inputs) > 1 or any(glob.has_magic(p) for p in inputs)
            or out_s.endswith(("/", os.sep))
            or (Path(out_s).is_dir() and Path(out_s).suffix.lower() != ".zarr"))


def expand_inputs(patterns: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Inputs from paths and glob patterns (sorted matches, duplicates dropped).

    Returns
    -------
    inputs : list of Path
    unmatched : list of (pattern, reason)
        Patterns that match nothing.
    """
    inputs, unmatched, seen = [], [], set()
    for pat in patterns:
        matches = sorted(glob.glob(pat)) if glob.has_magic(pat) else [pat]
        if not matches:
            unmatched.append((pat, "no file matches this pattern"))
        for m in matches:
            key = os.path.abspath(m)
            if key not in seen:
                seen.add(key)
                inputs.append(Path(m))
    return inputs, unmatched


def _target(scene_path: Path, out_dir: Path, fmt: str) -> Path:
    """``<out_dir>/<stem><ext>``: the stem is the input's name up to its first dot."""
    if fmt not in EXTENSIONS:
        raise ValueError(f"unknown output format {fmt!r}; use one of {', '.join(EXTENSIONS)}")
    return out_dir / f"{scene_path.name.split('.')[0] or scene_path.stem}{EXTENSIONS[fmt]}"


def output_paths(scene_path: Path, out_dir: Path, fmt: str = "nc",
                 variables: Sequence[str] | None = None,
                 separate: bool = False) -> list[Path]:
    """The output(s) of one input: ``<out_dir>/<stem><ext>`` (with ``separate`` GeoTIFFs,
    ``<stem>_<variable>.tif`` for each map)."""
    out = _target(scene_path, out_dir, fmt)
    if fmt == "tif" and separate:
        return [out.with_name(f"{out.stem}_{v}{out.suffix}")
                for v in (variables or DEFAULT_MAP_VARIABLES)]
    return [out]


def run_batch(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              model_dir: str | os.PathLike, options: RetrieveOptions | None = None, *,
              fmt: str = "nc", retriever: Retriever | None = None, executor=None,
              reader_kwargs: dict | None = None, variables: Sequence[str] | None = None,
              separate: bool = False, progress: bool = True,
              wait_s: float | None = None) -> BatchReport:
    """Retrieve every input into ``out_dir``, one output per input named after it.

    Parameters
    ----------
    inputs : sequence of str or path-like
        Scene files or glob patterns (any format the readers know).
    out_dir : path-like
        Output directory (created).
    model_dir : path-like
        The guide's model directory.
    options : RetrieveOptions
    fmt : {"nc", "zarr", "tif"}
        Output format.
    retriever : Retriever, optional
        The compiled guide (loaded once here if not given).
    executor : optional
        Who computes the chunks (default this process; a
        :class:`bayesfluo.retrieval.executors.DaskExecutor` for a cluster).
    reader_kwargs : dict, optional
        ``geometry``/``instrument`` for every input's reader.
    variables, separate
        GeoTIFF maps (:func:`bayesfluo.io.writers.write_geotiff`).
    progress : bool
        A progress bar over the files.
    wait_s : float or None
        How long to wait, at the end, for outputs another live run was writing (None: as
        long as that run lives; it releases the lock when it ends or dies). An output
        still locked after that is reported failed.

    Returns
    -------
    BatchReport
        Written, skipped and failed inputs (with the reason of each failure).
    """
    from bayesfluo.inference.guide import load_guide

    out_dir = Path(out_dir)
    if out_dir.suffix.lower() in (".nc", ".zarr", ".tif", ".tiff") and not out_dir.is_dir():
        raise ValueError(f"a batch writes one output per input into a directory; "
                         f"{str(out_dir)!r} looks like a file")
    out_dir.mkdir(parents=True, exist_ok=True)
    files, unmatched = expand_inputs([str(p) for p in inputs])
    report = BatchReport(failed=list(unmatched))
    remove_stale_temporaries(out_dir)
    r = retriever
    owner: dict[Path, Path] = {}
    busy: list[tuple[Path, list[Path]]] = []

    def one(path: Path, outs: list[Path], fd: int) -> None:
        """Write the output(s) of ``path`` holding the lock ``fd`` of ``outs[0]``."""
        nonlocal r
        try:
            for o in outs:
                remove_temporaries(o)
            if all(o.exists() for o in outs):
                report.skipped.append(outs[0])
                return
            try:
                if r is None:
                    r = Retriever(load_guide(model_dir))
                retrieve_file(path, model_dir, _target(path, out_dir, fmt), options,
                              progress=False, retriever=r, reader_kwargs=reader_kwargs,
                              executor=executor, variables=variables, separate=separate,
                              flags=report.flags, lock=False)
            except Exception as err:  # a bad file must not stop the batch
                report.failed.append((str(path), f"{type(err).__name__}: {err}"))
                return
            report.done.append(outs[0])
        finally:
            unlock_output(outs[0], fd)

    bar = tqdm(files, desc="batch", unit="file", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.name)
        outs = output_paths(path, out_dir, fmt, variables, separate)
        if outs[0] in owner:
            report.failed.append((str(path), f"its output {outs[0].name} is also the output "
                                  f"of {owner[outs[0]]}; rename one of them"))
            continue
        owner[outs[0]] = path
        fd = lock_output(outs[0])
        if fd is None:   # another live run is writing it: come back at the end
            busy.append((path, outs))
            continue
        one(path, outs, fd)
    # outputs other runs were writing: wait for them to finish (or die), then take over
    t0 = time.monotonic()
    for path, outs in busy:
        while (fd := lock_output(outs[0])) is None:
            if wait_s is not None and time.monotonic() - t0 >= wait_s:
                break
            time.sleep(0.25)
        if fd is None:
            report.failed.append((str(path), f"its output {outs[0].name} is still being "
                                  f"written by another run after {wait_s:g} s"))
            continue
        one(path, outs, fd)
    return report
