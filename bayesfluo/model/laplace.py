"""The one Laplace / Newton engine: the mode of a patch's posterior and the Hessian there.

NUTS preconditioning (:mod:`bayesfluo.inference.nuts`) and the refinement of the guide
(:mod:`bayesfluo.inference.refine`) both find the mode of a patch's posterior in
NumPyro's unconstrained space and the Hessian of the potential there, with the functions
of this module:

the layout (:class:`Layout`)
    The unconstrained latents of a patch as two arrays, ``local`` (P, D) (each pixel's
    reflectance and SIF coordinates, the guide's order) and ``shared`` (S,) (the patch's
    atmosphere and sensor, ``cfg.free`` order), read from the model's own program.
the Hessian in blocks (:func:`hessian_blocks`)
    Pixels do not interact but through the shared latents, so ``D + S`` Hessian-vector
    products (a local coordinate perturbed in every pixel at once, then each shared
    latent) give every entry: the pixel blocks ``h_ll`` (P, D, D), the coupling ``h_ls``
    (P, D, S) and the shared block ``h_ss`` (S, S).
damped Newton steps (:func:`newton_steps`)
    Each step solves the Newton system through the Schur complement of the shared block,
    with several Levenberg-Marquardt dampings (:data:`LAMBDAS`) tried at once in a
    Jacobi-scaled eigenbasis (absolute eigenvalues: a descent direction even where the
    Hessian is indefinite); the damping with the lowest potential wins.
the mode (:func:`find_mode`, :func:`laplace`)
    In rounds: the patch's band operator (the fine-grid atmosphere and sensor response,
    most of the cost) is expanded in the shared latents about the current point
    (:meth:`SifModel.operator_expansion`, first order by default; or the exact operator
    is used), a few Newton steps are taken on it, and the expansion is renewed about
    where they ended, until a round starts with a Newton decrement below ``tol``: there
    the fresh expansion is exact to first order, so the mode is the model's own. The
    Hessian at the mode comes from a second-order expansion about it (exact at the
    mode). A top-of-canopy patch (no shared operator) uses the exact potential. The
    refinement of the guide starts close to the mode (the guide's mean) and uses
    first-order expansions and clipped steps; NUTS starts from least squares, further
    away, where an expansion misleads the first steps and clipping a step coordinate by
    coordinate bends it away from descent: it takes unclipped steps on the exact
    operator.

The start of a mode search without a guide is :func:`initial_values`; :func:`fit_at_mode`
does the whole fit of a patch (start, mode, residuals in noise units, the program's
deterministics there), as model checks and benchmarks need it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.infer.util import constrain_fn, potential_energy, unconstrain_fn

from bayesfluo.model.patch import Patch
from bayesfluo.model.priors import SHAPE760
from bayesfluo.model.sif_model import OperatorExpansion, SifModel
from bayesfluo.model.toc_least_squares import scan_least_squares
from bayesfluo.physics.surface import SifParams, sif_taylor

__all__ = ["Layout", "Blocks", "Mode", "Damping", "REFINE_DAMPING", "SEARCH_DAMPING",
           "LAMBDAS", "MAX_STEP", "hessian_blocks", "eig_scaled", "eig_inverse",
           "newton_direction", "newton_steps", "find_mode", "laplace", "patch_potential",
           "dense_hessian", "initial_values", "toc_start", "ModeFit", "fit_at_mode"]

#: Damping values tried at once in each Newton step (the best potential wins)
LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
#: Largest move of one coordinate in one step (prior sd units): a safety net
MAX_STEP = 3.0


class Damping(NamedTuple):
    """How the Newton steps are damped (the defaults are the refinement's, from the
    guide's mean, close to the mode).

    Attributes
    ----------
    lambdas : tuple of float
        Levenberg-Marquardt dampings tried at once in each step, relative to the
        Jacobi-scaled curvature (the step with the lowest potential is taken).
    max_step : float
        Largest move of one coordinate in one step (clipped coordinate by coordinate).
    curvature_floor : float
        Floor under the diagonal of the Hessian in the Jacobi scaling: where the
        curvature is below it (a flat direction, e.g. a SIF coordinate deep in the
        logarithmic part of its softplus) the damping is absolute, so the step stays
        bounded.
    """

    lambdas: tuple = LAMBDAS
    max_step: float = MAX_STEP
    curvature_floor: float = 1e-12


#: The refinement's damping (:class:`Damping`'s defaults)
REFINE_DAMPING = Damping()
#: Newton steps from a least-squares start (further from the mode than the guide's mean:
#: NUTS's preconditioning, a tower scan's refinement): heavier dampings than the
#: refinement's, no clipping coordinate by coordinate (it bends a step away from descent,
#: and the search crawls), and absolute damping in flat directions (curvature below that
#: of a standard-normal prior: a bare pixel's SIF deep in the logarithmic part of its
#: softplus coordinate)
SEARCH_DAMPING = Damping(lambdas=LAMBDAS + (1e2, 1e3, 1e4), max_step=np.inf,
                         curvature_floor=1.0)


# --- the layout of a patch's latents -----------------------------------------------------

class Layout(NamedTuple):
    """Where each sample site of a patch's program sits in ``(local (P, D), shared (S,))``.

    Attributes
    ----------
    local : tuple of (name, shape)
        Pixel-level sites (plate ``pixel``) and the shape of one pixel's value, in the
        program's order (``reflectance_z`` (K,), ``sif_far_red_raw``, ``sif_red_raw``:
        the guide's order).
    shared : tuple of (name, shape)
        Patch-level sites in the program's order (the free latents ``<name>_z`` in
        ``cfg.free`` order; an external table's perturbations after the sensor's).
    n_pixels : int
        Pixels of the patch (P).
    """

    local: tuple
    shared: tuple
    n_pixels: int

    @classmethod
    def of(cls, model: SifModel, patch: Patch) -> Layout:
        """The layout of ``model``'s program on patches shaped as ``patch`` (read from an
        abstract trace of the program: nothing is computed)."""
        where = {}

        def sites(p):
            tr = handlers.trace(handlers.seed(model.program, 0)).get_trace(p, None)
            out = {}
            for name, site in tr.items():
                if (site["type"] != "sample" or site["is_observed"] or name == "radiance"):
                    continue
                where[name] = any(f.name == "pixel" for f in site["cond_indep_stack"])
                out[name] = site["value"]
            return out

        abstract = jax.tree.map(lambda v: jax.ShapeDtypeStruct(jnp.shape(v),
                                                               jnp.result_type(v)), patch)
        shapes = jax.eval_shape(sites, abstract)
        n_pix = int(patch.ndvi.shape[-1])
        local = tuple((n, tuple(shapes[n].shape[1:])) for n in where if where[n])
        shared = tuple((n, tuple(shapes[n].shape)) for n in where if not where[n])
        return cls(local, shared, n_pix)

    @property
    def n_local(self) -> int:
        """Local coordinates per pixel (D)."""
        return int(sum(np.prod(s, dtype=int) for _, s in self.local))

    @property
    def n_shared(self) -> int:
        """Shared coordinates (S)."""
        return int(sum(np.prod(s, dtype=int) for _, s in self.shared))

    def unpack(self, local, shared) -> dict:
        """The program's unconstrained sites from ``local`` (P, D) and ``shared`` (S,)."""
        out = {}
        o = 0
        for name, shape in self.local:
            k = int(np.prod(shape, dtype=int))
            out[name] = (local[:, o] if shape == () else
                         local[:, o:o + k].reshape((local.shape[0],) + shape))
            o += k
        o = 0
        for name, shape in self.shared:
            k = int(np.prod(shape, dtype=int))
            out[name] = shared[o] if shape == () else shared[o:o + k].reshape(shape)
            o += k
        return out

    def pack(self, z: dict) -> tuple[jax.Array, jax.Array]:
        """``(local (P, D), shared (S,))`` from the program's unconstrained sites."""
        n = self.n_pixels
        local = jnp.concatenate([jnp.reshape(z[name], (n, -1)) for name, _ in self.local],
                                axis=1)
        shared = (jnp.concatenate([jnp.ravel(z[name]) for name, _ in self.shared])
                  if self.shared else jnp.zeros(0, local.dtype))
        return local, shared


