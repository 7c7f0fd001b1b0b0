"""FloX series in the layouts field users have (issue 16, item 1): the CSV ``rows``,
``long`` and ``wide`` layouts and a FloX-style netCDF (L and E over time and wavelength,
in W, the irradiance as E/pi in radiance units, the sun's position from the time and
place) all read as the same scene; each opened scene saves to netCDF and Zarr; a table
that fits no layout, or breaks its layout, is refused naming the file.

The scene is built here by hand (small, seeded, no simulator); the files are written by
:func:`bayesfluo.io.write_flox_csv` or by hand, the netCDF one by xarray directly.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
import xarray as xr

from bayesfluo.io import (
    SceneReadError,
    open_scene,
    read_flox_csv,
    read_flox_netcdf,
    write_dataset,
    write_flox_csv,
)
from bayesfluo.io.writers import write_zarr
from bayesfluo.physics.solar import solar_position
from tests.test_reader_validation import flox_scene

GEOMETRY = ("sza", "saa", "vza", "vaa", "surface_altitude", "sensor_altitude")
JUELICH = {"latitude": 50.865, "longitude": 6.447}


@pytest.fixture(scope="module")
def flox():
    return flox_scene(nt=6, seed=3)


def _quiet(fn, *args, **kwargs):
    """Call a reader, failing on any warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn(*args, **kwargs)


def _same(got, scene, rtol=0.0, skip=()):
    for v in ("radiance", "irradiance", *GEOMETRY, "mask", "ndvi"):
        if v in skip:
            continue
        if rtol:
            np.testing.assert_allclose(got[v].values, scene[v].values, rtol=rtol, err_msg=v)
        else:
            np.testing.assert_array_equal(got[v].values, scene[v].values, err_msg=v)
    np.testing.assert_array_equal(got["time"].values, scene["time"].values)
    np.testing.assert_array_equal(got["wavelength"].values, scene["wavelength"].values)
    np.testing.assert_array_equal(got["fwhm"].values, scene["fwhm"].values)


@pytest.mark.parametrize("layout", ["rows", "long", "wide"])
def test_every_csv_layout_reads_the_same_scene(flox, tmp_path, layout):
    path = write_flox_csv(flox, tmp_path / f"{layout}.csv", layout=layout)
    got = _quiet(open_scene, path)
    assert got.attrs["layout"] == layout and got.attrs["instrument"] == "flox"
    _same(got, flox)


@pytest.mark.parametrize("layout", ["long", "wide"])
def test_new_layouts_save_to_netcdf_and_zarr(flox, tmp_path, layout):
    got = _quiet(open_scene, write_flox_csv(flox, tmp_path / "t.csv", layout=layout))
    for path in (write_dataset(got, tmp_path / "s.nc"), write_zarr(got, tmp_path / "s.zarr")):
        back = _quiet(open_scene, path)
        _same(back, flox)
        assert back.attrs["layout"] == layout


def _user_long_table(scene, path, sep=";"):
    """A long table as a user exports it: no header lines, ``;`` separated, columns
    ``time;wavelength;L_up;E_down`` with times ending in Z, rows in no particular
    order, no geometry and no fwhm."""
    wl = scene["wavelength"].values
    t = np.datetime_as_string(scene["time"].values, unit="s")
    rad, irr = scene["radiance"].values, scene["irradiance"].values
    rows = [f"{t[i]}Z{sep}{float(wl[j])!r}{sep}{float(rad[i, j])!r}{sep}{float(irr[i, j])!r}"
            for j in range(wl.size) for i in range(t.size)]
    rng = np.random.default_rng(0)
    rows = [rows[k] for k in rng.permutation(len(rows))]
    path.write_text(sep.join(["time", "wavelength", "L_up", "E_down"]) + "\n"
                    + "\n".join(rows) + "\n")
    return path


def test_user_long_table_without_geometry_takes_it_from_the_caller(flox, tmp_path):
    path = _user_long_table(flox, tmp_path / "user.csv")
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*no sza.*latitude"):
        open_scene(path)
    geometry = {g: flox[g].values for g in GEOMETRY}
    with pytest.warns(UserWarning) as record:
        got = open_scene(path, geometry=geometry)
    text = " | ".join(str(w.message) for w in record)
    assert "fwhm" in text and "assumed mW" in text      # what was assumed is said
    assert got.attrs["layout"] == "long" and "fwhm_assumed" in got.attrs
    _same(got, flox, skip=("ndvi",))
    # no NDVI column: the canopy's own, from pi L / E (reflectance 0.05 and 0.45)
    np.testing.assert_allclose(got["ndvi"].values, 0.8, atol=0.01)


