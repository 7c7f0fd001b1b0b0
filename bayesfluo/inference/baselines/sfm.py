"""Spectral fitting (SFM): per-pixel weighted least squares through the model's physics.

The state of a pixel is the B-spline reflectance coefficients ``c`` (K) and the SIF peak
amplitudes (far-red, and red where the window holds the O2-B band), with the SIF peak
shapes of :class:`bayesfluo.physics.SifParams` (Gaussians at 740 and 684 nm, sd 21 and
9 nm). The radiance is :func:`bayesfluo.physics.radiance_from_operator` through the
patch's band operator at the prior atmosphere (:mod:`bayesfluo.inference.baselines.pixels`) or,
for a tower, the measured irradiance. This is the SFM of Cogliati et al. (2015, 2019)
with the model's own atmosphere in place of MODTRAN transfer functions.

The fit minimises ``sum_k (y_k - L_k(x))**2 / var_k (+ (x - x_a)^T S_a^-1 (x - x_a)`` for
optimal estimation, :mod:`bayesfluo.inference.baselines.oe`), ``var = a L + b`` the
model's noise (:meth:`bayesfluo.model.SifModel.noise_variance`) at the current
prediction. The radiance is linear in the state but for the multiple-scattering factor
``1 / (1 - rho R)``: a linear weighted least-squares start followed by a fixed number of
Levenberg-Marquardt-damped Gauss-Newton steps converges (the tests check the gradient at
the end). Everything is jitted and vmapped over patches
and their pixels.

Known limitations (the benchmark shows their size): the atmosphere is the prior one, so
an error in surface pressure, aerosol, diffuse path or spectral shift goes into F (the
largest error at HyPlant resolution); the SIF shape is fixed, so a peak that is narrower,
wider or shifted biases F760; no positivity constraint (F may come out negative); no
uncertainty (use :mod:`bayesfluo.inference.baselines.oe`).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo.inference.baselines.pixels import (
    Pixels,
    baseline_model,
    operators_for,
    scene_pixels,
    to_result,
)
from bayesfluo.model import ModelConfig, Patch, SifModel, reflectance_weights
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    build_forward_model,
    radiance_from_operator,
)
from bayesfluo.physics.surface import SifParams, sif_spectrum, sif_taylor

__all__ = ["GaussianPrior", "FitResult", "fit_pixels", "sfm_retrieve", "patch_expansions",
           "summarise_state"]


class GaussianPrior(NamedTuple):
    """Gaussian prior of the state for optimal estimation, per pixel.

    ``mean`` (n_patch, P, D) and ``precision`` (n_patch, P, D, D) in the state's order:
    reflectance coefficients, far-red amplitude, [red amplitude], [atmosphere z]."""

    mean: jax.Array
    precision: jax.Array


class FitResult(NamedTuple):
    """State estimates ``x`` (n_patch, P, D), posterior covariance ``cov`` (D, D per
    pixel; the inverse of the Gauss-Newton Hessian), reduced chi-square ``chi2`` and the
    norm of the last step relative to the state's scale ``step``."""

    x: jax.Array
    cov: jax.Array
    chi2: jax.Array
    step: jax.Array


def _sif(x, k: int, has_red: bool) -> SifParams:
    return SifParams(x[k + 1] if has_red else jnp.zeros_like(x[k]), x[k])


