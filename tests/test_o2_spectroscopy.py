"""O2 A-band line mixing (relaxation matrix) and collision-induced absorption: checked
against a direct matrix inversion, sum rules, the HITRAN intensities, detailed balance and
an integration of the CIA over the US 1976 atmosphere in altitude."""

import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.physics import constants as K
from bayesfluo.physics.air import air_to_vacuum
from bayesfluo.physics.cia import cia_cross_section, load_cia, parse_cia
from bayesfluo.physics.hitran import load_o2_lines
from bayesfluo.physics.line_mixing import (
    _parse_rmf,
    _populations,
    _relaxation,
    band_profile,
    intensity_scale,
    load_mixing_data,
)
from bayesfluo.physics.o2 import o2_table, tau_above
from bayesfluo.physics.solar import solar_irradiance
from bayesfluo.physics.standard_atmosphere import us1976

from .conftest import gaussian_convolve

GRID = np.arange(752.0, 778.0, 0.0025)


@pytest.fixture(scope="module")
def data():
    return load_mixing_data()


@pytest.fixture(scope="module")
def scale(data):
    return intensity_scale(data, load_o2_lines())


def test_lisa_intensities_agree_with_hitran_line_by_line(data, scale):
    """Two independent data sets: C nu rho d^2 (1 - exp(-c2 nu / T)) of each LISA line
    against the HITRAN 2008 intensity of the same line (one common constant C)."""
    lines = load_o2_lines()
    main = lines.select(lines.isotopologue == 1)
    j = np.array([np.argmin(np.abs(main.wavenumber - s)) for s in data.wavenumber])
    assert np.all(np.abs(main.wavenumber[j] - data.wavenumber) < 0.01)
    nu = data.wavenumber
    lisa = scale * nu * data.population * data.dipole**2 * (1 - np.exp(-K.C2 * nu / 296.0))
    np.testing.assert_allclose(lisa, main.intensity[j], rtol=0.01)
    assert len(data.labels) == 70


@pytest.mark.parametrize("t_k", [220.0, 296.0])
def test_relaxation_matrix_keeps_detailed_balance(data, t_k):
    rho = _populations(data, t_k)
    w = _relaxation(data, t_k, rho)
    s = w * rho[None, :]
    np.testing.assert_allclose(s, s.T, rtol=1e-10, atol=1e-18)
    if t_k == 296.0:  # the file's own matrix, within its rounding
        off = ~np.eye(70, dtype=bool)
        assert np.max(np.abs(w - data.w0)[off]) < 5e-3 * np.max(np.abs(data.w0[off]))
        np.testing.assert_allclose(np.diag(w), np.diag(data.w0), rtol=1e-12)


def _direct(nu, data, p_atm, t_k, scale, mixing):
    """(1/pi) Im d^T (nu - Sigma - i P W)^-1 rho d by solving the linear system at each
    wavenumber: the impact profile without Doppler broadening."""
    rho = _populations(data, t_k)
    w = _relaxation(data, t_k, rho)
    if not mixing:
        w = np.diag(np.diag(w))
    g = np.diag(data.wavenumber + data.shift * p_atm) + 1j * p_atm * w
    eye = np.eye(g.shape[0])
    val = np.array([(data.dipole @ np.linalg.solve(n * eye - g, rho * data.dipole)).imag
                    for n in nu]) / np.pi
    return val * scale * nu * (1 - np.exp(-K.C2 * nu / t_k))


def test_mixing_equals_direct_inversion_where_doppler_is_negligible(data, scale):
    """At 10 atm the Lorentz widths (0.3 cm-1) dwarf the Doppler width (0.016 cm-1): the
    equivalent lines with Faddeeva profiles must reproduce the matrix inversion, the
    mixing correction (full minus diagonal) included, sign and all."""
    p_hpa, t = 10 * K.P_REF_HPA, 296.0
    nu = np.arange(12950.0, 13180.0, 0.37)
    full = band_profile(nu, data, p_hpa, t, scale)
    diag = band_profile(nu, data, p_hpa, t, scale, mixing=False)
    ref_full = _direct(nu, data, 10.0, t, scale, True)
    ref_diag = _direct(nu, data, 10.0, t, scale, False)
    assert np.max(np.abs(full - ref_full)) < 5e-3 * ref_full.max()
    corr, ref_corr = full - diag, ref_full - ref_diag
    assert np.max(np.abs(corr - ref_corr)) < 0.03 * np.max(np.abs(ref_corr))
    assert np.max(np.abs(ref_corr)) > 0.01 * ref_full.max()  # mixing matters at 10 atm


def test_mixing_conserves_band_intensity_and_empties_the_far_wings(data, scale):
    """Line mixing redistributes intensity, it does not create it (sum rule); it takes
    absorption out of the band's far wings (the band collapses, wings sub-Lorentzian)."""
    nu = np.arange(12600.0, 13500.0, 0.01)
    full = band_profile(nu, data, K.P_REF_HPA, 296.0, scale)
    diag = band_profile(nu, data, K.P_REF_HPA, 296.0, scale, mixing=False)
    assert np.trapezoid(full, nu) == pytest.approx(np.trapezoid(diag, nu), rel=1e-3)
    wings = (nu < 12930.0) | (nu > 13200.0)
    assert np.all(full[wings] < 0.3 * diag[wings])


