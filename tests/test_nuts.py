"""NUTS reference posteriors: the preconditioner is exact, the output is the DataTree of the
scene format, the CLI writes it, and (slow) the posteriors pass simulation-based
calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpyro.infer.util import potential_energy

from bayesfluo.inference.nuts import (
    NutsConfig,
    _compiled,
    _dense_whitening,
    _Sampler,
    _Whitened,
    _whitening,
    parse_pixels,
)
from bayesfluo.model import ModelConfig, OperatorExpansion, SifModel
from bayesfluo.model.laplace import (
    Layout,
    dense_hessian,
    hessian_blocks,
    patch_potential,
)
from bayesfluo.scene.prior import simulate_patch


@pytest.fixture(scope="module")
def o2a_model(model_o2a):
    return SifModel(model_o2a, ModelConfig())


@pytest.fixture(scope="module")
def patch(o2a_model):
    return simulate_patch(o2a_model, jax.random.PRNGKey(11), n_pixels=6)


@pytest.fixture(scope="module")
def mode(o2a_model, patch):
    """The patch's mode and Laplace approximation as NUTS finds them."""
    data, _ = patch
    c = _compiled(o2a_model, data)
    xl, xs = c.start(data)
    return c, c.laplace(xl, xs, data, jnp.int32(NutsConfig().newton_steps))


# 56 s: tests/test_refine.py checks the same blocks against JAX's dense Hessian on every
# default run (through an operator expansion); this one, on the exact operator, with -m slow
@pytest.mark.slow
def test_hessian_blocks_equal_dense_hessian(o2a_model, patch):
    """D + S Hessian-vector products give the exact Hessian of the patch's potential
    (exact operator), pixels coupled only through the shared latents."""
    data, _ = patch
    layout = Layout.of(o2a_model, data)
    c = _compiled(o2a_model, data)
    xl, xs = c.start(data)
    rng = np.random.default_rng(0)
    xl = xl + 0.1 * rng.normal(size=xl.shape).astype(np.float32)
    xs = xs + 0.1 * rng.normal(size=xs.shape).astype(np.float32)
    pot = patch_potential(o2a_model, layout, data)
    sparse = dense_hessian(hessian_blocks(jax.grad(pot, argnums=(0, 1)), xl, xs))
    d, ns = layout.n_local, layout.n_shared

    def flat(v):
        return pot(v[:-ns].reshape(-1, d), v[-ns:])

    dense = np.asarray(jax.hessian(flat)(jnp.concatenate([xl.ravel(), xs])), np.float64)
    scale = np.sqrt(np.outer(np.abs(np.diag(dense)), np.abs(np.diag(dense)))) + 1.0
    assert np.max(np.abs(sparse - dense) / scale) < 1e-4


def test_laplace_finds_the_mode_and_whitens(o2a_model, patch, mode):
    c, m = mode
    data, _ = patch
    assert float(m.decrement) < 0.1
    layout = c.layout
    g = jax.grad(lambda a, b: patch_potential(o2a_model, layout, data)(a, b),
                 argnums=(0, 1))(m.local, m.shared)
    g = np.concatenate([np.ravel(g[0]), g[1]]).astype(np.float64)
    h = dense_hessian(m.blocks)
    # the Newton step left from the mode is small in every coordinate's posterior scale
    # (the search stops after a step whose Newton decrement was below 0.1 nats)
    step = np.linalg.solve(h, g)
    assert np.max(np.abs(step) / np.sqrt(np.diag(np.linalg.inv(h)))) < 0.25
    w = _whitening(m.blocks, m.local, m.shared)
    s = _dense_whitening(w)
    np.testing.assert_allclose(s @ s.T @ h, np.eye(h.shape[0]), atol=1e-6)
    # a pixel's coordinates depend only on its own and the shared whitened coordinates
    # (whitened coordinates run pixel by pixel, shared ones last), and its last (SIF)
    # coordinate only on the last of its own
    d, ns = layout.n_local, layout.n_shared
    pix = np.repeat(np.arange(6), d)
    for i in range(6):
        rows = pix == i
        other = np.concatenate([(pix != i), np.zeros(ns, bool)])
        own = np.concatenate([rows, np.zeros(ns, bool)])
        rows = np.concatenate([rows, np.zeros(ns, bool)])
        assert np.all(s[np.ix_(rows, other)] == 0.0)
        assert np.all(np.abs(s[np.ix_(rows, own)]).max(axis=1) > 0)
        assert np.all(np.tril(np.asarray(w.a[i]), -1) == 0.0)
    # the expansion NUTS samples with is the second-order one about the mode
    assert isinstance(m.expansion, OperatorExpansion)
    np.testing.assert_array_equal(np.asarray(m.expansion.z0), np.asarray(m.shared))


