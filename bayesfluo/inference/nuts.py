"""NUTS reference posteriors of patches of pixels, as ArviZ DataTrees.

One NUTS run samples the joint posterior of one patch
(:meth:`bayesfluo.model.SifModel.program`: every pixel's surface plus the patch's shared
atmosphere and sensor), with several chains vectorised, and every pixel of the patch
inside one vectorised likelihood. A posterior of a few hundred dimensions whose scales
span three orders of magnitude (reflectance coefficients fixed by the data to 1e-3, SIF
of bare pixels left to its prior) is hard for NUTS with a diagonal metric: trees
saturate. So each run is preconditioned first, with the model's Laplace / Newton engine
(:mod:`bayesfluo.model.laplace`, which the refinement of the guide uses too):

1. the posterior mode in NumPyro's unconstrained space, by damped Newton steps
   (:func:`bayesfluo.model.laplace.laplace`) from a least-squares start
   (:func:`bayesfluo.model.laplace.initial_values`);
2. the Hessian there, exactly, from a handful of Hessian-vector products: pixels do not
   interact except through the shared latents, so one product per *pixel-level* latent
   (perturbing that latent in every pixel at once) and one per shared latent give every
   block (8 + 3 products instead of 451 for 64 HyPlant pixels), through the operator's
   second-order expansion about the mode (exact there);
3. NUTS in whitened coordinates ``x = mode + S u``, ``S S^T = H^-1`` (the Laplace
   covariance, ``S`` from a block Cholesky factor that keeps pixels apart), with NumPyro's
   (Stan's) diagonal mass-matrix adaptation on the pixels' ``u`` and dense adaptation on the
   shared ones, to absorb what the Laplace approximation misses;
4. during sampling the patch's band operator (the fine-grid atmosphere and sensor
   response, most of the cost of a gradient) is replaced by that second-order expansion
   in the shared latents about the mode (:meth:`bayesfluo.model.SifModel.operator_expansion`).
   Its error is measured at posterior draws against the exact operator and reported
   (``surrogate_error_sigma``: largest difference over draws, pixels and bands, in noise
   standard deviations; a few hundredths at nominal conditions). ``NutsConfig(operator=
   "exact")`` samples with the exact operator throughout.

Cost (:class:`_Sampler`): NumPyro's NUTS transition (``build_tree``) and warm-up
adaptation, driven here so that one compiled program serves warm-up and sampling, every
patch of the same shape and every number of draws (the patch, whitening and adaptation
schedule are arguments; iterations run in calls of ``_CHUNK``). ``S`` is applied by its
blocks (a pixel's own and the shared columns). The potential comes from the model: through
the operator's expansion it is :meth:`bayesfluo.model.SifModel.expanded_potential` (the
program's potential energy written out, two small matrix products for all pixels, about
three times cheaper to differentiate; proven equal to NumPyro's in the tests), with the
exact operator NumPyro's potential energy of the program
(:func:`numpyro.infer.util.potential_energy`).

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

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
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
from scipy.linalg import solve_triangular

from bayesfluo.model import ModelConfig, OperatorExpansion, Patch, SifModel
from bayesfluo.model.laplace import (
    SEARCH_DAMPING,
    Blocks,
    Layout,
    initial_values,
    laplace,
)
from bayesfluo.scene.grid import patch_of_pixels

__all__ = ["NutsConfig", "PatchPosterior", "sample_patch", "nuts_reference", "to_datatree",
           "convergence", "parse_pixels", "surrogate_error", "RHAT_MAX", "ESS_MIN"]

RHAT_MAX = 1.01
ESS_MIN = 400
_CHUNK = 100  # NUTS iterations per compiled call (warm-up and sampling)
_POST_BLOCK = 100  # draws per compiled call of the constrained sites
_MAX_WINDOWS = 64  # most windows of a warm-up adaptation schedule
# Newton decrement (log-density units) at the mode: the step taken there leaves every
# coordinate within a small fraction of its posterior sd of the mode
_TOL = 0.1


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
        Most damped Newton steps to the mode (:func:`bayesfluo.model.laplace.laplace`).
    predictive_draws : int
        Posterior-predictive draws kept per chain (evenly thinned); 0 for none.
    operator : {"taylor", "exact"}
        ``"taylor"``: NUTS evaluates the patch's band operator through its second-order
        expansion about the mode (:meth:`bayesfluo.model.SifModel.operator_expansion`),
        about 10x cheaper per gradient; its error is measured at ``surrogate_check_draws``
        posterior draws against the exact operator and reported
        (``surrogate_error_sigma``, in units of the noise standard deviation).
        ``"exact"``: the fine-grid operator throughout. A model without a shared operator
        (top of canopy) always samples the exact one.
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


# --- preconditioning ------------------------------------------------------------------

class _Whitened(NamedTuple):
    """``x = mode + S u`` in blocks, in whitened order (pixel by pixel, shared latents
    last: the :class:`~bayesfluo.model.laplace.Layout` order): pixel ``i``'s latents are
    ``mode_p[i] + a[i] u_i + e[i] u_shared``, the shared ones ``mode_s + g u_shared``. S
    has no other non-zero entries (:func:`_whitening`), so a product costs
    ``P k (k + n_shared)`` instead of ``(P k + n_shared)^2``."""

    mode_p: jax.Array  # (P, k)
    mode_s: jax.Array  # (n_shared,)
    a: jax.Array       # (P, k, k)
    e: jax.Array       # (P, k, n_shared)
    g: jax.Array       # (n_shared, n_shared)


def _cholesky_pd(h: np.ndarray) -> np.ndarray:
    """Lower Cholesky factors of symmetric matrices (..., n, n), the eigenvalues of a
    matrix that is not positive definite floored at 1e-8 times its largest."""
    h = 0.5 * (h + np.swapaxes(h, -1, -2))
    try:
        return np.linalg.cholesky(h)
    except np.linalg.LinAlgError:
        out = np.empty_like(h)
        for i in np.ndindex(h.shape[:-2]):
            try:
                out[i] = np.linalg.cholesky(h[i])
            except np.linalg.LinAlgError:
                w, v = np.linalg.eigh(h[i])
                w = np.maximum(w, 1e-8 * w.max())
                out[i] = np.linalg.cholesky((v * w) @ v.T)
        return out


def _whitening(blocks: Blocks, mode_local, mode_shared) -> _Whitened:
    """``S`` with ``S S^T = H^-1`` that keeps pixels apart, in blocks (float64 numpy
    arrays; the sampler takes them as float32): ``S = R^-1`` with ``R^T R`` the Cholesky
    factorisation of the Hessian ordered pixel by pixel (SIF last within a pixel) and the
    shared latents last.
    With ``A_i = L_i L_i^T`` a pixel's block, ``B_i`` its coupling and ``C = L_c L_c^T``
    the Schur complement of the pixel blocks: ``a_i = L_i^-T``, ``g = L_c^-T``,
    ``e_i = -A_i^-1 B_i g``. A pixel's coordinates then depend only on its own and the
    shared whitened coordinates, and its SIF on the last of its own alone, so NUTS's
    diagonal adaptation can rescale where the Laplace approximation is off (SIF near
    zero, skewed in log space). A block that is not positive definite has its
    eigenvalues floored (any positive-definite metric keeps the draws exact)."""
    h_ll, h_ls, h_ss = (np.asarray(v, np.float64) for v in blocks[2:])
    eye = np.eye(h_ll.shape[-1])
    chol_l = _cholesky_pd(h_ll)
    a = np.stack([solve_triangular(c, eye, lower=True).T for c in chol_l])  # L_i^-T
    # A_i^-1 B_i = a_i a_i^T B_i
    ainv_b = a @ (np.swapaxes(a, -1, -2) @ h_ls)
    if h_ss.shape[0]:
        schur = h_ss - np.einsum("pds,pdt->st", h_ls, ainv_b)
        g = solve_triangular(_cholesky_pd(schur), np.eye(h_ss.shape[0]), lower=True).T
        e = -ainv_b @ g
    else:
        g, e = np.zeros((0, 0)), np.zeros(h_ls.shape)
    f64 = lambda v: np.asarray(v, np.float64)  # noqa: E731
    return _Whitened(f64(mode_local), f64(mode_shared), a, e, g)


def _dense_whitening(w: _Whitened) -> np.ndarray:
    """The dense ``S`` (float64) of :class:`_Whitened` blocks (Layout order)."""
    a, e, g = (np.asarray(v, np.float64) for v in (w.a, w.e, w.g))
    p, k, ns = e.shape
    s = np.zeros((p * k + ns, p * k + ns))
    for i in range(p):
        s[i * k:(i + 1) * k, i * k:(i + 1) * k] = a[i]
        s[i * k:(i + 1) * k, p * k:] = e[i]
    s[p * k:, p * k:] = g
    return s


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


class _Compiled:
    """Jitted functions of one patch shape (model and pixel count), with the patch (and
    the operator's expansion) as arguments: patches of the same shape reuse them,
    compiled once."""

    def __init__(self, model: SifModel, patch: Patch):
        self.model = model
        layout = self.layout = Layout.of(model, patch)
        self.n_pix = layout.n_pixels
        self.n_pixel_latents = layout.n_local
        self.n_shared = layout.n_shared
        self.n = self.n_pix * self.n_pixel_latents + self.n_shared

        def pot(xp, xs, d):
            # NumPyro's potential energy of the model's program at the pixels' latents xp
            # (P, k) and the shared ones xs (Layout order: the sites are slices of them,
            # no gather, whose gradient is a slow scatter on CPU); d = (patch, expansion)
            return potential_energy(model.program, d, {}, layout.unpack(xp, xs))

        self.potential = pot

        def pot_expanded(xp, xs, d):
            # the same through the operator's expansion, written out
            # (SifModel.expanded_potential: equal to pot to float32 rounding, tested)
            return model.expanded_potential(*d, layout.unpack(xp, xs))

        self.potential_expanded = pot_expanded

        def find(xl, xs, patch, rounds):
            # Newton steps on the exact operator (an expansion about a start far from the
            # mode misleads the first steps), the Hessian at the mode through the
            # second-order expansion about it (exact there; NUTS samples with it)
            return laplace(model, patch, xl, xs, layout=layout, rounds=rounds, steps=1,
                           tol=_TOL, order=0, damping=SEARCH_DAMPING)

        self.laplace = jax.jit(find)

        @jax.jit
        def post(u, w, d):  # (_POST_BLOCK, n) whitened -> constrained sites, deterministics
            def one(ui):
                return constrain_fn(model.program, d, {}, layout.unpack(*_unwhiten(
                    self._split(ui), w)), return_deterministic=True)
            return jax.vmap(one)(u)

        self._post = post

        @jax.jit
        def predict(latents, key, patch):  # (_POST_BLOCK, ...) latents -> radiance draws
            return Predictive(model.program, posterior_samples=latents,
                              return_sites=["radiance"])(key, patch, None)["radiance"]

        self._predict = predict
        self._samplers = {}

    def start(self, patch: Patch) -> tuple[jax.Array, jax.Array]:
        """The start of the mode search (:func:`bayesfluo.model.laplace.initial_values`)
        in Layout order (evaluated eagerly, so a patch the model cannot take is named
        here)."""
        init = initial_values(self.model, patch)
        z = unconstrain_fn(self.model.program, (patch, None), {}, init)
        return self.layout.pack(z)

    def predictive(self, latents: dict, key: jax.Array, patch: Patch) -> np.ndarray:
        """Posterior-predictive radiance (draw, pixel, band) of latent draws (leading
        dimension: draw), through the exact operator, in blocks of a fixed size
        (compiled once)."""
        m = len(next(iter(latents.values())))
        pad = -m % _POST_BLOCK
        full = {k: jnp.concatenate([v, jnp.broadcast_to(v[:1], (pad,) + v.shape[1:])])
                for k, v in latents.items()}
        out = [np.asarray(self._predict({k: v[i:i + _POST_BLOCK] for k, v in full.items()},
                                        jax.random.fold_in(key, i), patch))
               for i in range(0, m + pad, _POST_BLOCK)]
        return np.concatenate(out)[:m]

    def post(self, u: jax.Array, w: _Whitened, d: tuple) -> dict:
        """Constrained sites and deterministics of whitened draws ``u`` (m, n), in blocks
        of a fixed size (compiled once whatever ``m``)."""
        m = u.shape[0]
        pad = -m % _POST_BLOCK
        u = jnp.concatenate([u, jnp.broadcast_to(u[:1], (pad, u.shape[1]))])
        outs = [self._post(u[i:i + _POST_BLOCK], w, d) for i in range(0, m + pad, _POST_BLOCK)]
        return {k: jnp.concatenate([o[k] for o in outs])[:m] for k in outs[0]}

    def _split(self, u: jax.Array) -> dict:
        n_p = self.n - self.n_shared
        return {"p": u[:n_p], "s": u[n_p:]} if self.n_shared else {"p": u}

    def sampler(self, max_tree_depth: int, expanded: bool) -> _Sampler:
        """The NUTS sampler of this patch shape (compiled on first use), on the potential
        through the operator's expansion (``expanded``) or NumPyro's of the program."""
        key = (max_tree_depth, expanded)
        if key not in self._samplers:
            self._samplers[key] = _Sampler(
                self.potential_expanded if expanded else self.potential, self.n_pix,
                self.n_pixel_latents, self.n_shared, max_tree_depth)
        return self._samplers[key]


_COMPILED: dict = {}


def _compiled(model: SifModel, patch: Patch) -> _Compiled:
    key = (id(model.fm), repr(model.cfg), model.top_of_canopy, id(model.table),
           patch.n_pixels)
    hit = _COMPILED.get(key)
    if hit is None or hit.model.fm is not model.fm or hit.model.table is not model.table:
        if len(_COMPILED) > 8:
            _COMPILED.clear()
        hit = _COMPILED[key] = _Compiled(model, patch)
    return hit


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
    draw), posterior-predictive radiance (chain, draw', pixel, band), timings (s) and the
    mode search (``laplace``: ``steps``, ``decrement``, ``converged``, and
    ``surrogate_error_sigma`` when sampled through the operator's expansion)."""

    samples: dict
    stats: dict
    predictive: np.ndarray | None
    predictive_draw: np.ndarray
    timing: dict
    laplace: dict


def sample_patch(model: SifModel, patch: Patch, key: jax.Array,
                 nuts: NutsConfig = NutsConfig(), progress: bool = False) -> PatchPosterior:
    """NUTS draws of one patch's posterior (see the module docstring).

    Parameters
    ----------
    model : SifModel
        Built-in atmosphere, external table or measured irradiance (top of canopy).
    patch : Patch
        One patch, radiance given (mW m-2 sr-1 nm-1).
    key : jax.Array
        Random key.
    nuts : NutsConfig
    progress : bool
        Show a progress bar.
    """
    t0 = time.perf_counter()
    c = _compiled(model, patch)
    xl0, xs0 = c.start(patch)
    mode = c.laplace(xl0, xs0, patch, jnp.int32(nuts.newton_steps))
    dec = float(mode.decrement)
    linfo = dict(steps=int(mode.rounds), decrement=dec, converged=bool(dec < _TOL))
    w = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32),
                     _whitening(mode.blocks, mode.local, mode.shared))
    t1 = time.perf_counter()

    k_init, k_run, k_pred = jax.random.split(key, 3)
    u0 = jax.random.normal(k_init, (nuts.num_chains, c.n), jnp.float32)
    expansion = mode.expansion if nuts.operator == "taylor" else None
    d = (patch, expansion)
    res = c.sampler(nuts.max_tree_depth, expansion is not None).run(
        k_run, u0, w, d, nuts.num_warmup, nuts.num_samples, nuts.target_accept, progress)
    u = jnp.asarray(res["u"])  # (chain, draw, n), whitened order
    t2 = time.perf_counter()

    post = c.post(u.reshape(-1, c.n), w, d)
    samples = {k: np.asarray(v).reshape(u.shape[:2] + v.shape[1:]) for k, v in post.items()}
    if expansion is not None:
        linfo["surrogate_error_sigma"] = surrogate_error(
            model, patch, expansion, samples, nuts.surrogate_check_draws)
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
        pp = c.predictive(latents, k_pred, patch.replace(radiance=None))
        pred = pp.reshape((nuts.num_chains, pdraw.size) + pp.shape[1:])
    t3 = time.perf_counter()
    timing = dict(laplace_s=t1 - t0, nuts_s=t2 - t1, post_s=t3 - t2, total_s=t3 - t0)
    return PatchPosterior(samples, stats, pred, pdraw, timing, linfo)


