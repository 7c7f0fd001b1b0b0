import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.physics import constants as K
from bayesfluo.physics.atmosphere import (
    AtmosphereParams,
    rayleigh_optical_depth,
    transfer_functions,
)
from bayesfluo.physics.hitran import load_o2_lines
from bayesfluo.physics.o2 import PRESSURE_LEVELS_HPA, line_cross_section, o2_table, tau_above
from bayesfluo.physics.solar import solar_irradiance
from bayesfluo.physics.standard_atmosphere import standard_pressure_hpa, us1976

from .conftest import gaussian_convolve

GRID = np.arange(755.0, 775.0, 0.0025)


@pytest.fixture(scope="module")
def table():
    return o2_table(GRID)


def test_us1976_reference_values():
    t, p = us1976(np.array([0.0, 1000.0, 11000.0, 20000.0]))
    # COESA 1976 table values at geometric altitude (K, Pa)
    np.testing.assert_allclose(t, [288.15, 281.651, 216.774, 216.65], atol=0.01)
    np.testing.assert_allclose(p, [101325.0, 89876.3, 22699.9, 5529.3], rtol=2e-4)
    assert standard_pressure_hpa(600.0) == pytest.approx(943.2, abs=0.3)  # COESA: 94 322 Pa


def test_at_least_20_layers():
    assert len(PRESSURE_LEVELS_HPA) - 1 >= 20


def test_band_integrated_cross_section_equals_line_strength_sum():
    """Integral of sigma over the A band = sum of line strengths (unit-area profiles)."""
    lines = load_o2_lines().in_range(12950, 13200)
    nu = np.arange(12900.0, 13250.0, 0.002)
    sigma = line_cross_section(nu, lines, K.P_REF_HPA, K.T_REF_HITRAN)
    ref = lines.intensity.sum()  # at 296 K the strengths are as tabulated
    assert np.trapezoid(sigma, nu) == pytest.approx(ref, rel=0.01)


def test_o2_column_amount(table):
    """Vertical column of O2 above 1013.25 hPa is 4.5e24 molecules cm-2."""
    per_hpa = K.O2_VMR * 100.0 / (K.MEAN_AIR_MASS_AMU * K.AMU * K.GRAVITY) * 1e-4
    assert per_hpa * 1013.25 == pytest.approx(4.5e24, rel=0.02)


def test_o2a_band_bottom_position_and_depth(table):
    sza = 30.0
    tau = np.asarray(tau_above(table.pressure_hpa, jnp.asarray(table.tau), 1013.25))
    e0 = solar_irradiance(GRID)
    e_ground = e0 * np.exp(-tau / np.cos(np.radians(sza)))
    centres = np.arange(756.0, 774.0, 0.02)
    ratio = gaussian_convolve(GRID, e_ground, centres, 0.3) / gaussian_convolve(
        GRID, e0, centres, 0.3)
    i = np.argmin(ratio)
    assert 760.3 <= centres[i] <= 760.9, centres[i]
    # relative depth of a 0.3 nm band at the band bottom, one air mass of 1.15
    assert 0.6 < 1 - ratio[i] < 0.95, ratio[i]
    # the R-branch lines begin near 759.5 nm: continuum is nearly transparent at 756 nm
    assert ratio[0] > 0.99


def test_transmittance_monotone_in_airmass_and_pressure(table):
    tt = jnp.asarray(table.tau)
    t_prev = None
    for p in (800.0, 900.0, 1013.25, 1050.0):
        tau = tau_above(table.pressure_hpa, tt, p)
        for sza in (0.0, 30.0, 60.0):
            t = np.exp(-np.asarray(tau) / np.cos(np.radians(sza)))
            assert np.all((t >= 0) & (t <= 1))
        t = np.exp(-np.asarray(tau))
        if t_prev is not None:
            assert np.all(t <= t_prev + 1e-7) and np.mean(t < t_prev - 1e-4) > 0.1
        t_prev = t
    for s1, s2 in ((0.0, 30.0), (30.0, 60.0)):
        tau = np.asarray(tau_above(table.pressure_hpa, tt, 1013.25))
        assert np.all(np.exp(-tau / np.cos(np.radians(s2)))
                      <= np.exp(-tau / np.cos(np.radians(s1))) + 1e-7)