def _pixel_fit(model: SifModel, n_iter: int, n_atm: int, y, valid, op, noise_a, noise_b,
               prior_mean, prior_prec):
    """Gauss-Newton fit of one pixel. ``op`` is a BandOperator, or an OperatorExpansion
    when ``n_atm`` > 0 (the last ``n_atm`` state entries are its coordinates)."""
    fm, has_red = model.fm, model.has_red
    k = fm.n_basis
    n_sif = 2 if has_red else 1

    noise = model.noise_variance

    def variance(signal):
        # signal floored at 1e-2 mW m-2 sr-1 nm-1, so that a shot-noise-only model (b = 0)
        # keeps finite weights where a trial state predicts no light
        return noise(jnp.maximum(signal, 1e-2), noise_a, noise_b)

    def operator(x):
        return op(x[k + n_sif:]) if n_atm else op

    def forward(x):
        return radiance_from_operator(fm, operator(x), x[:k], _sif(x, k, has_red))

    # linear start: L ~ path + design @ (c, amplitudes) with the factor 1/(1 - rho R) = 1
    op0 = op(jnp.zeros(n_atm)) if n_atm else op
    c_ = fm.band_centre_nm
    cols = [jnp.einsum("dbk,db->bk", fm.basis_band, op0.reflected),
            jnp.sum(op0.emitted * _shape_taylor(c_, False), 0)[:, None]]
    if has_red:
        cols.append(jnp.sum(op0.emitted * _shape_taylor(c_, True), 0)[:, None])
    design = jnp.concatenate(cols, 1)
    w0 = 1.0 / variance(y)
    lhs = design.T @ (design * w0[:, None])
    rhs = design.T @ (w0 * (y - op0.path))
    pm = prior_mean[:k + n_sif]
    pp = prior_prec[:k + n_sif, :k + n_sif]
    lhs = lhs + pp + 1e-6 * jnp.diag(jnp.diag(lhs))
    x0 = jnp.linalg.solve(lhs, rhs + pp @ pm)
    x = jnp.concatenate([x0, prior_mean[k + n_sif:]])
    scale = jnp.concatenate([jnp.full(k, 0.01), jnp.full(n_sif, 0.01), jnp.full(n_atm, 0.01)])

    def step(carry, _):
        x, _ = carry
        pred, jac = forward(x), jax.jacfwd(forward)(x)
        w = 1.0 / variance(pred)
        hess = jac.T @ (jac * w[:, None]) + prior_prec
        grad = jac.T @ (w * (y - pred)) - prior_prec @ (x - prior_mean)
        dx = jnp.linalg.solve(hess + 1e-6 * jnp.diag(jnp.diag(hess)), grad)
        if n_atm:  # trust region of the operator expansion: steps of at most 1 prior sd,
            # atmosphere within 3 prior sd of the expansion point
            dz = dx[k + n_sif:]
            dx = dx / jnp.maximum(1.0, jnp.max(jnp.abs(dz)))
            x_new = x + dx
            x_new = x_new.at[k + n_sif:].set(jnp.clip(x_new[k + n_sif:], -3.0, 3.0))
            dx = x_new - x
        return (x + dx, jnp.max(jnp.abs(dx) / scale)), None

    (x, last), _ = jax.lax.scan(step, (x, jnp.float32(jnp.inf)), None, length=n_iter)
    pred, jac = forward(x), jax.jacfwd(forward)(x)
    w = 1.0 / variance(pred)
    hess = jac.T @ (jac * w[:, None]) + prior_prec
    cov = jnp.linalg.inv(hess)
    chi2 = jnp.mean((y - pred) ** 2 * w)
    nan = jnp.where(valid, 1.0, jnp.nan)
    return x * nan, cov * nan, chi2 * nan, last * nan


def _shape_taylor(wavelength, red: bool):
    """Taylor coefficients (3, bands) of the unit-amplitude far-red (or red) peak."""
    return sif_taylor(wavelength, SifParams(1.0, 0.0) if red else SifParams(0.0, 1.0))


_FIT_FNS: dict = {}


def fit_pixels(model: SifModel, px: Pixels, operators, prior: GaussianPrior | None = None,
               n_iter: int = 6, n_atm: int = 0) -> FitResult:
    """Fit every pixel (see the module docstring).

    Parameters
    ----------
    model : SifModel
        Forward model, red peak and noise (:func:`baseline_model`).
    px : Pixels
    operators : BandOperator or OperatorExpansion with leading dimension n_patch
    prior : GaussianPrior, optional
        Without it, plain (unregularised) weighted least squares.
    n_iter : int
        Gauss-Newton steps after the linear start.
    n_atm : int
        Atmospheric state entries (``operators`` is then an OperatorExpansion).
    """
    d = model.n_local + n_atm
    if prior is None:
        if n_atm:
            raise ValueError("a free atmosphere needs a prior (optimal estimation)")
        shape = px.valid.shape
        prior = GaussianPrior(jnp.zeros(shape + (d,)), jnp.zeros(shape + (d, d)))
    key = (id(model), n_iter, n_atm)
    if key not in _FIT_FNS or _FIT_FNS[key][0] is not model:
        def one(y, v, op, a, b, pm, pp):
            return _pixel_fit(model, n_iter, n_atm, y, v, op, a, b, pm, pp)

        patch = jax.vmap(one, in_axes=(0, 0, None, None, None, 0, 0))
        _FIT_FNS[key] = (model, jax.jit(jax.vmap(patch, in_axes=(0, 0, 0, None, None, 0, 0))))
    fn = _FIT_FNS[key][1]
    return FitResult(*fn(jnp.asarray(px.radiance), jnp.asarray(px.valid), operators,
                         jnp.float32(px.noise_a), jnp.float32(px.noise_b),
                         jnp.asarray(prior.mean, jnp.float32),
                         jnp.asarray(prior.precision, jnp.float32)))


