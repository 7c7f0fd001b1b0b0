"""Conversion between vacuum and air wavelengths.

Uses the dispersion of standard air (15 degC, 101 325 Pa, 450 ppm CO2) of Ciddor (1996),
Appl. Opt. 35, 1566, in the closed form adopted by the IAU (Morton 2000, ApJS 130, 403,
eq. 8):

    n - 1 = 8.34254e-5 + 2.406147e-2 / (130 - s**2) + 1.5998e-4 / (38.9 - s**2),

with s = 1e3 / lambda_vac[nm] in inverse micrometres. At 760 nm, lambda_vac - lambda_air
is 0.209 nm. Valid from about 200 nm to 2 um. Functions accept NumPy or JAX arrays.
"""

from __future__ import annotations

__all__ = ["refractive_index_air", "vacuum_to_air", "air_to_vacuum"]


def refractive_index_air(wavelength_vac_nm):
    """Refractive index of standard air at a vacuum wavelength (nm), Ciddor (1996)."""
    s2 = (1.0e3 / wavelength_vac_nm) ** 2
    return 1.0 + 8.34254e-5 + 2.406147e-2 / (130.0 - s2) + 1.5998e-4 / (38.9 - s2)


def vacuum_to_air(wavelength_vac_nm):
    """Air wavelength (nm) of a vacuum wavelength (nm): lambda_air = lambda_vac / n."""
    return wavelength_vac_nm / refractive_index_air(wavelength_vac_nm)


def air_to_vacuum(wavelength_air_nm):
    """Vacuum wavelength (nm) of an air wavelength (nm).

    Inverts :func:`vacuum_to_air` by fixed-point iteration (three steps reach 1e-9 nm).
    """
    lam = wavelength_air_nm * 1.0003
    for _ in range(3):
        lam = wavelength_air_nm * refractive_index_air(lam)
    return lam

