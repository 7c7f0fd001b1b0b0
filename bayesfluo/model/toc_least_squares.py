"""Weighted linear least squares of top-of-canopy scans.

A tower's model is linear in what a scan says: ``L = E/pi (B c) + A_far s_far + A_red
s_red`` per band, with ``B`` the reflectance's B-spline basis at the band centres, ``c``
its coefficients and ``s`` the two SIF peaks' shapes (:func:`bayesfluo.physics.surface.
sif_spectrum`). Its weighted least-squares solution, without bounds or priors, starts a
scan's mode search (:func:`bayesfluo.model.laplace.toc_start`) and is a tower guide's
input (:func:`bayesfluo.inference.guide.tower.linear_sif`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from bayesfluo.model.sif_model import SifModel
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["scan_least_squares", "sif_shapes"]


def sif_shapes(model: SifModel, wavelength_nm: ArrayLike) -> jax.Array:
    """The model's SIF peak shapes at ``wavelength_nm`` (..., S): far-red, then red where
    the window has the O2-B band; each 1 at its peak's reference wavelength's scale
    (:func:`~bayesfluo.physics.surface.sif_spectrum` with amplitude 1)."""
    c = jnp.asarray(wavelength_nm, jnp.float32)
    shapes = [sif_spectrum(c, SifParams(0.0, 1.0))]
    if model.has_red:
        shapes.append(sif_spectrum(c, SifParams(1.0, 0.0)))
    return jnp.stack(shapes, -1)


def scan_least_squares(model: SifModel, radiance: ArrayLike, e: ArrayLike,
                       weights: ArrayLike, *, refine_steps: int = 1
                       ) -> tuple[jax.Array, jax.Array]:
    """Weighted least squares of scans against ``L = e (B c) + s A``.

    Parameters
    ----------
    model : SifModel
        A top-of-canopy model (its basis and SIF shapes on its band grid).
    radiance : array_like (..., B)
        Upwelling radiance, mW m-2 sr-1 nm-1, on the model's bands.
    e : array_like (..., B)
        ``E/pi``, the measured irradiance over pi (mW m-2 sr-1 nm-1).
    weights : array_like (..., B)
        Inverse noise variance of each band, (mW m-2 sr-1 nm-1)^-2.
    refine_steps : int
        Steps of iterative refinement: the residual is computed band by band (where
        float32 is accurate) and its correction solved with the same normal equations.
        The normal equations of the nearly collinear B-spline columns lose digits in
        float32: without a step the fitted radiance of a scan can differ from the exact
        (float64) solution's by 2 noise sd RMS; one step leaves a few hundredths
        (``tests/test_toc_least_squares.py``).

    Returns
    -------
    theta : jax.Array (..., K + S)
        The reflectance coefficients ``c`` (K) and SIF peak amplitudes ``A`` (S: far-red,
        red), mW m-2 sr-1 nm-1.
    cov : jax.Array (..., K + S, K + S)
        Their covariance (the inverse of the weighted normal equations).

    Notes
    -----
    The columns are scaled to unit norm and a ridge of 1e-6 keeps float32 solvable. Each
    block of the normal equations is one matrix product of per-band weights with a fixed
    (B, .) table (batched small products are several times slower on a CPU).
    """
    rad = jnp.asarray(radiance, jnp.float32)
    e = jnp.asarray(e, jnp.float32)
    w = jnp.asarray(weights, jnp.float32)
    s = sif_shapes(model, model.fm.band_centre_nm)                          # (B, S)
    basis = model.fm.basis_band[0]                                           # (B, K)
    lead = e.shape[:-1]

    def gram_of(v, p, q):  # sum_b v_b p_bi q_bj -> (..., I, J)
        table = (p[:, :, None] * q[:, None, :]).reshape(p.shape[0], -1)
        return (v.reshape(-1, v.shape[-1]) @ table).reshape(lead + (p.shape[1], q.shape[1]))

    we = w * e
    g_rr = gram_of(we * e, basis, basis)
    g_rs = gram_of(we, basis, s)
    g_ss = gram_of(w, s, s)
    gram = jnp.concatenate([jnp.concatenate([g_rr, g_rs], -1),
                            jnp.concatenate([jnp.swapaxes(g_rs, -1, -2), g_ss], -1)], -2)
    rhs = jnp.concatenate([(we * rad) @ basis, (w * rad) @ s], -1)[..., None]  # (..., D, 1)
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(gram, axis1=-2, axis2=-1), 1e-30))  # scaling
    g = gram / (d[..., :, None] * d[..., None, :]) + 1e-6 * jnp.eye(gram.shape[-1])
    cov = jnp.linalg.inv(g) / (d[..., :, None] * d[..., None, :])
    theta = (cov @ rhs)[..., 0]
    k = basis.shape[1]
    for _ in range(refine_steps):
        resid = rad - e * (theta[..., :k] @ basis.T) - theta[..., k:] @ s.T   # (..., B)
        grad = jnp.concatenate([(w * e * resid) @ basis, (w * resid) @ s], -1)
        theta = theta + (cov @ grad[..., None])[..., 0]
    return theta, cov
