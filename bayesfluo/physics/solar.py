"""Top-of-atmosphere solar irradiance (TSIS-1 HSRS), Earth-Sun distance and the sun's
position.

The spectrum shipped in ``bayesfluo/data/solar`` is the TSIS-1 Hybrid Solar Reference
Spectrum at 0.005 nm resolution (Coddington et al. 2021), vacuum wavelengths, W m-2 nm-1 at
1 AU, 640-820 nm. :func:`solar_irradiance` returns it on any air-wavelength grid inside
that range, bin-averaged (integral preserving) and converted to mW m-2 nm-1.
"""

from __future__ import annotations

import functools
import gzip
from importlib import resources

import numpy as np

from bayesfluo.physics.air import vacuum_to_air

__all__ = ["load_tsis", "solar_irradiance", "earth_sun_distance_factor",
           "solar_range_air_nm", "solar_position"]

_FILE = "tsis1_hsrs_p005nm_640-820nm_vacuum.csv.gz"


@functools.cache
def load_tsis() -> tuple[np.ndarray, np.ndarray]:
    """Read the shipped TSIS-1 HSRS file.

    Returns
    -------
    wavelength_vac_nm, irradiance_W_m2_nm : ndarray
        Vacuum wavelength (nm) and irradiance at 1 AU (W m-2 nm-1), float64.
    """
    ref = resources.files("bayesfluo.data").joinpath("solar", _FILE)
    with ref.open("rb") as fb, gzip.open(fb, "rt", encoding="ascii") as fh:
        rows = [ln for ln in fh if ln.strip() and not ln.startswith("#")]
    if rows and not rows[0][0].isdigit():  # header line with the column names
        rows = rows[1:]
    data = np.loadtxt(rows, delimiter=",", dtype=np.float64)
    data.flags.writeable = False  # cached and shared: nobody may change it
    return data[:, 0], data[:, 1]


@functools.cache
def solar_range_air_nm() -> tuple[float, float]:
    """Air-wavelength range (nm) covered by the shipped solar spectrum."""
    wl, _ = load_tsis()
    return float(vacuum_to_air(wl[0])), float(vacuum_to_air(wl[-1]))


def earth_sun_distance_factor(day_of_year) -> np.ndarray:
    """(d0 / d)**2, the factor by which the irradiance at 1 AU is multiplied.

    Spencer (1971), Search 2(5), 172: Fourier series in the day angle
    Gamma = 2 pi (doy - 1) / 365; accurate to about 1e-4.
    """
    g = 2.0 * np.pi * (np.asarray(day_of_year, dtype=np.float64) - 1.0) / 365.0
    return (1.000110 + 0.034221 * np.cos(g) + 0.001280 * np.sin(g)
            + 0.000719 * np.cos(2 * g) + 0.000077 * np.sin(2 * g))


def solar_irradiance(wavelength_air_nm: np.ndarray, day_of_year: float | None = None
                     ) -> np.ndarray:
    """Solar irradiance on a uniform air-wavelength grid, mW m-2 nm-1.

    Each output sample is the mean of the TSIS spectrum over its grid cell
    (``wavelength +- step/2``), so the integral over the window is preserved.

    Parameters
    ----------
    wavelength_air_nm : ndarray
        Uniformly spaced air wavelengths (nm), inside 640-820 nm with half a step to spare.
    day_of_year : float, optional
        Scales to the Earth-Sun distance of that day; ``None`` gives the 1 AU spectrum.
    """
    wl = np.asarray(wavelength_air_nm, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2:
        raise ValueError("wavelength grid must be 1-D with at least two samples")
    step = np.diff(wl)
    if np.any(step <= 0) or not np.allclose(step, step[0], rtol=1e-6, atol=1e-9):
        raise ValueError("wavelength grid must be uniformly spaced and increasing")
    lo, hi = wl[0] - step[0] / 2, wl[-1] + step[0] / 2
    vac, irr = load_tsis()
    air = vacuum_to_air(vac)
    if lo < air[0] or hi > air[-1]:
        raise ValueError(
            f"wavelength grid {wl[0]:.3f}-{wl[-1]:.3f} nm (air) is outside the shipped solar "
            f"spectrum {air[0]:.2f}-{air[-1]:.2f} nm (air)")
    # integral-preserving bin average via the cumulative trapezoid
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (irr[1:] + irr[:-1]) * np.diff(air))])
    edges = np.concatenate([wl - step[0] / 2, [hi]])
    c = np.interp(edges, air, cum)
    e0 = np.diff(c) / np.diff(edges) * 1.0e3  # W -> mW
    if day_of_year is not None:
        e0 = e0 * earth_sun_distance_factor(day_of_year)
    return e0


