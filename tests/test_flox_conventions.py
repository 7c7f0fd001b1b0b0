"""FloX series: irradiance conventions and units checked from physics, noise from the data.

One simulated FloX series (200 scans, seeded, SNR 150 so that its noise differs from the
flox default of SNR 300) is written as a FloX table with the irradiance or the units
deliberately wrong; each file is either converted back to the simulated values with a
warning or refused with a message naming the file (issue 16, items 2 and 3).
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

from bayesfluo.instruments import get_instrument
from bayesfluo.io import SceneReadError, open_scene, read_flox_csv, write_dataset, write_flox_csv
from bayesfluo.io.flox_noise import MIN_SCANS, estimate_noise
from bayesfluo.scene.simulate import simulate_scene

SNR = 150.0
N_SCANS = 200
RTOL = 1e-6  # float32 values through a text table and back, times a factor


@pytest.fixture(scope="module")
def series(model_flox):
    return simulate_scene("flox", size=(1, N_SCANS), seed=11, snr=SNR, model=model_flox)


def _write(scene, path, *, rad_fac=1.0, irr_fac=1.0, header: dict | None = None):
    """``scene`` as a FloX table with radiance times ``rad_fac``, irradiance times
    ``irr_fac`` and the header lines ``header`` replaced or added."""
    s = scene.copy()
    s["radiance"] = s["radiance"] * np.float32(rad_fac)
    s["irradiance"] = s["irradiance"] * np.float32(irr_fac)
    write_flox_csv(s, path)
    lines = path.read_text().splitlines()
    for key, value in (header or {}).items():
        row = next((i for i, ln in enumerate(lines) if ln.startswith(f"# {key} =")), None)
        if row is None:
            lines.insert(1, f"# {key} = {value}")
        else:
            lines[row] = f"# {key} = {value}"
    path.write_text("\n".join(lines) + "\n")
    return path


def _read_quietly(path):
    """Read ``path``, failing on any warning that names it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = read_flox_csv(path)
    assert not [str(w.message) for w in caught if str(path) in str(w.message)]
    return got


def _assert_true_values(got, scene):
    for v in ("radiance", "irradiance"):
        np.testing.assert_allclose(got[v].values, scene[v].values, rtol=RTOL, err_msg=v)


def test_correct_file_reads_unchanged_and_silently(series, tmp_path):
    got = _read_quietly(_write(series, tmp_path / "ok.csv"))
    for v in ("radiance", "irradiance"):
        np.testing.assert_array_equal(got[v].values, series[v].values, err_msg=v)
    assert "conventions_checked" in got.attrs
    for key in ("irradiance_convention_assumed", "irradiance_convention_converted",
                "units_scale_assumed"):
        assert key not in got.attrs


def test_irradiance_as_e_over_pi_is_converted_with_a_warning(series, tmp_path):
    path = _write(series, tmp_path / "epi.csv", irr_fac=1 / np.pi)
    with pytest.warns(UserWarning, match=r"E/pi.*multiplied by pi"):
        got = read_flox_csv(path)
    _assert_true_values(got, series)
    assert "E/pi" in got.attrs["irradiance_convention_assumed"]
    assert isinstance(got.attrs["irradiance_convention_assumed"], str)


def test_stated_e_over_pi_converts_without_a_warning(series, tmp_path):
    path = _write(series, tmp_path / "epi_stated.csv", irr_fac=1 / np.pi,
                  header={"irradiance_convention": "E/pi"})
    got = _read_quietly(path)
    _assert_true_values(got, series)
    assert "stated" in got.attrs["irradiance_convention_converted"]
    assert "irradiance_convention_assumed" not in got.attrs


def test_stated_e_contradicted_by_the_data_is_refused(series, tmp_path):
    path = _write(series, tmp_path / "epi_says_e.csv", irr_fac=1 / np.pi,
                  header={"irradiance_convention": "E"})
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*E/pi"):
        read_flox_csv(path)


def test_watts_for_both_are_converted_with_a_warning(series, tmp_path):
    path = _write(series, tmp_path / "watts.csv", rad_fac=1e-3, irr_fac=1e-3)
    with pytest.warns(UserWarning, match="W instead of mW.*1000"):
        got = read_flox_csv(path)
    _assert_true_values(got, series)
    assert "W instead of mW" in got.attrs["units_scale_assumed"]


def test_milliwatts_stated_as_watts_are_converted_back(series, tmp_path):
    """The header says W (converted x1000 on reading) but the values are mW."""
    path = _write(series, tmp_path / "says_watts.csv",
                  header={"radiance_units": "W m-2 sr-1 nm-1",
                          "irradiance_units": "W m-2 nm-1"})
    with pytest.warns(UserWarning, match="multiplied by 0.001"):
        got = read_flox_csv(path)
    _assert_true_values(got, series)


def test_e_over_pi_and_watts_together(series, tmp_path):
    path = _write(series, tmp_path / "both.csv", rad_fac=1e-3, irr_fac=1e-3 / np.pi)
    with pytest.warns(UserWarning) as record:
        got = read_flox_csv(path)
    messages = " | ".join(str(w.message) for w in record)
    assert "E/pi" in messages and "W instead of mW" in messages
    _assert_true_values(got, series)


