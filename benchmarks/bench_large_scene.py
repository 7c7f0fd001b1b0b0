"""Retrieval of a HyPlant FLUO O2-A scene larger than memory: wall time, peak memory and
throughput in one process and on a local dask cluster of 1 and 2 workers.

The scene (float32 netCDF-4, uncompressed, so its size on disk is real) is a simulated
strip of full HyPlant FLUO width (384 across-track pixels, 273 bands) repeated along track
to the size asked for, written chunk by chunk through dask (the benchmark itself never
holds it in memory). Each retrieval is a separate ``bayesfluo retrieve`` process writing a
Zarr store; a sampler thread sums the resident memory (RSS) of that process and all its
children (dask workers) every 0.1 s and keeps the peak. Memory is not capped (a cap with
``RLIMIT_AS`` breaks JAX, which reserves address space): the measured peak is reported
beside the scene size.

Run (sizes in GB on disk)::

    python benchmarks/bench_large_scene.py --size-gb 0.2 --dir /tmp/bench
    python benchmarks/bench_large_scene.py --size-gb 4.2 --dir /work/bench --configs 0,1,2

``--configs``: 0 = one process (streamed; reading the next chunk and writing the last
in threads while one is computed), 0s = the same one after the other (the baseline of
that overlap, ``retrieve_file(..., overlap=False)``; the outputs are compared bit for
bit), N = a local dask cluster of N workers. ``--out nc`` writes netCDF (as
``bayesfluo retrieve scene.nc --out sif.nc``), else Zarr.
Timings include process start, guide loading and compilation (``wall``); ``retrieval``
is the time inside the streamed retrieval (the result's ``retrieval_time_s``: from the
plan, compilation included, to the last chunk written; a netCDF output is written from
the streamed Zarr after it, inside ``wall``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

N_COLS = 384            # HyPlant FLUO across-track pixels
STRIP_ROWS = 32         # rows of the simulated strip that is repeated


def write_scene(path: Path, size_gb: float, seed: int = 0) -> tuple[int, int]:
    """Write a scene of about ``size_gb`` GB of radiance (float32) to ``path``; returns
    (rows, columns)."""
    import dask.array as da
    import xarray as xr

    from bayesfluo.scene.simulate import simulate_scene

    strip = simulate_scene("hyplant-fluo-o2a", (STRIP_ROWS, N_COLS), seed=seed)
    nb = strip.sizes["band"]
    reps = max(1, round(size_gb * 1e9 / (STRIP_ROWS * N_COLS * nb * 4)))
    ny = reps * STRIP_ROWS
    ds = xr.Dataset(coords={k: strip.coords[k] for k in ("wavelength", "fwhm", "column")},
                    attrs=strip.attrs)
    for name, v in strip.data_vars.items():
        if name.startswith("true_"):
            continue
        if "y" in v.dims:
            arr = da.from_array(v.values, chunks=v.shape)
            arr = da.tile(arr, (reps,) + (1,) * (v.ndim - 1)).rechunk(
                {0: 2 * STRIP_ROWS})
            ds[name] = (v.dims, arr, v.attrs)
        else:
            ds[name] = v
    enc = {k: {"chunksizes": tuple(min(2 * STRIP_ROWS, n) if d == "y" else n
                                   for d, n in zip(v.dims, v.shape, strict=True))}
           for k, v in ds.data_vars.items() if "y" in v.dims}
    tmp = path.with_suffix(".tmp.nc")
    ds.to_netcdf(tmp, engine="h5netcdf", encoding=enc)
    os.replace(tmp, path)
    return ny, N_COLS


def _tree_rss(pid: int) -> tuple[int, int]:
    """(sum of RSS of ``pid`` and its descendants, largest single RSS), bytes."""
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0, 0
    rss = []
    for q in procs:
        try:
            rss.append(q.memory_info().rss)
        except psutil.NoSuchProcess:
            pass
    return sum(rss), max(rss, default=0)


#: The baseline of config ``0s``: the CLI's retrieval without the overlap
_SERIAL = """
import sys
from bayesfluo.retrieval.api import retrieve_file
from bayesfluo.retrieval.chunk import RetrieveOptions
from bayesfluo.shipped import resolve_model
retrieve_file(sys.argv[1], resolve_model("hyplant-fluo-o2a"), sys.argv[2],
              RetrieveOptions(chunk_pixels=int(sys.argv[3]), quality=sys.argv[4] == "1"),
              progress=False, overlap=False)