_ERR_FNS: dict = {}


def _surrogate_error_fn(model: SifModel):
    key = (id(model.fm), repr(model.cfg), id(model.table))
    hit = _ERR_FNS.get(key)
    if hit is not None and hit[0][0] is model.fm and hit[0][1] is model.table:
        return hit[1]

    @jax.jit
    def err(zv, coeffs, far, red, patch, expansion):
        le = model.predict(model.operator(patch, zv), coeffs, red, far)
        la = model.predict(expansion(zv), coeffs, red, far)
        sd = jnp.sqrt(model.noise_variance(le, patch.noise_a, patch.noise_b))
        return jnp.max(jnp.abs(le - la) / sd)

    _ERR_FNS[key] = ((model.fm, model.table), err)
    return err


def surrogate_error(model: SifModel, patch: Patch, expansion: OperatorExpansion,
                    samples: dict, n_draws: int = 20) -> float:
    """Largest difference between the radiance through the exact band operator and
    through its ``expansion``, over ``n_draws`` posterior draws (``samples`` (chain,
    draw, ...), evenly thinned) and every pixel and band of ``patch``, in units of the
    noise standard deviation."""
    flat = {k: v.reshape((-1,) + v.shape[2:]) for k, v in samples.items()}
    idx = np.unique(np.linspace(0, len(flat["f760"]) - 1, n_draws).round().astype(int))

    err = _surrogate_error_fn(model)
    worst = 0.0
    for i in idx:
        zv = model.shared_vector({n: flat[n][i] for n, _ in model.shared_sites()})
        red = flat["sif_red"][i] if "sif_red" in flat else np.zeros_like(flat["sif_far_red"][i])
        worst = max(worst, float(err(zv, flat["reflectance_coeffs"][i],
                                     flat["sif_far_red"][i], red, patch, expansion)))
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
                   seed: int = 0, snr: float | None = None, model: SifModel | None = None,
                   progress: bool = True) -> xr.DataTree:
    """NUTS reference posteriors of scene pixels, grouped into patches that share an
    atmosphere (square blocks of ``patch_size`` pixels of the scene).

    ``model`` defaults to the scene instrument's
    (:meth:`bayesfluo.model.SifModel.for_instrument`) with ``config`` (default
    :class:`ModelConfig`); a given ``config`` replaces the given model's.

    A top-of-canopy time series (``radiance`` over (time, band), with ``irradiance``):
    ``rows`` are time steps (``cols`` 0), sampled in blocks of ``patch_size**2``
    consecutive time steps (as many as an image patch holds); they share nothing (the
    measured irradiance replaces the atmosphere: the model is made top-of-canopy with no
    free shared latents and the exact operator is used), so blocks only batch the work.
    In the DataTree ``y`` is then the time index and ``x`` is 0.

    Returns the DataTree described in the module docstring.
    """
    rows, cols = np.asarray(rows), np.asarray(cols)
    inst = scene.attrs["instrument"]
    tower = "time" in scene["radiance"].dims
    if model is None:
        cfg = config or ModelConfig()
        model = SifModel.for_instrument(inst, cfg.replace(free=()) if tower else cfg,
                                        top_of_canopy=tower)
    elif config is not None:
        model = model.replace(cfg=config)
    if tower:
        if not model.top_of_canopy or model.cfg.free:
            model = model.replace(cfg=model.cfg.replace(free=()), top_of_canopy=True)
        nuts = dataclasses.replace(nuts, operator="exact")
        block = rows // (patch_size * patch_size)
        groups = [np.flatnonzero(block == b) for b in np.unique(block)]
    else:
        groups = _patches(rows, cols, patch_size)
    key = jax.random.PRNGKey(seed)
    results, patches = [], []
    for i, idx in enumerate(groups):
        if progress:
            print(f"patch {i + 1}/{len(groups)}: {idx.size} "
                  f"{'time steps' if tower else 'pixels'}", flush=True)
        patch = patch_of_pixels(scene, rows[idx], cols[idx], snr)
        patches.append(patch)
        results.append(sample_patch(model, patch, jax.random.fold_in(key, i), nuts,
                                    progress))
    order = np.concatenate(groups)
    dt = to_datatree(results, patches, model, rows[order], cols[order], nuts.max_tree_depth)
    dt.attrs.update(instrument=inst, seed=seed, source="bayesfluo nuts",
                    num_warmup=nuts.num_warmup, num_samples=nuts.num_samples,
                    num_chains=nuts.num_chains)
    if tower:
        dt.attrs["layout"] = "top-of-canopy time series: constant_data y is the time index"
    return dt


