"""Scene readers answer bad input loudly (issue 19, reader side).

Geometry and ancillaries out of range, units stated in a file, duplicate ENVI keys, Zarr
stores with a chunk missing, damaged or truncated data found only at load time, odd
attribute types and paths: every failure is a ``SceneReadError`` naming the file, and
per-pixel values out of range become NaN (flagged by the retrieval) instead of stopping
the scene.

The scenes are built here by hand (small, no simulator); expected values come from them
and from unit factors worked out by hand, never from the readers under test.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import xarray as xr

from bayesfluo.instruments import get_instrument
from bayesfluo.io import (
    SceneReadError,
    open_scene,
    write_dataset,
    write_desis_like,
    write_envi,
    write_flox_csv,
)
from bayesfluo.io.common import ANCILLARY_RANGES, ANCILLARY_UPPER_EXCLUSIVE
from bayesfluo.io.writers import write_zarr

UNITS = "mW m-2 sr-1 nm-1"


# ---------------------------------------------------------------------------------------
# small scenes, built by hand
# ---------------------------------------------------------------------------------------

def image_scene(instrument: str = "hyplant-fluo-o2a", ny: int = 4, nx: int = 3,
                seed: int = 0) -> xr.Dataset:
    """An image scene (y, x, band) in the scene format: radiance with an O2-A-like dip,
    per-pixel sza, vza, surface altitude and NDVI, scene-wide saa, vaa, sensor altitude."""
    inst = get_instrument(instrument)
    wl = np.asarray(inst.band_centres(), np.float64)
    rng = np.random.default_rng(seed)
    level = 40.0 + 40.0 * rng.random((ny, nx, 1))
    shape = 1.0 - 0.6 * np.exp(-0.5 * ((wl - 761.0) / 1.5) ** 2) + 0.3 * (wl > 720)
    rad = (level * shape + rng.normal(0, 0.2, (ny, nx, wl.size))).astype(np.float32)
    deg = {"units": "degree"}
    return xr.Dataset(
        {"radiance": (("y", "x", "band"), rad, {"units": UNITS,
                                                "long_name": "at-sensor spectral radiance"}),
         "mask": (("y", "x"), np.ones((ny, nx), np.int8), {"units": "1"}),
         "sza": (("y", "x"), (30.0 + rng.random((ny, nx))).astype(np.float32), deg),
         "saa": ((), np.float32(150.0), deg),
         "vza": (("y", "x"), (5.0 * rng.random((ny, nx))).astype(np.float32), deg),
         "vaa": ((), np.float32(90.0), deg),
         "surface_altitude": (("y", "x"), (100.0 + 50 * rng.random((ny, nx))).astype(
             np.float32), {"units": "m"}),
         "sensor_altitude": ((), np.float32(inst.altitude_m + 200.0), {"units": "m"}),
         "ndvi": (("y", "x"), (0.2 + 0.6 * rng.random((ny, nx))).astype(np.float32),
                  {"units": "1"})},
        coords={"wavelength": ("band", wl, {"units": "nm", "medium": "air"}),
                "fwhm": ("band", np.full(wl.size, inst.fwhm_nm), {"units": "nm"}),
                "column": ("x", np.arange(nx, dtype=np.int32), {"units": "1"})},
        attrs={"Conventions": "CF-1.10", "instrument": instrument, "day_of_year": 180,
               "source": "tests/test_reader_validation.py"})


def flox_scene(nt: int = 4, seed: int = 0) -> xr.Dataset:
    """A FloX time series (time, band) with irradiance and per-time geometry."""
    inst = get_instrument("flox")
    wl = np.asarray(inst.band_centres(), np.float64)
    rng = np.random.default_rng(seed)
    irr = (1000.0 + 100 * rng.random((nt, 1))) * (
        1.0 - 0.7 * np.exp(-0.5 * ((wl - 761.0) / 1.0) ** 2))
    refl = np.where(wl > 720, 0.45, 0.05)
    rad = (irr * refl / np.pi + rng.normal(0, 0.05, (nt, wl.size))).astype(np.float32)
    t = np.datetime64("2026-06-29T08:00:00") + np.arange(nt) * np.timedelta64(3600, "s")
    deg = {"units": "degree"}
    return xr.Dataset(
        {"radiance": (("time", "band"), rad, {"units": UNITS}),
         "irradiance": (("time", "band"), irr.astype(np.float32), {"units": "mW m-2 nm-1"}),
         "mask": (("time",), np.ones(nt, np.int8), {"units": "1"}),
         "sza": (("time",), np.linspace(50, 35, nt).astype(np.float32), deg),
         "saa": (("time",), np.linspace(120, 200, nt).astype(np.float32), deg),
         "vza": (("time",), np.zeros(nt, np.float32), deg),
         "vaa": (("time",), np.zeros(nt, np.float32), deg),
         "surface_altitude": ((), np.float32(100.0), {"units": "m"}),
         "sensor_altitude": (("time",), np.full(nt, 105.0, np.float32), {"units": "m"}),
         "ndvi": (("time",), np.full(nt, 0.8, np.float32), {"units": "1"})},
        coords={"time": ("time", t),
                "wavelength": ("band", wl, {"units": "nm", "medium": "air"}),
                "fwhm": ("band", np.full(wl.size, inst.fwhm_nm), {"units": "nm"})},
        attrs={"Conventions": "CF-1.10", "instrument": "flox", "day_of_year": 180,
               "source": "tests/test_reader_validation.py"})


@pytest.fixture(scope="module")
def scene():
    return image_scene()


@pytest.fixture(scope="module")
def desis():
    return image_scene("desis", 6, 5, seed=1)


@pytest.fixture(scope="module")
def flox():
    return flox_scene()


def _quiet_open(path, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return open_scene(path, **kw)


def _raises_naming(path: Path, *parts: str):
    """pytest.raises(SceneReadError) whose message names ``path`` and every part."""
    pattern = re.escape(str(path)) + "".join(f"(?=.*{re.escape(p)})" for p in parts)
    return pytest.raises(SceneReadError, match=re.compile(pattern, re.S))


# ---------------------------------------------------------------------------------------
# 1. ranges of geometry and ancillaries, every reader
# ---------------------------------------------------------------------------------------

# (variable, a scene-wide value just outside the range); bounds by hand from the issue
SCALAR_OUT_OF_RANGE = [("sza", 90.0), ("sza", -0.5), ("vza", 95.0), ("saa", 400.0),
                       ("vaa", -361.0), ("surface_altitude", 9500.0),
                       ("surface_altitude", -600.0), ("sensor_altitude", 1.5e6),
                       ("ndvi", 1.2), ("ndvi", -1.5)]


def test_the_ranges_are_the_documented_ones():
    # the table, by hand: the retrieval's flags import the same dict
    assert ANCILLARY_RANGES == {"sza": (0.0, 90.0), "vza": (0.0, 90.0),
                                "saa": (-360.0, 360.0), "vaa": (-360.0, 360.0),
                                "surface_altitude": (-500.0, 9000.0),
                                "sensor_altitude": (-500.0, 1.0e6),
                                "day_of_year": (1, 366), "ndvi": (-1.0, 1.0)}
    assert ANCILLARY_UPPER_EXCLUSIVE == {"sza", "vza", "sensor_altitude"}


def test_the_retrieval_flags_use_the_same_ranges():
    """The scene layer cannot import io (layers), so it keeps a copy: the same."""
    grid = pytest.importorskip("bayesfluo.scene.grid")
    if not hasattr(grid, "ANCILLARY_RANGES"):
        pytest.skip("the retrieval's input flags have no ranges yet")
    assert grid.ANCILLARY_RANGES == ANCILLARY_RANGES


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
@pytest.mark.parametrize("name, value", SCALAR_OUT_OF_RANGE)
def test_scene_wide_value_out_of_range_is_refused(scene, tmp_path, fmt, name, value):
    bad = scene.assign({name: ((), np.float32(value), scene[name].attrs)})
    if name == "sensor_altitude":
        bad["surface_altitude"] = ((), np.float32(100.0), {"units": "m"})
    path = tmp_path / f"s.{fmt}"
    (write_dataset if fmt == "nc" else write_zarr)(bad, path)
    with _raises_naming(path, name, f"{value:g}"):
        open_scene(path)


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
def test_a_few_bad_pixels_become_nan_not_an_error(scene, tmp_path, fmt):
    bad = scene.copy(deep=True)
    bad["sza"][1, 2] = 95.0
    bad["ndvi"][0, 0] = 3.0
    bad["surface_altitude"][2, 1] = np.nan
    path = tmp_path / f"s.{fmt}"
    (write_dataset if fmt == "nc" else write_zarr)(bad, path)
    with pytest.warns(UserWarning) as caught:
        got = open_scene(path)
    said = " ".join(str(w.message) for w in caught)
    assert "values of sza are outside [0, 90) degree" in said
    assert "values of ndvi are outside [-1, 1]" in said
    for name, (y, x) in (("sza", (1, 2)), ("ndvi", (0, 0)), ("surface_altitude", (2, 1))):
        v = got[name].values
        assert np.isnan(v[y, x]), name
        keep = np.ones(v.shape, bool)
        keep[y, x] = False
        np.testing.assert_array_equal(v[keep], scene[name].values[keep])
    np.testing.assert_array_equal(got["radiance"].values, scene["radiance"].values)


@pytest.mark.parametrize("name, value", [("sza", 95.0), ("vza", np.nan), ("ndvi", 2.0)])
def test_every_pixel_out_of_range_is_refused(scene, tmp_path, name, value):
    bad = scene.copy(deep=True)
    bad[name][:] = value
    path = write_dataset(bad, tmp_path / "s.nc")
    with _raises_naming(path, name):
        open_scene(path)


def test_sensor_must_be_above_the_surface(scene, tmp_path):
    low = scene.assign(sensor_altitude=((), np.float32(50.0), {"units": "m"}))
    path = write_dataset(low, tmp_path / "low.nc")
    with _raises_naming(path, "sensor_altitude", "surface_altitude"):
        open_scene(path)
    # one pixel's ground above the sensor: that pixel only
    hill = scene.copy(deep=True)
    hill["surface_altitude"][3, 0] = float(scene["sensor_altitude"]) + 10.0
    path = write_dataset(hill, tmp_path / "hill.nc")
    with pytest.warns(UserWarning, match="sensor_altitude"):
        got = open_scene(path)
    sur = got["surface_altitude"].values
    assert np.isnan(sur[3, 0]) and np.isfinite(np.delete(sur.ravel(), 9)).all()


@pytest.mark.parametrize("value", [0, 367, 180.5])
def test_day_of_year_out_of_range_is_refused(scene, tmp_path, value):
    path = write_dataset(scene.assign_attrs(day_of_year=value), tmp_path / "d.nc")
    with _raises_naming(path, "day_of_year", str(value)):
        open_scene(path)
    good = write_dataset(scene, tmp_path / "g.nc")
    with _raises_naming(good, "day_of_year"):
        open_scene(good, geometry={"day_of_year": value})


def test_envi_header_and_ancillary_values(scene, tmp_path):
    hdr = write_envi(scene, tmp_path / "e.img")
    text = hdr.read_text()
    assert "sun azimuth = 150.0" in text
    hdr.write_text(text.replace("sun azimuth = 150.0", "sun azimuth = 720.0"))
    with _raises_naming(hdr, "saa", "720"):
        open_scene(hdr)
    hdr.write_text(text)
    # one pixel of the ancillary file's vza out of range: NaN there, the rest kept
    anc = tmp_path / "e_ancillary.img"
    names = re.search(r"band names = \{(.*)\}", (tmp_path / "e_ancillary.hdr").read_text()
                      ).group(1).split(", ")
    cube = np.fromfile(anc, "<f4").reshape(len(names), 4, 3)
    cube[names.index("vza"), 0, 1] = 91.0
    cube.tofile(anc)
    with pytest.warns(UserWarning, match="vza"):
        got = open_scene(hdr)
    want = scene["vza"].values.copy()
    want[0, 1] = np.nan
    np.testing.assert_array_equal(got["vza"].values, want)
    cube[names.index("vza")] = 91.0
    cube.tofile(anc)
    with _raises_naming(hdr, "vza"):
        open_scene(hdr)


def test_flox_and_desis_values(flox, desis, tmp_path):
    bad = flox.copy(deep=True)
    bad["sza"][2] = 120.0
    path = write_flox_csv(bad, tmp_path / "t.csv")
    with pytest.warns(UserWarning, match="sza"):
        got = open_scene(path)
    assert np.isnan(got["sza"].values[2]) and np.isfinite(got["sza"].values[[0, 1, 3]]).all()
    product = write_desis_like(desis, tmp_path / "p", dtype="float32")
    next(product.glob("*ANCILLARY*")).unlink()  # the XML's scene-wide angles count
    xml = next(product.glob("*METADATA.xml"))
    xml.write_text(re.sub(r"<sunZenithAngle>[^<]*<", "<sunZenithAngle>93.0<", xml.read_text()))
    tif = next(product.glob("*SPECTRAL_IMAGE.tif"))
    with _raises_naming(tif, "sza", "93"):
        open_scene(product, geometry={"surface_altitude": 100.0})


# ---------------------------------------------------------------------------------------
# 2. units a file states are converted; unknown units refused
# ---------------------------------------------------------------------------------------

# factors to mW m-2 sr-1 nm-1, by hand: W = 1e3 mW; um = 1e3 nm; cm-2 = 1e4 m-2
RADIANCE_FACTORS = [("W m-2 sr-1 nm-1", 1e3), ("W m-2 sr-1 um-1", 1.0),
                    ("mW m-2 sr-1 um-1", 1e-3), ("uW cm-2 sr-1 nm-1", 10.0),
                    ("mW cm-2 sr-1 um-1", 10.0)]


@pytest.mark.parametrize("fmt", ["nc", "zarr"])
@pytest.mark.parametrize("units, factor", RADIANCE_FACTORS)
def test_stated_radiance_units_are_converted(scene, tmp_path, fmt, units, factor):
    stated = scene.copy(deep=True)
    stated["radiance"] = (stated["radiance"] / np.float32(factor)).assign_attrs(units=units)
    path = tmp_path / f"s.{fmt}"
    (write_dataset if fmt == "nc" else write_zarr)(stated, path)
    got = open_scene(path)
    assert got["radiance"].attrs["units"] == UNITS
    assert units in got.attrs["radiance_units_converted"]
    np.testing.assert_allclose(got["radiance"].values, scene["radiance"].values, rtol=2e-7)


@pytest.mark.parametrize("units", ["furlongs", "K", "W m-2 sr-1", "mW m-2 nm-1"])
def test_unknown_radiance_units_are_refused(scene, tmp_path, units):
    path = write_dataset(scene.assign(radiance=scene["radiance"].assign_attrs(units=units)),
                         tmp_path / "s.nc")
    with _raises_naming(path, units):
        open_scene(path)


def test_irradiance_units_are_converted(flox, tmp_path):
    stated = flox.copy(deep=True)
    stated["irradiance"] = (stated["irradiance"] / np.float32(10.0)).assign_attrs(
        units="uW cm-2 nm-1")  # 1 uW cm-2 = 10 mW m-2
    got = open_scene(write_dataset(stated, tmp_path / "f.nc"))
    assert got["irradiance"].attrs["units"] == "mW m-2 nm-1"
    np.testing.assert_allclose(got["irradiance"].values, flox["irradiance"].values,
                               rtol=2e-7)


def test_stated_micrometre_grid_is_converted(scene, tmp_path):
    um = scene.assign_coords(
        wavelength=("band", scene["wavelength"].values / 1e3, {"units": "um",
                                                               "medium": "air"}),
        fwhm=("band", scene["fwhm"].values / 1e3, {"units": "micrometre"}))
    got = open_scene(write_dataset(um, tmp_path / "um.nc"))
    np.testing.assert_allclose(got["wavelength"].values, scene["wavelength"].values,
                               rtol=1e-12)
    np.testing.assert_allclose(got["fwhm"].values, scene["fwhm"].values, rtol=1e-12)
    assert got["wavelength"].attrs["units"] == "nm"
    bad = scene.assign_coords(wavelength=scene["wavelength"].assign_attrs(units="parsec"))
    path = write_dataset(bad, tmp_path / "pc.nc")
    with _raises_naming(path, "parsec"):
        open_scene(path)


def test_flox_micrometre_columns_without_units_are_converted_with_a_warning(flox,
                                                                           tmp_path):
    path = write_flox_csv(flox, tmp_path / "t.csv")
    lines = [ln for ln in path.read_text().splitlines() if "wavelength_units" not in ln]
    i = next(i for i, ln in enumerate(lines) if ln.startswith("time,"))
    cells = lines[i].split(",")
    n_fixed = len(cells) - flox.sizes["band"]
    lines[i] = ",".join(cells[:n_fixed] + [repr(float(c) / 1e3) for c in cells[n_fixed:]])
    j = i + 1  # the fwhm row, in the same units
    cells = lines[j].split(",")
    lines[j] = ",".join(cells[:n_fixed] + [repr(float(c) / 1e3) for c in cells[n_fixed:]])
    path.write_text("\n".join(lines) + "\n")
    with pytest.warns(UserWarning, match="micrometres"):
        got = open_scene(path)
    assert "micrometres" in got.attrs["wavelength_units_guessed"]
    np.testing.assert_allclose(got["wavelength"].values, flox["wavelength"].values,
                               rtol=1e-12)
    np.testing.assert_allclose(got["fwhm"].values, flox["fwhm"].values, rtol=1e-12)


@pytest.mark.parametrize("fmt", ["nc", "envi", "flox"])
def test_fwhm_above_50_nm_is_refused(scene, flox, tmp_path, fmt):
    base = flox if fmt == "flox" else scene
    wide = base.assign_coords(fwhm=("band", np.full(base.sizes["band"], 60.0),
                                    {"units": "nm"}))
    if fmt == "nc":
        path = write_dataset(wide, tmp_path / "w.nc")
    elif fmt == "envi":
        path = write_envi(wide, tmp_path / "w.img")
    else:
        path = write_flox_csv(wide, tmp_path / "w.csv")
    with _raises_naming(path, "fwhm", "50"):
        _quiet_open(path)


# ---------------------------------------------------------------------------------------
# 3. duplicate ENVI header keys
# ---------------------------------------------------------------------------------------

def test_duplicate_envi_keys(scene, tmp_path):
    hdr = write_envi(scene, tmp_path / "e.img")
    text = hdr.read_text()
    hdr.write_text(text + "sun azimuth = 200.0\n")
    with _raises_naming(hdr, "'sun azimuth'", "twice"):
        open_scene(hdr)
    hdr.write_text(text + "sun azimuth = 150.0\n")  # the same value twice: tolerated
    assert float(open_scene(hdr)["saa"]) == 150.0


# ---------------------------------------------------------------------------------------
# 4. a Zarr store with a radiance chunk missing
# ---------------------------------------------------------------------------------------

def test_zarr_store_with_a_missing_radiance_chunk_is_refused(scene, tmp_path):
    path = write_zarr(scene, tmp_path / "s.zarr", chunk_rows=2)
    assert np.isfinite(open_scene(path)["radiance"].values).all()
    (path / "radiance" / "1.0.0").unlink()
    with _raises_naming(path, "'radiance'", "missing"):
        open_scene(path)


def test_zarr_store_with_an_all_nan_chunk_opens(scene, tmp_path):
    """write_zarr writes all-NaN chunks too, so they are not taken for missing ones."""
    holed = scene.copy(deep=True)
    holed["radiance"][2:] = np.nan
    path = write_zarr(holed, tmp_path / "s.zarr", chunk_rows=2)
    got = open_scene(path)
    assert np.isnan(got["radiance"].values[2:]).all()
    np.testing.assert_array_equal(got["radiance"].values[:2], scene["radiance"].values[:2])


# ---------------------------------------------------------------------------------------
# 5. one error type, at open and at load
# ---------------------------------------------------------------------------------------

def test_netcdf_chunk_failing_its_filter_is_named_at_load(scene, tmp_path):
    path = write_dataset(scene, tmp_path / "s.nc")
    with h5py.File(path, "r") as f:
        info = f["radiance"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    data[info.byte_offset:info.byte_offset + info.size] = b"\xa5" * info.size
    path.write_bytes(bytes(data))
    got = open_scene(path)  # geometry reads fine; the radiance is lazy
    with _raises_naming(path, "'radiance'"):
        got.load()


def test_zarr_chunk_that_does_not_decode_is_named_at_load(scene, tmp_path):
    path = write_zarr(scene, tmp_path / "s.zarr", chunk_rows=2)
    chunk = path / "radiance" / "0.0.0"
    chunk.write_bytes(b"\x00garbage" * (chunk.stat().st_size // 8))
    with _raises_naming(path, "'radiance'"):
        open_scene(path).load()


def test_truncated_desis_image(desis, tmp_path):
    product = write_desis_like(desis, tmp_path / "p", dtype="int16")
    tif = next(product.glob("*SPECTRAL_IMAGE.tif"))
    opened = open_scene(product)
    tif.write_bytes(tif.read_bytes()[: tif.stat().st_size // 2])
    with _raises_naming(tif):  # opened before: found at load
        opened.load()
    with _raises_naming(tif, "truncated"):  # opened after: found at once
        open_scene(product)


def test_envi_data_truncated_after_opening(scene, tmp_path):
    hdr = write_envi(scene, tmp_path / "e.img")
    opened = open_scene(hdr)
    img = tmp_path / "e.img"
    img.write_bytes(img.read_bytes()[:1000])
    with _raises_naming(img):
        opened.load()


def test_list_valued_instrument(scene, tmp_path):
    hdr = write_envi(scene, tmp_path / "e.img")
    hdr.write_text(re.sub(r"bayesfluo instrument = .*", "bayesfluo instrument = {1, 2}",
                          hdr.read_text()))
    with _raises_naming(hdr, "bayesfluo instrument"):
        open_scene(hdr)
    path = write_dataset(scene.assign_attrs(instrument=[1, 2]), tmp_path / "s.nc")
    with _raises_naming(path, "instrument"):
        open_scene(path)


def test_flox_row_without_time_stamp(flox, tmp_path):
    path = write_flox_csv(flox, tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    i = next(i for i, ln in enumerate(lines) if ",E_down," in ln)
    lines[i] = "," + lines[i].split(",", 1)[1]
    path.write_text("\n".join(lines) + "\n")
    with _raises_naming(path, "time stamp"):
        open_scene(path)


def test_envi_map_info_with_a_bad_rotation(scene, tmp_path):
    hdr = write_envi(scene, tmp_path / "e.img")
    hdr.write_text(hdr.read_text() + "map info = {UTM, 1, 1, 500000.0, 5600000.0, 1.0, 1.0, "
                   "32, North, WGS-84, units=Meters, rotation=bad}\n")
    with _raises_naming(hdr, "rotation"):
        open_scene(hdr)


@pytest.mark.parametrize("how", ["folder", "loop"])
def test_folder_or_link_loop_instead_of_a_file(scene, desis, tmp_path, how):
    def replace(p: Path):
        p.unlink()
        if how == "folder":
            p.mkdir()
        else:
            os.symlink(p, p)  # a link to itself

    hdr = write_envi(scene, tmp_path / "e.img")
    anc = tmp_path / "e_ancillary.hdr"
    replace(anc)
    with _raises_naming(anc):
        open_scene(hdr)
    product = write_desis_like(desis, tmp_path / "p", dtype="float32")
    xml = next(product.glob("*METADATA.xml"))
    replace(xml)
    with _raises_naming(product):
        open_scene(product)


@pytest.mark.parametrize("name", ["/", ".", ".."])
def test_envi_ancillary_file_that_is_no_file(scene, tmp_path, name):
    hdr = write_envi(scene, tmp_path / "e.img")
    hdr.write_text(re.sub(r"ancillary file = .*", f"ancillary file = {name}",
                          hdr.read_text()))
    with _raises_naming(hdr, "ancillary file"):
        open_scene(hdr)


def test_dangling_link_and_unforeseen_errors(scene, tmp_path, monkeypatch):
    link = tmp_path / "gone.nc"
    os.symlink(tmp_path / "nowhere.nc", link)
    with _raises_naming(link, "link"):
        open_scene(link)
    path = write_dataset(scene, tmp_path / "s.nc")
    import bayesfluo.io.readers as readers

    def boom(*args, **kwargs):
        raise KeyError("something nobody foresaw")

    monkeypatch.setattr(readers, "read_scene", boom)
    with _raises_naming(path, "KeyError", "nobody foresaw"):
        open_scene(path)


# ---------------------------------------------------------------------------------------
# 6. opened scenes save
# ---------------------------------------------------------------------------------------

def test_flox_scene_saves_to_netcdf_and_zarr(flox, tmp_path):
    got = open_scene(write_flox_csv(flox, tmp_path / "t.csv"))
    assert type(got.attrs["time_coverage_start"]) is str
    nc = write_dataset(got, tmp_path / "f.nc")
    got.to_netcdf(tmp_path / "plain.nc")  # xarray's own writer too
    z = write_zarr(got, tmp_path / "f.zarr")
    for path in (nc, tmp_path / "plain.nc", z):
        back = open_scene(path)
        np.testing.assert_array_equal(back["radiance"].values, flox["radiance"].values)
        np.testing.assert_array_equal(back["irradiance"].values, flox["irradiance"].values)
        assert back.attrs["time_coverage_start"] == "2026-06-29T08:00:00"


def test_scene_read_from_netcdf_saves_to_zarr(scene, tmp_path):
    got = open_scene(write_dataset(scene, tmp_path / "s.nc"))
    z = write_zarr(got, tmp_path / "s.zarr")
    np.testing.assert_array_equal(open_scene(z)["radiance"].values, scene["radiance"].values)
    meta = json.loads((z / ".zmetadata").read_text())
    assert meta["metadata"]["radiance/.zattrs"]["units"] == UNITS