def _made_up_expansion(model, patch, z0, key):
    """An expansion with the model's operator at the prior mean and made-up slopes and
    curvatures: the expanded potential must equal the model's whatever the operator."""
    op = model.operator(patch)
    s = z0.shape[0]
    keys = iter(jax.random.split(key, 16))
    return OperatorExpansion(
        z0, op,
        jax.tree.map(lambda v: 0.02 * v[..., None] * jax.random.normal(next(keys),
                                                                     v.shape + (s,)), op),
        jax.tree.map(lambda v: 0.01 * v[..., None, None] * jax.random.normal(
            next(keys), v.shape + (s, s)), op))


@pytest.mark.parametrize("case", ["o2a", "o2a-masked", "red-peak", "table"])
def test_expanded_potential_equals_the_models(case, model_o2a, model_full):
    """The potential NUTS samples with through the operator's expansion
    (:meth:`SifModel.expanded_potential`, written out) equals NumPyro's potential energy
    of the model's program, value and gradient, at random points far from the mode:
    O2-A window, masked pixels carrying radiance that is not theirs, a window with the
    red peak (a second SIF latent), and an external table (its perturbations, one of them
    per band group, as shared latents)."""
    fm = model_full if case == "red-peak" else model_o2a
    model = SifModel(fm, ModelConfig())
    assert model.has_red == (case == "red-peak")
    data, _ = simulate_patch(model, jax.random.PRNGKey(5), n_pixels=5)
    if case == "o2a-masked":
        data = data.replace(mask=jnp.asarray([1.0, 0.0, 1.0, 0.0, 1.0]),
                            radiance=data.radiance.at[1].set(1e3).at[3].set(-5.0))
    if case == "table":
        from bayesfluo.io.tables import export_atmosphere, external_atmosphere
        from bayesfluo.model import ExternalModel
        from bayesfluo.physics.atmosphere import AtmosphereParams

        atm = AtmosphereParams(*(jnp.float32(v) for v in (1000.0, 0.12, 1.3, 1.5)))
        ext = external_atmosphere(fm, export_atmosphere(fm, atm, data.geometry),
                                  group_edges_nm=(765.0,))
        model = model.replace(table=ExternalModel(ext))
        assert [n for n, _ in model.shared_sites()] == [
            "spectral_shift_z", "table_tau_scale_z", "table_up_scale_z",
            "table_path_scale_z"]
    layout = Layout.of(model, data)
    assert layout.n_shared == model.shared_size == (5 if case == "table" else 3)
    rng = np.random.default_rng(3)
    exp = _made_up_expansion(model, data, jnp.asarray(rng.normal(size=layout.n_shared)
                                                      * 0.3, jnp.float32),
                             jax.random.PRNGKey(1))

    def ours(xl, xs):
        return model.expanded_potential(data, exp, layout.unpack(xl, xs))

    def numpyros(xl, xs):
        return potential_energy(model.program, (data, exp), {}, layout.unpack(xl, xs))

    vg = [jax.jit(jax.value_and_grad(f, (0, 1))) for f in (ours, numpyros)]
    for _ in range(4):
        xl = jnp.asarray(1.5 * rng.normal(size=(5, layout.n_local)), jnp.float32)
        xs = jnp.asarray(rng.normal(size=layout.n_shared), jnp.float32)
        (v, g), (v_ref, g_ref) = (f(xl, xs) for f in vg)
        assert np.isfinite(float(v))
        assert abs(float(v) - float(v_ref)) < 1e-5 * abs(float(v_ref)) + 1e-2
        for a, b in zip(g, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                       atol=1e-3 * float(np.abs(np.asarray(b)).max()))


