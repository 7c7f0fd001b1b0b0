"""Validation of the NUTS posteriors at nominal conditions (issue 3): SBC, coverage, F760
RMSE against the Cramer-Rao bound, posterior against prior width, patch-mean
calibration, convergence.

Run:  python benchmarks/validate_nuts.py --patches 50 [--instrument hyplant-fluo-o2a]
          [--out docs/validation]; --summarise <out>/<instrument>_validation.nc redoes
      the summary and figures of a run without sampling
      python benchmarks/validate_nuts.py --instrument desis --patches 2
      python benchmarks/validate_nuts.py --instrument flox --patches 6

Conditions per instrument (:data:`bayesfluo.diagnostics.sbc.CONDITIONS`): HyPlant FLUO
O2-A at 600 m, sun zenith 30 deg, SNR 150 shot-noise-only; DESIS at 400 km, sun zenith
30 deg, its own noise model (SNR 150, 10 % read noise); FloX-like tower at 5 m with
measured irradiance, sun zenith 30-65 deg through an afternoon, SNR 300 (10 % read
noise), patches being blocks of time steps. Patches of 64 pixels (time steps) drawn from
the prior (a quarter bare), sampled with 4 chains x 500 draws after 500 warm-up. Writes
``<out>/<instrument>_validation.nc`` (per-pixel and per-patch results),
``<instrument>_summary.json`` and figures (rank histograms, coverage curve, F760
recovery), and prints the summary. SBC and coverage verdicts are binomial tests at
false-failure rate 1e-4.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=4)
    ap.add_argument("--pixels", type=int, default=64)
    ap.add_argument("--instrument", default="hyplant-fluo-o2a")
    ap.add_argument("--snr", type=float,
                    help="signal-to-noise ratio at 100 mW m-2 sr-1 nm-1 (default: the "
                         "instrument's nominal conditions, 150 for HyPlant and DESIS, 300 "
                         "for FloX)")
    ap.add_argument("--height", type=float,
                    help="sensor height above ground, m (default 600 for HyPlant, the "
                         "instrument's own otherwise)")
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="docs/validation")
    ap.add_argument("--summarise", metavar="VALIDATION_NC",
                    help="no sampling: the summary and figures of an earlier run's "
                         "<instrument>_validation.nc, written to --out")
    args = ap.parse_args()

    import numpy as np

    from bayesfluo.diagnostics.calibration import coverage_test, sbc_test
    from bayesfluo.diagnostics.sbc import CONDITIONS, validate
    from bayesfluo.inference.nuts import ESS_MIN, RHAT_MAX, NutsConfig
    from bayesfluo.io import write_dataset
    from bayesfluo.physics import build_forward_model
    from bayesfluo.report.diagnostic_plots import plot_coverage, plot_f760_recovery, plot_sbc_ranks

    warnings.simplefilter("ignore", RuntimeWarning)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    from bayesfluo.instruments import get_instrument

    fm = build_forward_model(args.instrument)
    cond = dict(n_pixels=args.pixels)
    if args.snr is not None:
        cond["snr"] = args.snr
    if args.height is not None:
        cond["height_m"] = args.height
    elif args.instrument not in CONDITIONS:
        cond["height_m"] = (600.0 if args.instrument.startswith("hyplant")
                            else get_instrument(args.instrument).altitude_m)
    tag = f"{args.instrument}"
    if args.summarise:
        import xarray as xr

        ds = xr.load_dataset(args.summarise)
        old = Path(args.summarise).with_name(f"{tag}_summary.json")
        if "wall_s" not in ds.attrs and old.exists():  # runs before the attribute
            prev = json.loads(old.read_text())
            ds.attrs.update(wall_s=prev["wall_s"],
                            load_average=prev["load_average_1_5_15min_at_end"])
    else:
        t0 = time.perf_counter()
        ds = validate(fm, args.patches, nuts=NutsConfig(num_warmup=args.warmup,
                                                        num_samples=args.samples,
                                                        predictive_draws=0),
                      seed=args.seed, **cond)
        ds.attrs.update(wall_s=round(time.perf_counter() - t0, 0),
                        load_average=[round(v, 2) for v in os.getloadavg()])
        write_dataset(ds, out / f"{tag}_validation.nc")
    n_rank = int(ds.attrs["n_rank_draws"])
    summary = {"instrument": args.instrument, "patches": int(ds.sizes["patch"]),
               "pixels": int(ds.sizes["pixel"]), "wall_s": float(ds.attrs["wall_s"]),
               "load_average_1_5_15min_at_end": [float(v) for v in
                                                 np.atleast_1d(ds.attrs["load_average"])],
               "conditions": {k: ds.attrs[k] for k in ("height_m", "sza_deg", "snr",
                                                       "shot_noise_only", "bare_fraction")
                              if k in ds.attrs},
               "sbc": {}, "sbc_patch": {}}
    for v in [v for v in ds.data_vars if v.startswith("rank_")]:
        dim = ds[v].dims[0]
        if ds.sizes[dim] < 40:
            continue  # per-patch ranks: too few for a test, reported in the figure only
        n_bins = None if dim == "pixel" else int(min(20, ds.sizes[dim] // 10))
        r = sbc_test(ds[v].values, n_rank, n_bins=n_bins)
        summary["sbc" if dim == "pixel" else "sbc_patch"][v[5:]] = {
            "passed": r.passed, "bins": int(r.n_bins), "band": [r.lower, r.upper],
            "min": int(r.counts.min()), "max": int(r.counts.max())}
    hits = {float(q): ds["hit_f760"].sel(level=q).values for q in ds.level.values}
    summary["coverage_f760"] = {f"{c.level:.2f}": {"observed": round(c.observed, 3),
                                                   "band": [round(c.lower, 3),
                                                            round(c.upper, 3)],
                                                   "passed": c.passed}
                                for c in coverage_test(hits)}
    err = ds["mean_f760"] - ds["truth_f760"]
    veg = ds["ndvi"] > 0.35
    for name, sel in (("all", slice(None)), ("vegetated", veg.values),
                      ("bare", ~veg.values)):
        summary[f"f760_{name}"] = {
            "rmse": round(float(np.sqrt((err[sel] ** 2).mean())), 4),
            "bias": round(float(err[sel].mean()), 4),
            "rms_crb_patch_atmosphere": round(float(np.sqrt((ds["crb_shared"][sel] ** 2)
                                                            .mean())), 4),
            "rms_crb_atmosphere_known": round(float(np.sqrt((ds["crb_known"][sel] ** 2)
                                                            .mean())), 4),
            "mean_posterior_sd": round(float(ds["sd_f760"][sel].mean()), 4),
            "mean_prior_sd": round(float(ds["prior_sd_f760"][sel].mean()), 4),
            "mean_posterior_over_prior_sd": round(float(
                (ds["sd_f760"][sel] / ds["prior_sd_f760"][sel]).mean()), 3),
            "coverage_90": round(float(ds["hit_f760"].sel(level=0.9)[sel].mean()), 3),
            "n": int(np.asarray(ds["ndvi"][sel]).size)}
        summary[f"f760_{name}"]["rmse_over_crb"] = round(
            summary[f"f760_{name}"]["rmse"] / summary[f"f760_{name}"][
                "rms_crb_patch_atmosphere"], 3)
    summary["patch_mean_f760"] = _patch_mean_summary(ds)
    conv = ds["converged"].values.astype(bool)
    f760_ok = (ds["r_hat"] <= RHAT_MAX) & (ds["ess_bulk"] >= ESS_MIN)
    summary["convergence"] = {
        "f760_criterion": f"R-hat(F760) <= {RHAT_MAX}, bulk ESS(F760) >= {ESS_MIN}",
        "f760_converged_fraction": round(float(f760_ok.mean()), 4),
        "criterion": f"r_hat_max <= {RHAT_MAX}, bulk ESS(F760) >= {ESS_MIN}, no divergences",
        "converged_fraction": round(float(conv.mean()), 4),
        "r_hat_max": round(float(ds["r_hat_max"].max()), 4),
        "ess_bulk_f760_min": round(float(ds["ess_bulk"].min()), 0),
        "ess_bulk_f760_median": round(float(ds["ess_bulk"].median()), 0),
        "divergences": int(ds["divergences"].sum()),
        "mean_leapfrog_steps": round(float(ds["mean_steps"].mean()), 1),
        "seconds_per_patch": round(float(ds["time_s"].mean()), 1)}
    (out / f"{tag}_summary.json").write_text(json.dumps(summary, indent=1))
    plot_sbc_ranks(ds, out / f"{tag}_sbc_ranks.png")
    plot_coverage(ds, out / f"{tag}_coverage.png")
    plot_f760_recovery(ds, out / f"{tag}_f760_recovery.png")
    _plot_width(ds, out / f"{tag}_posterior_width.png", args.instrument)
    print(json.dumps(summary, indent=1))


def _patch_mean_summary(ds) -> dict:
    """Calibration of the posterior of each patch's mean F760: coverage of its central
    intervals (binomial bands at false-failure rate 1e-4), and its standardised errors
    z = (truth - posterior mean) / posterior sd against the same with the sd that
    independent pixels would give (sqrt(sum of pixel variances) / n): calibrated, mean
    z^2 is 1, with a chi-square(n) / n band at 1e-4."""
    import numpy as np
    from scipy import stats

    from bayesfluo.diagnostics.calibration import coverage_test

    truth = ds["patch_mean_f760_truth"].values
    n = truth.size
    mean = (ds["mean_f760"].groupby(ds["patch_of_pixel"]).mean().values
            if "patch_of_pixel" in ds else np.full(n, np.nan))
    z = (truth - mean) / ds["patch_mean_f760_sd"].values
    z_ind = (truth - mean) / ds["independent_sd"].values
    band = [float(stats.chi2.ppf(0.5e-4, n) / n), float(stats.chi2.isf(0.5e-4, n) / n)]
    hits = {float(q): ds["hit_patch_mean_f760"].sel(level=q).values.astype(bool)
            for q in ds.level.values}
    q90 = stats.norm.isf(0.05)
    return {
        "n": int(n),
        "coverage": {f"{c.level:.2f}": {"observed": round(c.observed, 3),
                                        "band": [round(c.lower, 3), round(c.upper, 3)],
                                        "passed": c.passed} for c in coverage_test(hits)},
        "mean_z2": round(float(np.mean(z ** 2)), 3),
        "mean_z2_band": [round(b, 3) for b in band],
        "mean_z2_passed": bool(band[0] <= np.mean(z ** 2) <= band[1]),
        "mean_sd": round(float(ds["patch_mean_f760_sd"].mean()), 4),
        "rmse": round(float(np.sqrt(np.mean((truth - mean) ** 2))), 4),
        "if_pixels_independent": {
            "mean_sd": round(float(ds["independent_sd"].mean()), 4),
            "mean_z2": round(float(np.mean(z_ind ** 2)), 3),
            "coverage_90_gaussian": round(float(np.mean(np.abs(z_ind) <= q90)), 3)}}


def _plot_width(ds, path, title: str) -> None:
    """Posterior sd of F760 against its Cramer-Rao bound and against its prior sd, per
    pixel, coloured by NDVI: a weakly identified pixel has a posterior as wide as its
    prior, not narrower than the bound allows."""
    import matplotlib
    import matplotlib.ticker

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sd, crb, prior = (ds[v].values for v in ("sd_f760", "crb_shared", "prior_sd_f760"))
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), constrained_layout=True)
    for ax, ref, label in ((axes[0], crb, "Cramer-Rao bound of F760"),
                           (axes[1], prior, "prior sd of F760")):
        sc = ax.scatter(ref, sd, c=ds["ndvi"].values, s=8, cmap="viridis", vmin=0, vmax=0.85)
        lo, hi = min(ref.min(), sd.min()) * 0.8, max(ref.max(), sd.max()) * 1.2
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        ax.set(xscale="log", yscale="log", xlabel=f"{label} (mW m-2 sr-1 nm-1)",
               ylabel="posterior sd of F760")
        for axis in (ax.xaxis, ax.yaxis):
            axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    fig.colorbar(sc, ax=axes[1], label="NDVI")
    fig.suptitle(f"{title}: posterior width of F760 ({ds.sizes['pixel']} pixels)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
