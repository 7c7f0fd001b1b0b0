import numpy as np
import pytest
import xarray as xr

from bayesfluo.scene.simulate import simulate_scene


@pytest.fixture(scope="module")
def scene(model_o2a):
    return simulate_scene("hyplant-fluo-o2a", "24x20", seed=3, model=model_o2a)


def test_same_seed_same_scene_other_seed_other_scene(scene, model_o2a):
    again = simulate_scene("hyplant-fluo-o2a", "24x20", seed=3, model=model_o2a)
    xr.testing.assert_identical(scene.drop_attrs(), again.drop_attrs())
    other = simulate_scene("hyplant-fluo-o2a", "24x20", seed=4, model=model_o2a)
    assert not np.allclose(scene.radiance, other.radiance)


def test_scene_format(scene):
    assert scene.radiance.dims == ("y", "x", "band") and scene.radiance.dtype == np.float32
    assert scene.sizes["y"] == 24 and scene.sizes["x"] == 20
    assert scene.wavelength.attrs["units"] == "nm" and scene.wavelength.attrs["medium"] == "air"
    assert scene.attrs["instrument"] == "hyplant-fluo-o2a"
    for name in ("radiance", "mask", "sza", "saa", "vza", "vaa", "surface_altitude",
                 "sensor_altitude", "true_f760", "true_sif_peak", "true_reflectance",
                 "true_sif", "true_surface_pressure", "true_aot550", "true_angstrom",
                 "true_diffuse_path", "true_spectral_shift", "true_fwhm_scale", "ndvi"):
        assert name in scene, name
        assert "units" in scene[name].attrs and "long_name" in scene[name].attrs, name
    assert "true_f687" not in scene  # the O2-A window has no B band
    assert np.all(np.isfinite(scene.radiance)) and np.all(scene.radiance > 0)


def test_scene_has_vegetation_and_bare_surfaces_with_realistic_sif(scene):
    f760 = scene.true_f760.values
    ndvi = scene.ndvi.values
    bare = ndvi < 0.3
    assert bare.mean() > 0.05 and (ndvi > 0.6).mean() > 0.2
    # no fluorescence without vegetation, SIF magnitudes as in the literature
    assert np.all(f760[scene.true_vegetation_cover.values == 0] == 0)
    assert np.nanmax(f760) > 0.8 and np.nanmax(f760) < 3.5
    assert np.nanmax(scene.true_sif_peak) < 5.5
    assert np.corrcoef(f760.ravel(), ndvi.ravel())[0, 1] > 0.5


def test_atmosphere_is_smooth_in_space(scene):
    for name in ("true_surface_pressure", "true_aot550"):
        v = scene[name].values
        step = np.abs(np.diff(v, axis=0)).mean() + np.abs(np.diff(v, axis=1)).mean()
        assert step < 0.15 * (v.max() - v.min() + 1e-9), name


def test_noise_has_the_instrument_variance(model_o2a):
    """Residual radiance - noise-free radiance, standardised by sqrt(a L + b): variance 1.
    With ~130 000 values the variance estimate has sd 0.4 %; bound 2 % (5 sd)."""
    ds = simulate_scene("hyplant-fluo-o2a", "24x20", seed=5, model=model_o2a)
    clean = ds.true_radiance.values.astype(np.float64)
    z = (ds.radiance.values - clean) / np.sqrt(ds.attrs["noise_a"] * clean
                                               + ds.attrs["noise_b"])
    assert abs(z.var() - 1) < 0.02 and abs(z.mean()) < 0.02


def test_noise_free_full_window_scene_has_both_bands(model_full):
    ds = simulate_scene("hyplant-fluo", "3x4", seed=1, snr=np.inf, model=model_full)
    assert "true_f687" in ds
    np.testing.assert_array_equal(ds.radiance.values, ds.true_radiance.values)
    wl = ds.wavelength.values
    spec = ds.radiance.values[0, 0]
    cont = spec[np.argmin(np.abs(wl - 755))]
    assert spec[(wl > 759.5) & (wl < 762)].min() < 0.35 * cont  # O2-A
    assert spec[(wl > 686.5) & (wl < 688)].min() < 0.75 * spec[np.argmin(np.abs(wl - 685))]


