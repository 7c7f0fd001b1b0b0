"""The FloX tower guide (issue 16, item 5): the draws it is trained on are the model's
likelihood given the measured irradiance, a series is read at retrieval as in training,
the shipped guide is calibrated on the model's own draws, and a FloX table on the
spectrometer's own grid goes through ``retrieve --model flox`` and ``report``."""

from __future__ import annotations

import html
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.diagnostics.calibration import coverage_test
from bayesfluo.inference.guide import pixel_features
from bayesfluo.inference.guide.tower import tower_inputs
from bayesfluo.inference.tower import build_tower_pool, simulate_tower_batch
from bayesfluo.inference.train import TrainConfig, default_ranges
from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig, SifModel, toc_operator

REF = get_instrument("flox").reference_radiance


@pytest.fixture(scope="module")
def toc(model_flox):
    return SifModel(model_flox, ModelConfig(free=()), top_of_canopy=True)


@pytest.fixture(scope="module")
def batch(toc):
    ranges = default_ranges("flox")
    pool = build_tower_pool(toc, ranges, jax.random.PRNGKey(0), 64, progress=False)
    return simulate_tower_batch(toc, pool, jax.random.PRNGKey(1), 8, 64, ranges, 0.25, REF)


def test_tower_draws_follow_the_model_given_the_measured_irradiance(toc, batch):
    """Radiance simulated from the true irradiance, irradiance measured with its own
    noise: given the measured one, the radiance's standardised residuals under the
    model's likelihood (noise plus R^2 var(E/pi), first order in the irradiance noise)
    are N(0, 1). 8 x 64 x 933 independent values: the mean of z^2 has sd
    sqrt(2/n) = 0.0021 and the mean of z 0.0015, so the bounds below are 4.9 and 4.0 sd
    (false failure < 1e-4)."""
    patches, anc, ref, z_true, u = batch
    assert z_true.shape == (8, 0) and anc.shape == (8, 64, 13)
    coeffs, red, far = toc.surface(u, patches.ndvi)
    pred = jax.vmap(toc.predict)(toc_operator(patches.irradiance), coeffs, red, far)
    extra = jax.vmap(toc.irradiance_variance)(patches, coeffs)
    var = jax.vmap(toc.noise_variance)(pred, patches.noise_a, patches.noise_b, extra)
    z = np.asarray((patches.radiance - pred) / jnp.sqrt(var), np.float64)
    assert abs(np.mean(z**2) - 1.0) < 0.01
    assert abs(np.mean(z)) < 0.006
    # the spectrum is read against the scan's own irradiance
    e = np.asarray(patches.irradiance, np.float64) / np.pi
    np.testing.assert_allclose(ref, np.log(np.maximum(e, 1e-3)), rtol=1e-5, atol=1e-5)


def test_a_series_is_read_at_retrieval_as_in_training(toc, batch):
    """A Dataset holding one training patch's scans: the retrieval's inputs
    (tower_inputs, from the file's variables) equal the training's (from the arrays)."""
    patches, anc, ref, _, _ = batch
    p0 = jax.tree.map(lambda v: np.asarray(v[0]), patches)
    a0 = np.asarray(anc[0], np.float64)
    sza = np.degrees(np.arccos(a0[:, 0]))
    surf = a0[:, 3] * 1000.0
    sens = surf + a0[:, 4] * 1000.0
    wl = np.asarray(toc.fm.band_centre_nm, np.float64)
    scene = xr.Dataset(
        {"radiance": (("time", "band"), p0.radiance), "irradiance": (("time", "band"),
                                                                     p0.irradiance),
         "sza": ("time", sza), "ndvi": ("time", p0.ndvi), "surface_altitude": ("time", surf),
         "sensor_altitude": ("time", sens)},
        coords={"time": np.arange(64), "wavelength": ("band", wl),
                "fwhm": ("band", np.full(wl.size, get_instrument("flox").fwhm_nm))},
        attrs={"instrument": "flox", "noise_a": float(p0.noise_a),
               "noise_b": float(p0.noise_b)})
    n_feat = wl.size + 13
    d = tower_inputs(scene, toc, np.zeros(n_feat), np.ones(n_feat), REF, 8)
    want = pixel_features(patches.radiance[0], anc[0], 0.0, 1.0, ref[0])
    np.testing.assert_allclose(np.asarray(d.features[0]), np.asarray(want), rtol=2e-5,
                               atol=2e-5)
    assert np.all(np.asarray(d.input_flag) == 0)


def test_tower_training_options_that_do_not_apply_are_refused():
    with pytest.raises(ValueError, match="fine-tuning is for images"):
        TrainConfig(instrument="flox", model=ModelConfig(free=()), finetune_steps=10,
                    scenes=("a.nc",))
    with pytest.raises(ValueError, match="no atmosphere"):
        TrainConfig(instrument="flox", model=ModelConfig(free=()),
                    nuisance={"angstrom": [1.0, 1.6]})


# --- the shipped guide -------------------------------------------------------------------

@pytest.fixture(scope="module")
def flox_guide():
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.shipped import resolve_model
    return load_guide(resolve_model("flox"))


# the refined run (35 s) with -m slow: tests/test_tower_refine.py checks the refinement
@pytest.mark.parametrize("refine", [False, pytest.param(None, marks=pytest.mark.slow)],
                         ids=["guide", "refined"])
