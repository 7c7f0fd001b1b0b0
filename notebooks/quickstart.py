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
# # Quickstart: simulate a scene, retrieve F760, map it
#
# Simulate a HyPlant FLUO O2-A scene with known truth, retrieve the posterior of
# sun-induced fluorescence at 760 nm (F760, mW m-2 sr-1 nm-1) with the shipped amortized
# guide, and map the posterior mean and sd beside the truth.
#
# `BAYESFLUO_NB_SIZE` sets the scene size (the tests run it at 8x8, one patch of the
# guide); the default is 32x32.

# %% tags=["parameters"]
import os

SIZE = os.environ.get("BAYESFLUO_NB_SIZE", "32x32")
SEED = 0

# %%
import numpy as np

from bayesfluo.inference.guide import load_guide
from bayesfluo.report.plotting import plot_retrieval
from bayesfluo.retrieval.api import RetrieveOptions, retrieve
from bayesfluo.scene.simulate import simulate_scene
from bayesfluo.shipped import resolve_model

scene = simulate_scene("hyplant-fluo-o2a", SIZE, seed=SEED, progress=False)
scene

# %% [markdown]
# The scene holds the at-sensor radiance (y, x, band), NDVI and geometry, and the truth
# of every latent that generated it (`true_*`). Retrieval with the shipped model (the
# per-pixel fit check, `quality=True` by default, is skipped here to keep the notebook
# quick; `posterior_analysis` looks at the fits):

# %%
guide = load_guide(resolve_model("hyplant-fluo-o2a"))
result = retrieve(scene, guide, RetrieveOptions(quality=False), progress=False)
result[["f760_mean", "f760_sd", "f760_q05", "f760_q95", "quality_flag"]]

# %%
fig = plot_retrieval(result, scene)

# %% [markdown]
# Scores against the truth: RMSE of the posterior mean, beside the RMSE of the trivial
# estimate (the scene's mean true F760 everywhere), and the fraction of pixels whose 90 %
# interval holds the truth.

# %%
truth = scene["true_f760"].values
mean = result["f760_mean"].values
rmse = float(np.sqrt(np.mean((mean - truth) ** 2)))
rmse_trivial = float(np.std(truth))
hit = (truth >= result["f760_q05"].values) & (truth <= result["f760_q95"].values)
print(f"RMSE {rmse:.3f} (trivial {rmse_trivial:.3f}) mW m-2 sr-1 nm-1; "
      f"90 % interval holds the truth for {hit.mean():.0%} of {truth.size} pixels; "
      f"{int(np.sum(result['quality_flag'].values != 0))} pixels flagged")

# %%
assert result["f760_mean"].shape == scene["true_f760"].shape
assert np.all(np.isfinite(mean)) and np.all(result["f760_sd"].values > 0)
assert np.all(result["f760_q05"].values <= result["f760_q95"].values)
assert rmse < rmse_trivial, "the retrieval must know more than the scene's mean"
assert result["f760_mean"].attrs["units"] == "mW m-2 sr-1 nm-1"
