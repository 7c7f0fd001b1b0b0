"""``bayesfluo report``: one self-contained HTML file of a run's diagnostics.

A run is one of three files, told apart by their content:

- a **retrieval** result (``bayesfluo retrieve`` / ``demo``: ``f760_mean`` ... over y, x,
  or over time for a tower), as netCDF, Zarr or GeoTIFF maps (``.tif``: only the maps
  written, without the result's attributes; the report says what is missing);
- a **NUTS** reference run (``bayesfluo nuts``: a DataTree with a ``posterior`` group);
- a **validation** run (:func:`bayesfluo.diagnostics.sbc.validate`, as committed in
  ``docs/validation/<instrument>_validation.nc``: SBC ranks and interval hits per pixel).

Sections, each present when its inputs are: summary table of checks against stated
thresholds; F760 mean and sd maps (truth and error with a simulated scene), or for a
top-of-canopy time series (FloX) the F760 mean and 90 % interval against time; spectral fits
and residuals of sample pixels (retrieval with its scene and model; NUTS from its
posterior predictive); NUTS diagnostics (R-hat, ESS, divergences, trace and rank plots);
guide versus NUTS (a validation run with a model, or a NUTS run with its scene and a
model); calibration (rank ECDF with simultaneous bands, coverage curve) where truth is
known; the model's training loss curve.

Figures are PNG embedded as base64 ``data:`` URIs and the style sheet is inline: the file
opens anywhere without network or neighbouring files. It is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr
from scipy import stats

from bayesfluo import __version__

__all__ = ["write_report", "run_kind", "Check", "THRESHOLDS"]

#: Thresholds of the summary table (stated in the report beside each check)
THRESHOLDS = dict(
    coverage90=(0.85, 0.95),     # 90 % intervals: observed coverage (or the binomial band)
    rhat_max=1.01,               # split R-hat
    ess_min=400.0,               # bulk ESS of F760
    z_median_max=0.25,           # guide vs NUTS: median |mean_g - mean_N| / sd_N
    sd_ratio=(0.8, 1.25),        # guide vs NUTS: median sd_g / sd_N
    flagged_max=0.05,            # fraction of usable pixels flagged poor_fit or OOD
    rmse_max=0.2,                # FLEX accuracy requirement, mW m-2 sr-1 nm-1
    alpha=1e-4,                  # false-failure rate of the binomial tests
)

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;padding-top:.6em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3;text-align:left}.pass{background:#dff3df}.fail{background:#f8d7d7}
.info{background:#eef}.note{color:#754}figure{margin:.8em 0}figcaption{font-size:.85em;color:#444}
img{max-width:100%;height:auto}.meta{font-size:.85em;color:#555}
"""


@dataclass
class Check:
    """One row of the summary table."""

    name: str
    value: str
    threshold: str
    status: str   # "pass", "fail" or "info"


@dataclass
class _Section:
    key: str
    title: str
    parts: list[str] = field(default_factory=list)
    n_figures: int = 0

    def text(self, s: str) -> None:
        self.parts.append(f"<p>{s}</p>")

    def figure(self, fig, caption: str) -> None:
        import matplotlib.pyplot as plt

        if fig is None:  # nothing to draw (the run lacks what the figure shows)
            return
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode("ascii")
        self.n_figures += 1
        self.parts.append(
            f'<figure id="fig-{self.key}-{self.n_figures}"><img alt="{html.escape(caption)}" '
            f'src="data:image/png;base64,{data}"><figcaption>{html.escape(caption)}'
            "</figcaption></figure>")


def run_kind(run: xr.Dataset | xr.DataTree) -> str:
    """``"retrieval"``, ``"nuts"`` or ``"validation"`` for an opened run file.

    Raises
    ------
    ValueError
        If it is none of them.
    """
    if isinstance(run, xr.DataTree):
        if "posterior" in run.children:
            return "nuts"
        run = run.to_dataset()
    if "f760_mean" in run:
        return "retrieval"
    if "hit_f760" in run and any(v.startswith("rank_") for v in run.data_vars):
        return "validation"
    raise ValueError("not a bayesfluo run: expected a retrieval result (f760_mean), a NUTS "
                     "DataTree (posterior group) or a validation run (rank_*, hit_f760)")


_TIFF = (".tif", ".tiff")


