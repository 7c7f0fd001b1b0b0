"""The probabilistic model: priors on surface, atmosphere and sensor, and the likelihood.

One call of :func:`sif_model` describes one *patch*: ``P`` neighbouring pixels that share
an atmosphere and a sensor state, observed through the instrument's noise. Latents:

per pixel (plate ``pixel``)
    ``reflectance_z`` (K): non-centred B-spline coefficients of the reflectance,
    ``coeffs = sigmoid(mu + L z)`` with ``L`` the Cholesky factor of a squared-exponential
    covariance over the knot positions (length ``reflectance_length_nm``). The sigmoid
    keeps every coefficient, hence (convex hull of B-splines) the reflectance, in [0, 1];
    the correlation keeps it smooth.
    ``sif_far_red`` (and ``sif_red`` where the window has the O2-B band): SIF peak
    amplitude, ``scale(NDVI) * HalfNormal(1)``. The scale falls from ``sif_scale`` to
    ``sif_scale_bare`` where NDVI is low, the Bayesian form of the SFMNN constraint "no
    SIF where there is no vegetation".

per patch
    ``surface_pressure`` (hPa): ``p0 + pressure_sd * z``, p0 the standard pressure at the
    surface altitude; ``aot550``: log-normal around ``aot550_prior``; ``diffuse_path``:
    ``1 + lognormal``.

per patch (or scene) sensor
    ``spectral_shift`` (nm): ``shift_sd * z``; ``fwhm_scale``: ``1 + fwhm_sd * z``.

Which atmospheric and sensor latents are free is the configuration
(:class:`ModelConfig`); fixed ones take the value given in ``fixed``. Every sampled site
is standard normal or half normal before scaling (order one, for NUTS).

Likelihood: ``radiance ~ Normal(L(theta), sqrt(a L + b))`` per band, masked by the pixel
mask; ``L`` is :func:`bayesfluo.physics.radiance_from_operator` through one
:func:`bayesfluo.physics.band_operator` per patch (the patch's mean geometry).

Deterministic sites: ``f760``, ``f687`` (B band windows), ``sif_peak``, ``reflectance760``.

For samplers: SIF amplitudes live in a softplus coordinate (:class:`SoftplusHalfNormal`),
and ``data["operator_expansion"]`` (:func:`operator_expansion`) may replace the exact
band operator by its second-order expansion in the shared latents.

External atmospheres: with ``data["external"]``
(:class:`bayesfluo.physics.external.ExternalModel`) the patch's atmosphere is a
transfer-function table; the latents ``table_tau_scale``, ``table_up_scale``,
``table_path_scale`` (priors near 1, :class:`~bayesfluo.physics.external.PerturbationPrior`)
replace ``surface_pressure``, ``aot550`` and ``diffuse_path``.

Top of canopy (FloX-like towers): with ``data["irradiance"]`` (P, B), the measured
downwelling irradiance of each pixel (for a tower: each time step) on the instrument's
bands, mW m-2 nm-1, the radiance is ``L = E/pi * R + F`` per band
(:func:`toc_operator`, the operator of :func:`bayesfluo.baselines.pixels.measured_operator`:
a few metres of air between canopy and sensor are neglected, as FloX processing chains
do, and there are no atmospheric or sensor latents: ``cfg.free`` must be empty). The
reflectance and SIF priors are those above (the same logit-normal smooth reflectance, the
same NDVI-dependent half-normal SIF scale, ``sif_scale`` 2 mW m-2 sr-1 nm-1 for
vegetation: top-of-canopy F760 of crops and forests lies within 0-4). The noise is the
instrument's, ``a L + b``, plus the measured irradiance's own noise carried through the
model: ``E_meas = E + e`` with ``var(e / pi) = a_E E/pi + b_E`` adds ``R^2 var(e/pi)`` to
each band's variance (``R`` the reflectance at the band centre; ``a_E``, ``b_E`` are
``data["irradiance_noise_a"/"_b"]``, default the radiance's, the same relative noise on
both channels as :func:`bayesfluo.simulate.simulate_scene` simulates). To first order in
``e`` this is the exact likelihood of the radiance given the measured irradiance.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints
from numpyro.distributions.transforms import (
    AffineTransform,
    ComposeTransform,
    SoftplusTransform,
    biject_to,
)

from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    band_operator,
    radiance_from_operator,
    standard_pressure_hpa,
)
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.surface import SifParams, bspline_basis, sif_spectrum

__all__ = ["ModelConfig", "sif_model", "scene_model", "reflectance_weights",
           "shared_parameters", "OperatorExpansion",
           "operator_expansion", "expand_operator", "SoftplusHalfNormal", "sif_scale",
           "start_values",
           "patch_geometry", "prior_pressure", "ATMOSPHERE_LATENTS", "SENSOR_LATENTS",
           "toc_operator", "check_toc_data", "toc_initial_values"]

ATMOSPHERE_LATENTS = ("surface_pressure", "aot550", "diffuse_path")
SENSOR_LATENTS = ("spectral_shift", "fwhm_scale")


@dataclass(frozen=True)
class ModelConfig:
    """Priors and the choice of free latents (defaults suit HyPlant FLUO).

    Attributes
    ----------
    free : tuple of str
        Atmospheric and sensor latents that are sampled; the others are fixed to ``fixed``.
    fixed : dict
        Values of the fixed latents (``angstrom`` is always fixed).
    reflectance_mean, reflectance_logit_sd, reflectance_length_nm : float
        Prior of the reflectance: logit-normal around the mean, smooth over the length.
    sif_scale, sif_scale_bare : float
        Half-normal scale of F760 (mW m-2 sr-1 nm-1) for vegetation and for bare ground.
    ndvi_vegetated, ndvi_width : float
        NDVI where the scale is half way between, and the width of the transition.
    sif_red_ratio : float
        Scale of the red-peak amplitude relative to the far-red one.
    pressure_sd, aot550_prior, aot550_log_sd, diffuse_path_prior, diffuse_path_log_sd,
    shift_sd, fwhm_sd : float
        Atmospheric and sensor priors (hPa, 1, 1, 1, 1, nm, 1).
    """

    free: tuple[str, ...] = ("surface_pressure", "aot550", "spectral_shift")
    fixed: dict = field(default_factory=lambda: {"aot550": 0.12, "diffuse_path": 1.5,
                                                 "angstrom": 1.3, "spectral_shift": 0.0,
                                                 "fwhm_scale": 1.0})
    reflectance_mean: float = 0.3
    reflectance_logit_sd: float = 1.5
    reflectance_length_nm: float = 20.0
    sif_scale: float = 2.0
    sif_scale_bare: float = 0.05
    ndvi_vegetated: float = 0.35
    ndvi_width: float = 0.05
    sif_red_ratio: float = 0.5
    pressure_sd: float = 5.0
    aot550_prior: float = 0.12
    aot550_log_sd: float = 0.4
    diffuse_path_prior: float = 0.5
    diffuse_path_log_sd: float = 0.3
    shift_sd: float = 0.05
    fwhm_sd: float = 0.03

    def __post_init__(self):
        known = set(ATMOSPHERE_LATENTS) | set(SENSOR_LATENTS)
        bad = [n for n in self.free if n not in known]
        if bad:
            raise ValueError(f"unknown free latent(s) {bad}; choose from {sorted(known)}")

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


SIF_KNEE = 0.1
"""Scale (in units of the half-normal) below which the unconstrained coordinate of a SIF
amplitude turns from linear to logarithmic (see :class:`SoftplusHalfNormal`)."""


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


def _reflectance_prior(fm: ForwardModel, cfg: ModelConfig):
    knots = np.asarray(fm.knots_nm, dtype=np.float64)
    k = fm.n_basis
    # Greville abscissae: where each cubic B-spline coefficient "lives"
    centres = np.array([knots[i + 1:i + 4].mean() for i in range(k)])
    d = centres[:, None] - centres[None, :]
    cov = cfg.reflectance_logit_sd**2 * np.exp(-0.5 * (d / cfg.reflectance_length_nm) ** 2)
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(k))
    mu = np.log(cfg.reflectance_mean / (1 - cfg.reflectance_mean))
    return jnp.asarray(mu, jnp.float32), jnp.asarray(chol, jnp.float32)


def sif_scale(ndvi, cfg: ModelConfig):
    """Half-normal scale of F760 given NDVI (mW m-2 sr-1 nm-1)."""
    veg = jax.nn.sigmoid((ndvi - cfg.ndvi_vegetated) / cfg.ndvi_width)
    return cfg.sif_scale_bare + (cfg.sif_scale - cfg.sif_scale_bare) * veg


def shared_parameters(cfg: ModelConfig, data: dict, z: dict
                      ) -> tuple[AtmosphereParams, SensorParams, dict]:
    """Atmosphere and sensor of a patch from the standard-normal coordinates ``z`` of its
    free latents (the fixed ones from ``cfg.fixed``; a fixed surface pressure missing there
    is ``data["surface_pressure0"]``): ``(atmosphere, sensor, values)``."""
    p0 = data["surface_pressure0"]
    transforms = {
        "surface_pressure": lambda v: p0 + cfg.pressure_sd * v,
        "aot550": lambda v: cfg.aot550_prior * jnp.exp(cfg.aot550_log_sd * v),
        "diffuse_path": lambda v: 1.0 + cfg.diffuse_path_prior
        * jnp.exp(cfg.diffuse_path_log_sd * v),
        "spectral_shift": lambda v: cfg.shift_sd * v,
        "fwhm_scale": lambda v: 1.0 + cfg.fwhm_sd * v,
    }
    # a fixed surface pressure not given in cfg.fixed is the prior mean
    fixed = {"surface_pressure": p0, **cfg.fixed}
    vals = {n: (t(z[n]) if n in cfg.free else jnp.asarray(fixed[n], jnp.float32))
            for n, t in transforms.items()}
    atm = AtmosphereParams(vals["surface_pressure"], vals["aot550"],
                           jnp.asarray(cfg.fixed["angstrom"], jnp.float32),
                           vals["diffuse_path"])
    return atm, SensorParams(vals["spectral_shift"], vals["fwhm_scale"]), vals


class OperatorExpansion(NamedTuple):
    """Second-order Taylor expansion of the patch's :class:`BandOperator` in the
    standard-normal coordinates of the free shared latents (in ``cfg.free`` order)
    about ``z0``: ``op(z) = value + jac . d + d . hess . d / 2``, ``d = z - z0``."""

    z0: jax.Array
    value: BandOperator
    jac: BandOperator
    hess: BandOperator


def operator_expansion(fm: ForwardModel, cfg: ModelConfig, data: dict, z0) -> OperatorExpansion:
    """The :class:`OperatorExpansion` of a patch about ``z0`` (one value per free latent).

    NUTS on a patch evaluates the operator (fine-grid atmosphere and sensor response, most
    of the cost of a gradient) thousands of times within a small posterior region of the
    few shared latents; the expansion replaces it there at a tiny fraction of the cost.
    Its error is third order in the distance from ``z0``; :mod:`bayesfluo.nuts` measures
    it at the posterior draws.
    """
    z0 = jnp.asarray(z0, jnp.float32)

    def op_of(zv):
        atm, sens, _ = shared_parameters(cfg, data, dict(zip(cfg.free, zv, strict=True)))
        return band_operator(fm, atm, data["geometry"], sens)

    return OperatorExpansion(z0, op_of(z0), jax.jacfwd(op_of)(z0),
                             jax.jacfwd(jax.jacfwd(op_of))(z0))


def expand_operator(exp: OperatorExpansion, z) -> BandOperator:
    """Evaluate an :class:`OperatorExpansion` at ``z``."""
    d = jnp.asarray(z) - exp.z0
    return jax.tree.map(lambda v, j, h: v + j @ d + 0.5 * (h @ d) @ d, exp.value, exp.jac,
                        exp.hess)


def sif_model(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool = False):
    """NumPyro program of one patch (see the module docstring).

    Parameters
    ----------
    fm : ForwardModel
    cfg : ModelConfig
    data : dict
        ``radiance`` (P, B) or None (prior predictive), ``mask`` (P,), ``ndvi`` (P,),
        ``geometry`` (Geometry of scalars), ``noise_a``, ``noise_b``,
        ``surface_pressure0`` (hPa, the prior mean); optionally ``operator_expansion``
        (:class:`OperatorExpansion`), used in place of the exact band operator;
        optionally ``external`` (:class:`bayesfluo.physics.external.ExternalModel`): an
        external transfer-function table with priors on its perturbations, used in place
        of the built-in atmosphere (whose latents are then not sampled).
        Top of canopy: ``irradiance`` (P, B), measured downwelling irradiance,
        mW m-2 nm-1, and optionally ``irradiance_noise_a``, ``irradiance_noise_b``
        (noise variance of ``E/pi``, default ``noise_a``, ``noise_b``); ``geometry`` and
        ``surface_pressure0`` are then not used (see the module docstring).
    has_red : bool
        Whether the window has the O2-B band (a red SIF peak is then sampled).
    """
    ndvi = data["ndvi"]
    n_pix = ndvi.shape[0]
    if data.get("irradiance") is not None:
        _toc_model(fm, cfg, data, has_red)
        return
    geom = data["geometry"]
    if data.get("external") is not None:
        op = _external_operator(fm, cfg, data["external"])
    else:
        z = {n: numpyro.sample(f"{n}_z", dist.Normal(0.0, 1.0)) for n in cfg.free}
        atm, sens, vals = shared_parameters(cfg, data, z)
        for n in cfg.free:
            numpyro.deterministic(n, vals[n])
        expansion = data.get("operator_expansion")
        if expansion is None:
            op = band_operator(fm, atm, geom, sens)
        else:
            op = expand_operator(expansion, jnp.stack([z[n] for n in cfg.free]))

    coeffs, amp_red, amp_far = _surface_sites(fm, cfg, ndvi, has_red, n_pix, dim=-1)
    with numpyro.plate("pixel", n_pix):
        pred = jax.vmap(lambda c, a, f: radiance_from_operator(fm, op, c, SifParams(a, f)))(
            coeffs, amp_red, amp_far)
        _likelihood(pred, data.get("radiance"), data["mask"],
                    data["noise_a"], data["noise_b"])


def toc_operator(irradiance) -> BandOperator:
    """Band operators (leading dimensions of ``irradiance``) of a top-of-canopy
    measurement: ``L = E/pi * R + F`` per band, ``E`` the measured irradiance
    (mW m-2 nm-1): no path radiance, no multiple-scattering term, the reflectance and
    SIF at the band centre (as :func:`bayesfluo.baselines.pixels.measured_operator`)."""
    e = jnp.asarray(irradiance, jnp.float32) / jnp.pi
    z = jnp.zeros_like(e)
    return BandOperator(path=z, reflected=jnp.stack([e, z, z], -2),
                        emitted=jnp.stack([jnp.ones_like(e), z, z], -2), rho_dd=z)


def check_toc_data(fm: ForwardModel, cfg: ModelConfig, data: dict) -> None:
    """Raise ValueError naming the problem if ``data`` cannot be a top-of-canopy patch
    (shapes of ``irradiance`` and ``radiance``, free shared latents; with concrete
    arrays also non-finite or non-positive irradiance of unmasked pixels)."""
    irr = data["irradiance"]
    n_pix = data["ndvi"].shape[0]
    if cfg.free:
        raise ValueError(f"a top-of-canopy patch (measured irradiance) has no atmospheric or "
                         f"sensor latents; got free={cfg.free}: use "
                         "ModelConfig(free=())")
    if data.get("external") is not None:
        raise ValueError("give either a measured irradiance or an external atmosphere, "
                         "not both")
    want = (n_pix, fm.n_bands)
    if tuple(irr.shape) != want:
        raise ValueError(f"irradiance has shape {tuple(irr.shape)}, expected (pixels, bands)"
                         f" = {want} (mW m-2 nm-1 on the {fm.instrument} bands)")
    rad = data.get("radiance")
    if rad is not None and tuple(rad.shape) != want:
        raise ValueError(f"radiance has shape {tuple(rad.shape)}, expected {want}")
    if not isinstance(irr, jax.core.Tracer):
        e = np.asarray(irr)
        use = np.asarray(data["mask"]) > 0
        bad = use & ~np.all(np.isfinite(e) & (e > 0), axis=-1)
        if bad.any():
            raise ValueError(f"irradiance is not finite and positive in {int(bad.sum())} "
                             "unmasked pixel(s)/time step(s): mask them (data['mask'] = 0)")


def toc_initial_values(fm: ForwardModel, cfg: ModelConfig, data: dict,
                       has_red: bool) -> dict:
    """A starting point for a mode search of a top-of-canopy patch: per pixel, weighted
    linear least squares of ``L / (E/pi) = R + F / (E/pi)`` (the model is linear in the
    reflectance at the band centres and in the SIF amplitudes), the reflectance turned
    into prior coordinates by a ridge fit (``z`` stays of order one where the fitted
    coefficients are rougher than the prior allows). Returns the model's sample sites."""
    e = np.asarray(data["irradiance"], np.float64) / np.pi               # (P, B)
    y = np.asarray(data["radiance"], np.float64) / e
    b0 = np.asarray(fm.basis_band[0], np.float64)                       # (B, K)
    c = fm.band_centre_nm
    shapes = [np.asarray(sif_spectrum(c, SifParams(0.0, 1.0)), np.float64)]
    if has_red:
        shapes.append(np.asarray(sif_spectrum(c, SifParams(1.0, 0.0)), np.float64))
    n_pix, k = e.shape[0], fm.n_basis
    design = np.concatenate([np.broadcast_to(b0, (n_pix,) + b0.shape),
                             np.stack([sh[None] / e for sh in shapes], -1)], -1)
    w = e**2 / (float(data["noise_a"]) * np.maximum(y * e, 1e-3) + float(data["noise_b"]))
    a = np.einsum("pbi,pb,pbj->pij", design, w, design)
    a += 1e-8 * np.trace(a, axis1=1, axis2=2)[:, None, None] * np.eye(a.shape[-1])
    theta = np.linalg.solve(a, np.einsum("pbi,pb,pb->pi", design, w, y)[..., None])[..., 0]
    coeffs = np.clip(theta[:, :k], 0.01, 0.99)
    mu, chol = (np.asarray(v, np.float64) for v in _reflectance_prior(fm, cfg))
    resid = np.log(coeffs / (1 - coeffs)) - mu
    # ridge: z = L^T (L L^T + eps)^-1 r, row by row
    z = resid @ np.linalg.solve(chol @ chol.T + 0.01 * np.eye(k), chol)
    return start_values(cfg, data, z, theta[:, k:], has_red)


