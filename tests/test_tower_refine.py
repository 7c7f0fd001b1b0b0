"""The Laplace refinement of a tower's scans (``retrieve --model flox --refine``): each
scan's refined posterior is the Laplace approximation at the mode of the model's own
posterior (checked against a mode found here by scipy on NumPyro's potential, and the
Hessian by JAX's), scans are refined one by one (a bad scan does not move another), and
batching the refinement does not change it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
from numpyro.infer.util import potential_energy

from bayesfluo.inference.guide.tower import tower_inputs
from bayesfluo.inference.refine import laplace_refine
from bayesfluo.instruments import get_instrument
from bayesfluo.model import knee_softplus
from bayesfluo.model.laplace import Layout
from bayesfluo.retrieval.chunk import RetrieveOptions
from bayesfluo.retrieval.series import TOWER_REFINE, retrieve_series
from bayesfluo.scene.bands import scene_bands
from bayesfluo.scene.prior import simulate_patch, tower_series

REFINE = RetrieveOptions(refine=True)


@pytest.fixture(scope="module")
def flox_guide():
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.shipped import resolve_model
    return load_guide(resolve_model("flox"))


@pytest.fixture(scope="module")
def series(flox_guide):
    """One block of 64 scans from the tower model's prior predictive (a quarter bare)."""
    patch, truth = simulate_patch(flox_guide.model, jax.random.PRNGKey(71_000), n_pixels=64,
                                  height_m=5.0, snr=None, shot_noise_only=False)
    scene = tower_series(flox_guide.model, [patch], truth["sza_deg"])
    return scene, truth


@pytest.fixture(scope="module")
def refined(flox_guide, series):
    return retrieve_series(series[0], flox_guide, REFINE, progress=False)


def test_refined_scans_sit_at_the_model_mode_with_its_curvature(flox_guide, series,
                                                               refined):
    """For four fluorescing scans the refined F760 median is the transform of the mode
    of the model's posterior (found here by L-BFGS and dense Newton steps on NumPyro's
    potential of the scan) and its 5-95 % quantiles those of the Gaussian with the
    inverse of JAX's Hessian there."""
    scene, truth = series
    model = flox_guide.model
    assert np.all(refined["quality_flag"].values & 16 == 0)      # none left unrefined
    d = tower_inputs(scene, model, flox_guide.feature_mean, flox_guide.feature_sd,
                     get_instrument("flox").reference_radiance, flox_guide.patch_size,
                     scene_bands(scene, "flox"))
    patch = d.patches.index(0)
    k = model.fm.n_basis
    scans = np.flatnonzero(truth["f760"] > 0.5)[:4]
    assert scans.size == 4

    for j in scans:
        # the scan alone (a tower's scans share no latents; the patch's geometry kept)
        one = jax.tree.map(lambda v, j=j: v[j:j + 1] if jnp.ndim(v) >= 1
                           and v.shape[0] == patch.n_pixels else v, patch)
        layout = Layout.of(model, one)

        def pot(x, one=one, layout=layout):
            return potential_energy(model.program, (one, None), {},
                                    layout.unpack(x[None], jnp.zeros(0)))

        grad = jax.jit(jax.value_and_grad(pot))
        hess = jax.jit(jax.hessian(pot))
        x0 = np.zeros(layout.n_local)
        x0[k] = 1.0
        res = scipy.optimize.minimize(lambda x, grad=grad: tuple(
                                          np.asarray(v, np.float64)
                                          for v in grad(jnp.asarray(x, jnp.float32))),
                                      x0, jac=True, method="L-BFGS-B",
                                      options={"maxiter": 5000, "gtol": 1e-4})
        # float32 L-BFGS stops short; dense Newton steps (JAX's Hessian) with halving
        mode = jnp.asarray(res.x, jnp.float32)
        for _ in range(10):
            f, g = grad(mode)
            step, t = jnp.linalg.solve(hess(mode), g), 1.0
            while t > 1e-3 and grad(mode - t * step)[0] > f:
                t /= 2
            mode = mode - t * step
        cov = np.linalg.inv(np.asarray(hess(mode), np.float64))
        x_mode = np.asarray(mode, np.float64)
        sd_u = np.sqrt(cov[k, k])
        scale = float(model.sif_scale(patch.ndvi[j]))

        def f760(u, scale=scale):
            return scale * float(knee_softplus(jnp.float32(u)))

        got = {s: float(refined[f"f760_{s}"].values[j]) for s in ("q05", "q50", "q95")}
        want = {"q05": f760(x_mode[k] - 1.6448536 * sd_u), "q50": f760(x_mode[k]),
                "q95": f760(x_mode[k] + 1.6448536 * sd_u)}
        width = want["q95"] - want["q05"]
        for s in got:
            assert got[s] == pytest.approx(want[s], abs=0.02 * width), (j, s, got, want)


def test_a_bad_scan_does_not_move_the_other_scans_refined_posteriors(flox_guide, series,
                                                                     refined):
    """Scan 10's radiance spiked by 40 % in ten bands: its neighbours' refined F760 is
    what it was (each scan is refined on its own)."""
    scene = series[0].copy(deep=True)
    rad = scene["radiance"].values
    rad[10, 300:310] *= 1.4
    scene["radiance"] = (scene["radiance"].dims, rad)
    again = retrieve_series(scene, flox_guide, REFINE, progress=False)
    others = np.arange(64) != 10
    for s in ("mean", "q05", "q95"):
        np.testing.assert_allclose(again[f"f760_{s}"].values[others],
                                   refined[f"f760_{s}"].values[others], rtol=1e-3, atol=1e-4)
    assert abs(float(again["f760_mean"].values[10] - refined["f760_mean"].values[10])) > 0


@pytest.mark.slow  # 52-86 s on 2 cores; the refined scans' checks above run by default
def test_tower_refinement_in_batches_is_the_refinement_at_once(flox_guide, series):
    """Two tower patches (no shared latents: empty arrays) refined one at a time equal
    both at once."""
    scene = series[0]
    model = flox_guide.model
    d = tower_inputs(scene, model, flox_guide.feature_mean, flox_guide.feature_sd,
                     get_instrument("flox").reference_radiance, 4, scene_bands(scene, "flox"))
    q = flox_guide.encoder.encode(d.features, d.patches.mask)
    assert q.shared_loc.shape[-1] == 0 and d.patches.mask.shape[0] == 4
    whole, info_w = laplace_refine(model, q, d.patches, TOWER_REFINE)
    parts, info_p = laplace_refine(model, q, d.patches, TOWER_REFINE, batch_size=3)
    assert np.all(info_w.converged) and np.all(info_p.converged)
    # the same mode, to a small fraction of each coordinate's posterior sd (the search
    # stops at a Newton decrement of 0.5 for a patch: ~0.02 sd measured; a batch mixed
    # up would put another scan's mode there, many sd away)
    sd = np.sqrt(np.sum(np.asarray(whole.local_tril) ** 2, -1))
    assert np.max(np.abs(parts.local_loc - whole.local_loc) / sd) < 0.1
