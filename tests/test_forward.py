import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bayesfluo.instruments import get_instrument
from bayesfluo.physics import (
    AtmosphereParams,
    Geometry,
    SensorParams,
    SifParams,
    band_operator,
    build_forward_model,
    radiance,
    radiance_exact,
    radiance_from_operator,
)
from bayesfluo.physics.forward import standard_pressure_hpa
from bayesfluo.physics.solar import solar_irradiance
from bayesfluo.physics.surface import fit_bspline, sif_spectrum

from .conftest import gaussian_convolve


def _veg_reflectance(wl):
    return 0.04 + 0.42 / (1 + np.exp(-(wl - 718.0) / 9.0)) + 0.0004 * (wl - 700.0)


def _pixel(model, alt=600.0):
    wl = np.asarray(model.fine_nm, dtype=np.float64)
    knots = np.asarray(model.knots_nm, dtype=np.float64)
    coef = jnp.asarray(fit_bspline(wl, _veg_reflectance(wl), knots), jnp.float32)
    sif = SifParams(jnp.float32(1.2), jnp.float32(2.5))
    atm = AtmosphereParams(jnp.float32(1005.0), jnp.float32(0.15), jnp.float32(1.3),
                           jnp.float32(1.5))
    geom = Geometry(jnp.float32(35.0), jnp.float32(8.0), jnp.float32(40.0),
                    jnp.float32(103.3), jnp.float32(103.3 + alt))
    sens = SensorParams(jnp.float32(0.03), jnp.float32(1.1))
    return coef, sif, atm, geom, sens


def test_white_surface_transparent_atmosphere_gives_e0_cos_over_pi(model_o2a):
    m = model_o2a
    ones = jnp.ones(m.fine_nm.shape)
    vacuum = AtmosphereParams(0.0, 0.0, 1.0, 1.0)  # no air, no aerosol
    sza = 40.0
    geom = Geometry(sza, 0.0, 0.0, 0.0, 600.0, 1.0)
    out = np.asarray(radiance_exact(m, ones, 0 * ones, vacuum, geom))
    step = float(get_instrument(m.instrument).fine_step_nm)
    wl = float(m.fine_nm[0]) + step * np.arange(m.fine_nm.size)
    centres = np.asarray(m.band_centre_nm, dtype=np.float64)
    e0 = gaussian_convolve(wl, solar_irradiance(wl), centres, 0.25)  # mW m-2 nm-1
    np.testing.assert_allclose(out, e0 * np.cos(np.radians(sza)) / np.pi, rtol=1e-4)
    # unit check: a white target at 760 nm under a high sun is a few hundred mW m-2 sr-1 nm-1
    assert 250 < out[np.argmin(np.abs(centres - 755))] < 400
    # and the fast route agrees (constant reflectance lies in the spline space)
    coef = jnp.ones(m.n_basis)
    fast = radiance(m, coef, SifParams(0.0, 0.0), vacuum, geom)
    np.testing.assert_allclose(fast, out, rtol=1e-4)


@pytest.mark.parametrize("fixture", ["model_o2a", "model_full", "model_desis"])
def test_fast_route_matches_fine_grid_integration(fixture, request):
    m = request.getfixturevalue(fixture)
    coef, sif, atm, geom, sens = _pixel(m, 4e5 if fixture == "model_desis" else 600.0)
    r_fine = m.basis_fine @ coef
    f_fine = sif_spectrum(m.fine_nm, sif)
    exact = np.asarray(radiance_exact(m, r_fine, f_fine, atm, geom, sens), dtype=np.float64)
    fast = np.asarray(radiance(m, coef, sif, atm, geom, sens), dtype=np.float64)
    # the neglected third-order term stays below 5 % of the noise (relative sd 1/snr)
    snr = get_instrument(m.instrument).snr
    assert np.max(np.abs(fast - exact) / exact) < 0.05 / snr


def test_fluorescence_enters_through_the_upward_path_only(model_o2a):
    """In the O2-A band the reflected sunlight is absorbed on both paths, SIF on the
    upward one: its share of the radiance is much larger at the band bottom."""
    m = model_o2a
    coef, sif, atm, geom, sens = _pixel(m)
    with_f = radiance(m, coef, sif, atm, geom, sens)
    without = radiance(m, coef, sif._replace(amplitude_red=0.0, amplitude_far_red=0.0), atm,
                       geom, sens)
    share = np.asarray((with_f - without) / with_f)
    wl = np.asarray(m.band_centre_nm)
    bottom = share[np.argmin(np.asarray(without))]
    continuum = share[np.argmin(np.abs(wl - 755.0))]
    assert bottom > 3 * continuum > 0


def test_band_deepens_with_pressure_and_sensor_altitude(model_o2a):
    m = model_o2a
    coef, sif, atm, geom, sens = _pixel(m)
    sif0 = sif._replace(amplitude_red=0.0, amplitude_far_red=0.0)

    def depth(atm_, geom_):
        L = np.asarray(radiance(m, coef, sif0, atm_, geom_, sens))
        wl = np.asarray(m.band_centre_nm)
        return 1 - L.min() / L[np.argmin(np.abs(wl - 755.0))]

    d0 = depth(atm, geom)
    assert depth(atm._replace(surface_pressure_hpa=jnp.float32(1030.0)), geom) > d0
    assert depth(atm, geom._replace(sensor_altitude_m=jnp.float32(3103.0))) > d0
    assert depth(atm, geom._replace(sza_deg=jnp.float32(60.0))) > d0