def to_datatree(results: list[PatchPosterior], patches: list[Patch], model: SifModel,
                rows=None, cols=None, max_tree_depth: int | None = None) -> xr.DataTree:
    """Combine patch posteriors (of ``patches``, in order) into one DataTree (pixels
    concatenated, patch-level latents and sample stats along ``patch``) with per-pixel
    convergence; ``rows``, ``cols`` place the pixels in their scene."""
    n_per = [p.n_pixels for p in patches]
    patch_of = np.repeat(np.arange(len(n_per)), n_per)
    posterior = {}
    dims = {}
    # patch-level: the shared sites and their values (an external table's up_scale has
    # one value per band group)
    shared = {n for n, _ in Layout.of(model, patches[0]).shared}
    shared |= {n.removesuffix("_z") for n in shared}
    for name in results[0].samples:
        vals = [r.samples[name] for r in results]
        if name not in shared:  # (chain, draw, pixel[, basis])
            posterior[name] = np.concatenate(vals, axis=2)
            dims[name] = ["pixel"] + (["basis"] if vals[0].ndim == 4 else [])
        else:  # (chain, draw[, group])
            posterior[name] = np.stack(vals, axis=2)
            dims[name] = ["patch"] + (["band_group"] if vals[0].ndim == 3 else [])
    stats = {k: np.stack([r.stats[k] for r in results], axis=2) for k in results[0].stats}
    sdims = {k: ["patch"] for k in stats}
    groups = {"posterior": posterior, "sample_stats": stats}
    obs = np.concatenate([np.asarray(p.radiance) for p in patches])
    groups["observed_data"] = {"radiance": obs}
    dims["radiance"] = ["pixel", "band"]
    coords = {"pixel": np.arange(obs.shape[0]), "patch": np.arange(len(n_per)),
              "band": np.asarray(model.fm.band_centre_nm, np.float64)}
    dt = az.from_dict(groups, dims={**dims, **sdims}, coords=coords)
    if results[0].predictive is not None:
        pp = np.concatenate([r.predictive for r in results], axis=2)
        ppd = xr.Dataset({"radiance": (("chain", "draw", "pixel", "band"), pp)},
                         coords={"chain": np.arange(pp.shape[0]),
                                 "draw": results[0].predictive_draw,
                                 "pixel": coords["pixel"], "band": coords["band"]})
        dt["posterior_predictive"] = xr.DataTree(ppd)
    const = xr.Dataset(
        {"ndvi": ("pixel", np.concatenate([np.asarray(p.ndvi) for p in patches])),
         "mask": ("pixel", np.concatenate([np.asarray(p.mask) for p in patches])),
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
