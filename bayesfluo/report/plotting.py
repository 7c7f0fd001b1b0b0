"""Figures of scenes: maps of radiance, NDVI and true SIF, and sample spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_scene", "plot_retrieval"]


def _band(ds: xr.Dataset, wl_nm: float) -> int:
    return int(np.argmin(np.abs(ds["wavelength"].values - wl_nm)))


def plot_scene(ds: xr.Dataset, path: str | Path | None = None, dpi: int = 110):
    """Overview figure of a simulated (or real) scene; saved as PNG when ``path`` is given.

    Panels: radiance near 755 nm, NDVI, true F760 (if present), and the spectra of the
    most and least fluorescent pixels with the O2 bands marked.
    """
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maps = [("radiance", f"radiance at {ds['wavelength'].values[_band(ds, 755.0)]:.2f} nm",
             "mW m-2 sr-1 nm-1", ds["radiance"].isel(band=_band(ds, 755.0)), "gray")]
    if "ndvi" in ds:
        maps.append(("ndvi", "NDVI", "1", ds["ndvi"], "YlGn"))
    if "true_f760" in ds:
        maps.append(("f760", "true F760", "mW m-2 sr-1 nm-1", ds["true_f760"], "viridis"))
    image = "y" in ds["radiance"].dims
    ncols = len(maps) + 1 if image else 2
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.8), constrained_layout=True)
    if image:
        for ax, (_, title, units, da, cmap) in zip(axes, maps, strict=False):
            im = ax.imshow(np.asarray(da), cmap=cmap, interpolation="nearest")
            ax.set_title(title)
            ax.set_xlabel("x (across track)")
            ax.set_ylabel("y (along track)")
            fig.colorbar(im, ax=ax, shrink=0.85, label=units)
        ax = axes[-1]
    else:
        ax0 = axes[0]
        t = ds["time"].values if "time" in ds.coords else np.arange(ds.sizes["time"])
        if "true_f760" in ds:
            ax0.plot(t, ds["true_f760"], label="true F760")
        ax0.set_title("top-of-canopy time series")
        ax0.set_ylabel("mW m-2 sr-1 nm-1")
        ax0.tick_params(axis="x", labelrotation=30)
        ax0.legend()
        ax = axes[-1]
    rad = ds["radiance"]
    flat = rad.stack(pixel=[d for d in rad.dims if d != "band"]).transpose("pixel", "band")
    wl = ds["wavelength"].values
    if "true_f760" in ds:
        f = np.asarray(ds["true_f760"]).ravel()
        picks = [("most fluorescent", int(np.nanargmax(f))),
                 ("least fluorescent", int(np.nanargmin(f)))]
    else:
        picks = [("pixel 0", 0)]
    for label, i in picks:
        ax.plot(wl, flat.values[i], lw=0.8, label=label)
    for lo, hi, name in ((686.5, 692.0, "O2-B"), (759.0, 770.0, "O2-A")):
        if wl[0] < hi and wl[-1] > lo:
            ax.axvspan(lo, hi, color="0.85", zorder=0)
            ax.text((lo + hi) / 2, ax.get_ylim()[1] * 0.97, name, ha="center", va="top")
    ax.set_xlabel(f"wavelength (nm, {ds['wavelength'].attrs.get('medium', 'air')})")
    ax.set_ylabel("radiance (mW m-2 sr-1 nm-1)")
    ax.set_title(f"spectra, {ds.attrs.get('instrument', '')}")
    ax.legend(fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return fig


def plot_retrieval(result: xr.Dataset, truth: xr.Dataset | None = None,
                   path: str | Path | None = None, dpi: int = 110):
    """Posterior maps of F760 (mean and sd), beside the truth of a simulated scene, and
    the posterior mean against truth with 90 % intervals; PNG when ``path`` is given.
    Variables the result lacks (sd, intervals, quality flag: GeoTIFF maps of chosen
    variables) are left out."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_truth = truth is not None and "true_f760" in truth
    has_sd = "f760_sd" in result
    last = "truth" if has_truth else ("flag" if "quality_flag" in result else None)
    n = int(has_truth) + 1 + int(has_sd) + int(last is not None)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 3.8), squeeze=False)
    axes = axes[0]
    mean = result["f760_mean"]
    vmax = float(np.nanpercentile(truth["true_f760"] if has_truth else mean, 99.5))
    panels = ([(truth["true_f760"], "true F760", "viridis", (0, vmax))] if has_truth else [])
    panels += [(mean, "posterior mean of F760", "viridis", (0, vmax))]
    if has_sd:
        panels += [(result["f760_sd"], "posterior sd of F760", "magma",
                    (0, float(np.nanpercentile(result["f760_sd"], 99.5))))]
    for ax, (v, title, cmap, lim) in zip(axes, panels, strict=False):
        im = ax.imshow(np.asarray(v), cmap=cmap, vmin=lim[0], vmax=lim[1],
                       interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.85, label="mW m-2 sr-1 nm-1")
    ax = axes[-1]
    if last == "truth":
        t = np.asarray(truth["true_f760"]).ravel()
        m = np.asarray(mean).ravel()
        lo_v, hi_v = (("f760_lo90", "f760_hi90") if "f760_lo90" in result
                      else ("f760_q05", "f760_q95"))
        ok = np.isfinite(m)
        if lo_v in result and hi_v in result:
            # the mean may lie outside a skewed posterior's shortest interval: bars end
            # at it
            lo = np.maximum(m - np.asarray(result[lo_v]).ravel(), 0.0)
            hi = np.maximum(np.asarray(result[hi_v]).ravel() - m, 0.0)
            ax.errorbar(t[ok], m[ok], yerr=[lo[ok], hi[ok]], fmt="o", ms=2, lw=0.4,
                        alpha=0.4, color="C0", ecolor="C0")
            ax.set_ylabel("posterior mean, 90 % interval")
        else:
            ax.plot(t[ok], m[ok], "o", ms=2, alpha=0.4, color="C0")
            ax.set_ylabel("posterior mean")
        ax.plot([0, vmax], [0, vmax], "k--", lw=0.8)
        ax.set_xlabel("true F760 (mW m-2 sr-1 nm-1)")
        ax.set_title("retrieved against truth", fontsize=10)
    elif last == "flag":
        flag = np.asarray(result["quality_flag"])
        ax.imshow(flag, cmap="tab10", vmin=0, vmax=9, interpolation="nearest")
        ax.set_title("quality flag", fontsize=10)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=dpi)
        plt.close(fig)
    return fig
