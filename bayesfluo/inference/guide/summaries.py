"""Posterior summaries of the guide's output in closed form (or one-dimensional
quadrature), and draws from it.

The marginal of a pixel's local latents is ``N(m, L L^T + A L_s L_s^T A^T)`` (see
:mod:`bayesfluo.inference.guide`), so the summaries of F760, F687, the SIF peak, the
reflectance at 760 nm and the patch's atmospheric and sensor terms need no sampling.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from bayesfluo.inference.guide.encoder import GuideOutput
from bayesfluo.model import Patch, SifModel, knee_softplus, reflectance_weights, toc_operator
from bayesfluo.model.scene_expansion import SceneExpansion, expanded_operator
from bayesfluo.physics.surface import SifParams, sif_spectrum
from bayesfluo.scene.grid import running_median

__all__ = ["HDI_RESOLUTION", "summaries", "marginal_local", "sample_draws", "predicted_radiance",
           "fit_chi2",
           "fit_check", "FitCheck", "SPIKE_WIDTH", "patch_relative_chi2", "inflate_f760",
           "peak_weights", "calibrate",
           "f760_inflation", "F760_INFLATION_EDGES"]


# one-dimensional Gaussian expectations: the trapezoidal rule on 141 nodes over +-7 sd.
# Gauss-Hermite would be exact for polynomials, but the SIF transform has a knee (width
# 0.1 in the unconstrained coordinate) that a few dozen Hermite nodes step over when the
# posterior is wide; the trapezoid's error there is below 1e-4 of the sd.
_GH_X = np.linspace(-7.0, 7.0, 141)
_GH_W = np.exp(-0.5 * _GH_X**2)
_GH_W = _GH_W / _GH_W.sum()
_Z05 = 1.6448536269514722
# the shortest 90 % interval is searched among [Q(p), Q(p + 0.9)], p = 0 ... 0.1 in these
# steps (p = 0: the interval starts at the quantity's lower bound, e.g. zero SIF)
_HDI_P = np.linspace(0.0, 0.1, 41)[:-1]
_HDI_ZLO = np.concatenate([[-40.0], scipy.stats.norm.ppf(_HDI_P[1:])])
_HDI_ZHI = scipy.stats.norm.ppf(_HDI_P + 0.9)
#: SIF intervals (mW m-2 sr-1 nm-1) no longer than the shortest by more than this are
#: ties, and the one starting at zero wins: a posterior piled up near zero is reported
#: as "0 to ...", holding a true zero (bare soil, a cloud), where the strictly shortest
#: could start a few 1e-4 above it (measured on bare PROSAIL scans of the FloX guide:
#: lower ends of 1e-4 to 1e-3). A tie changes the width by at most this, far below
#: any SIF noise; the interval still holds exactly 90 % of the posterior.
HDI_RESOLUTION = 1e-3


def _quantity(mean, sd, f, hdi: bool = False, lower: float = 0.0, tie: float = 0.0):
    """Mean, sd and 5/50/95 % quantiles of ``f(v)``, ``v ~ N(mean, sd)``, ``f``
    increasing: quantiles exactly, moments by quadrature. With ``hdi``, also the bounds
    ``lo90``, ``hi90`` of the shortest interval holding 90 % of the posterior (the
    highest-density interval of a unimodal posterior): for SIF whose posterior piles up
    at zero it is ``[0, Q(0.9)]`` and holds a true zero, which no equal-tailed interval
    of a positive quantity can (``lower``: the quantity's lower bound, the value of
    ``f`` at minus infinity; ``tie``: the interval from ``lower`` is taken when it is at
    most this longer than the shortest)."""
    v = mean[..., None] + sd[..., None] * jnp.asarray(_GH_X, jnp.float32)
    fv = f(v)
    w = jnp.asarray(_GH_W, jnp.float32)
    m = fv @ w
    var = jnp.maximum(((fv - m[..., None]) ** 2) @ w, 0.0)
    q = f(mean[..., None] + sd[..., None] * jnp.array([-_Z05, 0.0, _Z05], jnp.float32))
    out = dict(mean=m, sd=jnp.sqrt(var), q05=q[..., 0], q50=q[..., 1], q95=q[..., 2])
    if hdi:
        lo = f(mean[..., None] + sd[..., None] * jnp.asarray(_HDI_ZLO, jnp.float32))
        hi = f(mean[..., None] + sd[..., None] * jnp.asarray(_HDI_ZHI, jnp.float32))
        lo = lo.at[..., 0].set(lower)
        width = hi - lo
        best = jnp.where(width[..., 0] <= jnp.min(width, -1) + tie, 0,
                         jnp.argmin(width, -1))[..., None]
        out["lo90"] = jnp.take_along_axis(lo, best, -1)[..., 0]
        out["hi90"] = jnp.take_along_axis(hi, best, -1)[..., 0]
    return out


def marginal_local(q: GuideOutput) -> tuple[jax.Array, jax.Array]:
    """Mean (..., P, D) and covariance (..., P, D, D) of each pixel's local latents,
    integrated over the patch's shared latents."""
    cov_l = q.local_tril @ jnp.swapaxes(q.local_tril, -1, -2)
    cov_s = q.shared_tril @ jnp.swapaxes(q.shared_tril, -1, -2)
    a = q.coupling
    cov = cov_l + a @ cov_s[..., None, :, :] @ jnp.swapaxes(a, -1, -2)
    return q.local_loc, cov