@pytest.mark.parametrize("rad_fac, irr_fac, hint", [
    (1.0, 1e-3, "irradiance_units"),   # E in W, L in mW
    (1e-3, 1.0, "radiance_units"),     # L in W, E in mW
    (1.0, 10.0, "irradiance_units"),   # E ten times too large
])
def test_inconsistent_units_are_refused_naming_the_file(series, tmp_path, rad_fac, irr_fac,
                                                        hint):
    path = _write(series, tmp_path / "mixed.csv", rad_fac=rad_fac, irr_fac=irr_fac)
    with pytest.raises(SceneReadError, match=re.escape(str(path))) as err:
        read_flox_csv(path)
    assert hint in str(err.value)


def test_unknown_convention_is_refused(series, tmp_path):
    path = _write(series.isel(time=slice(0, 5)), tmp_path / "conv.csv",
                  header={"irradiance_convention": "radiance"})
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*E or E/pi"):
        read_flox_csv(path)


def test_netcdf_series_is_checked_too(series, tmp_path):
    """The netCDF time series (``bayesfluo simulate --instrument flox --out x.nc``)."""
    s = series.copy()
    s["irradiance"] = s["irradiance"] / np.float32(np.pi)
    path = write_dataset(s, tmp_path / "epi.nc")
    with pytest.warns(UserWarning, match="E/pi"):
        got = open_scene(path).load()
    np.testing.assert_allclose(got["irradiance"].values, series["irradiance"].values,
                               rtol=RTOL)
    s.attrs["irradiance_convention"] = "E/pi"
    path = write_dataset(s, tmp_path / "epi_stated.nc")
    got = open_scene(path).load()
    np.testing.assert_allclose(got["irradiance"].values, series["irradiance"].values,
                               rtol=RTOL)
    assert got.attrs["irradiance_convention"] == "E"  # saved again, not converted twice
    again = write_dataset(got, tmp_path / "again.nc")
    np.testing.assert_allclose(open_scene(again)["irradiance"].values,
                               series["irradiance"].values, rtol=RTOL)
    s = series.copy()
    s["irradiance"] = s["irradiance"] * np.float32(1e-3)
    path = write_dataset(s, tmp_path / "mixed.nc")
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*units"):
        open_scene(path)


def test_e_over_pi_of_a_dark_canopy_is_caught_by_the_irradiance_level(series, tmp_path):
    """A canopy darker than 1.2 / pi (here 0.28 in the continuum) exported as E/pi has a
    pi L / E (0.89) that a real, bright surface could have: it used to be read as E
    without a word. The irradiance level decides: no scan brighter than E/pi of sunlight
    allows, and as E the surface would be brighter than 0.8, so E/pi is assumed."""
    path = _write(series, tmp_path / "dark_epi.csv", rad_fac=0.6, irr_fac=1 / np.pi)
    with pytest.warns(UserWarning, match=re.escape(str(path)) + r".*E/pi.*multiplied by pi"):
        got = read_flox_csv(path)
    np.testing.assert_allclose(got["irradiance"].values, series["irradiance"].values,
                               rtol=RTOL)
    assert "clear sky" in got.attrs["irradiance_convention_assumed"]


def test_ambiguous_e_or_e_over_pi_is_refused_until_stated(series, tmp_path):
    """Darker still (0.19 in the continuum) as E/pi: pi L / E 0.59 under an irradiance a
    third of sunlight's reads as well as an overcast series in E; refused, naming the
    file and the line to add; stated, it reads."""
    path = _write(series, tmp_path / "amb.csv", rad_fac=0.4, irr_fac=1 / np.pi)
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*cannot tell whether "
                       r"the irradiance is E or E/pi.*# irradiance_convention = E/pi"):
        read_flox_csv(path)
    path = _write(series, tmp_path / "amb_stated.csv", rad_fac=0.4, irr_fac=1 / np.pi,
                  header={"irradiance_convention": "E/pi"})
    got = _read_quietly(path)
    np.testing.assert_allclose(got["irradiance"].values, series["irradiance"].values,
                               rtol=RTOL)


def test_overcast_series_in_e_reads_once_stated_and_saves(series, tmp_path):
    """A series overcast at every scan (irradiance 0.3 of a clear sky's), in E: as
    ambiguous as a clear one in E/pi, so refused unless the convention is stated; the
    scene read saves and reads again without the statement (irradiance_convention = E
    travels with it)."""
    path = _write(series, tmp_path / "overcast.csv", rad_fac=0.3, irr_fac=0.3)
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*overcast"):
        read_flox_csv(path)
    path = _write(series, tmp_path / "overcast_e.csv", rad_fac=0.3, irr_fac=0.3,
                  header={"irradiance_convention": "E"})
    got = _read_quietly(path)
    np.testing.assert_allclose(got["irradiance"].values, 0.3 * series["irradiance"].values,
                               rtol=RTOL)
    assert got.attrs["irradiance_convention"] == "E"
    again = open_scene(write_dataset(got, tmp_path / "overcast.nc"))
    np.testing.assert_array_equal(again["irradiance"].values, got["irradiance"].values)


