"""The Cramer-Rao bound of the forward model against the independent estimate of
SCIENCE.md section 5 (a simpler model: flat sun, cubic reflectance, Gaussian SIF, one O2
scale, a spectral shift). Agreement within 30 % is asked: the two models differ in their
solar spectrum, atmosphere and reflectance basis."""

import numpy as np
import pytest

from bayesfluo.diagnostics import cramer_rao_f760


@pytest.mark.parametrize("altitude, snr, known, free", [
    (600.0, 150.0, 0.20, 0.76),
    (600.0, 300.0, 0.10, 0.38),
    (1500.0, 150.0, 0.25, 0.95),
])
def test_hyplant_bound_matches_science_estimate(model_o2a, altitude, snr, known, free):
    crb = cramer_rao_f760("hyplant-fluo-o2a", altitude_m=altitude, snr=snr, model=model_o2a)
    assert crb["atmosphere known"] == pytest.approx(known, rel=0.3)
    assert crb["atmosphere free"] == pytest.approx(free, rel=0.3)
    # freeing more of the atmosphere can only loosen the bound
    assert crb["atmosphere and aerosol free"] >= crb["atmosphere free"] >= \
        crb["atmosphere known"]


def test_desis_bound_is_an_order_of_magnitude_wider(model_desis, model_o2a):
    desis = cramer_rao_f760("desis", model=model_desis)
    hyplant = cramer_rao_f760("hyplant-fluo-o2a", model=model_o2a)
    assert desis["atmosphere known"] == pytest.approx(4.0, rel=0.3)
    assert desis["atmosphere known"] > 10 * hyplant["atmosphere known"]


def test_bound_scales_as_one_over_snr(model_o2a):
    a = cramer_rao_f760(snr=100.0, model=model_o2a)["atmosphere known"]
    b = cramer_rao_f760(snr=400.0, model=model_o2a)["atmosphere known"]
    assert a / b == pytest.approx(4.0, rel=1e-3)
    assert np.isfinite(a)


def test_unknown_latent_is_named(model_o2a):
    with pytest.raises(ValueError, match="unknown latent"):
        cramer_rao_f760(cases={"x": ("reflectance", "sif_far_red", "humidity")},
                        model=model_o2a)


def test_patch_bound_of_one_pixel_is_the_pixel_bound(model_o2a):
    """A patch of one pixel whose shared latents are the surface pressure and the spectral
    shift: its bound of F760 (through the model's operator, prediction and noise, the
    shared latents in their standard-normal coordinates) is the single-pixel bound with
    those latents free (:func:`cramer_rao_f760`, physical coordinates: the bound does not
    depend on how the nuisance latents are parametrised), and its bound of the surface
    pressure in hPa is the pixel's Fisher bound of it: to float64 rounding."""
    import jax.numpy as jnp

    from bayesfluo.diagnostics.fisher import (
        LATENTS,
        fisher_information,
        patch_cramer_rao_f760,
    )
    from bayesfluo.model import ModelConfig, Patch, SifModel
    from bayesfluo.model.priors import SHAPE760
    from bayesfluo.physics.forward import Geometry, standard_pressure_hpa

    fm, k = model_o2a, model_o2a.n_basis
    free = ("reflectance", "sif_far_red", "spectral_shift", "surface_pressure")
    crb = cramer_rao_f760(snr=150.0, cases={"free": free}, model=fm)["free"]
    # the noise of cramer_rao_f760: SNR 150 at the pixel's continuum, shot noise only
    p_s = float(standard_pressure_hpa(0.0))
    theta = np.concatenate([np.full(k, 0.4), [1.5 / SHAPE760, 0.0, p_s, 0.1, 1.3, 1.5, 0.0,
                                              1.0]])
    geom = Geometry(30.0, 0.0, 0.0, 0.0, 600.0)
    _, lrad = fisher_information(fm, theta, geom, 1.0, 0.0)
    cont = float(np.quantile(lrad, 0.9))
    a = (cont / 150.0) ** 2 / cont
    info, _ = fisher_information(fm, theta, geom, a, 0.0)
    ii = list(range(k)) + [k + LATENTS[1:].index(n) for n in free[1:]]
    sd_pressure = float(np.sqrt(np.linalg.inv(info[np.ix_(ii, ii)])[-1, -1]))

    cfg = ModelConfig(free=("surface_pressure", "spectral_shift"),
                      fixed={"aot550": 0.1, "diffuse_path": 1.5, "angstrom": 1.3,
                             "fwhm_scale": 1.0})
    model = SifModel(fm, cfg)
    patch = Patch(radiance=None, mask=jnp.ones(1), ndvi=jnp.full(1, 0.8),
                  geometry=Geometry(*(jnp.float32(v) for v in geom)),
                  noise_a=jnp.float32(a), noise_b=jnp.float32(0.0),
                  surface_pressure0=jnp.float32(p_s))
    values = {"reflectance_coeffs": np.full((1, k), 0.4), "sif_far_red": theta[k:k + 1],
              "surface_pressure_z": 0.0, "spectral_shift_z": 0.0}
    got = patch_cramer_rao_f760(model, patch, values)
    assert got["shared"][0] == pytest.approx(crb, rel=1e-5)
    assert got["known"][0] < got["shared"][0]
    assert got["shared_latents"][0] == pytest.approx(sd_pressure, rel=1e-5)


