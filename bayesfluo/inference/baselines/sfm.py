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

**Top of canopy (FloX convention).** For a tower time series the fit is the one FloX
users run (the spectral fitting of Meroni and Colombo, Cogliati et al. 2015 and the
SpecFit processing of FloX data): per time step, on the file's own band grid and with the
*measured* irradiance ``E`` of that step,

    ``L(lambda) = E(lambda)/pi * R(lambda) + F(lambda)``

in fitting windows around the O2 bands, by default 750-780 nm (O2-A) and 670-700 nm
(O2-B, where the file covers it; :data:`TOC_SFM_WINDOWS_NM`). ``R`` is a polynomial of
degree :data:`TOC_SFM_DEGREE` in each window (Legendre basis on the window), ``F`` the
model's fixed peak shapes (far-red Gaussian at 740 nm, sd 21 nm; red at 684 nm, sd 9 nm)
with free amplitudes shared by the windows (the far-red tail reaches into the O2-B
window). The model is linear in its coefficients (no path radiance, no multiple
scattering above a canopy), so the fit is weighted linear least squares with weights
``1 / (a L + b)``, re-weighted at the prediction (``n_iter`` solves), vectorised over the
time steps with :func:`jax.vmap`. ``f760_noise_sd`` (``f687_noise_sd``) propagate the
radiance noise through the fit (``(X^T W X)^-1``); the irradiance's noise and what the
model neglects (the few metres of air between canopy and sensor, SIF scattered back by
the atmosphere onto the canopy, the band-integrated ``E R`` taken as the product of band
values) are not in them. Degree 4 by default: on simulated FloX series a cubic leaves
the curvature of the red edge in 670-700 nm (F687 off by about 0.2 mW m-2 sr-1 nm-1),
degree 4 and 5 do not, and F760 moves by less than 0.01 between them. On a noise-free
simulated 5 m tower the neglected physics leaves F760 about 0.02 mW m-2 sr-1 nm-1 low
(1-2 % of a crop's midday F760; ``tests/test_flox_baselines.py``).
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
    scene_forward_model,
    scene_pixels,
    to_result,
)
from bayesfluo.model import ModelConfig, Patch, SifModel, reflectance_weights
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    radiance_from_operator,
)
from bayesfluo.physics.sensor import noise_variance
from bayesfluo.physics.surface import SifParams, sif_spectrum, sif_taylor

__all__ = ["GaussianPrior", "FitResult", "fit_pixels", "sfm_retrieve", "patch_expansions",
           "summarise_state", "TOC_SFM_WINDOWS_NM", "TOC_SFM_DEGREE", "toc_design",
           "toc_sfm_fit"]

#: Fitting windows (nm) of the top-of-canopy SFM: O2-A and O2-B (FloX convention).
TOC_SFM_WINDOWS_NM = ((750.0, 780.0), (670.0, 700.0))
#: Degree of the top-of-canopy SFM's reflectance polynomial in each window.
TOC_SFM_DEGREE = 4


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


class TocDesign(NamedTuple):
    """The fixed part of the top-of-canopy SFM on a band grid (:func:`toc_design`).

    Attributes
    ----------
    index : ndarray (n,)
        The bands fitted (inside a window), indices into the file's band grid.
    basis : ndarray (n, n_windows * (degree + 1))
        Reflectance polynomials, each window's block zero outside it.
    peaks : ndarray (n, 1 or 2)
        Unit-amplitude far-red (and red) SIF peaks at the band centres.
    windows_nm : tuple of (float, float)
        The windows used (those holding at least ``3 (degree + 1)`` bands).
    has_red : bool
        A window holds 687 nm: the red peak is fitted and F687 reported.
    gradients : dict
        Linear functionals of the coefficient vector: ``f760``, ``sif_peak`` (740 nm),
        ``reflectance760`` and, with ``has_red``, ``f687``.
    """

    index: np.ndarray
    basis: np.ndarray
    peaks: np.ndarray
    windows_nm: tuple
    has_red: bool
    gradients: dict


def _legendre(x: np.ndarray, degree: int) -> np.ndarray:
    """Legendre polynomials P_0..P_degree at x (..., degree + 1)."""
    out = [np.ones_like(x), x]
    for n in range(1, degree):
        out.append(((2 * n + 1) * x * out[n] - n * out[n - 1]) / (n + 1))
    return np.stack(out[:degree + 1], -1)