def test_tower_scene_is_a_time_series_with_irradiance(model_flox):
    ds = simulate_scene("flox", 30, seed=2, snr=np.inf, model=model_flox)
    assert ds.radiance.dims == ("time", "band") and "irradiance" in ds
    assert ds.irradiance.attrs["units"] == "mW m-2 nm-1"
    # top of canopy: L = R E / pi + F outside the absorption bands (5 m of air)
    wl = ds.wavelength.values
    k = np.argmin(np.abs(wl - 755.0))
    pred = (ds.true_reflectance.values[:, k] * ds.irradiance.values[:, k] / np.pi
            + ds.true_sif.values[:, k])
    np.testing.assert_allclose(ds.radiance.values[:, k], pred, rtol=5e-3)
    assert ds.sza.values.min() < ds.sza.values[0]  # the sun rises and sets


def _spectra(n=6, wl=None, refl=None):
    wl = np.arange(640.0, 821.0, 1.0) if wl is None else wl
    rng = np.random.default_rng(0)
    r = 0.05 + 0.4 / (1 + np.exp(-(wl[None, :] - 718.0) / 9.0)) * rng.uniform(0.5, 1, (n, 1))
    f = 2.0 * np.exp(-0.5 * ((wl[None, :] - 740.0) / 21.0) ** 2) * rng.uniform(0, 1, (n, 1))
    if refl is not None:
        r = refl
    return xr.Dataset({"reflectance": (("pixel", "wavelength"), r),
                       "sif": (("pixel", "wavelength"), f)},
                      coords={"wavelength": ("wavelength", wl, {"units": "nm",
                                                               "medium": "air"})})


def test_user_surface_spectra(model_o2a):
    sp = _spectra()
    ds = simulate_scene("hyplant-fluo-o2a", seed=0, surface=sp, model=model_o2a)
    assert ds.sizes["y"] == 1 and ds.sizes["x"] == 6
    f760 = np.interp(760.0, sp.wavelength.values, sp.sif.values[2])
    assert ds.true_f760.values[0, 2] == pytest.approx(f760, rel=1e-6)
    # same spectra in micrometres give the same scene
    sp_um = sp.assign_coords(wavelength=("wavelength", sp.wavelength.values / 1e3,
                                         {"units": "um", "medium": "air"}))
    ds_um = simulate_scene("hyplant-fluo-o2a", seed=0, surface=sp_um, model=model_o2a)
    np.testing.assert_allclose(ds_um.radiance, ds.radiance, rtol=1e-5)
    # reshaped to the requested size when the pixel count matches
    ds23 = simulate_scene("hyplant-fluo-o2a", "2x3", seed=0, surface=sp, model=model_o2a)
    assert ds23.sizes["y"] == 2 and ds23.sizes["x"] == 3


@pytest.mark.parametrize("bad, message", [
    ("negative", "reflectance must lie in"),
    ("nan", "NaN"),
    ("short", "surface spectra cover"),
    ("units", "not understood"),
])
def test_bad_surface_spectra(model_o2a, bad, message):
    sp = _spectra()
    if bad == "negative":
        r = sp.reflectance.values.copy()
        r[1, 50] = -0.01
        sp["reflectance"] = (("pixel", "wavelength"), r)
    elif bad == "nan":
        r = sp.sif.values.copy()
        r[0, 3] = np.nan
        sp["sif"] = (("pixel", "wavelength"), r)
    elif bad == "short":
        sp = _spectra(wl=np.arange(700.0, 770.0, 1.0))
    elif bad == "units":
        sp.wavelength.attrs["units"] = "parsecs"
    with pytest.raises(ValueError, match=message):
        simulate_scene("hyplant-fluo-o2a", seed=0, surface=sp, model=model_o2a)


@pytest.mark.parametrize("kwargs, message", [
    ({"sza_deg": float("nan")}, "sza_deg must be finite"),
    ({"aot550": float("nan")}, "aot550 must be finite"),
    ({"sza_deg": 85.0}, "sza_deg must be in"),
    ({"size": "12by3"}, "size must look like"),
    ({"instrument": "hyplant"}, "unknown instrument"),
])
def test_bad_simulation_arguments(model_o2a, kwargs, message):
    args = {"instrument": "hyplant-fluo-o2a", "size": (2, 2), "seed": 0}
    args.update(kwargs)
    model = model_o2a if args["instrument"] == "hyplant-fluo-o2a" else None
    with pytest.raises(ValueError, match=message):
        simulate_scene(**args, model=model)


def test_generated_reflectance_is_physical(scene):
    r = scene.true_reflectance.values
    assert r.min() >= 0 and r.max() <= 1
