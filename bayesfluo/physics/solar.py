"""Top-of-atmosphere solar irradiance (TSIS-1 HSRS) and Earth-Sun distance.

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
           "solar_range_air_nm"]

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
