"""A scene's own band grid: forward models on it, band masks, windows, resampling."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.instruments import get_instrument
from bayesfluo.model import SifModel
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import (
    Geometry,
    band_operator,
    bands_on_fine_grid,
    build_forward_model,
)
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.scene.bands import (
    model_on_scene_grid,
    resampling_matrix,
    same_grid,
    scene_bands,
)
from bayesfluo.scene.simulate import simulate_scene

INST = "hyplant-fluo-o2a"


@pytest.fixture(scope="module")
def fm():
    return build_forward_model(INST)


def _operator(fm, shift=0.0):
    atm = AtmosphereParams(jnp.float32(1000.0), jnp.float32(0.12), jnp.float32(1.3),
                           jnp.float32(1.5))
    geom = Geometry(jnp.float32(30.0), jnp.float32(5.0), jnp.float32(40.0),
                    jnp.float32(100.0), jnp.float32(1100.0), jnp.float32(1.0))
    return band_operator(fm, atm, geom, SensorParams(jnp.float32(shift), jnp.float32(1.0)))


def test_own_grid_equal_to_nominal_is_the_nominal_model(fm):
    inst = get_instrument(INST)
    own = build_forward_model(INST, band_centre_nm=inst.band_centres(),
                              band_fwhm_nm=inst.band_fwhm())
    a, b = _operator(fm), _operator(own)
    np.testing.assert_allclose(np.asarray(b.path), np.asarray(a.path), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(b.reflected), np.asarray(a.reflected), rtol=1e-6,
                               atol=1e-6)
    np.testing.assert_array_equal(np.asarray(own.knots_nm), np.asarray(fm.knots_nm))


def test_shifted_grid_is_the_nominal_grid_under_a_sensor_shift(fm):
    """Band centres moved by +d nm see what the nominal bands see with the sensor shifted
    by +d nm: two different code paths (the grid vs the sensor latent)."""
    inst = get_instrument(INST)
    d = 0.04
    c = inst.band_centres() + d
    keep = bands_on_fine_grid(INST, c, inst.fwhm_nm)
    assert keep.sum() >= c.size - 2          # at most the band at the end is lost
    own = build_forward_model(INST, band_centre_nm=c[keep], band_fwhm_nm=inst.fwhm_nm)
    shifted = _operator(fm, shift=d)
    mine = _operator(own)
    np.testing.assert_allclose(np.asarray(mine.path), np.asarray(shifted.path)[keep],
                               rtol=2e-3, atol=1e-4)
    np.testing.assert_allclose(np.asarray(mine.reflected)[..., 0, :],
                               np.asarray(shifted.reflected)[..., 0, keep], rtol=2e-3,
                               atol=1e-4)


def test_grid_outside_the_window_is_refused():
    inst = get_instrument(INST)
    with pytest.raises(ValueError, match="leave the"):
        build_forward_model(INST, band_centre_nm=inst.band_centres() + 2.0)


def test_resampling_reproduces_linear_spectra():
    rng = np.random.default_rng(0)
    x = np.sort(rng.uniform(750, 780, 60))
    y = np.linspace(750.5, 779.5, 200)
    w = resampling_matrix(x, y)
    np.testing.assert_allclose(w.sum(1), 1.0)
    np.testing.assert_allclose(w @ (3.0 + 0.2 * x), 3.0 + 0.2 * y, rtol=1e-12)


@pytest.mark.parametrize("shift, fwhm, step, lin_min, ratio_max", [
    (0.05, 1.0, None, 1.5, 0.7),    # half a band: measured 1.77 linear, 0.53 ratio
    # 10 % wider bands (1.35, 0.39) and every 0.17 nm (2.92, 0.82): 28 and 22 s, slow
    pytest.param(0.0, 1.1, None, 1.1, 0.55, marks=pytest.mark.slow),
    pytest.param(0.0, 1.0, 0.17, 2.5, 1.1, marks=pytest.mark.slow),
])
def test_ratio_resampling_keeps_the_o2_lines(shift, fwhm, step, lin_min, ratio_max):
    """The guide reads a scene on another grid resampled through the reference spectrum
    (:func:`bayesfluo.inference.guide.ratio_resample`): against the same scene simulated
    on the nominal grid (noise free) its error is a fraction of linear interpolation's,
    in noise sd (RMS over bands and pixels; both bounds checked, the linear one so the
    case is a hard one)."""
    from bayesfluo.inference.guide import expand_reference, ratio_resample, reference_expansion
    from bayesfluo.physics.sensor import noise_variance

    inst = get_instrument(INST)
    model = SifModel.for_instrument(INST)
    nominal = simulate_scene(INST, (16, 16), seed=5)
    l0 = nominal.true_radiance.values.reshape(256, -1)
    sd = np.sqrt(noise_variance(l0, nominal.attrs["noise_a"], nominal.attrs["noise_b"]))
    c = inst.band_centres()
    if step:
        c = np.arange(c[0], c[-1] + 1e-9, step)
    c = c + shift
    keep = bands_on_fine_grid(inst, c, inst.fwhm_nm * fwhm)
    sc = simulate_scene(INST, (16, 16), seed=5, model=build_forward_model(
        inst, band_centre_nm=c[keep], band_fwhm_nm=inst.fwhm_nm * fwhm))
    bands = scene_bands(sc, INST)
    lum = sc.true_radiance.values.reshape(256, -1)[:, bands.index]
    w = resampling_matrix(bands.centre_nm, model.fm.band_centre_nm)
    # each pixel's reference, expanded about the scene's mean geometry (as guide_inputs)
    px = [np.broadcast_to(sc[v].values, (16, 16)).ravel().astype(np.float32)
          for v in ("sza", "vza", "surface_altitude", "sensor_altitude")]
    mid = [float(v.mean()) for v in px]
    ref = expand_reference(reference_expansion(model, *mid), *px)
    ref_s = expand_reference(reference_expansion(model_on_scene_grid(model, bands), *mid),
                             *px)
    rms = lambda x: float(np.sqrt(np.mean(((np.asarray(x) - l0) / sd) ** 2)))  # noqa: E731
    assert rms(lum @ w.T) > lin_min
    assert rms(ratio_resample(lum, ref, ref_s, w)) < ratio_max


@pytest.fixture(scope="module")
def scene():
    return simulate_scene(INST, (8, 8), seed=3)


def test_scene_bands_mask_nan_and_window(scene):
    model = SifModel.for_instrument(INST)
    b = scene_bands(scene, INST)
    assert same_grid(b, model, scene.sizes["band"])
    sc = scene.copy()
    mask = np.ones(sc.sizes["band"], np.int8)
    mask[[10, 100]] = 0
    sc["band_mask"] = ("band", mask)
    rad = sc["radiance"].values.copy()
    rad[..., 50] = np.nan
    sc["radiance"] = (sc["radiance"].dims, rad)
    b2 = scene_bands(sc, INST)
    assert b2.index.size == scene.sizes["band"] - 3
    assert not set(b2.index) & {10, 50, 100}
    assert not same_grid(b2, model, sc.sizes["band"])
    m2 = model_on_scene_grid(model, b2)
    assert m2.fm.n_bands == b2.index.size
    assert model_on_scene_grid(model, b2) is m2            # cached per grid


def test_scene_not_covering_the_window_is_refused(scene):
    cut = scene.isel(band=slice(0, 150))
    with pytest.raises(ValueError, match="do not cover"):
        scene_bands(cut, INST)


def test_narrower_scene_names_the_models_that_fit_it(scene):
    """A scene that does not cover a model's window is refused naming the instruments
    (hence shipped models) whose window it does cover, or saying there is none."""
    desis = simulate_scene("desis", (2, 2), seed=4)
    with pytest.raises(ValueError, match=r"cover the window of desis.*--model"):
        scene_bands(desis, INST)
    cut = scene.sel(band=(scene["wavelength"] > 755) & (scene["wavelength"] < 775))
    with pytest.raises(ValueError, match="no instrument bayesfluo knows"):
        scene_bands(cut, INST)


def test_fwhm_and_response_shape_of_the_file_reach_the_model(scene):
    """A scene on the nominal centres but with its own FWHM, or a flat-topped response
    (``response_exponent``), is not the nominal grid: its model is built on them (before,
    a file's FWHM on the nominal centres was ignored)."""
    model = SifModel.for_instrument(INST)
    wide = scene.copy()
    wide["fwhm"] = ("band", scene["fwhm"].values * 1.1)
    b = scene_bands(wide, INST)
    assert not same_grid(b, model, wide.sizes["band"])
    m = model_on_scene_grid(model, b)
    # (the two end bands, wider now, no longer fit the fine grid)
    np.testing.assert_allclose(m.fm.band_fwhm_nm, scene["fwhm"].values[b.index] * 1.1,
                               rtol=1e-6)
    flat = scene.copy()
    flat.attrs["response_exponent"] = 4.0
    b4 = scene_bands(flat, INST)
    assert b4.response_exponent == 4.0 and not same_grid(b4, model, flat.sizes["band"])
    assert model_on_scene_grid(model, b4).fm.response_exponent == 4.0
    flat.attrs["response_exponent"] = 1.0
    with pytest.raises(ValueError, match="response_exponent attribute must lie in"):
        scene_bands(flat, INST)


def test_a_flat_topped_response_changes_o2_bands_by_many_noise_sd(fm):
    """Same FWHM, other shape: in the O2-A band the band radiance differs by far more than
    the noise (the shape matters in the at-sensor model), outside it (solar lines only)
    by far less; a scene simulated with the shape says so in its attributes."""
    fm4 = build_forward_model(INST, response_exponent=4.0)
    op2, op4 = _operator(fm), _operator(fm4)
    e2, e4 = np.asarray(op2.reflected[0]), np.asarray(op4.reflected[0])
    c = np.asarray(fm.band_centre_nm)
    noise_sd = np.sqrt(get_instrument(INST).noise_coefficients()[0] * e2 * 0.3)
    d = np.abs(e4 - e2) * 0.3 / noise_sd  # a 0.3-reflectance surface
    assert d[(c > 759.0) & (c < 768.0)].max() > 5
    assert d[c < 757.0].max() < 0.3 * d[(c > 759.0) & (c < 768.0)].max()
    sc = simulate_scene(INST, (2, 2), seed=1, model=fm4)
    assert sc.attrs["response_exponent"] == 4.0
