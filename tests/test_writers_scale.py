"""Output writers (netCDF, Zarr, GeoTIFF; CF attributes and CRS), retrieval streamed chunk
by chunk, on a dask cluster, and batches that survive bad files and being killed."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from bayesfluo.io import write_dataset
from bayesfluo.retrieval.api import RetrieveOptions, retrieve

#: Two chunks of one patch row each on a 16 x 16 scene (patches of 8 x 8); draws for a
#: variable over (y, x, draw); no fit check (its compilation would double the test time)
OPTS = RetrieveOptions(chunk_pixels=128, n_draws=2, quality=False)
EPSG = 32632
X0, Y0, DX = 400000.0, 5600000.0, 3.0   # pixel centres of the test scene, m


@pytest.fixture(scope="module")
def plain_scene(model_o2a):
    from bayesfluo.scene.simulate import simulate_scene
    scene = simulate_scene("hyplant-fluo-o2a", (16, 16), seed=3, model=model_o2a)
    keep = [v for v in scene.data_vars if not v.startswith("true_")]
    scene = scene[keep]
    scene["radiance"].values[5, 6, :] = np.nan      # a bad pixel: masked in every output
    return scene


@pytest.fixture(scope="module")
def geo_scene(plain_scene):
    import rioxarray  # noqa: F401
    s = plain_scene.assign_coords(y=Y0 - DX * np.arange(16), x=X0 + DX * np.arange(16))
    return s.rio.write_crs(f"EPSG:{EPSG}")


@pytest.fixture(scope="module")
def scene_path(tmp_path_factory, geo_scene):
    return write_dataset(geo_scene, tmp_path_factory.mktemp("scene") / "geo.nc")


@pytest.fixture(scope="module")
def result(geo_scene, retriever):
    return retrieve(geo_scene, retriever.guide, OPTS, retriever=retriever, progress=False)


def assert_same_maps(a: xr.Dataset, b: xr.Dataset):
    """Every data variable of ``a`` in ``b``, bit for bit (NaN where NaN)."""
    for k in a.data_vars:
        assert k in b, k
        np.testing.assert_array_equal(np.asarray(a[k].values), np.asarray(b[k].values),
                                      err_msg=k)


def _stable_attrs(ds):
    return {k: v for k, v in ds.attrs.items() if k not in ("created", "retrieval_time_s")}


# --- writers -------------------------------------------------------------------------

@pytest.mark.parametrize("ext", [".nc", ".zarr"])
def test_netcdf_and_zarr_are_cf_georeferenced_chunked_compressed(tmp_path, result,
                                                                 geo_scene, ext):
    import pyproj
    import rioxarray  # noqa: F401

    from bayesfluo.io.writers import georeference, write_result
    path = tmp_path / f"res{ext}"
    write_result(georeference(result, geo_scene), path, chunk_rows=8)
    back = xr.open_dataset(path, decode_coords="all")
    assert back.rio.crs == pyproj.CRS.from_epsg(EPSG)
    assert "grid_mapping_name" in back["spatial_ref"].attrs
    assert back["x"].attrs["standard_name"] == "projection_x_coordinate"
    for name, v in back.data_vars.items():
        assert "units" in v.attrs and "long_name" in v.attrs, name
    assert back["f760_mean"].encoding["grid_mapping"] == "spatial_ref"
    assert back["reflectance760_mean"].attrs["standard_name"] == \
        "surface_bidirectional_reflectance"
    assert back.attrs["Conventions"] == "CF-1.10"
    enc = back["f760_mean"].encoding
    if ext == ".nc":
        assert enc["zlib"] and enc["shuffle"] and enc["chunksizes"] == (8, 16)
    else:
        assert enc["chunks"] == (8, 16) and enc["compressors"]
    assert_same_maps(result, back)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]   # no temporaries left


def test_geotiff_maps_bands_named_nodata_nan_and_crs(tmp_path, result, geo_scene):
    import rasterio

    from bayesfluo.io.writers import georeference, write_result
    geo = georeference(result, geo_scene)
    names = ["f760_mean", "f760_sd", "quality_flag"]
    (path,) = write_result(geo, tmp_path / "maps.tif", variables=names)
    with rasterio.open(path) as f:
        assert f.descriptions == tuple(names)
        assert np.isnan(f.nodata) and f.crs.to_epsg() == EPSG
        # the transform from the pixel centres the test gave the scene
        assert f.transform.a == DX and f.transform.e == -DX
        assert f.transform.c == X0 - DX / 2 and f.transform.f == Y0 + DX / 2
        bands = f.read()
    np.testing.assert_array_equal(bands[0], result["f760_mean"].values.astype(np.float32))
    assert np.isnan(bands[0][5, 6]) and bands[2][5, 6] == 1   # masked input pixel
    files = write_result(geo, tmp_path / "one.tif", variables=names[:2], separate=True)
    assert [p.name for p in files] == ["one_f760_mean.tif", "one_f760_sd.tif"]
    with rasterio.open(files[1]) as f:
        assert f.count == 1 and f.descriptions == ("f760_sd",)
    with pytest.raises(ValueError, match="need \\(y, x\\) variables"):
        write_result(geo, tmp_path / "bad.tif", variables=["f760_draws"])


def test_plain_scene_gives_no_grid_mapping_and_bad_extension_is_refused(tmp_path, result,
                                                                       plain_scene):
    from bayesfluo.io.writers import georeference, output_format, scene_crs
    assert scene_crs(plain_scene) is None
    plain = result.drop_vars(["spatial_ref", "x", "y"])
    assert "spatial_ref" not in georeference(plain, plain_scene).variables
    with pytest.raises(ValueError, match="extension '.h5'"):
        output_format(tmp_path / "x.h5")


# --- streamed and distributed retrieval ---------------------------------------------

@pytest.mark.parametrize("ext", [".zarr", ".nc"])
def test_streamed_retrieval_equals_in_memory(tmp_path, scene_path, model_dir, retriever,
                                             result, ext):
    import rioxarray  # noqa: F401

    from bayesfluo.retrieval.api import retrieve_file
    out = retrieve_file(scene_path, model_dir, tmp_path / f"res{ext}", OPTS, progress=False,
                        retriever=retriever)
    back = xr.open_dataset(out, decode_coords="all")
    assert_same_maps(result, back)
    # the same dtypes as in memory: flags stay integers users can test bits of
    assert {k: back[k].dtype for k in result.data_vars} == {
        k: result[k].dtype for k in result.data_vars}
    assert back["quality_flag"].dtype == np.int8 and back["input_flag"].dtype == np.int8
    assert int(((back["quality_flag"] & 1) != 0).sum()) == 1   # the NaN pixel
    assert back.attrs["input"] == "geo.nc" and back.rio.crs.to_epsg() == EPSG
    assert [p.name for p in tmp_path.iterdir()] == [out.name]
    # the report reads what the retrieval wrote
    from bayesfluo.report.html import write_report
    page = write_report(out, tmp_path / "report.html")
    assert page.stat().st_size > 0
    page.unlink()


def test_streaming_never_reads_the_whole_cube(geo_scene, retriever, result, tmp_path):
    """The radiance is dask-backed in chunks of 4 rows; no task of the retrieval may return
    more than one chunk of patch rows (8 image rows) of it."""
    from dask.callbacks import Callback

    from bayesfluo.retrieval.streaming import retrieve_to_file
    lazy = geo_scene.chunk({"y": 4})
    sizes = []

    class Sizes(Callback):
        def _posttask(self, key, value, dsk, state, id):
            if isinstance(value, np.ndarray):
                sizes.append(value.nbytes)

    with Sizes():
        retrieve_to_file(lazy, tmp_path / "r.zarr", retriever, OPTS, progress=False)
    row_bytes = geo_scene["radiance"][0].nbytes
    assert sizes and max(sizes) <= 8 * row_bytes
    assert_same_maps(result, xr.open_zarr(tmp_path / "r.zarr"))


def test_read_ahead_gives_the_same_maps_and_a_failed_read_leaves_nothing(
        tmp_path, scene_path, retriever, result, monkeypatch):
    """The next chunk read by a thread while one is computed: the maps bit for bit those
    of reading each chunk when computed (and of the in-memory retrieval); a read that
    fails in the thread stops the retrieval with its error, and no output is left."""
    from bayesfluo.retrieval import streaming
    from bayesfluo.retrieval.streaming import LocalExecutor, open_input, retrieve_to_file
    for ahead, name in ((True, "a.zarr"), (False, "b.zarr")):
        retrieve_to_file(open_input(scene_path), tmp_path / name, retriever, OPTS,
                         executor=LocalExecutor(retriever, read_ahead=ahead),
                         progress=False)
    a, b = xr.open_zarr(tmp_path / "a.zarr"), xr.open_zarr(tmp_path / "b.zarr")
    assert_same_maps(b, a)
    assert_same_maps(result, a)
    real = streaming.read_chunk

    def failing(scene, pr0, plan, r):
        if pr0 > 0:
            raise OSError("disk gone while reading the second chunk")
        return real(scene, pr0, plan, r)

    monkeypatch.setattr(streaming, "read_chunk", failing)
    with pytest.raises(OSError, match="second chunk"):
        retrieve_to_file(open_input(scene_path), tmp_path / "c.nc", retriever, OPTS,
                         progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr", "b.zarr"]


def test_dask_executor_in_process_gives_identical_maps(tmp_path, scene_path, model_dir,
                                                       retriever, result):
    """The task path (submission window, region writes as tasks finish, workers reading
    the file) on an in-process cluster whose worker cache holds the compiled guide: the
    maps are bit for bit those of one process."""
    from distributed import Client

    from bayesfluo.retrieval import executors as bd
    from bayesfluo.retrieval.streaming import open_input, retrieve_to_file
    bd._CACHE[("retriever", str(Path(model_dir).resolve()))] = retriever
    try:
        with Client(processes=False, n_workers=1, threads_per_worker=2,
                    dashboard_address=None) as client:
            ex = bd.DaskExecutor(client, model_dir, retriever, window=1)
            retrieve_to_file(open_input(scene_path), tmp_path / "a.zarr", retriever, OPTS,
                             executor=ex, scene_path=str(scene_path), progress=False)
    finally:
        bd._CACHE.clear()
    assert_same_maps(result, xr.open_zarr(tmp_path / "a.zarr"))


@pytest.mark.slow
def test_local_cluster_of_two_workers_gives_identical_maps(tmp_path, scene_path, model_dir,
                                                           retriever, result):
    """Two worker processes (each loads and compiles the guide), reading the file
    themselves or sent the rows by the client: same maps bit for bit."""
    from bayesfluo.retrieval.executors import DaskExecutor, dask_client
    from bayesfluo.retrieval.streaming import open_input, retrieve_to_file
    with dask_client(workers=2) as client:
        assert len(client.scheduler_info()["workers"]) == 2
        ex = DaskExecutor(client, model_dir, retriever)
        scene = open_input(scene_path)
        retrieve_to_file(scene, tmp_path / "a.zarr", retriever, OPTS, executor=ex,
                         scene_path=str(scene_path), progress=False)
        retrieve_to_file(scene, tmp_path / "b.nc", retriever, OPTS, executor=ex,
                         progress=False)
    for name in ("a.zarr", "b.nc"):
        assert_same_maps(result, xr.open_dataset(tmp_path / name))


# --- batches -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def flights(tmp_path_factory, geo_scene):
    """Two good scenes (different radiance) and a truncated one."""
    d = tmp_path_factory.mktemp("flights")
    for i, name in enumerate(("a", "b")):
        s = geo_scene.copy(deep=True)
        s["radiance"] = s["radiance"] * np.float32(1.0 + 0.01 * i)
        write_dataset(s, d / f"{name}.nc")
    data = (d / "a.nc").read_bytes()
    (d / "bad.nc").write_bytes(data[: len(data) // 3])
    return d


@pytest.fixture(scope="module")
def reference_outputs(tmp_path_factory, flights, model_dir, retriever):
    """An uninterrupted batch of the good scenes."""
    from bayesfluo.retrieval.batch import run_batch
    out = tmp_path_factory.mktemp("ref")
    rep = run_batch([str(flights / f"{n}.nc") for n in "ab"], out, model_dir, OPTS,
                    fmt="zarr", retriever=retriever, progress=False)
    assert rep.ok and len(rep.done) == 2
    return out


def _same_outputs(ref: Path, out: Path):
    names = sorted(p.name for p in ref.iterdir())
    assert sorted(p.name for p in out.iterdir()) == names   # nothing else, no temporaries
    for n in names:
        a, b = xr.open_dataset(ref / n), xr.open_dataset(out / n)
        assert_same_maps(a, b)
        assert _stable_attrs(a) == _stable_attrs(b)


def test_batch_survives_a_bad_file_and_skips_finished_outputs(tmp_path, flights, model_dir,
                                                              retriever, reference_outputs,
                                                              monkeypatch, capsys):
    import bayesfluo.inference.guide
    import bayesfluo.retrieval.api
    from bayesfluo.cli import main
    # the CLI's guide: the module's compiled one (the CLI plumbing is what is tested here)
    monkeypatch.setattr(bayesfluo.inference.guide, "load_guide", lambda d: retriever.guide)
    monkeypatch.setattr(bayesfluo.retrieval.api, "Retriever", lambda g: retriever)
    out = tmp_path / "results"
    args = ["retrieve", str(flights / "*.nc"), "--model", "hyplant-fluo-o2a", "--out",
            f"{out}/", "--chunk-pixels", "128", "--draws", "2", "--no-quality", "--format", "zarr",
            "--quiet"]
    assert main(args) == 1
    text = capsys.readouterr().out
    assert "2 written, 0 already done, 1 failed" in text
    assert "FAILED" in text and "bad.nc" in text and "netCDF" in text
    _same_outputs(reference_outputs, out)
    stamp = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    assert main(args) == 1            # again: the good ones are skipped, untouched
    assert "0 written, 2 already done, 1 failed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    assert main(args[:1] + [str(flights / "a.nc"), str(flights / "b.nc")] + args[2:]) == 0


def test_batch_interrupted_midway_resumes_to_the_same_outputs(tmp_path, flights, model_dir,
                                                             retriever, reference_outputs,
                                                             monkeypatch):
    """Interrupted (KeyboardInterrupt) while the second output is half written, with the
    leftovers a SIGKILL would leave beside it: nothing partial under a final name, and the
    rerun ends with exactly the outputs of an uninterrupted run."""
    from bayesfluo.retrieval import streaming
    from bayesfluo.retrieval.batch import run_batch
    out = tmp_path / "out"
    out.mkdir()
    (out / ".b.zarr.killed.tmp").mkdir()                # left by a SIGKILL
    (out / ".b.zarr.killed.tmp" / "zarr.json").write_bytes(b"partial")
    original = streaming.LocalExecutor.chunks
    calls = []

    def interrupted(self, *a, **k):
        calls.append(1)
        for i, item in enumerate(original(self, *a, **k)):
            if len(calls) == 2 and i == 1:
                raise KeyboardInterrupt   # the first chunk of b.nc is already on disk
            yield item

    monkeypatch.setattr(streaming.LocalExecutor, "chunks", interrupted)
    inputs = [str(flights / f"{n}.nc") for n in "ab"]
    with pytest.raises(KeyboardInterrupt):
        run_batch(inputs, out, model_dir, OPTS, fmt="zarr", retriever=retriever,
                  progress=False)
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["a.zarr"]
    monkeypatch.setattr(streaming.LocalExecutor, "chunks", original)
    rep = run_batch(inputs, out, model_dir, OPTS, fmt="zarr", retriever=retriever,
                    progress=False)
    assert rep.ok and len(rep.skipped) == 1 and len(rep.done) == 1
    _same_outputs(reference_outputs, out)


@pytest.mark.slow
def test_batch_killed_by_sigkill_resumes(tmp_path, flights, reference_outputs):
    """A real ``bayesfluo retrieve`` batch process killed (SIGKILL) once its first output
    is complete; the rerun gives the outputs of an uninterrupted run."""
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bayesfluo.cli", "retrieve", str(flights / "[ab].nc"),
           "--model", "hyplant-fluo-o2a", "--out", f"{out}/", "--chunk-pixels", "128",
           "--draws", "2", "--no-quality", "--format", "zarr", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while not (out / "a.zarr").exists() and time.time() - t0 < 300 and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for p in out.iterdir():   # whatever is under a final name is complete
        if not p.name.startswith("."):
            xr.open_zarr(p).load()
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    _same_outputs(reference_outputs, out)
