"""NUTS reference posteriors of patches of pixels, as ArviZ DataTrees.

One NUTS run samples the joint posterior of one patch (:func:`bayesfluo.model.sif_model`:
every pixel's surface plus the patch's shared atmosphere and sensor), with several chains
vectorised, and every pixel of the patch inside one vectorised likelihood. A posterior
of a few hundred dimensions whose scales span three orders of magnitude (reflectance
coefficients fixed by the data to 1e-3, SIF of bare pixels left to its prior) is hard for
NUTS with a diagonal metric: trees saturate. So each run is preconditioned first:

1. the posterior mode in NumPyro's unconstrained space, by damped Newton steps;
2. the Hessian there, exactly, from a handful of Hessian-vector products: pixels do not
   interact except through the shared latents, so one product per *pixel-level* latent
   (perturbing that latent in every pixel at once) and one per shared latent give every
   entry (a coloured sparse Hessian; 8 + 3 products instead of 451 for 64 HyPlant
   pixels);
3. NUTS in whitened coordinates ``x = mode + S u``, ``S S^T = H^-1`` (the Laplace
   covariance, ``S`` from a Cholesky factor that keeps pixels apart), with NumPyro's
   (Stan's) diagonal mass-matrix adaptation on the pixels' ``u`` and dense adaptation on the
   shared ones, to absorb what the Laplace approximation misses;
4. during sampling the patch's band operator (the fine-grid atmosphere and sensor
   response, most of the cost of a gradient) is replaced by its second-order expansion in
   the shared latents about the mode (:func:`bayesfluo.model.operator_expansion`). Its
   error is measured at posterior draws against the exact operator and reported
   (``surrogate_error_sigma``: largest difference over draws, pixels and bands, in noise
   standard deviations; a few hundredths at nominal conditions). ``NutsConfig(operator=
   "exact")`` samples with the exact operator throughout.

Cost (:class:`_Sampler`): NumPyro's NUTS transition (``build_tree``) and warm-up
adaptation, driven here so that one compiled program serves warm-up and sampling, every
patch of the same shape and every number of draws (the data, whitening and adaptation
schedule are arguments; iterations run in calls of ``_CHUNK``). ``S`` is applied by its
blocks (a pixel's own and the shared columns), and for the built-in atmosphere through
the expansion the potential is a fused form of the model's (two small matrix products
for all pixels) that is checked against the model's own potential energy for every patch
before use, the model's being used otherwise.

The whitening is a change of variables with a constant Jacobian, so the draws are
draws of the model's posterior (up to MCMC error, which the convergence diagnostics
report, and the expansion error above); the Laplace approximation only sets the metric.
SIF amplitudes are sampled in a softplus coordinate
(:class:`bayesfluo.model.SoftplusHalfNormal`): in the usual logarithm the likelihood's
curvature grows as the square of the amplitude and NUTS's step size collapses.

Output (:func:`nuts_reference`): an ArviZ DataTree with groups ``posterior`` (chain,
draw, pixel[, basis]) and patch-level latents along ``patch``, ``sample_stats`` (chain,
draw, patch), ``observed_data`` and ``posterior_predictive`` (pixel, band),
``constant_data`` (position of each pixel in the scene, NDVI, mask, patch), and
``convergence`` (per pixel: ``r_hat`` and ``ess_bulk``/``ess_tail`` of F760, the worst
``r_hat_max`` over the pixel's latents and its patch's, ``divergences`` and
``treedepth_hits`` of its patch, and ``converged``). Failures are flagged and warned
about, never dropped.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from jax.flatten_util import ravel_pytree
from numpyro.infer import Predictive
from numpyro.infer.hmc import momentum_generator
from numpyro.infer.hmc_util import (
    IntegratorState,
    build_adaptation_schedule,
    build_tree,
    dual_averaging,
    euclidean_kinetic_energy,
    velocity_verlet,
    welford_covariance,
)
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from bayesfluo.instruments import get_instrument
from bayesfluo.model import (
    SIF_KNEE,
    ModelConfig,
    _reflectance_prior,
    expand_operator,
    operator_expansion,
    patch_geometry,
    prior_pressure,
    shared_parameters,
    sif_model,
    sif_scale,
    start_values,
    toc_initial_values,
)
from bayesfluo.patches import noise_coefficients, sun_distance
from bayesfluo.physics.forward import (
    ForwardModel,
    band_operator,
    build_forward_model,
    radiance_from_operator,
)
from bayesfluo.physics.surface import SifParams, sif_spectrum, sif_taylor

__all__ = ["NutsConfig", "PatchPosterior", "patch_data", "laplace", "sample_patch",
           "nuts_reference", "convergence", "parse_pixels", "RHAT_MAX", "ESS_MIN"]

RHAT_MAX = 1.01
ESS_MIN = 400
_CHUNK = 100  # NUTS iterations per compiled call (warm-up and sampling)
_POST_BLOCK = 100  # draws per compiled call of the constrained sites
_MAX_WINDOWS = 64  # most windows of a warm-up adaptation schedule
# patch data the fused potential knows (anything else: the model's own potential)
_FUSED_KEYS = {"radiance", "mask", "ndvi", "geometry", "noise_a", "noise_b",
               "surface_pressure0", "operator_expansion"}
PIXEL_SITES = ("reflectance_z", "sif_far_red_raw", "sif_red_raw")


@dataclass(frozen=True)
class NutsConfig:
    """Settings of a NUTS run.

    Attributes
    ----------
    num_warmup, num_samples, num_chains : int
        Warm-up and kept draws per chain, and the number of chains (vectorised).
    target_accept : float
        NUTS target acceptance probability (step-size adaptation).
    max_tree_depth : int
        Trees deeper than this are cut (reported as ``treedepth_hits``).
    newton_steps : int
        Most damped Newton steps to the mode.
    predictive_draws : int
        Posterior-predictive draws kept per chain (evenly thinned); 0 for none.
    operator : {"taylor", "exact"}
        ``"taylor"``: NUTS evaluates the patch's band operator through its second-order
        expansion about the mode (:func:`bayesfluo.model.operator_expansion`), about 10x
        cheaper per gradient; its error is measured at ``surrogate_check_draws`` posterior
        draws against the exact operator and reported (``surrogate_error_sigma``, in units
        of the noise standard deviation). ``"exact"``: the fine-grid operator throughout.
    """

    num_warmup: int = 500
    num_samples: int = 500
    num_chains: int = 4
    target_accept: float = 0.9
    max_tree_depth: int = 8
    newton_steps: int = 40
    predictive_draws: int = 50
    operator: str = "taylor"
    surrogate_check_draws: int = 20

    def __post_init__(self):
        if self.num_samples < 1 or self.num_chains < 1 or self.num_warmup < 0:
            raise ValueError("NUTS needs num_samples >= 1, num_chains >= 1, num_warmup >= 0")
        if self.operator not in ("taylor", "exact"):
            raise ValueError(f"operator must be 'taylor' or 'exact', not {self.operator!r}")


def patch_data(scene: xr.Dataset, rows: np.ndarray, cols: np.ndarray,
               snr: float | None = None) -> dict:
    """Model data of the pixels ``(rows, cols)`` of a scene (one patch).

    Geometry is the patch mean (the model has one atmosphere per patch); the noise
    coefficients are the scene's (``noise_a``, ``noise_b`` attributes) or the
    instrument's at ``snr``.

    A top-of-canopy time series (``radiance`` over (time, band), with the measured
    ``irradiance``) gives the time steps ``rows`` (``cols`` must be 0) as the patch's
    pixels, with their ``irradiance`` (mW m-2 nm-1); time steps whose radiance or
    irradiance is not finite, or whose irradiance is not positive, are masked. The
    irradiance noise is the scene's ``irradiance_noise_a``/``_b`` attributes (variance
    of ``E/pi``) where given, else the radiance's (:func:`bayesfluo.model.sif_model`).

    Raises
    ------
    KeyError
        If the scene lacks a variable the model needs.
    ValueError
        If a time series lacks its irradiance or ``cols`` are not 0.
    """
    rows = np.asarray(rows, dtype=int)
    cols = np.asarray(cols, dtype=int)
    tower = "time" in scene["radiance"].dims

    def pick(name, default=None):
        if name not in scene:
            if default is None:
                raise KeyError(f"scene has no variable {name!r}")
            return np.full(rows.size, default, dtype=np.float64)
        v = np.asarray(scene[name].values, dtype=np.float64)
        if v.ndim == 0:
            return np.full(rows.size, float(v))
        if v.ndim == 1:  # (y,) e.g. sensor altitude along track; (time,) for a tower
            return v[rows]
        return v[rows, cols]

    if tower:
        if np.any(cols != 0):
            raise ValueError("a top-of-canopy time series has one column: give its time "
                             "steps as rows and 0 as columns")
        if "irradiance" not in scene:
            raise ValueError("a top-of-canopy time series needs the measured downwelling "
                             "'irradiance' (time, band), mW m-2 nm-1")
        rad = np.asarray(scene["radiance"].transpose("time", "band").values[rows],
                         dtype=np.float32)
        irr = np.asarray(scene["irradiance"].transpose("time", "band").values[rows],
                         dtype=np.float32)
    else:
        rad = np.asarray(scene["radiance"].values[rows, cols], dtype=np.float32)
    mask = pick("mask", 1.0) > 0
    mask &= np.all(np.isfinite(rad), axis=-1)
    rad = np.where(np.isfinite(rad), rad, 0.0).astype(np.float32)
    if "ndvi" not in scene:
        raise KeyError("scene has no 'ndvi' (the SIF prior needs it; give it as an "
                       "ancillary variable, e.g. from the sensor's VNIR module)")
    if snr is not None:
        a, b = get_instrument(scene.attrs["instrument"]).noise_coefficients(snr)
    else:
        a, b = noise_coefficients(scene)
    raa = (pick("saa", 0.0 if tower else None) - pick("vaa", 0.0)) % 360.0
    surf = pick("surface_altitude")
    out = dict(
        radiance=jnp.asarray(rad), mask=jnp.asarray(mask, jnp.float32),
        ndvi=jnp.asarray(pick("ndvi"), jnp.float32),
        geometry=patch_geometry(pick("sza"), pick("vza", 0.0 if tower else None), raa, surf,
                                pick("sensor_altitude"), sun_distance(scene)),
        noise_a=jnp.float32(a), noise_b=jnp.float32(b),
        surface_pressure0=prior_pressure(surf))
    if tower:
        ok = np.all(np.isfinite(irr) & (irr > 0), axis=-1)
        mask &= ok
        out["mask"] = jnp.asarray(mask, jnp.float32)
        out["irradiance"] = jnp.asarray(np.where(ok[:, None], irr, 1.0), jnp.float32)
        out["irradiance_noise_a"] = jnp.float32(scene.attrs.get("irradiance_noise_a", a))
        out["irradiance_noise_b"] = jnp.float32(scene.attrs.get("irradiance_noise_b", b))
    return out


# --- preconditioning ------------------------------------------------------------------

@dataclass
class _Potential:
    """The patch's potential energy on a flat unconstrained vector, with its layout."""

    value_and_grad: callable
    hvps: callable            # (x, V (m, n)) -> (m, n)
    unravel: callable
    x0: np.ndarray
    pixel: np.ndarray          # pixel of each entry, -1 for shared latents
    slot: np.ndarray           # index of the latent within its pixel (or shared index)
    potential: callable
    compiled: _Compiled | None = None


