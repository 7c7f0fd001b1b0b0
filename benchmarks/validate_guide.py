"""Validate a trained guide: against the truth of fresh simulations and against NUTS.

    python benchmarks/validate_guide.py [--model hyplant-fluo-o2a] [--patches 20]

1. ``--patches`` fresh patches of 64 pixels from the model's prior at nominal conditions
   (HyPlant FLUO O2-A, 600 m, sun zenith 30 deg, SNR 150 shot noise; seeds not used in
   training): F760 RMSE against the Cramer-Rao bound, coverage of the 50/80/90/95 %
   intervals, the shared latents;
2. (HyPlant) the pixels of the NUTS validation run (docs/validation/...nc, regenerated
   from its seed): the guide's F760 mean and sd against NUTS's, with scatter plots;
3. the same simulations for DESIS when ``--model desis``.
Figures and a summary JSON go to ``--out`` (docs/validation)/guide_<model>_*.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent


def _coverage90(ds):
    """Fraction of pixels whose 5-95 % interval of F760 holds the truth."""
    return float(((ds.truth_f760 >= ds.q05_f760) & (ds.truth_f760 <= ds.q95_f760)).mean())


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")

    from bayesfluo.diagnostics.guide_check import compare_with_nuts, evaluate_simulated
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.inference.refine import RefineOptions
    from bayesfluo.shipped import resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hyplant-fluo-o2a")
    p.add_argument("--patches", type=int, default=20)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--card", action="store_true", help="write the model card (README.md)")
    p.add_argument("--refine", action="store_true",
                   help="also evaluate the guide after its Laplace refinement (--refine of "
                        "bayesfluo retrieve)")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "validation",
                   help="where the figures and the summary go (default docs/validation)")
    p.add_argument("--nuts", type=Path,
                   help="NUTS validation file to compare with (default "
                        "docs/validation/<instrument>_validation.nc)")
    p.add_argument("--no-bound", action="store_true",
                   help="skip the Cramer-Rao bound (slow for DESIS's fine grid)")
    a = p.parse_args()
    mdir = resolve_model(a.model)
    guide = load_guide(mdir)
    out = a.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    from bayesfluo.instruments import get_instrument
    inst = get_instrument(guide.instrument)  # an airborne guide at the nominal 600 m
    cond = {"height_m": inst.altitude_m} if inst.platform == "spaceborne" else {}
    variants = {"": None}
    if a.refine:
        variants["refined_"] = RefineOptions()
    summ = dict(model=mdir.name, instrument=guide.instrument)
    nuts_file = a.nuts or ROOT / "docs" / "validation" / f"{guide.instrument}_validation.nc"
    crb = None
    for prefix, refine in variants.items():
        t1 = time.perf_counter()
        ds = evaluate_simulated(guide, a.patches, seed=a.seed,
                                with_bound=crb is None and not a.no_bound, refine=refine,
                                **cond)
        if crb is not None:
            ds["crb_shared"] = crb
        elif a.no_bound:
            ds["crb_shared"] = ds.sd_f760 * np.nan
        crb = ds["crb_shared"]
        summ[prefix + "simulated_s"] = round(time.perf_counter() - t1, 1)
        summ.update({prefix + k: v for k, v in _metrics(ds, guide).items()})
        _plot_recovery(ds, guide, summ[prefix + "rmse_all"],
                       out / f"guide_{mdir.name}_{prefix}recovery.png", bool(prefix))
        if nuts_file.exists():
            cmp = compare_with_nuts(guide, xr.open_dataset(nuts_file), refine=refine)
            m = _nuts_metrics(cmp)
            summ.update({prefix + k: v for k, v in m.items()})
            _plot_vs_nuts(cmp, m, out / f"guide_{mdir.name}_{prefix}vs_nuts.png", bool(prefix))
    summ["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / f"guide_{mdir.name}_summary.json").write_text(json.dumps(summ, indent=1))
    for k, v in summ.items():
        print(f"{k:44s} {v}")
    if a.card:
        _write_card(mdir, guide, summ)
        print(f"wrote {mdir / 'README.md'}")


def _metrics(ds: xr.Dataset, guide) -> dict:
    """RMSE, bias, coverage and sds of F760 and the shared latents against the truth."""
    e = ds.mean_f760 - ds.truth_f760
    veg = ds.ndvi > 0.3
    summ = dict(n_pixels=int(ds.sizes["pixel"]),
                rmse_all=float(np.sqrt((e**2).mean())),
                rmse_vegetated=float(np.sqrt((e[veg] ** 2).mean())),
                bias=float(e.mean()),
                crb_rms_all=float(np.sqrt((ds.crb_shared**2).mean())),
                crb_rms_vegetated=float(np.sqrt((ds.crb_shared[veg] ** 2).mean())),
                coverage90=_coverage90(ds),
                mean_sd=float(ds.sd_f760.mean()), mean_sd_vegetated=float(ds.sd_f760[veg].mean()))
    for n in guide.config.free:
        summ[f"{n}_rmse"] = float(np.sqrt(((ds[f"mean_{n}"] - ds[f"truth_{n}"]) ** 2).mean()))
        summ[f"{n}_mean_sd"] = float(ds[f"sd_{n}"].mean())
        summ[f"{n}_coverage90"] = float(
            (np.abs(ds[f"mean_{n}"] - ds[f"truth_{n}"]) <= 1.645 * ds[f"sd_{n}"]).mean())
    lo, hi = _binomial_band(summ["n_pixels"], 0.9)
    summ["coverage90_band_independent"] = [lo, hi]
    return summ


def _nuts_metrics(cmp: xr.Dataset) -> dict:
    veg = cmp.ndvi > 0.3
    return dict(vs_nuts_pixels=int(cmp.sizes["pixel"]),
                vs_nuts_median_abs_z=float(np.median(np.abs(cmp.z))),
                vs_nuts_median_sd_ratio=float(np.median(cmp.sd_ratio)),
                vs_nuts_median_abs_z_vegetated=float(np.median(np.abs(cmp.z[veg]))),
                vs_nuts_median_sd_ratio_vegetated=float(np.median(cmp.sd_ratio[veg])))


def _plot_recovery(ds, guide, rmse, path, refined: bool) -> None:
    import matplotlib.pyplot as plt
    name = "refined guide" if refined else "guide"
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    c = ax[0].scatter(ds.truth_f760, ds.mean_f760, c=ds.ndvi, s=5, cmap="YlGn", vmin=0, vmax=0.9)
    m = float(ds.truth_f760.max())
    ax[0].plot([0, m], [0, m], "k--", lw=0.8)
    ax[0].set_xlabel("true F760")
    ax[0].set_ylabel(f"{name} posterior mean")
    ax[0].set_title(f"{guide.instrument}: {ds.sizes['pixel']} fresh pixels (RMSE {rmse:.3f})")
    fig.colorbar(c, ax=ax[0], label="NDVI")
    ax[1].scatter(ds.crb_shared, ds.sd_f760, c=ds.ndvi, s=5, cmap="YlGn", vmin=0, vmax=0.9)
    mm = float(max(ds.crb_shared.max(), ds.sd_f760.max()))
    ax[1].plot([0, mm], [0, mm], "k--", lw=0.8)
    ax[1].set_xlabel("Cramer-Rao bound of F760 (patch atmosphere)")
    ax[1].set_ylabel(f"{name} posterior sd")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_vs_nuts(cmp, m: dict, path, refined: bool) -> None:
    import matplotlib.pyplot as plt
    name = "refined guide" if refined else "guide"
    fig, ax = plt.subplots(1, 2, figsize=(10, 4.2))
    ax[0].errorbar(cmp.nuts_mean, cmp.guide_mean, xerr=cmp.nuts_sd, fmt="o", ms=2,
                   lw=0.3, alpha=0.6)
    mx = float(cmp.nuts_mean.max())
    ax[0].plot([0, mx], [0, mx], "k--", lw=0.8)
    ax[0].set_xlabel("NUTS posterior mean of F760 (+- sd)")
    ax[0].set_ylabel(f"{name} posterior mean")
    ax[0].set_title(f"median |{name} - NUTS| / sd_NUTS = {m['vs_nuts_median_abs_z']:.2f}")
    ax[1].scatter(cmp.nuts_sd, cmp.guide_sd, c=cmp.ndvi, s=6, cmap="YlGn", vmin=0, vmax=0.9)
    mm = float(max(cmp.nuts_sd.max(), cmp.guide_sd.max()))
    ax[1].plot([0, mm], [0, mm], "k--", lw=0.8)
    ax[1].set_xlabel("NUTS posterior sd of F760")
    ax[1].set_ylabel(f"{name} posterior sd")
    ax[1].set_title(f"median sd ratio = {m['vs_nuts_median_sd_ratio']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _write_card(mdir: Path, guide, summ: dict) -> None:
    """The model card: configuration, training, validation figures, limits."""
    info = guide.info
    cfg = guide.config
    r = info.get("ranges", {})
    rows = [("prior sd of F760 (vegetation: half-normal)",
             f"{guide.config.sif_scale * np.sqrt(1 - 2 / np.pi):.3f}"),
            ("F760 RMSE of the posterior mean, all / vegetated pixels",
             f"{summ['rmse_all']:.3f} / {summ['rmse_vegetated']:.3f} mW m-2 sr-1 nm-1"),
            ("Cramer-Rao bound (patch atmosphere), RMS over the same pixels",
             f"{summ['crb_rms_all']:.3f} / {summ['crb_rms_vegetated']:.3f}"
             if np.isfinite(summ["crb_rms_all"]) else "not computed (`--no-bound`)"),
            ("90 % interval of F760 holds the truth",
             f"{summ['coverage90']:.1%} of {summ['n_pixels']} pixels"),
            ("mean posterior sd of F760, all / vegetated",
             f"{summ['mean_sd']:.3f} / {summ['mean_sd_vegetated']:.3f}")]
    for n in cfg.free:
        rows.append((f"{n}: RMSE of the patch mean / mean posterior sd",
                     f"{summ[f'{n}_rmse']:.4g} / {summ[f'{n}_mean_sd']:.4g}"))
    if "vs_nuts_pixels" in summ:
        rows.append((f"against NUTS on {summ['vs_nuts_pixels']} pixels: median "
                     "abs(mean_guide - mean_NUTS) / sd_NUTS",
                     f"{summ['vs_nuts_median_abs_z']:.2f} (vegetated "
                     f"{summ['vs_nuts_median_abs_z_vegetated']:.2f})"))
        rows.append(("against NUTS: median sd_guide / sd_NUTS",
                     f"{summ['vs_nuts_median_sd_ratio']:.2f} (vegetated "
                     f"{summ['vs_nuts_median_sd_ratio_vegetated']:.2f})"))
    if "refined_rmse_all" in summ:
        rows += [("**Laplace-refined (`--refine`)**: F760 RMSE, all / vegetated",
                  f"{summ['refined_rmse_all']:.3f} / {summ['refined_rmse_vegetated']:.3f}"),
                 ("refined: 90 % interval of F760 holds the truth",
                  f"{summ['refined_coverage90']:.1%} of {summ['refined_n_pixels']} pixels"),
                 ("refined: mean posterior sd of F760, all / vegetated",
                  f"{summ['refined_mean_sd']:.3f} / {summ['refined_mean_sd_vegetated']:.3f}")]
        rows += [(f"refined: {n}: RMSE of the patch mean / mean posterior sd",
                  f"{summ[f'refined_{n}_rmse']:.4g} / {summ[f'refined_{n}_mean_sd']:.4g}")
                 for n in cfg.free]
        if "refined_vs_nuts_pixels" in summ:
            rows += [("refined against NUTS: median abs(mean - mean_NUTS) / sd_NUTS",
                      f"{summ['refined_vs_nuts_median_abs_z']:.2f} (vegetated "
                      f"{summ['refined_vs_nuts_median_abs_z_vegetated']:.2f})"),
                     ("refined against NUTS: median sd / sd_NUTS",
                      f"{summ['refined_vs_nuts_median_sd_ratio']:.2f} (vegetated "
                      f"{summ['refined_vs_nuts_median_sd_ratio_vegetated']:.2f})")]
    table = "\n".join(f"| {a} | {b} |" for a, b in rows)
    ranges = "\n".join(f"| {k} | {v[0]:g} to {v[1]:g} |" for k, v in r.items())
    figs = [f"![](../../../../docs/validation/guide_{mdir.name}_recovery.png)"]
    if "vs_nuts_pixels" in summ:
        figs.append(f"![](../../../../docs/validation/guide_{mdir.name}_vs_nuts.png)")
    if "refined_vs_nuts_pixels" in summ:
        figs.append(f"![](../../../../docs/validation/guide_{mdir.name}_refined_vs_nuts.png)")
    n_patches = summ["n_pixels"] // 64
    opt = (" --refine" if "refined_rmse_all" in summ else "") + (
        "" if np.isfinite(summ["crb_rms_all"]) else " --no-bound")
    old = (mdir / "README.md").read_text() if (mdir / "README.md").exists() else ""
    limits = old[old.index("## Limits"):] if "## Limits" in old else ""
    w = info.get("world")
    world_text = ""
    if w:
        from bayesfluo.inference.train import CALIBRATION_SEED, TrainConfig

        infl = info.get("f760_sd_inflation", {})
        n_cal = (TrainConfig.from_toml(mdir / "train.toml").calibration_scenes
                 if (mdir / "train.toml").exists() else 0)
        cal = (f", and {n_cal} scenes of the simulator (seeds from {CALIBRATION_SEED}, "
               "half at its defaults, half on PROSAIL surfaces)" if n_cal else "")
        world_text = (
            f" Then {w['steps']} steps of the world phase (`bayesfluo.inference.world`): "
            f"each step adds 16 patches of {w['scenes'] - w['holdout']} scenes of "
            f"{w['size']} x {w['size']} pixels from the fine-grid simulator with "
            "everything varying (terrain, aerosol, Angstrom exponent, diffuse path, smile), "
            f"every {w['prosail_every']}rd on PROSAIL canopies with SIF of other shapes, "
            "half on perturbed band grids, a third with bad bands (seeds from "
            f"{w['seed']}). {w['holdout']} more scenes, held out{cal}, set the F760 sd "
            f"factors per NDVI class (edges {infl.get('ndvi_edges')}: {infl.get('factors')}) and "
            "the `poor_fit` reference (fit chi-square and its ratio to the patch median).")
    nuisance = info.get("nuisance") or {}
    nuisance_text = ""
    if nuisance:
        nuisance_text = (
            ", each with " + " and ".join(f"its {k.replace('_', '-')} drawn from "
                                          f"{lo}-{hi}" for k, (lo, hi) in nuisance.items())
            + " (`[nuisance]`; the model holds them at "
            + " and ".join(str(cfg.fixed.get(k)) for k in nuisance)
            + "): the guide's posterior marginalises them, so on the model's own draws, "
            "where they are fixed, it is wider than the model's posterior (NUTS's, which "
            "holds them fixed)")
    text = f"""# {mdir.name}: amortized guide for {guide.instrument}

