"""Figures of the HTML report (:mod:`bayesfluo.report.html`) that the other plotting modules
do not draw: error and flag maps of a retrieval, spectral fits of sample pixels at the
guide's posterior mean, convergence histograms, guide-versus-NUTS scatter, rank ECDFs
with simultaneous bands, and the training loss curve.

Every function returns a matplotlib Figure; nothing is written to disk here.
Units: wavelength nm, radiance and F760 mW m-2 sr-1 nm-1.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import xarray as xr

if TYPE_CHECKING:
    from bayesfluo.retrieval.chunk import RetrieveOptions

__all__ = ["plot_error_maps", "posterior_mean_fit", "plot_spectral_fit",
           "plot_convergence", "plot_guide_vs_nuts", "plot_rank_ecdf",
           "plot_coverage_levels", "plot_training", "pick_pixels", "plot_f760_series",
           "plot_sif_series", "plot_two_peaks"]


def _plt():
    import matplotlib.pyplot as plt

    return plt


def pick_pixels(result: xr.Dataset, n: int = 3) -> list[tuple[int, int]]:
    """Sample pixels (y, x) of a retrieval with usable input: the highest, the median and
    the lowest posterior mean of F760 (the ends of the range and its middle)."""
    m = result["f760_mean"].values
    ok = np.isfinite(m)
    if "quality_flag" in result:
        ok &= (result["quality_flag"].values.astype(int) & 1) == 0
    if not ok.any():
        return []
    idx = np.flatnonzero(ok.ravel())
    order = idx[np.argsort(m.ravel()[idx])]
    picks = [order[-1], order[order.size // 2], order[0]][:n]
    out = []
    for i in picks:
        yx = tuple(int(v) for v in np.unravel_index(i, m.shape))
        if yx not in out:
            out.append(yx)
    return out


def _map_row(panels: list, lines: dict[int, float] | None = None):
    """One row of maps: each panel ``(values, title, cmap, (vmin, vmax), units)`` with its
    colour bar; ``lines`` {panel index: value} marks a value on that panel's bar."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(3.9 * len(panels), 3.4), squeeze=False)
    for i, (ax, (v, title, cmap, lim, units)) in enumerate(zip(axes[0], panels,
                                                               strict=True)):
        im = ax.imshow(v, cmap=cmap, vmin=lim[0], vmax=lim[1], interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        cb = fig.colorbar(im, ax=ax, shrink=0.85, label=units)
        if lines and i in lines:
            cb.ax.axhline(lines[i], color="k", lw=1)
    fig.tight_layout()
    return fig


def plot_error_maps(result: xr.Dataset, scene: xr.Dataset | None = None):
    """Maps of the quality flag and ``fit_chi2`` and, with a scene's truth, of the error
    of the posterior mean (mean - truth, mW m-2 sr-1 nm-1) and the standardised error
    (mean - truth) / sd; each panel where its variables are there (``None`` when none
    is, e.g. GeoTIFF maps of the mean alone)."""
    panels = []
    if scene is not None and "true_f760" in scene:
        err = result["f760_mean"].values - scene["true_f760"].values
        lim = float(np.nanpercentile(np.abs(err), 99)) or 1.0
        panels.append((err, "posterior mean - true F760", "RdBu_r", (-lim, lim),
                       "mW m-2 sr-1 nm-1"))
        if "f760_sd" in result:
            z = err / result["f760_sd"].values
            panels.append((z, "(mean - truth) / sd", "RdBu_r", (-4, 4), "1"))
    if "fit_chi2" in result:
        c2 = result["fit_chi2"].values
        panels.append((np.log10(c2), "log10 fit_chi2 (reduced chi-square)", "magma",
                       (float(np.nanmin(np.log10(c2))), float(np.nanmax(np.log10(c2)))), "1"))
    if "quality_flag" in result:
        panels.append((result["quality_flag"].values.astype(float), "quality_flag (bits)",
                       "tab10", (0, 9), "1"))
    if not panels:
        return None
    return _map_row(panels)


def plot_two_peaks(result: xr.Dataset, scene: xr.Dataset | None = None):
    """Maps of the red peak beside the far-red one (windows with the O2-B band): F687's
    posterior mean (and its truth where the scene has it), F687's posterior mean over
    its sd (where it is below 2, F687 is not told apart from zero: the red peak is
    weaker and the O2-B band narrower than the O2-A), the red peak's posterior
    contraction (``sif_red_contraction``: near 0 the red peak is the prior's, the data
    did not pin it; F687 there rests on the far-red peak's tail and the NDVI-scaled
    prior), and the posterior correlation of F687 and F760 (``f687_f760_corr``).
    ``None`` without ``f687_mean``."""
    if "f687_mean" not in result:
        return None
    lines = {}
    m = result["f687_mean"].values
    hi = float(np.nanpercentile(m, 99)) if np.isfinite(m).any() else 1.0
    panels = [(m, "F687 posterior mean", "viridis", (0.0, hi or 1.0), "mW m-2 sr-1 nm-1")]
    if scene is not None and "true_f687" in scene:
        panels.append((scene["true_f687"].values, "true F687", "viridis", (0.0, hi or 1.0),
                       "mW m-2 sr-1 nm-1"))
    if "f687_sd" in result:
        with np.errstate(divide="ignore", invalid="ignore"):
            snr = m / result["f687_sd"].values
        lines = {len(panels): 2.0}
        panels.append((snr, "F687 mean / sd (< 2: not told from 0)", "cividis", (0.0, 6.0),
                       "1"))
    if "sif_red_contraction" in result:
        panels.append((result["sif_red_contraction"].values,
                       "red peak: data's share (1 - post./prior var.)", "magma", (0.0, 1.0),
                       "1"))
    if "f687_f760_corr" in result:
        panels.append((result["f687_f760_corr"].values, "correlation of F687 and F760",
                       "RdBu_r", (-1.0, 1.0), "1"))
    return _map_row(panels, lines)


def plot_f760_series(time, mean, lower=None, upper=None, truth=None,
                     title: str = "F760 posterior"):
    """F760 of a top-of-canopy time series (a tower such as FloX) against time: the
    posterior mean, its 90 % interval as a band (where ``lower`` and ``upper`` are
    given) and the truth of a simulated scene (where given).

    Parameters
    ----------
    time : array-like
        (T,) times (datetime64) or time-step indices.
    mean : array-like
        (T,) posterior mean of F760, mW m-2 sr-1 nm-1.
    lower, upper : array-like, optional
        (T,) ends of the 90 % interval.
    truth : array-like, optional
        (T,) true F760.
    title : str
        Title of the axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    return plot_sif_series(time, {"F760": (mean, lower, upper, truth)}, None, title)


def plot_sif_series(time, panels: dict, irradiance=None, title: str = "retrieval"):
    """SIF of a top-of-canopy time series against time, one panel per quantity (F760,
    F687, ...): posterior mean, 90 % interval as a band, the truth of a simulated series
    where given; the measured irradiance beside them (a last panel), so that what the
    SIF follows (light, clouds) can be seen.

    Parameters
    ----------
    time : array-like
        (T,) times (datetime64) or time-step indices.
    panels : dict
        ``{label: (mean, lower, upper, truth)}`` (each (T,) or None but ``mean``), in
        mW m-2 sr-1 nm-1.
    irradiance : array-like, optional
        (T,) measured downwelling irradiance (mW m-2 nm-1; e.g. near 750 nm).
    title : str

    Returns
    -------
    matplotlib.figure.Figure
    """
    plt = _plt()
    t = np.asarray(time)
    order = np.argsort(t, kind="stable")
    t = t[order]
    n = len(panels) + (irradiance is not None)
    fig, axes = plt.subplots(n, 1, figsize=(8.0, 2.4 * n + 0.6), sharex=True, squeeze=False)
    axes = axes[:, 0]
    marker = "o" if t.size <= 60 else None
    for ax, (label, (mean, lo, hi, truth)) in zip(axes, panels.items(), strict=False):
        if lo is not None and hi is not None:
            ax.fill_between(t, np.asarray(lo, float)[order], np.asarray(hi, float)[order],
                            color="C0", alpha=0.25, lw=0, label="90 % interval")
        ax.plot(t, np.asarray(mean, float)[order], color="C0", marker=marker, ms=3, lw=1.0,
                label="posterior mean")
        if truth is not None:
            ax.plot(t, np.asarray(truth, float)[order], color="k", ls="--", marker=marker,
                    ms=3, lw=0.8, label="truth")
        ax.set_ylabel(f"{label}\n(mW m-2 sr-1 nm-1)", fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    if irradiance is not None:
        ax = axes[-1]
        ax.plot(t, np.asarray(irradiance, float)[order], color="C1", lw=1.0)
        ax.set_ylabel("irradiance 750 nm\n(mW m-2 nm-1)", fontsize=8)
    axes[0].set_title(title, fontsize=9)
    axes[-1].set_xlabel("time" if np.issubdtype(t.dtype, np.datetime64) else "time step")
    axes[-1].tick_params(axis="x", labelrotation=30)
    fig.tight_layout()
    return fig


def posterior_mean_fit(scene: xr.Dataset, guide, pixels: list[tuple[int, int]],
                       options: RetrieveOptions | None = None) -> dict:
    """Radiance of sample pixels predicted at the guide's posterior mean, by the
    retrieval's own route: each pixel's chunk read as the retrieval reads it
    (:func:`bayesfluo.retrieval.chunk.chunk_inputs`), the guide's posterior of the chunk
    (refined where the retrieval was), and the radiance the fit check compares with the
    data (:func:`bayesfluo.inference.guide.predicted_radiance`: the patch's exact band
    operator at the posterior mean of its atmosphere, the pixel's reflectance and SIF at
    their posterior means). With the retrieval's options, what its fit check saw (a
    refined posterior can depend on how the patches were batched, so pass its
    ``chunk_pixels`` too).

    Parameters
    ----------
    scene : xarray.Dataset
        The retrieved scene (y, x, band).
    guide : AmortizedGuide
        The model that made the retrieval.
    pixels : list of (y, x)
    options : RetrieveOptions, optional
        The retrieval's options (``refine``, ``refine_batch``, ``chunk_pixels``; default
        :class:`~bayesfluo.retrieval.chunk.RetrieveOptions`).

    Returns
    -------
    dict
        ``wavelength`` (B,) nm; ``observed``, ``predicted``, ``noise_sd`` (n, B)
        mW m-2 sr-1 nm-1 (the model's noise at the prediction); ``pixels``.
    """
    from bayesfluo.retrieval.chunk import (
        RetrieveOptions,
        Retriever,
        chunk_inputs,
        plan_retrieval,
    )

    r = Retriever(guide)
    opt = dataclasses.replace(options or RetrieveOptions(), quality=True)
    plan = plan_retrieval(scene, guide, opt, r.fm)
    r = r.on_grid(plan.bands)  # a scene on its own band grid: the model on its bands
    where = [plan.locate(y, x) for y, x in pixels]
    chunks = {}
    for pr0 in sorted({w[0] for w in where}):  # only the chunks of the pixels
        d = chunk_inputs(scene, pr0, plan, r, opt)
        q, _, _, _ = r.chunk_maps(d, opt.ood_sigma, opt.min_patch_pixels,
                                  opt.refine_batch if opt.refine else None)
        p = d.patches
        pred = r.predict(q, p)
        var = jax.vmap(r.model.noise_variance)(pred, p.noise_a, p.noise_b)
        chunks[pr0] = jax.device_get((p.radiance, pred, jnp.sqrt(var)))
    obs, pred, sd = ([chunks[pr0][i][n, j] for pr0, n, j in where] for i in range(3))
    return dict(wavelength=np.asarray(r.fm.band_centre_nm), observed=np.array(obs),
                predicted=np.array(pred), noise_sd=np.array(sd), pixels=list(pixels))


def plot_spectral_fit(fit: dict, labels: list[str] | None = None):
    """Observed radiance and the posterior-mean prediction of sample pixels (top) and the
    residual in units of the noise sd (bottom, grey band +-2)."""
    plt = _plt()
    wl = fit["wavelength"]
    fig, axes = plt.subplots(2, 1, figsize=(8.0, 4.8), sharex=True,
                             gridspec_kw={"height_ratios": [2, 1]})
    for i, (y, x) in enumerate(fit["pixels"]):
        lab = labels[i] if labels else f"pixel y={y}, x={x}"
        axes[0].plot(wl, fit["observed"][i], lw=0.8, color=f"C{i}", label=f"{lab} observed")
        axes[0].plot(wl, fit["predicted"][i], lw=0.8, ls="--", color=f"C{i}")
        z = (fit["observed"][i] - fit["predicted"][i]) / fit["noise_sd"][i]
        axes[1].plot(wl, z, lw=0.6, color=f"C{i}",
                     label=f"rms {np.sqrt(np.mean(z ** 2)):.2f}")
    axes[1].axhspan(-2, 2, color="0.9", zorder=0)
    axes[0].set_ylabel("radiance\n(mW m-2 sr-1 nm-1)")
    axes[0].set_title("observed (solid) and predicted at the posterior mean (dashed)",
                      fontsize=9)
    axes[1].set_ylabel("residual /\nnoise sd")
    axes[1].set_xlabel("wavelength (nm)")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7, ncol=3)
    fig.tight_layout()
    return fig


def plot_convergence(conv: xr.Dataset, rhat_max: float = 1.01, ess_min: float = 400):
    """Histograms of per-pixel split R-hat (of F760 and the worst over the pixel's and its
    patch's latents) and bulk and tail ESS of F760, with the thresholds; those with no
    finite value are left out (``None`` when none is left)."""
    plt = _plt()
    panels = [(v, t) for v, t in (("r_hat", rhat_max), ("r_hat_max", rhat_max),
                                  ("ess_bulk", ess_min), ("ess_tail", ess_min))
              if v in conv and np.isfinite(conv[v].values).any()]  # R-hat: NaN, 1 chain
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (v, thr) in zip(axes[0], panels, strict=True):
        x = np.asarray(conv[v].values, float)
        x = x[np.isfinite(x)]
        ax.hist(x, bins=min(30, max(5, x.size // 4)), color="tab:blue", edgecolor="white")
        ax.axvline(thr, color="tab:red", lw=1.0)
        bad = np.mean(x > thr) if v.startswith("r_hat") else np.mean(x < thr)
        ax.set_title(f"{v}: {bad:.0%} of {x.size} beyond {thr:g}", fontsize=8)
        ax.set_xlabel(v)
    axes[0][0].set_ylabel("pixels")
    fig.tight_layout()
    return fig


def plot_guide_vs_nuts(cmp: xr.Dataset):
    """Guide against NUTS for F760 on the same pixels: posterior means (with the NUTS sd)
    and posterior sds, coloured by NDVI (the output of
    :func:`bayesfluo.diagnostics.guide_check.compare_with_nuts`)."""
    plt = _plt()
    fig, ax = plt.subplots(1, 2, figsize=(9.0, 3.8))
    ax[0].errorbar(cmp.nuts_mean, cmp.guide_mean, xerr=cmp.nuts_sd, fmt="none", lw=0.3,
                   ecolor="0.6")
    sc = ax[0].scatter(cmp.nuts_mean, cmp.guide_mean, c=cmp.ndvi, s=7, cmap="YlGn",
                       vmin=0, vmax=0.9, zorder=3)
    m = float(max(cmp.nuts_mean.max(), cmp.guide_mean.max())) * 1.05
    ax[0].plot([0, m], [0, m], "k--", lw=0.8)
    ax[0].set_xlabel("NUTS posterior mean of F760 (+- sd)")
    ax[0].set_ylabel("guide posterior mean")
    ax[0].set_title(f"median |guide - NUTS| / sd_NUTS = "
                    f"{float(np.median(np.abs(cmp.z))):.2f}", fontsize=9)
    ax[1].scatter(cmp.nuts_sd, cmp.guide_sd, c=cmp.ndvi, s=7, cmap="YlGn", vmin=0, vmax=0.9)
    mm = float(max(cmp.nuts_sd.max(), cmp.guide_sd.max())) * 1.05
    ax[1].plot([0, mm], [0, mm], "k--", lw=0.8)
    ax[1].set_xlabel("NUTS posterior sd of F760")
    ax[1].set_ylabel("guide posterior sd")
    ax[1].set_title(f"median sd ratio = {float(np.median(cmp.sd_ratio)):.2f}", fontsize=9)
    fig.colorbar(sc, ax=ax, label="NDVI", shrink=0.85)
    return fig


def plot_rank_ecdf(ranks: dict[str, np.ndarray], n_draws: int, ci_prob: float = 0.99,
                   seed: int = 0):
    """ECDF difference plot of SBC ranks (or of any probability integral transform):
    ECDF of ``(rank + 0.5) / (n_draws + 1)`` minus the uniform CDF, with the simultaneous
    ``ci_prob`` band of a uniform sample of the same size (arviz-stats' simulation method,
    Säilynoja et al. 2022; seeded)."""
    from arviz_stats.ecdf_utils import ecdf_pit

    plt = _plt()
    names = list(ranks)
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 2.8), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes[0], names, strict=True):
        u = (np.asarray(ranks[name], float) + 0.5) / (n_draws + 1)
        x, ecdf, lo, hi = ecdf_pit(u, ci_prob, 1000, rng=np.random.default_rng(seed))
        inside = bool(np.all((ecdf >= lo - 1e-12) & (ecdf <= hi + 1e-12)))
        ax.fill_between(x, lo - x, hi - x, color="0.85", step="post",
                        label=f"{ci_prob:.0%} simultaneous band")
        ax.step(x, ecdf - x, where="post", color="tab:blue" if inside else "tab:red")
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(f"{name} (n={u.size}){'' if inside else ': outside'}", fontsize=8)
        ax.set_xlabel("fractional rank of truth")
    axes[0][0].set_ylabel("ECDF - uniform")
    axes[0][0].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    return fig


def plot_coverage_levels(levels, observed, bands, n: int, label: str):
    """Observed against nominal coverage of central intervals with a binomial band
    (``bands``: (lower, upper) per level, fractions)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.0, 3.6))
    lo, hi = np.array(bands).T
    ax.fill_between(levels, lo, hi, color="0.85", label=f"binomial band, {n} pixels")
    ax.plot([0, 1], [0, 1], color="0.5", lw=0.8)
    ax.plot(levels, observed, "o-", label=label)
    ax.set_xlim(min(0.4, min(levels)), 1.0)
    ax.set_ylim(min(0.4, float(np.min(observed)) - 0.05), 1.0)
    ax.set_xlabel("nominal coverage of central interval")
    ax.set_ylabel("observed coverage")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_training(history: pd.DataFrame):
    """Training loss (per step, with a running median over 1 % of the steps) and gradient
    norm, one colour per phase (pre-training, fine-tuning)."""
    plt = _plt()
    cols = [c for c in ("loss", "grad_norm") if c in history]
    fig, axes = plt.subplots(1, len(cols), figsize=(4.6 * len(cols), 3.2), squeeze=False)
    phases = history["phase"].unique() if "phase" in history else [None]
    x0 = 0
    for i, ph in enumerate(phases):
        h = history[history["phase"] == ph] if ph is not None else history
        steps = np.arange(len(h)) + x0
        for ax, c in zip(axes[0], cols, strict=True):
            v = h[c].to_numpy(float)
            w = max(1, len(v) // 100)
            ax.plot(steps, v, lw=0.3, alpha=0.35, color=f"C{i}")
            ax.plot(steps, pd.Series(v).rolling(w, min_periods=1).median(), lw=1.2,
                    color=f"C{i}", label=str(ph))
        x0 += len(h)
    for ax, c in zip(axes[0], cols, strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(c)
        if c == "grad_norm":
            ax.set_yscale("log")
        else:
            v = history[c].to_numpy(float)
            lo, hi = np.nanpercentile(v, [0.5, 99.5])
            ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
