"""Noise of a top-of-canopy time series (FloX), estimated from the series itself.

A tower spectrometer measures the same canopy scan after scan, so what changes from one
scan to the next is mostly noise: the canopy, the light and the atmosphere change slowly,
and what changes quickly (a cloud edge, a gust) changes the whole spectrum by nearly one
factor. :func:`estimate_noise` therefore takes, for each run of three neighbouring usable
scans, the second difference along time (``x[t-1] - 2 x[t] + x[t+1]`` for evenly spaced
scans; weighted so that a linear trend cancels for uneven ones), removes from it, scan by
scan, its projection on the triple's mean spectrum and on that spectrum times a linear
tilt in wavelength (the fast, spectrally smooth change of illumination), and regresses
the squared remainder, scaled to the variance of one reading, on the level (the triple's
mean) by a robust fit: the samples (every band of every triple, pooled) are binned by
level, each bin's variance is its median squared remainder over the median of a
chi-square variable of one degree of freedom, and ``var = a L + b`` is fitted to the bins
by weighted least squares (weights 1 / var^2), twice more with the bins' medians taken
relative to the previous fit (so a bin's spread of levels does not bias it) and the
weights from it.

The irradiance is treated the same way as ``E / pi`` (the scale on which
:class:`bayesfluo.model.Patch` takes the irradiance noise, ``irradiance_noise_a`` and
``irradiance_noise_b``). The FloX table (:mod:`bayesfluo.io.flox`) holds one irradiance
reading per scan, so the change of the irradiance between two readings of one cycle
cannot be separated from its noise; :func:`estimate_noise` reports instead the typical
relative change of the irradiance between neighbouring scans.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

__all__ = ["estimate_noise", "MIN_SCANS"]

#: Usable scans a series needs for :func:`estimate_noise`.
MIN_SCANS = 20
#: Median of a chi-square variable with one degree of freedom.
_CHI2_1_MEDIAN = 0.45493642311957283
#: Largest gap between neighbouring scans of a triple, in units of the median gap.
_MAX_GAP = 3.0


def _triples(x: np.ndarray, t: np.ndarray, wl: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """High-pass remainders scaled to one reading's sd (n, B) and their levels (n, B)
    of the scans ``x`` (T, B) at times ``t`` (T,, seconds)."""
    g = np.diff(t)
    gm = float(np.median(g)) if g.size else 0.0
    g1, g2 = g[:-1], g[1:]
    ok = (g1 > 0) & (g2 > 0) & (np.maximum(g1, g2) <= _MAX_GAP * gm)
    g1, g2 = g1[ok], g2[ok]
    i = np.flatnonzero(ok) + 1
    half = (g1 + g2) / 2.0
    w = np.stack([g2 / half, -(g1 + g2) / half, g1 / half], 1)  # sums to 0
    d = w[:, 0, None] * x[i - 1] + w[:, 1, None] * x[i] + w[:, 2, None] * x[i + 1]
    level = (x[i - 1] + x[i] + x[i + 1]) / 3.0  # uncorrelated with d (the weights sum to 0)
    u = (wl - wl.mean()) / max(float(np.ptp(wl)), 1e-9)
    basis = np.stack([level, level * u], -1)  # (n, B, 2)
    gram = np.einsum("nbk,nbl->nkl", basis, basis)
    rhs = np.einsum("nbk,nb->nk", basis, d)
    coef = np.linalg.solve(gram + 1e-12 * np.eye(2) * np.trace(gram, axis1=1, axis2=2
                                                                  )[:, None, None],
                           rhs[..., None])[..., 0]
    resid = d - np.einsum("nbk,nk->nb", basis, coef)
    dof = x.shape[1] / max(x.shape[1] - 2, 1)  # the two removed directions
    return resid * np.sqrt(dof / np.sum(w**2, 1))[:, None], level


def _fit_variance(z: np.ndarray, level: np.ndarray) -> tuple[float, float]:
    """Robust ``var = a level + b`` (a, b >= 0) from remainders ``z`` with that variance."""
    z2, x = (z**2).ravel(), level.ravel()
    keep = np.isfinite(z2) & np.isfinite(x)
    z2, x = z2[keep], x[keep]
    n_bins = int(np.clip(x.size // 2000, 4, 32))
    edges = np.quantile(x, np.linspace(0.0, 1.0, n_bins + 1))
    which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    bins = [np.flatnonzero(which == k) for k in range(n_bins)]
    bins = [b for b in bins if b.size >= 50]
    if len(bins) < 2:
        raise ValueError("too few samples to fit the noise")
    xk = np.array([x[b].mean() for b in bins])
    model = np.ones_like(x)
    a = b = np.nan
    for it in range(3):
        vk = np.array([np.median(z2[k] / model[k]) * model[k].mean() for k in bins]
                      ) / _CHI2_1_MEDIAN
        # weights from the previous fit, not from the bins' own noisy values (which
        # would favour the bins that came out low)
        wk = 1.0 / np.maximum(vk if it == 0 else a * xk + b, 1e-300) ** 2
        a, b = _wls_nonneg(xk, vk, wk)
        model = np.maximum(a * x + b, 1e-300)
    return float(a), float(b)


def _wls_nonneg(x: np.ndarray, v: np.ndarray, w: np.ndarray) -> tuple[float, float]:
    """Weighted least squares ``v = a x + b`` with a, b >= 0."""
    sw, sx, sv = w.sum(), (w * x).sum(), (w * v).sum()
    sxx, sxv = (w * x * x).sum(), (w * x * v).sum()
    det = sw * sxx - sx * sx
    if det > 0:
        a, b = (sw * sxv - sx * sv) / det, (sxx * sv - sx * sxv) / det
        if a >= 0 and b >= 0:
            return a, b
    a0 = max(sxv / sxx, 0.0) if sxx > 0 else 0.0  # b = 0
    b0 = max(sv / sw, 0.0)  # a = 0
    cost = [((w * (v - a0 * x) ** 2).sum(), a0, 0.0), ((w * (v - b0) ** 2).sum(), 0.0, b0)]
    _, a, b = min(cost)
    return a, b


def estimate_noise(scene: xr.Dataset, min_scans: int = MIN_SCANS) -> dict:
    """The noise of a top-of-canopy time series, from the series (module docstring).

    Parameters
    ----------
    scene : xarray.Dataset
        ``radiance`` and ``irradiance`` over (time, band) (mW m-2 sr-1 nm-1 and
        mW m-2 nm-1), ``time``, ``wavelength``; optionally ``mask``.
    min_scans : int
        Usable scans needed (mask 1, radiance and irradiance finite, irradiance
        positive).

    Returns
    -------
    dict
        ``noise_a``, ``noise_b``: radiance noise variance ``a L + b``
        ((mW m-2 sr-1 nm-1)^2); ``irradiance_noise_a``, ``irradiance_noise_b``: the same
        for ``E / pi``; ``radiance_mean`` and ``radiance_sd_at_mean`` (the sd of the
        model at the mean radiance), ``irradiance_mean`` and ``irradiance_sd_at_mean``
        (of ``E``, mW m-2 nm-1); ``irradiance_change_between_scans`` (median relative
        change of the band-mean irradiance from one usable scan to the next);
        ``irradiance_readings`` (1); ``n_scans``, ``n_triples``, ``n_bands``;
        ``method`` (a sentence).

    Raises
    ------
    ValueError
        If the scene is not such a series, has fewer than ``min_scans`` usable scans, or
        the estimate is not finite and positive.
    """
    if "irradiance" not in scene or tuple(scene["radiance"].dims) != ("time", "band"):
        raise ValueError("not a top-of-canopy time series (radiance and irradiance over "
                         "(time, band))")
    rad = np.asarray(scene["radiance"].values, np.float64)
    irr = np.asarray(scene["irradiance"].transpose("time", "band").values, np.float64)
    wl = np.asarray(scene["wavelength"].values, np.float64)
    t = np.asarray(scene["time"].values)
    t = ((t - t[0]) / np.timedelta64(1, "ms")).astype(np.float64) / 1e3 \
        if np.issubdtype(t.dtype, np.datetime64) else np.arange(t.size, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        ok = np.all(np.isfinite(rad), 1) & np.all(np.isfinite(irr) & (irr > 0), 1)
    if "mask" in scene:
        ok &= np.asarray(scene["mask"].values) > 0
    n = int(ok.sum())
    if n < min_scans:
        raise ValueError(f"only {n} usable scans; an estimate needs at least {min_scans}")
    rad, irr, t = rad[ok], irr[ok] / np.pi, t[ok]
    out: dict = {}
    with np.errstate(all="ignore"):
        for name, x, prefix in (("radiance", rad, "noise"), ("irradiance", irr,
                                                               "irradiance_noise")):
            z, level = _triples(x, t, wl)
            if z.shape[0] < min_scans - 2:
                raise ValueError(f"only {z.shape[0]} runs of three evenly spaced usable "
                                 f"scans; an estimate needs at least {min_scans - 2}")
            a, b = _fit_variance(z, level)
            mean = float(np.mean(x))
            var_mean = a * mean + b
            if not (np.isfinite(a) and np.isfinite(b) and var_mean > 0):
                raise ValueError(f"the {name} noise estimate is not finite and positive "
                                 f"(a = {a:.3g}, b = {b:.3g})")
            b = max(b, 1e-3 * var_mean)  # a floor: no band without noise
            out[f"{prefix}_a"], out[f"{prefix}_b"] = float(a), float(b)
            scale = 1.0 if name == "radiance" else np.pi
            out[f"{name}_mean"] = mean * scale
            out[f"{name}_sd_at_mean"] = float(np.sqrt(a * mean + b)) * scale
        band_mean = irr.mean(1)
        change = np.abs(np.diff(band_mean)) / band_mean[:-1]
    out.update(irradiance_change_between_scans=float(np.median(change)),
               irradiance_readings=1, n_scans=n, n_triples=int(z.shape[0]),
               n_bands=int(wl.size),
               method=(f"second differences along time of {int(z.shape[0])} runs of three "
                       f"neighbouring scans, {wl.size} bands, the fast smooth change of "
                       "illumination removed; var = a L + b fitted robustly to the "
                       "binned median squares"))
    return out