def _open_geotiff(path: Path) -> xr.Dataset:
    """A retrieval's GeoTIFF maps as a Dataset over (y, x), one variable per band (named
    by the band descriptions :func:`bayesfluo.io.writers.write_geotiff` writes). With
    ``--separate-maps`` the maps are ``<stem>_<variable>.tif``: given ``<stem>.tif`` that
    does not exist, those files are read together."""
    import rioxarray

    files = [path] if path.is_file() else sorted(
        path.parent.glob(f"{path.stem}_*{path.suffix}"))
    if not files:
        raise FileNotFoundError(f"no run file at {path} (nor maps {path.stem}_*"
                                f"{path.suffix} beside it)")
    out = xr.Dataset()
    for f in files:
        try:
            da = rioxarray.open_rasterio(f, masked=True).load()
        except Exception as err:  # rasterio raises its own error classes
            raise ValueError(f"cannot read {f} as GeoTIFF: {err}") from err
        names = da.attrs.get("long_name")
        names = (names,) if isinstance(names, str) else tuple(names or ())
        if len(names) != da.sizes["band"]:
            raise ValueError(f"{f}: its bands carry no variable names (band "
                             "descriptions); not a bayesfluo result")
        for i, name in enumerate(names):
            v = da.isel(band=i, drop=True).drop_vars("spatial_ref", errors="ignore")
            v.attrs = {}
            if name == "quality_flag":
                # flags are written as float32 (nodata NaN): back to integer bits; a
                # missing value counts as masked input
                v = v.fillna(1).astype(np.int32)
            out[str(name)] = v
    out.attrs["format"] = "GeoTIFF"
    return out


def _open_run(path: Path):
    if path.suffix.lower() in _TIFF:
        return _open_geotiff(path)
    zarr = path.suffix == ".zarr" and path.is_dir()
    if not (path.is_file() or zarr):
        raise FileNotFoundError(f"no run file at {path}")
    try:
        dt = xr.open_datatree(path, engine="zarr") if zarr else xr.open_datatree(path)
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"cannot read {path} as {'Zarr' if zarr else 'netCDF'}: {err}"
                         ) from err
    if "posterior" in dt.children:
        return dt.load()
    return dt.to_dataset().load()


def _find_scene(run, run_path: Path, scene, reader_kwargs: dict | None = None
                ) -> tuple[xr.Dataset | None, str]:
    """The run's scene, read by :func:`bayesfluo.io.readers.open_scene` (any format the
    commands read: a FloX CSV as well as netCDF), and where it came from."""
    if isinstance(scene, xr.Dataset):
        return scene, "given"
    from bayesfluo.io.readers import open_scene

    if scene is not None:
        return open_scene(scene, **(reader_kwargs or {})).load(), str(scene)
    name = str(run.attrs.get("input", ""))
    for cand in (Path(name), run_path.parent / Path(name).name) if name else ():
        if cand.exists():
            try:
                found = open_scene(cand, **(reader_kwargs or {})).load()
            except ValueError as err:  # not asked for by name: report without it
                return None, (f"none: {cand}, named by the run's 'input' attribute, cannot "
                              f"be read ({err}); give --scene (and --geometry)")
            return found, f"{cand} (named by the run's 'input' attribute)"
    return None, ""


def _find_model(run, kind: str, model) -> tuple[Path | None, str]:
    from bayesfluo.shipped import resolve_model
    if model is not None:
        p = resolve_model(model)
        return p, str(p)
    if kind == "retrieval" and run.attrs.get("model"):
        try:
            p = resolve_model(str(run.attrs["model"]))
        except FileNotFoundError:
            return None, ""
        return p, f"{p} (named by the run's 'model' attribute)"
    return None, ""


def _fmt(x: float, d: int = 3) -> str:
    return f"{x:.{d}f}"


def _coverage_check(hits: np.ndarray, name: str, alpha: float) -> Check:
    n = hits.size
    lo = stats.binom.ppf(alpha / 2, n, 0.9) / n
    hi = stats.binom.isf(alpha / 2, n, 0.9) / n
    obs = float(np.mean(hits))
    a, b = THRESHOLDS["coverage90"]
    ok = (a <= obs <= b) or (lo <= obs <= hi)
    return Check(name, f"{obs:.1%} of {n}",
                 f"in [{a:.0%}, {b:.0%}] or in the binomial band [{lo:.1%}, {hi:.1%}] "
                 f"(false-failure rate {alpha:g})", "pass" if ok else "fail")