def start_values(cfg: ModelConfig, data: dict, z, amplitudes, has_red: bool) -> dict:
    """Latents of a mode search's start from per-pixel estimates: reflectance prior
    coordinates ``z`` (P, K) and SIF peak amplitudes (P, 1 or 2: far-red, red) in
    mW m-2 sr-1 nm-1, turned into the model's raw amplitude coordinates (clipped to
    0.1-3 prior scales)."""
    shape760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
    scale = np.asarray(sif_scale(data["ndvi"], cfg), np.float64) / shape760
    out = {"reflectance_z": jnp.asarray(z, jnp.float32),
           "sif_far_red_raw": jnp.asarray(np.clip(amplitudes[:, 0] / scale, 0.1, 3.0),
                                          jnp.float32)}
    if has_red:
        out["sif_red_raw"] = jnp.asarray(
            np.clip(amplitudes[:, 1] / (cfg.sif_red_ratio * scale), 0.1, 3.0), jnp.float32)
    return out


def _toc_model(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool) -> None:
    """The top-of-canopy patch: per-pixel operators from the measured irradiance."""
    check_toc_data(fm, cfg, data)
    n_pix = data["ndvi"].shape[0]
    mask = data["mask"]
    # masked pixels may carry any irradiance: keep their operator finite
    irr = jnp.where((mask > 0)[:, None], jnp.asarray(data["irradiance"], jnp.float32), 1.0)
    e = irr / jnp.pi
    coeffs, amp_red, amp_far = _surface_sites(fm, cfg, data["ndvi"], has_red, n_pix, dim=-1)
    with numpyro.plate("pixel", n_pix):
        # radiance_from_operator(fm, toc_operator(irr), ...) without its zero terms (path,
        # higher moments, multiple scattering): a third of the cost
        r0 = coeffs @ fm.basis_band[0].T  # reflectance at the band centres (P, B)
        sif = sif_spectrum(fm.band_centre_nm, SifParams(amp_red[:, None], amp_far[:, None]))
        pred = e * r0 + sif
        ea = data.get("irradiance_noise_a", data["noise_a"])
        eb = data.get("irradiance_noise_b", data["noise_b"])
        extra = r0**2 * (ea * e + eb)
        _likelihood(pred, data.get("radiance"), mask, data["noise_a"], data["noise_b"],
                    extra)


