"""Whole-scene retrieval with the shipped guide: bad pixels, chunking, output format,
calibration at nominal conditions, the CLI and the demo."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.inference.guide import GuideOutput, summaries
from bayesfluo.io import write_dataset
from bayesfluo.retrieval.api import QUALITY_FLAGS, RetrieveOptions, retrieve
from bayesfluo.scene.simulate import simulate_scene

from .test_guide import _tril_reference


@pytest.fixture(scope="module")
def scene(model_o2a):
    return simulate_scene("hyplant-fluo-o2a", (20, 13), seed=2, model=model_o2a)


@pytest.fixture(scope="module")
def result(scene, guide, retriever):
    return retrieve(scene, guide, RetrieveOptions(n_draws=8), retriever=retriever,
                    progress=False)


def test_every_output_variable_has_units_and_names(result):
    for name in ("f760", "sif_peak", "reflectance760", "surface_pressure", "aot550",
                 "spectral_shift"):
        for stat in ("mean", "sd", "q05", "q50", "q95"):
            v = result[f"{name}_{stat}"]
            assert v.dims == ("y", "x") and v.shape == (20, 13)
    for v in result.data_vars.values():
        assert "units" in v.attrs and "long_name" in v.attrs, v.name
    assert result["quality_flag"].attrs["flag_meanings"].split() == list(QUALITY_FLAGS)
    assert result["f760_draws"].dims == ("y", "x", "draw")
    for k in ("model", "bayesfluo_version", "created", "input", "Conventions"):
        assert k in result.attrs
    # ordered summaries everywhere
    q05, q50, q95 = (result[f"f760_{s}"].values for s in ("q05", "q50", "q95"))
    assert np.all(q05 <= q50) and np.all(q50 <= q95) and np.all(result.f760_sd.values > 0)


def test_bad_pixels_are_flagged_and_the_rest_unharmed(scene, guide, retriever, result):
    bad = scene.copy(deep=True)
    rad = bad["radiance"].values
    rad[0, 0, 10] = np.nan          # NaN in one band
    rad[1, 1, :] = -5.0             # negative radiance
    rad[2, 2, :] = np.inf
    bad["mask"] = (("y", "x"), np.ones((20, 13), np.int8))
    bad["mask"].values[3, 3] = 0    # masked by the user
    # a whole patch of NaN: its pixels flagged, the others unaffected
    rad[8:16, 8:13, :] = np.nan
    res = retrieve(bad, guide, retriever=retriever, progress=False)
    flag = res["quality_flag"].values
    for (r, c) in ((0, 0), (1, 1), (2, 2), (3, 3)):
        assert flag[r, c] & QUALITY_FLAGS["masked_input"]
        assert np.isnan(res["f760_mean"].values[r, c])
    assert res["input_flag"].values[1, 1] == 4 and res["input_flag"].values[2, 2] == 2
    assert np.all(flag[8:16, 8:13] & QUALITY_FLAGS["masked_input"])
    # pixels of untouched patches: identical to the clean retrieval
    same = np.ones((20, 13), bool)
    same[:8, :8] = False
    same[8:16, 8:13] = False
    np.testing.assert_array_equal(res["f760_mean"].values[same], result["f760_mean"].values[same])
    # good pixels of the damaged patch: finite, and moved by much less than their sd
    keep = np.ones((8, 8), bool)
    keep[[0, 1, 2, 3], [0, 1, 2, 3]] = False
    d = np.abs(res["f760_mean"].values[:8, :8] - result["f760_mean"].values[:8, :8])[keep]
    assert np.all(np.isfinite(d))
    assert np.all(d < 0.5 * result["f760_sd"].values[:8, :8][keep])


def test_chunking_does_not_change_results(scene, guide, retriever, result):
    small = retrieve(scene, guide, RetrieveOptions(chunk_pixels=64, n_draws=8),
                     retriever=retriever, progress=False)
    for v in ("f760_mean", "f760_sd", "surface_pressure_mean", "quality_flag", "f760_draws"):
        np.testing.assert_allclose(small[v].values, result[v].values, rtol=2e-5, atol=1e-6)
    # the fit's band operators are batched differently: float32 rounding only
    np.testing.assert_allclose(small["fit_chi2"].values, result["fit_chi2"].values, rtol=3e-4)


def test_wrong_scene_is_refused_with_the_reason(guide, model_o2a, scene):
    other = simulate_scene("desis", (8, 8), seed=0)
    with pytest.raises(ValueError, match="from 'desis'"):
        retrieve(other, guide, progress=False)
    shifted = scene.assign_coords(wavelength=scene["wavelength"] + 0.5)
    shifted["wavelength"].attrs = scene["wavelength"].attrs
    with pytest.raises(ValueError, match="do not cover the hyplant-fluo-o2a window"):
        retrieve(shifted, guide, progress=False)
    with pytest.raises(ValueError, match="ndvi"):
        retrieve(scene.drop_vars("ndvi"), guide, progress=False)


def test_narrower_scene_is_refused_with_the_model_that_fits_it(tmp_path, scene, capsys):
    """A HyPlant O2-A scene (750-780 nm) for the DESIS model (655-795 nm): the command
    line says the scene is narrower than the model's window and names the shipped model
    of the scene's window."""
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset

    path = write_dataset(scene, tmp_path / "o2a.nc")
    assert main(["retrieve", str(path), "--model", "desis", "--quiet", "--out",
                 str(tmp_path / "r.nc")]) == 2
    err = capsys.readouterr().err
    assert "(750-780 nm), which does not hold the window of the model for 'desis'" in err
    assert err.rstrip().endswith("(the shipped one: --model hyplant-fluo-o2a)")
    assert not (tmp_path / "r.nc").exists()