def test_tau_above_is_exact_at_levels_and_linear_between(table):
    tt = jnp.asarray(table.tau)
    for i, p in enumerate(table.pressure_hpa):
        np.testing.assert_allclose(tau_above(table.pressure_hpa, tt, p), table.tau[i],
                                   rtol=1e-6)
    mid = 0.5 * (table.tau[-3] + table.tau[-2])
    np.testing.assert_allclose(tau_above(table.pressure_hpa, tt,
                                         0.5 * (table.pressure_hpa[-3]
                                                + table.pressure_hpa[-2])), mid, rtol=1e-5)


def test_upward_path_of_airborne_sensor_absorbs_far_less(table):
    tt = jnp.asarray(table.tau)
    p_s = 1013.25
    p_600 = p_s * standard_pressure_hpa(600.0) / standard_pressure_hpa(0.0)
    col = np.asarray(tau_above(table.pressure_hpa, tt, p_s))
    up = col - np.asarray(tau_above(table.pressure_hpa, tt, p_600))
    e0 = solar_irradiance(GRID)
    absorbed_col = np.sum(e0 * (1 - np.exp(-col)))
    absorbed_up = np.sum(e0 * (1 - np.exp(-up)))
    # saturated line cores absorb in both; band-integrated the 600 m path takes < half
    assert absorbed_up < 0.45 * absorbed_col
    # spectrally integrated optical depth is proportional to the O2 amount: 600 m of
    # air above sea level hold 1 - 943.2 / 1013.25 = 6.9 % of the column
    assert np.sum(up) / np.sum(col) == pytest.approx(1 - 943.22 / 1013.25, rel=0.03)


def test_rayleigh_against_hansen_travis():
    lam = np.array([550.0, 687.0, 760.0])
    um = lam / 1e3
    ht = 0.008569 * um**-4 * (1 + 0.0113 * um**-2 + 0.00013 * um**-4)
    np.testing.assert_allclose(rayleigh_optical_depth(lam), ht, rtol=0.01)
    assert rayleigh_optical_depth(550.0) == pytest.approx(0.097, abs=0.002)


def test_transfer_functions_bounds(table):
    tt = jnp.asarray(table.tau)
    tau_col = tau_above(table.pressure_hpa, tt, 1000.0)
    tau_up = tau_col - tau_above(table.pressure_hpa, tt, 930.0)
    for aot in (0.0, 0.1, 0.8):
        atm = AtmosphereParams(1000.0, aot, 1.3, 1.5)
        tf = transfer_functions(jnp.asarray(GRID), tau_col, tau_up, atm, 40.0, 10.0, 60.0,
                                0.07, 0.3)
        for name, v in tf._asdict().items():
            v = np.asarray(v)
            assert np.all(np.isfinite(v)) and np.all(v >= 0) and np.all(v <= 1), name
        assert np.all(np.asarray(tf.t_ss + tf.t_sd) <= 1 + 1e-6)
        assert np.all(np.asarray(tf.t_oo + tf.t_do) <= 1 + 1e-6)
    # diffuse light travels longer through O2: deeper relative absorption than direct
    atm = AtmosphereParams(1000.0, 0.3, 1.3, 1.8)
    tf = transfer_functions(jnp.asarray(GRID), tau_col, tau_up, atm, 40.0, 10.0, 60.0, 0.07,
                            0.3)
    i_line = int(np.argmin(np.abs(np.asarray(tau_col) - 0.5)))  # a moderate line wing
    i_cont = 0
    assert (tf.t_sd[i_line] / tf.t_sd[i_cont]) < (tf.t_ss[i_line] / tf.t_ss[i_cont])
