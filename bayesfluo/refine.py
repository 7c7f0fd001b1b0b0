"""Laplace refinement of the amortized guide (semi-amortized inference).

The encoder of :mod:`bayesfluo.guide` reads a patch's posterior in one pass, but an
amortized network pays an *amortization gap*: for the shipped HyPlant guide its F760 means
differ from NUTS's by a median 0.36 posterior sd, mostly because it reads the patch's
shared atmosphere less sharply than the data allow. This module closes the gap patch by
patch, starting from the guide:

1. the patch's band operator (the fine-grid atmosphere and sensor response, most of the
   cost of a forward evaluation) is expanded to first order in the shared latents about
   the guide's mean (optionally to second order: :func:`bayesfluo.model.operator_expansion`,
   the surrogate NUTS samples with);
2. damped Newton steps move every latent of the patch (each pixel's reflectance and SIF
   coordinates and the shared atmosphere and sensor) to the mode of the model's own
   posterior (:func:`bayesfluo.model.sif_model`, NumPyro's unconstrained space). The
   Hessian is exact and cheap because pixels interact only through the shared latents:
   one Hessian-vector product per local coordinate (perturbed in every pixel at once)
   and one per shared latent give every block, and the Newton system is solved through
   the Schur complement of the shared block;
3. the operator is re-expanded about the new point and the Newton steps repeated (at a
   fixed point the expansion is exact to first order at the mode, so the mode is the
   model's own); the Hessian at the mode comes from a second-order expansion about it
   (a first-order one would leave out the operator's second derivatives times the
   residuals and, measured, widen the shared latents' sd by ~10-15 %);
4. the Laplace approximation at the mode, ``N(mode, H^-1)``, is written in the guide's
   own form (:class:`bayesfluo.guide.GuideOutput`): shared ``N(m_s, S^-1)`` with ``S`` the
   Schur complement, each pixel ``N(m_i - H_ii^-1 H_is (z_s - m_s), H_ii^-1)``. The
   summaries, quantiles and draws of :mod:`bayesfluo.guide` then apply unchanged.

A patch whose Newton iteration does not converge (or whose Hessian is not positive
definite at the end) keeps the guide's output and is reported in ``converged``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import potential_energy

from bayesfluo.guide import GuideOutput
from bayesfluo.model import (
    ModelConfig,
    OperatorExpansion,
    SoftplusHalfNormal,
    operator_expansion,
    shared_parameters,
    sif_model,
)
from bayesfluo.physics.forward import ForwardModel, Geometry, band_operator

__all__ = ["RefineOptions", "RefineInfo", "laplace_refine", "patch_model_data"]


class RefineOptions(NamedTuple):
    """Settings of :func:`laplace_refine`.

    Attributes
    ----------
    expansions : int
        Rounds of Newton steps, each on an expansion of the band operator (the first about
        the guide's mean, each later one about where the previous round ended; the
        Laplace approximation uses one more, about the mode).
    newton_steps : int
        Damped Newton steps per expansion.
    tol : float
        Newton decrement (log-density units) at the start of a round, where the fresh
        expansion is exact to first order, below which a patch counts as converged.
    second_order : bool
        Expand the operator to second order in the Newton rounds too (~5x the cost of
        a first-order expansion; the mode is the same either way, and the Laplace
        Hessian always comes from a second-order expansion about the mode).
    min_data_share : float
        A pixel's local posterior is the Laplace approximation where the data give at
        least this share of the curvature of its SIF coordinate(s) at the mode (else the
        prior dominates, the posterior is skewed, and the guide's conditional is kept).
    """

    expansions: int = 10
    newton_steps: int = 3
    tol: float = 0.5
    min_data_share: float = 0.5
    second_order: bool = False


class RefineInfo(NamedTuple):
    """Per patch: ``decrement`` (the last Newton decrement, log-density units),
    ``converged`` (bool; False: the guide's output was kept) and ``moved`` (the
    Mahalanobis distance of the shared latents' move, in the guide's posterior sd); per
    pixel: ``laplace_pixel`` (True: the pixel's local posterior is the Laplace
    approximation; False: the guide's conditional at the refined shared latents); the
    mode found, ``mode_local`` (P, D) and ``mode_shared`` (S,), in the guide's order."""

    decrement: jax.Array
    converged: jax.Array
    moved: jax.Array
    laplace_pixel: jax.Array
    mode_local: jax.Array
    mode_shared: jax.Array


def patch_model_data(d: dict) -> dict:
    """The :func:`bayesfluo.model.sif_model` data of a batch of patches (leading patch
    dimension) from :func:`bayesfluo.patches.patch_inputs`'s dict."""
    return dict(radiance=jnp.asarray(d["radiance"]), mask=jnp.asarray(d["mask"]),
                ndvi=jnp.asarray(d["ndvi"]),
                geometry=Geometry(*(jnp.asarray(g) for g in d["geometry"])),
                noise_a=jnp.asarray(d["noise_a"]), noise_b=jnp.asarray(d["noise_b"]),
                surface_pressure0=jnp.asarray(d["surface_pressure0"]))


def _expansion(fm: ForwardModel, cfg: ModelConfig, data: dict, z0, second_order: bool
               ) -> OperatorExpansion:
    """The patch's band operator expanded about ``z0`` to first or second order."""
    if second_order:
        return operator_expansion(fm, cfg, data, z0)

    def op_of(zv):
        atm, sens, _ = shared_parameters(cfg, data, dict(zip(cfg.free, zv, strict=True)))
        return band_operator(fm, atm, data["geometry"], sens)

    value, jac = jax.jvp(op_of, (z0,), (jnp.zeros_like(z0),))[0], jax.jacfwd(op_of)(z0)
    hess = jax.tree.map(lambda j: jnp.zeros(j.shape + z0.shape, j.dtype), jac)
    return OperatorExpansion(z0, value, jac, hess)


def _sif_prior_potential(u):
    """Minus the log prior density of a SIF amplitude's unconstrained coordinate (the
    model's :class:`~bayesfluo.model.SoftplusHalfNormal`, Jacobian included)."""
    d = SoftplusHalfNormal(1.0)
    t = biject_to(d.support)
    x = t(u)
    return -(d.log_prob(x) + t.log_abs_det_jacobian(u, x))


def _unpack(fm: ForwardModel, cfg: ModelConfig, has_red: bool, xl, xs) -> dict:
    k = fm.n_basis
    p = {"reflectance_z": xl[:, :k], "sif_far_red_raw": xl[:, k]}
    if has_red:
        p["sif_red_raw"] = xl[:, k + 1]
    for j, n in enumerate(cfg.free):
        p[f"{n}_z"] = xs[j]
    return p


def _blocks(grad_fn, xl, xs):
    """Gradient and the Hessian blocks of a patch potential: ``(gl (P, D), gs (S,),
    h_ll (P, D, D), h_ls (P, D, S), h_ss (S, S))``, from D + S Hessian-vector products
    (local coordinates perturbed in every pixel at once: pixels do not interact but
    through the shared latents)."""
    n_pix, d = xl.shape
    s = xs.shape[0]
    tl = jnp.concatenate([jnp.broadcast_to(jnp.eye(d, dtype=xl.dtype)[:, None, :],
                                           (d, n_pix, d)),
                          jnp.zeros((s, n_pix, d), xl.dtype)])
    ts = jnp.concatenate([jnp.zeros((d, s), xs.dtype), jnp.eye(s, dtype=xs.dtype)])
    gl, gs = grad_fn(xl, xs)
    hl, hs = jax.vmap(lambda a, b: jax.jvp(grad_fn, (xl, xs), (a, b))[1])(tl, ts)
    # hl: (D + S, P, D): hl[c, i, r] = H[(i, r), c] ; hs: (D + S, S)
    h_ll = jnp.moveaxis(hl[:d], 0, -1)                   # (P, D, D): [i, r, c]
    h_ll = 0.5 * (h_ll + jnp.swapaxes(h_ll, -1, -2))
    h_ls = jnp.moveaxis(hl[d:], 0, -1)                   # (P, D, S)
    h_ss = hs[d:]
    h_ss = 0.5 * (h_ss + h_ss.T)
    return gl, gs, h_ll, h_ls, h_ss


def _eig_scaled(h):
    """Jacobi-scaled eigendecomposition of symmetric matrices (..., n, n):
    ``(w, v, sc)`` with ``diag(sc) h diag(sc) = v diag(w) v^T`` (float32 copes with
    curvatures spanning six orders of magnitude once the diagonal is one)."""
    sc = 1.0 / jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(h, axis1=-2, axis2=-1)), 1e-12))
    hs = h * sc[..., :, None] * sc[..., None, :]
    w, v = jnp.linalg.eigh(0.5 * (hs + jnp.swapaxes(hs, -1, -2)))
    return w, v, sc


