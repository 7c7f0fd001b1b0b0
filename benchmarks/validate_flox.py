"""Off-model validation of the shipped FloX tower guide (issue 16).

Run:  python benchmarks/validate_flox.py [--model flox] [--series 8] [--scans 256]
          [--nuts-scans 128] [--plot docs/validation/flox_series.png]
          [--json docs/validation/flox.json]

What is measured, on series the guide never saw (seeds from 900,000; training's world
series are from 1,000,000, its calibration series from 800,000):

``default``
    ``--series`` series of ``--scans`` scans from the package's fine-grid simulator at
    its tower defaults (one canopy through a day, its SIF varying by 0.5-1.2, the few
    metres of air between canopy and sensor that the model neglects), with the noon sun
    zenith (20-50 deg), the aerosol (0.05-0.3) and the surface altitude (0-800 m) drawn
    per series.
``prosail``
    As many series under the same conditions, each scan a PROSAIL surface (canopies,
    soils, water, roofs) with SIF of shapes outside the model's family (asymmetric
    peaks, other positions and widths).
``grid``
    One default series simulated on a spectrometer's own grid (0.17 nm step, 0.3 nm
    FWHM, shifted 0.03 nm), written by ``write_flox_csv`` and read back: retrieved on
    its own bands.
``prior``
    1,024 scans from the tower model's own prior predictive
    (:func:`bayesfluo.scene.prior.simulate_patch`: an afternoon at sun zenith 30-65 deg,
    SNR 300 with 10 % read noise, a quarter bare; keys from 70,000): where the model is
    right, the guide should agree with NUTS.
``nuts``
    NUTS reference posteriors (``bayesfluo.inference.nuts.nuts_reference``, 4 chains of
    500 draws after 500 warm-up) of ``--nuts-scans`` scans of the prior set, and as many
    off the model (half from the first default series, half from the first PROSAIL
    series): the guide's F760 mean and sd against NUTS's on the same scans (median
    ``|mean - mean_NUTS| / sd_NUTS`` and sd ratio), NUTS's own coverage and
    convergence. Off the model NUTS is the model's posterior, not the truth's: where the
    model is wrong (other SIF shapes, the air under the sensor) its intervals are too
    narrow, and the guide, trained on such series, is not meant to agree with it.

Each set is retrieved twice: with the guide alone (``refine=False``) and refined (each
scan at the mode of the model's own posterior, the default for a series; the red peak
stays the guide's), and both are compared with NUTS.

Printed per set: F760 RMSE and bias of the posterior mean, coverage of the shortest 90 %
interval (with the binomial band at false-failure rate 1e-4 for the scans' count, scans
treated as independent), per NDVI class (bare < 0.3, sparse 0.3-0.6, dense > 0.6), over
the scans with SIF, and for true zeros (soil, water, roofs) both strictly and as "the
interval reaches down to the world phase's floor target, 1e-3 mW m-2 sr-1 nm-1"; F687
RMSE and coverage (shortest 90 % interval; also equal-tailed 5-95 %, and over the
scans with F687 > 0), flags; and the speed of ``retrieve_series``
(scans per second on the second call, the first call's compilation separately).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="flox")
    ap.add_argument("--series", type=int, default=8)
    ap.add_argument("--scans", type=int, default=256)
    ap.add_argument("--nuts-scans", type=int, default=128)
    ap.add_argument("--plot", help="PNG of the first default series' F760 against time")
    ap.add_argument("--json", help="write the figures as JSON here")
    a = ap.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)

    from bayesfluo.diagnostics.calibration import coverage_test
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.inference.world import F760_FLOOR
    from bayesfluo.instruments import get_instrument
    from bayesfluo.physics.forward import build_forward_model
    from bayesfluo.retrieval.chunk import RetrieveOptions
    from bayesfluo.retrieval.series import retrieve_series
    from bayesfluo.scene.prosail_surface import prosail_surface
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    t_start = time.perf_counter()
    guide = load_guide(resolve_model(a.model))
    fm = guide.model.fm
    opt = RetrieveOptions(refine=False)
    opt_r = RetrieveOptions(refine=True)
    report: dict = {"model": a.model, "series": a.series, "scans": a.scans}

    def conditions(i):
        rng = np.random.default_rng([900_000 + i, 5])
        return dict(sza_deg=float(rng.uniform(20, 50)), aot550=float(rng.uniform(0.05, 0.3)),
                    surface_altitude_m=float(rng.uniform(0, 800)))

    def series(i, prosail):
        seed = 900_000 + i + (500 if prosail else 0)
        cond = conditions(i)
        surf = (prosail_surface((1, a.scans), np.random.default_rng(seed),
                                sza_deg=cond["sza_deg"]) if prosail else None)
        return simulate_scene("flox", (a.scans, 1), seed=seed, model=fm, surface=surf,
                              **cond)

    def evaluate(name, scenes, results):
        t = np.concatenate([s["true_f760"].values.ravel() for s in scenes])
        t687 = np.concatenate([s["true_f687"].values.ravel() for s in scenes])
        ndvi = np.concatenate([s["ndvi"].values.ravel() for s in scenes])
        r = {k: np.concatenate([x[k].values for x in results])
             for k in ("f760_mean", "f760_lo90", "f760_hi90", "f687_mean", "f687_q05",
                       "f687_q95", "f687_lo90", "f687_hi90", "quality_flag")}
        ok = np.isfinite(r["f760_mean"])
        e = (r["f760_mean"] - t)[ok]
        hit = ((t >= r["f760_lo90"]) & (t <= r["f760_hi90"]))[ok]
        band = coverage_test({0.9: hit})[0]
        e687 = (r["f687_mean"] - t687)[ok]
        hit687 = ((t687 >= r["f687_lo90"]) & (t687 <= r["f687_hi90"]))[ok]
        hit687_eq = ((t687 >= r["f687_q05"]) & (t687 <= r["f687_q95"]))[ok]
        flag = r["quality_flag"][ok].astype(int)
        zero = (t == 0)[ok]
        out = {"scans": int(ok.sum()), "f760_rmse": float(np.sqrt(np.mean(e**2))),
               "f760_coverage90_sif_positive": float(hit[~zero].mean()),
               "true_zeros": int(zero.sum()),
               "zeros_held_strictly": float(hit[zero].mean()) if zero.any() else None,
               "zeros_within_floor": (float((r["f760_lo90"][ok][zero] <= F760_FLOOR).mean())
                                      if zero.any() else None),
               "f760_bias": float(np.mean(e)),
               "f760_bias_se_over_series": float(np.std([
                   np.nanmean(x["f760_mean"].values - s["true_f760"].values.ravel())
                   for s, x in zip(scenes, results, strict=True)]) / np.sqrt(len(scenes))),
               "f760_coverage90": float(hit.mean()),
               "binomial_band": [band.lower, band.upper],
               "f687_rmse": float(np.sqrt(np.mean(e687**2))),
               "f687_bias": float(np.mean(e687)),
               "f687_coverage90": float(hit687.mean()),
               "f687_coverage90_equal_tailed": float(hit687_eq.mean()),
               "f687_coverage90_sif_positive": float(hit687[(t687 > 0)[ok]].mean()),
               "flagged_poor_fit": float(np.mean(flag & 2 > 0)),
               "flagged_ood": float(np.mean(flag & 4 > 0)),
               "flagged_not_refined": float(np.mean(flag & 16 > 0)),
               "classes": {}}
        for cname, sel in (("bare", ndvi < 0.3), ("sparse", (ndvi >= 0.3) & (ndvi < 0.6)),
                           ("dense", ndvi >= 0.6)):
            s = sel[ok]
            if s.sum():
                out["classes"][cname] = {"scans": int(s.sum()),
                                         "coverage90": float(hit[s].mean()),
                                         "rmse": float(np.sqrt(np.mean(e[s] ** 2)))}
        report[name] = out
        print(f"[{name}] {out['scans']} scans: F760 RMSE {out['f760_rmse']:.3f}, bias "
              f"{out['f760_bias']:+.3f} (s.e. over series {out['f760_bias_se_over_series']:.3f})"
              f", 90 % coverage {out['f760_coverage90']:.1%} (binomial band "
              f"{band.lower:.1%}-{band.upper:.1%}); F687 RMSE {out['f687_rmse']:.3f}, bias "
              f"{out['f687_bias']:+.3f}, coverage {out['f687_coverage90']:.1%} (equal-tailed "
              f"{out['f687_coverage90_equal_tailed']:.1%}, true F687 > 0 "
              f"{out['f687_coverage90_sif_positive']:.1%}); flagged "
              f"poor_fit {out['flagged_poor_fit']:.1%}, out_of_distribution "
              f"{out['flagged_ood']:.1%}, not_refined {out['flagged_not_refined']:.1%}")
        for cname, c in out["classes"].items():
            print(f"    {cname:7s} {c['scans']:5d} scans: coverage {c['coverage90']:.1%}, "
                  f"RMSE {c['rmse']:.3f}")
        if zero.any():
            print(f"    true SIF > 0: coverage {out['f760_coverage90_sif_positive']:.1%}; "
                  f"{out['true_zeros']} true zeros: held strictly by "
                  f"{out['zeros_held_strictly']:.1%}"
                  f", the interval reaching within {F760_FLOOR:g} of zero for "
                  f"{out['zeros_within_floor']:.1%}")

    sets = {}
    import jax

    from bayesfluo.scene.prior import simulate_patch, tower_series

    draws = [simulate_patch(guide.model, jax.random.PRNGKey(70_000 + i), n_pixels=64,
                            height_m=5.0, snr=None, shot_noise_only=False) for i in range(16)]
    prior = tower_series(guide.model, [p for p, _ in draws],
                         np.concatenate([tr["sza_deg"] for _, tr in draws]))
    for v in ("f760", "f687"):
        prior[f"true_{v}"] = ("time", np.concatenate([tr[v] for _, tr in draws]))
    sets["prior"] = ([prior], [retrieve_series(prior, guide, opt, progress=False)],
                     [retrieve_series(prior, guide, opt_r, progress=False)])
    evaluate("prior", *sets["prior"][:2])
    evaluate("prior_refined", sets["prior"][0], sets["prior"][2])
    for name, pros in (("default", False), ("prosail", True)):
        t0 = time.perf_counter()
        scenes = [series(i, pros) for i in range(a.series)]
        t_sim = time.perf_counter() - t0
        results = [retrieve_series(s, guide, opt, progress=False) for s in scenes]
        refined = [retrieve_series(s, guide, opt_r, progress=False) for s in scenes]
        sets[name] = (scenes, results, refined)
        evaluate(name, scenes, results)
        evaluate(f"{name}_refined", scenes, refined)
        print(f"    (simulated in {t_sim:.0f} s)")

    # speed: the second call of the same shape (compiled), and the first's compilation
    s0 = sets["default"][0][0]
    t0 = time.perf_counter()
    retrieve_series(s0, guide, opt, progress=False)
    dt = time.perf_counter() - t0
    big = simulate_scene("flox", (4096, 1), seed=900_900, model=fm)
    t0 = time.perf_counter()
    retrieve_series(big, guide, opt, progress=False)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    retrieve_series(big, guide, opt, progress=False)
    t_second = time.perf_counter() - t0
    retrieve_series(big, guide, opt_r, progress=False)
    t0 = time.perf_counter()
    retrieve_series(big, guide, opt_r, progress=False)
    t_ref = time.perf_counter() - t0
    report["speed"] = {"scans_per_s": 4096 / t_second, "first_call_s": t_first,
                       "series_of_256_s": dt, "refined_scans_per_s": 4096 / t_ref}
    print(f"[speed] retrieve_series with the fit check: {4096 / t_second:,.0f} scans/s "
          f"(4,096 scans in {t_second:.2f} s; first call {t_first:.1f} s with compilation; "
          f"a series of {a.scans} scans {dt:.2f} s); refined: {4096 / t_ref:,.0f} scans/s")

    # a spectrometer's own grid, through the CSV writer and reader
    from bayesfluo.io.flox import write_flox_csv
    from bayesfluo.io.readers import open_scene

    nominal = get_instrument("flox").band_centres()
    centres = np.arange(nominal[0] + 0.2, nominal[-1] - 0.2, 0.17) + 0.03
    fm_g = build_forward_model("flox", band_centre_nm=centres, band_fwhm_nm=0.3)
    grid_scenes, grid_results, grid_refined = [], [], []
    for i in range(min(a.series, 4)):
        sim = simulate_scene("flox", (a.scans, 1), seed=900_000 + i, model=fm_g,
                             **conditions(i))
        with tempfile.TemporaryDirectory() as tmp:
            scene = open_scene(write_flox_csv(sim, f"{tmp}/tower.csv")).load()
        scene["true_f760"] = ("time", sim["true_f760"].values.ravel())
        scene["true_f687"] = ("time", sim["true_f687"].values.ravel())
        grid_scenes.append(scene)
        grid_results.append(retrieve_series(scene, guide, opt, progress=False))
        grid_refined.append(retrieve_series(scene, guide, opt_r, progress=False))
    evaluate("grid", grid_scenes, grid_results)
    evaluate("grid_refined", grid_scenes, grid_refined)
    nominal_same = ([sets["default"][0][i] for i in range(len(grid_scenes))],
                    [sets["default"][1][i] for i in range(len(grid_scenes))])
    evaluate("grid_nominal_same_series", *nominal_same)

    if a.nuts_scans:
        _nuts(a, guide, sets, report)

    if a.plot:
        _plot(a.plot, sets["default"][0][0], sets["default"][1][0],
              sets["prosail"][0][0], sets["prosail"][1][0])
        print(f"wrote {a.plot}")
    report["wall_s"] = time.perf_counter() - t_start
    print(f"total {report['wall_s']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {a.json}")


def _nuts(a, guide, sets, report) -> None:
    for label, names, n in (("prior", ("prior",), a.nuts_scans),
                            ("offmodel", ("default", "prosail"), a.nuts_scans // 2)):
        _nuts_set(label, names, np.arange(n), guide, sets, report)


def _nuts_set(label, names, rows, guide, sets, report) -> None:
    from bayesfluo.inference.nuts import NutsConfig, nuts_reference

    rec = {"guide_mean": [], "guide_sd": [], "nuts_mean": [], "nuts_sd": [], "truth": [],
           "nuts_hit": [], "converged": [], "guide_hit": [], "refined_mean": [],
           "refined_sd": [], "refined_hit": []}
    t0 = time.perf_counter()
    for name in names:
        scene, res, ref = sets[name][0][0], sets[name][1][0], sets[name][2][0]
        dt = nuts_reference(scene, rows, np.zeros_like(rows), nuts=NutsConfig(),
                            seed=1, progress=False)
        draws = dt["posterior"]["f760"].values                    # (chain, draw, pixel)
        d = draws.reshape(-1, draws.shape[-1])
        truth = scene["true_f760"].values.ravel()[rows]
        lo, hi = np.quantile(d, [0.05, 0.95], axis=0)
        rec["nuts_mean"].append(d.mean(0))
        rec["nuts_sd"].append(d.std(0))
        rec["truth"].append(truth)
        rec["nuts_hit"].append((truth >= lo) & (truth <= hi))
        rec["converged"].append(np.asarray(dt["convergence"]["converged"].values))
        rec["guide_mean"].append(res["f760_mean"].values[rows])
        rec["guide_sd"].append(res["f760_sd"].values[rows])
        rec["guide_hit"].append((truth >= res["f760_lo90"].values[rows])
                                & (truth <= res["f760_hi90"].values[rows]))
        rec["refined_mean"].append(ref["f760_mean"].values[rows])
        rec["refined_sd"].append(ref["f760_sd"].values[rows])
        rec["refined_hit"].append((truth >= ref["f760_lo90"].values[rows])
                                  & (truth <= ref["f760_hi90"].values[rows]))
    r = {k: np.concatenate(v) for k, v in rec.items()}
    z = np.abs(r["guide_mean"] - r["nuts_mean"]) / r["nuts_sd"]
    ratio = r["guide_sd"] / r["nuts_sd"]
    out = {"scans": int(z.size), "median_abs_z": float(np.median(z)),
           "median_sd_ratio": float(np.median(ratio)),
           "nuts_converged": float(np.mean(r["converged"])),
           "nuts_coverage90": float(np.mean(r["nuts_hit"])),
           "guide_coverage90_same_scans": float(np.mean(r["guide_hit"])),
           "nuts_rmse": float(np.sqrt(np.mean((r["nuts_mean"] - r["truth"]) ** 2))),
           "guide_rmse_same_scans": float(np.sqrt(np.mean((r["guide_mean"] - r["truth"])
                                                          ** 2))),
           "wall_s": time.perf_counter() - t0}
    zr = np.abs(r["refined_mean"] - r["nuts_mean"]) / r["nuts_sd"]
    out["refined"] = {"median_abs_z": float(np.median(zr)),
                      "median_sd_ratio": float(np.median(r["refined_sd"] / r["nuts_sd"])),
                      "coverage90_same_scans": float(np.mean(r["refined_hit"])),
                      "rmse_same_scans": float(np.sqrt(np.mean((r["refined_mean"]
                                                                - r["truth"]) ** 2)))}
    report[f"nuts_{label}"] = out
    print(f"[nuts, {label}] {out['scans']} scans of {' and '.join(names)}: guide vs NUTS median "
          f"|z| {out['median_abs_z']:.2f}, median sd ratio {out['median_sd_ratio']:.2f}; NUTS "
          f"converged {out['nuts_converged']:.1%}, NUTS 90 % coverage "
          f"{out['nuts_coverage90']:.1%} (guide on the same scans "
          f"{out['guide_coverage90_same_scans']:.1%}); RMSE NUTS {out['nuts_rmse']:.3f}, "
          f"guide {out['guide_rmse_same_scans']:.3f} ({out['wall_s']:.0f} s)")
    rf = out["refined"]
    print(f"    refined (--refine): median |z| {rf['median_abs_z']:.2f}, median sd ratio "
          f"{rf['median_sd_ratio']:.2f}, coverage {rf['coverage90_same_scans']:.1%}, RMSE "
          f"{rf['rmse_same_scans']:.3f}")


def _plot(path, scene, res, scene_p, res_p) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8.0, 8.0), sharex=False)
    t = scene["time"].values
    for ax, var, label in ((axes[0], "f760", "F760"), (axes[1], "f687", "F687")):
        lo = res[f"{var}_lo90"] if f"{var}_lo90" in res else res[f"{var}_q05"]
        hi = res[f"{var}_hi90"] if f"{var}_hi90" in res else res[f"{var}_q95"]
        ax.fill_between(t, lo, hi, color="C0", alpha=0.25, lw=0, label="90 % interval")
        ax.plot(t, res[f"{var}_mean"], color="C0", lw=1, label="posterior mean")
        ax.plot(t, scene[f"true_{var}"].values.ravel(), "k--", lw=0.8, label="truth")
        ax.set_ylabel(f"{label} (mW m-2 sr-1 nm-1)")
        ax.legend(fontsize=7, loc="upper left")
    ax2 = axes[1].twinx()
    ax2.plot(t, res["irradiance750"], color="C1", lw=0.8)
    ax2.set_ylabel("E(750 nm) (mW m-2 nm-1)", color="C1")
    axes[0].set_title("simulated FloX day (fine-grid simulator, seed 900,000): guide "
                      "posterior", fontsize=9)
    tp = np.arange(res_p.sizes["time"])
    axes[2].errorbar(scene_p["true_f760"].values.ravel(), res_p["f760_mean"],
                     yerr=[np.maximum(res_p["f760_mean"] - res_p["f760_lo90"], 0),
                           np.maximum(res_p["f760_hi90"] - res_p["f760_mean"], 0)],
                     fmt=".", ms=3, lw=0.4, alpha=0.6)
    m = float(np.nanmax(scene_p["true_f760"].values)) * 1.05 + 0.1
    axes[2].plot([0, m], [0, m], "k--", lw=0.8)
    axes[2].set_xlabel("true F760 (mW m-2 sr-1 nm-1)")
    axes[2].set_ylabel("posterior F760")
    axes[2].set_title(f"PROSAIL surfaces with off-family SIF ({tp.size} scans, seed "
                      "900,500): mean and 90 % interval against truth", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