def initial_values(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool) -> dict:
    """A starting point for the mode search: the atmosphere and sensor at their prior
    means and, per pixel, reflectance and SIF amplitudes by linear least squares through
    that atmosphere (the radiance is linear in the spline coefficients and the SIF
    amplitudes but for the small multiple-scattering factor, updated twice). A
    top-of-canopy patch (measured irradiance) starts from
    :func:`bayesfluo.model.toc_initial_values`."""
    if data.get("irradiance") is not None:
        return toc_initial_values(fm, cfg, data, has_red)
    atm, sens, _ = shared_parameters(cfg, data, {n: jnp.float32(0.0) for n in cfg.free})
    op = band_operator(fm, atm, data["geometry"], sens)
    c = fm.band_centre_nm
    cols = [np.asarray(jnp.einsum("dbk,db->kb", fm.basis_band, op.reflected)).T,
            np.asarray(jnp.sum(op.emitted * sif_taylor(c, SifParams(0.0, 1.0)), 0))[:, None]]
    if has_red:
        cols.append(np.asarray(jnp.sum(op.emitted * sif_taylor(c, SifParams(1.0, 0.0)), 0)
                               )[:, None])
    design = np.concatenate(cols, axis=1).astype(np.float64)  # (bands, K + n_sif)
    y = np.asarray(data["radiance"], np.float64) - np.asarray(op.path)[None]
    b0 = np.asarray(fm.basis_band[0], np.float64)
    rho = np.asarray(op.rho_dd, np.float64)
    ms = np.ones_like(y)
    for _ in range(3):
        theta = np.linalg.lstsq(design, (y * ms).T, rcond=None)[0].T
        r0 = np.clip(theta[:, :fm.n_basis] @ b0.T, 0.0, 0.95)
        ms = 1.0 - rho[None] * r0
    k = fm.n_basis
    coeffs = np.clip(theta[:, :k], 0.01, 0.99)
    mu, chol = (np.asarray(a, np.float64) for a in _reflectance_prior(fm, cfg))
    z = np.linalg.solve(chol, (np.log(coeffs / (1 - coeffs)) - mu).T).T
    out = start_values(cfg, data, z, theta[:, k:], has_red)
    for name in ("surface_pressure", "aot550", "diffuse_path", "spectral_shift",
                 "fwhm_scale"):
        if name in cfg.free:
            out[f"{name}_z"] = jnp.float32(0.0)
    return out


