"""Laplace refinement of the amortized guide (semi-amortized inference).

The encoder of :mod:`bayesfluo.inference.guide` reads a patch's posterior in one pass, but an
amortized network pays an *amortization gap*: for the shipped HyPlant guide its F760 means
differ from NUTS's by a median 0.36 posterior sd, mostly because it reads the patch's
shared atmosphere less sharply than the data allow. This module closes the gap patch by
patch, starting from the guide, with the model's one Laplace / Newton engine
(:mod:`bayesfluo.model.laplace`, which NUTS's preconditioning uses too):

1. the patch's band operator (the fine-grid atmosphere and sensor response, most of the
   cost of a forward evaluation) is expanded to first order in the shared latents about
   the guide's mean (optionally to second order:
   :meth:`bayesfluo.model.SifModel.operator_expansion`, the surrogate NUTS samples with);
2. damped Newton steps move every latent of the patch (each pixel's reflectance and SIF
   coordinates and the shared atmosphere and sensor) to the mode of the model's own
   posterior (:meth:`bayesfluo.model.SifModel.program`, NumPyro's unconstrained space).
   The Hessian is exact and cheap because pixels interact only through the shared
   latents: one Hessian-vector product per local coordinate (perturbed in every pixel at
   once) and one per shared latent give every block, and the Newton system is solved
   through the Schur complement of the shared block;
3. the operator is re-expanded about the new point and the Newton steps repeated (at a
   fixed point the expansion is exact to first order at the mode, so the mode is the
   model's own); the Hessian at the mode comes from a second-order expansion about it
   (a first-order one would leave out the operator's second derivatives times the
   residuals and, measured, widen the shared latents' sd by ~10-15 %);
4. the Laplace approximation at the mode, ``N(mode, H^-1)``, is written in the guide's
   own form (:class:`bayesfluo.inference.guide.GuideOutput`): shared ``N(m_s, S^-1)``
   with ``S`` the Schur complement, each pixel ``N(m_i - H_ii^-1 H_is (z_s - m_s),
   H_ii^-1)``. The summaries, quantiles and draws of :mod:`bayesfluo.inference.guide`
   then apply unchanged.

A patch whose Newton iteration does not converge (or whose Hessian is not positive
definite at the end) keeps the guide's output and is reported in ``converged``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from numpyro.distributions.transforms import biject_to

from bayesfluo.inference.guide import GuideOutput
from bayesfluo.model import Patch, SifModel, SoftplusHalfNormal
from bayesfluo.model.laplace import (
    REFINE_DAMPING,
    Damping,
    Layout,
    eig_inverse,
    eig_scaled,
    laplace,
)

__all__ = ["RefineOptions", "RefineInfo", "laplace_refine"]


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
    damping : Damping
        How the Newton steps are damped (:class:`bayesfluo.model.laplace.Damping`;
        clipped steps by default, for a start close to the mode).
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
    damping: Damping = REFINE_DAMPING


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


def _sif_prior_potential(u):
    """Minus the log prior density of a SIF amplitude's unconstrained coordinate (the
    model's :class:`~bayesfluo.model.SoftplusHalfNormal`, Jacobian included)."""
    d = SoftplusHalfNormal(1.0)
    t = biject_to(d.support)
    x = t(u)
    return -(d.log_prob(x) + t.log_abs_det_jacobian(u, x))