def _inverse(eig, lam=0.0, floor=1e-7):
    """Inverse from :func:`_eig_scaled` with the eigenvalues replaced by their absolute
    values plus the damping ``lam`` (Levenberg-Marquardt in the scaled space), floored at
    ``floor`` times the largest: a descent direction even where the Hessian is
    indefinite."""
    w, v, sc = eig
    w = jnp.abs(w) + lam
    w = jnp.maximum(w, floor * jnp.max(w, -1, keepdims=True))
    inv = jnp.einsum("...ik,...k,...jk->...ij", v, 1.0 / w, v)
    return inv * sc[..., :, None] * sc[..., None, :]


def _solve(gl, gs, h_ll, h_ls, h_ss, eig_l, lam):
    """Damped Newton step through the Schur complement of the shared block.
    Returns ``(dl, ds)``."""
    a_inv = _inverse(eig_l, lam)                                         # (P, D, D)
    ainv_b = a_inv @ h_ls                                                # (P, D, S)
    ainv_g = jnp.einsum("pde,pe->pd", a_inv, gl)
    if gs.shape[0]:
        schur = h_ss - jnp.einsum("pds,pdt->st", h_ls, ainv_b)
        ds = _inverse(_eig_scaled(schur), lam) @ (-gs + jnp.einsum("pds,pd->s", h_ls, ainv_g))
    else:
        ds = gs
    dl = -ainv_g - jnp.einsum("pds,s->pd", ainv_b, ds)
    return dl, ds