def test_sza_from_the_time_and_place(flox, tmp_path):
    """Without sza but with latitude and longitude (header lines), sza and saa come from
    the UTC time stamps; an offset in a time stamp is converted to UTC."""
    s = flox.drop_vars(["sza", "saa"])
    path = write_flox_csv(s, tmp_path / "place.csv", layout="wide")
    lines = path.read_text().splitlines()
    lines.insert(1, f"# latitude = {JUELICH['latitude']}")
    lines.insert(1, f"# longitude = {JUELICH['longitude']}")
    # the first time stamp written in local summer time (UTC+2)
    first = next(i for i, ln in enumerate(lines) if ln.startswith("2026-06-29T08"))
    lines[first] = lines[first].replace("2026-06-29T08:00:00.000000", "2026-06-29T10:00:00+02:00")
    path.write_text("\n".join(lines) + "\n")
    got = _quiet(open_scene, path)
    sza, saa = solar_position(flox["time"].values, **{k + "_deg": v for k, v in
                                                       JUELICH.items()})
    np.testing.assert_allclose(got["sza"].values, sza, atol=1e-4)
    np.testing.assert_allclose(got["saa"].values, saa, atol=1e-4)
    np.testing.assert_array_equal(got["time"].values, flox["time"].values)
    assert "sza and saa" in got.attrs["sza_computed"]
    assert got.attrs["latitude"] == JUELICH["latitude"]


def test_flox_netcdf_in_watts_with_e_over_pi_in_radiance_units(flox, tmp_path):
    """The netCDF a FloX processing chain writes: (wavelength, UTC_time), W, the
    incoming irradiance as E/pi in W m-2 sr-1 nm-1, the place instead of angles."""
    ds = xr.Dataset(
        {"L": (("wavelength", "UTC_time"), flox["radiance"].values.T / 1e3,
               {"units": "W m-2 sr-1 nm-1"}),
         "E": (("wavelength", "UTC_time"), flox["irradiance"].values.T / 1e3 / np.pi,
               {"units": "W m-2 sr-1 nm-1"}),
         "fwhm": ("wavelength", flox["fwhm"].values, {"units": "nm"}),
         "vza": ((), 0.0), "vaa": ((), 0.0), "sensor_altitude": ((), 105.0)},
        coords={"wavelength": ("wavelength", flox["wavelength"].values, {"units": "nm"}),
                "UTC_time": flox["time"].values},
        attrs={**JUELICH, "surface_altitude": 100.0})
    path = tmp_path / "flox_l1.nc"
    ds.to_netcdf(path, engine="h5netcdf")
    got = _quiet(open_scene, path)
    assert got.attrs["layout"] == "netcdf"
    assert "E/pi" in got.attrs["irradiance_convention_from_units"]
    np.testing.assert_allclose(got["radiance"].values, flox["radiance"].values, rtol=1e-6)
    np.testing.assert_allclose(got["irradiance"].values, flox["irradiance"].values,
                               rtol=1e-6)
    sza, _ = solar_position(flox["time"].values, JUELICH["latitude"], JUELICH["longitude"])
    np.testing.assert_allclose(got["sza"].values, sza, atol=1e-4)
    back = _quiet(open_scene, write_dataset(got, tmp_path / "scene.nc"))
    np.testing.assert_array_equal(back["irradiance"].values, got["irradiance"].values)
    # (time, wavelength) order, L_up/E_down names and a stated E read the same
    ds2 = ds.rename({"L": "L_up", "E": "E_down"}).transpose("UTC_time", "wavelength")
    ds2["E_down"] = ds2["E_down"] * np.pi
    ds2["E_down"].attrs["units"] = "W m-2 nm-1"
    ds2.attrs["irradiance_convention"] = "E"
    ds2.to_netcdf(tmp_path / "flox_t.nc", engine="h5netcdf")
    got2 = _quiet(read_flox_netcdf, tmp_path / "flox_t.nc")
    np.testing.assert_allclose(got2["irradiance"].values, got["irradiance"].values,
                               rtol=1e-6)
    # per steradian irradiance with a stated E contradicts itself
    ds.attrs["irradiance_convention"] = "E"
    ds.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
    with pytest.raises(SceneReadError, match=re.escape(str(tmp_path / "bad.nc"))
                       + ".*per steradian"):
        open_scene(tmp_path / "bad.nc")


