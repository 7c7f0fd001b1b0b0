import os

import pytest
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.io import read_scene, validate_scene, write_dataset
from bayesfluo.scene.simulate import simulate_scene


@pytest.fixture(scope="module")
def small(model_o2a):
    return simulate_scene("hyplant-fluo-o2a", "4x3", seed=1, model=model_o2a)


def test_round_trip_and_atomic_write(small, tmp_path):
    path = write_dataset(small, tmp_path / "scene.nc")
    assert sorted(os.listdir(tmp_path)) == ["scene.nc"]  # no temporary left behind
    back = read_scene(path)
    xr.testing.assert_identical(back.load(), small)


def test_failed_write_leaves_no_file(small, tmp_path):
    bad = small.copy()
    bad.attrs["not_serialisable"] = {"a": 1}
    with pytest.raises((TypeError, ValueError)):
        write_dataset(bad, tmp_path / "scene.nc")
    assert os.listdir(tmp_path) == []


def test_truncated_and_missing_files(small, tmp_path):
    path = write_dataset(small, tmp_path / "scene.nc")
    data = path.read_bytes()
    trunc = tmp_path / "truncated.nc"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cannot read .*truncated.nc"):
        read_scene(trunc)
    with pytest.raises(FileNotFoundError):
        read_scene(tmp_path / "nope.nc")


@pytest.mark.parametrize("change, message", [
    (lambda d: d.drop_vars("radiance"), "no 'radiance'"),
    (lambda d: d.assign(radiance=d.radiance.assign_attrs(units="W m-2 sr-1 um-1")),
     "units are 'W m-2 sr-1 um-1'"),
    (lambda d: d.assign_coords(wavelength=d.wavelength.assign_attrs(medium="glass")),
     "medium"),
    (lambda d: d.assign_coords(wavelength=("band", d.wavelength.values / 1e3,
                                           {"units": "nm", "medium": "air"})),
     "not a grid in nm"),
    (lambda d: d.assign_attrs(instrument="landsat"), "unknown instrument 'landsat'"),
    (lambda d: d.drop_vars("sza"), "no 'sza'"),
])
def test_validate_scene_names_the_problem(small, change, message):
    with pytest.raises(ValueError, match=message):
        validate_scene(change(small.copy()))


def test_cli_simulate_and_errors(tmp_path, capsys):
    out = tmp_path / "s.nc"
    png = tmp_path / "s.png"
    rc = main(["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "3x2", "--seed", "2",
               "--out", str(out), "--plot", str(png), "--quiet"])
    assert rc == 0 and out.exists() and png.stat().st_size > 10_000
    ds = read_scene(out)
    assert ds.sizes["y"] == 3 and ds.attrs["seed"] == 2
    rc = main(["simulate", "--instrument", "nosuch", "--size", "2x2", "--out",
               str(tmp_path / "x.nc"), "--quiet"])
    assert rc == 2
    assert "unknown instrument 'nosuch'" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()
    # an ENVI name was once written as netCDF under that name: refused instead
    rc = main(["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "2x2", "--out",
               str(tmp_path / "cube.hdr"), "--quiet"])
    assert rc == 2 and "not ENVI" in capsys.readouterr().err
    assert not (tmp_path / "cube.hdr").exists()


def test_cli_instruments(capsys):
    assert main(["instruments"]) == 0
    text = capsys.readouterr().out
    for name in ("hyplant-fluo", "desis", "floris", "flox"):
        assert name in text
