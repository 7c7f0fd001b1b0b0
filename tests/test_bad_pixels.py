"""Bad input is never answered silently: a pixel with invalid ancillary input or an odd
band is masked and flagged, and leaves its patch's other pixels where a user mask of
that pixel would; a scene whose radiance is in the wrong units is refused with the
likely mistake named; the command line counts the flags by reason."""

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr

from bayesfluo.retrieval.api import QUALITY_FLAGS, RetrieveOptions, retrieve
from bayesfluo.scene.grid import (
    INPUT_FLAGS,
    apparent_reflectance_level,
    flag_pixels,
    running_median,
)
from bayesfluo.scene.simulate import simulate_scene

OPTS = RetrieveOptions(quality=False)   # the fit check is not what is tested here
BAD = (2, 2)                            # the damaged pixel of the 8 x 8 scene (one patch)


@pytest.fixture(scope="module")
def scene(model_o2a):
    return simulate_scene("hyplant-fluo-o2a", (8, 8), seed=1, model=model_o2a,
                          progress=False)


def _run(scene, retriever):
    return retrieve(scene, retriever.guide, OPTS, retriever=retriever, progress=False)


@pytest.fixture(scope="module")
def clean(scene, retriever):
    return _run(scene, retriever)


@pytest.fixture(scope="module")
def user_masked(scene, retriever):
    """The same scene with the damaged pixel masked by the user: what the pixel's
    neighbours should get (the pixel is out of the patch's pooling and geometry)."""
    s = scene.copy(deep=True)
    s["mask"].values[BAD] = 0
    return _run(s, retriever)


def _others():
    keep = np.ones((8, 8), bool)
    keep[BAD] = False
    return keep


def _assert_masked_and_neighbours_spared(res, clean, user_masked, input_bits, atol):
    f = res["f760_mean"].values
    assert np.isnan(f[BAD])
    assert res["quality_flag"].values[BAD] == QUALITY_FLAGS["masked_input"]
    assert res["input_flag"].values[BAD] == input_bits
    keep = _others()
    assert np.all(np.isfinite(f[keep]))
    assert np.all(res["quality_flag"].values[keep] == clean["quality_flag"].values[keep])
    # the 63 others: as if the user had masked the pixel ...
    np.testing.assert_allclose(f[keep], user_masked["f760_mean"].values[keep], rtol=0,
                               atol=atol)
    # ... which moves them from the clean retrieval by one pixel's weight in the patch's
    # pooling and mean geometry (measured: < 0.004 on this scene), far less than the
    # 0.1-0.6 the unmasked bad pixel pulled them by
    assert np.max(np.abs(f[keep] - clean["f760_mean"].values[keep])) < 0.05


@pytest.mark.parametrize("name,value", [
    ("surface_altitude", np.nan), ("sza", np.nan), ("vza", np.nan), ("saa", np.nan),
    ("vaa", np.nan), ("ndvi", np.nan), ("sza", 95.0), ("vza", -3.0), ("saa", 720.0),
    ("surface_altitude", 20000.0), ("ndvi", 3.0), ("sensor_altitude", 10.0)])
def test_invalid_ancillary_masks_only_its_pixel(scene, retriever, clean, user_masked, name,
                                                value):
    """One NaN or out-of-range geometry value or NDVI (before: a NaN blanked the whole
    patch with clean flags; a NaN NDVI was read as 0 and gave F760 0.08 instead of 0.86)
    masks that pixel, flagged ``invalid_ancillary``. The other pixels' results equal
    those with the pixel masked by the user, up to the float32 effect of the scene's
    reference-expansion centre moving by 1/64 of the pixel's geometry (measured 2e-5;
    allowed 1e-3, 30x below their smallest posterior sd)."""
    s = scene.copy(deep=True)
    if s[name].ndim == 0:   # a scene-wide value: make it per pixel
        s[name] = (("y", "x"), np.full((8, 8), float(s[name]), np.float32), s[name].attrs)
    s[name].values[BAD] = value
    res = _run(s, retriever)
    _assert_masked_and_neighbours_spared(res, clean, user_masked,
                                         INPUT_FLAGS["invalid_ancillary"], 1e-3)