def test_calibrated_at_nominal_conditions(guide, model_o2a):
    """90 % intervals of F760 on 16 fresh patches (1024 pixels) drawn from the prior at
    nominal conditions. Pixels of a patch share its atmosphere, so they are not
    independent: the bounds [0.827, 0.973] are the binomial bounds at false-failure rate
    1e-4 for an effective sample of 256 (a design effect of 4). Seeded."""
    from bayesfluo.diagnostics.guide_check import evaluate_simulated
    ds = evaluate_simulated(guide, 16, seed=777, with_bound=False, progress=False)
    hit = ((ds.truth_f760 >= ds.q05_f760) & (ds.truth_f760 <= ds.q95_f760)).mean()
    assert 0.827 <= float(hit) <= 0.973
    rmse = float(np.sqrt(((ds.mean_f760 - ds.truth_f760) ** 2).mean()))
    assert rmse < 0.3


def test_cli_retrieve_and_errors(tmp_path, scene, capsys):
    path = write_dataset(scene, tmp_path / "scene.nc")
    out = tmp_path / "res.nc"
    assert main(["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--out", str(out),
                 "--quiet"]) == 0
    ds = xr.open_dataset(out)
    assert ds.attrs["input"] == "scene.nc" and "f760_mean" in ds
    assert main(["retrieve", str(path), "--model", str(tmp_path / "nomodel"), "--out",
                 str(tmp_path / "x.nc")]) == 2
    assert "no model at" in capsys.readouterr().err
    assert not (tmp_path / "x.nc").exists()


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--size", "16x16", "--out-dir", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "RMSE" in text and "90 % interval" in text
    for f in ("demo_scene.nc", "demo_result.nc", "demo_f760.png"):
        assert (tmp_path / f).stat().st_size > 1000


def test_out_of_distribution_geometry_is_flagged(guide, retriever, model_o2a, result):
    """A sun zenith of 72 deg lies outside the training range (15-60 deg): every usable
    pixel is flagged out_of_distribution; the nominal scene (30 deg) has none."""
    far = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=4, sza_deg=72.0, model=model_o2a)
    res = retrieve(far, guide, RetrieveOptions(quality=False), retriever=retriever,
                   progress=False)
    ood = QUALITY_FLAGS["out_of_distribution"]
    assert np.all(res["quality_flag"].values & ood)
    assert not np.any(result["quality_flag"].values & ood)


