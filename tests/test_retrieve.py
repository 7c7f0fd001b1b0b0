"""Whole-scene retrieval with the shipped guide: bad pixels, chunking, output format,
calibration at nominal conditions, the CLI and the demo."""

import numpy as np
import pytest
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.guide import load_guide
from bayesfluo.io import write_dataset
from bayesfluo.models import resolve_model
from bayesfluo.retrieve import QUALITY_FLAGS, RetrieveOptions, Retriever, retrieve
from bayesfluo.simulate import simulate_scene


@pytest.fixture(scope="module")
def guide():
    return load_guide(resolve_model("hyplant-fluo-o2a"))


@pytest.fixture(scope="module")
def retriever(guide, model_o2a):
    return Retriever(guide, model_o2a)


@pytest.fixture(scope="module")
def scene(model_o2a):
    return simulate_scene("hyplant-fluo-o2a", (20, 13), seed=2, model=model_o2a)


@pytest.fixture(scope="module")
def result(scene, guide, retriever):
    return retrieve(scene, guide, RetrieveOptions(n_draws=8), retriever=retriever,
                    progress=False)


def test_every_output_variable_has_units_and_names(result):
    for name in ("f760", "sif_peak", "reflectance760", "surface_pressure", "aot550",
                 "spectral_shift"):
        for stat in ("mean", "sd", "q05", "q50", "q95"):
            v = result[f"{name}_{stat}"]
            assert v.dims == ("y", "x") and v.shape == (20, 13)
    for v in result.data_vars.values():
        assert "units" in v.attrs and "long_name" in v.attrs, v.name
    assert result["quality_flag"].attrs["flag_meanings"].split() == list(QUALITY_FLAGS)
    assert result["f760_draws"].dims == ("y", "x", "draw")
    for k in ("model", "bayesfluo_version", "created", "input", "Conventions"):
        assert k in result.attrs
    # ordered summaries everywhere
    q05, q50, q95 = (result[f"f760_{s}"].values for s in ("q05", "q50", "q95"))
    assert np.all(q05 <= q50) and np.all(q50 <= q95) and np.all(result.f760_sd.values > 0)


def test_bad_pixels_are_flagged_and_the_rest_unharmed(scene, guide, retriever, result):
    bad = scene.copy(deep=True)
    rad = bad["radiance"].values
    rad[0, 0, 10] = np.nan          # NaN in one band
    rad[1, 1, :] = -5.0             # negative radiance
    rad[2, 2, :] = np.inf
    bad["mask"] = (("y", "x"), np.ones((20, 13), np.int8))
    bad["mask"].values[3, 3] = 0    # masked by the user
    # a whole patch of NaN: its pixels flagged, the others unaffected
    rad[8:16, 8:13, :] = np.nan
    res = retrieve(bad, guide, retriever=retriever, progress=False)
    flag = res["quality_flag"].values
    for (r, c) in ((0, 0), (1, 1), (2, 2), (3, 3)):
        assert flag[r, c] & QUALITY_FLAGS["masked_input"]
        assert np.isnan(res["f760_mean"].values[r, c])
    assert res["input_flag"].values[1, 1] == 4 and res["input_flag"].values[2, 2] == 2
    assert np.all(flag[8:16, 8:13] & QUALITY_FLAGS["masked_input"])
    # pixels of untouched patches: identical to the clean retrieval
    same = np.ones((20, 13), bool)
    same[:8, :8] = False
    same[8:16, 8:13] = False
    np.testing.assert_array_equal(res["f760_mean"].values[same], result["f760_mean"].values[same])
    # good pixels of the damaged patch: finite, and moved by much less than their sd
    keep = np.ones((8, 8), bool)
    keep[[0, 1, 2, 3], [0, 1, 2, 3]] = False
    d = np.abs(res["f760_mean"].values[:8, :8] - result["f760_mean"].values[:8, :8])[keep]
    assert np.all(np.isfinite(d))
    assert np.all(d < 0.5 * result["f760_sd"].values[:8, :8][keep])


def test_chunking_does_not_change_results(scene, guide, retriever, result):
    small = retrieve(scene, guide, RetrieveOptions(chunk_pixels=64, n_draws=8),
                     retriever=retriever, progress=False)
    for v in ("f760_mean", "f760_sd", "surface_pressure_mean", "quality_flag", "f760_draws"):
        np.testing.assert_allclose(small[v].values, result[v].values, rtol=2e-5, atol=1e-6)
    # the fit's band operators are batched differently: float32 rounding only
    np.testing.assert_allclose(small["fit_chi2"].values, result["fit_chi2"].values, rtol=3e-4)


def test_wrong_scene_is_refused_with_the_reason(guide, model_o2a, scene):
    other = simulate_scene("desis", (8, 8), seed=0)
    with pytest.raises(ValueError, match="from 'desis'"):
        retrieve(other, guide, progress=False)
    shifted = scene.assign_coords(wavelength=scene["wavelength"] + 0.5)
    shifted["wavelength"].attrs = scene["wavelength"].attrs
    with pytest.raises(ValueError, match="wavelength grid differs"):
        retrieve(shifted, guide, progress=False)
    with pytest.raises(ValueError, match="ndvi"):
        retrieve(scene.drop_vars("ndvi"), guide, progress=False)