def _external_operator(fm: ForwardModel, cfg: ModelConfig, external) -> BandOperator:
    """Band operator of a patch through an external transfer-function table
    (``data["external"]``, a :class:`bayesfluo.physics.external.ExternalModel`): its
    perturbations are sampled (:func:`~bayesfluo.physics.external.sample_perturbation`)
    in place of the built-in atmosphere's latents; the sensor latents of ``cfg.free``
    stay as they are."""
    from bayesfluo.physics.external import band_operator_external, sample_perturbation

    # the built-in atmosphere's values are unused here: placeholders where cfg lacks them
    fixed = {"surface_pressure": 1013.25, "aot550": 0.12, "diffuse_path": 1.5,
             "angstrom": 1.3, "spectral_shift": 0.0, "fwhm_scale": 1.0, **cfg.fixed}
    cfg_s = cfg.replace(free=tuple(n for n in cfg.free if n in SENSOR_LATENTS), fixed=fixed)
    z = {n: numpyro.sample(f"{n}_z", dist.Normal(0.0, 1.0)) for n in cfg_s.free}
    _, sens, vals = shared_parameters(cfg_s, {"surface_pressure0": jnp.float32(1013.25)}, z)
    for n in cfg_s.free:
        numpyro.deterministic(n, vals[n])
    pert = sample_perturbation(external)
    return band_operator_external(fm, external.atmosphere, sens, pert)