Trained guide of bayesfluo (`bayesfluo retrieve scene.nc --model {mdir.name}`): an MLP
encoder ({guide.hyper['depth']} residual blocks, width {guide.hyper['width']}, attention
pooling over patches of {guide.patch_size} x {guide.patch_size} pixels) from each patch of
spectra to a Gaussian posterior of every pixel's reflectance and SIF and of the patch's
{', '.join(cfg.free)}. Weights `weights.eqx` ({(mdir / 'weights.eqx').stat().st_size / 1e6:.1f}
MB), configuration and input normalisation `model.json`, training settings `train.toml`,
loss history `history.csv`.

## Model
Priors (`bayesfluo.model.ModelConfig`): free shared latents {list(cfg.free)}; fixed
{ {k: v for k, v in cfg.fixed.items() if k not in cfg.free} }; reflectance logit-normal
around {cfg.reflectance_mean} (sd {cfg.reflectance_logit_sd}, length
{cfg.reflectance_length_nm} nm); F760 half-normal with scale {cfg.sif_scale} (vegetation)
to {cfg.sif_scale_bare} (bare, NDVI below {cfg.ndvi_vegetated}); surface pressure sd
{cfg.pressure_sd} hPa about the standard atmosphere at the surface altitude; AOT550
log-normal about {cfg.aot550_prior}; spectral shift sd {cfg.shift_sd} nm. O2 absorption:
{info.get('spectroscopy', 'the Voigt lines only (trained before line mixing and CIA)')}.

