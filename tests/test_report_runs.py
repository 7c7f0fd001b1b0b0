"""``bayesfluo report`` on what the other commands write, made through the CLI on tiny
inputs: ``bayesfluo retrieve`` in every output format (netCDF, Zarr, GeoTIFF maps) and
``bayesfluo nuts`` of a FloX top-of-canopy time series (F760 against time, no maps) and
of an airborne scene (slow)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from bayesfluo.cli import main
from tests.test_report import _checks, _meta, _self_contained, render

NUTS_FAST = ["--warmup", "20", "--samples", "20", "--predictive-draws", "4", "--seed", "0"]


def _report(capsys, run, out, *extra) -> str:
    """``bayesfluo report`` of ``run``: exits 0 and writes a self-contained HTML file
    whose figures all decode in a browser; its text."""
    assert main(["report", str(run), "--out", str(out), *map(str, extra)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    _self_contained(text)
    [info] = render([out])
    assert info["broken"] == [] and info["external"] == []
    assert info["n"] == int(_meta(text, "figures")) > 0
    assert info["sections"] == ["summary"] + _meta(text, "sections").split(",")
    return text


def _notes(text: str) -> str:
    return " ".join(re.findall(r'<p class="note">([^<]*)</p>', text))


@pytest.fixture(scope="module")
def flox_nuts(tmp_path_factory):
    """A FloX scene of 8 time steps and a NUTS run of 3 of them (2 chains)."""
    d = tmp_path_factory.mktemp("flox")
    assert main(["simulate", "--instrument", "flox", "--size", "8", "--seed", "1",
                 "--quiet", "--out", str(d / "t.nc")]) == 0
    assert main(["nuts", str(d / "t.nc"), "--pixels", "2:5", "--chains", "2", *NUTS_FAST,
                 "--out", str(d / "ref.nc")]) == 0
    return d


@pytest.fixture(scope="module")
def air_scene(tmp_path_factory):
    d = tmp_path_factory.mktemp("air")
    assert main(["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "6x6", "--seed",
                 "1", "--quiet", "--out", str(d / "a.nc")]) == 0
    return d


@pytest.fixture(scope="module")
def air_results(air_scene):
    """The airborne scene retrieved with the shipped model into .nc, .zarr and .tif."""
    for ext in ("nc", "zarr", "tif"):
        assert main(["retrieve", str(air_scene / "a.nc"), "--model", "hyplant-fluo-o2a",
                     "--quiet", "--out", str(air_scene / f"res.{ext}")]) == 0
    return air_scene


def test_flox_nuts_report_shows_a_time_series(flox_nuts, capsys):
    """The tower run used to fail (IndexError: too many indices, indexing the truth of a
    time series as an image); now F760 against time replaces the maps."""
    text = _report(capsys, flox_nuts / "ref.nc", flox_nuts / "ref.html",
                   "--scene", flox_nuts / "t.nc")
    sections = _meta(text, "sections").split(",")
    assert sections[0] == "series" and "maps" not in sections
    assert {"nuts", "fits", "calibration"} <= set(sections)
    assert 'id="fig-series-1"' in text and 'id="fig-series-2"' not in text
    assert "with the scene&#x27;s truth" in text          # the truth is drawn
    assert "(time-step index" not in text                   # against the scene's times
    checks = _checks(text)
    assert any(c.startswith("90 % NUTS interval of F760 holds the scene") for c in checks)
    assert "divergent transitions" in checks


def test_flox_nuts_report_without_scene(flox_nuts, tmp_path, capsys):
    """Without its scene (the run's 'input' names a file that is not there), the series
    is drawn against the time-step index and no truth check is made."""
    import xarray as xr

    from bayesfluo.io import write_datatree

    with xr.open_datatree(flox_nuts / "ref.nc") as dt:
        dt = dt.load()
    dt.attrs["input"] = str(tmp_path / "gone.nc")
    write_datatree(dt, tmp_path / "ref.nc")
    text = _report(capsys, tmp_path / "ref.nc", tmp_path / "ref.html")
    assert _meta(text, "sections").split(",")[0] == "series"
    assert "(time-step index" in text
    assert not any("truth" in c for c in _checks(text))


@pytest.mark.parametrize("ext", ["nc", "zarr", "tif"])
def test_retrieval_report_every_format(air_results, ext, capsys):
    run = air_results / f"res.{ext}"
    text = _report(capsys, run, air_results / f"res_{ext}.html",
                   "--scene", air_results / "a.nc", "--model", "hyplant-fluo-o2a")
    sections = _meta(text, "sections").split(",")
    assert sections[0] == "maps" and "series" not in sections
    assert "fits" in sections and "training" in sections
    checks = _checks(text)
    assert "F760 RMSE of the posterior mean (usable pixels)" in checks
    # the shortest 90 % interval where the result has one (netCDF, Zarr), else q05-q95
    assert any(c.startswith("90 % interval of F760 holds the truth") for c in checks)
    assert "usable pixels flagged poor_fit or out_of_distribution" in checks
    notes = _notes(text)
    if ext == "tif":
        # the maps carry neither fit_chi2 nor the result's attributes: said, not a crash
        assert "GeoTIFF maps: f760_mean" in notes and "fit_chi2" in notes
    else:
        assert "GeoTIFF" not in notes and "fit_chi2" not in notes


def test_geotiff_report_with_few_variables(air_results, capsys):
    """GeoTIFF maps of the mean alone, without scene or model: the mean map, and what
    is missing named."""
    tif = air_results / "mean.tif"
    assert main(["retrieve", str(air_results / "a.nc"), "--model", "hyplant-fluo-o2a",
                 "--quiet", "--variables", "f760_mean", "--out", str(tif)]) == 0
    text = _report(capsys, tif, air_results / "mean.html")
    assert _meta(text, "sections") == "maps"
    assert _checks(text) == {}
    notes = _notes(text)
    for missing in ("f760_sd", "quality_flag", "--scene and --model"):
        assert missing in notes


@pytest.mark.slow
def test_airborne_nuts_report(air_scene, capsys):
    d = air_scene
    assert main(["nuts", str(d / "a.nc"), "--pixels", "0:2,0:2", "--chains", "2",
                 *NUTS_FAST, "--out", str(d / "aref.nc")]) == 0
    text = _report(capsys, d / "aref.nc", d / "aref.html", "--scene", d / "a.nc")
    sections = _meta(text, "sections").split(",")
    assert "series" not in sections and {"nuts", "fits", "calibration"} <= set(sections)
    assert any(c.startswith("90 % NUTS interval of F760 holds the scene")
               for c in _checks(text))


def test_spectral_fit_on_a_scene_of_its_own_grid(guide):
    """The report's spectral fit of a scene on its own band grid (every other band,
    shifted 0.03 nm) is on the scene's bands, predicted by the model built on them."""
    from bayesfluo.instruments import get_instrument
    from bayesfluo.physics.forward import bands_on_fine_grid, build_forward_model
    from bayesfluo.report.figures import posterior_mean_fit
    from bayesfluo.scene.simulate import simulate_scene
    inst = get_instrument("hyplant-fluo-o2a")
    c = inst.band_centres()[::2] + 0.03
    c = c[bands_on_fine_grid(inst, c, inst.fwhm_nm)]
    fm = build_forward_model(inst, band_centre_nm=c, band_fwhm_nm=inst.fwhm_nm)
    sc = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=3, model=fm)
    fit = posterior_mean_fit(sc, guide, [(1, 1), (5, 6)])
    np.testing.assert_allclose(fit["wavelength"], c, atol=1e-4)
    assert fit["observed"].shape == fit["predicted"].shape == (2, c.size)
    np.testing.assert_allclose(fit["observed"], sc["radiance"].values[[1, 5], [1, 6]],
                               rtol=1e-6)