def _surface_sites(fm: ForwardModel, cfg: ModelConfig, ndvi, has_red: bool, n_pix: int,
                   dim: int):
    """Sample the pixel-level latents (inside the caller's other plates) and record the
    deterministic summaries: ``(coeffs, amp_red, amp_far)``."""
    mu, chol = _reflectance_prior(fm, cfg)
    shape760 = sif_spectrum(760.0, SifParams(0.0, 1.0))
    with numpyro.plate("pixel", n_pix, dim=dim):
        z = numpyro.sample("reflectance_z", dist.Normal(0.0, 1.0).expand([fm.n_basis])
                           .to_event(1))
        coeffs = numpyro.deterministic("reflectance_coeffs", jax.nn.sigmoid(mu + z @ chol.T))
        scale = sif_scale(ndvi, cfg) / shape760
        far = numpyro.sample("sif_far_red_raw", SoftplusHalfNormal(1.0))
        amp_far = numpyro.deterministic("sif_far_red", scale * far)
        if has_red:
            red = numpyro.sample("sif_red_raw", SoftplusHalfNormal(1.0))
            amp_red = numpyro.deterministic("sif_red", cfg.sif_red_ratio * scale * red)
        else:
            amp_red = jnp.zeros_like(amp_far)
        sif = SifParams(amp_red, amp_far)
        numpyro.deterministic("f760", sif_spectrum(760.0, sif))
        if has_red:
            numpyro.deterministic("f687", sif_spectrum(687.0, sif))
        numpyro.deterministic("sif_peak", sif_spectrum(sif.centre_far_red, sif))
        numpyro.deterministic("reflectance760", coeffs @ reflectance_weights(fm, 760.0))
    return coeffs, amp_red, amp_far


