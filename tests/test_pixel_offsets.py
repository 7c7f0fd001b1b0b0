"""Pixels that differ from their patch by what the scene says (terrain, smile).

A patch shares one atmosphere and sensor state, but each pixel's surface pressure
follows its own surface altitude and its spectral shift and FWHM the instrument's smile
at its column. These tests check that the offsets are read from the scene, that the
first-order per-pixel operator matches each pixel's exact operator to well below the
noise where leaving the offsets out would not, and that every route (exact operator,
expansion, written-out potential) agrees.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import potential_energy

from bayesfluo.instruments import get_instrument
from bayesfluo.model import SifModel
from bayesfluo.physics.forward import standard_pressure_hpa
from bayesfluo.physics.sensor import noise_variance
from bayesfluo.scene.grid import patch_of_pixels
from bayesfluo.scene.simulate import simulate_scene

INSTRUMENT = "hyplant-fluo-o2a"


@pytest.fixture(scope="module")
def edge_patch():
    """An 8x8 patch at the swath's edge of a hilly default scene (seed 903)."""
    scene = simulate_scene(INSTRUMENT, size=(8, 64), seed=903)
    rows, cols = np.meshgrid(np.arange(8), np.arange(56, 64), indexing="ij")
    return scene, patch_of_pixels(scene, rows.ravel(), cols.ravel())


@pytest.fixture(scope="module")
def model():
    return SifModel.for_instrument(INSTRUMENT)


def test_offsets_come_from_the_scene(edge_patch):
    scene, patch = edge_patch
    off = np.asarray(patch.pixel_offset)
    alt = np.asarray(scene["surface_altitude"].values[:8, 56:64], np.float64).ravel()
    # pressure: the standard atmosphere at each pixel's altitude minus at the patch mean
    p_pix = np.asarray(standard_pressure_hpa(jnp.asarray(alt, jnp.float32)))
    p_mean = float(standard_pressure_hpa(jnp.float32(alt.mean())))
    np.testing.assert_allclose(off[:, 0], p_pix - p_mean, atol=0.02)
    # smile: quadratic across the swath, from the instrument's characterisation (the
    # simulator's truth minus its scene constant)
    inst = get_instrument(INSTRUMENT)
    col = np.asarray(scene["column"].values[56:64], np.float64)
    c2 = (2.0 * col / (inst.n_columns - 1) - 1.0) ** 2
    np.testing.assert_allclose(off[:, 1], np.tile(inst.smile_shift_nm * c2, 8), atol=1e-6)
    np.testing.assert_allclose(off[:, 2], np.tile(inst.smile_fwhm * c2, 8), atol=1e-6)
    true_fwhm = np.asarray(scene["true_fwhm_scale"].values[56:64], np.float64)
    np.testing.assert_allclose(off[:8, 2], true_fwhm - 1.0, atol=1e-6)
    # view zenith relative to the patch's mean
    vza = np.asarray(scene["vza"].values[:8, 56:64], np.float64).ravel()
    np.testing.assert_allclose(off[:, 3], vza - vza.mean(), atol=1e-4)
    # the simulator's terrain does vary inside the patch (else this test proves nothing)
    assert np.ptp(off[:, 0]) > 1.0


def _radiance_error(model, patch, ops, ref):
    n = patch.ndvi.shape[0]
    coeffs = jnp.full((n, model.fm.n_basis), 0.4)
    red, far = jnp.zeros(n), jnp.full(n, 1.5)
    l_ref = model.predict(ref, coeffs, red, far)
    sd = jnp.sqrt(noise_variance(l_ref, patch.noise_a, patch.noise_b))
    return np.abs(np.asarray((model.predict(ops, coeffs, red, far) - l_ref) / sd))


def test_first_order_pixel_operator_is_exact_to_the_noise(edge_patch, model):
    _, patch = edge_patch
    z = jnp.asarray([0.3, -0.5, 0.4], jnp.float32)
    delta = model.pixel_delta(patch)
    exact = jax.vmap(lambda d: model._operator_at(patch, z, d))(delta)
    err_first = _radiance_error(model, patch, model.pixel_operators(patch, z), exact)
    err_shared = _radiance_error(model, patch, model.operator(patch, z), exact)
    assert err_first.max() < 0.5 and np.sqrt(np.mean(err_first**2)) < 0.1
    # without the offsets the same pixels would be misfit by several noise sd
    assert err_shared.max() > 3.0 and np.sqrt(np.mean(err_shared**2)) > 0.4


