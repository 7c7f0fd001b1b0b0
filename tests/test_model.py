"""The NumPyro model: its priors mean what they say and its likelihood is the forward model
with the instrument's noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer import Predictive
from numpyro.infer.util import log_density
from scipy import stats

from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig, Patch, SifModel
from bayesfluo.model.laplace import Layout
from bayesfluo.physics import AtmosphereParams, SensorParams, SifParams, radiance
from bayesfluo.scene.grid import patch_geometry, prior_pressure


def _patch(n, ndvi=None) -> Patch:
    a, b = get_instrument("hyplant-fluo-o2a").noise_coefficients()
    return Patch(radiance=None, mask=jnp.ones(n),
                 ndvi=jnp.linspace(0.0, 0.8, n) if ndvi is None else ndvi,
                 geometry=patch_geometry(30.0, 5.0, 30.0, 100.0, 700.0), noise_a=a,
                 noise_b=b, surface_pressure0=prior_pressure(100.0))


def test_prior_draws_are_physical(model_o2a):
    n = 200
    ndvi = jnp.concatenate([jnp.zeros(n // 2), jnp.full(n // 2, 0.8)])
    model = SifModel(model_o2a, ModelConfig())
    draws = Predictive(model.program, num_samples=20)(jax.random.PRNGKey(0), _patch(n, ndvi))
    coeffs = np.asarray(draws["reflectance_coeffs"])
    assert coeffs.min() >= 0 and coeffs.max() <= 1  # hence R in [0, 1]
    f760 = np.asarray(draws["f760"])
    assert f760.min() >= 0
    bare, veg = f760[:, : n // 2], f760[:, n // 2:]
    # half-normal scales 0.05 (bare) and ~2 (vegetated): mean = scale * sqrt(2/pi)
    assert bare.mean() == pytest.approx(0.05 * np.sqrt(2 / np.pi), rel=0.15)
    assert veg.mean() == pytest.approx(2.0 * np.sqrt(2 / np.pi), rel=0.15)
    rad = np.asarray(draws["radiance"])
    assert np.all(np.isfinite(rad)) and rad.shape == (20, n, model_o2a.n_bands)


def test_likelihood_is_forward_model_with_instrument_noise(model_o2a):
    m = model_o2a
    model = SifModel(m, ModelConfig())
    patch = _patch(3)
    truth = Predictive(model.program, num_samples=1)(jax.random.PRNGKey(3), patch)
    truth = {k: v[0] for k, v in truth.items()}
    patch = patch.replace(radiance=truth["radiance"])
    latents = {k: v for k, v in truth.items() if k.endswith("_z") or k.endswith("_raw")}
    lp_model, _ = log_density(model.program, (patch,), {}, latents)
    # independent evaluation: priors + Gaussian likelihood of the forward model
    atm = AtmosphereParams(truth["surface_pressure"], truth["aot550"], 1.3, 1.5)
    sens = SensorParams(truth["spectral_shift"], 1.0)
    pred = jax.vmap(lambda c, f: radiance(m, c, SifParams(0.0, f), atm, patch.geometry,
                                          sens))(truth["reflectance_coeffs"],
                                                 truth["sif_far_red"])
    sd = np.sqrt(patch.noise_a * np.asarray(pred) + patch.noise_b)
    lp = stats.norm.logpdf(np.asarray(patch.radiance), np.asarray(pred), sd).sum()
    lp += stats.norm.logpdf(np.asarray(latents["reflectance_z"])).sum()
    lp += stats.halfnorm.logpdf(np.asarray(latents["sif_far_red_raw"])).sum()
    for name in ("surface_pressure_z", "aot550_z", "spectral_shift_z"):
        lp += stats.norm.logpdf(float(latents[name]))
    assert float(lp_model) == pytest.approx(lp, rel=1e-4)


def test_masked_pixels_do_not_count(model_o2a):
    model = SifModel(model_o2a, ModelConfig())
    patch = _patch(2)
    truth = Predictive(model.program, num_samples=1)(jax.random.PRNGKey(4), patch)
    latents = {k: v[0] for k, v in truth.items() if k.endswith("_z") or k.endswith("_raw")}
    patch = patch.replace(radiance=truth["radiance"][0])
    lp_all, _ = log_density(model.program, (patch,), {}, latents)
    bad = patch.replace(radiance=patch.radiance.at[1].set(1e6), mask=jnp.array([1.0, 0.0]))
    lp_masked, _ = log_density(model.program, (bad,), {}, latents)
    assert np.isfinite(float(lp_masked)) and float(lp_masked) > float(lp_all)


def test_config_names_unknown_latents():
    with pytest.raises(ValueError, match="unknown free latent"):
        ModelConfig(free=("surface_pressure", "humidity"))


def test_operator_expansion_error_is_third_order(model_o2a):
    model = SifModel(model_o2a, ModelConfig())
    patch = _patch(1)
    z0 = jnp.array([0.3, -0.5, 0.2])  # surface_pressure, aot550, spectral_shift
    exp = model.operator_expansion(patch, z0)
    direction = jnp.array([1.0, -0.7, 0.5])

    def error(h):
        z = z0 + h * direction
        exact = model.operator(patch, z)
        approx = exp(z)
        return max(float(jnp.max(jnp.abs(a - b))) for a, b in
                   zip(jax.tree.leaves(exact), jax.tree.leaves(approx), strict=True))

    assert error(0.0) < 1e-4
    e1, e2 = error(0.4), error(0.2)
    # halving the distance divides a third-order error by ~8 (float32 noise aside)
    assert e2 < e1 / 5
    # in radiance units, well below the noise (sd ~0.6 at 100 mW m-2 sr-1 nm-1)
    assert e1 < 0.05


def test_layout_of_the_program(model_o2a, model_full):
    """The Laplace engine's layout: each pixel's reflectance and SIF coordinates (the
    guide's order) and the free shared latents (``cfg.free`` order), read from the
    program; packing and unpacking are inverse."""
    for fm, names in ((model_o2a, ["reflectance_z", "sif_far_red_raw"]),
                      (model_full, ["reflectance_z", "sif_far_red_raw", "sif_red_raw"])):
        model = SifModel(fm, ModelConfig())
        layout = Layout.of(model, _patch(4))
        assert [n for n, _ in layout.local] == names
        assert layout.local[0][1] == (fm.n_basis,)
        assert [n for n, _ in layout.shared] == [f"{n}_z" for n in model.free]
        assert layout.n_local == model.n_local and layout.n_shared == len(model.free)
        rng = np.random.default_rng(0)
        xl = jnp.asarray(rng.normal(size=(4, layout.n_local)), jnp.float32)
        xs = jnp.asarray(rng.normal(size=layout.n_shared), jnp.float32)
        z = layout.unpack(xl, xs)
        np.testing.assert_array_equal(np.asarray(z["sif_far_red_raw"]),
                                      np.asarray(xl[:, fm.n_basis]))
        np.testing.assert_array_equal(np.asarray(z["surface_pressure_z"]),
                                      np.asarray(xs[0]))
        for a, b in zip(layout.pack(z), (xl, xs), strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
