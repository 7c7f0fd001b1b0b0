"""The fit check through the scene's operator expansion against the exact operators.

Retrieves a default simulated scene twice with the quality check, once as ``retrieve``
does (each pixel's operator from :mod:`bayesfluo.model.scene_expansion`) and once with
every patch's exact fine-grid operator, and prints how far the fit chi-square, the spike
statistic and the quality flags differ, and how many patches lay outside the expansion's
trust region::

    python benchmarks/fit_check_expansion.py [--instrument hyplant-fluo-o2a] [--size 64]
        [--seed 903]
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instrument", default="hyplant-fluo-o2a")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=903)
    a = p.parse_args()

    from bayesfluo.inference.guide import load_guide
    from bayesfluo.retrieval.chunk import (
        RetrieveOptions,
        Retriever,
        plan_retrieval,
        retrieve_chunk,
    )
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    guide = load_guide(resolve_model(a.instrument))
    r = Retriever(guide)
    scene = simulate_scene(a.instrument, (a.size, a.size), seed=a.seed)
    opt = RetrieveOptions()
    plan = plan_retrieval(scene, guide, opt, r.fm, r)
    runs = {}
    for name, pl in (("expansion", plan), ("exact", dataclasses.replace(plan, fit_centre=None))):
        pieces = [retrieve_chunk(scene, pr0, pl, r, opt) for pr0 in pl.starts]
        runs[name] = {k: np.concatenate([c[k] for c in pieces]) for k in
                      ("fit_chi2", "quality_flag")}
    e, x = runs["expansion"], runs["exact"]
    ok = np.isfinite(x["fit_chi2"])
    rel = np.abs(e["fit_chi2"] - x["fit_chi2"])[ok] / x["fit_chi2"][ok]
    print(f"{a.instrument}, {a.size} x {a.size} default scene, seed {a.seed}; expansion "
          f"centred on {np.round(plan.fit_centre, 3).tolist()}")
    print(f"fit chi-square, relative difference: median {np.median(rel):.4f}, "
          f"0.99 quantile {np.quantile(rel, 0.99):.4f}, max {rel.max():.4f}")
    print(f"quality flags equal on {np.mean(e['quality_flag'] == x['quality_flag']):.2%} of "
          f"pixels; poor_fit: {int(np.sum(e['quality_flag'] & 2 > 0))} (expansion), "
          f"{int(np.sum(x['quality_flag'] & 2 > 0))} (exact)")
    print("patches outside the expansion's region: "
          f"{'some (their operators exact)' if r.left_expansion(plan.fit_centre) else 'none'}")


if __name__ == "__main__":
    main()