def test_cia_column_matches_an_integration_in_altitude():
    """The table's CIA (pressure layers, p2^2 - p1^2) against sigma * integral of n_O2^2 dz
    over the US 1976 atmosphere on a 10 m altitude grid."""
    plain = o2_table(GRID, line_mixing=False, cia=False)
    with_cia = o2_table(GRID, line_mixing=False, cia=True)
    tau = (np.asarray(tau_above(with_cia.pressure_hpa, jnp.asarray(with_cia.tau), 1013.25))
           - np.asarray(tau_above(plain.pressure_hpa, jnp.asarray(plain.tau), 1013.25)))
    z = np.arange(0.0, 80000.0, 10.0)
    t, p = us1976(z)
    n_o2 = K.O2_VMR * p / (K.BOLTZMANN * t) * 1e-6  # cm-3
    column2 = np.trapezoid(n_o2**2, z * 100.0)  # cm-5
    i = np.argmin(np.abs(GRID - 763.0))
    expected = cia_cross_section(air_to_vacuum(GRID[i]), 250.0) * column2  # no T dependence
    assert tau[i] == pytest.approx(expected, rel=0.02)
    assert 0.004 < tau[i] < 0.009  # about 1e43 cm-5 times 5e-46 cm5


def _band_transmittance(table, airmass=2.2):
    tau = np.asarray(tau_above(table.pressure_hpa, jnp.asarray(table.tau), 1013.25))
    e0 = solar_irradiance(GRID)
    centres = np.arange(757.0, 772.0, 0.05)
    return centres, gaussian_convolve(GRID, e0 * np.exp(-tau * airmass), centres, 0.28) / \
        gaussian_convolve(GRID, e0, centres, 0.28)


def test_mixing_and_cia_change_band_transmittance_by_percents_not_more():
    """A 0.28 nm band seen through a two-way path: line mixing changes the transmittance
    by a few percent near the band bottom (the LISA authors' figure), CIA by about a
    percent, broad; both vanish away from the band."""
    c, none = _band_transmittance(o2_table(GRID, line_mixing=False, cia=False))
    _, lm = _band_transmittance(o2_table(GRID, line_mixing=True, cia=False))
    _, cia = _band_transmittance(o2_table(GRID, line_mixing=False, cia=True))
    assert 0.005 < np.max(np.abs(lm - none)) < 0.06
    assert 0.004 < np.max(none - cia) < 0.02 and np.all(cia <= none + 1e-6)
    far = c < 757.5
    assert np.max(np.abs(lm - none)[far]) < 5e-4


def test_bad_spectroscopy_files_are_refused_with_the_file_named(data):
    text = "\n".join(f"  0.1  0.6    {a}    {b}" for a in data.labels for b in data.labels[:2])
    with pytest.raises(ValueError, match="o2a_lisa_rmf.dat.*missing"):
        _parse_rmf(text, data.labels)
    with pytest.raises(ValueError, match="o2a_lisa_rmf.dat line 1: unknown"):
        _parse_rmf("  0.1  0.6    X 1X 1    X 1X 1", data.labels)
    with pytest.raises(ValueError, match="cia.dat: the first two lines"):
        parse_cia("scale\nheader\n", "cia.dat")
    with pytest.raises(ValueError, match="cia.dat line 4: not four numbers"):
        parse_cia("1e-46 ! s\n2 ! h\n 750.0 1.0 0 0\n 751.0 a b c\n", "cia.dat")
    table = load_cia()
    assert table.scale == 1e-46 and table.wavelength_vacuum_nm.min() < 730


@pytest.mark.slow  # 50 s; the transmittance checks above run by default
def test_spectra_with_mixing_and_cia_fit_only_a_model_that_has_them(model_o2a):
    """Issue 16's check: HyPlant O2-A spectra simulated with line mixing and CIA, fitted at
    the posterior mode, leave a mean residual within 1 noise sd in every band of 755-775
    nm with them in the model, and beyond 1.5 sd without them.

    Two seeded patches of 16 pixels: the mean over 32 spectra has a standard error of
    0.18 sd, so a band beyond 1 sd by chance is a 5.6-sigma event, about 4e-6 for the
    182 bands together (below the 1e-4 false-failure bound); without line mixing and CIA
    the systematic residual near 759.4 nm is about 3 sd."""
    import jax

    from bayesfluo.model import ModelConfig, SifModel
    from bayesfluo.model.laplace import fit_at_mode
    from bayesfluo.physics.forward import build_forward_model
    from bayesfluo.scene.prior import simulate_patch

    on = SifModel(model_o2a, ModelConfig())
    off = SifModel(build_forward_model("hyplant-fluo-o2a", line_mixing=False, cia=False),
                   ModelConfig())
    c = np.asarray(model_o2a.band_centre_nm)
    window = (c >= 755.0) & (c <= 775.0)
    res = {"on": [], "off": []}
    for i, (sza, height) in enumerate(((30.0, 600.0), (50.0, 2000.0))):
        patch, _ = simulate_patch(on, jax.random.PRNGKey(i), n_pixels=16, sza_deg=sza,
                                  height_m=height, snr=None)
        for name, model in (("on", on), ("off", off)):
            res[name].append(np.asarray(fit_at_mode(model, patch).residual))
    mean_on = np.abs(np.concatenate(res["on"]).mean(0))[window]
    mean_off = np.abs(np.concatenate(res["off"]).mean(0))[window]
    assert mean_on.max() < 1.0
    assert mean_off.max() > 1.5
