"""Fuzzing the scene readers: damaged files are read or refused with SceneReadError.

A seeded mutator damages small files written by bayesfluo's own writers (netCDF, Zarr,
ENVI float and integer, DESIS-like, FloX CSV): it truncates them, flips bytes, deletes,
duplicates or garbles header keys and attributes, gives huge dimensions and wrong units.
For every case ``open_scene(path).load()`` must either succeed or raise
:class:`SceneReadError` whose message names the case's file (its full path); any other
exception, an error without the file, a case running longer than 30 s or one that kills
its process fails the test. The cases run in a child process (:class:`CaseRunner`), so
that a hang inside a C library is reported, not waited for.

``test_fuzz_fast`` runs a fixed set of cases in the default run; ``test_fuzz_many``
(``-m slow``) runs 1,200. Both print the counts by outcome (run with ``-s`` to see them):
``ok``, ``SceneReadError`` (a reader's own message) and ``SceneReadError/unexpected`` (an
error no reader foresaw, turned into SceneReadError by :func:`open_scene`; allowed by the
contract but worth a specific message), ``unwritable`` (a mutated scene the netCDF writer
refused: no case), and the failures ``unnamed``, ``other``, ``hang``, ``crash``. Case
``i`` is reproduced with ``run_case(seed_files, tmp_path, i)`` (same seed).
"""

from __future__ import annotations

import collections
import functools
import json
import multiprocessing
import os
import re
import shutil
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from bayesfluo.io import (
    SceneReadError,
    open_scene,
    write_dataset,
    write_desis_like,
    write_envi,
    write_flox_csv,
)
from bayesfluo.io.writers import write_zarr
from tests.test_reader_validation import flox_scene, image_scene

#: The mutator's seed; another one (``BAYESFLUO_FUZZ_SEED=20``) explores other cases
SEED = int(os.environ.get("BAYESFLUO_FUZZ_SEED", "19"))
FORMATS = ("nc", "zarr", "envi", "envi_int", "desis", "flox")
FAST_CASES = range(0, 100)
SLOW_CASES = range(0, 1200)
CASE_SECONDS = 30

#: Values put into headers and attributes
NASTY = ["", "nan", "-1", "0", "1e300", "-1e300", "inf", "{1, 2}", "{", "}", "abc",
         "9" * 30, "\x00", "1,2", "95", "400", "-600", "2e6", "367", "W m-2 sr-1 um-1",
         "uW cm-2 sr-1 nm-1", "furlongs", "um", "Micrometers", "K",
         "2026-13-45T99:00", "/", "é", "\\", "hyplant-fluo", "landsat", "bsq", "12"]
UNITS = ["W m-2 sr-1 nm-1", "mW m-2 sr-1 um-1", "uW cm-2 sr-1 nm-1", "mW/(cm2 sr um)",
         "W m-2 sr-1", "mW m-2 nm-1", "K", "furlongs", "", "1", "um", "nm", "m",
         "Micrometers", "parsec", "W/m^2/sr/nm"]
HUGE = [2**31, 2**40, 10**9, 10**12, 2**63 - 1, -1, 0]