def test_day_of_year_outside_the_year_is_refused(scene, guide):
    s = scene.copy()
    s.attrs["day_of_year"] = 400
    with pytest.raises(ValueError, match="day_of_year"):
        retrieve(s, guide, OPTS, progress=False)


@pytest.mark.parametrize("case,bits", [
    ("one band at -0.5", INPUT_FLAGS["negative"] | INPUT_FLAGS["outlier_band"]),
    ("one band at 1e6", INPUT_FLAGS["saturated"] | INPUT_FLAGS["outlier_band"]),
    ("every band at 1e6", INPUT_FLAGS["saturated"]),
    ("one band x 4", INPUT_FLAGS["outlier_band"]),
    ("three adjacent bands x 0.1", INPUT_FLAGS["outlier_band"])])
def test_one_odd_pixel_is_masked_and_does_not_pull_its_patch(scene, retriever, clean,
                                                             user_masked, case, bits):
    """Before: a band at -0.5 (above the 5-sd 'negative' cut-off) moved the 63 other
    pixels of its patch by up to 0.1-0.6 and 1e6 radiance without a saturation attribute
    gave that pixel F760 16-144 with clean input flags. Now the pixel is masked with the
    reason, and the others are exactly where a user mask of the pixel puts them."""
    s = scene.copy(deep=True)
    rad = s["radiance"].values
    if case == "one band at -0.5":
        rad[BAD + (100,)] = -0.5
    elif case == "one band at 1e6":
        rad[BAD + (100,)] = 1e6
    elif case == "every band at 1e6":
        rad[BAD] = 1e6
    elif case == "one band x 4":
        rad[BAD + (40,)] *= 4.0
    else:
        rad[BAD + (slice(10, 13),)] *= 0.1
    res = _run(s, retriever)
    _assert_masked_and_neighbours_spared(res, clean, user_masked, bits, 1e-6)


def test_spike_test_leaves_smooth_and_dark_spectra_alone():
    """:func:`flag_pixels` with a reference spectrum: a smooth trend of a factor 10 over
    the window (a red edge), deep absorption dips present in the reference and a dark
    pixel dipping below zero by noise are not flagged; a single band a factor 3 up or
    down, or three adjacent bands a factor 10 down, are."""
    rng = np.random.default_rng(0)
    nb = 200
    dips = np.ones(nb)
    dips[rng.choice(nb, 40, replace=False)] = rng.uniform(0.05, 0.5, 40)   # O2-like lines
    reference = np.log(100.0 * dips)
    ramp = np.linspace(0.1, 1.0, nb)                 # x10 across the window
    noise = (0.004, 0.044)                           # variance a L + b (HyPlant-like)
    clean = 100.0 * dips * ramp * 1.3
    clean = clean + rng.normal(0, np.sqrt(noise[0] * clean + noise[1]))
    dark = 0.5 * dips + rng.normal(0, np.sqrt(noise[1]), nb)   # water in the O2 band
    dark[5] = -0.6                                    # 2.9 read-noise sd below zero
    up, down, block = clean.copy(), clean.copy(), clean.copy()
    up[50] *= 3.0
    down[120] /= 3.0
    block[80:83] /= 10.0
    rad = np.stack([clean, dark, up, down, block]).astype(np.float32)
    limits = np.array([-5 * np.sqrt(noise[1]), np.inf], np.float32)
    flag, zeroed = flag_pixels(rad, np.zeros(5, np.int32), limits,
                               np.broadcast_to(reference, rad.shape).astype(np.float32),
                               np.asarray(noise, np.float32))
    flag = np.asarray(flag)
    assert flag[0] == 0 and flag[1] == 0
    assert np.all(flag[2:] == INPUT_FLAGS["outlier_band"])
    assert np.all(np.asarray(zeroed)[2:] == 0)
    # without a reference (as the baselines call it), only the absolute tests apply
    flag0, _ = flag_pixels(rad, np.zeros(5, np.int32), limits)
    assert np.all(np.asarray(flag0) == 0)


