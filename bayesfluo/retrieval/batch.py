"""Batch retrieval: many scenes, one output each in a directory, unattended.

:func:`run_batch` retrieves every input (globs expanded) with one guide, loaded and
compiled once (a :class:`bayesfluo.retrieval.api.Retriever`, or the workers' cache of a dask
cluster), and writes ``<out_dir>/<input stem>.<ext>``. Outputs are written atomically
(temporary name, renamed when complete), so an output under its final name is complete:

- finished outputs are skipped, so a batch killed midway and started again goes on where
  it stopped and ends with the same outputs as an uninterrupted run;
- a file that fails (unreadable, not a scene, wrong instrument, ...) is recorded with the
  reason and the others go on; :class:`BatchReport` lists the failures at the end;
- temporaries left by a killed run (``.<name>.*.tmp``) are removed before that output is
  written again.
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from bayesfluo.io.writers import DEFAULT_MAP_VARIABLES
from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve_file

__all__ = ["BatchReport", "expand_inputs", "is_batch", "output_paths", "run_batch",
           "EXTENSIONS"]

#: Output file extension of each batch format
EXTENSIONS = {"nc": ".nc", "zarr": ".zarr", "tif": ".tif"}


@dataclass
class BatchReport:
    """What a batch did: outputs written, outputs already there, inputs that failed."""

    done: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True if no input failed."""
        return not self.failed

    def summary(self) -> str:
        """A few lines for the user: counts, then each failed input with its reason."""
        lines = [f"{len(self.done)} written, {len(self.skipped)} already done, "
                 f"{len(self.failed)} failed"]
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


def _remove_temporaries(out: Path) -> None:
    """Temporaries of ``out`` left by a killed run."""
    for p in out.parent.glob(f".{out.name}.*.tmp"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def run_batch(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike,
              model_dir: str | os.PathLike, options: RetrieveOptions | None = None, *,
              fmt: str = "nc", retriever: Retriever | None = None, executor=None,
              reader_kwargs: dict | None = None, variables: Sequence[str] | None = None,
              separate: bool = False, progress: bool = True) -> BatchReport:
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
    r = retriever
    owner: dict[Path, Path] = {}
    bar = tqdm(files, desc="batch", unit="file", disable=not progress)
    for path in bar:
        bar.set_postfix_str(path.name)
        outs = output_paths(path, out_dir, fmt, variables, separate)
        if outs[0] in owner:
            report.failed.append((str(path), f"its output {outs[0].name} is also the output "
                                  f"of {owner[outs[0]]}; rename one of them"))
            continue
        owner[outs[0]] = path
        if all(o.exists() for o in outs):
            report.skipped.append(outs[0])
            continue
        for o in outs:
            _remove_temporaries(o)
        try:
            if r is None:
                r = Retriever(load_guide(model_dir))
            retrieve_file(path, model_dir, _target(path, out_dir, fmt), options,
                          progress=False, retriever=r, reader_kwargs=reader_kwargs,
                          executor=executor, variables=variables, separate=separate)
        except Exception as err:  # a bad file must not stop the batch
            report.failed.append((str(path), f"{type(err).__name__}: {err}"))
            continue
        report.done.append(outs[0])
    return report
