"""Fisher information and the Cramer-Rao bound of F760 from the forward model itself.

For one pixel with latent vector theta and band radiance ``L(theta)`` observed with
independent Gaussian noise of variance ``v_k = a L_k + b``, the Fisher information is
``I = J^T diag(1/v) J`` with ``J = dL/dtheta`` (the dependence of ``v`` on theta is
neglected, as in SCIENCE.md section 5). No unbiased estimator of F760 from that pixel has
a smaller standard deviation than ``sqrt((I^-1)_FF)``. The bound is computed in float64
from the model's own Jacobian (``jax.jacfwd``), for any subset of free latents; the others
are held at their values (known).

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
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import (
    ForwardModel,
    Geometry,
    band_operator,
    build_forward_model,
    radiance,
    radiance_from_operator,
    standard_pressure_hpa,
)
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["LATENTS", "fisher_information", "cramer_rao_f760", "patch_cramer_rao_f760",
           "toc_cramer_rao_f760"]

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
        lrad = np.asarray(fwd(th), dtype=np.float64)
    var = noise_a * np.maximum(lrad, 0.0) + noise_b
    return jac.T @ (jac / var[:, None]), lrad


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
    shape760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
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


def patch_cramer_rao_f760(model: ForwardModel, data: dict, values: dict,
                          shared: Sequence[str] = ("surface_pressure", "aot550",
                                                   "spectral_shift"),
                          has_red: bool = False) -> dict[str, np.ndarray]:
    """Cramer-Rao bound of each pixel's F760 in a patch whose pixels share atmosphere and
    sensor latents.

    The patch's Fisher information is the sum of its pixels' (each pixel's likelihood
    depends on its own reflectance and SIF and on the shared latents). Returns
    ``{"shared": (P,), "known": (P,), "shared_latents": (S,)}``: the bound of F760
    (mW m-2 sr-1 nm-1) with the ``shared`` latents free and estimated from the whole
    patch, and with them known; and the bound of each shared latent (its own units).

    Parameters
    ----------
    data : dict
        The model's patch data (``geometry``, ``noise_a``, ``noise_b``).
    values : dict
        Latent values: ``reflectance_coeffs`` (P, K), ``sif_far_red`` (P,), optionally
        ``sif_red`` (P,), and every atmospheric and sensor latent by its model name.
    """
    k = model.n_basis
    coeffs = np.asarray(values["reflectance_coeffs"], np.float64)
    n_pix = coeffs.shape[0]
    amp_far = np.asarray(values["sif_far_red"], np.float64)
    amp_red = np.asarray(values.get("sif_red", np.zeros(n_pix)), np.float64)
    s0 = np.array([float(np.mean(values[name])) for name in LATENTS[3:]])
    glob_names = list(shared)
    gi = np.array([LATENTS[3:].index(name) for name in glob_names], int)
    theta_local = np.column_stack([coeffs, amp_far, amp_red])
    geom = data["geometry"]
    # One band operator for the patch and its first derivatives in the shared latents
    # (the fine-grid part, computed once); each pixel's radiance and Jacobian then follow
    # from the cheap per-pixel part. radiance() is exactly radiance_from_operator of
    # band_operator(), so this is the same Jacobian as differentiating radiance().
    with jax.enable_x64(True):
        g64 = Geometry(*(jnp.asarray(x, jnp.float64) for x in geom))
        base = jnp.asarray(s0)

        def op_of(v):
            sv = base.at[gi].set(v)
            atm = AtmosphereParams(sv[0], sv[1], sv[2], sv[3])
            return band_operator(model, atm, g64, SensorParams(sv[4], sv[5]))

        v0 = base[gi]
        op0 = op_of(v0)
        jop = jax.jacfwd(op_of)(v0)  # leaves (..., n_shared)

        def fwd(t, v):
            op = jax.tree.map(lambda o, j: o + j @ (v - v0), op0, jop)
            return radiance_from_operator(model, op, t[:k], SifParams(t[k + 1], t[k]))

        th = jnp.asarray(theta_local)
        jl_all, jg_all = jax.vmap(jax.jacfwd(fwd, argnums=(0, 1)), in_axes=(0, None))(th, v0)
        lrad = np.asarray(jax.vmap(fwd, in_axes=(0, None))(th, v0), np.float64)
        jl_all, jg_all = (np.asarray(a, np.float64) for a in (jl_all, jg_all))
    return _patch_bound(jl_all, jg_all, lrad, data, has_red, k)


def _patch_bound(jl_all, jg_all, lrad, data, has_red, k, extra_var=0.0):
    """Cramer-Rao bounds from per-pixel Jacobians in the local latents (P, B, K + 2) and
    the shared ones (P, B, S) (see :func:`patch_cramer_rao_f760`)."""
    n_pix = lrad.shape[0]
    var = (float(data["noise_a"]) * np.maximum(lrad, 0.0) + float(data["noise_b"])
           + extra_var)
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
    shape760 = float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
    amp = np.arange(n_pix) * nl + k  # index of each pixel's far-red amplitude
    cov = np.linalg.inv(fisher)
    known = np.array([np.linalg.inv(fisher[i * nl:(i + 1) * nl, i * nl:(i + 1) * nl])[k, k]
                      for i in range(n_pix)])
    return {"shared": shape760 * np.sqrt(np.diag(cov)[amp]),
            "known": shape760 * np.sqrt(known),
            "shared_latents": np.sqrt(np.diag(cov)[n_pix * nl:])}


def toc_cramer_rao_f760(model: ForwardModel, data: dict, values: dict,
                        has_red: bool = False) -> dict[str, np.ndarray]:
    """Cramer-Rao bound of each pixel's (time step's) F760 at the top of the canopy, with
    the measured irradiance ``data["irradiance"]`` (:func:`bayesfluo.model.toc_operator`):
    ``L = E/pi R + F``, noise variance ``a L + b`` plus the irradiance's own noise carried
    through (``R^2 (a_E E/pi + b_E)``, as in :func:`bayesfluo.model.sif_model`). There
    are no shared latents: ``"shared"`` equals ``"known"``; ``"shared_latents"`` is empty.
    """
    from bayesfluo.model import toc_operator

    k = model.n_basis
    coeffs = np.asarray(values["reflectance_coeffs"], np.float64)
    n_pix = coeffs.shape[0]
    amp_far = np.asarray(values["sif_far_red"], np.float64)
    amp_red = np.asarray(values.get("sif_red", np.zeros(n_pix)), np.float64)
    with jax.enable_x64(True):
        op = toc_operator(jnp.asarray(data["irradiance"]))
        op = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), op)

        def fwd(t, o):
            return radiance_from_operator(model, o, t[:k], SifParams(t[k + 1], t[k]))

        th = jnp.asarray(np.column_stack([coeffs, amp_far, amp_red]))
        jl = np.asarray(jax.vmap(jax.jacfwd(fwd))(th, op), np.float64)
        lrad = np.asarray(jax.vmap(fwd)(th, op), np.float64)
        e = np.asarray(op.reflected[:, 0], np.float64)  # E/pi
    r0 = coeffs @ np.asarray(model.basis_band[0], np.float64).T
    ea = float(data.get("irradiance_noise_a", data["noise_a"]))
    eb = float(data.get("irradiance_noise_b", data["noise_b"]))
    out = _patch_bound(jl, np.zeros(jl.shape[:2] + (0,)), lrad, data, has_red, k,
                       extra_var=r0**2 * (ea * e + eb))
    return out