def test_offsets_bring_the_model_to_the_simulators_truth(edge_patch, model):
    """At the patch's true state, the model's per-pixel operators reproduce the
    simulator's own per-pixel radiance (its operator at each pixel's true pressure,
    smile and view) much better than the patch's one operator: the terms the offsets
    carry are what the model missed (measured: mean squared error 1.17 -> 0.08 noise
    variances on this patch; Angstrom exponent and diffuse path at the model's fixed
    values)."""
    from bayesfluo.inference.baselines.pixels import true_operators

    scene, patch = edge_patch
    rows, cols = np.meshgrid(np.arange(8), np.arange(56, 64), indexing="ij")
    idx = rows.ravel() * scene.sizes["x"] + cols.ravel()
    truth = jax.tree.map(lambda v: v[idx], true_operators(scene, model.fm))
    cfg = model.cfg
    p_true = float(np.mean(scene["true_surface_pressure"].values[:8, 56:64]))
    aot = float(np.mean(scene["true_aot550"].values[:8, 56:64]))
    shift = float(np.mean(np.tile(scene["true_spectral_shift"].values[56:64], 8)))
    z = jnp.asarray([(p_true - float(patch.surface_pressure0)) / cfg.pressure_sd,
                     np.log(aot / cfg.aot550_prior) / cfg.aot550_log_sd,
                     shift / cfg.shift_sd], jnp.float32)
    with_offsets = _radiance_error(model, patch, model.pixel_operators(patch, z), truth)
    without = _radiance_error(model, patch.replace(pixel_offset=None),
                              model.operator(patch, z), truth)
    assert np.mean(with_offsets**2) < 0.25
    assert np.mean(without**2) > 4.0 * np.mean(with_offsets**2)


def test_routes_agree_with_offsets(edge_patch, model):
    """The program's potential through the expansion equals the written-out one, and
    both agree with the exact operator's near the expansion point."""
    _, patch = edge_patch
    n = patch.ndvi.shape[0]
    rng = np.random.default_rng(5)
    z0 = jnp.asarray([0.2, -0.1, 0.3], jnp.float32)
    exp = model.operator_expansion(patch, z0)
    refl = jnp.asarray(rng.normal(0, 0.5, (n, model.fm.n_basis)), jnp.float32)
    far_u = jnp.full((n, 1), 1.0, jnp.float32)
    pred = model.predict_mean(patch, z0, jnp.concatenate([refl, far_u], 1))
    radiance = pred + jnp.sqrt(noise_variance(pred, patch.noise_a, patch.noise_b)) * \
        jnp.asarray(rng.normal(size=pred.shape), jnp.float32)
    p = patch.replace(radiance=radiance)
    site = {f"{name}_z": z0[i] for i, name in enumerate(model.free)}
    site |= {"reflectance_z": refl, "sif_far_red_raw": far_u[:, 0]}
    written = float(model.expanded_potential(p, exp, site))
    program_exp = float(potential_energy(model.program, (p, exp), {}, site))
    program_exact = float(potential_energy(model.program, (p, None), {}, site))
    # a potential of about half the number of data: float32 rounding of the sums
    assert written == pytest.approx(program_exp, abs=0.05)
    # at the expansion's centre both routes use the same first-order pixel operators
    assert program_exact == pytest.approx(program_exp, abs=0.05)
    no_offsets = float(potential_energy(model.program, (p.replace(pixel_offset=None), None),
                                        {}, site))
    assert no_offsets - program_exact > 0.05 * pred.size


def test_a_tables_pixels_follow_the_smile(edge_patch, model):
    """Through an external table a pixel moves by the instrument's smile at its column
    (the table is one atmosphere at one geometry: no terrain or view offsets): its
    first-order operator matches its exact one through the table to well below the noise,
    where the patch's one operator misfits the edge-of-swath pixels by several sd."""
    from bayesfluo.io.tables import export_atmosphere, external_atmosphere
    from bayesfluo.model import ExternalModel
    from bayesfluo.physics.atmosphere import AtmosphereParams

    _, patch = edge_patch
    atm = AtmosphereParams(*(jnp.float32(v) for v in (990.0, 0.12, 1.3, 1.5)))
    table = model.replace(table=ExternalModel(external_atmosphere(
        model.fm, export_atmosphere(model.fm, atm, patch.geometry))))
    delta = np.asarray(table.pixel_delta(patch))
    assert np.all(delta[:, [0, 3]] == 0.0) and np.ptp(delta[:, 1]) > 0.0
    z = jnp.asarray(np.linspace(-0.5, 0.5, table.shared_size), jnp.float32)
    exact = jax.vmap(lambda d: table._operator_at(patch, z, d))(jnp.asarray(delta))
    err_first = _radiance_error(table, patch, table.pixel_operators(patch, z), exact)
    err_shared = _radiance_error(table, patch, table.operator(patch, z), exact)
    assert err_first.max() < 0.5 and np.sqrt(np.mean(err_first**2)) < 0.1
    assert err_shared.max() > 3.0