def test_expanded_potential_is_the_samplers(o2a_model, patch, mode):
    """At ``x = mode + S u`` (S dense) the sampler's block unwhitening gives the same
    point, and its potential through the expansion the model's (NumPyro's) energy."""
    from bayesfluo.inference.nuts import _unwhiten

    c, m = mode
    data, _ = patch
    w64 = _whitening(m.blocks, m.local, m.shared)
    w = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), w64)
    s = _dense_whitening(w64)
    x_mode = np.concatenate([np.ravel(m.local), m.shared]).astype(np.float64)
    ns = c.n_shared
    ref = jax.jit(jax.value_and_grad(lambda a, b: potential_energy(
        o2a_model.program, (data, m.expansion), {}, c.layout.unpack(a, b)), (0, 1)))
    vg = jax.jit(jax.value_and_grad(c.potential_expanded, (0, 1)))
    for ui in np.random.default_rng(1).normal(size=(2, x_mode.size)):
        x = x_mode + s @ ui
        xp, xs = _unwhiten({"p": jnp.asarray(ui[:-ns], jnp.float32),
                            "s": jnp.asarray(ui[-ns:], jnp.float32)}, w)
        np.testing.assert_allclose(np.concatenate([np.ravel(xp), xs]), x,
                                   atol=1e-4 * np.abs(x).max())
        v_ref, g_ref = ref(xp, xs)
        v, g = vg(xp, xs, (data, m.expansion))
        assert abs(float(v) - float(v_ref)) < 1e-5 * abs(float(v_ref)) + 1e-2
        for a, b in zip(g, g_ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                       atol=1e-3 * float(np.abs(np.asarray(b)).max()))


def test_sampler_draws_a_gaussian():
    """NUTS with warm-up adaptation on a Gaussian with scales from 0.05 to 20 and a
    correlated shared block: means and variances within Monte Carlo error (4.5 standard
    errors from the bulk ESS per check: false-failure rate < 1e-4 over the 20 checks)."""
    import arviz as az

    n_pix, k, ns = 4, 2, 2
    sd_p = np.geomspace(0.05, 20.0, n_pix * k).reshape(n_pix, k)
    cov_s = np.array([[1.0, 0.9], [0.9, 1.0]]) * 4.0
    prec_s = np.linalg.inv(cov_s)

    def pot(xp, xs, d):
        return 0.5 * jnp.sum((xp / sd_p) ** 2) + 0.5 * xs @ prec_s @ xs

    eye = np.broadcast_to(np.eye(k), (n_pix, k, k))
    w = _Whitened(jnp.zeros((n_pix, k)), jnp.zeros(ns), jnp.asarray(eye, jnp.float32),
                  jnp.zeros((n_pix, k, ns)), jnp.eye(ns))
    res = _Sampler(pot, n_pix, k, ns, 8).run(
        jax.random.PRNGKey(3), jax.random.normal(jax.random.PRNGKey(4), (4, n_pix * k + ns)),
        w, {}, num_warmup=250, num_samples=300, target_accept=0.8)
    u = res["u"]  # (chain, draw, n)
    assert u.shape == (4, 300, n_pix * k + ns) and res["diverging"].sum() == 0
    sd = np.concatenate([sd_p.ravel(), np.sqrt(np.diag(cov_s))])
    for i in range(u.shape[-1]):
        ess = float(az.ess(u[..., i]))
        assert abs(u[..., i].mean()) < 4.5 * sd[i] / np.sqrt(ess), i
        assert abs(u[..., i].var() / sd[i] ** 2 - 1.0) < 4.5 * np.sqrt(2.0 / ess), i
    corr = np.corrcoef(u[..., -2].ravel(), u[..., -1].ravel())[0, 1]
    assert abs(corr - 0.9) < 0.05


