"""Top-of-canopy (FloX-like) configuration of the model: the likelihood is the measured
irradiance times the reflectance plus SIF with the instrument's and the irradiance's
noise, the mode and its Laplace width recover F760 of a simulated series, bad input is
named, and ``bayesfluo nuts`` runs on a FloX scene end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

from bayesfluo.model import ModelConfig, SifModel
from bayesfluo.physics.surface import SifParams, bspline_basis, sif_spectrum
from bayesfluo.scene.prior import simulate_patch

TOC = ModelConfig(free=())


@pytest.fixture(scope="module")
def toc_model(model_flox):
    return SifModel(model_flox, TOC, top_of_canopy=True)


@pytest.fixture(scope="module")
def series(toc_model):
    """16 time steps of a FloX-like afternoon, all vegetated, from the prior."""
    assert toc_model.has_red
    return simulate_patch(toc_model, jax.random.PRNGKey(4), n_pixels=16, bare_fraction=0.0,
                          height_m=5.0, snr=None, shot_noise_only=False)


def test_likelihood_is_irradiance_times_reflectance_plus_sif(toc_model, series):
    data, truth = series
    fm = toc_model.fm
    cond = {k: truth[k] for k in ("reflectance_z", "sif_far_red_raw", "sif_red_raw")}
    tr = handlers.trace(handlers.condition(toc_model.program, cond)).get_trace(data)
    assert not {n for n in tr if n.endswith("_z") and n != "reflectance_z"}  # no shared
    fn = tr["radiance"]["fn"]
    while not hasattr(fn, "loc"):  # masked, independent -> the normal
        fn = fn.base_dist
    # independent: R at the band centres from the B-spline basis (float64), SIF peaks
    wl = np.asarray(fm.band_centre_nm, np.float64)
    basis = bspline_basis(wl, np.asarray(fm.knots_nm, np.float64))
    refl = np.asarray(truth["reflectance_coeffs"], np.float64) @ basis.T
    sif = np.asarray(sif_spectrum(jnp.asarray(wl), SifParams(
        jnp.asarray(truth["sif_red"])[:, None], jnp.asarray(truth["sif_far_red"])[:, None])))
    e = np.asarray(data.irradiance, np.float64) / np.pi
    want = e * refl + sif
    np.testing.assert_allclose(np.asarray(fn.loc), want, rtol=2e-5, atol=1e-4)
    a, b = float(data.noise_a), float(data.noise_b)
    var = a * want + b + refl**2 * (a * e + b)
    np.testing.assert_allclose(np.asarray(fn.scale), np.sqrt(var), rtol=2e-5)


def test_map_and_laplace_width_recover_f760(toc_model, series):
    """The posterior mode of every time step's F760 lies within 4.5 Laplace standard
    deviations of the truth (Gaussian false-failure rate 7e-6 per step, 1e-4 for 16) and
    the Laplace width is that of the Cramer-Rao bound (the prior adds a little)."""
    from bayesfluo.diagnostics.fisher import toc_cramer_rao_f760
    from bayesfluo.inference.nuts import NutsConfig, _compiled
    from bayesfluo.model import SIF_KNEE
    from bayesfluo.model.laplace import dense_hessian

    data, truth = series
    c = _compiled(toc_model, data)
    xl, xs = c.start(data)
    m = c.laplace(xl, xs, data, jnp.int32(NutsConfig().newton_steps))
    assert float(m.decrement) < 0.1  # NUTS's convergence of the mode search
    assert m.expansion is None and m.shared.shape == (0,)  # no shared latents
    cov = np.linalg.inv(dense_hessian(m.blocks))
    d, k = c.layout.n_local, toc_model.fm.n_basis
    far_idx = np.arange(16) * d + k  # positions of the far-red amplitudes
    v = np.asarray(m.local[:, k], np.float64)  # unconstrained coordinate
    np.testing.assert_array_equal(v, np.asarray(c.layout.unpack(m.local, m.shared)[
        "sif_far_red_raw"]))
    raw = SIF_KNEE * np.logaddexp(0.0, v / SIF_KNEE)
    f760_per_raw = truth["f760"] / truth["sif_far_red_raw"]  # scale(NDVI) at 760 nm
    f_mode = f760_per_raw * raw
    dfdv = f760_per_raw / (1.0 + np.exp(-v / SIF_KNEE))
    sd = dfdv * np.sqrt(cov[far_idx, far_idx])
    z = (f_mode - truth["f760"]) / sd
    assert np.all(np.abs(z) < 4.5), z
    crb = toc_cramer_rao_f760(toc_model, data, truth)["known"]
    big = truth["f760"] > 5 * crb  # away from the half-normal's boundary
    assert big.sum() >= 8
    ratio = sd[big] / crb[big]
    assert np.all((ratio > 0.6) & (ratio < 1.02)), ratio


def test_bad_input_is_named(toc_model, series):
    data, _ = series
    with pytest.raises(ValueError, match="free=()"):
        SifModel(toc_model.fm, ModelConfig(), top_of_canopy=True)
    bad = data.replace(irradiance=data.irradiance[:, :-3])
    with pytest.raises(ValueError, match="irradiance has shape"):
        handlers.trace(toc_model.program).get_trace(bad)
    neg = np.array(data.irradiance)
    neg[3, 10] = -1.0
    with pytest.raises(ValueError, match="1 unmasked"):
        handlers.trace(toc_model.program).get_trace(data.replace(irradiance=neg))
    # masked, it is accepted and does not count
    mask = np.ones(16, np.float32)
    mask[3] = 0.0
    tr = handlers.trace(handlers.seed(toc_model.program, 0)).get_trace(data.replace(
        irradiance=neg, mask=jnp.asarray(mask)))
    assert np.isfinite(float(tr["radiance"]["fn"].log_prob(data.radiance).sum()))


@pytest.fixture(scope="module")
def flox_scene(model_flox):
    from bayesfluo.scene.simulate import simulate_scene

    return simulate_scene("flox", (1, 6), seed=5, model=model_flox)


def test_patch_of_a_tower_scene(model_flox, flox_scene):
    from bayesfluo.scene.grid import patch_of_pixels

    scene = flox_scene.copy(deep=True)
    scene["irradiance"][2, 5] = np.nan
    d = patch_of_pixels(scene, np.arange(6), np.zeros(6, int))
    assert d.irradiance.shape == (6, model_flox.n_bands)
    assert np.asarray(d.mask).tolist() == [1, 1, 0, 1, 1, 1]
    np.testing.assert_array_equal(np.asarray(d.radiance[4]),
                                  scene["radiance"].values[4].astype(np.float32))
    with pytest.raises(ValueError, match="one column"):
        patch_of_pixels(scene, np.arange(2), np.array([0, 1]))
    with pytest.raises(ValueError, match="irradiance"):
        patch_of_pixels(scene.drop_vars("irradiance"), np.arange(2), np.zeros(2, int))


def test_nuts_cli_names_bad_flox_input(tmp_path, flox_scene, capsys):
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset

    path = write_dataset(flox_scene.drop_vars("irradiance"), tmp_path / "noirr.nc")
    rc = main(["nuts", str(path), "--pixels", "0:2", "--out", str(tmp_path / "x.nc")])
    assert rc == 2 and "irradiance" in capsys.readouterr().err
    path = write_dataset(flox_scene, tmp_path / "flox.nc")
    rc = main(["nuts", str(path), "--pixels", "0:9", "--out", str(tmp_path / "x.nc")])
    assert rc == 2 and "outside" in capsys.readouterr().err


@pytest.mark.slow
def test_nuts_cli_on_a_flox_scene(tmp_path, model_flox, flox_scene):
    """End to end, a few minutes on a loaded 2-core machine (sampler compilation)."""
    import xarray as xr

    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset

    scene = flox_scene
    path = write_dataset(scene, tmp_path / "flox.nc")
    out = tmp_path / "ref.nc"
    rc = main(["nuts", str(path), "--pixels", "1:5", "--patch-size", "2", "--warmup",
               "150", "--samples", "100", "--chains", "2", "--predictive-draws", "4",
               "--out", str(out)])
    assert rc == 0 and out.exists()
    dt = xr.open_datatree(out, engine="h5netcdf")
    post = dt["posterior"]
    assert dict(post["f760"].sizes) == {"chain": 2, "draw": 100, "pixel": 4}
    assert not [v for v in post.data_vars if v in ("surface_pressure", "aot550",
                                                   "spectral_shift")]
    assert dt["constant_data"]["y"].values.tolist() == [1, 2, 3, 4]
    assert dt["posterior_predictive"]["radiance"].sizes["band"] == model_flox.n_bands
    # the scene's own canopy (simulated on the fine grid, so the band-centre model is
    # only close) lies within the posterior's range
    f = post["f760"].values.reshape(-1, 4)
    truth = scene["true_f760"].values[1:5]
    lo, hi = np.quantile(f, [0.0005, 0.9995], axis=0)
    assert np.all((truth > lo - 0.3) & (truth < hi + 0.3)), (truth, lo, hi)
