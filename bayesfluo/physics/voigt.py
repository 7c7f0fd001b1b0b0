"""Voigt line profile through the Faddeeva function, in pure JAX.

The Faddeeva function w(z) = exp(-z**2) erfc(-iz) is evaluated with the rational
approximation of Weideman (1994), SIAM J. Numer. Anal. 31, 1497: a series in
Z = (L + iz) / (L - iz) whose N coefficients come from one FFT, done once in NumPy. With
N = 32 it agrees with :func:`scipy.special.wofz` to better than 1e-6 (relative) in the
upper half plane (checked in the tests). It is differentiable and jit/vmap friendly.

The Voigt profile in wavenumber space (normalised to unit area, units cm):

    V(nu) = Re w((nu - nu0 + i gamma_L) / alpha) / (alpha sqrt(pi)),

with alpha = alpha_D / sqrt(ln 2) the Doppler 1/e half width and gamma_L the Lorentz HWHM.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

__all__ = ["faddeeva", "voigt_profile"]

_N = 32


def _weideman_coefficients(n: int) -> tuple[np.ndarray, float]:
    m = 2 * n
    m2 = 2 * m
    k = np.arange(-m + 1, m)
    length = np.sqrt(n / np.sqrt(2.0))
    theta = k * np.pi / m
    t = length * np.tan(theta / 2.0)
    f = np.concatenate([[0.0], np.exp(-(t**2)) * (length**2 + t**2)])
    a = np.real(np.fft.fft(np.fft.fftshift(f))) / m2
    return np.flipud(a[1 : n + 1]), float(length)


_COEF, _L = _weideman_coefficients(_N)
_INV_SQRT_PI = 1.0 / np.sqrt(np.pi)


def faddeeva(z):
    """Faddeeva function w(z) for Im(z) >= 0 (complex JAX array in, complex out)."""
    iz = 1j * z
    denom = _L - iz
    zz = (_L + iz) / denom
    p = jnp.zeros_like(zz)
    for c in _COEF:  # Horner; the loop is unrolled at trace time (32 terms)
        p = p * zz + c
    return 2.0 * p / denom**2 + _INV_SQRT_PI / denom


def voigt_profile(dnu, alpha_doppler_hwhm, gamma_lorentz_hwhm):
    """Area-normalised Voigt profile (cm) at offsets ``dnu`` (cm-1) from the line centre.

    Parameters
    ----------
    dnu : array
        Wavenumber offset from the (pressure-shifted) line centre, cm-1.
    alpha_doppler_hwhm, gamma_lorentz_hwhm : array
        Doppler and Lorentz half widths at half maximum, cm-1; broadcast against ``dnu``.
    """
    alpha = alpha_doppler_hwhm / np.sqrt(np.log(2.0))
    z = (dnu + 1j * gamma_lorentz_hwhm) / alpha
    return jnp.real(faddeeva(z)) * _INV_SQRT_PI / alpha