#: Damping values tried at once in each Newton step (the best potential wins)
_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Largest move of one coordinate in one step (prior sd units): a safety net
_MAX_STEP = 3.0


def _refine_patch(fm, cfg, has_red, opt: RefineOptions, q: GuideOutput, data: dict):
    s = len(cfg.free)

    def potential(xl, xs, exp):
        return potential_energy(sif_model, (fm, cfg, dict(data, operator_expansion=exp),
                                            has_red), {}, _unpack(fm, cfg, has_red, xl, xs))

    def newton(carry, _, exp):
        xl, xs, f, dec = carry
        grad_fn = jax.grad(lambda a, b: potential(a, b, exp), argnums=(0, 1))
        gl, gs, h_ll, h_ls, h_ss = _blocks(grad_fn, xl, xs)
        eig_l = _eig_scaled(h_ll)
        lams = jnp.asarray(_LAMBDAS, xl.dtype)
        dl, ds = jax.vmap(lambda lam: _solve(gl, gs, h_ll, h_ls, h_ss, eig_l, lam))(lams)
        dl = jnp.clip(dl, -_MAX_STEP, _MAX_STEP)
        ds = jnp.clip(ds, -_MAX_STEP, _MAX_STEP)
        fa = jax.vmap(lambda a, b: potential(xl + a, xs + b, exp))(dl, ds)
        fa = jnp.where(jnp.isfinite(fa), fa, jnp.inf)
        best = jnp.argmin(fa)
        dl, ds = dl[best], ds[best]
        # the decrement of the step taken (log-density units): small at the mode
        dec_new = -(jnp.sum(gl * dl) + jnp.sum(gs * ds))
        # float32 potential: a step within its rounding level is accepted when tiny
        accept = fa[best] <= f + 1e-6 * jnp.abs(f)
        xl = jnp.where(accept, xl + dl, xl)
        xs = jnp.where(accept, xs + ds, xs)
        f = jnp.where(accept, fa[best], f)
        dec = jnp.where(jnp.isfinite(dec_new), dec_new, jnp.inf)
        return (xl, xs, f, dec), dec

    def expansion_round(carry):
        # an expansion about where the previous round ended, then Newton steps on it
        # (one traced body for every round: compiled once)
        i, xl, xs, _ = carry
        exp = _expansion(fm, cfg, data, xs, opt.second_order)
        f = potential(xl, xs, exp)
        (xl, xs, f, _), decs = jax.lax.scan(
            lambda c, u: newton(c, u, exp), (xl, xs, f, jnp.float32(jnp.inf)), None,
            length=opt.newton_steps)
        # the first step's decrement is measured where the fresh expansion is exact to
        # first order: below tol, the round started at the model's own mode
        return i + 1, xl, xs, decs[0]

    # rounds until one starts at the mode (or expansions rounds): under vmap the loop
    # runs as long as the slowest patch of a batch needs
    _, xl, xs, dec = jax.lax.while_loop(
        lambda c: (c[0] < opt.expansions) & ~(c[3] < opt.tol), expansion_round,
        (jnp.int32(0), q.local_loc, q.shared_loc, jnp.float32(jnp.inf)))
    # the Hessian at the mode through a second-order expansion about it: exact there
    exp = _expansion(fm, cfg, data, xs, True)
    grad_fn = jax.grad(lambda a, b: potential(a, b, exp), argnums=(0, 1))
    gl, gs, h_ll, h_ls, h_ss = _blocks(grad_fn, xl, xs)
    # the Laplace approximation in the guide's form
    eig_l = _eig_scaled(h_ll)
    pd_l = jnp.all(eig_l[0] > 0)
    h_inv = _inverse(eig_l)
    h_inv = 0.5 * (h_inv + jnp.swapaxes(h_inv, -1, -2))
    coupling = -h_inv @ h_ls
    local_tril = jnp.linalg.cholesky(h_inv)
    pd = jnp.all(pd_l)
    if s:
        eig_s = _eig_scaled(h_ss + jnp.einsum("pds,pdt->st", h_ls, coupling))
        cov_s, pd_s = _inverse(eig_s), jnp.all(eig_s[0] > 0)
        shared_tril = jnp.linalg.cholesky(0.5 * (cov_s + cov_s.T))
        pd = pd & pd_s
    else:
        shared_tril = q.shared_tril
    # where a pixel's SIF posterior is dominated by its prior (bare ground: SIF pinned
    # near zero, a skewed posterior in the softplus coordinate) a Gaussian at the mode is
    # a poor summary; the guide, trained on such pixels, keeps its conditional there,
    # moved with the refined shared latents
    k = fm.n_basis
    h_prior = jax.vmap(jax.vmap(jax.grad(jax.grad(_sif_prior_potential))))(xl[:, k:])
    share = 1.0 - h_prior / jnp.diagonal(h_ll, axis1=-2, axis2=-1)[:, k:]   # (P, n_sif)
    laplace_px = jnp.all(share >= opt.min_data_share, -1)
    guide_loc = q.local_loc + q.coupling @ (xs - q.shared_loc) if s else q.local_loc
    sel = laplace_px[:, None]
    xl_out = jnp.where(sel, xl, guide_loc)
    local_tril = jnp.where(sel[..., None], local_tril, q.local_tril)
    coupling = jnp.where(sel[..., None], coupling, q.coupling)
    out = GuideOutput(xs, shared_tril, xl_out, local_tril, coupling)
    finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(v)) for v in jax.tree.leaves(out)]))
    converged = finite & pd & (dec < opt.tol)
    out = jax.tree.map(lambda new, old: jnp.where(converged, new, old), out, q)
    # how far the shared latents moved, in the guide's sd
    if s:
        w = jax.scipy.linalg.solve_triangular(q.shared_tril, xs - q.shared_loc, lower=True)
        moved = jnp.sqrt(jnp.sum(w**2))
    else:
        moved = jnp.float32(0.0)
    return out, RefineInfo(dec, converged, moved, laplace_px & converged, xl, xs)