def summaries(q: GuideOutput, model: SifModel, ndvi, surface_pressure0,
              both_peaks: bool = False) -> dict:
    """Posterior summaries of every pixel from the guide's output (arrays with the
    output's leading dims, then (P,) for pixel quantities).

    Parameters
    ----------
    q : GuideOutput
        The guide's output (any leading dims).
    model : SifModel
        The guide's model (priors and transforms of the latents).
    ndvi : array (..., P)
        NDVI of the pixels (the SIF prior's scale).
    surface_pressure0 : array (...)
        Prior mean surface pressure of each patch, hPa.
    both_peaks : bool
        Where the window holds the O2-B band, also ``sif_red_peak`` (the SIF at the red
        peak's centre, mW m-2 sr-1 nm-1) and ``sif_integrated`` (the SIF spectrum
        integrated over 650-800 nm, mW m-2 sr-1), each from the pair of SIF
        amplitudes' joint posterior, ``f687_f760`` ``{corr}``: the posterior
        correlation of F687 and F760, and ``sif_red`` ``{contraction}``: how much the
        data pinned the red peak (:func:`_red_contraction`).

    Returns
    -------
    dict
        ``{quantity: {mean, sd, q05, q50, q95}}`` for ``f760`` (mW m-2 sr-1 nm-1;
        also ``lo90``, ``hi90``: the shortest 90 % interval, see :func:`_quantity`),
        ``f687`` (windows with the O2-B band), ``sif_peak``, ``reflectance760`` (1) and
        each free shared latent (its physical units, per patch).
    """
    k = model.fm.n_basis
    mean = q.local_loc
    # the marginal covariance L L^T + B B^T, B = A L_s, only where needed (elementwise
    # products and sums over the small axes: tiny batched matrix products are slow on CPU)
    lb = jnp.concatenate([q.local_tril, jnp.sum(q.coupling[..., :, :, None]
                                                * q.shared_tril[..., None, None, :, :],
                                                -2)], -1)                    # (..., P, D, D + S)
    sd = jnp.sqrt(jnp.sum(lb * lb, -1))
    scale = model.sif_scale(ndvi)                                     # F760 per unit raw
    shape_far = SifParams(0.0, 1.0)
    peak_ratio = sif_spectrum(shape_far.centre_far_red, shape_far) / sif_spectrum(760.0,
                                                                                  shape_far)
    out = {}
    f760 = _quantity(mean[..., k], sd[..., k], lambda v: scale[..., None] * knee_softplus(v),
                     hdi=True, tie=HDI_RESOLUTION)
    out["f760"] = f760
    out["sif_peak"] = {s: v * peak_ratio for s, v in f760.items()}
    if model.has_red:
        # F687 = red part + far-red tail; quadrature over the two marginals would need their
        # correlation: use 2-D Gauss-Hermite on the pair
        cov2 = jnp.sum(lb[..., k:k + 2, None, :] * lb[..., None, k:k + 2, :], -1)
        nodes = _pair_nodes(mean[..., k:k + 2], cov2, scale, model.cfg.sif_red_ratio)
        out["f687"] = _sif_pair(nodes, *peak_weights(687.0))
        if both_peaks:  # the same nodes for each
            out["sif_red_peak"] = _sif_pair(nodes,
                                            *peak_weights(SifParams(0.0, 0.0).centre_red))
            out["sif_integrated"] = _sif_pair(nodes, *_integral_weights())
            out["f687_f760"] = {"corr": _pair_correlation(nodes, peak_weights(687.0),
                                                          (1.0, 0.0))}
            out["sif_red"] = {"contraction": _red_contraction(nodes, scale,
                                                              model.cfg.sif_red_ratio)}
    # reflectance at 760 nm: linearised (its posterior sd is ~1e-3, far inside the
    # sigmoid's linear range)
    mu, chol = model.reflectance_prior()
    w = reflectance_weights(model.fm, 760.0)
    zr = mean[..., :k]
    c = jax.nn.sigmoid(mu + zr @ chol.T)
    r760 = c @ w
    grad = (w * c * (1 - c)) @ chol                                   # d R760 / d z
    g_lb = jnp.sum(grad[..., :, None] * lb[..., :k, :], -2)            # grad^T [L B]
    var = jnp.sum(g_lb * g_lb, -1)
    sd_r = jnp.sqrt(jnp.maximum(var, 0.0))
    out["reflectance760"] = dict(mean=r760, sd=sd_r, q05=r760 - _Z05 * sd_r, q50=r760,
                                 q95=r760 + _Z05 * sd_r)
    # shared latents: exact (affine or log-normal in z)
    s_sd = jnp.sqrt(jnp.diagonal(q.shared_tril @ jnp.swapaxes(q.shared_tril, -1, -2),
                                 axis1=-2, axis2=-1))
    for i, n in enumerate(model.free):
        def phys(v, n=n):
            zs = {m: v for m in model.free}
            p0 = jnp.asarray(surface_pressure0)[..., None] if v.ndim > jnp.ndim(
                surface_pressure0) else surface_pressure0
            return model.shared(p0, zs)[2][n]
        out[n] = _quantity(q.shared_loc[..., i], s_sd[..., i], phys)
    return out