# ---------------------------------------------------------------------------------------
# seed files
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def seed_files(tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """Per format: (folder of the files, name of the path given to open_scene)."""
    root = tmp_path_factory.mktemp("fuzz-seeds")
    scene, desis, flox = image_scene(), image_scene("desis", 6, 5, seed=1), flox_scene()
    out = {}
    for fmt in FORMATS:
        (root / fmt).mkdir()
    write_dataset(scene, root / "nc" / "s.nc")
    out["nc"] = (root / "nc", "s.nc")
    write_zarr(scene, root / "zarr" / "s.zarr", chunk_rows=2)
    out["zarr"] = (root / "zarr", "s.zarr")
    write_envi(scene, root / "envi" / "e.img")
    out["envi"] = (root / "envi", "e.hdr")
    write_envi(scene, root / "envi_int" / "q.img", interleave="bil", dtype="uint16")
    out["envi_int"] = (root / "envi_int", "q.hdr")
    write_desis_like(desis, root / "desis" / "p", dtype="int16")
    out["desis"] = (root / "desis", "p")
    write_flox_csv(flox, root / "flox" / "t.csv")
    out["flox"] = (root / "flox", "t.csv")
    return out


# ---------------------------------------------------------------------------------------
# the mutator
# ---------------------------------------------------------------------------------------

def pick(rng, seq):
    """One element of ``seq`` (any objects), chosen by ``rng``."""
    seq = list(seq)
    return seq[int(rng.integers(0, len(seq)))]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _text_files(folder: Path) -> list[Path]:
    return [p for p in _files(folder) if p.suffix in (".hdr", ".csv", ".xml")
            or p.name in (".zarray", ".zattrs", ".zgroup", ".zmetadata")]


def truncate(folder: Path, rng) -> str:
    f = pick(rng, _files(folder))
    data = f.read_bytes()
    cut = int(rng.integers(0, max(len(data), 1)))
    f.write_bytes(data[:cut])
    return f"truncate {f.name} at {cut} of {len(data)}"


def flip_bytes(folder: Path, rng) -> str:
    f = pick(rng, _files(folder))
    data = bytearray(f.read_bytes())
    if not data:
        return f"flip: {f.name} empty"
    n = int(rng.integers(1, 17))
    # half the time near the start, where headers and metadata live
    top = len(data) if rng.random() < 0.5 else min(len(data), 512)
    where = rng.integers(0, top, n)
    for i in where:
        data[i] ^= int(rng.integers(1, 256))
    f.write_bytes(bytes(data))
    return f"flip {n} bytes of {f.name}"


def _key_lines(lines: list[str]) -> list[int]:
    return [i for i, ln in enumerate(lines) if "=" in ln or "<" in ln or ln.startswith("#")]


def garble_text(folder: Path, rng) -> str:
    """Delete, duplicate (with another value) or garble one key line of a text file."""
    files = _text_files(folder)
    if not files:
        return flip_bytes(folder, rng)
    f = pick(rng, files)
    if f.name.startswith(".z"):
        return garble_json(f, rng)
    lines = f.read_text(encoding="utf-8", errors="replace").splitlines()
    keys = _key_lines(lines) or list(range(len(lines)))
    if not keys:
        return f"garble: {f.name} empty"
    i = int(pick(rng, keys))
    action = pick(rng, ["delete", "duplicate", "garble"])
    value = str(pick(rng, NASTY))
    if action == "delete":
        del lines[i]
    else:
        line = lines[i]
        if "=" in line:
            new = line.partition("=")[0] + "= " + value
        elif re.search(r">[^<]*<", line):
            new = re.sub(r">[^<]*<", ">" + value.replace("<", "") + "<", line, count=1)
        else:
            new = value + "," + line
        if action == "duplicate":
            lines.insert(i + 1, new)
        else:
            lines[i] = new
    f.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return f"{action} line {i} of {f.name} ({value!r})"


def _nasty_json(rng):
    return pick(rng, [None, "abc", -1, 0, 2**40, 1.5, [1, 2], {"a": 1}, "nan", True,
                       str(pick(rng, UNITS))])


def garble_json(f: Path, rng) -> str:
    """Change, delete or add one entry of a Zarr metadata JSON document."""
    try:
        doc = json.loads(f.read_text())
    except (ValueError, UnicodeDecodeError):
        return flip_bytes(f.parent, rng)
    # walk to a random dict inside
    node, path = doc, []
    for _ in range(3):
        dicts = [k for k, v in node.items() if isinstance(v, dict)] if isinstance(
            node, dict) else []
        if not dicts or rng.random() < 0.3:
            break
        k = str(pick(rng, dicts))
        node, path = node[k], path + [k]
    if not isinstance(node, dict) or not node:
        return f"json: nothing to change in {f.name}"
    key = str(pick(rng, sorted(node)))
    action = pick(rng, ["delete", "set", "huge"])
    if action == "delete":
        del node[key]
    elif action == "huge" and isinstance(node[key], list) and node[key] and all(
            isinstance(v, int) for v in node[key]):
        j = int(rng.integers(0, len(node[key])))
        node[key][j] = int(pick(rng, HUGE))
    else:
        node[key] = _nasty_json(rng)
    f.write_text(json.dumps(doc))
    return f"json {action} {'/'.join(path + [key])} of {f.name}"


def huge_dims(folder: Path, rng) -> str:
    """Huge (or zero, negative) sizes in an ENVI header or Zarr metadata."""
    hdrs = [p for p in _files(folder) if p.suffix == ".hdr"]
    if hdrs:
        f = pick(rng, hdrs)
        key = str(pick(rng, ["samples", "lines", "bands", "header offset"]))
        value = int(pick(rng, HUGE))
        text = re.sub(rf"^{key} = .*$", f"{key} = {value}", f.read_text(), flags=re.M)
        f.write_text(text)
        return f"{key} = {value} in {f.name}"
    metas = [p for p in _files(folder) if p.name == ".zmetadata" or (
        p.name == ".zarray" and p.parent.name == "radiance")]
    if metas:
        value = int(pick(rng, HUGE))
        for f in metas:  # the consolidated and the array's own metadata alike
            doc = json.loads(f.read_text())
            arrays = doc["metadata"] if "metadata" in doc else {"radiance/.zarray": doc}
            for k, meta in arrays.items():
                if k == "radiance/.zarray" and isinstance(meta, dict) and meta.get("shape"):
                    meta["shape"][0] = value
            f.write_text(json.dumps(doc))
        return f"radiance shape[0] = {value}"
    return flip_bytes(folder, rng)


def wrong_units(folder: Path, rng) -> str:
    """Another unit in a header or attribute that states one."""
    unit = str(pick(rng, UNITS))
    for f in _text_files(folder):
        text = f.read_text(encoding="utf-8", errors="replace")
        pats = [r"(radiance units = ).*", r"(wavelength units = ).*",
                r"(# radiance_units = ).*", r"(# irradiance_units = ).*",
                r"(# wavelength_units = ).*", r'("units": )"[^"]*"']
        found = [p for p in pats if re.search(p, text)]
        if found:
            pat = str(pick(rng, found))
            repl = (r"\1" + json.dumps(unit)) if pat.startswith('("units"') else \
                r"\g<1>" + unit.replace("\\", "")
            matches = list(re.finditer(pat, text))
            m = matches[int(rng.integers(0, len(matches)))]
            new = re.sub(pat, repl, m.group(0), count=1)
            f.write_text(text[:m.start()] + new + text[m.end():], encoding="utf-8")
            return f"units {unit!r} in {f.name}"
    return garble_text(folder, rng)


MUTATIONS = {"truncate": truncate, "flip": flip_bytes, "garble": garble_text,
             "huge": huge_dims, "units": wrong_units}


def mutate_dataset(ds: xr.Dataset, rng) -> tuple[xr.Dataset, str]:
    """A netCDF scene changed before writing: attributes garbled, deleted or given
    another type; variables deleted, filled with odd values or given other dimensions."""
    ds = ds.copy(deep=True)
    names = sorted(map(str, ds.variables))
    action = pick(rng, ["attr", "del_attr", "del_var", "values", "units", "global"])
    name = str(pick(rng, names))
    value = pick(rng, [str(pick(rng, NASTY)), -1, 2**40, 1.5, np.nan, [1, 2],
                        str(pick(rng, UNITS))])
    if action == "attr":
        key = str(pick(rng, sorted(ds[name].attrs) or ["units"]))
        ds[name].attrs[key] = value
    elif action == "del_attr" and ds[name].attrs:
        key = str(pick(rng, sorted(ds[name].attrs)))
        del ds[name].attrs[key]
    elif action == "del_var" and name not in ds.dims:
        ds = ds.drop_vars(name)
    elif action == "values" and name not in ds.dims:
        v = ds[name].values
        if v.dtype.kind in "fiu" and v.size:
            flat = v.reshape(-1).copy()
            k = int(rng.integers(1, flat.size + 1))
            idx = rng.choice(flat.size, k, replace=False)
            flat[idx] = pick(rng, [np.nan, -1.0, 1e30, 95.0, 0.0, -600.0, 2e6]) if \
                v.dtype.kind == "f" else 0
            ds[name] = ds[name].copy(data=flat.reshape(v.shape))
    elif action == "units":
        ds[name].attrs["units"] = str(pick(rng, UNITS))
    else:
        key = str(pick(rng, sorted(ds.attrs) + ["instrument", "day_of_year"]))
        ds.attrs[key] = value
    return ds, f"{action} {name} ({value!r})"


# ---------------------------------------------------------------------------------------
# running the cases
# ---------------------------------------------------------------------------------------

@functools.cache
def _seed_scenes() -> dict[str, xr.Dataset]:
    return {"nc": image_scene(), "flox_nc": flox_scene()}


def run_case(seed_files, tmp_path: Path, i: int) -> tuple[str, str]:
    """Mutate case ``i``'s files, open and load them; (outcome, description)."""
    rng = np.random.default_rng([SEED, i])
    fmt = FORMATS[i % len(FORMATS)]
    case = tmp_path / f"case{i}"
    src, name = seed_files[fmt]
    if fmt == "nc" and rng.random() < 0.4:  # change the scene itself, then write it
        base = _seed_scenes()["flox_nc" if rng.random() < 0.3 else "nc"]
        mutated, what = mutate_dataset(base, rng)
        case.mkdir()
        try:
            write_dataset(mutated, case / name)
        except Exception as err:  # noqa: BLE001 - some values cannot be written at all
            shutil.rmtree(case)
            return "unwritable", f"case {i} ({fmt}): {what}: {type(err).__name__}"
    else:
        shutil.copytree(src, case, symlinks=True)
        mutation = str(pick(rng, list(MUTATIONS)))
        what = MUTATIONS[mutation](case, rng)
    path = case / name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            open_scene(path).load()
        outcome = "ok"
    except SceneReadError as err:
        msg = str(err)
        if str(case) not in msg:
            outcome, what = "unnamed", f"{what}: {msg[:300]}"
        elif "unexpected" in msg and "while reading" in msg:
            outcome, what = "SceneReadError/unexpected", f"{what}: {msg[:300]}"
        else:
            outcome = "SceneReadError"
    except Exception as err:  # noqa: BLE001 - exactly what the test looks for
        outcome, what = "other", f"{what}: {type(err).__name__}: {str(err)[:300]}"
    finally:
        shutil.rmtree(case, ignore_errors=True)
    return outcome, f"case {i} ({fmt}): {what}"


def _worker(conn, seed_files, tmp_path) -> None:
    """Run the cases the pipe sends (None ends) and send back their outcomes."""
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - h5netcdf's noise at exit
    _seed_scenes()
    conn.send("ready")
    while (i := conn.recv()) is not None:
        conn.send(run_case(seed_files, tmp_path, i))


class CaseRunner:
    """Runs cases in a child process, so that a case stuck in C code (a hang) or one that
    kills its process (a crash) is reported as such and the next case goes on in a new
    child."""

    def __init__(self, seed_files, tmp_path: Path):
        self.ctx = multiprocessing.get_context("spawn")
        self.args = (seed_files, tmp_path)
        self.proc = None

    def _start(self):
        self.conn, child = self.ctx.Pipe()
        self.proc = self.ctx.Process(target=_worker, args=(child, *self.args), daemon=True)
        self.proc.start()
        if not self.conn.poll(300) or self.conn.recv() != "ready":
            raise RuntimeError("the fuzz worker process did not start")

    def _stop(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.join()
            self.proc = None

    def case(self, i: int) -> tuple[str, str]:
        if self.proc is None:
            self._start()
        self.conn.send(i)
        if not self.conn.poll(CASE_SECONDS):
            self._stop()
            shutil.rmtree(self.args[1] / f"case{i}", ignore_errors=True)
            return "hang", f"case {i} ({FORMATS[i % len(FORMATS)]}): over {CASE_SECONDS} s"
        try:
            return self.conn.recv()
        except EOFError:  # the child died
            code = self.proc.exitcode if self.proc is not None else None
            self._stop()
            shutil.rmtree(self.args[1] / f"case{i}", ignore_errors=True)
            return "crash", f"case {i} ({FORMATS[i % len(FORMATS)]}): exit code {code}"

    def close(self):
        if self.proc is not None:
            self.conn.send(None)
            self.proc.join(timeout=10)
            self._stop()


def _run(seed_files, tmp_path, cases) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    bad, unexpected = [], []
    t0 = time.perf_counter()
    runner = CaseRunner(seed_files, tmp_path)
    try:
        for i in cases:
            outcome, what = runner.case(i)
            counts[outcome] += 1
            if outcome in ("unnamed", "other", "hang", "crash"):
                bad.append(f"{outcome}: {what}")
            elif outcome == "SceneReadError/unexpected":
                unexpected.append(what)
    finally:
        runner.close()
    seconds = time.perf_counter() - t0
    print(f"\nfuzz (seed {SEED}): {len(cases)} cases in {seconds:.1f} s: "
          f"{dict(sorted(counts.items()))}")
    for what in unexpected:
        print("  unexpected:", what)
    for what in bad:
        print("  BAD", what)
    assert not bad, f"{len(bad)} cases broke the contract:\n" + "\n".join(bad[:20])
    return counts


def test_fuzz_fast(seed_files, tmp_path):
    counts = _run(seed_files, tmp_path, FAST_CASES)
    # the mutator does damage: most cases are refused, some still read
    assert counts["SceneReadError"] > len(FAST_CASES) // 4
    assert counts["ok"] > 0


@pytest.mark.slow
def test_fuzz_many(seed_files, tmp_path):
    counts = _run(seed_files, tmp_path, SLOW_CASES)
    assert counts["SceneReadError"] > len(SLOW_CASES) // 4