def laplace_refine(fm: ForwardModel, cfg: ModelConfig, has_red: bool, q: GuideOutput,
                   data: dict, options: RefineOptions | None = None,
                   batch_size: int | None = None) -> tuple[GuideOutput, RefineInfo]:
    """Refine the guide's output of a batch of patches into the Laplace approximation of
    each patch's posterior at its mode (see the module docstring).

    Parameters
    ----------
    fm : ForwardModel
    cfg : ModelConfig
        The model configuration of the guide (free shared latents).
    has_red : bool
        Whether the window has the O2-B band.
    q : GuideOutput
        The guide's output, leading dimension N patches.
    data : dict
        :func:`patch_model_data` of the same patches (radiance in mW m-2 sr-1 nm-1).
    options : RefineOptions
    batch_size : int, optional
        Patches refined at once (``jax.lax.map`` over batches: bounded memory); all at
        once when None.

    Returns
    -------
    (GuideOutput, RefineInfo)
        The refined posterior in the guide's form, and per-patch convergence.
    """
    opt = options or RefineOptions()

    def one(a):
        return _refine_patch(fm, cfg, has_red, opt, *a)

    if batch_size is None:
        return jax.vmap(one)((q, data))
    return jax.lax.map(one, (q, data), batch_size=batch_size)