def test_parse_pixels():
    r, c = parse_pixels("2:4,0:3", (10, 10))
    assert list(zip(r, c, strict=True)) == [(2, 0), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    r, c = parse_pixels("1,2;3,4", (10, 10))
    assert r.tolist() == [1, 3] and c.tolist() == [2, 4]
    with pytest.raises(ValueError, match="outside"):
        parse_pixels("0:20,0:2", (10, 10))
    with pytest.raises(ValueError, match="cannot read pixels"):
        parse_pixels("a,b", (10, 10))


# 64-148 s on 2 cores (compilation); by default, tests/test_report_runs.py::
# test_airborne_nuts_report runs the same command on an airborne scene and reports it
@pytest.mark.slow
def test_nuts_reference_datatree_and_cli(tmp_path, model_o2a):
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset
    from bayesfluo.scene.simulate import simulate_scene

    scene = simulate_scene("hyplant-fluo-o2a", (4, 4), seed=3, model=model_o2a)
    path = write_dataset(scene, tmp_path / "scene.nc")
    out = tmp_path / "ref.nc"
    rc = main(["nuts", str(path), "--pixels", "0:2,1:3", "--patch-size", "2", "--warmup",
               "60", "--samples", "40", "--chains", "2", "--predictive-draws", "5",
               "--out", str(out)])
    assert rc == 0 and out.exists()
    import xarray as xr

    dt = xr.open_datatree(out, engine="h5netcdf")
    for group in ("posterior", "sample_stats", "observed_data", "posterior_predictive",
                  "constant_data", "convergence"):
        assert group in dt.children, group
    post = dt["posterior"]
    assert dict(post["f760"].sizes) == {"chain": 2, "draw": 40, "pixel": 4}
    assert post["surface_pressure"].dims == ("chain", "draw", "patch")
    assert post["reflectance_coeffs"].dims == ("chain", "draw", "pixel", "basis")
    assert dt["posterior_predictive"]["radiance"].sizes["band"] == model_o2a.n_bands
    assert dt["observed_data"]["radiance"].dims == ("pixel", "band")
    const = dt["constant_data"]
    pos = sorted(zip(const["y"].values, const["x"].values, strict=True))
    assert pos == [(0, 1), (0, 2), (1, 1), (1, 2)]
    conv = dt["convergence"]
    for v in ("r_hat", "ess_bulk", "ess_tail", "r_hat_max", "divergences", "converged"):
        assert conv[v].sizes == {"pixel": 4}, v
    assert np.all(np.isfinite(conv["r_hat"].values))
    # the observed radiance is the scene's, pixel by pixel
    obs = dt["observed_data"]["radiance"].values
    np.testing.assert_allclose(obs, scene["radiance"].values[const["y"].values,
                                                             const["x"].values])
    # the scene's F760 (simulated with its own smile and atmosphere fields, so a model
    # of one atmosphere per 2x2 patch is only close) lies within the posterior's range
    f = post["f760"].values.reshape(-1, 4)
    truth = scene["true_f760"].values[const["y"].values, const["x"].values]
    lo, hi = np.quantile(f, [0.0005, 0.9995], axis=0)
    assert np.all((truth > lo - 0.3) & (truth < hi + 0.3))


def test_nuts_cli_errors(tmp_path, capsys):
    from bayesfluo.cli import main

    rc = main(["nuts", str(tmp_path / "missing.nc"), "--pixels", "0:2,0:2", "--out",
               str(tmp_path / "x.nc")])
    assert rc == 2 and "missing.nc" in capsys.readouterr().err


@pytest.mark.slow
def test_sbc_at_nominal_conditions(model_o2a):
    """8 patches x 64 pixels at nominal conditions: SBC of F760 and four other latents,
    90 % coverage. Binned binomial tests at false-failure rate 1e-4 each; the pixels of a
    patch share its atmosphere, so their ranks are not independent: the test uses one
    bin count per patch-pixel, accepting the slight loss of nominal level."""
    from bayesfluo.diagnostics.calibration import coverage_test, sbc_test
    from bayesfluo.diagnostics.sbc import RANKED, validate

    ds = validate(model_o2a, 8, nuts=NutsConfig(num_warmup=300, num_samples=250,
                                                predictive_draws=0), seed=5, progress=False)
    n_rank = ds.attrs["n_rank_draws"]
    for name in RANKED:
        res = sbc_test(ds[f"rank_{name}"].values, n_rank)
        assert res.passed, (name, res.counts)
    hits = {float(lev): ds["hit_f760"].sel(level=lev).values for lev in ds.level.values}
    assert all(r.passed for r in coverage_test(hits))