## Training
Pre-trained on simulations: {info.get('pretrain_steps')} steps of
{info.get('batch_patches')} patches drawn afresh from the model's prior predictive
(amortized forward KL), over a pool of {info.get('n_atmospheres')} atmospheres and
geometries{nuisance_text}.{world_text} Fine-tuning steps on scenes:
{info.get('finetune_steps')}. Seed {info.get('seed')}; final loss {info.get('final_loss'):.3f};
wall time of the last session {info.get('wall_time_s_last_session')} s on a 2-core CPU.
Ranges of the simulations:

| condition | range |
|---|---|
{ranges}

Outside these ranges the retrieval flags pixels `out_of_distribution`; fine-tune on your
scenes (`finetune_steps`, `scenes` and `start_from` in a training TOML) to adapt.

## Validation
`python benchmarks/validate_guide.py --model {mdir.name} --patches {n_patches} --card{opt}`
(nominal conditions of
issue 3: sun zenith 30 deg, surface at 100 m, SNR 150 with shot noise, patches of 64 pixels
of which a quarter bare, truth from the prior; fresh seeds). These are draws from the
model's own prior, which says only that the guide is right where the model is; on scenes
the model did not generate see `python benchmarks/offmodel_validation.py --model
{mdir.name}` and the README section "Honest on data the model did not generate":

| check | result |
|---|---|
{table}

{chr(10).join(figs)}

{limits}"""
    (mdir / "README.md").write_text(text.rstrip() + "\n")


def _binomial_band(n: int, p: float, rate: float = 1e-4) -> tuple[float, float]:
    from scipy.stats import binom
    return (float(binom.ppf(rate / 2, n, p) / n), float(binom.isf(rate / 2, n, p) / n))


if __name__ == "__main__":
    main()