def toc_design(wavelength: np.ndarray, windows_nm=TOC_SFM_WINDOWS_NM,
               degree: int = TOC_SFM_DEGREE) -> TocDesign:
    """The reflectance polynomials and SIF peaks of the top-of-canopy SFM (module
    docstring) on a band grid (nm).

    Raises
    ------
    ValueError
        If the windows are not increasing non-overlapping (lo, hi) pairs, the degree is
        negative, or no window with enough bands holds 760 nm.
    """
    wl = np.asarray(wavelength, np.float64)
    wins = [tuple(float(v) for v in w) for w in windows_nm]
    if degree < 0:
        raise ValueError(f"the reflectance degree must be >= 0, got {degree}")
    if not wins or any(len(w) != 2 or not w[0] < w[1] for w in wins):
        raise ValueError(f"SFM windows must be (lo, hi) pairs in nm, lo < hi: {windows_nm}")
    ordered = sorted(wins)
    if any(a[1] > b[0] for a, b in zip(ordered[:-1], ordered[1:], strict=True)):
        raise ValueError(f"SFM windows overlap: {windows_nm}")
    n_coef = degree + 1
    used = [w for w in wins if np.count_nonzero((wl >= w[0]) & (wl <= w[1])) >= 3 * n_coef]
    if not any(w[0] <= 760.0 <= w[1] for w in used):
        raise ValueError(f"no SFM window with at least {3 * n_coef} bands holds 760 nm "
                         f"(windows {wins} nm, bands {wl[0]:.2f}-{wl[-1]:.2f} nm)")
    has_red = any(w[0] <= 687.0 <= w[1] for w in used)
    inside = [(wl >= w[0]) & (wl <= w[1]) for w in used]
    index = np.flatnonzero(np.any(inside, 0))
    x = wl[index]
    basis = np.zeros((x.size, len(used) * n_coef))
    for j, (w, sel) in enumerate(zip(used, inside, strict=True)):
        rows = sel[index]
        basis[rows, j * n_coef:(j + 1) * n_coef] = _legendre(
            (x[rows] - 0.5 * (w[0] + w[1])) / (0.5 * (w[1] - w[0])), degree)
    shapes = [SifParams(0.0, 1.0)] + ([SifParams(1.0, 0.0)] if has_red else [])

    def peaks_at(w):
        return np.stack([np.asarray(sif_spectrum(np.asarray(w, np.float64), p), np.float64)
                         for p in shapes], -1)

    n_r = basis.shape[1]
    grads = {}
    for name, w in (("f760", 760.0), ("f687", 687.0), ("sif_peak", 740.0)):
        if name == "f687" and not has_red:
            continue
        g = np.zeros(n_r + len(shapes))
        g[n_r:] = peaks_at(w)
        grads[name] = g
    g = np.zeros(n_r + len(shapes))
    j = next(i for i, w in enumerate(used) if w[0] <= 760.0 <= w[1])
    w = used[j]
    g[j * n_coef:(j + 1) * n_coef] = _legendre(
        np.asarray((760.0 - 0.5 * (w[0] + w[1])) / (0.5 * (w[1] - w[0]))), degree)
    grads["reflectance760"] = g
    return TocDesign(index, basis, peaks_at(x), tuple(used), has_red, grads)


def _toc_fit_one(y, e, valid, basis, peaks, noise_a, noise_b, n_iter: int):
    """Weighted linear least squares of one time step (module docstring): coefficients,
    their covariance and the reduced chi-square."""
    design = jnp.concatenate([e[:, None] / jnp.pi * basis, peaks], 1)
    # columns scaled to unit norm: E/pi (~300) and the peaks (~1) in one float32 system
    scale = jnp.sqrt(jnp.sum(design * design, 0)) + 1e-30
    d = design / scale

    def variance(signal):
        return noise_variance(jnp.maximum(signal, 1e-2), noise_a, noise_b)

    w = 1.0 / variance(y)
    for _ in range(n_iter):
        lhs = d.T @ (d * w[:, None])
        coef = jnp.linalg.solve(lhs, d.T @ (w * y))
        pred = d @ coef
        w = 1.0 / variance(pred)
    lhs = d.T @ (d * w[:, None])
    cov = jnp.linalg.inv(lhs) / jnp.outer(scale, scale)
    chi2 = jnp.mean((y - pred) ** 2 * w)
    nan = jnp.where(valid, 1.0, jnp.nan)
    return coef / scale * nan, cov * nan, chi2 * nan


_TOC_FN = jax.jit(jax.vmap(_toc_fit_one, in_axes=(0, 0, 0, None, None, None, None, None)),
                  static_argnums=7)