def _convergence_checks(conv: xr.Dataset, divergences: int) -> list[Check]:
    r, e = THRESHOLDS["rhat_max"], THRESHOLDS["ess_min"]
    out = []
    for v, label in (("r_hat", "split R-hat of F760"),
                     ("r_hat_max", "worst R-hat of the pixel's and its patch's latents")):
        if v in conv:
            x = conv[v].values
            if not np.isfinite(x).any():
                out.append(Check(label, f"undefined on all {x.size} pixels (one chain?)",
                                 f"<= {r} on every pixel", "fail"))
                continue
            out.append(Check(label, f"max {np.nanmax(x):.4f}; {np.mean(x <= r):.1%} of "
                             f"{x.size} pixels <= {r}", f"<= {r} on every pixel",
                             "pass" if np.all(x <= r) else "fail"))
    if "ess_bulk" in conv:
        x = conv["ess_bulk"].values
        out.append(Check("bulk ESS of F760", f"min {np.nanmin(x):.0f}, median "
                         f"{np.nanmedian(x):.0f}; {np.mean(x >= e):.1%} of pixels >= {e:.0f}",
                         f">= {e:.0f} on every pixel", "pass" if np.all(x >= e) else "fail"))
    out.append(Check("divergent transitions", str(divergences), "0",
                     "pass" if divergences == 0 else "fail"))
    return out


def _guide_checks(cmp: xr.Dataset) -> list[Check]:
    z = float(np.median(np.abs(cmp["z"].values)))
    s = float(np.median(cmp["sd_ratio"].values))
    zmax, (a, b) = THRESHOLDS["z_median_max"], THRESHOLDS["sd_ratio"]
    return [Check("guide vs NUTS: median |mean_guide - mean_NUTS| / sd_NUTS", _fmt(z, 2),
                  f"<= {zmax}", "pass" if z <= zmax else "fail"),
            Check("guide vs NUTS: median sd_guide / sd_NUTS", _fmt(s, 2), f"in [{a}, {b}]",
                  "pass" if a <= s <= b else "fail")]


def _history(model_dir: Path | None):
    import pandas as pd
    if model_dir is None or not (model_dir / "history.csv").is_file():
        return None
    return pd.read_csv(model_dir / "history.csv")


# --- sections ---------------------------------------------------------------------------

#: Variables of a retrieval result the report uses beyond ``f760_mean``
_RETRIEVAL_VARS = ("f760_sd", "f760_q05", "f760_q95", "quality_flag", "fit_chi2",
                   "f760_draws")


def _interval_vars(res) -> tuple[str, str] | None:
    for lo, hi in (("f760_lo90", "f760_hi90"), ("f760_q05", "f760_q95")):
        if lo in res and hi in res:
            return lo, hi
    return None


def _is_series(da: xr.DataArray) -> bool:
    """Whether a per-pixel variable is a top-of-canopy time series (no (y, x) image)."""
    return "y" not in da.dims or "x" not in da.dims