class _Compiled:
    """Jitted functions of one patch shape (model, configuration, pixel count), with the
    patch's data as an argument: patches of the same shape reuse them, compiled once."""

    def __init__(self, fm: ForwardModel, cfg: ModelConfig, has_red: bool, data: dict,
                 init: dict):
        self.fm, self.cfg, self.has_red = fm, cfg, has_red
        n_pix = int(data["ndvi"].shape[0])
        args = (fm, cfg, data, has_red)
        z = unconstrain_fn(sif_model, args, {}, init)
        flat, self.unravel = ravel_pytree(z)
        self.n = int(flat.size)
        pix, slot = {}, {}
        offset = shared_offset = 0
        # where each site sits in the whitened order: (name, pixel site?, first, last, shape)
        # with first/last slots of a pixel site, or indices among the shared latents
        self.layout = []
        for name in sorted(z):
            v = np.asarray(z[name])
            if name in PIXEL_SITES:
                ids = np.broadcast_to(
                    np.arange(n_pix).reshape((n_pix,) + (1,) * (v.ndim - 1)), v.shape)
                k = int(np.prod(v.shape[1:]))
                loc = np.broadcast_to(np.arange(k).reshape(v.shape[1:]), v.shape) + offset
                self.layout.append((name, True, offset, offset + k, v.shape))
                offset += k
                pix[name], slot[name] = ids.astype(np.float32), loc.astype(np.float32)
            else:
                pix[name] = np.full(v.shape, -1.0, np.float32)
                slot[name] = np.full(v.shape, -1.0, np.float32)
                self.layout.append((name, False, shared_offset, shared_offset + v.size,
                                    v.shape))
                shared_offset += v.size
        self.pixel = np.asarray(ravel_pytree(pix)[0]).astype(int)
        self.slot = np.asarray(ravel_pytree(slot)[0]).astype(int)
        shared = np.flatnonzero(self.pixel < 0)
        self.slot[shared] = offset + np.arange(shared.size)
        unravel = self.unravel

        def pot(x, d):
            return potential_energy(sif_model, (fm, cfg, d, has_red), {}, unravel(x))

        self.potential = pot
        layout = self.layout

        def pot_whitened(xp, xs, d):
            # potential of the pixels' latents xp (P, k) and the shared ones xs, in
            # whitened order: the sites are slices of them (no gather, whose gradient is
            # a slow scatter on CPU)
            z = {name: (xp[:, lo:hi] if per_pixel else xs[lo:hi]).reshape(shape)
                 for name, per_pixel, lo, hi, shape in layout}
            return potential_energy(sif_model, (fm, cfg, d, has_red), {}, z)

        self.potential_whitened = pot_whitened
        mu, chol = _reflectance_prior(fm, cfg)
        shape760 = sif_spectrum(760.0, SifParams(0.0, 1.0))
        basis0 = fm.basis_band[0]  # (bands, K)
        half_log_2pi = 0.5 * np.log(2.0 * np.pi)

        def pot_fused(xp, xs, d):
            # The potential of pot_whitened for the built-in atmosphere through the
            # operator's expansion, written out: the radiance is linear in the spline
            # coefficients and SIF amplitudes but for the multiple-scattering factor, so
            # the per-pixel work is two small matrix products, where
            # radiance_from_operator under vmap builds the SIF Taylor terms pixel by
            # pixel. Checked against pot_whitened before use (_Compiled.fused_ok).
            z = {name: (xp[:, lo:hi] if per_pixel else xs[lo:hi]).reshape(shape)
                 for name, per_pixel, lo, hi, shape in layout}
            zs = jnp.stack([z[f"{n}_z"] for n in cfg.free]) if cfg.free else jnp.zeros(0)
            refl = z["reflectance_z"]
            lp = -0.5 * (jnp.sum(refl**2) + jnp.sum(zs**2)) - half_log_2pi * (
                refl.size + zs.size)

            def soft_half_normal(v):  # value and log density in the softplus coordinate
                x = SIF_KNEE * jax.nn.softplus(v / SIF_KNEE)
                return x, jnp.sum(0.5 * np.log(2.0 / np.pi) - 0.5 * x**2
                                  + jax.nn.log_sigmoid(v / SIF_KNEE))

            scale = sif_scale(d["ndvi"], cfg) / shape760
            far, lp_far = soft_half_normal(z["sif_far_red_raw"])
            lp = lp + lp_far
            op = expand_operator(d["operator_expansion"], zs)
            c = fm.band_centre_nm
            emitted = [jnp.sum(op.emitted * sif_taylor(c, SifParams(0.0, 1.0)), 0)]
            amps = [scale * far]
            if has_red:
                red, lp_red = soft_half_normal(z["sif_red_raw"])
                lp = lp + lp_red
                emitted.append(jnp.sum(op.emitted * sif_taylor(c, SifParams(1.0, 0.0)), 0))
                amps.append(cfg.sif_red_ratio * scale * red)
            coeffs = jax.nn.sigmoid(mu + refl @ chol.T)  # (P, K)
            design = jnp.concatenate(
                [jnp.einsum("dbk,db->kb", fm.basis_band, op.reflected), jnp.stack(emitted)])
            num = jnp.concatenate([coeffs, jnp.stack(amps, -1)], -1) @ design
            pred = op.path + num / (1.0 - op.rho_dd * (coeffs @ basis0.T))
            sd = jnp.sqrt(d["noise_a"] * jnp.maximum(pred, 0.0) + d["noise_b"])
            ll = jnp.sum(-0.5 * ((d["radiance"] - pred) / sd) ** 2 - jnp.log(sd)
                         - half_log_2pi, -1)
            return -(lp + jnp.sum(jnp.where(d["mask"] > 0, ll, 0.0)))

        self.potential_fused = pot_fused

        @jax.jit
        def both(xp, xs, d):  # (m, P, k), (m, n_shared) -> generic and fused potentials
            return (jax.vmap(pot_whitened, (0, 0, None))(xp, xs, d),
                    jax.vmap(pot_fused, (0, 0, None))(xp, xs, d))

        self._both = both
        self.vg = jax.jit(jax.value_and_grad(pot))

        @jax.jit
        def hvps(x, vs, d):
            g = jax.grad(pot)
            return jax.vmap(lambda v: jax.jvp(lambda y: g(y, d), (x,), (v,))[1])(vs)

        self.hvps = hvps

        @jax.jit
        def post(xs, d):  # (_POST_BLOCK, n) unconstrained -> constrained sites, deterministics
            return jax.vmap(lambda x: constrain_fn(sif_model, (fm, cfg, d, has_red), {},
                                                   unravel(x), return_deterministic=True))(xs)

        self._post = post

        @jax.jit
        def predict(latents, key, d):  # (_POST_BLOCK, ...) latents -> radiance draws
            return Predictive(sif_model, posterior_samples=latents, return_sites=["radiance"])(
                key, fm, cfg, d, has_red)["radiance"]

        self._predict = predict

        self.n_shared = int(np.sum(self.pixel < 0))
        self.n_pixel_latents = (self.n - self.n_shared) // max(n_pix, 1)
        self.n_pix = n_pix
        self.expansion = jax.jit(lambda d, z0: operator_expansion(fm, cfg, d, z0))
        self._samplers = {}

    def predictive(self, latents: dict, key: jax.Array, d: dict) -> np.ndarray:
        """Posterior-predictive radiance (draw, pixel, band) of latent draws (leading
        dimension: draw), with the model as it is (exact operator unless ``d`` has an
        expansion), in blocks of a fixed size (compiled once)."""
        m = len(next(iter(latents.values())))
        pad = -m % _POST_BLOCK
        full = {k: jnp.concatenate([v, jnp.broadcast_to(v[:1], (pad,) + v.shape[1:])])
                for k, v in latents.items()}
        out = [np.asarray(self._predict({k: v[i:i + _POST_BLOCK] for k, v in full.items()},
                                        jax.random.fold_in(key, i), d))
               for i in range(0, m + pad, _POST_BLOCK)]
        return np.concatenate(out)[:m]

    def post(self, xs: jax.Array, d: dict) -> dict:
        """Constrained sites and deterministics of unconstrained draws ``xs`` (m, n), in
        blocks of a fixed size (compiled once whatever ``m``)."""
        m = xs.shape[0]
        pad = -m % _POST_BLOCK
        xs = jnp.concatenate([xs, jnp.broadcast_to(xs[:1], (pad, xs.shape[1]))])
        outs = [self._post(xs[i:i + _POST_BLOCK], d) for i in range(0, m + pad, _POST_BLOCK)]
        return {k: jnp.concatenate([o[k] for o in outs])[:m] for k in outs[0]}

    def fused_ok(self, w: _Whitened, d: dict, key: jax.Array) -> bool:
        """Whether the fused potential applies to the patch data ``d`` (built-in
        atmosphere through the operator's expansion) and equals the model's, at the mode
        and at three draws of the Laplace approximation, to float32 rounding."""
        if set(d) - _FUSED_KEYS or d.get("operator_expansion") is None or not self.n_pix:
            return False
        u = jnp.concatenate([jnp.zeros((1, self.n)),
                             jax.random.normal(key, (3, self.n))]).astype(jnp.float32)
        xp, xs = jax.vmap(lambda v: _unwhiten(self._split(v), w))(u)
        generic, fused = (np.asarray(v, np.float64) for v in self._both(xp, xs, d))
        tol = 1e-5 * np.max(np.abs(generic)) + 1e-3
        return bool(np.all(np.isfinite(fused)) and np.max(np.abs(fused - generic)) < tol)

    def _split(self, u: jax.Array) -> dict:
        n_p = self.n - self.n_shared
        return {"p": u[:n_p], "s": u[n_p:]} if self.n_shared else {"p": u}

    def sampler(self, max_tree_depth: int, fused: bool) -> _Sampler:
        """The NUTS sampler of this patch shape (compiled on first use), on the fused
        potential or the model's."""
        key = (max_tree_depth, fused)
        if key not in self._samplers:
            self._samplers[key] = _Sampler(
                self.potential_fused if fused else self.potential_whitened, self.n_pix,
                self.n_pixel_latents, self.n_shared, max_tree_depth)
        return self._samplers[key]