def reflectance_weights(fm: ForwardModel, wavelength_nm: float) -> jax.Array:
    """B-spline weights of the reflectance at one wavelength (``coeffs @ w``)."""
    return jnp.asarray(bspline_basis(np.array([wavelength_nm]),
                                     np.asarray(fm.knots_nm, np.float64))[0], jnp.float32)


def _likelihood(pred, obs, mask, noise_a, noise_b, extra_var=0.0):
    """Heteroscedastic Gaussian noise ``var = a L + b (+ extra_var)`` per band, masked per
    pixel."""
    sd = jnp.sqrt(noise_a * jnp.maximum(pred, 0.0) + noise_b + extra_var)
    numpyro.sample("radiance", dist.Normal(pred, sd).to_event(1).mask(mask > 0), obs=obs)


def scene_model(fm: ForwardModel, cfg: ModelConfig, data: dict, has_red: bool = False,
                subsample_size: int | None = None):
    """NumPyro program of many patches at once, for SVI (the same priors and likelihood
    as :func:`sif_model`, one independent atmosphere and sensor state per patch).

    Parameters
    ----------
    data : dict
        As :func:`sif_model` with a leading patch dimension ``N``: ``radiance`` (N, P, B)
        or None, ``mask`` and ``ndvi`` (N, P), ``geometry`` (Geometry of (N,) arrays),
        ``noise_a``, ``noise_b``, ``surface_pressure0`` (N,).
        Optionally ``operator``: a :class:`BandOperator` per patch (leading dim N),
        used instead of computing it; the caller conditions the shared latents to the
        values it was computed for (the training simulator does).
    subsample_size : int, optional
        Patches per minibatch: the ``patch`` plate draws that many at random and scales
        the log density by ``N / subsample_size`` (an unbiased minibatch ELBO).
    """
    n_patch, n_pix = data["ndvi"].shape
    with numpyro.plate("patch", n_patch, subsample_size=subsample_size, dim=-2) as idx:
        d = {k: v[idx] for k, v in data.items() if k in _PATCH_ARRAYS and v is not None}
        geom = jax.tree.map(lambda v: v[idx], data["geometry"])
        z = {n: numpyro.sample(f"{n}_z", dist.Normal(0.0, 1.0)) for n in cfg.free}
        z1 = {n: v[..., 0] for n, v in z.items()}  # (batch,)
        batch = d["ndvi"].shape[0]
        atm, sens, vals = shared_parameters(cfg, {"surface_pressure0": d["surface_pressure0"]},
                                            z1)
        for n in cfg.free:
            numpyro.deterministic(n, vals[n][..., None])
        if "operator" in data:  # precomputed for the conditioned shared latents
            op = jax.tree.map(lambda v: v[idx], data["operator"])
        else:
            full = lambda t: jax.tree.map(lambda v: jnp.broadcast_to(v, (batch,)), t)  # noqa
            op = jax.vmap(lambda a, g, s: band_operator(fm, a, g, s))(full(atm), geom,
                                                                      full(sens))
        coeffs, amp_red, amp_far = _surface_sites(fm, cfg, d["ndvi"], has_red, n_pix, dim=-1)
        pred = jax.vmap(jax.vmap(
            lambda o, c, a, f: radiance_from_operator(fm, o, c, SifParams(a, f)),
            in_axes=(None, 0, 0, 0)))(op, coeffs, amp_red, amp_far)
        with numpyro.plate("pixel", n_pix, dim=-1):
            _likelihood(pred, d.get("radiance"), d["mask"], d["noise_a"][:, None, None],
                        d["noise_b"][:, None, None])


_PATCH_ARRAYS = ("radiance", "mask", "ndvi", "noise_a", "noise_b", "surface_pressure0")


def patch_geometry(sza, vza, raa, surface_altitude, sensor_altitude, sun_distance=1.0
                   ) -> Geometry:
    """The mean geometry of a patch as a :class:`Geometry` of float32 scalars."""
    m = lambda v: jnp.asarray(np.mean(np.asarray(v, dtype=np.float64)), jnp.float32)  # noqa
    return Geometry(m(sza), m(vza), m(raa), m(surface_altitude), m(sensor_altitude),
                    m(sun_distance))


def prior_pressure(surface_altitude_m) -> jnp.ndarray:
    """Prior mean of the surface pressure: the standard atmosphere at that altitude (hPa)."""
    return standard_pressure_hpa(jnp.asarray(np.mean(surface_altitude_m), jnp.float32))