def _retrieval_sections(res: xr.Dataset, scene, model_dir, checks, secs,
                        notes: list[str]) -> None:
    from bayesfluo.report.figures import (
        pick_pixels,
        plot_error_maps,
        plot_sif_series,
        plot_spectral_fit,
        plot_two_peaks,
        posterior_mean_fit,
    )
    from bayesfluo.report.plotting import plot_retrieval
    from bayesfluo.retrieval.api import QUALITY_FLAGS

    missing = [v for v in _RETRIEVAL_VARS if v not in res]
    if res.attrs.get("format") == "GeoTIFF":
        ask = [w for w, have in (("--scene", scene is not None),
                                 ("--model", model_dir is not None)) if not have]
        notes.append("GeoTIFF maps: " + ", ".join(res.data_vars) + "."
                     + (f" Not in them: {', '.join(missing)}." if missing else "")
                     + " A GeoTIFF keeps none of the result's attributes (scene, model, "
                     "options)" + (f": give {' and '.join(ask)} for the truth, spectral "
                                   "fits and training curve." if ask else ".")
                     + " The netCDF or Zarr result holds every variable.")
    elif missing:
        notes.append(f"not in the result: {', '.join(missing)}; the checks and figures "
                     "that need them are left out"
                     + (" (draws: bayesfluo retrieve --draws N)." if "f760_draws" in missing
                        else "."))
    has_truth = scene is not None and "true_f760" in scene
    if has_truth and scene["true_f760"].shape != res["f760_mean"].shape:
        raise ValueError(f"the scene's true_f760 {scene['true_f760'].shape} does not match "
                         f"the result's pixels {res['f760_mean'].shape}")
    mean = res["f760_mean"].values
    if "quality_flag" in res:
        flag = res["quality_flag"].values.astype(int)
        usable = (flag & QUALITY_FLAGS["masked_input"]) == 0
        bad = (flag & (QUALITY_FLAGS["poor_fit"] | QUALITY_FLAGS["out_of_distribution"])
               ) != 0
        frac = float(np.mean(bad[usable])) if usable.any() else float("nan")
        counts = ", ".join(f"{n} {int(np.sum((flag & b) != 0))}"
                           for n, b in QUALITY_FLAGS.items())
        checks.append(Check("usable pixels flagged poor_fit or out_of_distribution",
                            f"{frac:.1%} of {int(usable.sum())} ({counts})",
                            f"<= {THRESHOLDS['flagged_max']:.0%}",
                            "pass" if frac <= THRESHOLDS["flagged_max"] else "fail"))
    else:
        usable = np.isfinite(mean)
    iv = _interval_vars(res)
    if _is_series(res["f760_mean"]):
        # a tower's time series: F760 against time, no image maps
        s = secs.setdefault("series", _Section("series", "SIF time series"))
        tdim = res["f760_mean"].dims[0]
        t = res[tdim].values if tdim in res.coords else np.arange(mean.size)
        panels = {"F760": (mean, *((res[iv[0]].values, res[iv[1]].values) if iv
                                   else (None, None)),
                           scene["true_f760"].values if has_truth else None)}
        if "f687_mean" in res:
            lo687, hi687 = (("f687_lo90", "f687_hi90") if "f687_lo90" in res
                            else ("f687_q05", "f687_q95"))
            panels["F687"] = (res["f687_mean"].values,
                              *((res[lo687].values, res[hi687].values)
                                if lo687 in res else (None, None)),
                              scene["true_f687"].values if has_truth and "true_f687" in scene
                              else None)
        irr = res["irradiance750"].values if "irradiance750" in res else None
        s.figure(plot_sif_series(t, panels, irr, "retrieval"),
                 " and ".join(panels) + " posterior mean"
                 + (" and 90 % interval" if iv else "")
                 + (" against time, with the truth" if has_truth else " against time")
                 + (", and the measured irradiance at 750 nm" if irr is not None else ""))
    else:
        s = secs.setdefault("maps", _Section("maps", "F760 posterior maps"))
        s.figure(plot_retrieval(res, scene if has_truth else None),
                 "F760 posterior mean" + (" and sd" if "f760_sd" in res else "")
                 + (", truth, and mean with 90 % interval against truth" if has_truth
                    else (", quality flag" if "quality_flag" in res else "")))
        fig = plot_error_maps(res, scene if has_truth else None)
        if fig is not None:
            s.figure(fig, ("error and standardised error of the posterior mean, "
                           if has_truth else "")
                     + "fit quality (fit_chi2) and quality flag bits "
                     + ", ".join(f"{b} {n}" for n, b in QUALITY_FLAGS.items()))
        fig = plot_two_peaks(res, scene if has_truth else None)
        if fig is not None:
            s.figure(fig, "the red peak: F687 posterior mean"
                     + (" and truth" if has_truth and "true_f687" in scene else "")
                     + ", mean over sd (below 2, the line on the colour bar, F687 is not "
                     "told apart from zero: the red peak is weaker and the O2-B band "
                     "narrower than the O2-A)"
                     + (", the red peak's posterior contraction (near 0: the data did not "
                        "pin the red peak, and F687 rests on the far-red peak's tail and "
                        "the prior)" if "sif_red_contraction" in res else "")
                     + (", and the posterior correlation of F687 and F760"
                        if "f687_f760_corr" in res else ""))
    if has_truth:
        t = scene["true_f760"].values
        good = usable & np.isfinite(mean)
        e = mean[good] - t[good]
        rmse = float(np.sqrt(np.mean(e ** 2)))
        checks.append(Check("F760 RMSE of the posterior mean (usable pixels)",
                            f"{rmse:.3f} mW m-2 sr-1 nm-1 (bias {np.mean(e):+.3f})",
                            f"<= {THRESHOLDS['rmse_max']} (FLEX requirement)",
                            "pass" if rmse <= THRESHOLDS["rmse_max"] else "fail"))
        if iv:
            lo, hi = iv
            hits = ((t >= res[lo].values) & (t <= res[hi].values))[good]
            checks.append(_coverage_check(hits, "90 % interval of F760 holds the truth"
                                          + (" (shortest interval)" if lo == "f760_lo90"
                                             else ""), THRESHOLDS["alpha"]))
        if "f760_draws" in res:
            draws = res["f760_draws"].values[good]           # (n, draw)
            _calibration_from_draws(t[good], draws, secs, "guide draws of the retrieval")
    if scene is not None and model_dir is not None and not _is_series(res["f760_mean"]):
        from bayesfluo.inference.guide import load_guide
        guide = load_guide(model_dir)
        pix = pick_pixels(res)
        if pix:
            from bayesfluo.retrieval.api import RetrieveOptions
            refined = "refined" in str(res.attrs.get("posterior", ""))
            fit = posterior_mean_fit(scene, guide, pix, RetrieveOptions(refine=refined))
            labels = [f"y={y}, x={x}, F760 {mean[y, x]:.2f}" for y, x in pix]
            f = secs.setdefault("fits", _Section("fits", "Spectral fits of sample pixels"))
            f.figure(plot_spectral_fit(fit, labels),
                     "radiance of the pixels with the highest, median and lowest posterior "
                     "mean F760 against the radiance predicted at the posterior mean (exact "
                     "band operator of the patch), and the residual in noise sd units")