_COMPILED: dict = {}


def _compiled(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool,
              init: dict) -> _Compiled:
    key = (id(fm), cfg.__repr__(), has_red, int(data["ndvi"].shape[0]))
    hit = _COMPILED.get(key)
    if hit is None or hit.fm is not fm:
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        hit = _COMPILED[key] = _Compiled(fm, cfg, has_red, data, init)
    return hit


def _potential(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool,
               init: dict | None = None) -> _Potential:
    if init is None:
        init = initial_values(fm, cfg, data, has_red)
    c = _compiled(fm, cfg, data, has_red, init)
    x0 = ravel_pytree(unconstrain_fn(sif_model, (fm, cfg, data, has_red), {}, init))[0]
    return _Potential(value_and_grad=lambda x: c.vg(x, data),
                      hvps=lambda x, vs: c.hvps(x, vs, data), unravel=c.unravel,
                      x0=np.asarray(x0),
                      pixel=c.pixel, slot=c.slot, potential=lambda x: c.potential(x, data),
                      compiled=c)


def _hessian(p: _Potential, x: np.ndarray) -> np.ndarray:
    """Exact Hessian of the potential from one product per latent slot (float64)."""
    n = x.size
    n_slots = int(p.slot.max()) + 1
    tangents = np.zeros((n_slots, n), np.float32)
    tangents[p.slot, np.arange(n)] = 1.0
    hv = np.asarray(p.hvps(jnp.asarray(x, jnp.float32), jnp.asarray(tangents)),
                    dtype=np.float64)  # (slots, n): hv[s, r] = sum_{c: slot c = s} H[r, c]
    # within a pixel (and for shared columns), H[r, c] = hv[slot c, r]
    h = hv[p.slot, :].T.copy()
    same = (p.pixel[:, None] == p.pixel[None, :]) | (p.pixel[None, :] < 0)
    h = np.where(same, h, 0.0)
    shared = p.pixel < 0
    h[np.ix_(shared, ~shared)] = h[np.ix_(~shared, shared)].T  # shared rows by symmetry
    return 0.5 * (h + h.T)