"""


def run_retrieval(scene: Path, out: Path, workers: int | str, chunk_pixels: int,
                  quality: bool) -> dict:
    """One ``bayesfluo retrieve`` process (``workers``: 0 one process, ``"0s"`` the same
    without the overlap, N a dask cluster); wall time and peak memory of its tree."""
    import shutil

    import xarray as xr

    shutil.rmtree(out, ignore_errors=True)
    out.unlink(missing_ok=True)
    if workers == "0s":
        cmd = [sys.executable, "-c", _SERIAL, str(scene), str(out), str(chunk_pixels),
               "1" if quality else "0"]
    else:
        cmd = [sys.executable, "-m", "bayesfluo.cli", "retrieve", str(scene), "--model",
               "hyplant-fluo-o2a", "--out", str(out), "--quiet", "--chunk-pixels",
               str(chunk_pixels)]
        if not quality:
            cmd.append("--no-quality")
        if workers:
            cmd += ["--workers", str(workers)]
    peak = {"sum": 0, "max": 0}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = threading.Event()

    def sample():
        while not done.is_set():
            s, m = _tree_rss(proc.pid)
            peak["sum"], peak["max"] = max(peak["sum"], s), max(peak["max"], m)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    text, _ = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if proc.returncode:
        raise RuntimeError(f"retrieve failed ({proc.returncode}):\n{text[-3000:]}")
    with (xr.open_zarr(out) if out.suffix == ".zarr" else xr.open_dataset(out)) as res:
        t_ret = float(res.attrs["retrieval_time_s"])
        ok = int(np.isfinite(res["f760_mean"].values).sum())
    return dict(wall_s=wall, retrieval_s=t_ret, peak_tree_gb=peak["sum"] / 1e9,
                peak_process_gb=peak["max"] / 1e9, finite_pixels=ok)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-gb", type=float, default=0.1, help="radiance on disk, GB")
    ap.add_argument("--dir", default="bench-large-scene", help="where scene and outputs go")
    ap.add_argument("--configs", default="0,1,2",
                    help="comma-separated: 0 = one process, 0s = one process without "
                         "the read/write overlap, N = dask cluster of N workers")
    ap.add_argument("--out", choices=("zarr", "nc"), default="zarr", help="output format")
    ap.add_argument("--chunk-pixels", type=int, default=32768)
    ap.add_argument("--quality", action="store_true", help="also the fit check")
    ap.add_argument("--keep", action="store_true", help="keep the scene and outputs")
    args = ap.parse_args(argv)
    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    scene = d / f"scene_{args.size_gb:g}gb.nc"
    t0 = time.perf_counter()
    if not scene.exists():
        ny, nx = write_scene(scene, args.size_gb)
        print(f"wrote {scene}: {ny} x {nx} pixels, {scene.stat().st_size / 1e9:.2f} GB, "
              f"{time.perf_counter() - t0:.0f} s")
    import xarray as xr
    with xr.open_dataset(scene, engine="h5netcdf") as s:
        ny, nx = s.sizes["y"], s.sizes["x"]
    npix = ny * nx
    size = scene.stat().st_size / 1e9
    print(f"scene {ny} x {nx} = {npix:,} pixels, {size:.2f} GB on disk; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; "
          f"quality check {'on' if args.quality else 'off'}")
    print(f"{'config':>12s} {'wall s':>8s} {'retr. s':>8s} {'px/s':>8s} "
          f"{'wall px/s':>9s} {'peak tree GB':>13s} {'peak proc GB':>13s} {'load':>5s}")
    outs, times = {}, {}
    for c in (v if v == "0s" else int(v) for v in args.configs.split(",")):
        out = d / f"result_{c}.{args.out}"
        r = run_retrieval(scene, out, c, args.chunk_pixels, args.quality)
        name = {0: "1 process", "0s": "1 p. serial"}.get(c, f"{c} workers")
        print(f"{name:>12s} {r['wall_s']:8.1f} {r['retrieval_s']:8.1f} "
              f"{npix / r['retrieval_s']:8.0f} {npix / r['wall_s']:9.0f} "
              f"{r['peak_tree_gb']:13.2f} {r['peak_process_gb']:13.2f} "
              f"{os.getloadavg()[0]:5.1f}", flush=True)
        assert r["finite_pixels"] > 0.9 * npix, r
        outs[c], times[c] = out, r
    if 0 in times and "0s" in times:
        print(f"overlap: {times['0s']['retrieval_s'] / times[0]['retrieval_s']:.2f}x the "
              f"serial path's retrieval speed, {times['0s']['wall_s'] / times[0]['wall_s']:.2f}"
              "x its wall", end="")
        import xarray as xr
        opener = xr.open_zarr if args.out == "zarr" else xr.open_dataset
        with opener(outs[0]) as a, opener(outs["0s"]) as b:
            same = all(np.array_equal(a[k].values, b[k].values, equal_nan=True)
                       for k in a.data_vars)
        print(f"; outputs {'identical bit for bit' if same else 'DIFFERENT'}")
    if not args.keep:
        import shutil
        for out in outs.values():
            shutil.rmtree(out, ignore_errors=True) if out.is_dir() else out.unlink()
        scene.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