def test_calibrated_at_nominal_conditions(guide, model_o2a):
    """90 % intervals of F760 on 16 fresh patches (1024 pixels) drawn from the prior at
    nominal conditions. Pixels of a patch share its atmosphere, so they are not
    independent: the bounds [0.827, 0.973] are the binomial bounds at false-failure rate
    1e-4 for an effective sample of 256 (a design effect of 4). Seeded."""
    from bayesfluo.diagnostics.guide_check import evaluate_simulated
    ds = evaluate_simulated(guide, model_o2a, 16, seed=777, with_bound=False, progress=False)
    hit = ((ds.truth_f760 >= ds.q05_f760) & (ds.truth_f760 <= ds.q95_f760)).mean()
    assert 0.827 <= float(hit) <= 0.973
    rmse = float(np.sqrt(((ds.mean_f760 - ds.truth_f760) ** 2).mean()))
    assert rmse < 0.3


def test_cli_retrieve_and_errors(tmp_path, scene, capsys):
    path = write_dataset(scene, tmp_path / "scene.nc")
    out = tmp_path / "res.nc"
    assert main(["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--out", str(out),
                 "--quiet"]) == 0
    ds = xr.open_dataset(out)
    assert ds.attrs["input"] == "scene.nc" and "f760_mean" in ds
    assert main(["retrieve", str(path), "--model", str(tmp_path / "nomodel"), "--out",
                 str(tmp_path / "x.nc")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--size", "16x16", "--out-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "RMSE" in text and "90 % interval" in text
    for f in ("demo_scene.nc", "demo_result.nc", "demo_f760.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_out_of_distribution_geometry_is_flagged(guide, retriever, model_o2a, result):
    """A sun zenith of 72 deg lies outside the training range (15-60 deg): every usable
    pixel is flagged out_of_distribution; the nominal scene (30 deg) has none."""
    far = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=4, sza_deg=72.0, model=model_o2a)
    res = retrieve(far, guide, RetrieveOptions(quality=False), retriever=retriever,
                   progress=False)
    ood = QUALITY_FLAGS["out_of_distribution"]
    assert np.all(res["quality_flag"].values & ood)
    assert not np.any(result["quality_flag"].values & ood)


def test_spectral_artefact_is_flagged_poor_fit(scene, guide, retriever, result):
    """Pixels given a spectral artefact the model cannot produce (a spike of 15 noise sd
    in 3 bands, as a hot detector element or a stray-light glint) rise in fit chi-square by
    close to the artefact's own weight and are flagged ``poor_fit``; pixels away from them
    keep their chi-square."""
    from bayesfluo.patches import noise_coefficients
    a, b = noise_coefficients(scene)
    art = scene.copy(deep=True)
    rad = art["radiance"].values
    hit = [(3, 4), (10, 7), (15, 1)]
    bands = [20, 21, 40]
    for y, x in hit:
        sd = np.sqrt(a * rad[y, x, bands] + b)
        rad[y, x, bands] += 15.0 * sd
    res = retrieve(art, guide, RetrieveOptions(), retriever=retriever, progress=False)
    poor = QUALITY_FLAGS["poor_fit"]
    nb = scene.sizes["band"]
    added = 3 * 15.0 ** 2 / nb      # the artefact's reduced chi-square if left unfitted
    for y, x in hit:
        assert res["quality_flag"].values[y, x] & poor
        rise = float(res.fit_chi2[y, x] - result.fit_chi2[y, x])
        assert 0.5 * added < rise < 1.5 * added, (rise, added)
    far = np.ones((20, 13), bool)
    for y, x in hit:   # pixels of other patches than the artefacts'
        far[(y // 8) * 8:(y // 8) * 8 + 8, (x // 8) * 8:(x // 8) * 8 + 8] = False
    np.testing.assert_allclose(res.fit_chi2.values[far], result.fit_chi2.values[far],
                               rtol=1e-5)


def test_nadir_scene_retrieves(scene, guide, retriever, result):
    """A scene viewed exactly at nadir (vza 0 everywhere) gives finite posteriors close to
    those of the same radiance with its real, slightly oblique, view angles."""
    nadir = scene.copy()
    nadir["vza"] = xr.zeros_like(scene["vza"])
    res = retrieve(nadir, guide, RetrieveOptions(quality=False), retriever=retriever,
                   progress=False)
    ok = result["input_flag"].values == 0
    assert np.all(np.isfinite(res.f760_mean.values[ok]))
    assert np.all(np.isfinite(res.f760_sd.values[ok]))
    assert float(np.median(np.abs(res.f760_mean - result.f760_mean).values[ok])) < 0.5