def laplace(p: _Potential, max_steps: int = 40, tol: float = 0.5
            ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Mode of the potential by damped Newton steps and the Hessian there.

    Returns ``(mode, hessian, info)``, info with ``steps``, ``decrement`` (the final
    Newton decrement, in units of log density) and ``converged``.
    """
    x = p.x0.astype(np.float64)
    f, g = (np.asarray(a, np.float64) for a in p.value_and_grad(jnp.asarray(x, jnp.float32)))
    lam = 1e-3
    dec = np.inf
    steps = 0
    for steps in range(1, max_steps + 1):  # noqa: B007
        h = _hessian(p, x)
        scale = np.maximum(np.abs(np.diag(h)), 1.0)
        for _ in range(30):
            try:
                step = -np.linalg.solve(h + lam * np.diag(scale), g)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            dec = float(-g @ step)
            if not dec > 0:  # not a descent direction: more damping
                lam *= 10.0
                continue
            fn, gn = (np.asarray(a, np.float64)
                      for a in p.value_and_grad(jnp.asarray(x + step, jnp.float32)))
            # float32 potential: accept when the decrement is below its rounding level
            if np.isfinite(fn) and (fn < f or dec < 1e-5 * max(abs(f), 1.0)):
                x, f, g = x + step, fn, gn
                lam = max(lam / 10.0, 1e-8)
                break
            lam *= 10.0
        else:
            break
        if dec < tol:
            break
    h = _hessian(p, x)
    return x, h, dict(steps=steps, decrement=dec, converged=bool(dec < tol))


def _whitened_order(pixel: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """Model coordinates in whitened order: pixel by pixel (by slot within a pixel, so SIF
    last), shared latents last."""
    return np.lexsort((slot, np.where(pixel < 0, np.iinfo(np.int32).max, pixel)))


def _whitening(h: np.ndarray, pixel: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """S with S S^T = H^-1 that keeps pixels apart: ``S = P^T R^-1`` with ``R^T R`` the
    Cholesky factorisation of H ordered pixel by pixel (SIF last within a pixel) and the
    shared latents last. A pixel's coordinates then depend only on its own and the
    shared whitened coordinates, and the last whitened coordinate of a pixel moves its
    SIF alone, so NUTS's diagonal adaptation can rescale where the Laplace approximation
    is off (SIF near zero, skewed in log space). Eigenvalues are floored if H is not
    positive definite."""
    h = 0.5 * (h + h.T)
    order = _whitened_order(pixel, slot)
    hp = h[np.ix_(order, order)]
    try:
        chol = np.linalg.cholesky(hp)
    except np.linalg.LinAlgError:
        w, v = np.linalg.eigh(hp)
        w = np.maximum(w, 1e-8 * w.max())
        chol = np.linalg.cholesky((v * w) @ v.T)
    sp = np.linalg.inv(chol).T  # upper triangular: sp sp^T = hp^-1
    s = np.empty_like(sp)
    s[order] = sp
    return s


class _Whitened(NamedTuple):
    """``x = mode + S u`` in blocks, in whitened order (pixel by pixel, shared latents
    last): pixel ``i``'s latents are ``mode_p[i] + a[i] u_i + e[i] u_shared``, the shared
    ones ``mode_s + g u_shared``. S has no other non-zero entries (:func:`_whitening`), so
    a product costs ``P k (k + n_shared)`` instead of ``(P k + n_shared)^2``."""

    mode_p: jax.Array  # (P, k)
    mode_s: jax.Array  # (n_shared,)
    a: jax.Array       # (P, k, k)
    e: jax.Array       # (P, k, n_shared)
    g: jax.Array       # (n_shared, n_shared)


def _whitening_blocks(s: np.ndarray, mode: np.ndarray, pixel: np.ndarray, slot: np.ndarray
                      ) -> _Whitened:
    """The blocks of :func:`_whitening`'s ``S`` and the mode, float32."""
    order = _whitened_order(pixel, slot)
    n_pix = int(pixel.max()) + 1 if np.any(pixel >= 0) else 0
    n_p = int(np.sum(pixel >= 0))
    k = n_p // max(n_pix, 1)
    sp = np.asarray(s)[order]  # rows and columns in whitened order
    mo = np.asarray(mode)[order]
    idx = np.arange(n_pix)
    a = sp[:n_p, :n_p].reshape(n_pix, k, n_pix, k)[idx, :, idx, :]
    e = sp[:n_p, n_p:].reshape(n_pix, k, -1)
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    return _Whitened(f32(mo[:n_p].reshape(n_pix, k)), f32(mo[n_p:]), f32(a), f32(e),
                     f32(sp[n_p:, n_p:]))


def _unwhiten(u: dict, w: _Whitened) -> tuple[jax.Array, jax.Array]:
    """Latents ``(pixels (P, k), shared)`` in whitened order of whitened coordinates
    ``u = {"p": (P k,), "s": (n_shared,)}`` (``"s"`` absent without shared latents).
    Products as broadcast sums: XLA fuses them, and for k of a few they beat a batched
    matrix product on CPU."""
    n_pix, k = w.a.shape[:2]
    xp = w.mode_p + jnp.sum(w.a * u["p"].reshape(n_pix, 1, k), -1)
    if "s" not in u:
        return xp, w.mode_s
    return xp + jnp.sum(w.e * u["s"], -1), w.mode_s + jnp.sum(w.g * u["s"], -1)


class _Chains(NamedTuple):
    """NUTS state of each chain (leading dimension: chain)."""

    z: dict
    potential_energy: jax.Array
    grad: dict
    key: jax.Array


class _Adapt(NamedTuple):
    """Warm-up adaptation state of each chain: step size, inverse mass matrix and its
    square root (diagonal on the pixels' whitened coordinates, dense on the shared ones),
    dual-averaging and Welford states."""

    step_size: jax.Array
    inverse_mass_matrix: dict
    mass_matrix_sqrt: dict
    dual_averaging: tuple
    welford: dict


class _Sampler:
    """NUTS (NumPyro's multinomial iterative tree building, ``build_tree``) on the
    potential in whitened coordinates, chains vectorised, with NumPyro's warm-up
    adaptation (dual averaging of the step size, Stan's windowed schedule for the mass
    matrix, regularised as NumPyro does) driven by the schedule as data.

    The patch's data, the whitening and the schedule are arguments of the compiled
    functions and the iterations run in calls of at most ``_CHUNK``, so one compilation
    serves every patch of the same shape and every number of warm-up and kept draws.
    Equivalent to ``MCMC(NUTS(model, dense_mass=[shared]), chain_method="vectorized")``
    on the whitened model, except that the window-end update of the adaptation is a
    branch taken once for all chains instead of a select evaluated at every step.
    """

    def __init__(self, potential, n_pix: int, k: int, n_shared: int, max_tree_depth: int):
        kinetic = euclidean_kinetic_energy
        ss_init, ss_update = dual_averaging()
        mm_init, mm_update, mm_final = welford_covariance(diagonal=False)
        shapes = {("p",): (n_pix * k,)}
        if n_shared:
            shapes[("s",)] = (n_shared, n_shared) if n_shared > 1 else (n_shared,)
        self.n_p = n_pix * k
        self.n_shared = n_shared

        def upot(u, w, d):
            return potential(*_unwhiten(u, w), d)

        def split(u):  # (n,) whitened -> dict
            z = {"p": u[:self.n_p]}
            if n_shared:
                z["s"] = u[self.n_p:]
            return z

        def init(u0, key, w, d):  # one chain
            z = split(u0)
            pe, grad = jax.value_and_grad(upot)(z, w, d)
            eye = {b: jnp.ones(s) if len(s) == 1 else jnp.eye(s[0]) for b, s in shapes.items()}
            step = jnp.float32(1.0)
            return (_Chains(z, pe, grad, key),
                    _Adapt(step, eye, eye, ss_init(jnp.log(10.0 * step)), mm_init(shapes)))

        def transition(c, a, w, d):  # one chain, one NUTS transition
            key, k_mom, k_tree = jax.random.split(c.key, 3)
            r = momentum_generator(c.z, a.mass_matrix_sqrt, k_mom)
            _, update = velocity_verlet(lambda u: upot(u, w, d), kinetic)
            tree = build_tree(update, kinetic, IntegratorState(c.z, r, c.potential_energy,
                                                               c.grad),
                              a.inverse_mass_matrix, a.step_size, k_tree,
                              max_delta_energy=1000.0, max_tree_depth=max_tree_depth)
            info = dict(diverging=tree.diverging, num_steps=tree.num_proposals,
                        accept_prob=tree.sum_accept_probs / tree.num_proposals,
                        energy=tree.z_proposal_energy, potential_energy=tree.z_proposal_pe,
                        step_size=a.step_size)
            return _Chains(tree.z_proposal, tree.z_proposal_pe, tree.z_proposal_grad,
                           key), info

        def adapt(a, accept_prob, z, middle, last, target):  # one chain, after a transition
            ss = ss_update(target - accept_prob, a.dual_averaging)
            step = jnp.exp(jnp.where(last, ss[1], ss[0]))  # the average at the end
            fi = jnp.finfo(step.dtype)
            step = jnp.clip(step, fi.tiny, fi.max)
            mm = jax.lax.cond(middle, lambda m: mm_update(z, m), lambda m: m, a.welford)
            return a._replace(step_size=step, dual_averaging=ss, welford=mm)

        def window_end(a):  # one chain: new mass matrix, step-size averaging restarts
            imm, sqrt, _ = mm_final(a.welford, regularize=True)
            return a._replace(inverse_mass_matrix=imm, mass_matrix_sqrt=sqrt,
                              welford=mm_init(shapes),
                              dual_averaging=ss_init(jnp.log(10.0) + jnp.log(a.step_size)))

        chains = jax.vmap(transition, (0, 0, None, None))

        def record(c, info):
            u = jnp.concatenate([c.z["p"], c.z["s"]], -1) if n_shared else c.z["p"]
            return dict(info, u=u)

        @jax.jit
        def iterate(c, a, window, t0, t1, warm, ends, n_windows, n_warmup, target, w, d):
            # iterations t0 .. t1 - 1 (at most _CHUNK), adapting if warm; one program for
            # warm-up and sampling, so NUTS is compiled once
            out = jax.eval_shape(lambda: record(*chains(c, a, w, d)))
            buf = jax.tree.map(lambda s: jnp.zeros((_CHUNK,) + s.shape, s.dtype), out)

            def adapt_all(t, a, window, z, accept_prob):
                middle = (window > 0) & (window < n_windows - 1)
                a = jax.vmap(adapt, (0, 0, 0, None, None, None))(
                    a, accept_prob, z, middle, t == n_warmup - 1, target)
                at_end = t == ends[window]
                a = jax.lax.cond(at_end & middle, jax.vmap(window_end), lambda x: x, a)
                return a, jnp.where(at_end, window + 1, window)

            def body(t, carry):
                c, a, window, buf = carry
                c, info = chains(c, a, w, d)
                a, window = jax.lax.cond(warm, adapt_all, lambda t, a, wi, z, p: (a, wi),
                                         t, a, window, c.z, info["accept_prob"])
                buf = jax.tree.map(lambda b, v: b.at[t - t0].set(v), buf, record(c, info))
                return c, a, window, buf

            return jax.lax.fori_loop(t0, t1, body, (c, a, window, buf))

        self._init = jax.jit(jax.vmap(init, (0, 0, None, None)))
        self._iterate = iterate

    def run(self, key: jax.Array, u0: jax.Array, w: _Whitened, d: dict, num_warmup: int,
            num_samples: int, target_accept: float, progress: bool = False) -> dict:
        """Warm up and draw from ``u0`` (chain, n): whitened draws ``u`` (chain, draw, n)
        and the sample statistics (chain, draw)."""
        c, a = self._init(u0, jax.random.split(key, u0.shape[0]), w, d)
        sched = np.asarray(build_adaptation_schedule(num_warmup), np.int32).reshape(-1, 2)
        if len(sched) > _MAX_WINDOWS:
            raise ValueError(f"num_warmup={num_warmup} gives more than {_MAX_WINDOWS} "
                             "adaptation windows")
        ends = np.full(_MAX_WINDOWS, -1, np.int32)
        ends[:len(sched)] = sched[:, 1]
        window = jnp.int32(0)
        i32, f32 = jnp.int32, jnp.float32
        bar = None
        if progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=num_warmup + num_samples, desc="NUTS warm-up")
        args = (jnp.asarray(ends), i32(len(sched)), i32(num_warmup), f32(target_accept), w, d)
        for t0 in range(0, num_warmup, _CHUNK):
            t1 = min(t0 + _CHUNK, num_warmup)
            c, a, window, _ = self._iterate(c, a, window, i32(t0), i32(t1), True, *args)
            if bar is not None:
                bar.update(t1 - t0)
        if bar is not None:
            bar.set_description("NUTS sampling")
        out = []
        for t0 in range(0, num_samples, _CHUNK):
            n = min(_CHUNK, num_samples - t0)
            c, a, window, buf = self._iterate(c, a, window, i32(0), i32(n), False, *args)
            out.append(jax.tree.map(lambda b, n=n: np.asarray(b[:n]), buf))
            if bar is not None:
                bar.update(n)
        if bar is not None:
            bar.close()
        # (draw, chain, ...) -> (chain, draw, ...)
        return {k: np.swapaxes(np.concatenate([o[k] for o in out]), 0, 1) for k in out[0]}


