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
   diagonal mass-matrix adaptation on the pixels' ``u`` and dense adaptation on the
   shared ones, to absorb what the Laplace approximation misses;
4. during sampling the patch's band operator (the fine-grid atmosphere and sensor
   response, most of the cost of a gradient) is replaced by its second-order expansion in
   the shared latents about the mode (:func:`bayesfluo.model.operator_expansion`). Its
   error is measured at posterior draws against the exact operator and reported
   (``surrogate_error_sigma``: largest difference over draws, pixels and bands, in noise
   standard deviations; a few hundredths at nominal conditions). ``NutsConfig(operator=
   "exact")`` samples with the exact operator throughout.

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

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import xarray as xr
from jax.flatten_util import ravel_pytree
from numpyro.distributions import constraints
from numpyro.infer import MCMC, NUTS, Predictive
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from bayesfluo.instruments import get_instrument
from bayesfluo.model import (
    ModelConfig,
    _reflectance_prior,
    expand_operator,
    operator_expansion,
    patch_geometry,
    prior_pressure,
    shared_parameters,
    sif_model,
    sif_scale,
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
        if self.operator not in ("taylor", "exact"):
            raise ValueError(f"operator must be 'taylor' or 'exact', not {self.operator!r}")


def patch_data(scene: xr.Dataset, rows: np.ndarray, cols: np.ndarray,
               snr: float | None = None) -> dict:
    """Model data of the pixels ``(rows, cols)`` of a scene (one patch).

    Geometry is the patch mean (the model has one atmosphere per patch); the noise
    coefficients are the scene's (``noise_a``, ``noise_b`` attributes) or the
    instrument's at ``snr``.
    """
    rows = np.asarray(rows, dtype=int)
    cols = np.asarray(cols, dtype=int)

    def pick(name, default=None):
        if name not in scene:
            if default is None:
                raise KeyError(f"scene has no variable {name!r}")
            return np.full(rows.size, default, dtype=np.float64)
        v = np.asarray(scene[name].values, dtype=np.float64)
        if v.ndim == 0:
            return np.full(rows.size, float(v))
        if v.ndim == 1:  # (y,) e.g. sensor altitude along track
            return v[rows]
        return v[rows, cols]

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
    raa = (pick("saa") - pick("vaa", 0.0)) % 360.0
    surf = pick("surface_altitude")
    return dict(
        radiance=jnp.asarray(rad), mask=jnp.asarray(mask, jnp.float32),
        ndvi=jnp.asarray(pick("ndvi"), jnp.float32),
        geometry=patch_geometry(pick("sza"), pick("vza"), raa, surf, pick("sensor_altitude"),
                                sun_distance(scene)),
        noise_a=jnp.float32(a), noise_b=jnp.float32(b),
        surface_pressure0=prior_pressure(surf))


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
    amplitudes but for the small multiple-scattering factor, updated twice)."""
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
    shape760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
    scale = np.asarray(sif_scale(data["ndvi"], cfg), np.float64) / shape760
    out = {"reflectance_z": jnp.asarray(z, jnp.float32),
           "sif_far_red_raw": jnp.asarray(np.clip(theta[:, k] / scale, 0.1, 3.0), jnp.float32)}
    if has_red:
        out["sif_red_raw"] = jnp.asarray(
            np.clip(theta[:, k + 1] / (cfg.sif_red_ratio * scale), 0.1, 3.0), jnp.float32)
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
        offset = 0
        for name in sorted(z):
            v = np.asarray(z[name])
            if name in PIXEL_SITES:
                ids = np.broadcast_to(
                    np.arange(n_pix).reshape((n_pix,) + (1,) * (v.ndim - 1)), v.shape)
                k = int(np.prod(v.shape[1:]))
                loc = np.broadcast_to(np.arange(k).reshape(v.shape[1:]), v.shape) + offset
                offset += k
                pix[name], slot[name] = ids.astype(np.float32), loc.astype(np.float32)
            else:
                pix[name] = np.full(v.shape, -1.0, np.float32)
                slot[name] = np.full(v.shape, -1.0, np.float32)
        self.pixel = np.asarray(ravel_pytree(pix)[0]).astype(int)
        self.slot = np.asarray(ravel_pytree(slot)[0]).astype(int)
        shared = np.flatnonzero(self.pixel < 0)
        self.slot[shared] = offset + np.arange(shared.size)
        unravel = self.unravel

        def pot(x, d):
            return potential_energy(sif_model, (fm, cfg, d, has_red), {}, unravel(x))

        self.potential = pot
        self.vg = jax.jit(jax.value_and_grad(pot))

        @jax.jit
        def hvps(x, vs, d):
            g = jax.grad(pot)
            return jax.vmap(lambda v: jax.jvp(lambda y: g(y, d), (x,), (v,))[1])(vs)

        self.hvps = hvps

        @jax.jit
        def post(xs, d):  # (m, n) unconstrained -> constrained sites and deterministics
            return jax.lax.map(lambda x: constrain_fn(sif_model, (fm, cfg, d, has_red), {},
                                                      unravel(x), return_deterministic=True),
                               xs, batch_size=100)

        self.post = post

        n_shared = int(np.sum(self.pixel < 0))
        self.n_shared = n_shared

        def whitened(d, mode, scale):
            # whitened coordinates in the order of _whitening: pixels, then shared latents
            up = numpyro.sample("u_pixel", dist.ImproperUniform(constraints.real, (),
                                                                (self.n - n_shared,)))
            us = numpyro.sample("u_shared", dist.ImproperUniform(constraints.real, (),
                                                                 (n_shared,)))
            with numpyro.handlers.block():  # the inner model's sites stay inside
                energy = pot(mode + scale @ jnp.concatenate([up, us]), d)
            numpyro.factor("log_density", -energy)

        self.whitened = whitened
        self.expansion = jax.jit(lambda d, z0: operator_expansion(fm, cfg, d, z0))
        self._mcmc = {}

    def mcmc(self, nuts: NutsConfig, progress: bool) -> MCMC:
        key = (nuts, progress)
        if key not in self._mcmc:
            kernel = NUTS(self.whitened, target_accept_prob=nuts.target_accept,
                          max_tree_depth=nuts.max_tree_depth,
                          dense_mass=[("u_shared",)] if self.n_shared > 1 else False)
            self._mcmc[key] = MCMC(kernel, num_warmup=nuts.num_warmup,
                                   num_samples=nuts.num_samples, num_chains=nuts.num_chains,
                                   chain_method="vectorized", progress_bar=progress,
                                   jit_model_args=True)
        return self._mcmc[key]


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


def _whitening(h: np.ndarray, pixel: np.ndarray, slot: np.ndarray) -> np.ndarray:
    """S with S S^T = H^-1 that keeps pixels apart: ``S = P^T R^-1`` with ``R^T R`` the
    Cholesky factorisation of H ordered pixel by pixel (SIF last within a pixel) and the
    shared latents last. A pixel's coordinates then depend only on its own and the
    shared whitened coordinates, and the last whitened coordinate of a pixel moves its
    SIF alone, so NUTS's diagonal adaptation can rescale where the Laplace approximation
    is off (SIF near zero, skewed in log space). Eigenvalues are floored if H is not
    positive definite."""
    h = 0.5 * (h + h.T)
    order = np.lexsort((slot, np.where(pixel < 0, np.iinfo(np.int32).max, pixel)))
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
    mcmc = p.compiled.mcmc(nuts, progress)
    ns = p.compiled.n_shared
    mcmc.run(k_run, run_data, m, s,
             init_params={"u_pixel": u0[:, :mode.size - ns], "u_shared": u0[:, mode.size - ns:]},
             extra_fields=("diverging", "num_steps", "accept_prob", "energy",
                           "potential_energy", "adapt_state.step_size"))
    draws = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
    u = jnp.concatenate([draws["u_pixel"], draws["u_shared"]], axis=-1)  # (chain, draw, n)
    extra = mcmc.get_extra_fields(group_by_chain=True)
    t2 = time.perf_counter()

    x = m + jnp.einsum("ij,cdj->cdi", s, u)
    post = p.compiled.post(x.reshape(-1, mode.size), run_data)
    samples = {k: np.asarray(v).reshape(u.shape[:2] + v.shape[1:]) for k, v in post.items()}
    if nuts.operator == "taylor":
        linfo["surrogate_error_sigma"] = surrogate_error(
            fm, cfg, data, run_data["operator_expansion"], samples,
            nuts.surrogate_check_draws)
    steps = np.asarray(extra["num_steps"])
    stats = dict(diverging=np.asarray(extra["diverging"]), n_steps=steps,
                 tree_depth=np.ceil(np.log2(steps + 1)).astype(np.int32),
                 acceptance_rate=np.asarray(extra["accept_prob"]),
                 energy=np.asarray(extra["energy"]), lp=-np.asarray(extra["potential_energy"]),
                 step_size=np.asarray(extra["adapt_state.step_size"]))
    pred, pdraw = None, np.arange(0)
    if nuts.predictive_draws > 0:
        pdraw = np.unique(np.linspace(0, nuts.num_samples - 1, nuts.predictive_draws
                                      ).round().astype(int))
        latents = {k: v[:, pdraw].reshape((-1,) + v.shape[2:]) for k, v in samples.items()
                   if k.endswith("_z") or k.endswith("_raw")}
        pp = Predictive(sif_model, posterior_samples=latents, return_sites=["radiance"])(
            k_pred, fm, cfg, dict(data, radiance=None), has_red)["radiance"]
        pred = np.asarray(pp).reshape((nuts.num_chains, pdraw.size) + pp.shape[1:])
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

    Returns the DataTree described in the module docstring.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    inst = scene.attrs["instrument"]
    fm = model if model is not None else build_forward_model(inst)
    cfg = config or ModelConfig()
    has_red = bool(float(fm.band_centre_nm[0]) < 690.0)
    groups = _patches(rows, cols, patch_size)
    key = jax.random.PRNGKey(seed)
    results = []
    for i, idx in enumerate(groups):
        if progress:
            print(f"patch {i + 1}/{len(groups)}: {idx.size} pixels", flush=True)
        data = patch_data(scene, rows[idx], cols[idx], snr)
        results.append(sample_patch(fm, cfg, data, jax.random.fold_in(key, i), nuts,
                                    has_red, progress))
    order = np.concatenate(groups)
    dt = to_datatree(results, [patch_data(scene, rows[g], cols[g], snr) for g in groups],
                     fm, rows[order], cols[order], nuts.max_tree_depth)
    dt.attrs.update(instrument=inst, seed=seed, source="bayesfluo nuts",
                    num_warmup=nuts.num_warmup, num_samples=nuts.num_samples,
                    num_chains=nuts.num_chains)
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
