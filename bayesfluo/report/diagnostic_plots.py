"""Figures of posterior diagnostics: SBC rank histograms, coverage curves, F760 recovery,
residual spectra, and trace and rank plots of NUTS chains.

Each function takes the xarray objects of :mod:`bayesfluo.diagnostics.sbc` or
:mod:`bayesfluo.inference.nuts` and returns a matplotlib Figure (saved as PNG when ``path``
is given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from bayesfluo.diagnostics.calibration import DEFAULT_ALPHA

__all__ = ["plot_sbc_ranks", "plot_coverage", "plot_f760_recovery", "plot_residuals",
           "plot_trace_rank"]


def _plt(path):
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=110):
    if path is not None:
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return fig


def plot_sbc_ranks(ds: xr.Dataset, path: str | Path | None = None, n_bins: int = 20,
                   alpha: float = DEFAULT_ALPHA):
    """Histograms of the SBC ranks (``rank_*`` variables) with the binomial band that a
    calibrated posterior leaves with probability ``alpha`` (Bonferroni over bins)."""
    plt = _plt(path)
    names = [v for v in ds.data_vars if v.startswith("rank_")]
    n_draws = int(ds.attrs["n_rank_draws"])
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        r = ds[name].values
        n = r.size
        bins = n_bins if n >= 10 * n_bins else max(2, n // 10)
        counts = np.bincount(np.minimum(r * bins // (n_draws + 1), bins - 1), minlength=bins)
        lo = stats.binom.ppf(alpha / bins / 2, n, 1 / bins)
        hi = stats.binom.isf(alpha / bins / 2, n, 1 / bins)
        ax.axhspan(lo, hi, color="0.85")
        ax.axhline(n / bins, color="0.5", lw=0.8)
        ax.bar(np.arange(bins), counts, width=1.0, color="tab:blue", edgecolor="white")
        ax.set_title(f"{name[5:]} (n={n})", fontsize=9)
        ax.set_xticks([])
        ax.set_xlabel("rank of truth")
    axes[0][0].set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def plot_coverage(ds: xr.Dataset, path: str | Path | None = None,
                  alpha: float = DEFAULT_ALPHA):
    """Observed against nominal coverage of central intervals of F760 (pixels) and of the
    patch-mean F760, with the binomial acceptance band of the pixel curve."""
    plt = _plt(path)
    lev = ds["level"].values
    fig, ax = plt.subplots(figsize=(4.0, 3.6))
    n = ds.sizes["pixel"]
    band = [stats.binom.interval(1 - alpha / lev.size, n, q) for q in lev]
    ax.fill_between(lev, [b[0] / n for b in band], [b[1] / n for b in band], color="0.85",
                    label=f"binomial band, {n} pixels")
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8)
    ax.plot(lev, ds["hit_f760"].mean("pixel"), "o-", label="F760 per pixel")
    if "hit_patch_mean_f760" in ds:
        ax.plot(lev, ds["hit_patch_mean_f760"].mean("patch"), "s--",
                label=f"patch-mean F760 ({ds.sizes['patch']} patches)")
    ax.set_xlim(0.4, 1.0)
    ax.set_ylim(0.4, 1.0)
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_f760_recovery(ds: xr.Dataset, path: str | Path | None = None):
    """Posterior mean +- sd of F760 against truth, coloured by NDVI; and the posterior sd
    against the Cramer-Rao bound."""
    plt = _plt(path)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 3.8))
    t, m, s = ds["truth_f760"], ds["mean_f760"], ds["sd_f760"]
    a1.errorbar(t, m, yerr=s, fmt="none", ecolor="0.7", lw=0.6)
    sc = a1.scatter(t, m, c=ds["ndvi"], s=9, cmap="YlGn", vmin=0, vmax=0.9, zorder=3)
    hi = float(max(t.max(), m.max())) * 1.05
    a1.plot([0, hi], [0, hi], color="0.4", lw=0.8)
    a1.set_xlabel("true F760 (mW m-2 sr-1 nm-1)")
    a1.set_ylabel("posterior mean +- sd")
    fig.colorbar(sc, ax=a1, label="NDVI")
    if "crb_shared" in ds:
        a2.scatter(ds["crb_shared"], s, c=ds["ndvi"], s=9, cmap="YlGn", vmin=0, vmax=0.9)
        top = float(max(ds["crb_shared"].max(), s.max())) * 1.05
        a2.plot([0, top], [0, top], color="0.4", lw=0.8)
        a2.set_xlabel("Cramer-Rao bound, patch atmosphere")
        a2.set_ylabel("posterior sd of F760")
    fig.tight_layout()
    return _save(fig, path)


def plot_residuals(dt: xr.DataTree, pixels=(0,), path: str | Path | None = None):
    """Standardised posterior-predictive residuals per band of some pixels of a NUTS
    DataTree: (observed - predictive mean) / predictive sd."""
    plt = _plt(path)
    obs = dt["observed_data"]["radiance"]
    pp = dt["posterior_predictive"]["radiance"]
    mean = pp.mean(("chain", "draw"))
    sd = pp.std(("chain", "draw"))
    wl = obs["band"].values
    fig, axes = plt.subplots(2, 1, figsize=(7.5, 4.5), sharex=True)
    for i in pixels:
        axes[0].plot(wl, obs.isel(pixel=i), lw=0.8, label=f"pixel {i} observed")
        axes[0].plot(wl, mean.isel(pixel=i), lw=0.8, ls="--")
        axes[1].plot(wl, ((obs - mean) / sd).isel(pixel=i), lw=0.6)
    axes[1].axhspan(-2, 2, color="0.9")
    axes[0].set_ylabel("radiance\n(mW m-2 sr-1 nm-1)")
    axes[1].set_ylabel("standardised\nresidual")
    axes[1].set_xlabel("wavelength (nm, air)")
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_trace_rank(dt: xr.DataTree, var: str = "f760", pixel: int = 0,
                    path: str | Path | None = None):
    """Trace and rank plot (ranks of the pooled draws, histogram per chain) of one
    variable of one pixel (or of a patch-level variable of patch ``pixel``)."""
    plt = _plt(path)
    x = dt["posterior"][var]
    dim = "pixel" if "pixel" in x.dims else "patch"
    x = x.isel({dim: pixel}).values  # (chain, draw)
    n_chain, n_draw = x.shape
    ranks = stats.rankdata(x.ravel()).reshape(x.shape)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.4, 2.8))
    for c in range(n_chain):
        a1.plot(x[c], lw=0.4)
        a2.hist(ranks[c], bins=20, histtype="step", range=(0, x.size))
    a2.axhline(n_draw / 20, color="0.4", lw=0.8)
    a1.set_title(f"{var}, {dim} {pixel}: trace", fontsize=9)
    a2.set_title("rank per chain", fontsize=9)
    a1.set_xlabel("draw")
    a2.set_xlabel("rank among all draws")
    fig.tight_layout()
    return _save(fig, path)
