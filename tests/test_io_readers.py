"""Instrument file readers: round trips (ENVI, DESIS-like, FloX), fuzzed bad files, dispatch.

Expected values come from the simulated scene that was written (a round trip must give it
back) or from hand-computed unit factors, never from the reader under test.
"""

import re
import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import rioxarray  # noqa: F401 - the .rio accessor
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bayesfluo.io import (
    SceneReadError,
    open_scene,
    read_desis,
    read_envi,
    read_flox_csv,
    write_dataset,
    write_desis_like,
    write_envi,
    write_flox_csv,
)
from bayesfluo.io.common import radiance_unit_factor
from bayesfluo.scene.simulate import simulate_scene

GEOMETRY = ("sza", "saa", "vza", "vaa", "surface_altitude", "sensor_altitude")
FUZZ = settings(max_examples=6, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.fixture(scope="module")
def fluo(model_o2a):
    """Small HyPlant FLUO O2-A scene (4 rows x 3 columns: transposes show; the size of
    test_io_cli's, so the compiled simulator is shared in a full run)."""
    return simulate_scene("hyplant-fluo-o2a", "4x3", seed=1, model=model_o2a)


@pytest.fixture(scope="module")
def desis(model_desis):
    # the size of test_retrieve's DESIS scene: the compiled simulator is shared
    return simulate_scene("desis", (8, 8), seed=0, model=model_desis)


@pytest.fixture(scope="module")
def flox(model_flox):
    # the size of test_baselines' FloX scene (4 time steps): the compiled simulator is shared
    return simulate_scene("flox", (2, 2), seed=0, model=model_flox)


@pytest.fixture(scope="module")
def envi_float(fluo, tmp_path_factory):
    """The FLUO scene as a float32 BSQ cube (header, data)."""
    hdr = write_envi(fluo, tmp_path_factory.mktemp("envi") / "fluo.img")
    return hdr, hdr.with_suffix(".img")


def assert_same_geometry(got, want):
    for v in GEOMETRY + ("ndvi",):
        np.testing.assert_array_equal(np.broadcast_to(got[v].values, want[v].shape),
                                      want[v].values, err_msg=v)
    for c in ("wavelength", "fwhm"):
        np.testing.assert_array_equal(got[c].values, want[c].values, err_msg=c)
    assert got.attrs["day_of_year"] == want.attrs["day_of_year"]
    assert got["wavelength"].attrs["medium"] == "air"


# ---------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("interleave", ["bsq", "bil", "bip"])
@pytest.mark.parametrize("byte_order", [0, 1])
def test_envi_float_round_trip_is_exact(fluo, tmp_path, interleave, byte_order):
    hdr = write_envi(fluo, tmp_path / f"c.{interleave}", interleave=interleave,
                     byte_order=byte_order)
    got = read_envi(hdr, chunks=2)
    assert isinstance(got["radiance"].data, da.Array)  # lazy
    assert got["radiance"].data.chunks[0] == (2, 2)
    assert got["radiance"].dtype == np.float32
    np.testing.assert_array_equal(got["radiance"].values, fluo["radiance"].values)
    np.testing.assert_array_equal(got["column"].values, fluo["column"].values)
    assert_same_geometry(got, fluo)
    assert got.attrs["instrument"] == "hyplant-fluo-o2a"
    assert (got["mask"].values == 1).all()
    # the data file alone opens too, through the generic entry point
    again = open_scene(hdr.with_suffix(f".{interleave}"))
    np.testing.assert_array_equal(again["radiance"].values, fluo["radiance"].values)


@pytest.mark.parametrize("dtype", ["uint16", "int16", "int32"])
def test_envi_integer_round_trip_within_half_a_gain_step(fluo, tmp_path, dtype):
    hdr = write_envi(fluo, tmp_path / "q.img", interleave="bil", dtype=dtype)
    text = hdr.read_text()
    gain = np.array([float(v) for v in re.search(r"data gain values = \{(.*?)\}",
                                                 text).group(1).split(",")])
    rad = fluo["radiance"].values.astype(np.float64)
    # the gain is the band's range over the number of codes (independent of the reader)
    codes = np.iinfo(dtype).max - np.iinfo(dtype).min - 1.0
    np.testing.assert_allclose(gain, (rad.max((0, 1)) - rad.min((0, 1))) / codes, rtol=1e-6)
    got = read_envi(hdr)
    err = np.abs(got["radiance"].values - rad)
    # half a step, plus float32 rounding of radiance ~ 200 (1.5e-5)
    assert np.all(err <= gain / 2 + 2e-5)
    assert_same_geometry(got, fluo)


def test_envi_georeference_round_trip(fluo, tmp_path):
    geo = fluo.assign_coords(x=500010.0 + 20.0 * np.arange(3),
                             y=5600990.0 - 20.0 * np.arange(4)).rio.write_crs("EPSG:32632")
    hdr = write_envi(geo, tmp_path / "g.img")
    assert "UTM, 1, 1, 500000.0, 5601000.0, 20.0, 20.0, 32, North" in hdr.read_text()
    got = read_envi(hdr)
    np.testing.assert_allclose(got["x"].values, geo["x"].values)
    np.testing.assert_allclose(got["y"].values, geo["y"].values)
    assert got.rio.crs.to_epsg() == 32632


def test_envi_units_and_micrometres_are_converted(fluo, envi_float, tmp_path):
    hdr, data = envi_float
    text = hdr.read_text()
    wl_um = ", ".join(repr(float(w) / 1000) for w in fluo["wavelength"].values)
    fw_um = ", ".join(repr(float(w) / 1000) for w in fluo["fwhm"].values)
    text = re.sub(r"wavelength = \{.*?\}", "wavelength = {" + wl_um + "}", text)
    text = re.sub(r"fwhm = \{.*?\}", "fwhm = {" + fw_um + "}", text)
    text = text.replace("Nanometers", "Micrometers")
    text = text.replace("radiance units = mW m-2 sr-1 nm-1",
                        "radiance units = uW cm-2 sr-1 nm-1")
    (tmp_path / "u.img").write_bytes((fluo["radiance"].values / np.float32(10))
                                     .transpose(2, 0, 1).astype("<f4").tobytes())
    (tmp_path / "u.hdr").write_text(text)
    (tmp_path / "fluo_ancillary.hdr").write_bytes((hdr.parent / "fluo_ancillary.hdr")
                                                  .read_bytes())
    (tmp_path / "fluo_ancillary.img").write_bytes((hdr.parent / "fluo_ancillary.img")
                                                  .read_bytes())
    got = read_envi(tmp_path / "u.hdr")
    np.testing.assert_allclose(got["wavelength"].values, fluo["wavelength"].values,
                               rtol=0, atol=1e-9)
    np.testing.assert_allclose(got["radiance"].values, fluo["radiance"].values, rtol=1e-6)
    assert "converted" in got.attrs["wavelength_units_converted"]
    assert "times 10" in got.attrs["radiance_units_converted"]
    # without units: assumed, flagged and warned about
    (tmp_path / "u.hdr").write_text(re.sub(r"radiance units = .*\n", "", text))
    with pytest.warns(UserWarning, match="radiance units"):
        guessed = read_envi(tmp_path / "u.hdr")
    assert "assumed" in guessed.attrs["units_guessed"]


def test_full_fluo_cube_gives_the_o2a_model_grid(model_o2a, tmp_path):
    """A hand-made 670-780 nm HyPlant FLUO cube (geometry in the header, no ancillary)
    read for the O2-A model keeps its 273 bands and gets an NDVI from 670/780 nm."""
    from bayesfluo.scene.grid import check_scene_for_model

    wl = 670.0 + 0.11 * np.arange(1001)  # 670-780 nm
    ny, nx = 3, 5
    red, nir = 0.05, 0.45  # vegetation: apparent NDVI well above 0.5
    rad = np.where(wl < 720, 20.0 * red / 0.05, 20.0 * nir / 0.05)[None, None] * \
        np.ones((ny, nx, 1))
    (tmp_path / "f.bip").write_bytes(rad.astype(">f4").tobytes())
    (tmp_path / "f.hdr").write_text(
        "ENVI\nsamples = 5\nlines = 3\nbands = 1001\ndata type = 4\ninterleave = bip\n"
        "byte order = 1\nwavelength units = Nanometers\nwavelength = {"
        + ", ".join(f"{w:.2f}" for w in wl) + "}\nfwhm = {" + ", ".join(["0.25"] * 1001)
        + "}\nradiance units = W m-2 sr-1 um-1\nbayesfluo instrument = hyplant-fluo-o2a\n"
        "sun zenith = 35\nsun azimuth = 160\nview zenith = 0\nview azimuth = 0\n"
        "surface altitude = 120\nsensor altitude = 720\n"
        "acquisition time = 2026-06-29T10:30:00Z\n")
    scene = read_envi(tmp_path / "f.bip")
    assert scene.sizes["band"] == 273
    check_scene_for_model(scene, "hyplant-fluo-o2a", model_o2a.band_centre_nm)
    assert scene.attrs["day_of_year"] == 180
    assert np.all(scene["ndvi"].values > 0.5)
    assert "670.00" in scene["ndvi"].attrs["long_name"]
    with pytest.raises(SceneReadError, match="unknown geometry key 'sun_zenith'"):
        read_envi(tmp_path / "f.bip", geometry={"sun_zenith": 30})


def test_radiance_unit_factors():
    # by hand: 1 uW cm-2 = 1e-6 W / 1e-4 m2 = 1e-2 W m-2 = 10 mW m-2
    assert radiance_unit_factor("uW cm-2 sr-1 nm-1") == pytest.approx(10.0)
    assert radiance_unit_factor("W m-2 sr-1 um-1") == pytest.approx(1.0)
    assert radiance_unit_factor("mW/(cm2 sr um)") == pytest.approx(10.0)
    assert radiance_unit_factor("W/m^2/sr/nm") == pytest.approx(1000.0)
    assert radiance_unit_factor("mW m-2 nm-1", per_steradian=False) == 1.0
    for bad in ("mW m-2 nm-1", "K", "W m-2 sr-1", "furlongs"):
        with pytest.raises(ValueError, match="units"):
            radiance_unit_factor(bad)


@pytest.mark.parametrize("dtype", ["float32", "int16"])
def test_desis_round_trip(desis, tmp_path, dtype):
    product = write_desis_like(desis, tmp_path / "p", dtype=dtype)
    got = open_scene(product)  # the directory
    assert isinstance(got["radiance"].data, da.Array)
    rad = desis["radiance"].values.astype(np.float64)
    if dtype == "float32":
        np.testing.assert_array_equal(got["radiance"].values, desis["radiance"].values)
    else:
        step = (rad.max((0, 1)) - rad.min((0, 1))) / 65534.0
        assert np.all(np.abs(got["radiance"].values - rad) <= step / 2 + 2e-5)
    assert_same_geometry(got, desis)
    np.testing.assert_array_equal(got["column"].values, desis["column"].values)
    assert got.attrs["instrument"] == "desis"
    # the XML alone (no ancillary file) gives scene-mean angles; terrain height is needed
    next(product.glob("*ANCILLARY*")).unlink()
    with pytest.raises(SceneReadError, match="surface_altitude"):
        read_desis(product)
    bare = read_desis(next(product.glob("*METADATA.xml")),
                      geometry={"surface_altitude": 120.0})
    assert float(bare["vza"]) == pytest.approx(float(desis["vza"].mean()), rel=1e-6)
    assert float(bare["sensor_altitude"]) == pytest.approx(400120.0)
    assert "ndvi" in bare  # from the apparent reflectance of the bands


def test_desis_xml_radiance_is_dn_times_gain_plus_offset_in_mw_cm2_um(desis, tmp_path):
    product = write_desis_like(desis, tmp_path / "p", dtype="float32")
    xml = next(product.glob("*METADATA.xml"))
    # DN stays the same; gain 0.1 -> 0.2 and offset 0 -> 0.5 (mW cm-2 sr-1 um-1)
    text = xml.read_text().replace("<gainOfBand>0.1</gainOfBand>",
                                   "<gainOfBand>0.2</gainOfBand>")
    text = text.replace("<offsetOfBand>0.0</offsetOfBand>",
                        "<offsetOfBand>0.5</offsetOfBand>")
    xml.write_text(text)
    got = read_desis(product)
    want = desis["radiance"].values.astype(np.float64) * 2 + 5.0  # (2 DN/10 + 0.5) * 10
    np.testing.assert_allclose(got["radiance"].values, want, rtol=1e-6)


def test_flox_round_trip_is_exact(flox, tmp_path):
    path = write_flox_csv(flox, tmp_path / "tower.csv")
    got = open_scene(path)
    for v in ("radiance", "irradiance", "mask", "ndvi") + GEOMETRY:
        np.testing.assert_array_equal(got[v].values, flox[v].values, err_msg=v)
        assert got[v].dims == flox[v].dims
    np.testing.assert_array_equal(got["time"].values, flox["time"].values)
    np.testing.assert_array_equal(got["wavelength"].values, flox["wavelength"].values)
    np.testing.assert_array_equal(got["fwhm"].values, flox["fwhm"].values)
    assert got.attrs["instrument"] == "flox"
    assert got["irradiance"].attrs["units"] == "mW m-2 nm-1"


def test_flox_units_and_missing_rows(flox, tmp_path):
    path = write_flox_csv(flox, tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    # radiance in W m-2 sr-1 um-1 is numerically the same; irradiance in uW cm-2 nm-1 is
    # a tenth of the mW m-2 nm-1 values: written so, and read back to the true values
    tenth = flox.assign(irradiance=flox["irradiance"] / 10)
    text = write_flox_csv(tenth, tmp_path / "t10.csv").read_text().replace(
        "# irradiance_units = mW m-2 nm-1", "# irradiance_units = uW cm-2 nm-1").replace(
        "# radiance_units = mW m-2 sr-1 nm-1", "# radiance_units = W m-2 sr-1 um-1")
    (tmp_path / "u.csv").write_text(text)
    got = read_flox_csv(tmp_path / "u.csv")
    np.testing.assert_allclose(got["irradiance"].values, flox["irradiance"].values,
                               rtol=1e-5)
    np.testing.assert_array_equal(got["radiance"].values, flox["radiance"].values)
    # an E_down row removed: that time stamp is named
    drop = next(i for i, ln in enumerate(lines) if ",E_down," in ln)
    stamp = lines[drop].split(",")[0]
    (tmp_path / "m.csv").write_text("\n".join(lines[:drop] + lines[drop + 1:]))
    with pytest.raises(SceneReadError, match=re.escape(stamp)):
        read_flox_csv(tmp_path / "m.csv")


# ---------------------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------------------

def test_open_scene_dispatch(fluo, envi_float, tmp_path):
    nc = write_dataset(fluo, tmp_path / "s.nc")
    np.testing.assert_array_equal(open_scene(nc)["radiance"].values, fluo["radiance"].values)
    fluo.to_zarr(tmp_path / "s.zarr")
    z = open_scene(tmp_path / "s.zarr", geometry={"sza": 40.0})
    np.testing.assert_array_equal(z["radiance"].values, fluo["radiance"].values)
    assert float(z["sza"]) == 40.0 and z["sza"].attrs["units"] == "degree"
    np.testing.assert_array_equal(open_scene(envi_float[0])["radiance"].values,
                                  fluo["radiance"].values)
    (tmp_path / "x.xyz").write_text("hello")
    with pytest.raises(SceneReadError, match="ENVI.*DESIS.*FloX"):
        open_scene(tmp_path / "x.xyz")
    with pytest.raises(FileNotFoundError):
        open_scene(tmp_path / "missing.hdr")


# ---------------------------------------------------------------------------------------
# bad files: a clear error or flagged pixels, never another exception
# ---------------------------------------------------------------------------------------

def _copy_envi(envi_float, dst: Path, header: str | None = None, data: bytes | None = None):
    hdr, img = envi_float
    for name in ("fluo_ancillary.hdr", "fluo_ancillary.img"):
        (dst / name).write_bytes((hdr.parent / name).read_bytes())
    (dst / "c.hdr").write_text(hdr.read_text() if header is None else header)
    (dst / "c.img").write_bytes(img.read_bytes() if data is None else data)
    return dst / "c.hdr"


@FUZZ
@given(cut=st.integers(1, 3000))
def test_fuzz_truncated_data(envi_float, tmp_path_factory, cut):
    data = envi_float[1].read_bytes()
    hdr = _copy_envi(envi_float, tmp_path_factory.mktemp("t"), data=data[:-cut])
    with pytest.raises(SceneReadError, match="truncated"):
        read_envi(hdr)


@FUZZ
@given(key=st.sampled_from(["samples", "lines", "bands"]),
       delta=st.integers(-3, 3).filter(lambda d: d != 0))
def test_fuzz_wrong_header_sizes(envi_float, tmp_path_factory, key, delta):
    text = envi_float[0].read_text()
    n = int(re.search(rf"^{key} = (\d+)$", text, re.M).group(1))
    text = re.sub(rf"^{key} = \d+$", f"{key} = {n + delta}", text, flags=re.M)
    hdr = _copy_envi(envi_float, tmp_path_factory.mktemp("s"), header=text)
    with pytest.raises(SceneReadError, match="bytes|wavelengths|bands|must be positive"):
        read_envi(hdr)


@FUZZ
@given(y0=st.integers(0, 3), x0=st.integers(0, 2), b0=st.integers(0, 200),
       nb=st.integers(1, 72))
def test_fuzz_nan_blocks_are_masked(fluo, envi_float, tmp_path_factory, y0, x0, b0, nb):
    rad = fluo["radiance"].values.copy()
    rad[y0:y0 + 2, x0:x0 + 2, b0:b0 + nb] = np.nan
    hdr = _copy_envi(envi_float, tmp_path_factory.mktemp("n"),
                     data=rad.transpose(2, 0, 1).astype("<f4").tobytes())
    got = read_envi(hdr)
    want = np.ones((4, 3), np.int8)
    want[y0:y0 + 2, x0:x0 + 2] = 0
    np.testing.assert_array_equal(got["mask"].values, want)


@FUZZ
@given(pixels=st.sets(st.tuples(st.integers(0, 3), st.integers(0, 2)), min_size=1,
                      max_size=4), band=st.integers(0, 272))
def test_fuzz_saturated_values_are_masked(fluo, tmp_path_factory, pixels, band):
    d = tmp_path_factory.mktemp("sat")
    hdr = write_envi(fluo, d / "q.img", dtype="uint16")
    dn = np.minimum(np.fromfile(d / "q.img", "<u2").reshape(273, 4, 3), 64000)
    for y, x in pixels:
        dn[band, y, x] = 65000
    dn.tofile(d / "q.img")
    hdr.write_text(hdr.read_text() + "saturation value = 65000\n")
    got = read_envi(hdr)
    want = np.ones((4, 3), np.int8)
    for y, x in pixels:
        want[y, x] = 0
    np.testing.assert_array_equal(got["mask"].values, want)
    np.testing.assert_array_equal(got["saturated"].values, 1 - want)


@FUZZ
@given(key=st.sampled_from(["samples", "lines", "bands", "data type", "wavelength",
                            "fwhm", "sun zenith", "sun azimuth", "sensor altitude",
                            "ancillary file", "bayesfluo instrument"]))
def test_fuzz_missing_keys_are_named(envi_float, tmp_path_factory, key):
    text = re.sub(rf"^{key} = .*\n", "", envi_float[0].read_text(), flags=re.M)
    hdr = _copy_envi(envi_float, tmp_path_factory.mktemp("k"), header=text)
    names = {"sun zenith": "sza", "sun azimuth": "saa", "sensor altitude": "sensor_altitude",
             "ancillary file": "vza", "bayesfluo instrument": "instrument"}
    with pytest.raises(SceneReadError, match=re.escape(names.get(key, key))):
        read_envi(hdr)


@FUZZ
@given(scale=st.sampled_from([1e-3, 1.0]), units=st.sampled_from(["Nanometers",
                                                                   "Micrometers", None]))
def test_fuzz_micrometre_grids(fluo, envi_float, tmp_path_factory, scale, units):
    text = envi_float[0].read_text()
    for key in ("wavelength", "fwhm"):
        vals = ", ".join(repr(float(v) * scale) for v in fluo[key].values)
        text = re.sub(rf"^{key} = \{{.*?\}}", f"{key} = {{{vals}}}", text, flags=re.M)
    text = re.sub(r"^wavelength units = .*\n", "" if units is None else
                  f"wavelength units = {units}\n", text, flags=re.M)
    hdr = _copy_envi(envi_float, tmp_path_factory.mktemp("um"), header=text)
    consistent = (scale == 1.0 and units != "Micrometers") or (
        scale == 1e-3 and units != "Nanometers")
    if not consistent:
        with pytest.raises(SceneReadError, match="wavelength"):
            read_envi(hdr)
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_envi(hdr)
    np.testing.assert_allclose(got["wavelength"].values, fluo["wavelength"].values,
                               rtol=0, atol=1e-9)
    if units is None:
        assert "wavelength_units_guessed" in got.attrs
        assert any("wavelength units" in str(w.message) for w in caught)


@FUZZ
@given(junk=st.binary(min_size=1, max_size=400), where=st.sampled_from(["header", "data"]))
def test_fuzz_garbage_bytes(fluo, envi_float, tmp_path_factory, junk, where):
    d = tmp_path_factory.mktemp("g")
    if where == "header":
        hdr = _copy_envi(envi_float, d)
        hdr.write_bytes(junk)
        with pytest.raises(SceneReadError):
            read_envi(hdr)
        return
    data = bytearray(envi_float[1].read_bytes())
    data[:len(junk)] = junk  # garbage over the first pixels of the first bands
    hdr = _copy_envi(envi_float, d, data=bytes(data))
    got = read_envi(hdr)  # float garbage is data: NaN/inf pixels are masked
    rad = got["radiance"].values
    finite = np.isfinite(rad).all(-1)
    np.testing.assert_array_equal(got["mask"].values, finite.astype(np.int8))


def test_bad_desis_and_flox_files(desis, flox, tmp_path):
    product = write_desis_like(desis, tmp_path / "p", dtype="float32")
    xml = next(product.glob("*METADATA.xml"))
    good = xml.read_text()
    xml.write_text(good.replace("<gainOfBand>0.1</gainOfBand>", "", 1))
    with pytest.raises(SceneReadError, match="gainOfBand"):
        read_desis(product)
    first_band = good.index("<band>")
    xml.write_text(good[:first_band] + good[good.index("</band>") + len("</band>"):])
    with pytest.raises(SceneReadError, match="55 bands.*54"):
        read_desis(product)
    xml.write_text(good[: len(good) // 2])
    with pytest.raises(SceneReadError, match="XML"):
        read_desis(product)
    path = write_flox_csv(flox, tmp_path / "t.csv")
    lines = path.read_text().splitlines()
    row = next(i for i, ln in enumerate(lines) if ",L_up," in ln)
    cells = lines[row].split(",")
    cells[20] = "oops"
    lines[row] = ",".join(cells)
    path.write_text("\n".join(lines))
    with pytest.raises(SceneReadError, match="'oops' is not a number"):
        read_flox_csv(path)


def test_failed_write_leaves_no_partial_file(fluo, tmp_path):
    def boom(block, block_info=None):
        if block_info[0]["chunk-location"][0] == 1:
            raise RuntimeError("disk on fire")
        return block

    bad = fluo.copy()
    bad["radiance"] = (("y", "x", "band"),
                       da.from_array(fluo["radiance"].values, chunks=(2, 3, 273))
                       .map_blocks(boom, dtype=np.float32))
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_envi(bad, tmp_path / "w.img", rows_per_block=2)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_desis_like(bad, tmp_path / "d", dtype="float32", rows_per_block=2)
    left = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert left == [], left


# ---------------------------------------------------------------------------------------
# a read scene retrieves
# ---------------------------------------------------------------------------------------

@pytest.mark.slow
def test_envi_scene_retrieves_like_the_original(model_o2a, tmp_path):
    """An ENVI-read scene gives the same posterior maps as the scene it was written from,
    and NaN pixels come out flagged (3 minutes on 2 busy cores, mostly compilation)."""
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.retrieval.api import Retriever, retrieve
    from bayesfluo.scene.grid import INPUT_FLAGS
    from bayesfluo.shipped import resolve_model

    scene = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=0, model=model_o2a)
    scene["radiance"][2, 3, 10:20] = np.nan
    got = open_scene(write_envi(scene, tmp_path / "a.img"))
    guide = load_guide(resolve_model("hyplant-fluo-o2a"))
    compiled = Retriever(guide)
    r_file = retrieve(got, guide, progress=False, retriever=compiled)
    r_mem = retrieve(scene, guide, progress=False, retriever=compiled)
    assert r_file["input_flag"].values[2, 3] & INPUT_FLAGS["not_finite"]
    assert r_file["quality_flag"].values[2, 3] != 0
    xr.testing.assert_equal(r_file["f760_mean"], r_mem["f760_mean"])