# --- sampling -------------------------------------------------------------------------

@dataclass
class PatchPosterior:
    """Draws of one patch: constrained sites (chain, draw, ...), sample stats (chain,
    draw), posterior-predictive radiance (chain, draw', pixel, band) and timings."""

    samples: dict
    stats: dict
    predictive: np.ndarray | None
    predictive_draw: np.ndarray
    timing: dict
    laplace: dict


def sample_patch(fm: ForwardModel, cfg: ModelConfig, data: dict, key: jax.Array,
                 nuts: NutsConfig = NutsConfig(), has_red: bool = False,
                 progress: bool = False) -> PatchPosterior:
    """NUTS draws of one patch's posterior (see the module docstring)."""
    t0 = time.perf_counter()
    p = _potential(fm, cfg, data, has_red)
    mode, h, linfo = laplace(p, nuts.newton_steps)
    s = jnp.asarray(_whitening(h, p.pixel, p.slot), jnp.float32)
    m = jnp.asarray(mode, jnp.float32)
    t1 = time.perf_counter()

    k_init, k_run, k_pred = jax.random.split(key, 3)
    u0 = jax.random.normal(k_init, (nuts.num_chains, mode.size), jnp.float32)
    run_data = data
    if nuts.operator == "taylor":
        at_mode = p.unravel(m)
        z0 = jnp.stack([at_mode[f"{n}_z"] for n in cfg.free]) if cfg.free else jnp.zeros(0)
        run_data = dict(data, operator_expansion=p.compiled.expansion(data, z0))
    w = _whitening_blocks(np.asarray(s), mode, p.pixel, p.slot)
    fused = p.compiled.fused_ok(w, run_data, jax.random.fold_in(k_init, 1))
    linfo["fused_potential"] = fused
    res = p.compiled.sampler(nuts.max_tree_depth, fused).run(
        k_run, u0, w, run_data, nuts.num_warmup, nuts.num_samples, nuts.target_accept,
        progress)
    u = jnp.asarray(res["u"])  # (chain, draw, n), whitened order
    t2 = time.perf_counter()

    x = m + jnp.einsum("ij,cdj->cdi", s, u)
    post = p.compiled.post(x.reshape(-1, mode.size), run_data)
    samples = {k: np.asarray(v).reshape(u.shape[:2] + v.shape[1:]) for k, v in post.items()}
    if nuts.operator == "taylor":
        linfo["surrogate_error_sigma"] = surrogate_error(
            fm, cfg, data, run_data["operator_expansion"], samples,
            nuts.surrogate_check_draws)
    steps = res["num_steps"]
    stats = dict(diverging=res["diverging"], n_steps=steps,
                 tree_depth=np.ceil(np.log2(steps + 1)).astype(np.int32),
                 acceptance_rate=res["accept_prob"], energy=res["energy"],
                 lp=-res["potential_energy"], step_size=res["step_size"])
    pred, pdraw = None, np.arange(0)
    if nuts.predictive_draws > 0:
        pdraw = np.unique(np.linspace(0, nuts.num_samples - 1, nuts.predictive_draws
                                      ).round().astype(int))
        latents = {k: v[:, pdraw].reshape((-1,) + v.shape[2:]) for k, v in samples.items()
                   if k.endswith("_z") or k.endswith("_raw")}
        pp = p.compiled.predictive(latents, k_pred, dict(data, radiance=None))
        pred = pp.reshape((nuts.num_chains, pdraw.size) + pp.shape[1:])
    t3 = time.perf_counter()
    timing = dict(laplace_s=t1 - t0, nuts_s=t2 - t1, post_s=t3 - t2, total_s=t3 - t0)
    return PatchPosterior(samples, stats, pred, pdraw, timing, linfo)