def peak_weights(wavelength_nm: float) -> tuple[float, float]:
    """The far-red and red peaks' SIF at ``wavelength_nm`` per unit of the far-red
    peak's at 760 nm (the SIF scale's unit)."""
    with jax.ensure_compile_time_eval():  # constants, also inside a jitted caller
        at760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
        return (float(sif_spectrum(wavelength_nm, SifParams(0.0, 1.0))) / at760,
                float(sif_spectrum(wavelength_nm, SifParams(1.0, 0.0))) / at760)


def _integral_weights() -> tuple[float, float]:
    """The far-red and red peaks' SIF integrated over 650-800 nm (nm) per unit of the
    far-red peak's at 760 nm."""
    wl = np.linspace(650.0, 800.0, 3001)
    with jax.ensure_compile_time_eval():
        at760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
        return tuple(float(np.trapezoid(np.asarray(sif_spectrum(wl, p)), wl)) / at760
                     for p in (SifParams(0.0, 1.0), SifParams(1.0, 0.0)))


class PairNodes(NamedTuple):
    """The two SIF peaks' values at two node sets of their amplitudes' joint posterior
    (:func:`_pair_nodes`), in units of the far-red peak's SIF at 760 nm: Gauss-Hermite
    nodes ``far``, ``red`` (..., n) with weights ``weights`` (n,) for moments, and an
    equal-weight lattice ``far_q``, ``red_q`` (..., m) for quantiles."""
    far: jax.Array
    red: jax.Array
    weights: jax.Array
    far_q: jax.Array
    red_q: jax.Array


# quantile lattice of the pair: the product of 24 standard-normal quantiles at
# (i + 1/2) / 24 per axis, equal weights. Against 20,000 Monte-Carlo draws of F687 on
# 2,000 random posteriors: the median (99th percentile) error of the median is 0.005
# (0.035) posterior sd and the shortest 90 % interval holds 87-91 % of the mass for
# 98 % of posteriors; Gauss-Hermite nodes (24 x 24, very unequal weights) read as
# weighted quantiles gave 0.032 (0.39) sd and 83-94 %.
_LATTICE = scipy.stats.norm.ppf((np.arange(24) + 0.5) / 24)


