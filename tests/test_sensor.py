import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.physics.forward import response, windows
from bayesfluo.physics.sensor import (
    FWHM_TO_SIGMA,
    SensorParams,
    add_noise,
    band_integrate,
    noise_variance,
)
from bayesfluo.physics.sensor import windows as raw_windows


def test_sliced_windows_equal_gathered_windows():
    x = jnp.arange(1000.0)
    start = np.arange(7, 7 + 13 * 60, 13)[:60]
    taps = 50
    sliced = raw_windows(x, jnp.asarray(start), taps, int(start[0]), 13)
    gathered = raw_windows(x, jnp.asarray(start), taps, 0, 0)
    np.testing.assert_array_equal(sliced, gathered)
    # past the end of the grid: padded with zeros, equal where the gather is defined
    start = np.arange(0, 990, 10)[:95]
    sliced = raw_windows(x, jnp.asarray(start), 30, 0, 10)
    assert sliced.shape == (95, 30)
    np.testing.assert_array_equal(sliced[:90], x[start[:90, None] + np.arange(30)])


@pytest.mark.parametrize("shift, scale", [(0.0, 1.0), (0.07, 1.0), (-0.1, 1.25)])
def test_response_normalised_centred_and_wide_as_asked(model_o2a, shift, scale):
    m = model_o2a
    w = np.asarray(response(m, SensorParams(shift, scale)), dtype=np.float64)
    x = np.asarray(windows(m, m.fine_nm), dtype=np.float64)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, rtol=1e-5)
    centre = (w * x).sum(axis=1)
    np.testing.assert_allclose(centre, np.asarray(m.band_centre_nm) + shift, atol=2e-4)
    sigma = np.sqrt((w * (x - centre[:, None]) ** 2).sum(axis=1))
    np.testing.assert_allclose(sigma, 0.25 * scale * FWHM_TO_SIGMA, rtol=5e-3)


def test_flat_spectrum_is_returned_unchanged(model_full):
    m = model_full
    w = response(m, SensorParams(0.05, 1.2))
    out = band_integrate(w, windows(m, jnp.full(m.fine_nm.shape, 42.0)))
    np.testing.assert_allclose(out, 42.0, rtol=1e-5)
    # a linear spectrum is returned at the (shifted) band centre
    lin = band_integrate(w, windows(m, m.fine_nm - 700.0))
    np.testing.assert_allclose(lin, m.band_centre_nm + 0.05 - 700.0, atol=2e-3)


def test_noise_variance_matches_model():
    """Sample variance of 40 000 draws vs a*L + b. The relative sd of a sample variance is
    sqrt(2/n) = 0.71 %; the 4.9-sigma bound (3.5 %) gives a false-failure rate below
    1e-6 per level (seeded, so the outcome is fixed anyway)."""
    a, b = 0.004, 0.05
    levels = jnp.array([5.0, 50.0, 150.0])
    n = 40000
    draws = add_noise(jax.random.PRNGKey(7), jnp.broadcast_to(levels, (n, 3)), a, b)
    var = np.var(np.asarray(draws, dtype=np.float64), axis=0, ddof=1)
    expected = np.asarray(noise_variance(levels, a, b))
    np.testing.assert_allclose(var, expected, rtol=4.9 * np.sqrt(2 / n))
    mean = np.mean(np.asarray(draws, dtype=np.float64), axis=0)
    assert np.all(np.abs(mean - np.asarray(levels)) < 4.9 * np.sqrt(expected / n))


def test_instrument_noise_gives_requested_snr():
    from bayesfluo.instruments import get_instrument
    inst = get_instrument("hyplant-fluo")
    a, b = inst.noise_coefficients()
    snr = inst.reference_radiance / np.sqrt(a * inst.reference_radiance + b)
    assert snr == pytest.approx(inst.snr)
    a2, b2 = inst.noise_coefficients(snr=300)
    assert inst.reference_radiance / np.sqrt(a2 * inst.reference_radiance + b2) == \
        pytest.approx(300)


@pytest.mark.parametrize("p", [2.0, 3.0, 6.0])
def test_generalised_gaussian_response_keeps_its_fwhm(p):
    """exp(-ln2 |2x/FWHM|^p): half maximum at +-FWHM/2 for every p, the Gaussian at p=2,
    flatter top and shorter tails as p grows; exponents outside [2, 8] are refused."""
    from bayesfluo.physics.sensor import check_response_exponent
    from bayesfluo.physics.sensor import response as raw_response
    x = jnp.asarray(np.linspace(-1.0, 1.0, 4001)[None, :])
    w = np.asarray(raw_response(x, jnp.asarray([0.0]), jnp.asarray([0.4]),
                                SensorParams(0.0, 1.0), p), np.float64)[0]
    w = w / w.max()
    xs = np.asarray(x[0])
    above = xs[w >= 0.5]
    assert above.min() == pytest.approx(-0.2, abs=1e-3)
    assert above.max() == pytest.approx(0.2, abs=1e-3)
    gauss = np.exp(-0.5 * (xs / (0.4 * FWHM_TO_SIGMA)) ** 2)
    if p == 2.0:
        np.testing.assert_allclose(w, gauss, atol=1e-6)
    else:  # less weight beyond 1.5 FWHM/2 than the Gaussian, more at the shoulders
        assert w[np.abs(xs) > 0.3].sum() < gauss[np.abs(xs) > 0.3].sum()
        assert w[np.abs(xs - 0.15) < 0.01].mean() > gauss[np.abs(xs - 0.15) < 0.01].mean()
    for bad in (1.0, 9.0, "x"):
        with pytest.raises(ValueError, match="response_exponent must"):
            check_response_exponent(bad)
