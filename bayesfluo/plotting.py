"""Figures of scenes: maps of radiance, NDVI and true SIF, and sample spectra."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr

__all__ = ["plot_scene"]


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