_ERR_FNS: dict = {}


def _surrogate_error_fn(fm: ForwardModel, cfg: ModelConfig):
    key = (id(fm), repr(cfg))
    if key in _ERR_FNS and _ERR_FNS[key][0] is fm:
        return _ERR_FNS[key][1]

    @jax.jit
    def err(zv, coeffs, far, red, data, expansion):
        atm, sens, _ = shared_parameters(cfg, data, dict(zip(cfg.free, zv, strict=True)))
        exact = band_operator(fm, atm, data["geometry"], sens)
        approx = expand_operator(expansion, zv)
        f = jax.vmap(lambda o: jax.vmap(lambda c, a, b: radiance_from_operator(
            fm, o, c, SifParams(a, b)))(coeffs, red, far))
        le, la = f(jax.tree.map(lambda a, b: jnp.stack([a, b]), exact, approx))
        sd = jnp.sqrt(data["noise_a"] * jnp.maximum(le, 0.0) + data["noise_b"])
        return jnp.max(jnp.abs(le - la) / sd)

    _ERR_FNS[key] = (fm, err)
    return err


def surrogate_error(fm: ForwardModel, cfg: ModelConfig, data: dict, expansion,
                    samples: dict, n_draws: int = 20) -> float:
    """Largest difference between the radiance through the exact band operator and
    through its expansion, over ``n_draws`` posterior draws (evenly thinned) and every
    pixel and band, in units of the noise standard deviation."""
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
    idx = np.unique(np.linspace(0, len(flat["f760"]) - 1, n_draws).round().astype(int))

    err = _surrogate_error_fn(fm, cfg)
    worst = 0.0
    for i in idx:
        zv = (jnp.stack([jnp.asarray(flat[f"{n}_z"][i]) for n in cfg.free]) if cfg.free
              else jnp.zeros(0))
        red = flat["sif_red"][i] if "sif_red" in flat else np.zeros_like(flat["sif_far_red"][i])
        worst = max(worst, float(err(zv, flat["reflectance_coeffs"][i],
                                     flat["sif_far_red"][i], red, data, expansion)))
    return worst


# --- many patches -> DataTree -----------------------------------------------------------