def toc_sfm_fit(design: TocDesign, radiance, irradiance, valid, noise_a: float,
                noise_b: float, n_iter: int = 2) -> dict:
    """Fit every time step of a top-of-canopy series (module docstring).

    Parameters
    ----------
    design : TocDesign
        :func:`toc_design` on the series' band grid.
    radiance, irradiance : array (time, bands)
        Upwelling radiance (mW m-2 sr-1 nm-1) and downwelling irradiance (mW m-2 nm-1)
        on the full band grid.
    valid : array (time,) of bool
    noise_a, noise_b : float
        Radiance noise variance ``a L + b``.
    n_iter : int
        Weighted solves (the first weighted by the measured radiance, the others by the
        prediction).

    Returns
    -------
    dict
        (time,) arrays ``f760_mean``, ``f760_noise_sd`` (``f687_*``), ``sif_peak_mean``,
        ``reflectance760_mean``, ``fit_chi2``.
    """
    if n_iter < 1:
        raise ValueError(f"n_iter must be >= 1, got {n_iter}")
    idx = jnp.asarray(design.index)
    coef, cov, chi2 = _TOC_FN(jnp.asarray(radiance, jnp.float32)[:, idx],
                              jnp.asarray(irradiance, jnp.float32)[:, idx],
                              jnp.asarray(valid), jnp.asarray(design.basis, jnp.float32),
                              jnp.asarray(design.peaks, jnp.float32), jnp.float32(noise_a),
                              jnp.float32(noise_b), int(n_iter))
    coef, cov = np.asarray(coef, np.float64), np.asarray(cov, np.float64)
    out = {}
    for name, g in design.gradients.items():
        out[f"{name}_mean"] = coef @ g
        if name in ("f760", "f687"):
            out[f"{name}_noise_sd"] = np.sqrt(np.maximum(
                np.einsum("...ij,i,j->...", cov, g, g), 0.0))
    out["fit_chi2"] = np.asarray(chi2, np.float64)
    return out



def sfm_retrieve(scene: xr.Dataset, *, fm: ForwardModel | None = None,
                 config: ModelConfig | None = None, patch_size: int = 8, n_iter: int = 6,
                 pixels: Pixels | None = None, operators: BandOperator | None = None,
                 windows_nm=None, reflectance_degree: int = TOC_SFM_DEGREE) -> xr.Dataset:
    """Spectral fitting of every pixel (see the module docstring).

    Parameters
    ----------
    scene : xarray.Dataset
        A scene in the scene format (image or top-of-canopy time series).
    fm : ForwardModel, optional
        The instrument's forward model (images; default on the scene's own band grid,
        :func:`~bayesfluo.inference.baselines.pixels.scene_forward_model`). A
        top-of-canopy series needs none.
    config : ModelConfig, optional
        Prior atmosphere (default :class:`bayesfluo.model.ModelConfig`).
    patch_size : int
        Pixels per side of the patches that share one geometry and operator.
    n_iter : int
        Gauss-Newton steps (images); weighted solves of a top-of-canopy series (at most
        the default 6 is plenty: the model is linear, the weights converge in two).
    pixels, operators : optional
        Precomputed inputs (to time the fit alone); a top-of-canopy series ignores
        ``operators`` (its irradiance is in ``pixels``).
    windows_nm : sequence of (float, float), optional
        Top-of-canopy series only: the fitting windows, nm (default
        :data:`TOC_SFM_WINDOWS_NM`, 750-780 and 670-700 nm); windows the file does not
        cover are skipped, one must hold 760 nm.
    reflectance_degree : int
        Top-of-canopy series only: degree of the reflectance polynomial per window.

    Returns
    -------
    xarray.Dataset
        ``f760_mean`` (``f687_mean``), ``sif_peak_mean`` (mW m-2 sr-1 nm-1),
        ``reflectance760_mean``, ``fit_chi2``, ``quality_flag``; for a top-of-canopy
        series also ``f760_noise_sd`` (``f687_noise_sd``) and the attribute
        ``sfm_windows_nm``.
    """
    t0 = time.perf_counter()
    if "time" in scene["radiance"].dims:
        px = pixels or scene_pixels(scene, patch_size)
        design = toc_design(px.wavelength, TOC_SFM_WINDOWS_NM if windows_nm is None
                            else windows_nm, reflectance_degree)
        values = toc_sfm_fit(design, px.radiance[:, 0], px.irradiance[:, 0], px.valid[:, 0],
                             px.noise_a, px.noise_b, min(n_iter, 6))
        values = {k: v[:, None] for k, v in values.items()}
        attrs = {"sfm_windows_nm": ", ".join(f"{lo:g}-{hi:g}" for lo, hi in design.windows_nm),
                 "sfm_reflectance_degree": int(reflectance_degree),
                 "sfm_convention": "top of canopy, measured irradiance: L = E/pi R + F"}
        attrs["retrieval_time_s"] = round(time.perf_counter() - t0, 3)
        return to_result(px, scene, values, "sfm", attrs, n_bands=design.index.size)
    if windows_nm is not None:
        raise ValueError("windows_nm is for top-of-canopy time series (FloX); an image "
                         "scene is fitted over the instrument's whole window")
    fm = fm or scene_forward_model(scene)
    px = pixels or scene_pixels(scene, patch_size, fm)
    model = baseline_model(fm, config, px)
    ops = operators if operators is not None else operators_for(model, px)
    fit = fit_pixels(model, px, ops, None, n_iter)
    values = summarise_state(model, fit, with_sd=False)
    return to_result(px, scene, values, "sfm",
                     {"retrieval_time_s": round(time.perf_counter() - t0, 3)})
