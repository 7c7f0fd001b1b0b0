"""The amortized guide: closed-form summaries, its NumPyro program, saving and loading."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro import handlers

from bayesfluo.inference.guide import (
    GuideOutput,
    guide_program,
    load_guide,
    new_encoder,
    sample_draws,
    summaries,
)
from bayesfluo.inference.guide.encoder import _tril
from bayesfluo.model import ModelConfig, Patch, SifModel, knee_softplus


def _random_output(key, n_patch, n_pix, d, s):
    k = jax.random.split(key, 5)
    return GuideOutput(
        shared_loc=jax.random.normal(k[0], (n_patch, s)) * 0.5,
        shared_tril=_tril(jax.random.normal(k[1], (n_patch, s * (s + 1) // 2)) * 0.3 - 1.0, s),
        local_loc=jax.random.normal(k[2], (n_patch, n_pix, d)),
        local_tril=_tril(jax.random.normal(k[3], (n_patch, n_pix, d * (d + 1) // 2)) * 0.3
                         - 1.5, d),
        coupling=jax.random.normal(k[4], (n_patch, n_pix, d, s)) * 0.3)


def test_summaries_match_monte_carlo(model_o2a):
    """Closed-form F760 mean, sd and quantiles and the shared latents' moments against
    200,000 joint draws of the same Gaussian. The tolerance is 5 Monte Carlo standard
    errors (false-failure rate below 1e-5 per check; seeded)."""
    cfg = ModelConfig()
    model = SifModel(model_o2a, cfg)
    d, s = model_o2a.n_basis + 1, len(cfg.free)
    q = _random_output(jax.random.PRNGKey(0), 2, 3, d, s)
    ndvi = jnp.array([[0.1, 0.5, 0.8], [0.7, 0.3, 0.9]])
    p0 = jnp.array([1000.0, 950.0])
    sm = summaries(q, model, ndvi, p0)
    n = 200_000
    zs, u = sample_draws(q, jax.random.PRNGKey(1), n)
    # float64 for the Monte Carlo sums (float32 along axis 0 loses ~1e-3)
    f = np.asarray(model.sif_scale(ndvi) * knee_softplus(u[..., d - 1]), np.float64)
    m, sd = f.mean(0), f.std(0)
    np.testing.assert_array_less(np.abs(np.asarray(sm["f760"]["mean"]) - m), 5 * sd / np.sqrt(n))
    np.testing.assert_allclose(np.asarray(sm["f760"]["sd"]), sd, rtol=0.02)
    for p, name in ((0.05, "q05"), (0.5, "q50"), (0.95, "q95")):
        # quantile standard error ~ sqrt(p (1-p) / n) / density; checked via the CDF instead
        frac = (f <= np.asarray(sm["f760"][name])[None]).mean(0)
        np.testing.assert_array_less(np.abs(frac - p), 5 * np.sqrt(p * (1 - p) / n))
    press = np.asarray(p0, np.float64)[None] + cfg.pressure_sd * np.asarray(zs[..., 0],
                                                                             np.float64)
    np.testing.assert_allclose(np.asarray(sm["surface_pressure"]["mean"]), press.mean(0),
                               atol=5 * press.std(0).max() / np.sqrt(n))
    np.testing.assert_allclose(np.asarray(sm["surface_pressure"]["sd"]), press.std(0),
                               rtol=0.02)


def test_guide_density_is_that_of_the_constrained_latents(model_o2a):
    """The guide's log density of a trace equals the Gaussian density of the
    unconstrained draw minus the log Jacobian of the SIF transform (what the ELBO needs)."""
    import numpyro.distributions as dist
    from numpyro.infer.util import log_density

    model = SifModel(model_o2a, ModelConfig())
    enc = new_encoder(model_o2a.n_bands + 8, model, 16, 1, jax.random.PRNGKey(0))
    n_patch, n_pix = 2, 4
    feats = jax.random.normal(jax.random.PRNGKey(1), (n_patch, n_pix, model_o2a.n_bands + 8))
    patches = _patches(n_patch, n_pix)
    tr = handlers.trace(handlers.seed(guide_program, 3)).get_trace(enc, model, patches, feats)
    lq, _ = log_density(guide_program, (enc, model, patches, feats), {},
                        {k: v["value"] for k, v in tr.items() if v["type"] == "sample"})
    q = jax.vmap(enc)(feats, patches.mask)
    zs = tr["shared_u"]["value"][:, 0]
    u = tr["local_u"]["value"]
    loc = q.local_loc + jnp.einsum("bpds,bs->bpd", q.coupling, zs - q.shared_loc)
    want = (dist.MultivariateNormal(q.shared_loc, scale_tril=q.shared_tril).log_prob(zs).sum()
            + dist.MultivariateNormal(loc, scale_tril=q.local_tril).log_prob(u).sum()
            - jnp.sum(jax.nn.log_sigmoid(u[..., -1] / 0.1)))
    np.testing.assert_allclose(float(lq), float(want), rtol=1e-5)
    raw = tr["sif_far_red_raw"]["value"]
    np.testing.assert_allclose(np.asarray(raw), np.asarray(knee_softplus(u[..., -1])),
                               rtol=1e-6)
    # and the guide's sites are exactly the model's latent sites
    mtr = handlers.trace(handlers.seed(model.batch_program, 0)).get_trace(patches)
    latent = {k for k, v in mtr.items() if v["type"] == "sample" and k != "radiance"}
    assert latent == {k for k, v in tr.items() if v["type"] == "sample"
                      and not v["infer"].get("is_auxiliary")}


def _patches(n_patch, n_pix):
    from bayesfluo.physics.forward import Geometry
    return Patch(radiance=None, ndvi=jnp.full((n_patch, n_pix), 0.6),
                 mask=jnp.ones((n_patch, n_pix)),
                 geometry=Geometry(*[jnp.full((n_patch,), v, jnp.float32)
                                     for v in (30.0, 0.0, 0.0, 100.0, 700.0, 1.0)]),
                 noise_a=jnp.full((n_patch,), 0.004), noise_b=jnp.full((n_patch,), 0.0),
                 surface_pressure0=jnp.full((n_patch,), 1000.0))


def test_shipped_models_load_and_corrupt_files_are_named(tmp_path):
    import shutil

    from bayesfluo.shipped import resolve_model, shipped_models
    assert {"hyplant-fluo-o2a", "desis"} <= set(shipped_models())
    g = load_guide(resolve_model("hyplant-fluo-o2a"))
    assert g.instrument == "hyplant-fluo-o2a" and g.feature_mean.size == 273 + 8
    bad = tmp_path / "m"
    shutil.copytree(resolve_model("hyplant-fluo-o2a"), bad)
    w = bad / "weights.eqx"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(ValueError, match="weights.eqx"):
        load_guide(bad)
    (bad / "model.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_guide(bad)
    with pytest.raises(FileNotFoundError, match="no model at"):
        resolve_model(tmp_path / "nothing")


def test_save_load_round_trip(tmp_path):
    from bayesfluo.shipped import resolve_model
    g = load_guide(resolve_model("desis"))
    g.save(tmp_path / "copy")
    h = load_guide(tmp_path / "copy")
    x = jnp.ones((64, g.feature_mean.size))
    a, b = g.encoder(x, jnp.ones(64)), h.encoder(x, jnp.ones(64))
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_shipped_guides_know_the_spectroscopy_and_older_ones_warn(tmp_path, recwarn):
    """The shipped guides were trained on the O2 table with line mixing and CIA (their
    model.json says so; loading them is quiet); a guide trained before says it should be
    retrained."""
    import json
    import shutil
    import warnings

    from bayesfluo.physics.o2 import SPECTROSCOPY
    from bayesfluo.shipped import resolve_model
    for name in ("hyplant-fluo-o2a", "desis"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            g = load_guide(resolve_model(name))
        assert g.info["spectroscopy"] == SPECTROSCOPY
    old = tmp_path / "old"
    shutil.copytree(resolve_model("desis"), old)
    meta = json.loads((old / "model.json").read_text())
    del meta["info"]["spectroscopy"]
    (old / "model.json").write_text(json.dumps(meta))
    with pytest.warns(UserWarning, match="line mixing.*retrain"):
        load_guide(old)



def _tril_reference(raw, n):
    """Lower-triangular factor by scatter (row-major), exp of the clipped diagonal."""
    idx = np.tril_indices(n)
    m = jnp.zeros(raw.shape[:-1] + (n, n), raw.dtype).at[..., idx[0], idx[1]].set(raw)
    diag = jnp.exp(jnp.clip(jnp.diagonal(m, axis1=-2, axis2=-1), -12.0, 3.0))
    eye = jnp.eye(n, dtype=bool)
    return jnp.where(eye, diag[..., None, :] * eye, m)


def test_tril_matches_the_scatter_construction():
    raw = jax.random.normal(jax.random.PRNGKey(3), (4, 5, 28)) * 4.0
    np.testing.assert_array_equal(np.asarray(_tril(raw, 7)), np.asarray(_tril_reference(raw, 7)))


def test_reference_expansion_is_the_taylor_series_and_tracks_the_exact_reference(model_o2a):
    """The encoder's reference spectrum at each pixel's geometry: the float32 evaluation of
    the second-order series equals value + J d + d' H d / 2 in float64 numpy, and stays
    close to the exact grey-surface log radiance over a scene's spread of
    geometries (sun zenith +-3 deg, view zenith 0-12 deg, terrain +-150 m)."""
    from bayesfluo.inference.guide import (
        expand_reference,
        geometry_coordinates,
        reference_expansion,
        reference_log_radiance,
    )

    model = SifModel(model_o2a, ModelConfig())
    centre = (30.0, 6.0, 200.0, 800.0)
    exp = jax.jit(lambda *g: reference_expansion(model, *g))(*centre)
    rng = np.random.default_rng(5)
    n = 12
    sza = rng.uniform(27.0, 33.0, n).astype(np.float32)
    vza = rng.uniform(0.0, 12.0, n).astype(np.float32)
    surf = rng.uniform(50.0, 350.0, n).astype(np.float32)
    sens = np.full(n, 800.0, np.float32)
    got = np.asarray(expand_reference(exp, sza, vza, surf, sens), np.float64)
    d = np.asarray(geometry_coordinates(sza, vza, surf, sens), np.float64) - np.asarray(
        exp.g0, np.float64)
    jac, hess = np.asarray(exp.jac, np.float64), np.asarray(exp.hess, np.float64)
    series = (np.asarray(exp.value, np.float64) + d @ jac.T
              + 0.5 * np.einsum("bjk,nj,nk->nb", hess, d, d))
    np.testing.assert_allclose(got, series, atol=2e-5)
    exact = np.asarray(jax.jit(lambda *g: reference_log_radiance(model, *g))(
        sza, vza, surf, sens))
    change = np.abs(exact - np.asarray(exp.value)).max()
    assert change > 0.02                     # the geometries do change the reference
    assert np.abs(got - exact).max() < 0.05 * change
