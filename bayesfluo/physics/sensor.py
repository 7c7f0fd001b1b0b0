"""Sensor: spectral response per band with smile, band integration, noise.

Each band k integrates the fine-grid radiance with a response centred on
``centre_k + shift`` with full width at half maximum ``fwhm_k * fwhm_scale``: a Gaussian,
or a flat-topped generalised Gaussian ``exp(-ln2 |2 x / FWHM|**p)`` with ``p`` the
instrument's (or the scene's) ``response_exponent`` in [2, 8] (2 is the Gaussian; the FWHM
is the FWHM whatever ``p``); ``shift`` (nm) and
``fwhm_scale`` vary per across-track column (the smile). The response is evaluated on a
fixed window of ``taps`` fine-grid samples starting at ``tap_start[k]`` (wide enough for
+-4 standard deviations at the largest allowed width and shift) and normalised to sum to 1,
so a flat spectrum is returned unchanged. Windows of evenly spaced bands are cut from the
fine grid by slicing (:func:`windows`), not gathering: the gradient of a gather is a
scatter-add, several times slower on CPU.

Noise is Gaussian with variance ``a * signal + b`` (shot noise plus read noise), in
(mW m-2 sr-1 nm-1)**2.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["SensorParams", "tap_layout", "windows", "response", "band_integrate", "band_moments",
           "noise_variance", "add_noise", "FWHM_TO_SIGMA", "RESPONSE_EXPONENT_RANGE",
           "check_response_exponent"]

FWHM_TO_SIGMA = 1.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))
#: Exponents of the generalised Gaussian response the windows hold (+-4 Gaussian sigma).
RESPONSE_EXPONENT_RANGE = (2.0, 8.0)


def check_response_exponent(p: float, where: str = "response_exponent") -> float:
    """``p`` as a float inside :data:`RESPONSE_EXPONENT_RANGE`, else a ValueError naming
    ``where``."""
    lo, hi = RESPONSE_EXPONENT_RANGE
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a number in [{lo:g}, {hi:g}], got {p!r}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{where} must lie in [{lo:g}, {hi:g}] (2: Gaussian; larger: "
                         f"flatter top, shorter tails), got {v:g}")
    return v


class SensorParams(NamedTuple):
    """Spectral calibration of a column: centre shift (nm) and FWHM scale factor."""

    shift_nm: jnp.ndarray = 0.0
    fwhm_scale: jnp.ndarray = 1.0


def tap_layout(fine_nm: np.ndarray, centre_nm: np.ndarray, fwhm_nm: np.ndarray,
               max_shift_nm: float, max_fwhm_scale: float) -> tuple[np.ndarray, int, int]:
    """Response windows on the fine grid.

    Returns
    -------
    tap_start : ndarray of int (bands,)
        First fine-grid index of each band's window.
    taps : int
        Window length, covering +-4 sigma at the largest width and shift.
    stride : int
        Constant step between window starts, or 0 when the starts are not evenly spaced
        (then :func:`windows` gathers instead of slicing).
    """
    step = fine_nm[1] - fine_nm[0]
    half = 4.0 * fwhm_nm.max() * max_fwhm_scale * FWHM_TO_SIGMA + max_shift_nm
    taps = int(np.ceil(2 * half / step)) + 1
    start = np.round((centre_nm - half - fine_nm[0]) / step).astype(np.int32)
    if start.min() < 0 or start.max() + taps > fine_nm.size:
        raise ValueError("fine grid does not cover the band responses; widen its margins")
    d = np.diff(start)
    stride = int(d[0]) if d.size and d[0] > 0 and np.all(d == d[0]) else 0
    return start, taps, stride


def windows(spectrum, tap_start, taps: int, start0: int = 0, stride: int = 0):
    """The response windows of fine-grid spectra: (..., n_fine) -> (..., bands, taps).

    With evenly spaced windows (``stride`` > 0, first start ``start0``) the windows are
    cut by reshaping and slicing, whose gradient is cheap; otherwise by gathering.
    """
    n_bands = tap_start.shape[0]
    if stride <= 0:
        return spectrum[..., tap_start[:, None] + jnp.arange(taps)[None, :]]
    nblk = -(-taps // stride)  # blocks of one stride that a window spans
    stop = start0 + stride * (n_bands + nblk)
    n = spectrum.shape[-1]
    seg = spectrum[..., start0:min(stop, n)]
    if stop > n:
        seg = jnp.pad(seg, [(0, 0)] * (seg.ndim - 1) + [(0, stop - n)])
    blocks = seg.reshape(seg.shape[:-1] + (n_bands + nblk, stride))
    frames = jnp.concatenate([blocks[..., j:j + n_bands, :] for j in range(nblk)], axis=-1)
    return frames[..., :taps]


def response(fine_windows, centre_nm, fwhm_nm, sensor: SensorParams, exponent: float = 2.0):
    """Normalised response weights (bands, taps) on the windows' wavelengths: Gaussian
    (``exponent`` 2, a static float) or ``exp(-ln2 |2 x / FWHM|**exponent)``."""
    x = fine_windows - (centre_nm + sensor.shift_nm)[:, None]
    if exponent == 2.0:
        sigma = (fwhm_nm * sensor.fwhm_scale * FWHM_TO_SIGMA)[:, None]
        w = jnp.exp(-0.5 * (x / sigma) ** 2)
    else:
        half = (0.5 * fwhm_nm * sensor.fwhm_scale)[:, None]
        w = jnp.exp(-np.log(2.0) * jnp.abs(x / half) ** exponent)
    return w / jnp.sum(w, axis=1, keepdims=True)


def band_integrate(weights, spectrum_windows):
    """Band values from response weights (bands, taps) and windows (..., bands, taps)."""
    return jnp.einsum("kt,...kt->...k", weights, spectrum_windows)


def band_moments(weights, spectrum_windows, offsets_nm, order: int = 2):
    """Moments ``sum_t w_kt s_kt d_kt**m``, m = 0..order: (..., order+1, bands).

    ``offsets_nm`` (bands, taps) are the window wavelengths less the band centres. With
    these a band value of ``s(lambda) g(lambda)``, g smooth, is ``sum_m moment_m g_m`` with
    g_m the Taylor coefficients of g at the band centre. Written as one contraction with
    the weighted powers, so that a shared response is weighted once under ``vmap``.
    """
    wd = jnp.stack([weights * offsets_nm**m for m in range(order + 1)])  # (m, bands, taps)
    return jnp.einsum("mkt,...kt->...mk", wd, spectrum_windows)


def noise_variance(signal, a, b):
    """Noise variance ``a * signal + b`` (signal clipped at 0)."""
    return a * jnp.maximum(signal, 0.0) + b


def add_noise(key: jax.Array, signal, a, b):
    """Signal plus one draw of Gaussian noise with variance ``a * signal + b``."""
    return signal + jnp.sqrt(noise_variance(signal, a, b)) * jax.random.normal(
        key, jnp.shape(signal), dtype=jnp.result_type(signal))
