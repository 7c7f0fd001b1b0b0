"""The guide against NUTS on a scene the model did not generate.

    python benchmarks/guide_vs_nuts_scene.py --model hyplant-fluo [--size 16]
        [--block 0:8,0:8] [--seed 905001] [--warmup 300] [--samples 300]

Simulates a default scene of the model's instrument (``bayesfluo simulate`` at its
defaults: everything varying; the seed is apart from training's, from 1,000,000, and the
off-model validation's, 900,000-950,015), retrieves it with the guide (the path users run,
:func:`bayesfluo.retrieve`) and samples the pixels of ``--block`` with NUTS
(:func:`bayesfluo.inference.nuts.nuts_reference`, the model's own posterior, one patch
per guide patch). Prints, for F760 and, in windows with the O2-B band, F687: the median
over the block's usable pixels of ``|z|``, ``z`` = (guide mean - NUTS mean) / NUTS sd, the
median ratio of the guide's sd to NUTS's, and both methods' RMSE against the truth and
90 % interval coverage; and NUTS's convergence. ``--json FILE`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def _figures(name: str, gm, gs, nm, ns, truth, g_lo, g_hi, n_draws) -> dict:
    z = (gm - nm) / ns
    n_lo, n_hi = np.quantile(n_draws, [0.05, 0.95], axis=0)
    return {f"{name}_median_abs_z": float(np.median(np.abs(z))),
            f"{name}_median_sd_ratio": float(np.median(gs / ns)),
            f"{name}_guide_rmse": float(np.sqrt(np.mean((gm - truth) ** 2))),
            f"{name}_nuts_rmse": float(np.sqrt(np.mean((nm - truth) ** 2))),
            f"{name}_guide_coverage90": float(np.mean((truth >= g_lo) & (truth <= g_hi))),
            f"{name}_nuts_coverage90": float(np.mean((truth >= n_lo) & (truth <= n_hi)))}


def main() -> None:
    from bayesfluo import retrieve
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.inference.nuts import NutsConfig, nuts_reference, parse_pixels
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="hyplant-fluo-o2a", help="shipped name or directory")
    ap.add_argument("--size", type=int, default=16, help="scene side, pixels")
    ap.add_argument("--block", default="0:8,0:8", help="pixels sampled by NUTS")
    ap.add_argument("--seed", type=int, default=905001)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--json", help="write the figures to this file")
    a = ap.parse_args()

    guide = load_guide(resolve_model(a.model))
    t0 = time.perf_counter()
    scene = simulate_scene(guide.instrument, (a.size, a.size), seed=a.seed, progress=False)
    res = retrieve(scene, guide, progress=False)
    t_guide = time.perf_counter() - t0
    rows, cols = parse_pixels(a.block, (a.size, a.size))
    t0 = time.perf_counter()
    dt = nuts_reference(scene, rows, cols, patch_size=guide.patch_size, model=guide.model,
                        nuts=NutsConfig(num_warmup=a.warmup, num_samples=a.samples),
                        progress=False)
    t_nuts = time.perf_counter() - t0
    const = dt["constant_data"]
    y, x = const["y"].values, const["x"].values
    usable = (const["mask"].values > 0) & (res["quality_flag"].values[y, x] == 0)
    post = dt["posterior"]
    out = dict(model=a.model, instrument=guide.instrument, seed=a.seed, block=a.block,
               pixels=int(y.size), usable=int(usable.sum()), guide_s=t_guide, nuts_s=t_nuts)
    names = ["f760"] + (["f687"] if "f687_mean" in res and "f687" in post else [])
    for name in names:
        draws = post[name].values.reshape(-1, y.size)[:, usable]
        gm = res[f"{name}_mean"].values[y, x][usable]
        gs = res[f"{name}_sd"].values[y, x][usable]
        g_lo = res[f"{name}_lo90"].values[y, x][usable]
        g_hi = res[f"{name}_hi90"].values[y, x][usable]
        truth = scene[f"true_{name}"].values[y, x][usable]
        out.update(_figures(name, gm, gs, draws.mean(0), draws.std(0), truth, g_lo, g_hi,
                            draws))
    conv = dt["convergence"].to_dataset()
    out.update(nuts_converged=int(conv["converged"].sum()),
               nuts_worst_rhat=float(conv["r_hat_max"].max()),
               nuts_median_ess=float(conv["ess_bulk"].median()),
               surrogate_error_sigma=float(conv["surrogate_error_sigma"].max()))
    print(f"{a.model} ({guide.instrument}), default scene seed {a.seed}, block {a.block}: "
          f"{out['usable']} of {out['pixels']} pixels usable; guide {t_guide:.1f} s, "
          f"NUTS {t_nuts:.0f} s ({a.warmup} + {a.samples} draws x 4 chains)")
    for name in names:
        print(f"  {name}: median |z| {out[f'{name}_median_abs_z']:.3f}, median sd ratio "
              f"(guide/NUTS) {out[f'{name}_median_sd_ratio']:.2f}; RMSE guide "
              f"{out[f'{name}_guide_rmse']:.3f}, NUTS {out[f'{name}_nuts_rmse']:.3f}; "
              f"90 % coverage guide {out[f'{name}_guide_coverage90']:.1%}, NUTS "
              f"{out[f'{name}_nuts_coverage90']:.1%}")
    print(f"  NUTS: {out['nuts_converged']} of {out['pixels']} pixels converged, worst "
          f"R-hat {out['nuts_worst_rhat']:.3f}, median bulk ESS "
          f"{out['nuts_median_ess']:.0f}, expansion error {out['surrogate_error_sigma']:.3f}"
          " noise sd")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