def _pair_nodes(m2, c2, scale, red_ratio: float) -> PairNodes:
    """The two SIF peaks' values at the nodes of their amplitudes' joint posterior
    (:class:`PairNodes`), from the mean (..., 2) and covariance (..., 2, 2) of the
    amplitudes' unconstrained coordinates (``scale`` (...): F760 per unit amplitude;
    ``red_ratio``: the red peak's prior scale relative to the far-red one's)."""
    l2 = jnp.linalg.cholesky(c2 + 1e-9 * jnp.eye(2))

    def peaks(x):
        gx, gy = jnp.meshgrid(x, x, indexing="ij")
        nodes = jnp.stack([gx.ravel(), gy.ravel()], -1)               # (n2, 2)
        v = m2[..., None, :] + jnp.einsum("...ij,nj->...ni", l2, nodes)
        return (scale[..., None] * knee_softplus(v[..., 0]),
                scale[..., None] * red_ratio * knee_softplus(v[..., 1]))

    x, w = np.polynomial.hermite_e.hermegauss(24)  # 2-D: 576 nodes
    w = jnp.asarray(w / w.sum(), jnp.float32)
    far, red = peaks(jnp.asarray(x, jnp.float32))
    far_q, red_q = peaks(jnp.asarray(_LATTICE, jnp.float32))
    return PairNodes(far, red, (w[:, None] * w[None, :]).ravel(), far_q, red_q)


def _red_contraction(nodes: PairNodes, scale, red_ratio: float):
    """Posterior contraction of the red peak's amplitude (...): ``1 - posterior variance
    / prior variance``, the prior a half-normal of scale ``scale * red_ratio`` (the
    model's, given the pixel's NDVI). Near 0 the red peak, and the part of F687 it
    carries, is the prior's (the data did not pin it); near 1 the data did."""
    red, ww = nodes.red, nodes.weights
    m = red @ ww
    var = ((red - m[..., None]) ** 2) @ ww
    prior_var = (scale * red_ratio) ** 2 * (1.0 - 2.0 / np.pi)
    return jnp.where(prior_var > 0, 1.0 - var / jnp.where(prior_var > 0, prior_var, 1.0),
                     0.0)


def _pair_correlation(nodes: tuple, wa: tuple[float, float], wb: tuple[float, float]):
    """Posterior correlation (...) of two SIF values both peaks contribute to, with the
    peaks' weights ``wa`` and ``wb`` (far-red, red; :func:`peak_weights`), e.g. F687 and
    F760, on the quadrature ``nodes`` of :func:`_pair_nodes`; 0 where either has no
    spread."""
    far, red, ww = nodes.far, nodes.red, nodes.weights
    a, b = wa[0] * far + wa[1] * red, wb[0] * far + wb[1] * red
    da, db = a - (a @ ww)[..., None], b - (b @ ww)[..., None]
    var_a, var_b = (da * da) @ ww, (db * db) @ ww
    den = jnp.sqrt(var_a * var_b)
    return jnp.where(den > 0, ((da * db) @ ww) / jnp.where(den > 0, den, 1.0), 0.0)


def _sif_pair(nodes: PairNodes, w_far: float, w_red: float):
    """Mean, sd and quantiles of ``w_far F_far + w_red F_red`` (a SIF value both peaks
    contribute to, e.g. F687; ``F_far``, ``F_red`` the peaks' SIF in units of the far-red
    peak's at 760 nm) on the nodes of the two SIF amplitudes' joint posterior
    (:func:`_pair_nodes`): moments from the Gauss-Hermite nodes; quantiles from the
    sorted equal-weight lattice, the distribution function taken linear between the
    lattice values (the i-th smallest of m at (i + 1/2) / m); the shortest 90 % interval
    is the shortest of ``[Q(p), Q(p + 0.9)]`` over the levels ``p`` of :func:`_quantity`."""
    f = w_far * nodes.far + w_red * nodes.red
    m = f @ nodes.weights
    sd = jnp.sqrt(jnp.maximum(((f - m[..., None]) ** 2) @ nodes.weights, 0.0))
    fs = jnp.sort(w_far * nodes.far_q + w_red * nodes.red_q, -1)
    n = fs.shape[-1]
    levels = np.concatenate([[0.05, 0.5, 0.95, 0.9], _HDI_P, _HDI_P + 0.9])
    pos = np.clip(levels * n - 0.5, 0.0, n - 1.0)    # fractional index of each level
    i0 = np.minimum(np.floor(pos).astype(int), n - 2)
    t = jnp.asarray(pos - i0, jnp.float32)
    qv = fs[..., i0] + t * (fs[..., i0 + 1] - fs[..., i0])
    lo, hi = _shortest_of_levels(qv[..., 4:4 + _HDI_P.size], qv[..., 4 + _HDI_P.size:],
                                 qv[..., 3], HDI_RESOLUTION)
    return dict(mean=m, sd=sd, q05=qv[..., 0], q50=qv[..., 1], q95=qv[..., 2], lo90=lo,
                hi90=hi)