def test_f687_bound_of_one_pixel_is_the_pixel_bound(model_full):
    """The F687 bound of a one-pixel patch over the whole HyPlant window (both SIF peaks'
    amplitudes free, the surface pressure shared) is ``sqrt(g^T I^-1 g)`` of the
    single-pixel Fisher information of the physics forward model (a separate code path:
    :func:`fisher_information`), with ``g`` the two peaks' unit spectra at 687 nm taken
    from the physics module; the F760 bound is that pixel's too. Also: F687 is less
    well determined than F760 (fewer, shallower O2-B lines), and knowing the shared
    latents can only tighten it."""
    import jax.numpy as jnp

    from bayesfluo.diagnostics.fisher import LATENTS, fisher_information, patch_cramer_rao_f760
    from bayesfluo.model import ModelConfig, Patch, SifModel
    from bayesfluo.model.priors import SHAPE760
    from bayesfluo.physics.forward import Geometry, standard_pressure_hpa
    from bayesfluo.physics.surface import SifParams, sif_spectrum

    fm, k = model_full, model_full.n_basis
    p_s = float(standard_pressure_hpa(0.0))
    amp_far, amp_red = 1.5 / SHAPE760, 0.8
    theta = np.concatenate([np.full(k, 0.3), [amp_far, amp_red, p_s, 0.1, 1.3, 1.5, 0.0,
                                              1.0]])
    geom = Geometry(30.0, 0.0, 0.0, 0.0, 600.0)
    a = 2e-3
    info, _ = fisher_information(fm, theta, geom, a, 0.0)
    ii = list(range(k)) + [k + LATENTS[1:].index(n) for n in
                           ("sif_far_red", "sif_red", "surface_pressure")]
    cov = np.linalg.inv(info[np.ix_(ii, ii)])
    g = np.array([float(sif_spectrum(687.0, SifParams(0.0, 1.0))),
                  float(sif_spectrum(687.0, SifParams(1.0, 0.0)))])
    want687 = float(np.sqrt(g @ cov[k:k + 2, k:k + 2] @ g))
    want760 = float(np.sqrt(cov[k, k]) * SHAPE760)

    cfg = ModelConfig(free=("surface_pressure",),
                      fixed={"aot550": 0.1, "diffuse_path": 1.5, "angstrom": 1.3,
                             "fwhm_scale": 1.0, "spectral_shift": 0.0})
    model = SifModel(fm, cfg)
    assert model.has_red
    patch = Patch(radiance=None, mask=jnp.ones(1), ndvi=jnp.full(1, 0.8),
                  geometry=Geometry(*(jnp.float32(v) for v in geom)),
                  noise_a=jnp.float32(a), noise_b=jnp.float32(0.0),
                  surface_pressure0=jnp.float32(p_s))
    values = {"reflectance_coeffs": np.full((1, k), 0.3), "sif_far_red": np.array([amp_far]),
              "sif_red": np.array([amp_red]), "surface_pressure_z": 0.0}
    got = patch_cramer_rao_f760(model, patch, values)
    assert got["shared"][0] == pytest.approx(want760, rel=1e-5)
    assert got["f687_shared"][0] == pytest.approx(want687, rel=1e-5)
    assert got["f687_known"][0] <= got["f687_shared"][0]
    assert got["f687_shared"][0] > got["shared"][0]