def _refine_patch(model: SifModel, layout: Layout, opt: RefineOptions, q: GuideOutput,
                  patch: Patch, start=None) -> tuple[GuideOutput, RefineInfo]:
    s = layout.n_shared
    # the mode by rounds of Newton steps on expansions of the operator, and the Hessian
    # there (the one Laplace engine, bayesfluo.model.laplace)
    mode = laplace(model, patch, q.local_loc if start is None else start, q.shared_loc,
                   layout=layout,
                   rounds=opt.expansions, steps=opt.newton_steps, tol=opt.tol,
                   order=2 if opt.second_order else 1, damping=opt.damping)
    xl, xs, dec = mode.local, mode.shared, mode.decrement
    _, _, h_ll, h_ls, h_ss = mode.blocks
    # the Laplace approximation in the guide's form
    eig_l = eig_scaled(h_ll)
    pd_l = jnp.all(eig_l[0] > 0)
    h_inv = eig_inverse(eig_l)
    h_inv = 0.5 * (h_inv + jnp.swapaxes(h_inv, -1, -2))
    coupling = -h_inv @ h_ls
    local_tril = jnp.linalg.cholesky(h_inv)
    pd = jnp.all(pd_l)
    if s:
        eig_s = eig_scaled(h_ss + jnp.einsum("pds,pdt->st", h_ls, coupling))
        cov_s, pd_s = eig_inverse(eig_s), jnp.all(eig_s[0] > 0)
        shared_tril = jnp.linalg.cholesky(0.5 * (cov_s + cov_s.T))
        pd = pd & pd_s
    else:
        shared_tril = q.shared_tril
    # where a pixel's SIF posterior is dominated by its prior (bare ground: SIF pinned
    # near zero, a skewed posterior in the softplus coordinate) a Gaussian at the mode is
    # a poor summary; the guide, trained on such pixels, keeps its conditional there,
    # moved with the refined shared latents
    k = model.fm.n_basis
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


def laplace_refine(model: SifModel, q: GuideOutput, patches: Patch,
                   options: RefineOptions | None = None,
                   batch_size: int | None = None,
                   start_local: jax.Array | None = None) -> tuple[GuideOutput, RefineInfo]:
    """Refine the guide's output of a batch of patches into the Laplace approximation of
    each patch's posterior at its mode (see the module docstring).

    Parameters
    ----------
    model : SifModel
        The guide's model (built-in atmosphere; its free shared latents are the guide's).
    q : GuideOutput
        The guide's output, leading dimension N patches.
    patches : Patch
        The same patches, leading dimension N on every field (radiance in
        mW m-2 sr-1 nm-1; e.g. :attr:`bayesfluo.inference.guide.GuideInputs.patches`).
    options : RefineOptions
    batch_size : int, optional
        Patches refined at once (``jax.lax.map`` over batches: bounded memory); all at
        once when None.
    start_local : array (N, P, D), optional
        Where the mode search starts in the pixels' latents (default: the guide's mean,
        ``q.local_loc``); the guide's output stays what a pixel dominated by its prior
        keeps. A tower's scans start from their own least squares
        (:func:`bayesfluo.model.laplace.toc_start`) where that fits better.

    Returns
    -------
    (GuideOutput, RefineInfo)
        The refined posterior in the guide's form, and per-patch convergence.
    """
    opt = options or RefineOptions()
    layout = Layout.of(model, patches.index(0))
    if layout.n_local != q.local_loc.shape[-1] or layout.n_shared != q.shared_loc.shape[-1]:
        raise ValueError(f"the guide's latents ({q.local_loc.shape[-1]} local, "
                         f"{q.shared_loc.shape[-1]} shared) are not the model's "
                         f"({layout.n_local}, {layout.n_shared})")

    def one(a):
        return _refine_patch(model, layout, opt, *a)

    n = q.local_loc.shape[0]
    start = q.local_loc if start_local is None else start_local
    if batch_size is None or batch_size >= n:
        return jax.vmap(one)((q, patches, start))
    # batches by explicit shapes (jax.lax.map's own batching infers a -1 axis, which
    # fails on the empty shared latents of a top-of-canopy patch)
    n_pad = -(-n // batch_size) * batch_size

    def split(v):
        v = jnp.concatenate([v, jnp.repeat(v[-1:], n_pad - n, 0)]) if n_pad > n else v
        return v.reshape((n_pad // batch_size, batch_size) + v.shape[1:])

    out = jax.lax.map(jax.vmap(one), jax.tree.map(split, (q, patches, start)))
    return jax.tree.map(lambda v: v.reshape((n_pad,) + v.shape[2:])[:n], out)
