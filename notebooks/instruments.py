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
# # Instruments: how resolution and noise change the posterior of F760
#
# HyPlant FLUO (0.25 nm FWHM, airborne), DESIS (3.5 nm, from the ISS) and FloX (0.35 nm,
# 5 m above the canopy). Two views:
#
# 1. the Cramer-Rao bound of F760 from one pixel (the smallest sd any unbiased estimate
#    can have) from the model's own Fisher information, per instrument at SNR 150, with the
#    atmosphere known and with the O2 column free;
# 2. the posterior sd of the shipped guides for HyPlant and DESIS on fresh pixels drawn
#    from the model's prior at the same sun and surface (DESIS from 400 km).
#
# `BAYESFLUO_NB_PATCHES` sets how many 64-pixel patches the guides see (tests: 1).

# %% tags=["parameters"]
import os

PATCHES = int(os.environ.get("BAYESFLUO_NB_PATCHES", "4"))
INSTRUMENTS = ("hyplant-fluo-o2a", "desis", "flox")

# %%
import matplotlib.pyplot as plt
import numpy as np

from bayesfluo.diagnostics.fisher import cramer_rao_f760
from bayesfluo.instruments import get_instrument
from bayesfluo.physics.forward import build_forward_model

cases = {"atmosphere known": ("reflectance", "sif_far_red", "spectral_shift"),
         "O2 column free": ("reflectance", "sif_far_red", "spectral_shift",
                            "surface_pressure")}
bounds = {}
for name in INSTRUMENTS:
    inst = get_instrument(name)
    bounds[name] = cramer_rao_f760(name, snr=150.0, cases=cases,
                                   model=build_forward_model(name))
    print(f"{name:18s} FWHM {inst.fwhm_nm:4.2f} nm, {inst.platform}: "
          + ", ".join(f"{k} {v:.3f}" for k, v in bounds[name].items()))

# %%
fig, ax = plt.subplots(figsize=(6, 3.5))
for i, case in enumerate(cases):
    ax.bar(np.arange(len(INSTRUMENTS)) + 0.4 * i,
           [bounds[n][case] for n in INSTRUMENTS], width=0.4, label=case)
ax.set_xticks(np.arange(len(INSTRUMENTS)) + 0.2, INSTRUMENTS)
ax.set_yscale("log")
ax.set_ylabel("Cramer-Rao bound of F760\n(mW m-2 sr-1 nm-1), SNR 150")
ax.legend()

# %% [markdown]
# With shot noise only the Fisher information scales with the SNR squared, so doubling
# the SNR halves every bound. Freeing the O2 column (surface pressure) can only widen the
# bound. At DESIS's 3.5 nm the O2-A band is a few bands wide and one pixel says about 20
# times less than at HyPlant's 0.25 nm (SCIENCE.md section 5 estimates 0.20 against 4.0
# with the atmosphere known).

# %%
for name in INSTRUMENTS:
    assert bounds[name]["O2 column free"] >= bounds[name]["atmosphere known"] * (1 - 1e-9)
assert bounds["desis"]["atmosphere known"] > 5 * bounds["hyplant-fluo-o2a"]["atmosphere known"]

# %% [markdown]
# ## The guides' posteriors: HyPlant against DESIS
# Same prior, same sun (30 deg) and surface; HyPlant at 600 m, DESIS at 400 km.

# %%
from bayesfluo.diagnostics.guide_check import evaluate_simulated
from bayesfluo.inference.guide import load_guide
from bayesfluo.shipped import resolve_model

evals = {}
for name, cond in (("hyplant-fluo-o2a", {}), ("desis", {"height_m": 400000.0})):
    g = load_guide(resolve_model(name))
    evals[name] = evaluate_simulated(g, PATCHES, seed=77, with_bound=False, progress=False,
                                     **cond)
prior_sd = g.config.sif_scale * np.sqrt(1 - 2 / np.pi)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
for name, ds in evals.items():
    veg = ds.ndvi > 0.3
    ax[0].scatter(ds.truth_f760, ds.mean_f760, s=6, label=name)
    ax[1].hist(ds.sd_f760[veg], bins=20, alpha=0.6, label=name)
    rmse = float(np.sqrt(((ds.mean_f760 - ds.truth_f760) ** 2).mean()))
    print(f"{name:18s} RMSE {rmse:.3f}, median posterior sd on vegetation "
          f"{float(ds.sd_f760[veg].median()):.3f} (prior sd {prior_sd:.3f})")
ax[0].plot([0, 5], [0, 5], "k--", lw=0.8)
ax[0].set_xlabel("true F760")
ax[0].set_ylabel("guide posterior mean")
ax[0].legend()
ax[1].axvline(prior_sd, color="k", ls="--", label="prior sd")
ax[1].set_xlabel("posterior sd of F760, vegetated pixels")
ax[1].legend()

# %%
sd_h = float(evals["hyplant-fluo-o2a"].sd_f760[evals["hyplant-fluo-o2a"].ndvi > 0.3].median())
sd_d = float(evals["desis"].sd_f760[evals["desis"].ndvi > 0.3].median())
# DESIS's posterior is wider (less information) but the data still shrink the prior
assert sd_d > 2 * sd_h
assert sd_d < prior_sd
