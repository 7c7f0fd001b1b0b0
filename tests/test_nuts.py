"""NUTS reference posteriors: the preconditioner is exact, the output is the DataTree of the
scene format, the CLI writes it, and (slow) the posteriors pass simulation-based
calibration."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.diagnostics.sbc import simulate_patch
from bayesfluo.model import ModelConfig
from bayesfluo.nuts import (
    NutsConfig,
    _hessian,
    _potential,
    _Sampler,
    _unwhiten,
    _Whitened,
    _whitened_order,
    _whitening,
    _whitening_blocks,
    laplace,
    parse_pixels,
)


@pytest.fixture(scope="module")
def patch(model_o2a):
    return simulate_patch(model_o2a, ModelConfig(), jax.random.PRNGKey(11), n_pixels=6)


def test_coloured_hessian_equals_dense_hessian(model_o2a, patch):
    data, _ = patch
    p = _potential(model_o2a, ModelConfig(), data, False)
    x = p.x0 + 0.1 * np.random.default_rng(0).normal(size=p.x0.size).astype(np.float32)
    sparse = _hessian(p, x)
    dense = np.asarray(jax.hessian(p.potential)(jnp.asarray(x)), np.float64)
    scale = np.sqrt(np.outer(np.abs(np.diag(dense)), np.abs(np.diag(dense)))) + 1.0
    assert np.max(np.abs(sparse - dense) / scale) < 1e-4


def test_laplace_finds_the_mode_and_whitens(model_o2a, patch):
    data, _ = patch
    p = _potential(model_o2a, ModelConfig(), data, False)
    mode, h, info = laplace(p)
    assert info["converged"]
    _, g = p.value_and_grad(jnp.asarray(mode, jnp.float32))
    # the Newton step left from the mode is small in every coordinate's posterior scale
    # (the search stops at a Newton decrement of 0.5 nats, near float32 resolution)
    step = np.linalg.solve(h, np.asarray(g, np.float64))
    assert np.max(np.abs(step) / np.sqrt(np.diag(np.linalg.inv(h)))) < 0.25
    s = _whitening(h, p.pixel, p.slot)
    np.testing.assert_allclose(s @ s.T @ h, np.eye(h.shape[0]), atol=1e-6)
    # a pixel's coordinates depend only on its own and the shared whitened coordinates
    # (whitened coordinates run pixel by pixel, shared ones last)
    col_pixel = np.sort(np.where(p.pixel < 0, 10**6, p.pixel))
    for i in range(6):
        rows = p.pixel == i
        other = (col_pixel != i) & (col_pixel < 10**6)
        assert np.all(np.abs(s[np.ix_(rows, other)]) < 1e-9 * np.abs(s).max())
        assert np.all(np.abs(s[np.ix_(rows, col_pixel == i)]).max(axis=1) > 0)


def test_fused_potential_equals_the_models(model_o2a, patch):
    """The sampler's potential (block whitening, fused likelihood through the operator's
    expansion) against the model's own potential energy at x = mode + S u, S dense."""
    data, _ = patch
    cfg = ModelConfig()
    p = _potential(model_o2a, cfg, data, False)
    mode, h, _ = laplace(p)
    s = _whitening(h, p.pixel, p.slot)
    c = p.compiled
    at = p.unravel(jnp.asarray(mode, jnp.float32))
    z0 = jnp.stack([at[f"{n}_z"] for n in cfg.free])
    d = dict(data, operator_expansion=c.expansion(data, z0))
    w = _whitening_blocks(s, mode, p.pixel, p.slot)
    u = np.random.default_rng(1).normal(size=(2, mode.size))
    order = _whitened_order(p.pixel, p.slot)
    ns = c.n_shared
    ref_vg = jax.jit(jax.value_and_grad(c.potential))
    vgs = [jax.jit(jax.value_and_grad(f, (0, 1)))
           for f in (c.potential_whitened, c.potential_fused)]
    for ui in u:
        x = mode + s @ ui
        xp, xs = _unwhiten({"p": jnp.asarray(ui[:-ns], jnp.float32),
                            "s": jnp.asarray(ui[-ns:], jnp.float32)}, w)
        np.testing.assert_allclose(np.concatenate([np.ravel(xp), xs]), x[order],
                                   atol=1e-4 * np.abs(x).max())
        ref, gref = ref_vg(jnp.asarray(x, jnp.float32), d)
        for vg in vgs:
            v, (gp, gs) = vg(xp, xs, d)
            assert abs(float(v) - float(ref)) < 1e-5 * abs(float(ref)) + 1e-2
            g = np.concatenate([np.ravel(gp), gs])
            np.testing.assert_allclose(g, np.asarray(gref)[order],
                                       atol=1e-3 * np.abs(gref).max())
    assert c.fused_ok(w, d, jax.random.PRNGKey(0))
    assert not c.fused_ok(w, data, jax.random.PRNGKey(0))  # exact operator: the model's


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


def test_nuts_reference_datatree_and_cli(tmp_path, model_o2a):
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset
    from bayesfluo.simulate import simulate_scene

    scene = simulate_scene("hyplant-fluo-o2a", (4, 4), seed=3, model=model_o2a)
    path = write_dataset(scene, tmp_path / "scene.nc")
    out = tmp_path / "ref.nc"
    rc = main(["nuts", str(path), "--pixels", "0:2,1:3", "--patch-size", "2", "--warmup",
               "150", "--samples", "100", "--chains", "2", "--predictive-draws", "5",
               "--out", str(out)])
    assert rc == 0 and out.exists()
    import xarray as xr

    dt = xr.open_datatree(out, engine="h5netcdf")
    for group in ("posterior", "sample_stats", "observed_data", "posterior_predictive",
                  "constant_data", "convergence"):
        assert group in dt.children, group
    post = dt["posterior"]
    assert dict(post["f760"].sizes) == {"chain": 2, "draw": 100, "pixel": 4}
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