def test_cli_refuses_an_ambiguous_series_before_any_sampling(series, tmp_path, capsys):
    """`nuts` and `baseline` on the ambiguous file stop with exit code 2 and the reader's
    message, writing nothing (no posterior from an irradiance pi times off)."""
    from bayesfluo.cli import main

    path = _write(series.isel(time=slice(0, 40)), tmp_path / "amb.csv", rad_fac=0.4,
                  irr_fac=1 / np.pi)
    for cmd in (["nuts", str(path), "--pixels", "0:1", "--out", str(tmp_path / "n.nc")],
                ["baseline", str(path), "--out", str(tmp_path / "b.nc")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert str(path) in err and "irradiance_convention" in err
    assert not list(tmp_path.glob("*.nc"))


# ---------------------------------------------------------------------------------------
# noise from the series
# ---------------------------------------------------------------------------------------

def _sd_tolerance(n_samples: int) -> float:
    """Five standard errors of the relative sd from the median of ``n_samples`` squared
    second differences: the median of chi-square(1) (m = 0.4549, density f(m) = 0.4711)
    estimates a variance with relative variance 1 / (4 n (f m)^2); neighbouring second
    differences are correlated (-2/3 at lag 1, 1/6 at lag 2), which cuts n by
    1 + 2 (4/9 + 1/36); the sd's relative error is half the variance's."""
    m = 0.45493642311957283
    f = np.exp(-m / 2) / np.sqrt(2 * np.pi * m)
    n_eff = n_samples / (1 + 2 * (4 / 9 + 1 / 36))
    return 5 * 0.5 / (2 * f * m * np.sqrt(n_eff))


def test_noise_estimated_from_the_series(series, tmp_path):
    got = _read_quietly(_write(series, tmp_path / "noise.csv"))
    a_true, b_true = get_instrument("flox").noise_coefficients(SNR)
    assert np.isclose(series.attrs["noise_a"], a_true)  # the simulator's noise
    assert got.attrs["noise_source"].startswith("estimated from the series")
    n = (N_SCANS - 2) * got.sizes["band"]
    tol = _sd_tolerance(n)
    assert 0.005 < tol < 0.03
    rad = series["radiance"].values.astype(np.float64)
    irr_pi = series["irradiance"].values.astype(np.float64) / np.pi
    for x, a, b in ((rad, got.attrs["noise_a"], got.attrs["noise_b"]),
                    (irr_pi, got.attrs["irradiance_noise_a"], got.attrs["irradiance_noise_b"])):
        level = x.mean()
        sd_true = np.sqrt(a_true * level + b_true)  # E/pi has the radiance's coefficients
        sd_est = np.sqrt(a * level + b)
        assert abs(sd_est / sd_true - 1) < tol, (sd_est, sd_true, tol)
    # not the default it replaces (SNR 300: half the sd)
    a0, b0 = get_instrument("flox").noise_coefficients()
    level = rad.mean()
    assert np.sqrt(got.attrs["noise_a"] * level + got.attrs["noise_b"]) > \
        1.5 * np.sqrt(a0 * level + b0)
    for k in ("noise_a", "noise_b", "irradiance_noise_a", "irradiance_noise_b"):
        assert type(got.attrs[k]) is float


def test_estimate_noise_reports_what_it_used(series):
    est = estimate_noise(series)
    assert est["n_scans"] == N_SCANS and est["n_triples"] == N_SCANS - 2
    assert est["irradiance_readings"] == 1
    assert 0 < est["irradiance_change_between_scans"] < 0.1


def test_short_series_keeps_the_default_and_says_why(series, tmp_path):
    got = _read_quietly(_write(series.isel(time=slice(0, 10)), tmp_path / "short.csv"))
    assert "noise_a" not in got.attrs and "noise_b" not in got.attrs
    src = got.attrs["noise_source"]
    assert "default" in src and "only 10 usable scans" in src and str(MIN_SCANS) in src
    with pytest.raises(ValueError, match="10 usable scans"):
        estimate_noise(series.isel(time=slice(0, 10)))


def test_stated_noise_is_kept(series, tmp_path):
    path = _write(series, tmp_path / "stated.csv",
                  header={"noise_a": "0.002", "noise_b": "0.03"})
    got = _read_quietly(path)
    assert got.attrs["noise_a"] == 0.002 and got.attrs["noise_b"] == 0.03
    assert got.attrs["noise_source"] == "stated in the file"
    assert "irradiance_noise_a" not in got.attrs
    # netCDF: the simulator's noise attributes are stated noise
    nc = open_scene(write_dataset(series, tmp_path / "s.nc"))
    assert nc.attrs["noise_a"] == series.attrs["noise_a"]
    assert nc.attrs["noise_source"] == "stated in the file"
    path = _write(series.isel(time=slice(0, 5)), tmp_path / "half.csv",
                  header={"noise_a": "0.002"})
    with pytest.raises(SceneReadError, match=re.escape(str(path)) + ".*noise_b"):
        read_flox_csv(path)