def patch_potential(model: SifModel, layout: Layout, patch: Patch,
                    expansion: OperatorExpansion | None = None
                    ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The patch's potential energy (minus the log joint density, NumPyro's
    unconstrained space) as a function of ``(local (P, D), shared (S,))``, with the exact
    band operator or its ``expansion``."""
    def potential(local, shared):
        return potential_energy(model.program, (patch, expansion), {},
                                layout.unpack(local, shared))
    return potential


# --- the Hessian in blocks and the Newton step --------------------------------------------

class Blocks(NamedTuple):
    """Gradient and Hessian of a patch potential in blocks: ``gl`` (P, D), ``gs`` (S,),
    ``h_ll`` (P, D, D), ``h_ls`` (P, D, S), ``h_ss`` (S, S) (units of log density per unit
    of the unconstrained coordinates, squared for the Hessian)."""

    gl: jax.Array
    gs: jax.Array
    h_ll: jax.Array
    h_ls: jax.Array
    h_ss: jax.Array


def hessian_blocks(grad_fn: Callable, xl: jax.Array, xs: jax.Array) -> Blocks:
    """Gradient and the Hessian blocks of a patch potential from D + S Hessian-vector
    products (local coordinates perturbed in every pixel at once: pixels do not interact
    but through the shared latents).

    Parameters
    ----------
    grad_fn : callable
        ``(xl, xs) -> (gl, gs)``, the gradient of the potential.
    xl, xs : arrays (P, D), (S,)
        Where.
    """
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
    return Blocks(gl, gs, h_ll, h_ls, h_ss)


def dense_hessian(blocks: Blocks) -> np.ndarray:
    """The dense Hessian (float64) of :class:`Blocks`, coordinates pixel by pixel (each
    pixel's D local ones) and the shared ones last."""
    h_ll, h_ls, h_ss = (np.asarray(a, np.float64) for a in blocks[2:])
    p, d, s = h_ls.shape
    h = np.zeros((p * d + s, p * d + s))
    for i in range(p):
        h[i * d:(i + 1) * d, i * d:(i + 1) * d] = h_ll[i]
        h[i * d:(i + 1) * d, p * d:] = h_ls[i]
        h[p * d:, i * d:(i + 1) * d] = h_ls[i].T
    h[p * d:, p * d:] = h_ss
    return h


def eig_scaled(h: jax.Array, floor: float = 1e-12
               ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Jacobi-scaled eigendecomposition of symmetric matrices (..., n, n):
    ``(w, v, sc)`` with ``diag(sc) h diag(sc) = v diag(w) v^T``, ``sc = 1 /
    sqrt(max(|diag h|, floor))`` (float32 copes with curvatures spanning six orders of
    magnitude once the diagonal is one)."""
    sc = 1.0 / jnp.sqrt(jnp.maximum(jnp.abs(jnp.diagonal(h, axis1=-2, axis2=-1)), floor))
    hs = h * sc[..., :, None] * sc[..., None, :]
    w, v = jnp.linalg.eigh(0.5 * (hs + jnp.swapaxes(hs, -1, -2)))
    return w, v, sc


def eig_inverse(eig: tuple, lam=0.0, floor: float = 1e-7) -> jax.Array:
    """Inverse from :func:`eig_scaled` with the eigenvalues replaced by their absolute
    values plus the damping ``lam`` (Levenberg-Marquardt in the scaled space), floored at
    ``floor`` times the largest: a descent direction even where the Hessian is
    indefinite."""
    w, v, sc = eig
    w = jnp.abs(w) + lam
    w = jnp.maximum(w, floor * jnp.max(w, -1, keepdims=True))
    inv = jnp.einsum("...ik,...k,...jk->...ij", v, 1.0 / w, v)
    return inv * sc[..., :, None] * sc[..., None, :]


def newton_direction(blocks: Blocks, eig_l: tuple, lam, floor: float = 1e-12
                     ) -> tuple[jax.Array, jax.Array]:
    """Damped Newton step ``(dl (P, D), ds (S,))`` through the Schur complement of the
    shared block (``eig_l``: :func:`eig_scaled` of ``h_ll``; ``floor``: its curvature
    floor, used for the Schur complement too)."""
    gl, gs, _, h_ls, h_ss = blocks
    a_inv = eig_inverse(eig_l, lam)                                      # (P, D, D)
    ainv_b = a_inv @ h_ls                                                # (P, D, S)
    ainv_g = jnp.einsum("pde,pe->pd", a_inv, gl)
    if gs.shape[0]:
        schur = h_ss - jnp.einsum("pds,pdt->st", h_ls, ainv_b)
        ds = eig_inverse(eig_scaled(schur, floor), lam) @ (
            -gs + jnp.einsum("pds,pd->s", h_ls, ainv_g))
    else:
        ds = gs
    dl = -ainv_g - jnp.einsum("pds,s->pd", ainv_b, ds)
    return dl, ds


def _newton_step(potential, damping: Damping, carry):
    """One damped Newton step on ``potential(xl, xs)``: carry ``(xl, xs, f, dec)``."""
    xl, xs, f, dec = carry
    grad_fn = jax.grad(potential, argnums=(0, 1))
    blocks = hessian_blocks(grad_fn, xl, xs)
    gl, gs = blocks.gl, blocks.gs
    floor = damping.curvature_floor
    eig_l = eig_scaled(blocks.h_ll, floor)
    lams = jnp.asarray(damping.lambdas, xl.dtype)
    dl, ds = jax.vmap(lambda lam: newton_direction(blocks, eig_l, lam, floor))(lams)
    dl = jnp.clip(dl, -damping.max_step, damping.max_step)
    ds = jnp.clip(ds, -damping.max_step, damping.max_step)
    fa = jax.vmap(lambda a, b: potential(xl + a, xs + b))(dl, ds)
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


def newton_steps(potential: Callable, xl: jax.Array, xs: jax.Array, n_steps: int,
                 damping: Damping = REFINE_DAMPING
                 ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """``n_steps`` damped Newton steps on ``potential(xl, xs)`` (the dampings of
    ``damping`` tried at once, the best potential wins; a step that raises the potential
    beyond its float32 rounding is not taken). Returns ``(xl, xs, potential, decrements
    (n_steps,))``, the decrements (log-density units) of the steps proposed."""
    f = potential(xl, xs)
    (xl, xs, f, _), decs = jax.lax.scan(
        lambda c, _: _newton_step(potential, damping, c),
        (xl, xs, f, jnp.float32(jnp.inf)), None, length=n_steps)
    return xl, xs, f, decs


def find_mode(potential: Callable, expand: Callable, xl: jax.Array, xs: jax.Array, *,
              rounds, steps: int, tol: float, damping: Damping = REFINE_DAMPING
              ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The mode by rounds of Newton steps, each on an expansion of the operator.

    Parameters
    ----------
    potential : callable
        ``(xl, xs, expansion) -> potential energy``.
    expand : callable
        ``xs -> expansion`` of the operator about ``xs`` (None: the exact operator).
    xl, xs : arrays (P, D), (S,)
        The start.
    rounds : int
        Most rounds (may be traced).
    steps : int
        Newton steps per round.
    tol : float
        A round whose first Newton decrement (log-density units, measured where its
        expansion is exact to first order) is below ``tol`` started at the mode: the
        search stops after it.
    damping : Damping
        How the steps are damped (:func:`newton_steps`).

    Returns
    -------
    (xl, xs, decrement, rounds done)
        Under ``vmap`` the loop runs as long as the slowest patch needs.
    """
    def expansion_round(carry):
        # an expansion about where the previous round ended, then Newton steps on it
        # (one traced body for every round: compiled once)
        i, xl, xs, _ = carry
        exp = expand(xs)
        xl, xs, _, decs = newton_steps(lambda a, b: potential(a, b, exp), xl, xs, steps,
                                       damping)
        # the first step's decrement is measured where the fresh expansion is exact to
        # first order: below tol, the round started at the model's own mode
        return i + 1, xl, xs, decs[0]

    i, xl, xs, dec = jax.lax.while_loop(
        lambda c: (c[0] < rounds) & ~(c[3] < tol), expansion_round,
        (jnp.int32(0), xl, xs, jnp.float32(jnp.inf)))
    return xl, xs, dec, i


class Mode(NamedTuple):
    """The mode of a patch's posterior and the Laplace approximation there.

    Attributes
    ----------
    local, shared : arrays (P, D), (S,)
        The mode (:class:`Layout` order, NumPyro's unconstrained space).
    decrement : scalar
        Newton decrement (log-density units) at the start of the last round; below the
        tolerance: converged.
    rounds : scalar int
        Rounds done.
    blocks : Blocks
        Gradient and Hessian of the potential at the mode.
    expansion : OperatorExpansion or None
        Second-order expansion of the band operator about the mode (None without a
        shared operator: top of canopy).
    """

    local: jax.Array
    shared: jax.Array
    decrement: jax.Array
    rounds: jax.Array
    blocks: Blocks
    expansion: OperatorExpansion | None


def _expands(model: SifModel) -> bool:
    """Whether the model's patch operator has an expansion in the shared latents
    (built-in atmosphere or external table, with shared latents)."""
    return model.shared_size > 0


def laplace(model: SifModel, patch: Patch, xl: jax.Array, xs: jax.Array, *,
            layout: Layout | None = None, rounds=10, steps: int = 3, tol: float = 0.5,
            order: int = 1, damping: Damping = REFINE_DAMPING) -> Mode:
    """The mode of one patch's posterior from ``(xl, xs)`` and the Hessian there (see
    the module docstring).

    Parameters
    ----------
    model : SifModel
    patch : Patch
        One patch, radiance given (mW m-2 sr-1 nm-1).
    xl, xs : arrays (P, D), (S,)
        The start (:class:`Layout` order).
    layout : Layout, optional
        :meth:`Layout.of` the model and patch (computed when not given).
    rounds, steps, tol, damping
        :func:`find_mode`.
    order : {0, 1, 2}
        Order of the operator's expansion in the Newton rounds, 0 for the exact operator
        (the mode is the same either way; the Hessian always comes from a second-order
        expansion about the mode, exact there). An expansion about a start far from the
        mode can mislead the first steps: from a start that is not close (not the
        guide's), use the exact operator.
    """
    layout = layout or Layout.of(model, patch)

    def potential(a, b, exp):
        return patch_potential(model, layout, patch, exp)(a, b)

    if _expands(model):
        def expand(z, order=order):
            return model.operator_expansion(patch, z, order=order) if order else None
    else:
        def expand(z, order=order):
            return None

    xl, xs, dec, i = find_mode(potential, expand, xl, xs, rounds=rounds, steps=steps,
                               tol=tol, damping=damping)
    # the Hessian at the mode through a second-order expansion about it: exact there
    exp = expand(xs, 2)
    blocks = hessian_blocks(jax.grad(lambda a, b: potential(a, b, exp), argnums=(0, 1)),
                            xl, xs)
    return Mode(xl, xs, dec, i, blocks, exp)


# --- the start of a mode search ------------------------------------------------------------

def initial_values(model: SifModel, patch: Patch) -> dict:
    """A starting point for a mode search: the program's sample sites (constrained).

    Built-in atmosphere: the atmosphere and sensor at their prior means and, per pixel,
    reflectance and SIF amplitudes by linear least squares through that atmosphere (the
    radiance is linear in the spline coefficients and the SIF amplitudes but for the
    small multiple-scattering factor, updated twice); a masked pixel starts at its
    prior's centre (``reflectance_z`` 0, raw SIF amplitudes 0.5). Top of canopy (measured
    irradiance): per pixel, weighted linear least squares of ``L / (E/pi) = R + F /
    (E/pi)`` (linear in the reflectance at the band centres and in the SIF amplitudes),
    the reflectance turned into prior coordinates by a ridge fit (``z`` stays of order
    one where the fitted coefficients are rougher than the prior allows).

    External table: the same least squares through the table unperturbed, the
    perturbations and the sensor at their prior means (every ``z`` 0).
    """
    fm = model.fm
    if model.top_of_canopy:
        return _toc_initial_values(model, patch)
    op = model.operator(patch)
    c = fm.band_centre_nm
    cols = [np.asarray(jnp.einsum("dbk,db->kb", fm.basis_band, op.reflected)).T,
            np.asarray(jnp.sum(op.emitted * sif_taylor(c, SifParams(0.0, 1.0)), 0))[:, None]]
    if model.has_red:
        cols.append(np.asarray(jnp.sum(op.emitted * sif_taylor(c, SifParams(1.0, 0.0)), 0)
                               )[:, None])
    design = np.concatenate(cols, axis=1).astype(np.float64)  # (bands, K + n_sif)
    y = np.asarray(patch.radiance, np.float64) - np.asarray(op.path)[None]
    b0 = np.asarray(fm.basis_band[0], np.float64)
    rho = np.asarray(op.rho_dd, np.float64)
    ms = np.ones_like(y)
    for _ in range(3):
        theta = np.linalg.lstsq(design, (y * ms).T, rcond=None)[0].T
        r0 = np.clip(theta[:, :fm.n_basis] @ b0.T, 0.0, 0.95)
        ms = 1.0 - rho[None] * r0
    k = fm.n_basis
    coeffs = np.clip(theta[:, :k], 0.01, 0.99)
    mu, chol = (np.asarray(a, np.float64) for a in model.reflectance_prior())
    z = np.linalg.solve(chol, (np.log(coeffs / (1 - coeffs)) - mu).T).T
    out = _start_values(model, patch, z, theta[:, k:])
    # a masked pixel's posterior is its prior: start there (its radiance may be anything)
    used = np.asarray(patch.mask) > 0
    for name, v in out.items():
        out[name] = jnp.where(used.reshape((-1,) + (1,) * (v.ndim - 1)), v,
                              0.0 if name == "reflectance_z" else 0.5)
    for name, shape in model.shared_sites():
        out[name] = jnp.zeros(shape, jnp.float32)
    return out


def _toc_initial_values(model: SifModel, patch: Patch) -> dict:
    """:func:`initial_values` of a top-of-canopy patch (traceable: JAX throughout, so a
    jitted retrieval can start its mode search here, :func:`toc_start`)."""
    e = jnp.asarray(patch.irradiance, jnp.float32) / jnp.pi            # (P, B)
    rad = jnp.asarray(patch.radiance, jnp.float32)
    k = model.fm.n_basis
    # weights: the inverse noise variance of the model's noise at the measured radiance
    # (floored at 1e-3)
    w = 1.0 / model.noise_variance(jnp.maximum(rad, 1e-3), patch.noise_a, patch.noise_b)
    theta, _ = scan_least_squares(model, rad, e, w)
    coeffs = jnp.clip(theta[:, :k], 0.01, 0.99)
    mu, chol = model.reflectance_prior()
    resid = jnp.log(coeffs / (1 - coeffs)) - mu
    # ridge: z = L^T (L L^T + eps)^-1 r, row by row
    z = resid @ jnp.linalg.solve(chol @ chol.T + 0.01 * jnp.eye(k), chol)
    return _start_values(model, patch, z, theta[:, k:])


def _start_values(model: SifModel, patch: Patch, z, amplitudes) -> dict:
    """Pixel-level sites of a mode search's start from per-pixel estimates: reflectance
    prior coordinates ``z`` (P, K) and SIF peak amplitudes (P, 1 or 2: far-red, red) in
    mW m-2 sr-1 nm-1, turned into the model's raw amplitude coordinates (clipped to
    0.1-3 prior scales)."""
    scale = model.sif_scale(patch.ndvi) / SHAPE760
    out = {"reflectance_z": jnp.asarray(z, jnp.float32),
           "sif_far_red_raw": jnp.clip(amplitudes[:, 0] / scale, 0.1, 3.0
                                       ).astype(jnp.float32)}
    if model.has_red:
        out["sif_red_raw"] = jnp.clip(amplitudes[:, 1] / (model.cfg.sif_red_ratio * scale),
                                      0.1, 3.0).astype(jnp.float32)
    return out


def toc_start(model: SifModel, patch: Patch, layout: Layout | None = None) -> jax.Array:
    """The local start (P, D) of a top-of-canopy patch's mode search, in the
    :class:`Layout`'s unconstrained coordinates: each scan's weighted linear least
    squares (:func:`initial_values`). Traceable (vmap it over patches)."""
    if not model.top_of_canopy:
        raise ValueError("toc_start is for a top-of-canopy model (measured irradiance)")
    layout = layout or Layout.of(model, patch)
    z = unconstrain_fn(model.program, (patch, None), {}, _toc_initial_values(model, patch))
    return layout.pack(z)[0]


# --- a patch fitted at its mode -----------------------------------------------------------

class ModeFit(NamedTuple):
    """A patch fitted at the mode of its posterior.

    Attributes
    ----------
    mode : Mode
        The mode and the Laplace approximation there.
    residual : array (P, B)
        ``(L - L_mode) / sd`` per pixel and band, ``sd`` the likelihood's (the measured
        irradiance's noise carried through for a top-of-canopy model); masked pixels too.
    chi2 : array (P,)
        Reduced chi-square of each pixel at the mode.
    sites : dict
        The program's sample sites and deterministics at the mode (``f760``,
        ``sif_peak``, ``reflectance760``, the free atmosphere and sensor latents).
    """

    mode: Mode
    residual: jax.Array
    chi2: jax.Array
    sites: dict


def fit_at_mode(model: SifModel, patch: Patch, *, rounds: int = 60) -> ModeFit:
    """Fit one patch (radiance given) at its posterior mode: from :func:`initial_values`,
    Newton steps on the exact operator (as NUTS's preconditioning does), at most
    ``rounds`` of them; compiled once per model and patch shape."""
    layout = Layout.of(model, patch)
    z = unconstrain_fn(model.program, (patch, None), {}, initial_values(model, patch))
    xl, xs = layout.pack(z)
    return _fit_at_mode(model, patch, xl, xs, layout, rounds)


@partial(jax.jit, static_argnames=("layout", "rounds"))
def _fit_at_mode(model: SifModel, patch: Patch, xl, xs, layout: Layout, rounds: int
                 ) -> ModeFit:
    m = laplace(model, patch, xl, xs, layout=layout, rounds=rounds, steps=1, order=0)
    pred = model.predict_mean(patch, m.shared, m.local)
    coeffs = model.surface(m.local, patch.ndvi)[0]
    extra = model.irradiance_variance(patch, coeffs) if model.top_of_canopy else 0.0
    r = (patch.radiance - pred) / jnp.sqrt(model.noise_variance(pred, patch.noise_a,
                                                                patch.noise_b, extra))
    sites = constrain_fn(model.program, (patch, None), {}, layout.unpack(m.local, m.shared),
                         return_deterministic=True)
    return ModeFit(m, r, jnp.mean(r**2, -1), sites)
