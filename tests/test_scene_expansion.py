"""The scene's operator expansion (bayesfluo.model.scene_expansion): one Taylor-type
expansion of the band operator over a scene's inputs replaces the exact operator in a
retrieval's fit check. These tests check that its input vector rebuilds the model's own
operator, that inside its trust region its radiance stays within 0.6 noise sd of the
exact one in every band (HyPlant O2-A and DESIS, on the region's surface and inside),
that patches outside get the exact operator, and that a retrieval's fit check
does not depend on the chunk size."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.inference.guide import fit_check, predicted_radiance
from bayesfluo.model import SifModel
from bayesfluo.model.scene_expansion import (
    OPERATOR_INPUTS,
    TRUST_NORM,
    expanded_operator,
    expansion_radius,
    operator_inputs,
    operator_of_inputs,
    scene_expansion,
)
from bayesfluo.scene.grid import patch_of_pixels
from bayesfluo.scene.simulate import simulate_scene


def _patch(instrument: str, seed: int = 903):
    scene = simulate_scene(instrument, size=(8, 64), seed=seed)
    rows, cols = np.meshgrid(np.arange(8), np.arange(56, 64), indexing="ij")
    return patch_of_pixels(scene, rows.ravel(), cols.ravel())


@pytest.fixture(scope="module", params=["hyplant-fluo-o2a", "desis"])
def case(request):
    model = SifModel.for_instrument(request.param)
    return model, _patch(request.param)


def test_inputs_rebuild_the_models_operator(case):
    model, patch = case
    z = jnp.asarray([0.7, -1.1, 0.4][:len(model.free)], jnp.float32)
    u = operator_inputs(model, patch, z, model.patch_delta(patch))
    assert u.shape == (len(OPERATOR_INPUTS),)
    got, want = operator_of_inputs(model, u), model.operator(patch, z)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=1e-6 * float(jnp.abs(w).max()))


def _radiance_error(model, patch, expansion, dus):
    """Radiance difference (noise sd) between the expansion and the exact operator at
    ``centre + du`` for each row of ``dus`` (in the expansion's dims), for the model's
    prior-mean surface with SIF."""
    idx = jnp.asarray(expansion.dims)
    coeffs, red, far = model.surface(jnp.zeros((1, model.n_local), jnp.float32),
                                     jnp.asarray([0.8], jnp.float32))

    def one(du):
        exp_op = expansion.at(du)[0]
        ex_op = operator_of_inputs(model, expansion.centre.at[idx].add(du))
        la = model.predict(exp_op, coeffs, red, far)
        le = model.predict(ex_op, coeffs, red, far)
        sd = jnp.sqrt(model.noise_variance(le, patch.noise_a, patch.noise_b))
        return jnp.max(jnp.abs(la - le) / sd)

    return np.asarray(jax.lax.map(one, dus, batch_size=16))


def test_expansion_is_within_half_a_noise_sd_inside_its_region(case):
    """Points on the surface of the trust region (an ellipsoid; random directions,
    seeded), half-way inside, and each input alone at the region's edge: every band
    within 0.6 noise sd of the exact operator's radiance (0.43 for HyPlant O2-A and 0.44
    for DESIS on the surface, measured)."""
    model, patch = case
    z = jnp.zeros(len(model.free), jnp.float32)
    centre = operator_inputs(model, patch, z, model.patch_delta(patch))
    expansion = jax.jit(lambda c: scene_expansion(model, c))(centre)
    radius = np.asarray(expansion.radius)
    rng = np.random.default_rng(11)
    d = rng.normal(size=(48, radius.size))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    edge = TRUST_NORM * radius
    pts = np.concatenate([d * edge, 0.5 * d * edge, np.diag(edge), -np.diag(edge)])
    err = _radiance_error(model, patch, expansion, jnp.asarray(pts, jnp.float32))
    assert err.max() < 0.6, err.max()


def test_patches_outside_get_the_exact_operator():
    """An expansion centred far from the patches (aerosol three radii away): every patch
    lies outside it, its fit check says so, and the radiance is the exact route's."""
    model = SifModel.for_instrument("hyplant-fluo-o2a")
    patch = _patch("hyplant-fluo-o2a")
    patches = jax.tree.map(lambda v: None if v is None else jnp.stack([v, v]), patch)
    z = jnp.zeros(len(model.free), jnp.float32)
    centre = operator_inputs(model, patch, z, model.patch_delta(patch))
    k = OPERATOR_INPUTS.index("log_aot550")
    far = centre.at[k].add(3.0 * float(expansion_radius(model, (k,))[0]))
    expansion = jax.jit(lambda c: scene_expansion(model, c))(far)
    from bayesfluo.inference.guide import GuideOutput
    n, p, d = 2, patch.mask.shape[0], model.n_local
    s = len(model.free)
    q = GuideOutput(jnp.zeros((n, s)), jnp.tile(jnp.eye(s), (n, 1, 1)),
                    jnp.zeros((n, p, d)), jnp.tile(jnp.eye(d), (n, p, 1, 1)),
                    jnp.zeros((n, p, d, s)))
    inside = jax.vmap(lambda pt, zz: expanded_operator(model, pt, zz, expansion)[2])(
        patches, q.shared_loc)
    assert not np.any(inside)
    exact = predicted_radiance(model, q, patches)
    via = predicted_radiance(model, q, patches, expansion)
    np.testing.assert_allclose(via, exact, rtol=2e-5)
    clipped = predicted_radiance(model, q, patches, expansion, exact_outside=False)
    assert np.max(np.abs(clipped - exact) / exact) > 1e-3   # the check does something
    fit = fit_check(model, q, patches, expansion)
    assert not np.any(fit.inside)


def test_fit_check_does_not_depend_on_the_chunk_size():
    """The expansion is centred on the scene (a fixed sample of its patch rows), not on
    a chunk: the fit check of every pixel is the same with 1, 2 or 8 patch rows per
    chunk."""
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve
    from bayesfluo.shipped import resolve_model
    guide = load_guide(resolve_model("hyplant-fluo-o2a"))
    r = Retriever(guide)
    scene = simulate_scene("hyplant-fluo-o2a", size=(40, 24), seed=905)
    out = [retrieve(scene, guide, RetrieveOptions(chunk_pixels=c), retriever=r,
                    progress=False) for c in (192, 384, 8192)]
    for o in out[1:]:
        np.testing.assert_allclose(o.fit_chi2.values, out[0].fit_chi2.values, rtol=1e-5)
        np.testing.assert_array_equal(o.quality_flag.values, out[0].quality_flag.values)