def _rewrite(path, fn):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(fn(lines)) + "\n")
    return path


def test_tables_that_break_their_layout_are_refused_naming_the_file(flox, tmp_path):
    def refused(path, *what):
        with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*"
                           + ".*".join(map(re.escape, what))):
            read_flox_csv(path)

    p = tmp_path / "none.csv"
    p.write_text("time,foo,bar\n2026-06-29T08:00:00,1,2\n")
    refused(p, "cannot tell the table's layout", "long layout", "wide layout")
    # long: a repeated (time, wavelength) row; geometry that changes within a time stamp
    long = write_flox_csv(flox, tmp_path / "long.csv", layout="long")
    refused(_rewrite(long, lambda ls: ls + [ls[-1]]), "more than one row for wavelength")
    long = write_flox_csv(flox, tmp_path / "long2.csv", layout="long")
    header = long.read_text().splitlines()
    col = next(ln for ln in header if ln.startswith("time,")).split(",").index("sza")

    def change_sza(ls):
        first = next(i for i, ln in enumerate(ls) if ln.startswith("2026"))
        cells = ls[first + 1].split(",")
        cells[col] = "12.5"
        ls[first + 1] = ",".join(cells)
        return ls
    refused(_rewrite(long, change_sza), "'sza' changes within time stamp")
    # wide: an L_ column without its E_ column; a cell that is not a number
    wide = write_flox_csv(flox, tmp_path / "wide.csv", layout="wide")

    def drop_last_e(ls):
        return [",".join(ln.split(",")[:-1]) if not ln.startswith("#") else ln for ln in ls]
    refused(_rewrite(wide, drop_last_e), "has an L_ column but no E_ column")
    wide = write_flox_csv(flox, tmp_path / "wide2.csv", layout="wide")

    def oops(ls):
        row = next(i for i, ln in enumerate(ls) if ln.startswith("2026"))
        cells = ls[row].split(",")
        cells[-3] = "oops"
        ls[row] = ",".join(cells)
        return ls
    refused(_rewrite(wide, oops), "'oops' is not a number")
    # a bayesfluo scene netCDF is not taken for a FloX one, a broken FloX one is named
    nc = write_dataset(flox, tmp_path / "scene.nc")
    assert _quiet(open_scene, nc).attrs.get("layout") is None
    ds = xr.Dataset({"L": (("wavelength", "time"), np.ones((3, 2))),
                     "E": (("wavelength", "time"), np.ones((3, 2)))},
                    coords={"wavelength": [760.0, 761.0, 762.0],
                            "time": ["2026-06-29T08:00", "not a time"]})
    ds.to_netcdf(tmp_path / "bad_time.nc", engine="h5netcdf")
    with pytest.raises(SceneReadError, match=re.escape(str(tmp_path / "bad_time.nc"))
                       + ".*'not a time' is not ISO 8601"):
        open_scene(tmp_path / "bad_time.nc")


def test_response_shape_travels_through_the_csv_and_bad_ones_are_refused(flox, tmp_path):
    """``# response_exponent = p`` in the header is written for a scene that has it, read
    back into the scene's attributes (where :func:`bayesfluo.scene.bands.scene_bands`
    finds it); a value outside [2, 8] is refused naming the file."""
    sc = flox.copy()
    sc.attrs["response_exponent"] = 3.5
    path = write_flox_csv(sc, tmp_path / "p.csv")
    assert "# response_exponent = 3.5" in path.read_text()
    assert _quiet(open_scene, path).attrs["response_exponent"] == 3.5
    assert "response_exponent" not in _quiet(
        open_scene, write_flox_csv(flox, tmp_path / "g.csv")).attrs
    bad = tmp_path / "bad.csv"
    bad.write_text(path.read_text().replace("response_exponent = 3.5",
                                            "response_exponent = 12"))
    with pytest.raises(SceneReadError, match=r"bad\.csv.*response_exponent must lie in"):
        open_scene(bad)