def test_two_peak_window_gives_both_peaks_their_correlation_and_a_red_peak_figure(
        tmp_path, capsys):
    """A window with the O2-B band (DESIS, 655-795 nm) through the CLI as users run it:
    the result holds F687, the red peak, the integrated SIF and the posterior
    correlation of F687 and F760 with their units, and its report maps the red peak."""
    import xarray as xr

    assert main(["simulate", "--instrument", "desis", "--size", "8x8", "--seed", "2",
                 "--quiet", "--out", str(tmp_path / "d.nc")]) == 0
    assert main(["retrieve", str(tmp_path / "d.nc"), "--model", "desis", "--quiet",
                 "--out", str(tmp_path / "r.nc")]) == 0
    res = xr.open_dataset(tmp_path / "r.nc", engine="h5netcdf")
    for v, units in (("f687_mean", "mW m-2 sr-1 nm-1"), ("sif_red_peak_mean",
                                                         "mW m-2 sr-1 nm-1"),
                     ("sif_integrated_mean", "mW m-2 sr-1"), ("f687_f760_corr", "1")):
        assert res[v].attrs["units"] == units, v
        assert np.all(np.isfinite(res[v].values)), v
    corr = res["f687_f760_corr"].values
    assert np.all(np.abs(corr) <= 1.0 + 1e-6)
    # the integral over 650-800 nm holds both peaks: tens of times the F760 value
    ratio = res["sif_integrated_mean"].values / res["f760_mean"].values
    assert np.all(ratio[res["f760_mean"].values > 0.3] > 20.0)
    text = _report(capsys, tmp_path / "r.nc", tmp_path / "r.html", "--scene",
                   tmp_path / "d.nc", "--model", "desis")
    assert "the red peak: F687 posterior mean and truth" in text
    assert "posterior correlation of F687 and F760" in text