def patch_expansions(model: SifModel, px: Pixels, batch_size: int = 8):
    """Second-order expansion of each patch's band operator in the standard-normal
    coordinates of the model's free atmospheric and sensor latents about their prior
    means (:meth:`bayesfluo.model.SifModel.operator_expansion`), leading dimension
    n_patch."""
    key = ("exp", id(model), batch_size)
    if key not in _FIT_FNS or _FIT_FNS[key][0] is not model:
        def many(geom, p0):
            def one(g, p):
                patch = Patch(radiance=None, mask=None, ndvi=None, geometry=g, noise_a=None,
                              noise_b=None, surface_pressure0=p)
                return model.operator_expansion(patch, jnp.zeros(len(model.free)))

            return jax.lax.map(lambda t: one(*t), (geom, p0), batch_size=batch_size)

        _FIT_FNS[key] = (model, jax.jit(many))
    geom = Geometry(*(jnp.asarray(v, jnp.float32) for v in px.patches.geometry))
    return _FIT_FNS[key][1](geom, jnp.asarray(px.patches.surface_pressure0, jnp.float32))


def summarise_state(model: SifModel, fit: FitResult, with_sd: bool) -> dict:
    """F760 (F687), SIF peak and R(760) from fitted states, and their sd from ``fit.cov``
    when ``with_sd``: a dict of (n_patch, P) arrays named as the result format."""
    fm, has_red = model.fm, model.has_red
    k = fm.n_basis
    out = {}
    grads = {}
    for name, wl in (("f760", 760.0), ("f687", 687.0), ("sif_peak", 740.0)):
        if name == "f687" and not has_red:
            continue
        g = np.zeros(fit.x.shape[-1], np.float32)
        g[k] = float(sif_spectrum(wl, SifParams(0.0, 1.0)))
        if has_red:
            g[k + 1] = float(sif_spectrum(wl, SifParams(1.0, 0.0)))
        grads[name] = g
    g = np.zeros(fit.x.shape[-1], np.float32)
    g[:k] = np.asarray(reflectance_weights(fm, 760.0))
    grads["reflectance760"] = g
    x = np.asarray(fit.x)
    cov = np.asarray(fit.cov)
    for name, g in grads.items():
        out[f"{name}_mean"] = x @ g
        if with_sd:
            sd = np.sqrt(np.maximum(np.einsum("...ij,i,j->...", cov, g, g), 0.0))
            out[f"{name}_sd"] = sd
            out[f"{name}_q05"] = out[f"{name}_mean"] - 1.6448536 * sd
            out[f"{name}_q50"] = out[f"{name}_mean"]
            out[f"{name}_q95"] = out[f"{name}_mean"] + 1.6448536 * sd
    out["fit_chi2"] = np.asarray(fit.chi2)
    return out


def sfm_retrieve(scene: xr.Dataset, *, fm: ForwardModel | None = None,
                 config: ModelConfig | None = None, patch_size: int = 8, n_iter: int = 6,
                 pixels: Pixels | None = None, operators: BandOperator | None = None
                 ) -> xr.Dataset:
    """Spectral fitting of every pixel (see the module docstring).

    Parameters
    ----------
    scene : xarray.Dataset
        A scene in the scene format (image or top-of-canopy time series).
    fm : ForwardModel, optional
    config : ModelConfig, optional
        Prior atmosphere (default :class:`bayesfluo.model.ModelConfig`).
    patch_size : int
        Pixels per side of the patches that share one geometry and operator.
    n_iter : int
        Gauss-Newton steps.
    pixels, operators : optional
        Precomputed inputs (to time the fit alone).

    Returns
    -------
    xarray.Dataset
        ``f760_mean`` (``f687_mean``), ``sif_peak_mean`` (mW m-2 sr-1 nm-1),
        ``reflectance760_mean``, ``fit_chi2``, ``quality_flag``.
    """
    t0 = time.perf_counter()
    fm = fm or build_forward_model(scene.attrs["instrument"])
    px = pixels or scene_pixels(scene, patch_size, fm)
    model = baseline_model(fm, config, px)
    ops = operators if operators is not None else operators_for(model, px)
    fit = fit_pixels(model, px, ops, None, n_iter)
    values = summarise_state(model, fit, with_sd=False)
    return to_result(px, scene, values, "sfm",
                     {"retrieval_time_s": round(time.perf_counter() - t0, 3)})