def _calibration_from_draws(truth, draws, secs, what: str) -> None:
    from bayesfluo.diagnostics.calibration import coverage, coverage_test, sbc_ranks
    from bayesfluo.report.figures import plot_coverage_levels, plot_rank_ecdf

    c = secs.setdefault("calibration", _Section("calibration", "Calibration"))
    ranks = sbc_ranks(truth, draws)
    c.figure(plot_rank_ecdf({"f760": ranks}, draws.shape[1]),
             f"rank of the true F760 among the {what} (ECDF minus uniform, 99 % "
             "simultaneous band); the truth of a simulated scene is not drawn from the "
             "model's prior, so this is a check of the scene, not SBC")
    hits = coverage(truth, draws)
    res = coverage_test(hits, THRESHOLDS["alpha"])
    c.figure(plot_coverage_levels([r.level for r in res], [r.observed for r in res],
                                  [(r.lower, r.upper) for r in res], truth.size, "F760"),
             "coverage of central intervals from the draws, binomial band at false-failure "
             f"rate {THRESHOLDS['alpha']:g} (pixels treated as independent)")


def _scene_series(scene) -> bool:
    """Whether a scene is a top-of-canopy time series (radiance over time, no image)."""
    return scene is not None and "y" not in scene["radiance"].dims


