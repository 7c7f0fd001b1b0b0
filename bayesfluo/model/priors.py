"""Priors of the model and their transforms: every latent is sampled as a standard normal
(or a half-normal in a softplus coordinate) and mapped to its physical value here, and only
here.

* reflectance: ``coeffs = sigmoid(mu + L z)``, ``z ~ N(0, I)``, ``L`` the Cholesky factor of a
  squared-exponential covariance over the B-spline knot positions;
* SIF amplitudes: ``scale(NDVI) * HalfNormal(1)``, sampled in the coordinate
  ``x = knee * softplus(v / knee)`` (:class:`SoftplusHalfNormal`);
* shared latents of a patch (:func:`shared_values`): affine or log-normal in their
  standard-normal coordinate.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    SoftplusTransform,
    biject_to,
)

from bayesfluo.model.config import ModelConfig
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.surface import SifParams, bspline_basis, sif_spectrum

__all__ = ["SIF_KNEE", "SoftplusHalfNormal", "knee_softplus", "inverse_knee_softplus",
           "reflectance_prior", "reflectance_weights", "sif_scale", "shared_values",
           "SHAPE760"]

SIF_KNEE = 0.1
"""Scale (in units of the half-normal) below which the unconstrained coordinate of a SIF
amplitude turns from linear to logarithmic (see :class:`SoftplusHalfNormal`)."""

#: Value at 760 nm of the far-red SIF shape of unit amplitude (F760 per unit amplitude)
SHAPE760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))


class _KneePositive(constraints._SoftplusPositive):
    """Positive reals, mapped to the real line by ``x = knee * softplus(v / knee)``."""


@biject_to.register(_KneePositive)
def _knee_transform(constraint):
    return ComposeTransform([AffineTransform(0.0, 1.0 / SIF_KNEE), SoftplusTransform(),
                             AffineTransform(0.0, SIF_KNEE)])


class SoftplusHalfNormal(dist.HalfNormal):
    """Half-normal whose unconstrained coordinate is ``v`` with
    ``x = knee * softplus(v / knee)``: the identity above the knee, logarithmic below.

    NUTS samples SIF amplitudes in this coordinate. With the usual logarithm the
    likelihood's curvature grows as ``x**2``: a pixel whose posterior spans 0.1 to 1
    varies its curvature a hundredfold, and NUTS's step size must suit the worst of it.
    Here the curvature is constant above the knee and bounded below it.
    """

    support = _KneePositive()


def knee_softplus(v):
    """The SIF amplitude (in prior scales) of the unconstrained coordinate ``v`` of
    :class:`SoftplusHalfNormal`. ``v`` is floored at -8 (an amplitude of 2e-35): below,
    float32 softplus underflows to zero, outside the half-normal's support."""
    return SIF_KNEE * jax.nn.softplus(jnp.maximum(v, -8.0) / SIF_KNEE)


def inverse_knee_softplus(x):
    """Inverse of :func:`knee_softplus` (``x > 0``, any array type)."""
    y = x / SIF_KNEE
    # log(expm1(y)) written to stay finite for large y
    return SIF_KNEE * (y + jnp.log(-jnp.expm1(-jnp.maximum(y, 1e-30))))


def reflectance_prior(fm, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """``(mu, chol)`` of the logit-normal reflectance prior over the B-spline
    coefficients of ``fm`` (a :class:`~bayesfluo.physics.forward.ForwardModel`): the
    coefficients are ``sigmoid(mu + chol @ z)``, ``z ~ N(0, I)``."""
    knots = np.asarray(fm.knots_nm, dtype=np.float64)
    k = fm.n_basis
    # Greville abscissae: where each cubic B-spline coefficient "lives"
    centres = np.array([knots[i + 1:i + 4].mean() for i in range(k)])
    d = centres[:, None] - centres[None, :]
    cov = cfg.reflectance_logit_sd**2 * np.exp(-0.5 * (d / cfg.reflectance_length_nm) ** 2)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(k))
    mu = np.log(cfg.reflectance_mean / (1 - cfg.reflectance_mean))
    return jnp.asarray(mu, jnp.float32), jnp.asarray(chol, jnp.float32)


def reflectance_weights(fm, wavelength_nm: float) -> jax.Array:
    """B-spline weights of the reflectance at one wavelength (``coeffs @ w``)."""
    return jnp.asarray(bspline_basis(np.array([wavelength_nm]),
                                     np.asarray(fm.knots_nm, np.float64))[0], jnp.float32)


def sif_scale(ndvi, cfg: ModelConfig):
    """Half-normal scale of F760 given NDVI (mW m-2 sr-1 nm-1): it falls from
    ``sif_scale`` to ``sif_scale_bare`` where NDVI is low, the Bayesian form of "no SIF
    where there is no vegetation"."""
    veg = jax.nn.sigmoid((ndvi - cfg.ndvi_vegetated) / cfg.ndvi_width)
    return cfg.sif_scale_bare + (cfg.sif_scale - cfg.sif_scale_bare) * veg


def shared_values(cfg: ModelConfig, surface_pressure0, z: dict
                  ) -> tuple[AtmosphereParams, SensorParams, dict]:
    """Atmosphere and sensor of a patch from the standard-normal coordinates ``z`` of its
    free latents (``{name: value}``; the fixed ones from ``cfg.fixed``; a fixed surface
    pressure missing there is ``surface_pressure0``, hPa, the prior mean):
    ``(atmosphere, sensor, {name: physical value})``. Broadcasts over leading dims."""
    p0 = surface_pressure0
    transforms = {
        "surface_pressure": lambda v: p0 + cfg.pressure_sd * v,
        "aot550": lambda v: cfg.aot550_prior * jnp.exp(cfg.aot550_log_sd * v),
        "diffuse_path": lambda v: 1.0 + cfg.diffuse_path_prior
        * jnp.exp(cfg.diffuse_path_log_sd * v),
        "spectral_shift": lambda v: cfg.shift_sd * v,
        "fwhm_scale": lambda v: 1.0 + cfg.fwhm_sd * v,
    }
    fixed = {"surface_pressure": p0, **cfg.fixed}
    vals = {n: (t(z[n]) if n in cfg.free else jnp.asarray(fixed[n], jnp.float32))
            for n, t in transforms.items()}
    atm = AtmosphereParams(vals["surface_pressure"], vals["aot550"],
                           jnp.asarray(cfg.fixed["angstrom"], jnp.float32),
                           vals["diffuse_path"])
    return atm, SensorParams(vals["spectral_shift"], vals["fwhm_scale"]), vals