@pytest.mark.parametrize("factor,message", [
    (1000.0, "1000x too large"), (1e-3, "1000x too small"), (0.0, "zero")])
def test_radiance_in_wrong_units_is_refused(scene, guide, factor, message):
    """x1000 (uW for mW, per um for per nm), /1000 (W for mW) and an all-zero scene are
    refused before any retrieval, naming the likely mistake; the scene as simulated
    (land surfaces, apparent reflectance a few tenths) passes."""
    level, n = apparent_reflectance_level(scene)
    assert 0.05 < level < 1.0 and n == 64
    s = scene.copy(deep=True)
    s["radiance"] = s["radiance"] * np.float32(factor)
    with pytest.raises(ValueError, match=message):
        retrieve(s, guide, OPTS, progress=False)


def test_cli_refuses_wrong_units_with_exit_code_2(scene, tmp_path, capsys):
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset

    s = scene.copy(deep=True)
    s["radiance"] = s["radiance"] * np.float32(1000.0)
    path = write_dataset(s, tmp_path / "mw.nc")
    out = tmp_path / "r.nc"
    assert main(["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "1000x too large" in err and "W" in err and "Traceback" not in err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["mw.nc"]   # no temporaries, no lock


def test_cli_prints_the_flags_by_reason(tmp_path, scene, retriever, capsys, monkeypatch):
    """After a single-file retrieval, one line counts the pixels per flag and the masked
    ones per input problem."""
    import bayesfluo.inference.guide
    import bayesfluo.retrieval.api
    from bayesfluo.cli import main
    from bayesfluo.io import write_dataset
    # the CLI's guide: the module's compiled one (the CLI's report is what is tested)
    monkeypatch.setattr(bayesfluo.inference.guide, "load_guide", lambda d: retriever.guide)
    monkeypatch.setattr(bayesfluo.retrieval.api, "Retriever", lambda g: retriever)
    s = scene.copy(deep=True)
    s["radiance"].values[0, 0, 5] = np.nan
    s["sza"].values[1, 1] = np.nan
    s["radiance"].values[3, 3, 100] = -0.5
    path = write_dataset(s, tmp_path / "scene.nc")
    assert main(["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--out",
                 str(tmp_path / "r.nc"), "--no-quality", "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    flags = [line.strip() for line in lines if line.strip().startswith("flags:")]
    others = ", ".join(f"0 {k}" for k in QUALITY_FLAGS if k != "masked_input")
    assert flags == ["flags: 3 masked_input (1 not_finite, 1 negative, 1 invalid_ancillary, "
                     f"1 outlier_band), {others} of 64 pixels"]


def test_ancillary_ranges_agree_with_the_readers():
    """The scene layer cannot import the readers (a higher layer): its copy of the valid
    ranges must be theirs."""
    from bayesfluo.io import common
    from bayesfluo.scene import grid
    if not hasattr(common, "ANCILLARY_RANGES"):
        pytest.skip("the readers do not state ranges")
    assert grid.ANCILLARY_RANGES == common.ANCILLARY_RANGES
    exclusive = getattr(common, "ANCILLARY_UPPER_EXCLUSIVE", {"sza", "vza", "sensor_altitude"})
    for name, (lo, hi) in grid.ANCILLARY_RANGES.items():
        if name == "day_of_year":
            continue
        one = xr.Dataset({name: (("y", "x"), np.array([[lo, hi, np.nan]]))})
        got = grid.ancillary_valid(one, slice(None))[0]
        assert list(got) == [True, name not in exclusive, False], name


def test_running_median_is_the_median_of_each_window():
    """The 13-exchange selection network (input flags, the fit check's spike statistic)
    against numpy's median of every 7-band window, edges repeated; ties included."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 40)).astype(np.float32)
    x[:, 10:14] = 0.5                                   # ties
    xp = np.pad(x, [(0, 0), (3, 3)], mode="edge")
    want = np.median(np.lib.stride_tricks.sliding_window_view(xp, 7, axis=-1), -1)
    np.testing.assert_array_equal(np.asarray(running_median(jnp.asarray(x))), want)