def test_vmap_over_pixels_equals_single_pixels(model_o2a):
    m = model_o2a
    coef, sif, atm, geom, sens = _pixel(m)
    n = 5
    coefs = jnp.stack([coef * (1 + 0.05 * i) for i in range(n)])
    amps = jnp.linspace(0.0, 3.0, n)
    batched = jax.vmap(lambda c, a: radiance(m, c, sif._replace(amplitude_far_red=a), atm, geom,
                                             sens))(coefs, amps)
    for i in range(n):
        single = radiance(m, coefs[i], sif._replace(amplitude_far_red=amps[i]), atm, geom, sens)
        np.testing.assert_allclose(batched[i], single, rtol=1e-5)
    op = band_operator(m, atm, geom, sens)
    np.testing.assert_allclose(radiance_from_operator(m, op, coefs[2], sif._replace(
        amplitude_far_red=amps[2])), batched[2], rtol=1e-5)


def test_gradients_match_finite_differences(model_o2a):
    """d/dtheta of a random projection of the band radiance, for every latent, against
    central differences in float64."""
    m = model_o2a
    coef, sif, atm, geom, sens = _pixel(m)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), t)  # noqa: E731
        params = f64({"coef": coef, "sif": sif, "atm": atm, "geom": geom, "sens": sens})
        proj = jnp.asarray(np.random.default_rng(0).normal(size=m.n_bands))

        def scalar(p):
            return jnp.dot(proj, radiance(m, p["coef"], p["sif"], p["atm"], p["geom"],
                                          p["sens"]))

        grad = jax.grad(scalar)(params)
        leaves, treedef = jax.tree.flatten(params)
        gleaves = jax.tree.leaves(grad)
        names = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(
            params)[0]]
        checked = 0
        for i, (x, g) in enumerate(zip(leaves, gleaves, strict=True)):
            x = np.asarray(x)
            for j in range(max(1, x.size)):
                h = 1e-4 * max(1.0, abs(float(x.ravel()[j])))
                if "sza" in names[i] or "vza" in names[i] or "raa" in names[i]:
                    h = 1e-3
                if "altitude" in names[i]:
                    h = 0.05  # stay inside one 5 m segment of the pressure interpolation
                def shifted(d, i=i, j=j, x=x):
                    xs = x.copy().astype(np.float64)
                    xs.ravel()[j] += d
                    new = list(leaves)
                    new[i] = jnp.asarray(xs)
                    return float(scalar(jax.tree.unflatten(treedef, new)))
                fd = (shifted(h) - shifted(-h)) / (2 * h)
                ad = float(np.asarray(g).ravel()[j])
                scale = max(abs(fd), abs(ad), 1e-3 * float(jnp.abs(proj).sum()))
                assert abs(fd - ad) <= 2e-4 * scale + 1e-6, (names[i], j, fd, ad)
                checked += 1
        assert checked == m.n_basis + 6 + 4 + 6 + 2


def test_bad_instrument_and_window():
    with pytest.raises(ValueError, match="unknown instrument 'hyplant'"):
        build_forward_model("hyplant")
    inst = get_instrument("hyplant-fluo").replace(name="blue", window_nm=(500.0, 600.0))
    with pytest.raises(ValueError, match="shipped spectrum covers"):
        build_forward_model(inst)


def test_standard_pressure_is_differentiable():
    g = jax.grad(standard_pressure_hpa)(300.0)
    # hydrostatic: dp/dz = -p g / (R T) = about -0.12 hPa per m near the ground
    assert -0.125 < float(g) < -0.11


@pytest.mark.parametrize("change, message", [
    (lambda p: {**p, "atm": p["atm"]._replace(aot550=float("nan"))}, "atm.aot550 contains NaN"),
    (lambda p: {**p, "reflectance_coeffs": p["reflectance_coeffs"].at[2].set(jnp.nan)},
     "reflectance_coeffs contains NaN"),
    (lambda p: {**p, "sif": p["sif"]._replace(amplitude_far_red=-1.0)},
     "amplitude_far_red must be >= 0"),
    (lambda p: {**p, "atm": p["atm"]._replace(surface_pressure_hpa=-5.0)},
     "surface_pressure_hpa must be in"),
    (lambda p: {**p, "geom": p["geom"]._replace(sza_deg=95.0)}, "sza_deg must be in"),
    (lambda p: {**p, "geom": p["geom"]._replace(sensor_altitude_m=0.0)}, "below the ground"),
    (lambda p: {**p, "sens": p["sens"]._replace(fwhm_scale=2.0)}, "fwhm_scale must be in"),
])
def test_check_inputs_names_the_problem(model_o2a, change, message):
    from bayesfluo.physics.forward import check_inputs
    coef, sif, atm, geom, sens = _pixel(model_o2a)
    good = {"reflectance_coeffs": coef, "sif": sif, "atm": atm, "geom": geom, "sens": sens}
    check_inputs(**good)  # no complaint about a valid pixel
    with pytest.raises(ValueError, match=message):
        check_inputs(**change(good))