def _nuts_sections(dt: xr.DataTree, scene, model_dir, checks, secs,
                   notes: list[str]) -> None:
    from bayesfluo.report.diagnostic_plots import plot_residuals, plot_trace_rank
    from bayesfluo.report.figures import plot_convergence, plot_f760_series

    conv = dt["convergence"].to_dataset()
    div = int(dt["sample_stats"]["diverging"].sum().item())
    checks.extend(_convergence_checks(conv, div))
    n = _Section("nuts", "NUTS diagnostics")
    secs["nuts"] = n
    post = dt["posterior"]
    hits = int(conv["treedepth_hits"].max()) if "treedepth_hits" in conv else 0
    n.text(f"{post.sizes['pixel']} pixels in {post.sizes.get('patch', 1)} patch(es), "
           f"{post.sizes['chain']} chains x {post.sizes['draw']} draws; "
           f"{div} divergent transitions; {hits} draws of the worst patch hit the maximum "
           "tree depth.")
    n.figure(plot_convergence(conv, THRESHOLDS["rhat_max"], THRESHOLDS["ess_min"]),
             "per-pixel split R-hat and ESS of F760 (red line: threshold)")
    r_hat = conv["r_hat"].values
    if post.sizes["chain"] < 2:
        notes.append("one chain: R-hat needs several chains (bayesfluo nuts --chains), so "
                     "the R-hat checks cannot pass.")
    worst = int(np.nanargmax(r_hat)) if np.isfinite(r_hat).any() else 0
    n_pix = post.sizes["pixel"]
    picks = list(dict.fromkeys([worst, 0, n_pix - 1, 1, n_pix - 2]))[:min(3, n_pix)]
    for i in picks:
        n.figure(plot_trace_rank(dt, "f760", i),
                 f"trace and per-chain rank histogram of F760, pixel {i}"
                 + (" (largest R-hat)" if i == worst else ""))
    if "surface_pressure" in post:
        n.figure(plot_trace_rank(dt, "surface_pressure", 0),
                 "trace and rank histogram of the surface pressure of patch 0 (shared)")
    if "posterior_predictive" in dt.children:
        f = secs.setdefault("fits", _Section("fits", "Spectral fits of sample pixels"))
        f.figure(plot_residuals(dt, pixels=tuple(picks[:2])),
                 "observed radiance and posterior-predictive mean (dashed); residual in "
                 "units of the predictive sd, pixels " + ", ".join(map(str, picks[:2])))
    tower = (_scene_series(scene) or "time series" in str(dt.attrs.get("layout", ""))
             or (scene is not None and "true_f760" in scene
                 and _is_series(scene["true_f760"])))
    draws = post["f760"].transpose(..., "pixel").values.reshape(-1, post.sizes["pixel"]).T
    has_cd = "constant_data" in dt.children

    def at(values: np.ndarray) -> np.ndarray:
        """A scene's per-pixel values at the run's pixels (time steps of a tower)."""
        yy = dt["constant_data"]["y"].values
        return values[yy] if tower else values[yy, dt["constant_data"]["x"].values]

    if tower:
        # a top-of-canopy time series: F760 against time instead of maps
        steps = dt["constant_data"]["y"].values if has_cd else np.arange(draws.shape[0])
        t = steps
        if scene is not None and "time" in scene.coords and has_cd:
            t = scene["time"].values[steps]
        truth_t = (at(scene["true_f760"].values) if has_cd and scene is not None
                   and "true_f760" in scene else None)
        q05, q95 = np.quantile(draws, [0.05, 0.95], axis=1)
        ts = secs.setdefault("series", _Section("series", "F760 time series"))
        ts.figure(plot_f760_series(t, draws.mean(1), q05, q95, truth_t, "NUTS posterior"),
                  "NUTS posterior mean of F760 and its central 90 % interval against "
                  "time" + (", with the scene's truth" if truth_t is not None else "")
                  + ("" if scene is not None and "time" in scene.coords
                     else " (time-step index: give --scene for times)"))
    if scene is not None and "true_f760" in scene and has_cd:
        truth = at(scene["true_f760"].values)
        hits = ((truth >= np.quantile(draws, 0.05, 1)) & (truth <= np.quantile(draws, 0.95, 1)))
        checks.append(_coverage_check(hits, "90 % NUTS interval of F760 holds the scene's "
                                      "truth", THRESHOLDS["alpha"]))
        thin = draws[:, :: max(1, draws.shape[1] // 400)]
        _calibration_from_draws(truth, thin, secs, "NUTS draws")
        if model_dir is not None:
            from bayesfluo.inference.guide import load_guide
            from bayesfluo.retrieval.api import retrieve
            g = retrieve(scene, load_guide(model_dir), progress=False)
            nm, ns = draws.mean(1), draws.std(1, ddof=1)
            gm = at(g["f760_mean"].values)
            gs = at(g["f760_sd"].values)
            cmp = xr.Dataset({"nuts_mean": ("pixel", nm), "nuts_sd": ("pixel", ns),
                              "guide_mean": ("pixel", gm), "guide_sd": ("pixel", gs),
                              "ndvi": ("pixel", dt["constant_data"]["ndvi"].values),
                              "z": ("pixel", (gm - nm) / ns), "sd_ratio": ("pixel", gs / ns)})
            _guide_section(cmp, checks, secs, "the run's pixels, guide retrieval of the scene")


def _guide_section(cmp, checks, secs, what: str) -> None:
    from bayesfluo.report.figures import plot_guide_vs_nuts
    checks.extend(_guide_checks(cmp))
    g = _Section("guide", "Guide versus NUTS")
    secs["guide"] = g
    g.figure(plot_guide_vs_nuts(cmp), f"F760 posterior of the amortized guide against NUTS "
             f"on {cmp.sizes['pixel']} pixels ({what})")


def _validation_sections(ds: xr.Dataset, model_dir, checks, secs) -> None:
    from bayesfluo.diagnostics.calibration import coverage_test, sbc_test
    from bayesfluo.report.diagnostic_plots import plot_coverage, plot_f760_recovery
    from bayesfluo.report.figures import plot_convergence, plot_rank_ecdf

    alpha = THRESHOLDS["alpha"]
    n_rank = int(ds.attrs["n_rank_draws"])
    names = [v for v in ds.data_vars if v.startswith("rank_") and ds[v].dims == ("pixel",)]
    for v in names:
        r = sbc_test(ds[v].values, n_rank, alpha=alpha)
        checks.append(Check(f"SBC ranks of {v[5:]} ({ds.sizes['pixel']} pixels, "
                            f"{r.n_bins} bins)",
                            f"bin counts {int(r.counts.min())}-{int(r.counts.max())}",
                            f"every bin in [{r.lower}, {r.upper}] (false-failure rate "
                            f"{alpha:g})", "pass" if r.passed else "fail"))
    hits = {float(lev): ds["hit_f760"].sel(level=lev).values for lev in ds["level"].values}
    for r in coverage_test(hits, alpha):
        checks.append(Check(f"{r.level:.0%} interval of F760 holds the truth",
                            f"{r.observed:.1%}", f"binomial band [{r.lower:.1%}, "
                            f"{r.upper:.1%}] (false-failure rate {alpha:g})",
                            "pass" if r.passed else "fail"))
    if 0.9 in hits:
        checks.append(_coverage_check(hits[0.9], "90 % interval of F760 (stated range)",
                                      alpha))
    if "hit_patch_mean_f760" in ds and 0.9 in hits:
        # the patches' shared atmospheres correlate their pixels' errors: the mean over a
        # patch is calibrated only if the posterior carries that correlation
        ph = ds["hit_patch_mean_f760"].sel(level=0.9).values.astype(bool)
        [r] = coverage_test({0.9: ph}, alpha)
        checks.append(Check(f"90 % interval of the patch-mean F760 holds the truth "
                            f"({ph.size} patches)", f"{r.observed:.1%}",
                            f"binomial band [{r.lower:.1%}, {r.upper:.1%}] (false-failure "
                            f"rate {alpha:g})", "pass" if r.passed else "fail"))
    div = int(ds["divergences"].sum()) if "divergences" in ds else 0
    checks.extend(_convergence_checks(ds, div))
    c = _Section("calibration", "Calibration")
    secs["calibration"] = c
    c.text(f"Simulation-based calibration: {ds.sizes['pixel']} pixels in "
           f"{ds.sizes.get('patch', '?')} patches drawn from the model's prior "
           f"(seed {ds.attrs.get('seed')}), {ds.attrs.get('n_draws')} NUTS draws per pixel, "
           f"ranks among {n_rank} thinned draws.")
    c.figure(plot_rank_ecdf({v[5:]: ds[v].values for v in names}, n_rank),
             "ECDF of the SBC ranks minus uniform with 99 % simultaneous bands (pixels of a "
             "patch share its atmosphere, so they are not quite independent)")
    c.figure(plot_coverage(ds, alpha=alpha), "observed against nominal coverage of central "
             "intervals of F760, per pixel and for the patch-mean F760")
    if "crb_shared" in ds:
        c.figure(plot_f760_recovery(ds), "posterior mean +- sd against truth (NDVI colour); "
                 "posterior sd against the Cramer-Rao bound with the patch's atmosphere")
    n = _Section("nuts", "NUTS diagnostics")
    secs["nuts"] = n
    n.text(f"{div} divergent transitions in all patches; per-chain traces are not stored in "
           "a validation run (use a `bayesfluo nuts` DataTree for trace and rank plots).")
    n.figure(plot_convergence(ds, THRESHOLDS["rhat_max"], THRESHOLDS["ess_min"]),
             "per-pixel split R-hat and ESS of F760 (red line: threshold)")
    if model_dir is not None:
        from bayesfluo.diagnostics.guide_check import compare_with_nuts
        from bayesfluo.inference.guide import load_guide
        guide = load_guide(model_dir)
        cmp = compare_with_nuts(guide, ds)
        _guide_section(cmp, checks, secs, "the validation run's patches regenerated from "
                       "its seed")


def _training_section(model_dir, secs) -> None:
    from bayesfluo.report.figures import plot_training
    h = _history(model_dir)
    if h is None:
        return
    t = _Section("training", "Training of the model")
    secs["training"] = t
    t.text(f"{model_dir.name}: {len(h)} optimisation steps recorded in history.csv "
           f"(final loss {h['loss'].iloc[-1]:.3g}).")
    t.figure(plot_training(h), "training loss per step (thin) and its running median "
             "(thick), and the gradient norm; one colour per phase")


_ORDER = ("summary", "series", "maps", "fits", "nuts", "guide", "calibration", "training")


def _render(title: str, meta: list[tuple[str, str]], checks: list[Check],
            secs: dict[str, _Section], notes: list[str] = ()) -> str:
    rows = "".join(
        f'<tr class="{c.status}"><td>{html.escape(c.name)}</td><td>{html.escape(c.value)}'
        f"</td><td>{html.escape(c.threshold)}</td><td>{c.status}</td></tr>" for c in checks)
    n_fig = sum(s.n_figures for s in secs.values())
    head = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                   for k, v in meta)
    n_fail = sum(c.status == "fail" for c in checks)
    summary = (f'<section id="summary"><h2>Summary</h2><table class="meta">{head}</table>'
               f"<p>{len(checks) - n_fail} of {len(checks)} checks pass"
               f"{'' if not n_fail else f'; {n_fail} fail'}.</p>"
               + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
               + "<table><tr><th>check</th>"
               f"<th>value</th><th>threshold</th><th>status</th></tr>{rows}</table></section>")
    body = [summary] + [f'<section id="{k}"><h2>{html.escape(secs[k].title)}</h2>'
                        + "".join(secs[k].parts) + "</section>"
                        for k in _ORDER if k in secs]
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta name="bayesfluo-figures" content="{n_fig}">'
            f'<meta name="bayesfluo-sections" content="{",".join(k for k in _ORDER if k in secs)}">'
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>" + "".join(body) + "</body></html>\n")


def write_report(run_path: str | Path, out: str | Path | None = None, scene=None,
                 model: str | Path | None = None, reader_kwargs: dict | None = None) -> Path:
    """Write the HTML report of a run (see the module docstring).

    Parameters
    ----------
    run_path : str or Path
        A retrieval result, a NUTS DataTree or a validation run (netCDF).
    out : str or Path, optional
        The HTML file; default: ``run_path`` with the suffix ``.html``.
    scene : str, Path or xarray.Dataset, optional
        The scene the run was made from; default: the file the run's ``input`` attribute
        names, if it exists (as given, or beside the run).
    model : str or Path, optional
        A shipped model's name or a model directory; default for a retrieval: the run's
        ``model`` attribute, if it resolves. Needed for the spectral fits of a retrieval,
        guide-versus-NUTS and the training curve.
    reader_kwargs : dict, optional
        ``geometry`` and ``instrument`` for reading the scene file
        (:func:`bayesfluo.io.readers.open_scene`).

    Returns
    -------
    Path
        The report, written atomically.
    """
    from bayesfluo.io.atomic import atomic_path

    run_path = Path(run_path)
    out = Path(out) if out is not None else run_path.with_suffix(".html")
    run = _open_run(run_path)
    kind = run_kind(run)
    scn, scene_note = _find_scene(run, run_path, scene, reader_kwargs)
    model_dir, model_note = _find_model(run, kind, model)
    checks: list[Check] = []
    secs: dict[str, _Section] = {}
    notes: list[str] = []
    if kind == "retrieval":
        _retrieval_sections(run, scn, model_dir, checks, secs, notes)
    elif kind == "nuts":
        _nuts_sections(run, scn, model_dir, checks, secs, notes)
    else:
        _validation_sections(run, model_dir, checks, secs)
    _training_section(model_dir, secs)
    meta = [("run", f"{run_path} ({kind})"), ("scene", scene_note or "none"),
            ("model", model_note or "none"),
            ("instrument", str(run.attrs.get("instrument", ""))),
            ("created", time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())),
            ("bayesfluo", __version__)]
    text = _render(f"bayesfluo report: {run_path.name}", meta, checks, secs, notes)
    with atomic_path(out) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    return out
