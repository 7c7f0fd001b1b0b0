"""Every command on the FloX files the command line itself writes (issue 16, item 1).

``bayesfluo simulate --instrument flox --out t.csv`` writes a FloX table; ``nuts``,
``baseline`` and ``report`` (of both runs, finding the CSV through the run's ``input``
attribute or given ``--scene``) work on it; ``retrieve`` with an image model reads it and
says, naming the file, that a tower's series needs the tower's model, leaving no output
(``retrieve --model flox`` itself: ``tests/test_flox_guide.py``). A long table with
neither geometry nor units takes them from ``--geometry`` (the sun's position from
``latitude`` and ``longitude``) and says what it assumed.
"""

from __future__ import annotations

import html
import re

import numpy as np
import pytest
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.io import write_datatree

NUTS_FAST = ["--warmup", "20", "--samples", "20", "--predictive-draws", "4", "--seed", "0"]


def _meta(text: str, name: str) -> str:
    return re.search(rf'<meta name="bayesfluo-{name}" content="([^"]*)">', text).group(1)


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    """A FloX table written by ``simulate`` (8 time steps) and a NUTS run of 3 of them."""
    d = tmp_path_factory.mktemp("tower")
    assert main(["simulate", "--instrument", "flox", "--size", "8", "--seed", "2",
                 "--quiet", "--out", str(d / "t.csv")]) == 0
    assert main(["nuts", str(d / "t.csv"), "--pixels", "2:5", "--chains", "2", *NUTS_FAST,
                 "--out", str(d / "ref.nc")]) == 0
    return d


def test_report_of_a_nuts_run_on_the_csv(tower, capsys):
    """The report used to read the run's scene as netCDF only ("cannot read t.csv as
    netCDF-4"); now it finds the CSV through the run's 'input' attribute, or --scene."""
    capsys.readouterr()
    for extra in ([], ["--scene", str(tower / "t.csv")]):
        out = tower / f"ref{len(extra)}.html"
        assert main(["report", str(tower / "ref.nc"), "--out", str(out), *extra]) == 0
        assert str(out) in capsys.readouterr().out
        text = out.read_text()
        assert _meta(text, "sections").split(",")[0] == "series"
        assert str(tower / "t.csv") in html.unescape(text)          # the scene it read
        assert "(time-step index" not in text                   # drawn against its times


def test_baseline_and_its_report_on_the_csv(tower, capsys):
    out = tower / "sfm.nc"
    assert main(["baseline", str(tower / "t.csv"), "--method", "sfm", "--out", str(out)]) == 0
    assert main(["report", str(out), "--out", str(tower / "sfm.html")]) == 0
    assert "series" in _meta((tower / "sfm.html").read_text(), "sections")


def test_retrieve_with_an_image_model_names_the_file_and_the_model_to_use(tower, capsys):
    out = tower / "res.nc"
    assert main(["retrieve", str(tower / "t.csv"), "--model", "hyplant-fluo-o2a", "--quiet",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{tower / 't.csv'}: " in err
    assert "--model flox" in err
    assert not out.exists() and not list(tower.glob(".res.nc*"))


def test_long_table_takes_geometry_from_the_command_line(tower, tmp_path, capsys):
    """A long table (``;``, W, no header lines, no geometry): refused naming the file and
    --geometry; with --geometry (the place instead of the sun's angles) it runs, each
    assumption in a warning."""
    from bayesfluo.io import open_scene

    scene = open_scene(tower / "t.csv").load()
    wl = scene["wavelength"].values
    t = np.datetime_as_string(scene["time"].values, unit="s")
    rad, irr = scene["radiance"].values / 1e3, scene["irradiance"].values / 1e3
    rows = [f"{t[i]};{float(wl[j])!r};{float(rad[i, j])!r};{float(irr[i, j])!r}"
            for i in range(t.size) for j in range(wl.size)]
    path = tmp_path / "long.csv"
    path.write_text("time;wavelength;L;E\n" + "\n".join(rows) + "\n")
    capsys.readouterr()
    out = tmp_path / "b.nc"
    assert main(["baseline", str(path), "--method", "sfm", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "--geometry" in err and "latitude" in err
    geometry = "latitude=50.865,longitude=6.447,vza=0,vaa=0,surface_altitude=100," \
               "sensor_altitude=105"
    with pytest.warns(UserWarning) as record:
        assert main(["baseline", str(path), "--method", "sfm", "--geometry", geometry,
                     "--out", str(out)]) == 0
    said = " | ".join(str(w.message) for w in record)
    assert "W instead of mW" in said and "fwhm" in said
    assert main(["baseline", str(tower / "t.csv"), "--method", "sfm", "--out",
                 str(tmp_path / "ref.nc")]) == 0
    with xr.open_dataset(out) as res, xr.open_dataset(tmp_path / "ref.nc") as ref:
        # the same spectra in W, read back to mW: the same SFM retrieval
        np.testing.assert_allclose(res["f760_mean"].values, ref["f760_mean"].values,
                                   rtol=1e-3, atol=1e-3)


def test_report_without_a_readable_scene_says_why(tower, tmp_path, capsys):
    """A run whose 'input' names a file that is there but cannot be read as a scene: the
    report is still written, its summary saying which file and why (asked for by
    --scene, the same file is an error naming it)."""
    with xr.open_datatree(tower / "ref.nc") as dt:
        dt = dt.load()
    bad = tmp_path / "t.csv"
    bad.write_text("time,foo\n2026-06-29T08:00:00,1\n")
    dt.attrs["input"] = str(bad)
    run = write_datatree(dt, tmp_path / "ref.nc")
    assert main(["report", str(run), "--out", str(tmp_path / "r.html")]) == 0
    text = html.unescape((tmp_path / "r.html").read_text())
    assert f"{bad}, named by the run's 'input' attribute, cannot be read" in text
    assert main(["report", str(run), "--scene", str(bad), "--out",
                 str(tmp_path / "r2.html")]) == 2
    assert str(bad) in capsys.readouterr().err and not (tmp_path / "r2.html").exists()