def solar_position(time_utc, latitude_deg, longitude_deg) -> tuple[np.ndarray, np.ndarray]:
    """Sun zenith and azimuth angles at a place and UTC time.

    The NOAA solar position algorithm (Meeus, *Astronomical Algorithms*, low-precision
    solar coordinates: the sun's apparent longitude and the obliquity with the main
    nutation term, then the equation of time and the hour angle): about 0.01 degree for
    1900-2100, without atmospheric refraction (which lifts the sun by up to 0.1 degree
    below 80 degrees zenith, 0.5 degree at the horizon).

    Parameters
    ----------
    time_utc : datetime64 array-like
        UTC times (``numpy.datetime64`` or anything :func:`numpy.asarray` turns into
        ``datetime64``).
    latitude_deg, longitude_deg : float or array broadcastable to ``time_utc``
        Degrees north and east.

    Returns
    -------
    sza, saa : ndarray
        Sun zenith angle (degrees, 0 overhead, above 90 below the horizon) and azimuth
        (degrees clockwise from north, in [0, 360)), float64, shaped like ``time_utc``
        broadcast against the position.

    Raises
    ------
    ValueError
        If a latitude is outside [-90, 90] or a longitude outside [-180, 360].
    """
    t = np.asarray(time_utc).astype("datetime64[ms]")
    lat = np.asarray(latitude_deg, np.float64)
    lon = np.asarray(longitude_deg, np.float64)
    if np.any(~np.isfinite(lat)) or np.any(np.abs(lat) > 90.0):
        raise ValueError(f"latitude must be in [-90, 90] degrees north, got {latitude_deg}")
    if np.any(~np.isfinite(lon)) or np.any(lon < -180.0) or np.any(lon > 360.0):
        raise ValueError(f"longitude must be in [-180, 360] degrees east, got {longitude_deg}")
    ms = t.astype(np.int64).astype(np.float64)                 # since 1970-01-01 UTC
    jc = (ms / 86_400_000.0 + 2440587.5 - 2451545.0) / 36525.0  # Julian centuries, J2000
    minutes = (ms / 60_000.0) % 1440.0                        # of the UTC day
    rad = np.radians
    l0 = (280.46646 + jc * (36000.76983 + jc * 0.0003032)) % 360.0   # mean longitude
    m = 357.52911 + jc * (35999.05029 - 0.0001537 * jc)               # mean anomaly
    ecc = 0.016708634 - jc * (0.000042037 + 0.0000001267 * jc)
    centre = (np.sin(rad(m)) * (1.914602 - jc * (0.004817 + 0.000014 * jc))
              + np.sin(rad(2 * m)) * (0.019993 - 0.000101 * jc)
              + np.sin(rad(3 * m)) * 0.000289)
    omega = 125.04 - 1934.136 * jc
    app_long = l0 + centre - 0.00569 - 0.00478 * np.sin(rad(omega))
    eps0 = 23.0 + (26.0 + (21.448 - jc * (46.815 + jc * (0.00059 - jc * 0.001813))) / 60.0
                   ) / 60.0
    eps = eps0 + 0.00256 * np.cos(rad(omega))
    decl = np.arcsin(np.sin(rad(eps)) * np.sin(rad(app_long)))
    y = np.tan(rad(eps / 2.0)) ** 2
    eqtime_min = 4.0 * np.degrees(
        y * np.sin(2 * rad(l0)) - 2 * ecc * np.sin(rad(m))
        + 4 * ecc * y * np.sin(rad(m)) * np.cos(2 * rad(l0))
        - 0.5 * y * y * np.sin(4 * rad(l0)) - 1.25 * ecc * ecc * np.sin(2 * rad(m)))
    true_solar_min = minutes + eqtime_min + 4.0 * lon
    ha = rad(true_solar_min / 4.0 - 180.0)
    phi = rad(lat)
    cos_z = np.sin(phi) * np.sin(decl) + np.cos(phi) * np.cos(decl) * np.cos(ha)
    sza = np.degrees(np.arccos(np.clip(cos_z, -1.0, 1.0)))
    # azimuth from south, positive westward; + 180 for clockwise from north
    az_south = np.arctan2(np.sin(ha), np.cos(ha) * np.sin(phi) - np.tan(decl) * np.cos(phi))
    saa = (np.degrees(az_south) + 180.0) % 360.0
    return sza, saa