def test_spectral_artefact_is_flagged_poor_fit(scene, guide, retriever, result):
    """Pixels given a spectral artefact the model cannot produce (a spike of 40 noise sd
    in 3 bands, as a hot detector element or a stray-light glint) are flagged
    ``poor_fit`` (by the spike statistic: the chi-square over 273 bands dilutes it
    below the misfit of real scenes): their fit chi-square rises by at least half the
    artefact's own weight
    (the fit does not absorb it; it can rise by more, as the encoder's mean is pulled by
    the spike: 1-3x measured for both shipped HyPlant encoders and several band choices);
    pixels away from them keep their chi-square."""
    from bayesfluo.scene.grid import noise_coefficients
    a, b = noise_coefficients(scene)
    art = scene.copy(deep=True)
    rad = art["radiance"].values
    hit = [(3, 4), (10, 7), (15, 1)]
    bands = [20, 21, 40]
    for y, x in hit:
        sd = np.sqrt(a * rad[y, x, bands] + b)
        rad[y, x, bands] += 40.0 * sd
    res = retrieve(art, guide, RetrieveOptions(), retriever=retriever, progress=False)
    poor = QUALITY_FLAGS["poor_fit"]
    nb = scene.sizes["band"]
    added = 3 * 40.0 ** 2 / nb      # the artefact's reduced chi-square if left unfitted
    # at least one of the pixels fitted well before: its flag is the artefact's doing
    assert any(not result["quality_flag"].values[y, x] & poor for y, x in hit)
    for y, x in hit:
        assert res["quality_flag"].values[y, x] & poor
        rise = float(res.fit_chi2[y, x] - result.fit_chi2[y, x])
        assert rise > 0.5 * added, (rise, added)
    far = np.ones((20, 13), bool)
    for y, x in hit:   # pixels of other patches than the artefacts'
        far[(y // 8) * 8:(y // 8) * 8 + 8, (x // 8) * 8:(x // 8) * 8 + 8] = False
    np.testing.assert_allclose(res.fit_chi2.values[far], result.fit_chi2.values[far],
                               rtol=1e-5)


def test_nadir_scene_retrieves(scene, guide, retriever, result):
    """A scene viewed exactly at nadir (vza 0 everywhere) gives finite posteriors close to
    those of the same radiance with its real, slightly oblique, view angles."""
    nadir = scene.copy()
    nadir["vza"] = xr.zeros_like(scene["vza"])
    res = retrieve(nadir, guide, RetrieveOptions(quality=False), retriever=retriever,
                   progress=False)
    ok = result["input_flag"].values == 0
    assert np.all(np.isfinite(res.f760_mean.values[ok]))
    assert np.all(np.isfinite(res.f760_sd.values[ok]))
    assert float(np.median(np.abs(res.f760_mean - result.f760_mean).values[ok])) < 0.5


# --- the optimised retrieval against straightforward reference evaluations -------------

def reference_encode(enc, features, mask):
    """The encoder's definition, one patch (P, F) at a time, one pixel at a time through
    the equinox modules, the per-pixel head on the concatenation [h_i, pooled, m_s]."""
    def patch(x, mk):
        h = jax.vmap(enc.trunk)(x)
        w = mk[:, None]
        pooled = jnp.sum(h * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
        scores = jnp.where(w > 0, jax.vmap(enc.attention)(h), -1e9)
        att = jax.nn.softmax(scores, axis=0) * w
        att = att / jnp.maximum(att.sum(0), 1e-9)
        s, d = enc.n_shared, enc.n_local
        out_s = enc.patch_head(jnp.concatenate([pooled, (att.T @ h).ravel()]))
        pooled_x = jnp.sum(x * w, 0) / jnp.maximum(jnp.sum(w), 1.0)
        m_s = out_s[:s] + enc.shared_linear(pooled_x)[:s]
        ctx = jnp.concatenate([pooled, m_s])
        out = jax.vmap(lambda hi: enc.pixel_head(jnp.concatenate([hi, ctx])))(h)
        return GuideOutput(m_s, _tril_reference(out_s[s:s + s * (s + 1) // 2], s),
                           out[:, :d] + jax.vmap(enc.local_linear)(x),
                           _tril_reference(out[:, d:d + d * (d + 1) // 2], d),
                           out[:, d + d * (d + 1) // 2:].reshape(-1, d, s))
    return jax.jit(jax.vmap(patch))(features, mask)


def reference_summaries(q, fm, cfg, ndvi, p0):
    """Summaries from the full marginal covariance ``L L^T + A L_s L_s^T A^T`` of each
    pixel (matrix products), F760 by the same quadrature (:func:`_quantity`)."""
    from bayesfluo.inference.guide.summaries import _quantity
    from bayesfluo.model import (
        knee_softplus,
        reflectance_prior,
        reflectance_weights,
        shared_values,
    )
    from bayesfluo.model import sif_scale as scale_of
    from bayesfluo.physics.surface import SifParams, sif_spectrum
    k = fm.n_basis
    cov_s = q.shared_tril @ jnp.swapaxes(q.shared_tril, -1, -2)
    cov = (q.local_tril @ jnp.swapaxes(q.local_tril, -1, -2)
           + q.coupling @ cov_s[:, None] @ jnp.swapaxes(q.coupling, -1, -2))
    sd = jnp.sqrt(jnp.diagonal(cov, axis1=-2, axis2=-1))
    scale = scale_of(ndvi, cfg)
    out = {"f760": _quantity(q.local_loc[..., k], sd[..., k],
                             lambda v: scale[..., None] * knee_softplus(v))}
    far = SifParams(0.0, 1.0)
    ratio = sif_spectrum(far.centre_far_red, far) / sif_spectrum(760.0, far)
    out["sif_peak"] = {s: v * ratio for s, v in out["f760"].items()}
    mu, chol = reflectance_prior(fm, cfg)
    w = reflectance_weights(fm, 760.0)
    c = jax.nn.sigmoid(mu + q.local_loc[..., :k] @ chol.T)
    grad = (w * c * (1 - c)) @ chol
    sd_r = jnp.sqrt(jnp.einsum("...i,...ij,...j->...", grad, cov[..., :k, :k], grad))
    r = c @ w
    out["reflectance760"] = dict(mean=r, sd=sd_r, q05=r - 1.6448536 * sd_r, q50=r,
                                 q95=r + 1.6448536 * sd_r)
    s_sd = jnp.sqrt(jnp.diagonal(cov_s, axis1=-2, axis2=-1))
    for i, n in enumerate(cfg.free):
        def phys(v, n=n):
            return shared_values(cfg, p0[:, None], {m: v for m in cfg.free})[2][n]
        out[n] = _quantity(q.shared_loc[:, i], s_sd[:, i], phys)
    return out


@pytest.fixture(scope="module")
def shipped_inputs(guide, model_o2a, scene):
    """The shipped guide and its inputs for the 20 x 13 scene (6 patches, the edge ones
    partly padding), one more patch partly and one wholly masked."""
    from bayesfluo.inference.guide import guide_inputs
    from bayesfluo.instruments import get_instrument
    from bayesfluo.scene.grid import PatchGrid
    d = guide_inputs(scene, PatchGrid((20, 13), 8), slice(None), guide.model,
                     guide.feature_mean, guide.feature_sd,
                     get_instrument(guide.instrument).reference_radiance)
    mask = d.patches.mask.copy()
    mask[0, ::3] = 0.0
    mask[2] = 0.0
    return guide, d, mask


def test_batched_encoder_equals_the_reference_evaluation(shipped_inputs):
    """The batched encoder (split head, shared products, no scatter) gives the outputs of
    the straightforward per-pixel evaluation with the shipped weights, to float32 rounding
    (rtol 1e-4; atol 1e-5 of each output's largest magnitude), masked patches included;
    one patch through ``__call__`` too."""
    g, d, mask = shipped_inputs
    want = reference_encode(g.encoder, jnp.asarray(d.features), jnp.asarray(mask))
    got = eqx.filter_jit(type(g.encoder).encode)(g.encoder, jnp.asarray(d.features),
                                          jnp.asarray(mask))
    one = g.encoder(jnp.asarray(d.features[0]), jnp.asarray(mask[0]))
    for name in GuideOutput.__dataclass_fields__:
        w, v = np.asarray(getattr(want, name)), np.asarray(getattr(got, name))
        assert v.shape == w.shape, name
        np.testing.assert_allclose(v, w, rtol=1e-4, atol=1e-5 * np.abs(w).max(), err_msg=name)
        np.testing.assert_allclose(np.asarray(getattr(one, name)), w[0], rtol=1e-4,
                                   atol=1e-5 * np.abs(w).max(), err_msg=name)


def test_summaries_equal_the_full_covariance_reference(model_o2a, shipped_inputs):
    """:func:`summaries` (marginal variances without forming the covariance matrices)
    equals the summaries from full covariance matrices, on the shipped guide's output."""
    g, d, mask = shipped_inputs
    q = g.encoder.encode(jnp.asarray(d.features), jnp.asarray(mask))
    nd, p0 = jnp.asarray(d.patches.ndvi), jnp.asarray(d.patches.surface_pressure0)
    got = jax.jit(lambda q: summaries(q, g.model, nd, p0))(q)
    want = jax.jit(lambda q: reference_summaries(q, model_o2a, g.config, nd, p0))(q)
    assert set(got) == set(want)
    for name, st in want.items():
        for stat, w in st.items():
            w = np.asarray(w)
            np.testing.assert_allclose(np.asarray(got[name][stat]), w, rtol=1e-4,
                                       atol=1e-6 * np.abs(w).max(), err_msg=name + stat)


def test_retrieve_equals_the_reference_evaluation(scene, guide, model_o2a, result):
    """Every output of :func:`retrieve` (one compiled pass per chunk: inputs, encoder,
    summaries, flags) equals, to float32 rounding (rtol 1e-4, atol 1e-5 of the map's
    largest magnitude), the straightforward evaluation: the encoder's features pixel by
    pixel in the image, the per-pixel reference encoder, full-covariance summaries, the
    fit at the reference posterior mean."""
    from bayesfluo.inference.guide import (
        ancillary_inputs,
        expand_reference,
        guide_inputs,
        pixel_features,
        predicted_radiance,
        reference_expansion,
    )
    from bayesfluo.instruments import get_instrument
    from bayesfluo.scene.grid import PatchGrid, noise_coefficients, reference_centre
    assert np.all(result["input_flag"].values == 0)
    ref_rad = get_instrument(guide.instrument).reference_radiance
    grid = PatchGrid((20, 13), guide.patch_size)
    rad = scene["radiance"].transpose("y", "x", "band").values.astype(np.float32)
    a, b = noise_coefficients(scene)
    geo = {v: scene[v].broadcast_like(scene["ndvi"]).transpose("y", "x").values
           if v in scene else np.zeros((20, 13))
           for v in ("sza", "vza", "saa", "vaa", "surface_altitude", "sensor_altitude")}
    anc = ancillary_inputs(geo["sza"], geo["vza"], (geo["saa"] - geo["vaa"]) % 360,
                           geo["surface_altitude"], geo["sensor_altitude"], a, b,
                           scene["ndvi"].values, ref_rad)
    exp = reference_expansion(guide.model, *reference_centre(scene))
    g32 = {k: jnp.asarray(v, jnp.float32) for k, v in geo.items()}
    feats = pixel_features(rad, anc, guide.feature_mean, guide.feature_sd, expand_reference(
        exp, g32["sza"], g32["vza"], g32["surface_altitude"], g32["sensor_altitude"]))
    feats = grid.to_patches(np.asarray(feats))
    d = guide_inputs(scene, grid, slice(None), guide.model, guide.feature_mean,
                     guide.feature_sd, ref_rad)
    np.testing.assert_allclose(d.features, feats, rtol=1e-4, atol=1e-4)
    mask = grid.to_patches(np.ones((20, 13), np.float32))
    q = reference_encode(guide.encoder, jnp.asarray(feats), jnp.asarray(mask))
    pred = jax.jit(lambda q, p: predicted_radiance(guide.model, q, p))(
        q, d.patches.replace(radiance=None))
    var = a * np.maximum(pred, 0.0) + b
    chi2 = np.mean((d.patches.radiance - np.asarray(pred)) ** 2 / var, -1)
    # the guide's F760 sd factor (per NDVI class where the fit is worse than on the
    # model's own draws): the F760 row of the local factor and coupling scaled
    infl = guide.info.get("f760_sd_inflation")
    if infl:
        k = guide.model.fm.n_basis
        cls = np.digitize(np.asarray(d.patches.ndvi), infl["ndvi_edges"])
        fac = np.where(chi2 > infl["chi2_min"], np.asarray(infl["factors"])[cls], 1.0)
        tril, coup = np.array(q.local_tril), np.array(q.coupling)
        tril[..., k, :] *= fac[..., None]
        coup[..., k, :] *= fac[..., None]
        q = GuideOutput(q.shared_loc, q.shared_tril, q.local_loc, jnp.asarray(tril),
                        jnp.asarray(coup))
    want = jax.jit(lambda q, nd, p0: reference_summaries(q, model_o2a, guide.config, nd, p0))(
        q, jnp.asarray(d.patches.ndvi), jnp.asarray(d.patches.surface_pressure0))
    maps = {f"{n}_{s}": np.asarray(v) for n, st in want.items() for s, v in st.items()}
    maps["fit_chi2"] = chi2
    # the shortest 90 % interval: brute force over 2,001 tail splits in float64 (the
    # retrieval tries 40): the same mass, a length within 2 % of the shortest
    qn = jax.tree.map(lambda v: np.asarray(v, np.float64), q)
    k = guide.model.fm.n_basis
    cov = (qn.local_tril @ np.swapaxes(qn.local_tril, -1, -2)
           + qn.coupling @ (qn.shared_tril @ np.swapaxes(qn.shared_tril, -1, -2))[:, None]
           @ np.swapaxes(qn.coupling, -1, -2))
    mu_u, sd_u = qn.local_loc[..., k], np.sqrt(cov[..., k, k])
    scale = np.asarray(guide.model.sif_scale(jnp.asarray(d.patches.ndvi)), np.float64)
    knee = 0.1

    def f_of(u):
        return scale[..., None] * knee * np.logaddexp(0.0, np.maximum(u, -8.0) / knee)
    pp = np.linspace(0.0, 0.1, 2001)
    lo_all = f_of(mu_u[..., None] + sd_u[..., None] * scipy.stats.norm.ppf(pp))
    lo_all[..., 0] = 0.0
    hi_all = f_of(mu_u[..., None] + sd_u[..., None] * scipy.stats.norm.ppf(pp + 0.9))
    shortest = np.min(hi_all - lo_all, -1)
    lo90, hi90 = (grid.to_patches(result[f"f760_{b}"].values) for b in ("lo90", "hi90"))
    # (where F760's 90 % bound underflows float32 the mass is not resolvable: there the
    # shortest length must be ~0 too)
    real = mask > 0                                    # not the padding of the last patches
    res = (hi90 > 1e-6 * scale) & real
    with np.errstate(divide="ignore"):
        u_lo = np.where(lo90 > 0, np.log(np.expm1(lo90 / scale / knee)) * knee, -np.inf)
        u_hi = np.log(np.expm1(np.maximum(hi90, 1e-30) / scale / knee)) * knee
    mass = (scipy.stats.norm.cdf(u_hi, mu_u, sd_u) - scipy.stats.norm.cdf(u_lo, mu_u, sd_u))
    np.testing.assert_allclose(mass[res], 0.9, atol=2e-3)
    assert np.all(shortest[~res & real] < 1e-5)
    assert np.all((hi90 - lo90 <= 1.02 * shortest + 1e-6)[real])
    maps.pop("f760_lo90", None), maps.pop("f760_hi90", None)
    assert set(maps) | {"quality_flag", "input_flag", "f760_draws", "f760_lo90", "f760_hi90",
                        "sif_peak_lo90", "sif_peak_hi90"} == set(result.data_vars)
    for k, v in maps.items():
        if v.ndim == 1:
            v = np.repeat(v[:, None], grid.patch_size**2, 1)
        w = grid.to_image(v, 20)
        # the fit check's operators come from the scene's expansion
        # (bayesfluo.model.scene_expansion, within half a noise sd of the exact operator in
        # every band): its chi-square within 6 % of the exact one's (benchmarks/
        # fit_check_expansion.py on a 64 x 64 default scene: median 0.9 %, 0.99 quantile
        # 4.3 %, at most 5.0 %; here at most 3.1 %)
        rtol = 6e-2 if k == "fit_chi2" else 1e-4
        np.testing.assert_allclose(result[k].values, w, rtol=rtol,
                                   atol=1e-5 * np.abs(w).max(), err_msg=k)


def test_scene_on_its_own_grid_and_wider_window(guide):
    """A scene on its own band grid (shifted by 0.05 nm, 10 % wider bands, one band
    masked) and a scene of the whole HyPlant FLUO window are retrieved by the O2-A
    model: the fit check runs on the scene's usable bands, the wider window is cut."""
    from bayesfluo.instruments import get_instrument
    from bayesfluo.physics.forward import bands_on_fine_grid, build_forward_model
    inst = get_instrument("hyplant-fluo-o2a")
    c = inst.band_centres() + 0.05
    keep = bands_on_fine_grid(inst, c, 1.1 * inst.fwhm_nm)
    fm = build_forward_model(inst, band_centre_nm=c[keep], band_fwhm_nm=1.1 * inst.fwhm_nm)
    sc = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=5, model=fm)
    mask = np.ones(sc.sizes["band"], np.int8)
    mask[40] = 0
    sc["band_mask"] = ("band", mask)
    r = retrieve(sc, guide, progress=False)
    assert np.all(np.isfinite(r.f760_mean.values)) and np.all(np.isfinite(r.fit_chi2.values))
    # the fit is judged on the scene's bands: a pixel fits about as well as the same
    # scene simulated on the nominal grid (not with the chi-square of a 0.05 nm
    # misregistration, which the nominal model would give: tens of times larger)
    nominal = retrieve(simulate_scene("hyplant-fluo-o2a", (8, 8), seed=5), guide,
                       progress=False)
    assert np.median(r.fit_chi2.values) < 2 * np.median(nominal.fit_chi2.values)
    assert r.attrs["bands_used"].startswith(f"{sc.sizes['band'] - 1} of {sc.sizes['band']}")
    wide = simulate_scene("hyplant-fluo", (8, 8), seed=5)
    rw = retrieve(wide, guide, progress=False)
    assert np.all(np.isfinite(rw.f760_mean.values))
    # the output says the scene was cut to the model's window
    n_used = int(rw.attrs["bands_used"].split()[0])
    assert 260 <= n_used <= 280 and f"of {wide.sizes['band']}" in rw.attrs["bands_used"]
