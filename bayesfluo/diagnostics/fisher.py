"""Fisher information and the Cramer-Rao bounds of F760 (and F687) from the forward model
itself.

For one pixel with latent vector theta and band radiance ``L(theta)`` observed with
independent Gaussian noise of variance ``v_k = a L_k + b``
(:func:`bayesfluo.physics.sensor.noise_variance`), the Fisher information is
``I = J^T diag(1/v) J`` with ``J = dL/dtheta`` (the dependence of ``v`` on theta is
neglected, as in SCIENCE.md section 5). No unbiased estimator of F760 from that pixel has
a smaller standard deviation than ``sqrt((I^-1)_FF)``; of F687, a linear function
``g^T theta`` of the two SIF amplitudes, none smaller than ``sqrt(g^T I^-1 g)``. The
bound is computed in float64 from the model's own Jacobian (``jax.jacfwd``), for any
subset of free latents; the others are held at their values (known). The bounds hold
for unbiased estimators without a prior: a Bayesian posterior mean may err less where
its prior carries information (the reflectance prior's smoothness is what separates the
red SIF peak from the red edge, which a free spline could otherwise mimic).

Latent names (shared with the probabilistic model):

=====================  =======================================================
``reflectance``        all B-spline coefficients of the reflectance
``sif_far_red``        amplitude of the far-red SIF peak (F760 is proportional)
``sif_red``            amplitude of the red SIF peak
``surface_pressure``   hPa; sets the O2 column (one scale on the O2 optical depth)
``aot550``             aerosol optical thickness at 550 nm
``angstrom``           Angstrom exponent
``diffuse_path``       O2 path factor of diffuse light
``spectral_shift``     nm
``fwhm_scale``         response width factor
=====================  =======================================================
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.instruments import get_instrument
from bayesfluo.model import Patch, SifModel
from bayesfluo.model.priors import SHAPE760
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import (
    ForwardModel,
    Geometry,
    build_forward_model,
    radiance,
    standard_pressure_hpa,
)
from bayesfluo.physics.sensor import SensorParams, noise_variance
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["LATENTS", "fisher_information", "cramer_rao_f760", "patch_cramer_rao_f760",
           "toc_cramer_rao_f760", "f687_weights"]

LATENTS = ("reflectance", "sif_far_red", "sif_red", "surface_pressure", "aot550", "angstrom",
           "diffuse_path", "spectral_shift", "fwhm_scale")

_ATMOSPHERE = ("surface_pressure", "aot550", "angstrom", "diffuse_path")


def _unpack(model: ForwardModel, theta, base: dict):
    k = model.n_basis
    vals = dict(base)
    vals["reflectance"] = theta[:k]
    for i, name in enumerate(LATENTS[1:]):
        vals[name] = theta[k + i]
    sif = SifParams(vals["sif_red"], vals["sif_far_red"])
    atm = AtmosphereParams(vals["surface_pressure"], vals["aot550"], vals["angstrom"],
                           vals["diffuse_path"])
    sens = SensorParams(vals["spectral_shift"], vals["fwhm_scale"])
    return vals["reflectance"], sif, atm, sens


def fisher_information(model: ForwardModel, theta: np.ndarray, geom: Geometry,
                       noise_a: float, noise_b: float) -> tuple[np.ndarray, np.ndarray]:
    """Fisher information (n_theta, n_theta) of one pixel and its band radiance.

    ``theta`` is ``[reflectance coefficients (K), sif_far_red, sif_red, surface_pressure,
    aot550, angstrom, diffuse_path, spectral_shift, fwhm_scale]``.
    """
    with jax.enable_x64(True):
        th = jnp.asarray(theta, dtype=jnp.float64)
        g64 = Geometry(*(jnp.asarray(x, jnp.float64) for x in geom))

        def fwd(t):
            coef, sif, atm, sens = _unpack(model, t, {})
            return radiance(model, coef, sif, atm, g64, sens)

        jac = np.asarray(jax.jacfwd(fwd)(th), dtype=np.float64)
        lrad = fwd(th)
        var = np.asarray(noise_variance(lrad, noise_a, noise_b), np.float64)
    return jac.T @ (jac / var[:, None]), np.asarray(lrad, np.float64)


def cramer_rao_f760(instrument: str = "hyplant-fluo-o2a", *, altitude_m: float | None = None,
                    sza_deg: float = 30.0, snr: float | None = None, f760: float = 1.5,
                    reflectance: float = 0.4, read_noise_fraction: float = 0.0,
                    surface_altitude_m: float = 0.0, aot550: float = 0.1,
                    cases: dict[str, Sequence[str]] | None = None,
                    model: ForwardModel | None = None) -> dict[str, float]:
    """Smallest possible standard deviation of F760 (mW m-2 sr-1 nm-1) from one pixel.

    Defaults are the nominal conditions of SCIENCE.md section 5: F760 = 1.5, flat
    reflectance 0.4, sun zenith 30 deg, nadir view, noise variance proportional to signal
    with the instrument's signal-to-noise ratio at the continuum radiance of this pixel.

    Parameters
    ----------
    cases : dict, optional
        Name -> free latents (see module docstring). Default: ``"atmosphere known"``
        (reflectance, far-red SIF, spectral shift) and ``"atmosphere free"`` (those plus
        surface pressure, the O2 scale) and ``"atmosphere and aerosol free"`` (plus AOT and
        the diffuse-path factor).

    Returns
    -------
    dict
        Case name -> bound on the standard deviation of F760.
    """
    inst = get_instrument(instrument)
    model = model or build_forward_model(inst)
    alt = inst.altitude_m if altitude_m is None else altitude_m
    snr = inst.snr if snr is None else snr
    cases = cases or {
        "atmosphere known": ("reflectance", "sif_far_red", "spectral_shift"),
        "atmosphere free": ("reflectance", "sif_far_red", "spectral_shift", "surface_pressure"),
        "atmosphere and aerosol free": ("reflectance", "sif_far_red", "spectral_shift",
                                        "surface_pressure", "aot550", "diffuse_path"),
    }
    shape760 = SHAPE760
    k = model.n_basis
    p_s = float(standard_pressure_hpa(surface_altitude_m))
    theta = np.concatenate([np.full(k, reflectance),
                            [f760 / shape760, 0.0, p_s, aot550, 1.3, 1.5, 0.0, 1.0]])
    geom = Geometry(sza_deg, 0.0, 0.0, surface_altitude_m, surface_altitude_m + alt)
    # noise: variance a L + b, SNR `snr` at the continuum radiance of this pixel
    _, lrad = fisher_information(model, theta, geom, 1.0, 0.0)
    cont = float(np.quantile(lrad, 0.9))
    var_c = (cont / snr) ** 2
    a = (1.0 - read_noise_fraction) * var_c / cont
    b = read_noise_fraction * var_c
    info, _ = fisher_information(model, theta, geom, a, b)
    index = {"reflectance": list(range(k))}
    index.update({name: [k + i] for i, name in enumerate(LATENTS[1:])})
    out = {}
    for case, free in cases.items():
        unknown = [n for n in free if n not in index]
        if unknown:
            raise ValueError(f"unknown latent(s) {unknown}; known: {', '.join(LATENTS)}")
        if "sif_far_red" not in free:
            raise ValueError("the far-red SIF amplitude must be free to bound F760")
        ii = [j for n in free for j in index[n]]
        cov = np.linalg.inv(info[np.ix_(ii, ii)])
        pos = ii.index(k)
        out[case] = float(np.sqrt(cov[pos, pos]) * shape760)
    return out


def _float64(patch: Patch) -> Patch:
    """The patch with every array float64 (inside ``jax.enable_x64``)."""
    return jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), patch)


def _local_values(values: dict):
    """Reflectance coefficients (P, K) and SIF amplitudes (far, red) (P,), float64."""
    coeffs = np.asarray(values["reflectance_coeffs"], np.float64)
    n_pix = coeffs.shape[0]
    amp_far = np.asarray(values["sif_far_red"], np.float64)
    amp_red = np.asarray(values.get("sif_red", np.zeros(n_pix)), np.float64)
    return coeffs, amp_far, amp_red


def patch_cramer_rao_f760(model: SifModel, patch: Patch, values: dict
                          ) -> dict[str, np.ndarray]:
    """Cramer-Rao bound of each pixel's F760 in a patch whose pixels share atmosphere and
    sensor latents (the model's free ones, ``model.free``).

    The patch's Fisher information is the sum of its pixels' (each pixel's likelihood
    depends on its own reflectance and SIF and on the shared latents): the model's band
    operator (:meth:`SifModel.operator`) and its first derivatives in the shared latents'
    coordinates, the model's prediction (:meth:`SifModel.predict`) and noise
    (:meth:`SifModel.noise_variance`), all in float64. Returns ``{"shared": (P,),
    "known": (P,), "shared_latents": (S,)}``: the bound of F760 (mW m-2 sr-1 nm-1) with
    the shared latents free and estimated from the whole patch, and with them known; and
    the bound of each shared latent (its physical units, ``model.free`` order). A model
    with a red peak adds ``"f687_shared"`` and ``"f687_known"`` (P,): the same bounds of
    F687 (both peaks' amplitudes free; F687 = ``c_far a_far + c_red a_red``, the peaks'
    unit spectra at 687 nm).

    Parameters
    ----------
    model : SifModel
        A model of the built-in atmosphere.
    patch : Patch
        The patch (``geometry``, ``surface_pressure0``, ``noise_a``, ``noise_b``; the
        radiance is not needed).
    values : dict
        Latent values, as the model's sites name them (the truth of a prior-predictive
        draw, :func:`bayesfluo.scene.prior.simulate_patch`, as it is):
        ``reflectance_coeffs`` (P, K), ``sif_far_red`` (P,), ``sif_red`` (P,) where the
        model has a red peak, and the standard-normal coordinate ``<name>_z`` of each
        free shared latent.

    Raises
    ------
    ValueError
        If the model is a top-of-canopy one (use :func:`toc_cramer_rao_f760`) or a value
        is missing.
    """
    if model.top_of_canopy or model.table is not None:
        raise ValueError("patch_cramer_rao_f760 needs a model of the built-in atmosphere "
                         "(a top-of-canopy model: toc_cramer_rao_f760)")
    missing = [f"{n}_z" for n in model.free if f"{n}_z" not in values]
    if missing:
        raise ValueError(f"values lacks the coordinates {missing} of the shared latents")
    k = model.fm.n_basis
    coeffs, amp_far, amp_red = _local_values(values)
    z_true = np.array([float(np.asarray(values[f"{n}_z"])) for n in model.free])
    theta_local = np.column_stack([coeffs, amp_far, amp_red])
    # One band operator for the patch and its first derivatives in the shared latents
    # (the fine-grid part, computed once); each pixel's radiance and Jacobian then follow
    # from the cheap per-pixel part. The first-order expansion is exact for the Jacobian
    # at z0 (the point the bound is computed at).
    with jax.enable_x64(True):
        p64 = _float64(patch)
        z0 = jnp.asarray(z_true)
        op0 = model.operator(p64, z0)
        jop = jax.jacfwd(lambda z: model.operator(p64, z))(z0)  # leaves (..., S)

        def fwd(t, z):
            op = jax.tree.map(lambda o, j: o + j @ (z - z0), op0, jop)
            return model.predict(op, t[None, :k], t[None, k + 1], t[None, k])[0]

        th = jnp.asarray(theta_local)
        jl_all, jg_all = jax.vmap(jax.jacfwd(fwd, argnums=(0, 1)), in_axes=(0, None))(th, z0)
        lrad = jax.vmap(fwd, in_axes=(0, None))(th, z0)
        var = model.noise_variance(lrad, p64.noise_a, p64.noise_b)
        # physical units of the shared latents: d value / d z at z0
        dvdz = jnp.diagonal(jax.jacfwd(lambda z: jnp.stack(
            [model.shared_physical(p64.surface_pressure0, z)[n] for n in model.free]
            if model.free else jnp.zeros(0)))(z0))
        jl_all, jg_all, var, dvdz = (np.asarray(a, np.float64)
                                     for a in (jl_all, jg_all, var, dvdz))
    out = _patch_bound(jl_all, jg_all, var, model.has_red, k)
    out["shared_latents"] = out["shared_latents"] * np.abs(dvdz)
    return out


def f687_weights() -> tuple[float, float]:
    """F687 (mW m-2 sr-1 nm-1) per unit of the far-red and of the red SIF amplitude (the
    peaks' unit spectra at 687 nm)."""
    with jax.ensure_compile_time_eval():
        return (float(sif_spectrum(687.0, SifParams(0.0, 1.0))),
                float(sif_spectrum(687.0, SifParams(1.0, 0.0))))


def _patch_bound(jl_all, jg_all, var, has_red, k):
    """Cramer-Rao bounds from per-pixel Jacobians in the local latents (P, B, K + 2) and
    the shared ones (P, B, S), and the noise variance (P, B) (see
    :func:`patch_cramer_rao_f760`)."""
    n_pix = var.shape[0]
    local = list(range(k + 1)) + ([k + 1] if has_red else [])
    nl, ng = len(local), jg_all.shape[-1]
    n = n_pix * nl + ng
    fisher = np.zeros((n, n))
    for i in range(n_pix):
        w = 1.0 / np.sqrt(var[i])[:, None]
        jl, jg = jl_all[i][:, local] * w, jg_all[i] * w
        sl = slice(i * nl, (i + 1) * nl)
        fisher[sl, sl] = jl.T @ jl
        fisher[sl, n_pix * nl:] = jl.T @ jg
        fisher[n_pix * nl:, sl] = jg.T @ jl
        fisher[n_pix * nl:, n_pix * nl:] += jg.T @ jg
    amp = np.arange(n_pix) * nl + k  # index of each pixel's far-red amplitude
    cov = np.linalg.inv(fisher)
    known = [np.linalg.inv(fisher[i * nl:(i + 1) * nl, i * nl:(i + 1) * nl])
             for i in range(n_pix)]
    out = {"shared": SHAPE760 * np.sqrt(np.diag(cov)[amp]),
           "known": SHAPE760 * np.sqrt(np.array([c[k, k] for c in known])),
           "shared_latents": np.sqrt(np.diag(cov)[n_pix * nl:])}
    if has_red:  # F687 = g . (a_far, a_red): var = g^T C g on each pixel's 2 x 2 block
        g = np.array(f687_weights())

        def var687(c):
            return g @ c @ g

        out["f687_shared"] = np.sqrt([var687(cov[np.ix_([a, a + 1], [a, a + 1])])
                                      for a in amp])
        out["f687_known"] = np.sqrt([var687(c[k:k + 2, k:k + 2]) for c in known])
    return out


def toc_cramer_rao_f760(model: SifModel, patch: Patch, values: dict
                        ) -> dict[str, np.ndarray]:
    """Cramer-Rao bound of each pixel's (time step's) F760 at the top of the canopy, with
    the patch's measured irradiance (a top-of-canopy model: its operator
    :meth:`SifModel.operator`, ``L = E/pi R + F``, its prediction and its noise
    :meth:`SifModel.noise_variance` plus the irradiance's own noise carried through,
    :meth:`SifModel.irradiance_variance`), in float64. There are no shared latents:
    ``"shared"`` equals ``"known"``; ``"shared_latents"`` is empty.

    Parameters
    ----------
    model : SifModel
        A top-of-canopy model.
    patch : Patch
        The patch with its ``irradiance`` (mW m-2 nm-1), ``noise_a``, ``noise_b`` (and
        ``irradiance_noise_a``, ``irradiance_noise_b``).
    values : dict
        ``reflectance_coeffs`` (P, K), ``sif_far_red`` (P,), ``sif_red`` (P,) where the
        model has a red peak.
    """
    if not model.top_of_canopy:
        raise ValueError("toc_cramer_rao_f760 needs a top-of-canopy model")
    k = model.fm.n_basis
    coeffs, amp_far, amp_red = _local_values(values)
    with jax.enable_x64(True):
        p64 = _float64(patch)
        op = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), model.operator(p64))

        def fwd(t, o):
            o1 = jax.tree.map(lambda v: v[None], o)
            return model.predict(o1, t[None, :k], t[None, k + 1], t[None, k])[0]

        th = jnp.asarray(np.column_stack([coeffs, amp_far, amp_red]))
        jl = jax.vmap(jax.jacfwd(fwd))(th, op)
        lrad = jax.vmap(fwd)(th, op)
        var = model.noise_variance(lrad, p64.noise_a, p64.noise_b,
                                   model.irradiance_variance(p64, jnp.asarray(coeffs)))
        jl, var = np.asarray(jl, np.float64), np.asarray(var, np.float64)
    return _patch_bound(jl, np.zeros(jl.shape[:2] + (0,)), var, model.has_red, k)
