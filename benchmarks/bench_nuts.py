"""NUTS reference posteriors: 64 HyPlant FLUO pixels (one patch), 4 chains x 500 draws after
500 warm-up, at the nominal conditions of :mod:`bayesfluo.diagnostics.sbc`.

Run:  python benchmarks/bench_nuts.py [--warmup 500 --samples 500 --pixels 64]

Prints pixels per second (target: >= 1), compile time (a 2 + 2 draw run of the same
shapes, minus nothing: it is almost all compilation), time to the Laplace preconditioner,
peak resident memory, the effective samples per second of F760 (bulk ESS summed over the
pixels / wall time) and the convergence figures (R-hat and bulk ESS of the shared latents
too). The machine is often shared: ``cpu_s`` (process CPU time of the main run) is less
sensitive to other load than the wall time. ``--save FILE.npz`` keeps the main run's F760
and shared-latent draws, to compare posteriors between versions. Baselines measured in
the same run on the same patch: (1) NumPyro's NUTS as it comes (diagonal mass-matrix
adaptation, start at the prior median, exact operator) with ``--baseline-draws`` warm-up
and kept draws (default 100: at 500 + 500 it runs for the better part of an hour),
compared by ESS per second;
(2) bayesfluo's preconditioned NUTS with the exact fine-grid operator in place of its
expansion (``--exact``, same draws as the main run).
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--pixels", type=int, default=64)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--baseline-draws", type=int, default=100)
    ap.add_argument("--exact", action="store_true",
                    help="also run with the exact operator (slow)")
    ap.add_argument("--save", default=None,
                    help="write the main run's F760 and shared-latent draws (npz) here")
    args = ap.parse_args()

    import arviz as az
    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS

    from bayesfluo.diagnostics.sbc import NOMINAL
    from bayesfluo.inference.nuts import NutsConfig, sample_patch, to_datatree
    from bayesfluo.model import ModelConfig, SifModel
    from bayesfluo.scene.prior import simulate_patch

    warnings.simplefilter("ignore", RuntimeWarning)
    cfg = ModelConfig()
    model = SifModel.for_instrument(NOMINAL["instrument"], cfg)
    data, truth = simulate_patch(model, jax.random.PRNGKey(2024), n_pixels=args.pixels)
    key = jax.random.PRNGKey(0)

    t0, c0 = time.perf_counter(), time.process_time()
    sample_patch(model, data, key, NutsConfig(num_warmup=2, num_samples=2,
                                              num_chains=args.chains, predictive_draws=2))
    t_compile, c_compile = time.perf_counter() - t0, time.process_time() - c0

    nc = NutsConfig(num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains)
    t0, c0 = time.perf_counter(), time.process_time()
    post = sample_patch(model, data, key, nc)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    conv = to_datatree([post], [data], model, max_tree_depth=nc.max_tree_depth)
    conv = conv["convergence"].to_dataset()
    ess = float(conv.ess_bulk.sum())
    f = post.samples["f760"].reshape(-1, args.pixels)
    res = {
        "pixels": args.pixels, "chains": args.chains, "warmup": args.warmup,
        "samples": args.samples, "wall_s": round(wall, 1),
        "pixels_per_s": round(args.pixels / wall, 3), "compile_s": round(t_compile, 1),
        "cpu_s": round(cpu, 1), "compile_cpu_s": round(c_compile, 1),
        "pixels_per_cpu_s": round(args.pixels / cpu, 3),
        "laplace_s": round(post.timing["laplace_s"], 1),
        "nuts_s": round(post.timing["nuts_s"], 1),
        "mean_leapfrog_steps": round(float(post.stats["n_steps"].mean()), 1),
        "divergences": int(post.stats["diverging"].sum()),
        "ess_bulk_f760_median": round(float(conv.ess_bulk.median()), 0),
        "ess_f760_per_s": round(ess / wall, 1),
        "r_hat_max": round(float(conv.r_hat_max.max()), 4),
        "r_hat_f760_max": round(float(conv.r_hat.max()), 4),
        "r_hat_shared": {n: round(float(az.rhat(np.asarray(post.samples[n]))), 4)
                         for n in cfg.free},
        "ess_bulk_shared": {n: round(float(az.ess(np.asarray(post.samples[n]))), 0)
                            for n in cfg.free},
        "pixels_per_s_incl_compile": round(args.pixels / (wall + t_compile), 3),
        "converged_fraction": round(float(conv.converged.mean()), 3),
        "surrogate_error_sigma": round(post.laplace.get("surrogate_error_sigma", 0.0), 4),
        "f760_abs_err_over_sd_median": round(float(np.median(
            np.abs(f.mean(0) - truth["f760"]) / f.std(0))), 2),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    if args.save:
        np.savez(args.save, f760=post.samples["f760"],
                 **{n: post.samples[n] for n in cfg.free},
                 n_steps=post.stats["n_steps"], diverging=post.stats["diverging"])
    if not args.no_baseline:
        # baseline: plain NumPyro NUTS (diagonal adaptation, init to median), same budget
        t0 = time.perf_counter()
        mc = MCMC(NUTS(model.program, max_tree_depth=nc.max_tree_depth,
                       target_accept_prob=nc.target_accept),
                  num_warmup=args.baseline_draws, num_samples=args.baseline_draws,
                  num_chains=args.chains, chain_method="vectorized", progress_bar=False)
        mc.run(jax.random.PRNGKey(0), data, extra_fields=("num_steps",))
        bwall = time.perf_counter() - t0
        bd = az.from_dict({"posterior": {"f760": np.asarray(
            mc.get_samples(group_by_chain=True)["f760"])}}, dims={"f760": ["pixel"]})
        bess = az.ess(bd, var_names=["f760"]).to_dataset()["f760"].values
        brhat = az.rhat(bd, var_names=["f760"]).to_dataset()["f760"].values
        res["baseline"] = {
            "wall_s": round(bwall, 1), "pixels_per_s": round(args.pixels / bwall, 3),
            "mean_leapfrog_steps": round(float(np.asarray(
                mc.get_extra_fields()["num_steps"]).mean()), 1),
            "draws": f"{args.baseline_draws} + {args.baseline_draws}",
            "ess_f760_per_s": round(float(bess.sum()) / bwall, 1),
            "r_hat_f760_max": round(float(brhat.max()), 3)}
        res["ess_per_s_vs_baseline"] = round(res["ess_f760_per_s"]
                                             / max(res["baseline"]["ess_f760_per_s"], 1e-9), 1)
    if args.exact:
        t0 = time.perf_counter()
        ex = sample_patch(model, data, key, NutsConfig(
            num_warmup=args.warmup, num_samples=args.samples, num_chains=args.chains,
            operator="exact"))
        ewall = time.perf_counter() - t0
        ec = to_datatree([ex], [data], model)["convergence"].to_dataset()
        res["exact_operator"] = {
            "wall_s": round(ewall, 1), "pixels_per_s": round(args.pixels / ewall, 3),
            "ess_f760_per_s": round(float(ec.ess_bulk.sum()) / ewall, 1),
            "f760_mean_difference_over_sd_max": round(float(np.max(np.abs(
                ex.samples["f760"].mean((0, 1)) - post.samples["f760"].mean((0, 1)))
                / post.samples["f760"].std((0, 1)))), 3)}
        res["speedup_vs_exact_operator"] = round(ewall / wall, 2)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
