"""Optimal estimation (OE): the spectral fit with a Gaussian prior, and its Gaussian
posterior, as ISOFIT (Thompson et al. 2018) and pySPECFIT-OE report them.

The state and forward model are those of :mod:`bayesfluo.inference.baselines.sfm`. The estimate is
the maximum a posteriori state under a Gaussian prior ``N(x_a, S_a)`` and Gaussian noise
``S_e = diag(a L + b)`` (Rodgers 2000, eq. 5.8, by Gauss-Newton); its uncertainty is the
posterior covariance at the optimum from the Jacobian ``K``,
``S = (K^T S_e^-1 K + S_a^-1)^-1`` (Rodgers eq. 5.38), and F760 is reported as mean, sd
and the Gaussian 5/50/95 % quantiles.

The prior is the Gaussian with the mean and covariance of bayesfluo's NumPyro prior
(:mod:`bayesfluo.model`), so that OE and bayesfluo start from the same knowledge:

* reflectance coefficients: mean and covariance of ``sigmoid(mu + L z)``, ``z ~ N(0, I)``
  (by 20,000 seeded Monte Carlo draws);
* SIF amplitudes: mean ``s sqrt(2/pi)`` and variance ``s**2 (1 - 2/pi)`` of the
  half-normal of scale ``s = sif_scale(NDVI)`` (red peak: times ``sif_red_ratio``);
* with ``free_atmosphere``: the standard-normal coordinates of the free atmospheric and
  sensor latents (surface pressure, AOT, spectral shift by default), *per pixel* (ISOFIT
  style: each pixel retrieves its own atmosphere), entering through a second-order
  expansion of the band operator about the prior mean
  (:func:`bayesfluo.model.operator_expansion`).

The operator expansion is second order about the prior mean: where a pixel's true
atmosphere lies more than about two prior sd away (a spectral shift of 0.1 nm, 10 hPa),
it is no longer accurate and the fit fails; ``fit_chi2`` and the ``poor_fit`` flag say so
(ISOFIT evaluates its radiative transfer at each iterate instead; too slow here).

What OE does not do and bayesfluo does: the posterior is Gaussian (the half-normal SIF
prior and the bounded reflectance are replaced by Gaussians with their moments, so F may
come out negative and its intervals are symmetric), it is linearised at the optimum, and
without ``free_atmosphere`` the atmosphere is fixed at the prior and its uncertainty is
left out of the sd (the sd is then too small wherever the atmosphere is not the prior).
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo.inference.baselines.pixels import (
    Pixels,
    baseline_model,
    operators_for,
    scene_forward_model,
    scene_pixels,
    to_result,
)
from bayesfluo.inference.baselines.sfm import (
    GaussianPrior,
    fit_pixels,
    patch_expansions,
    summarise_state,
)
from bayesfluo.model import ModelConfig, SifModel
from bayesfluo.model.priors import SHAPE760
from bayesfluo.physics.forward import ForwardModel

__all__ = ["gaussian_prior", "oe_retrieve"]

_PRIOR_DRAWS = 20_000


def _coefficient_moments(model: SifModel, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean (K,) and covariance (K, K) of the model's reflectance-coefficient prior."""
    mu, chol = (np.asarray(a, np.float64) for a in model.reflectance_prior())
    z = np.random.default_rng(seed).standard_normal((_PRIOR_DRAWS, model.fm.n_basis))
    c = 1.0 / (1.0 + np.exp(-(mu + z @ chol.T)))
    return c.mean(0), np.cov(c, rowvar=False)


def gaussian_prior(model: SifModel, px: Pixels, n_atm: int = 0) -> GaussianPrior:
    """Per-pixel Gaussian prior (see the module docstring) of the model's priors, arrays
    (n_patch, P, D[, D])."""
    has_red = model.has_red
    m_c, cov_c = _coefficient_moments(model)
    prec_c = np.linalg.inv(cov_c)
    k = model.fm.n_basis
    n_sif = 2 if has_red else 1
    d = k + n_sif + n_atm
    scale = np.asarray(model.sif_scale(jnp.asarray(px.ndvi)), np.float64) / SHAPE760  # (n, P)
    scales = [scale] + ([model.cfg.sif_red_ratio * scale] if has_red else [])
    mean = np.zeros(px.valid.shape + (d,))
    prec = np.zeros(px.valid.shape + (d, d))
    mean[..., :k] = m_c
    prec[..., :k, :k] = prec_c
    for j, s in enumerate(scales):
        mean[..., k + j] = s * np.sqrt(2.0 / np.pi)
        prec[..., k + j, k + j] = 1.0 / (s**2 * (1.0 - 2.0 / np.pi))
    for j in range(n_atm):
        prec[..., k + n_sif + j, k + n_sif + j] = 1.0
    return GaussianPrior(jnp.asarray(mean, jnp.float32), jnp.asarray(prec, jnp.float32))


def oe_retrieve(scene: xr.Dataset, *, fm: ForwardModel | None = None,
                config: ModelConfig | None = None, free_atmosphere: bool = False,
                patch_size: int = 8, n_iter: int | None = None, pixels: Pixels | None = None,
                operators=None) -> xr.Dataset:
    """Optimal estimation of every pixel (see the module docstring).

    Parameters
    ----------
    scene : xarray.Dataset
        A scene in the scene format (image or top-of-canopy time series).
    fm : ForwardModel, optional
        The instrument's forward model (default on the scene's own band grid,
        :func:`~bayesfluo.inference.baselines.pixels.scene_forward_model`).
    config : ModelConfig, optional
        Priors and free atmospheric latents (default :class:`bayesfluo.model.ModelConfig`).
    free_atmosphere : bool
        Retrieve each pixel's own free atmospheric and sensor latents (not for a tower,
        whose irradiance is measured).
    patch_size : int
        Pixels per side of the patches that share one geometry and operator (or
        operator expansion).
    n_iter : int, optional
        Gauss-Newton steps (default 6; 10 with ``free_atmosphere``, whose steps are
        limited to one prior sd of the atmosphere).
    pixels, operators : optional
        Precomputed inputs (to time the fit alone): band operators, or operator
        expansions with ``free_atmosphere``.

    Returns
    -------
    xarray.Dataset
        ``f760_mean``, ``f760_sd``, ``f760_q05``, ``f760_q50``, ``f760_q95`` (and the same
        for ``f687``, ``sif_peak``, ``reflectance760``), ``fit_chi2``, ``quality_flag``.
    """
    t0 = time.perf_counter()
    fm = fm or scene_forward_model(scene)
    px = pixels or scene_pixels(scene, patch_size, fm)
    if free_atmosphere and px.tower:
        raise ValueError("free_atmosphere is for airborne or spaceborne scenes; a tower's "
                         "irradiance is measured")
    model = baseline_model(fm, config, px)
    n_atm = len(model.free) if free_atmosphere else 0
    n_iter = n_iter or (10 if free_atmosphere else 6)
    if operators is None:
        operators = (patch_expansions(model, px) if free_atmosphere
                     else operators_for(model, px))
    prior = gaussian_prior(model, px, n_atm)
    fit = fit_pixels(model, px, operators, prior, n_iter, n_atm)
    values = summarise_state(model, fit, with_sd=True)
    method = "oe-atmosphere" if free_atmosphere else "oe"
    return to_result(px, scene, values, method,
                     {"retrieval_time_s": round(time.perf_counter() - t0, 3),
                      "free_atmosphere": int(free_atmosphere)})
