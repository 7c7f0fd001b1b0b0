import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import wofz

from bayesfluo.physics.hitran import load_o2_lines, parse_hitran
from bayesfluo.physics.voigt import faddeeva, voigt_profile

# Records copied from the shipped file; the expected numbers were read off by hand.
REC_96 = " 7112847.194105 5.006E-29 2.679E-08.0309.0351 2790.84180.70-.008043  6  2         P29P29  d00524 5 5"  # noqa: E501
REC_04 = (" 71 6256.380089 1.327E-30 2.492E-06.04800.047 1814.19630.710.000000       a      0"
          "       X      1                O 13P 12     d00400013 1 3 0 0 0    23.0   25.0")


def test_hitran96_record_by_hand():
    assert len(REC_96) == 100
    ll = parse_hitran(REC_96)
    assert ll.molecule[0] == 7 and ll.isotopologue[0] == 1
    assert ll.wavenumber[0] == 12847.194105
    assert ll.intensity[0] == 5.006e-29
    assert ll.gamma_air[0] == 0.0309 and ll.gamma_self[0] == 0.0351
    assert ll.elower[0] == 2790.8418 and ll.n_air[0] == 0.70
    assert ll.delta_air[0] == -0.008043
    assert ll.layout[0] == 100


def test_hitran2004_record_by_hand():
    assert len(REC_04) == 160
    ll = parse_hitran(REC_04)
    assert ll.wavenumber[0] == 6256.380089 and ll.intensity[0] == 1.327e-30
    assert ll.einstein_a[0] == 2.492e-06
    assert ll.gamma_air[0] == 0.048 and ll.gamma_self[0] == 0.047
    assert ll.elower[0] == 1814.1963 and ll.n_air[0] == 0.71 and ll.delta_air[0] == 0.0
    assert ll.layout[0] == 160


def test_shipped_o2_list():
    ll = load_o2_lines()
    assert ll.wavenumber.size == 1314
    assert np.sum(ll.layout == 100) == 430 and np.sum(ll.layout == 160) == 884
    a_band = ll.in_range(12800, 13200)
    assert a_band.intensity.max() == pytest.approx(8.833e-24)  # R7Q8, 13142.58 cm-1
    assert a_band.wavenumber[np.argmax(a_band.intensity)] == pytest.approx(13142.58382)
    assert ll.in_range(14300, 14600).wavenumber.size > 100  # the B band is there


def test_bad_records_are_named():
    with pytest.raises(ValueError, match="line 2: 99 characters"):
        parse_hitran(REC_96 + "\n" + REC_96[:99])
    bad = REC_96[:20] + "x.xxxE-29" + REC_96[29:]
    with pytest.raises(ValueError, match="line 1: field intensity"):
        parse_hitran(bad)
    with pytest.raises(ValueError, match="no HITRAN records"):
        parse_hitran("\n\n")


def test_faddeeva_against_scipy():
    x = np.linspace(-40, 40, 1601)
    y = np.array([1e-4, 1e-2, 0.3, 1.0, 5.0, 30.0])
    z = (x[:, None] + 1j * y[None, :]).ravel()
    ref = wofz(z)
    with jax.enable_x64(True):
        w64 = np.asarray(faddeeva(jnp.asarray(z)))
    assert np.max(np.abs(w64 - ref) / np.abs(ref)) < 1e-7
    w32 = np.asarray(faddeeva(jnp.asarray(z.astype(np.complex64))))
    assert np.max(np.abs(w32 - ref) / np.abs(ref)) < 2e-6


def test_voigt_limits_and_area():
    nu = np.linspace(-60, 60, 240001)
    with jax.enable_x64(True):
        # Doppler limit: Gaussian of HWHM alpha
        v = np.asarray(voigt_profile(jnp.asarray(nu), 0.5, 1e-8))
        g = np.sqrt(np.log(2) / np.pi) / 0.5 * np.exp(-np.log(2) * (nu / 0.5) ** 2)
        np.testing.assert_allclose(v, g, atol=1e-6 * g.max())
        # Lorentz limit
        v = np.asarray(voigt_profile(jnp.asarray(nu), 1e-4, 0.5))
        lor = 0.5 / np.pi / (nu**2 + 0.25)
        np.testing.assert_allclose(v, lor, rtol=1e-4, atol=1e-7)
        # unit area (the Lorentz wings beyond +-60 carry 2 gamma / (pi 60))
        v = np.asarray(voigt_profile(jnp.asarray(nu), 0.3, 0.1))
        area = np.trapezoid(v, nu)
        assert area == pytest.approx(1 - 2 * 0.1 / (np.pi * 60), rel=1e-4)