def test_shipped_flox_guide_is_calibrated_on_the_model_draws(flox_guide, refine):
    """1,024 scans from the tower model's own prior predictive (the NUTS validation's
    conditions: an afternoon at sun zenith 30-65 deg, SNR 300 with read noise, a quarter
    bare; keys never used in training): the shortest 90 % F760 intervals, of the guide
    alone and refined (the default), hold the truth within the binomial band at
    false-failure rate 1e-4."""
    from bayesfluo.retrieval.chunk import RetrieveOptions
    from bayesfluo.retrieval.series import retrieve_series
    from bayesfluo.scene.prior import simulate_patch, tower_series

    model = flox_guide.model
    draws = [simulate_patch(model, jax.random.PRNGKey(70_000 + i), n_pixels=64, height_m=5.0,
                            snr=None, shot_noise_only=False) for i in range(16)]
    scene = tower_series(model, [p for p, _ in draws],
                         np.concatenate([t["sza_deg"] for _, t in draws]))
    res = retrieve_series(scene, flox_guide, RetrieveOptions(refine=refine), progress=False)
    truth = np.concatenate([t["f760"] for _, t in draws])
    hit = (truth >= res["f760_lo90"].values) & (truth <= res["f760_hi90"].values)
    c = coverage_test({0.9: hit}, 1e-4)[0]
    assert c.passed, (c.observed, c.lower, c.upper)


def test_flox_table_on_its_own_grid_through_retrieve_and_report(flox_guide, tmp_path,
                                                               capsys):
    """A FloX day simulated on a spectrometer's own grid (0.17 nm step, 0.3 nm FWHM,
    shifted 0.03 nm), written by write_flox_csv: ``retrieve --model flox`` reads it on
    its own bands, writes F760 and F687 over time, and ``report`` draws the series; an
    each scan is refined unless ``--no-refine``; an image model and a GeoTIFF output are refused
    naming the file, leaving no output."""
    from bayesfluo.io.flox import write_flox_csv
    from bayesfluo.physics.forward import build_forward_model
    from bayesfluo.scene.simulate import simulate_scene

    nominal = get_instrument("flox").band_centres()
    centres = np.arange(nominal[0] + 0.2, nominal[-1] - 0.2, 0.17) + 0.03
    fm = build_forward_model("flox", band_centre_nm=centres, band_fwhm_nm=0.3)
    sim = simulate_scene("flox", (128, 1), seed=900_123, model=fm)
    csv = write_flox_csv(sim, tmp_path / "t.csv")
    out = tmp_path / "r.nc"
    assert main(["retrieve", str(csv), "--model", "flox", "--quiet", "--out", str(out)]) == 0
    assert "not_refined of 128 scans" in capsys.readouterr().out
    with xr.open_dataset(out) as r:
        r = r.load()
    assert r["f760_mean"].dims == ("time",) and r.sizes["time"] == 128
    assert f"{centres.size} of {centres.size} scene bands" in r.attrs["bands_used"]
    ok = r["quality_flag"].values == 0
    assert ok.mean() > 0.9
    truth = sim["true_f760"].values.ravel()
    err = r["f760_mean"].values - truth
    # a broken grid path reads the O2 fill-in wrongly: errors of several posterior sd
    assert np.sqrt(np.mean(err[ok] ** 2)) < 3.0 * np.mean(r["f760_sd"].values[ok])
    assert np.all(np.isfinite(r["f687_mean"].values[ok]))
    html_out = tmp_path / "r.html"
    assert main(["report", str(out), "--scene", str(csv), "--out", str(html_out)]) == 0
    text = html.unescape(html_out.read_text())
    sections = re.search(r'<meta name="bayesfluo-sections" content="([^"]*)">', text).group(1)
    assert sections.split(",")[0] in ("summary", "series") and "series" in sections
    capsys.readouterr()
    # refined by default: each scan at the model's mode on the file's own bands, fitting
    # at least as well as the guide's mean (--no-refine) and erring no more
    assert "refined" in r.attrs["posterior"] and not (r["quality_flag"].values & 16).any()
    assert "f687" in r.attrs["posterior"].split(";")[1]
    alone = tmp_path / "guide.nc"
    assert main(["retrieve", str(csv), "--model", "flox", "--no-refine", "--quiet", "--out",
                 str(alone)]) == 0
    with xr.open_dataset(alone) as g:
        g = g.load()
    assert "refined" not in g.attrs["posterior"]
    assert np.nanmedian(r["fit_chi2"].values) <= np.nanmedian(g["fit_chi2"].values)
    ok_g = g["quality_flag"].values == 0
    err_g = (g["f760_mean"].values - truth)[ok_g]
    assert np.sqrt(np.mean(err[ok] ** 2)) < 1.2 * np.sqrt(np.mean(err_g**2))
    for extra, said in ((["--model", "hyplant-fluo-o2a"], "--model flox"),):
        bad = tmp_path / "bad.nc"
        assert main(["retrieve", str(csv), *extra, "--quiet", "--out", str(bad)]) == 2
        err_text = capsys.readouterr().err
        assert str(csv) in err_text and said in err_text
        assert not bad.exists()
    assert main(["retrieve", str(csv), "--model", "flox", "--quiet", "--out",
                 str(tmp_path / "r.tif")]) == 2
    assert "GeoTIFF" in capsys.readouterr().err
    assert not list(tmp_path.glob("r.tif*")) and not list(tmp_path.glob(".r.*"))

