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
# # Posterior analysis of a scene
#
# What the posterior of one retrieved scene says: uncertainty maps, the posterior of
# single pixels from draws, predictive checks of the fit, and where F760 is and is not
# identifiable (posterior sd against NDVI and reflectance, against the prior sd).
# `BAYESFLUO_NB_SIZE` sets the scene size (tests: 8x8).

# %% tags=["parameters"]
import os

SIZE = os.environ.get("BAYESFLUO_NB_SIZE", "32x32")
SEED = 1
N_DRAWS = 200

# %%
import matplotlib.pyplot as plt
import numpy as np

from bayesfluo.inference.guide import load_guide
from bayesfluo.report.figures import pick_pixels, plot_spectral_fit, posterior_mean_fit
from bayesfluo.retrieval.api import RetrieveOptions, retrieve
from bayesfluo.scene.simulate import simulate_scene
from bayesfluo.shipped import resolve_model

scene = simulate_scene("hyplant-fluo-o2a", SIZE, seed=SEED, progress=False)
guide = load_guide(resolve_model("hyplant-fluo-o2a"))
result = retrieve(scene, guide, RetrieveOptions(n_draws=N_DRAWS, seed=SEED), progress=False)

# %% [markdown]
# ## Uncertainty maps
# Posterior sd and the width of the 90 % interval (mW m-2 sr-1 nm-1), with NDVI.

# %%
width = result["f760_q95"] - result["f760_q05"]
fig, ax = plt.subplots(1, 3, figsize=(12, 3.5))
for a, (v, t, c) in zip(ax, [(scene["ndvi"], "NDVI", "YlGn"),
                             (result["f760_sd"], "posterior sd of F760", "magma"),
                             (width, "width of the 90 % interval", "magma")], strict=True):
    im = a.imshow(v, cmap=c, interpolation="nearest")
    a.set_title(t)
    fig.colorbar(im, ax=a)

# %% [markdown]
# ## Pixel posteriors
# Draws of F760 (`f760_draws`, y x draw) of the most, median and least fluorescent
# pixels, with the truth (dashed) and the 90 % interval of the summaries (dotted).

# %%
pix = pick_pixels(result)
draws = result["f760_draws"].values
fig, ax = plt.subplots(1, len(pix), figsize=(4 * len(pix), 3))
for a, (y, x) in zip(np.atleast_1d(ax), pix, strict=True):
    a.hist(draws[y, x], bins=30, color="tab:blue")
    a.axvline(scene["true_f760"].values[y, x], color="k", ls="--", label="truth")
    for q in ("f760_q05", "f760_q95"):
        a.axvline(result[q].values[y, x], color="tab:red", ls=":")
    a.set_title(f"pixel y={y}, x={x}")
    a.set_xlabel("F760 (mW m-2 sr-1 nm-1)")

# %% [markdown]
# The draws and the closed-form summaries describe the same distribution: the mean of
# the draws lies within 4.5 Monte Carlo standard errors of `f760_mean` (false-failure
# rate about 7e-6 per pixel), and the empirical 5-95 % quantiles bracket the same
# interval.

# %%
mc_mean = draws.mean(-1)
mcse = result["f760_sd"].values / np.sqrt(N_DRAWS)
assert np.all(np.abs(mc_mean - result["f760_mean"].values) < 4.5 * mcse + 1e-6)
q05, q95 = np.quantile(draws, [0.05, 0.95], axis=-1)
assert np.median(np.abs(q05 - result["f760_q05"].values) / result["f760_sd"].values) < 0.2
assert np.median(np.abs(q95 - result["f760_q95"].values) / result["f760_sd"].values) < 0.2

# %% [markdown]
# ## Predictive checks
# The radiance predicted at the posterior mean against the observation, residuals in
# units of the noise sd, and the reduced chi-square of every pixel against the
# `poor_fit` threshold.

# %%
fit = posterior_mean_fit(scene, guide, pix)
fig = plot_spectral_fit(fit)
z = (fit["observed"] - fit["predicted"]) / fit["noise_sd"]
print("rms residual / noise sd per pixel:", np.sqrt(np.mean(z ** 2, axis=1)).round(2))

# %%
chi2 = result["fit_chi2"].values.ravel()
thr = result["fit_chi2"].attrs["poor_fit_threshold"]
fig, ax = plt.subplots(figsize=(5, 3))
ax.hist(np.log10(chi2), bins=30)
ax.axvline(np.log10(thr), color="tab:red", label="poor_fit threshold")
ax.set_xlabel("log10 reduced chi-square")
ax.legend()
# the radiance the fit reproduces is the retrieval's own check: the same numbers
np.testing.assert_allclose(np.mean(z ** 2, axis=1),
                           [result["fit_chi2"].values[y, x] for y, x in pix], rtol=0.05)

# %% [markdown]
# ## Where is F760 identifiable?
# The prior keeps F760 near zero where NDVI is low (bare soil, water, roofs), so the
# posterior sd there is small because of the prior, not the data. On vegetation the
# prior is a half-normal with sd `sif_scale * sqrt(1 - 2/pi)`; the data shrink it.

# %%
ndvi = scene["ndvi"].values.ravel()
sd = result["f760_sd"].values.ravel()
refl = result["reflectance760_mean"].values.ravel()
prior_sd = guide.config.sif_scale * np.sqrt(1 - 2 / np.pi)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
sc = ax[0].scatter(ndvi, sd, c=result["quality_flag"].values.ravel(), s=10, cmap="tab10",
                   vmin=0, vmax=9)
ax[0].axhline(prior_sd, color="k", ls="--", label="prior sd (vegetation)")
ax[0].set_xlabel("NDVI")
ax[0].set_ylabel("posterior sd of F760")
ax[0].legend()
ax[1].scatter(refl, sd, c=ndvi, s=10, cmap="YlGn")
ax[1].set_xlabel("posterior mean reflectance at 760 nm")
veg, bare = ndvi > 0.5, ndvi < 0.2
print(f"median posterior sd: vegetation {np.median(sd[veg]):.3f}, bare "
      f"{np.median(sd[bare]) if bare.any() else float('nan'):.3f}, prior {prior_sd:.3f}")

# %%
assert veg.any()
assert np.median(sd[veg]) < 0.5 * prior_sd, "the data must shrink the prior on vegetation"
if bare.any():
    assert np.median(sd[bare]) < np.median(sd[veg])