def parse_pixels(spec: str, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixels from ``"r0:r1,c0:c1"`` (a block, Python slices) or ``"r,c;r,c;..."``."""
    ny, nx = shape
    try:
        if ":" in spec:
            rs, cs = spec.split(",")

            def span(text, size):
                lo, hi = (v.strip() for v in text.split(":"))
                lo, hi = int(lo) if lo else 0, int(hi) if hi else size
                if not 0 <= lo < hi <= size:
                    raise IndexError
                return np.arange(lo, hi)

            rr, cc = span(rs, ny), span(cs, nx)
            r, c = np.meshgrid(rr, cc, indexing="ij")
            r, c = r.ravel(), c.ravel()
        else:
            pairs = [tuple(int(v) for v in item.split(",")) for item in spec.split(";")
                     if item.strip()]
            r, c = (np.array(v) for v in zip(*pairs, strict=True))
    except IndexError as err:
        raise ValueError(f"pixels {spec!r} fall outside the {ny} x {nx} scene") from err
    except ValueError as err:
        raise ValueError(f"cannot read pixels {spec!r}: give 'r0:r1,c0:c1' or "
                         "'r,c;r,c;...'") from err
    if r.size == 0:
        raise ValueError(f"pixels {spec!r} select nothing in a {ny} x {nx} scene")
    if r.min() < 0 or c.min() < 0 or r.max() >= ny or c.max() >= nx:
        raise ValueError(f"pixels {spec!r} fall outside the {ny} x {nx} scene")
    return r, c


def _patches(rows, cols, patch_size: int) -> list[np.ndarray]:
    """Group pixels into square blocks of the scene of side ``patch_size``."""
    block = (rows // patch_size) * 100_000 + cols // patch_size
    return [np.flatnonzero(block == b) for b in np.unique(block)]


def nuts_reference(scene: xr.Dataset, rows, cols, *, patch_size: int = 8,
                   config: ModelConfig | None = None, nuts: NutsConfig = NutsConfig(),
                   seed: int = 0, snr: float | None = None, model: ForwardModel | None = None,
                   progress: bool = True) -> xr.DataTree:
    """NUTS reference posteriors of scene pixels, grouped into patches that share an
    atmosphere (square blocks of ``patch_size`` pixels of the scene).

    A top-of-canopy time series (``radiance`` over (time, band), with ``irradiance``):
    ``rows`` are time steps (``cols`` 0), sampled in blocks of ``patch_size**2``
    consecutive time steps (as many as an image patch holds); they share nothing (the
    measured irradiance replaces the atmosphere: ``config.free`` is set empty and the
    exact operator is used), so blocks only batch the work. In the DataTree ``y`` is then
    the time index and ``x`` is 0.

    Returns the DataTree described in the module docstring.
    """
    import dataclasses

    rows, cols = np.asarray(rows), np.asarray(cols)
    inst = scene.attrs["instrument"]
    fm = model if model is not None else build_forward_model(inst)
    cfg = config or ModelConfig()
    has_red = bool(float(fm.band_centre_nm[0]) < 690.0)
    tower = "time" in scene["radiance"].dims
    if tower:
        cfg = cfg.replace(free=())
        nuts = dataclasses.replace(nuts, operator="exact")
        block = rows // (patch_size * patch_size)
        groups = [np.flatnonzero(block == b) for b in np.unique(block)]
    else:
        groups = _patches(rows, cols, patch_size)
    key = jax.random.PRNGKey(seed)
    results = []
    for i, idx in enumerate(groups):
        if progress:
            print(f"patch {i + 1}/{len(groups)}: {idx.size} "
                  f"{'time steps' if tower else 'pixels'}", flush=True)
        data = patch_data(scene, rows[idx], cols[idx], snr)
        results.append(sample_patch(fm, cfg, data, jax.random.fold_in(key, i), nuts,
                                    has_red, progress))
    order = np.concatenate(groups)
    dt = to_datatree(results, [patch_data(scene, rows[g], cols[g], snr) for g in groups],
                     fm, rows[order], cols[order], nuts.max_tree_depth)
    dt.attrs.update(instrument=inst, seed=seed, source="bayesfluo nuts",
                    num_warmup=nuts.num_warmup, num_samples=nuts.num_samples,
                    num_chains=nuts.num_chains)
    if tower:
        dt.attrs["layout"] = "top-of-canopy time series: constant_data y is the time index"
    return dt


def to_datatree(results: list[PatchPosterior], datas: list[dict], fm: ForwardModel,
                rows=None, cols=None, max_tree_depth: int | None = None) -> xr.DataTree:
    """Combine patch posteriors into one DataTree (pixels concatenated, patch-level
    latents and sample stats along ``patch``) with per-pixel convergence."""
    n_per = [int(d["ndvi"].shape[0]) for d in datas]
    patch_of = np.repeat(np.arange(len(n_per)), n_per)
    posterior = {}
    dims = {}
    for name in results[0].samples:
        vals = [r.samples[name] for r in results]
        if vals[0].ndim >= 3:  # (chain, draw, pixel, ...); shared latents are scalars
            posterior[name] = np.concatenate(vals, axis=2)
            dims[name] = ["pixel"] + (["basis"] if vals[0].ndim == 4 else [])
        else:
            posterior[name] = np.stack(vals, axis=2)
            dims[name] = ["patch"]
    stats = {k: np.stack([r.stats[k] for r in results], axis=2) for k in results[0].stats}
    sdims = {k: ["patch"] for k in stats}
    groups = {"posterior": posterior, "sample_stats": stats}
    obs = np.concatenate([np.asarray(d["radiance"]) for d in datas])
    groups["observed_data"] = {"radiance": obs}
    dims["radiance"] = ["pixel", "band"]
    coords = {"pixel": np.arange(obs.shape[0]), "patch": np.arange(len(n_per)),
              "band": np.asarray(fm.band_centre_nm, np.float64)}
    dt = az.from_dict(groups, dims={**dims, **sdims}, coords=coords)
    if results[0].predictive is not None:
        pp = np.concatenate([r.predictive for r in results], axis=2)
        ppd = xr.Dataset({"radiance": (("chain", "draw", "pixel", "band"), pp)},
                         coords={"chain": np.arange(pp.shape[0]),
                                 "draw": results[0].predictive_draw,
                                 "pixel": coords["pixel"], "band": coords["band"]})
        dt["posterior_predictive"] = xr.DataTree(ppd)
    const = xr.Dataset(
        {"ndvi": ("pixel", np.concatenate([np.asarray(d["ndvi"]) for d in datas])),
         "mask": ("pixel", np.concatenate([np.asarray(d["mask"]) for d in datas])),
         "patch_of_pixel": ("pixel", patch_of)},
        coords={"pixel": coords["pixel"]})
    if rows is not None:
        const["y"] = ("pixel", np.asarray(rows))
        const["x"] = ("pixel", np.asarray(cols))
    dt["constant_data"] = xr.DataTree(const)
    if max_tree_depth is not None:
        dt.attrs["max_tree_depth"] = int(max_tree_depth)
    conv = convergence(dt)
    surr = np.array([r.laplace.get("surrogate_error_sigma", 0.0) for r in results])
    conv["surrogate_error_sigma"] = ("pixel", surr[patch_of])
    conv["surrogate_error_sigma"].attrs.update(
        long_name="largest difference between the radiance through the exact band operator "
                  "and through its expansion at posterior draws of the pixel's patch, in "
                  "noise standard deviations (0 when sampled with the exact operator)",
        units="1")
    dt["convergence"] = xr.DataTree(conv)
    timing = {k: float(sum(r.timing[k] for r in results)) for k in results[0].timing}
    dt.attrs.update({f"time_{k}": v for k, v in timing.items()})
    bad = int((~dt["convergence"]["converged"].values).sum())
    if bad:
        warnings.warn(f"NUTS did not converge on {bad} of {obs.shape[0]} pixels "
                      f"(R-hat > {RHAT_MAX}, bulk ESS of F760 < {ESS_MIN} or divergences); "
                      "see the 'convergence' group", RuntimeWarning, stacklevel=2)
    return dt


def convergence(dt: xr.DataTree) -> xr.Dataset:
    """Per-pixel convergence: R-hat, bulk and tail ESS of F760, worst R-hat over the
    pixel's latents and its patch's, divergences and tree-depth hits of its patch."""
    post = dt["posterior"].to_dataset()
    patch_of = dt["constant_data"]["patch_of_pixel"].values if "constant_data" in dt else None
    if patch_of is None:
        patch_of = np.zeros(post.sizes["pixel"], int)
    latents = [v for v in post.data_vars if v.endswith("_z") or v.endswith("_raw")]
    rhat = az.rhat(dt, var_names=latents).to_dataset()
    worst = xr.zeros_like(post["f760"].isel(chain=0, draw=0), dtype=float)
    for name in latents:
        r = rhat[name]
        extra = [d for d in r.dims if d not in ("pixel", "patch")]
        if extra:
            r = r.max(extra)
        if "patch" in r.dims:
            r = xr.DataArray(r.values[patch_of], dims="pixel")
        worst = np.maximum(worst, r)
    f = az.rhat(dt, var_names=["f760"]).to_dataset()["f760"]
    eb = az.ess(dt, var_names=["f760"], method="bulk").to_dataset()["f760"]
    et = az.ess(dt, var_names=["f760"], method="tail").to_dataset()["f760"]
    ss = dt["sample_stats"].to_dataset()
    div = ss["diverging"].sum(("chain", "draw")).values[patch_of]
    depth = ss["tree_depth"]
    max_depth = int(dt.attrs.get("max_tree_depth", 0)) or int(depth.max())
    hits = (depth >= max_depth).sum(("chain", "draw")).values[patch_of]
    conv = xr.Dataset({
        "r_hat": ("pixel", f.values), "ess_bulk": ("pixel", eb.values),
        "ess_tail": ("pixel", et.values), "r_hat_max": ("pixel", np.asarray(worst)),
        "divergences": ("pixel", div.astype(np.int64)),
        "treedepth_hits": ("pixel", hits.astype(np.int64))},
        coords={"pixel": post["pixel"].values})
    conv["converged"] = ((conv.r_hat_max <= RHAT_MAX) & (conv.ess_bulk >= ESS_MIN)
                         & (conv.divergences == 0))
    conv["r_hat"].attrs.update(long_name="split R-hat of F760", units="1")
    conv["ess_bulk"].attrs.update(long_name="bulk effective sample size of F760", units="1")
    conv["ess_tail"].attrs.update(long_name="tail effective sample size of F760", units="1")
    conv["r_hat_max"].attrs.update(long_name="largest R-hat of the pixel's latents and its "
                                   "patch's", units="1")
    conv["converged"].attrs.update(
        long_name=f"r_hat_max <= {RHAT_MAX}, ess_bulk >= {ESS_MIN} and no divergences")
    return conv
