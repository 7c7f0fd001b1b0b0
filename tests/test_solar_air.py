import numpy as np
import pytest

from bayesfluo.physics.air import air_to_vacuum, vacuum_to_air
from bayesfluo.physics.solar import (
    earth_sun_distance_factor,
    load_tsis,
    solar_irradiance,
    solar_position,
    solar_range_air_nm,
)


@pytest.mark.parametrize("air, vac", [
    (656.281, 656.4614),   # H-alpha (NIST ASD)
    (588.9950, 589.1583),  # Na D2 (NIST ASD)
    (777.194, 777.4083),   # O I triplet line (NIST ASD)
])
def test_air_vacuum_against_tabulated_lines(air, vac):
    assert vacuum_to_air(vac) == pytest.approx(air, abs=2e-3)
    assert air_to_vacuum(air) == pytest.approx(vac, abs=2e-3)


def test_air_vacuum_round_trip_and_size_at_760():
    wl = np.linspace(650, 800, 101)
    np.testing.assert_allclose(vacuum_to_air(air_to_vacuum(wl)), wl, atol=1e-9)
    assert 0.205 < 760.0 - vacuum_to_air(760.0) < 0.215  # the 0.21 nm of the data README


def test_tsis_file_and_units():
    wl, irr = load_tsis()
    assert wl.size == 180001 and wl[0] == pytest.approx(640.0) and wl[-1] == pytest.approx(820.0)
    grid = np.arange(750.0, 756.0, 0.005)
    e0 = solar_irradiance(grid)
    # continuum near 755 nm is about 1.25-1.30 W m-2 nm-1 (TSIS-1); we return mW
    assert 1150 < np.median(e0) < 1400


def test_solar_resampling_preserves_the_integral():
    grid = np.arange(700.0, 760.0, 0.01)
    e0 = solar_irradiance(grid) / 1e3
    wl, irr = load_tsis()
    air = vacuum_to_air(wl)
    lo, hi = grid[0] - 0.005, grid[-1] + 0.005
    m = (air >= lo) & (air <= hi)
    ref = np.trapezoid(irr[m], air[m])
    assert np.sum(e0) * 0.01 == pytest.approx(ref, rel=2e-4)


def test_earth_sun_distance_extremes():
    f = earth_sun_distance_factor(np.arange(1, 366))
    # perihelion early January (0.9833 AU), aphelion early July (1.0167 AU)
    assert f.max() == pytest.approx(1 / 0.98329**2, abs=2e-3)
    assert f.min() == pytest.approx(1 / 1.01671**2, abs=2e-3)
    assert np.argmax(f) < 10 and 175 < np.argmin(f) < 195


def test_grid_outside_the_solar_data_is_an_error():
    lo, hi = solar_range_air_nm()
    with pytest.raises(ValueError, match="outside the shipped solar spectrum"):
        solar_irradiance(np.arange(600.0, 700.0, 0.01))
    with pytest.raises(ValueError, match="uniformly spaced"):
        solar_irradiance(np.array([700.0, 700.1, 700.5]))


def _day(date: str, step_s: int = 10) -> np.ndarray:
    """The UTC times of one day, every ``step_s`` seconds."""
    return np.datetime64(f"{date}T00:00:00") + np.arange(0, 86400, step_s) * np.timedelta64(
        1, "s")


def test_solar_position_against_known_astronomy():
    """Checks from astronomy, not from the formulas: on the June 2021 solstice the
    declination is the obliquity (23.4367 deg), so at that latitude the sun passes
    overhead; on 3 November the equation of time is +16.4 min, so at longitude 0 the sun
    culminates at 11:43.6 UTC, due south; it rises in the east and sets in the west;
    at the equator on the 2021 March equinox (09:37 UTC) noon is within 0.1 deg of the
    zenith; a place 15 degrees east sees the same sun one hour earlier."""
    t = _day("2021-06-21")
    sza, saa = solar_position(t, 23.4367, 0.0)
    assert sza.min() < 0.05
    t = _day("2023-11-03")
    sza, saa = solar_position(t, 50.0, 0.0)
    noon = t[np.argmin(sza)]
    culmination = np.datetime64("2023-11-03T11:43:36")
    assert abs((noon - culmination) / np.timedelta64(1, "s")) < 30
    assert saa[np.argmin(sza)] == pytest.approx(180.0, abs=0.5)
    up, ten = sza < 90, np.timedelta64(600, "s")
    am, pm = up & (t < noon - ten), up & (t > noon + ten)
    assert np.all((saa[am] > 90) & (saa[am] < 180))
    assert np.all((saa[pm] > 180) & (saa[pm] < 270))
    assert solar_position(_day("2021-03-20"), 0.0, 0.0)[0].min() < 0.1
    one = np.timedelta64(3600, "s")
    a = solar_position(t[3000:3010], 50.0, 15.0)
    b = solar_position(t[3000:3010] + one, 50.0, 0.0)
    np.testing.assert_allclose(a[0], b[0], atol=0.02)
    with pytest.raises(ValueError, match="latitude"):
        solar_position(t[:1], 95.0, 0.0)


def test_solar_position_sunrise_hour_angle():
    """Sunrise (sza 90 deg, no refraction) at the hour angle arccos(-tan(lat) tan(decl)),
    the declination taken at the solar noon of the day (from the noon zenith angle)."""
    lat = 50.0
    t = _day("2024-06-29", 5)
    sza, _ = solar_position(t, lat, 0.0)
    i_noon = int(np.argmin(sza))
    decl = lat - sza[i_noon]
    h0 = np.degrees(np.arccos(-np.tan(np.radians(lat)) * np.tan(np.radians(decl))))
    rise = t[np.flatnonzero(sza < 90.0)[0]]
    hours = (t[i_noon] - rise) / np.timedelta64(1, "s") / 3600.0
    assert hours == pytest.approx(h0 / 15.0, abs=0.01)