def _shortest_of_levels(lo_c, hi_c, q90, tie: float):
    """Bounds (...) of the shortest of the candidate 90 % intervals ``[lo_c, hi_c]``
    (..., n): ``[0, q90]`` (the quantity is positive) where that is at most ``tie``
    longer (as in :func:`_quantity`)."""
    width = hi_c - lo_c
    best = jnp.argmin(width, -1)[..., None]
    w_best = jnp.take_along_axis(width, best, -1)[..., 0]
    zero = q90 <= w_best + tie
    lo = jnp.where(zero, 0.0, jnp.take_along_axis(lo_c, best, -1)[..., 0])
    hi = jnp.where(zero, q90, jnp.take_along_axis(hi_c, best, -1)[..., 0])
    return lo, hi


def sample_draws(q: GuideOutput, key: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
    """``n`` joint draws of the guide: shared (n, ..., S) and local (n, ..., P, D)
    unconstrained latents."""
    k1, k2 = jax.random.split(key)
    e_s = jax.random.normal(k1, (n,) + q.shared_loc.shape)
    zs = q.shared_loc + jnp.einsum("...ij,n...j->n...i", q.shared_tril, e_s)
    e_l = jax.random.normal(k2, (n,) + q.local_loc.shape)
    d = zs - q.shared_loc
    loc = q.local_loc + jnp.einsum("...pds,n...s->n...pd", q.coupling, d)
    u = loc + jnp.einsum("...pij,n...pj->n...pi", q.local_tril, e_l)
    return zs, u


def predicted_radiance(model: SifModel, q: GuideOutput, patches: Patch,
                       expansion: SceneExpansion | None = None, *,
                       exact_outside: bool = True, with_inside: bool = False):
    """Band radiance of every pixel at the guide's posterior mean (N, P, B), mW m-2 sr-1
    nm-1: each patch's band operator (:meth:`SifModel.pixel_operators`: each pixel's own
    surface pressure and smile where the patches carry them) at the mean of its shared
    latents, each pixel's reflectance and SIF (:meth:`SifModel.surface`) at their
    means.

    Parameters
    ----------
    model : SifModel
        The guide's model.
    q : GuideOutput
        The posterior of N patches in the guide's form.
    patches : Patch
        The same N patches (leading patch dimension; the radiance is not needed).
    expansion : SceneExpansion, optional
        The scene's operator expansion (:func:`bayesfluo.model.scene_expansion`): the
        operators of the patches inside its trust region come from it (a fraction of the
        exact operator's cost, within half a noise sd of it in every band), the others'
        are exact. Default: every operator exact.
    exact_outside : bool
        With an ``expansion``: the patches outside its trust region get the exact
        operator (else the expansion at the region's edge: a first pass that skips the
        cost of checking, to be repeated where ``with_inside`` says a patch left it).
    with_inside : bool
        Also return whether each patch lay inside the trust region ((N,) bool; all True
        without an expansion).

    Returns
    -------
    array (N, P, B)
        Or ``(radiance, inside)`` with ``with_inside``.
    """
    if model.top_of_canopy:  # the measured irradiance is each scan's operator
        coeffs, red, far = model.surface(q.local_loc, patches.ndvi)
        pred = jax.vmap(model.predict)(toc_operator(patches.irradiance), coeffs, red, far)
        return (pred, jnp.ones(pred.shape[0], bool)) if with_inside else pred
    # only what the operator needs goes through the map over patches
    geo = Patch(radiance=None, mask=None if patches.pixel_offset is None else patches.mask,
                ndvi=None, geometry=patches.geometry, noise_a=None, noise_b=None,
                surface_pressure0=patches.surface_pressure0,
                pixel_offset=patches.pixel_offset)
    if expansion is None:
        # the fine-grid operator of 32 patches at a time (bounded memory), each pixel's
        # own where the patches carry pixel offsets (terrain, smile, view; each patch's
        # own derivatives, so a pixel's fit does not depend on which patches share its
        # chunk)
        op = jax.lax.map(lambda a: model.pixel_operators(*a), (geo, q.shared_loc),
                         batch_size=32)
        coeffs, red, far = model.surface(q.local_loc, patches.ndvi)
        pred = jax.vmap(model.predict)(op, coeffs, red, far)
        return (pred, jnp.ones(pred.shape[0], bool)) if with_inside else pred
    op, jac, inside = jax.vmap(lambda p, z: expanded_operator(model, p, z, expansion))(
        geo, q.shared_loc)

    def exact_if_outside(a):  # one patch at a time: only the patches outside pay
        p, z, ins, o, j = a
        if j is None:
            return jax.lax.cond(ins, lambda: o, lambda: model.operator(p, z)), None
        return jax.lax.cond(ins, lambda: (o, j), lambda: model.offset_jacobian(p, z))

    if exact_outside:
        op, jac = jax.lax.map(exact_if_outside, (geo, q.shared_loc, inside, op, jac))
    delta = jax.vmap(model.pixel_delta)(geo) if jac is not None else None
    d = None if delta is None else delta - jax.vmap(model.patch_delta)(geo)[:, None, :]
    coeffs, red, far = model.surface(q.local_loc, patches.ndvi)
    pred = jax.vmap(model.predict_linearised, in_axes=(0, 0 if jac is not None else None,
                                                       0 if d is not None else None,
                                                       0, 0, 0))(op, jac, d, coeffs, red, far)
    return (pred, inside) if with_inside else pred


#: Bands of the running median a residual's spike is measured against
SPIKE_WIDTH = 7


class FitCheck(NamedTuple):
    """The fit of each pixel at the guide's posterior mean (:func:`fit_check`).

    Attributes
    ----------
    chi2 : array (N, P)
        Reduced chi-square of the radiance under the model's noise.
    spike : array (N, P)
        The largest standardised residual of one band above the running median of its
        :data:`SPIKE_WIDTH` neighbours' (noise sd): an artefact a few bands wide (a hot
        detector element, a glint) that the chi-square, averaged over hundreds of bands,
        dilutes below the misfit the model leaves on real scenes.
    inside : array (N,) of bool or None
        Whether each patch lay inside the scene expansion's trust region
        (:func:`predicted_radiance`).
    """

    chi2: jax.Array
    spike: jax.Array
    inside: jax.Array | None = None


def fit_check(model: SifModel, q: GuideOutput, patches: Patch,
              expansion: SceneExpansion | None = None, *,
              exact_outside: bool = True) -> FitCheck:
    """Reduced chi-square and spike statistic (:class:`FitCheck`) of each pixel's
    radiance at the guide's posterior mean (:func:`predicted_radiance`, through the
    scene's ``expansion`` where given; ``exact_outside`` as there), from one prediction:
    the ``poor_fit`` checks of a retrieval and their references on simulations after
    training."""
    pred, inside = predicted_radiance(model, q, patches, expansion,
                                      exact_outside=exact_outside, with_inside=True)
    inside |= jnp.sum(patches.mask, -1) == 0   # padding: nothing to check
    var = jax.vmap(model.noise_variance)(pred, patches.noise_a, patches.noise_b,
                                         _irradiance_variance(model, q, patches))
    r = (patches.radiance - pred) / jnp.sqrt(var)
    spike = jnp.max(jnp.abs(r - running_median(r, SPIKE_WIDTH)), -1)
    return FitCheck(jnp.mean(r * r, -1), spike, inside)


def fit_chi2(model: SifModel, q: GuideOutput, patches: Patch) -> jax.Array:
    """Reduced chi-square (N, P) of each pixel's radiance at the guide's posterior mean
    (:func:`predicted_radiance`) under the model's noise (:meth:`SifModel.fit_chi2`)
    (:func:`fit_check` without the spike statistic)."""
    pred = predicted_radiance(model, q, patches)
    var = jax.vmap(model.noise_variance)(pred, patches.noise_a, patches.noise_b,
                                         _irradiance_variance(model, q, patches))
    return jnp.mean((patches.radiance - pred) ** 2 / var, -1)


def _irradiance_variance(model: SifModel, q: GuideOutput, patches: Patch):
    """The variance a tower's measured irradiance adds to each band at the guide's
    posterior mean (:meth:`SifModel.irradiance_variance`; (N, P, B)), 0 elsewhere."""
    if not model.top_of_canopy:
        return jnp.zeros(patches.noise_a.shape)
    coeffs, _, _ = model.surface(q.local_loc, patches.ndvi)
    return jax.vmap(model.irradiance_variance)(patches, coeffs)


def patch_relative_chi2(c2: np.ndarray) -> np.ndarray:
    """Each pixel's fit chi-square (N, P; NaN where unusable) over the median of its
    patch's: a pixel that fits worse than its neighbours (a spike, a broken or mixed
    pixel) stands out even where the whole patch fits the model imperfectly."""
    with warnings.catch_warnings():  # all-NaN patches (padding): NaN, as they should
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(c2, axis=1, keepdims=True)
    return c2 / np.maximum(med, 1e-6)


#: NDVI class edges of :func:`inflate_f760`'s factors (bare, sparse, dense).
F760_INFLATION_EDGES = (0.3, 0.6)


def f760_inflation(ndvi, inflation: dict | None, chi2=None):
    """The F760 sd factor (array like ``ndvi``) of each pixel from a guide's
    ``info["f760_sd_inflation"]`` (ones where the guide has none).

    The factors (one per NDVI class, ``ndvi_edges``) are for pixels the model does not fit
    as it fits its own draws: a pixel whose fit chi-square ``chi2`` (like ``ndvi``; the
    guide's posterior mean, :func:`fit_chi2`) is at most ``inflation["chi2_min"]`` (the
    0.99 quantile on the model's own simulations) keeps factor 1, the guide being
    calibrated there (simulation-based calibration on the prior). Without ``chi2`` every
    pixel gets its class's factor (conservative)."""
    if not inflation:
        return jnp.ones_like(jnp.asarray(ndvi, jnp.float32))
    edges = jnp.asarray(inflation["ndvi_edges"], jnp.float32)
    cls = jnp.searchsorted(edges, jnp.asarray(ndvi, jnp.float32), side="right")
    f = jnp.asarray(inflation["factors"], jnp.float32)[cls]
    if chi2 is not None and inflation.get("chi2_min") is not None:
        f = jnp.where(jnp.asarray(chi2) > inflation["chi2_min"], f, 1.0)
    return f


def inflate_f760(q: GuideOutput, model: SifModel, factor, red_factor=None) -> GuideOutput:
    """The guide's output with each pixel's F760 coordinate's posterior sd (and its
    coupling to the shared latents) scaled by ``factor`` (..., P), and the red peak's
    coordinate's by ``red_factor`` where given (two-peak windows): the means and the
    other coordinates unchanged; their correlations with them kept."""
    k = model.fm.n_basis
    rows = [(k, factor)] + ([(k + 1, red_factor)] if red_factor is not None
                            and model.has_red else [])
    tril, coupling = q.local_tril, q.coupling
    for i, fac in rows:
        f = jnp.asarray(fac, tril.dtype)[..., None]
        tril = tril.at[..., i, :].multiply(f)
        coupling = coupling.at[..., i, :].multiply(f)
    return GuideOutput(q.shared_loc, q.shared_tril, q.local_loc, tril, coupling)


def calibrate(q: GuideOutput, model: SifModel, info: dict, ndvi, chi2=None) -> GuideOutput:
    """The guide's output with the sd factors of its ``info`` applied
    (``f760_sd_inflation``, and ``f687_sd_inflation`` on the red peak's coordinate where
    the guide has it; :func:`f760_inflation`, :func:`inflate_f760`)."""
    red = info.get("f687_sd_inflation")
    return inflate_f760(q, model, f760_inflation(ndvi, info.get("f760_sd_inflation"), chi2),
                        f760_inflation(ndvi, red, chi2) if red else None)
