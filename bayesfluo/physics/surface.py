"""Surface: smooth reflectance (cubic B-splines), fluorescence peaks, F760/F687, NDVI.

Reflectance is ``R(lambda) = B(lambda) @ coeffs`` with a clamped cubic B-spline basis of
uniformly spaced knots over the instrument window; the basis matrices (and their first and
second derivatives) are computed once with SciPy and carried as arrays.

Fluorescence is a sum of two Gaussian peaks (red near 685 nm, far-red near 740 nm), in
mW m-2 sr-1 nm-1; in the O2-A window alone the red amplitude is fixed to zero. The headline
quantities are the spectrum's values at 760 nm (F760) and 687 nm (F687).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
from scipy.interpolate import BSpline

__all__ = ["SifParams", "bspline_knots", "bspline_basis", "reflectance", "sif_spectrum",
           "f760", "f687", "sif_peak", "ndvi", "fit_bspline"]


class SifParams(NamedTuple):
    """Two-peak fluorescence spectrum; amplitudes in mW m-2 sr-1 nm-1, centres and widths
    (standard deviations) in nm."""

    amplitude_red: jnp.ndarray
    amplitude_far_red: jnp.ndarray
    centre_red: jnp.ndarray = 684.0
    centre_far_red: jnp.ndarray = 740.0
    sigma_red: jnp.ndarray = 9.0
    sigma_far_red: jnp.ndarray = 21.0


def bspline_knots(lo_nm: float, hi_nm: float, n_basis: int, degree: int = 3) -> np.ndarray:
    """Clamped knot vector with ``n_basis`` cubic B-splines spanning [lo, hi] nm."""
    if n_basis < degree + 1:
        raise ValueError(f"need at least {degree + 1} basis functions, got {n_basis}")
    inner = np.linspace(lo_nm, hi_nm, n_basis - degree + 1)
    return np.concatenate([[lo_nm] * degree, inner, [hi_nm] * degree])


def bspline_basis(wavelength_nm: np.ndarray, knots: np.ndarray, derivative: int = 0,
                  degree: int = 3) -> np.ndarray:
    """Basis matrix (n_wavelength, n_basis) of B-splines (or their derivative) at ``x``."""
    n_basis = len(knots) - degree - 1
    x = np.clip(np.asarray(wavelength_nm, dtype=np.float64), knots[0], knots[-1])
    spl = BSpline(knots, np.eye(n_basis), degree, extrapolate=False)
    out = spl(x, nu=derivative) if derivative else spl(x)
    return np.nan_to_num(out)


def fit_bspline(wavelength_nm: np.ndarray, values: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Least-squares B-spline coefficients of ``values`` (..., n_wavelength)."""
    b = bspline_basis(wavelength_nm, knots)
    coef, *_ = np.linalg.lstsq(b, np.moveaxis(np.asarray(values), -1, 0), rcond=None)
    return np.moveaxis(coef, 0, -1)


def reflectance(coeffs, basis):
    """Reflectance from B-spline coefficients: ``basis (n, K) @ coeffs (K,)``."""
    return basis @ coeffs


def _gauss(wl, centre, sigma):
    return jnp.exp(-0.5 * ((wl - centre) / sigma) ** 2)


def sif_spectrum(wavelength_nm, p: SifParams):
    """Fluorescence spectrum (mW m-2 sr-1 nm-1) at wavelengths (nm)."""
    return (p.amplitude_red * _gauss(wavelength_nm, p.centre_red, p.sigma_red)
            + p.amplitude_far_red * _gauss(wavelength_nm, p.centre_far_red, p.sigma_far_red))


def sif_taylor(wavelength_nm, p: SifParams):
    """Value, first derivative and half the second derivative of the spectrum, (3, n)."""

    def peak(amplitude, centre, sigma):
        u = (wavelength_nm - centre) / sigma
        e = amplitude * jnp.exp(-0.5 * u * u)
        return jnp.stack([e, -u / sigma * e, 0.5 * (u * u - 1.0) / (sigma * sigma) * e])

    return (peak(p.amplitude_red, p.centre_red, p.sigma_red)
            + peak(p.amplitude_far_red, p.centre_far_red, p.sigma_far_red))


def f760(p: SifParams):
    """SIF at 760 nm, mW m-2 sr-1 nm-1."""
    return sif_spectrum(760.0, p)


def f687(p: SifParams):
    """SIF at 687 nm, mW m-2 sr-1 nm-1."""
    return sif_spectrum(687.0, p)


def sif_peak(p: SifParams):
    """SIF at the far-red peak wavelength, mW m-2 sr-1 nm-1."""
    return sif_spectrum(p.centre_far_red, p)


def ndvi(reflectance_red, reflectance_nir):
    """Normalised difference vegetation index (red near 670 nm, NIR near 800 nm)."""
    return (reflectance_nir - reflectance_red) / (reflectance_nir + reflectance_red)
