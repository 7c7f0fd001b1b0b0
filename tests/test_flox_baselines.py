"""Baselines on FloX tower series in the field's conventions (issue 16, item 6).

A 128-step simulated FloX series (one crop canopy over a day, constant reflectance, SIF
varying 0.5-1.2 x; default 5 m mast) is written by ``bayesfluo simulate`` as a FloX CSV
and as netCDF, and every baseline runs on both through ``bayesfluo baseline``. A
noise-free twin (same seed: same canopy, geometry and truth) gives each method's
systematic error; the bounds come from the physics of each method, not from its output.

The radiance the simulator writes is not exactly the baselines' ``L = E/pi R + F``: it
adds the 5 m of air between canopy and sensor (O2 absorption of the reflected light and
of SIF), and SIF scattered back by the atmosphere and reflected by the canopy. The test
measures that residual from the truth, ``rho = L - (E/pi R_true + F_true)`` at the band
centres (about +0.03 on the O2-A shoulders, -0.01 at the bottom of the band, mW m-2 sr-1
nm-1), and carries it into the predictions.

FLD algebra (``r = E_in / E_out``, ``k`` the fixed far-red shape's factor from the
in-band to 760 nm, 1.026 at 760.55 nm): with ``L = E/pi R + F + rho`` at the bands,
``F_FLD = (L_in - r L_out) / (1 - r)``, so its error is

* ``E_in/pi (R_in - R_out) / (1 - r)``: the reflectance slope between shoulder and
  in-band. Vegetation's red edge makes ``R_in > R_out``: sFLD *overestimates*, here by
  +0.05-0.07;
* ``r (F_in - F_out) / (1 - r)``: the SIF slope (SIF falls beyond its 740 nm peak),
  -0.02-0.03;
* ``(rho_in - r rho_out) / (1 - r)``: what the simulator adds, about -0.01;

so sFLD's F760 is about +0.03 (2 %) high in the noise-free case. 3FLD interpolates the
shoulder linearly to the in-band wavelength: the slope terms cancel to their curvature.
iFLD removes the slopes with its correction factors; what remains is the ``rho`` term and
the error of its cubic continuum. SFM fits 750-780 and 670-700 nm and also sees ``rho``
only: the brief asks that it recover F760 of the noise-free series to 2 %.

Noise (simulator: radiance variance ``a L + b``, irradiance ``pi a E + pi^2 b``) through
``F = (L_in - r L_out) / (1 - r)`` gives sFLD's and 3FLD's sd per step (about 0.22
mW m-2 sr-1 nm-1: the in-band holds 12 % of the shoulder's light, so its noise is
amplified by ``1 / (1 - r)``, and the irradiance noise enters through ``r``). On the
noisy series each method's bias must stay within 4 standard errors (of the noisy minus
noise-free estimates) of its noise-free bias (noise adds no bias to estimators linear in
the noise to first order; a fit weighted by its noisy data would add one) and its RMSE
within 25 % of ``sqrt(bias_clean^2 + sd^2)`` (128 steps: the RMSE's relative standard
error is 6 %, so 25 % is 4 of them). iFLD's sd is bounded by 1.5 x sFLD's (the same two
bands; its correction factors come from fits through ~130 continuum bands, whose noise is
small), SFM's by sFLD's (its data include sFLD's two bands and ~300 more; a least-squares
fit with the right model does not waste them).
"""

import re

import numpy as np
import pytest
import xarray as xr

from bayesfluo.cli import main
from bayesfluo.inference.baselines import fld as fld_module
from bayesfluo.inference.baselines.fld import FLOX_O2A, FLOX_O2B
from bayesfluo.inference.baselines.sfm import TOC_SFM_WINDOWS_NM
from bayesfluo.io import open_scene, write_flox_csv
from bayesfluo.physics import build_forward_model
from bayesfluo.physics.surface import SifParams, sif_spectrum
from bayesfluo.scene.simulate import simulate_scene

N = 128
METHODS = ("sfld", "3fld", "ifld", "sfm", "oe")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The CLI's FloX CSV and netCDF of one noisy series, and its noise-free twin."""
    d = tmp_path_factory.mktemp("flox")
    for ext in ("csv", "nc"):
        assert main(["simulate", "--instrument", "flox", "--size", str(N), "--seed", "0",
                     "--quiet", "--out", str(d / f"tower.{ext}")]) == 0
    clean = simulate_scene("flox", (N, 1), seed=0, snr=np.inf)
    return d, clean


@pytest.fixture(scope="module")
def results(files):
    """Every method through ``bayesfluo baseline`` on the CSV and on the netCDF."""
    d, _ = files
    out = {}
    for m in METHODS:
        for ext in ("csv", "nc"):
            path = d / f"{m}_{ext}.nc"
            assert main(["baseline", str(d / f"tower.{ext}"), "--method", m,
                         "--out", str(path)]) == 0
            out[m, ext] = xr.load_dataset(path)
    return out


@pytest.fixture(scope="module")
def clean_results(files):
    d, clean = files
    from bayesfluo.inference.baselines import run_baseline

    return {m: run_baseline(clean, m) for m in ("sfld", "3fld", "ifld", "sfm")}


def test_every_method_runs_on_the_cli_csv_and_netcdf(files, results, capsys):
    d, clean = files
    csv, nc = (open_scene(d / f"tower.{ext}").load() for ext in ("csv", "nc"))
    np.testing.assert_array_equal(csv.radiance.values, nc.radiance.values)
    np.testing.assert_array_equal(csv.irradiance.values, nc.irradiance.values)
    np.testing.assert_array_equal(nc.true_f760.values, clean.true_f760.values)
    for m in METHODS:
        a, b = results[m, "csv"], results[m, "nc"]
        assert a.attrs["method"] == m and a.f760_mean.dims == ("time",)
        assert a.sizes["time"] == N and np.all(np.isfinite(a.f760_mean.values))
        assert "f687_mean" in a  # the FloX window covers the O2-B band
        # the same float32 spectra: FLD identical; the fits differ only by their weights
        # (the CSV's noise is estimated from the series, a few % off the netCDF's stated
        # noise), far below their noise sd (0.07)
        tol = 1e-6 if m in ("sfld", "3fld", "ifld") else 0.01
        np.testing.assert_allclose(a.f760_mean.values, b.f760_mean.values, atol=tol)
        np.testing.assert_allclose(a.f687_mean.values, b.f687_mean.values, atol=3 * tol)
    # a tower measures its irradiance: no atmosphere to retrieve, said so
    assert main(["baseline", str(d / "tower.csv"), "--method", "oe-atmosphere",
                 "--out", str(d / "x.nc")]) == 2
    assert "tower" in capsys.readouterr().err


def _bands(attr: str, wl: np.ndarray) -> tuple[int, int, int]:
    """Indices of 'in X, left Y, right Z' (nm) on the grid ``wl``."""
    vals = [float(v) for v in re.findall(r"[-\d.]+", attr)]
    idx = [int(np.argmin(np.abs(wl - v))) for v in vals]
    assert np.allclose(wl[idx], vals, atol=0.006)  # bands of the file's own grid
    return tuple(idx)


def _check_windows(res: xr.Dataset, wl: np.ndarray, e_mean: np.ndarray):
    """The bands a tower FLD result names are the documented choice on the file's grid:
    least irradiance in the in-band window, most in each shoulder window."""
    for band, want_in in ((FLOX_O2A, 760.6), (FLOX_O2B, 687.1)):
        i, lft, rgt = _bands(res.attrs[f"{band.quantity}_bands_nm"], wl)
        for idx, (lo, hi), fn in ((i, band.in_nm, np.argmin), (lft, band.left_nm, np.argmax),
                                  (rgt, band.right_nm, np.argmax)):
            sel = np.flatnonzero((wl >= lo) & (wl <= hi))
            assert idx == sel[fn(e_mean[sel])]
        assert abs(wl[i] - want_in) < 0.2  # the bottom of the band at 0.3-0.35 nm FWHM


def test_retrieval_windows_are_the_documented_ones(files, results, tmp_path):
    # the windows of the FloX literature, as the module documents them
    assert (FLOX_O2A.in_nm, FLOX_O2A.left_nm, FLOX_O2A.right_nm) == (
        (759.5, 761.5), (757.0, 759.0), (770.0, 772.0))
    assert (FLOX_O2B.in_nm, FLOX_O2B.left_nm, FLOX_O2B.right_nm) == (
        (686.5, 688.0), (684.0, 686.0), (694.0, 697.0))
    doc = fld_module.__doc__
    for text in ("759.5-761.5 nm", "757.0-759.0 nm", "770.0-772.0 nm", "686.5-688.0 nm",
                 "684.0-686.0 nm", "694.0-697.0 nm"):
        assert text in doc
    assert TOC_SFM_WINDOWS_NM == ((750.0, 780.0), (670.0, 700.0))
    d, _ = files
    scene = open_scene(d / "tower.csv").load()
    wl = scene.wavelength.values
    e_mean = scene.irradiance.values.mean(0)
    for m in ("sfld", "3fld", "ifld"):
        _check_windows(results[m, "csv"], wl, e_mean)
        assert "757-759" in results[m, "csv"].attrs["f760_windows_nm"]
    assert results["sfm", "csv"].attrs["sfm_windows_nm"] == "750-780, 670-700"


def test_every_method_on_the_spectrometers_own_grid(tmp_path):
    """A FloX export on its own grid (0.17 nm step, 0.3 nm FWHM, shifted 0.03 nm) through
    ``write_flox_csv`` and every baseline: bands chosen on that grid, F760 near the truth
    (noise-free: the errors are the methods' biases, below 0.06 on the series above)."""
    from bayesfluo.instruments import get_instrument

    c = get_instrument("flox").band_centres()
    wl = np.arange(c[0] + 0.2 + 0.03, c[-1] - 0.17, 0.17)
    fm = build_forward_model("flox", band_centre_nm=wl, band_fwhm_nm=np.full(wl.size, 0.3))
    s = simulate_scene("flox", (8, 1), seed=2, snr=np.inf, model=fm)
    write_flox_csv(s, tmp_path / "own.csv")
    truth = s.true_f760.values
    for m in METHODS:
        out = tmp_path / f"{m}.nc"
        assert main(["baseline", str(tmp_path / "own.csv"), "--method", m,
                     "--out", str(out)]) == 0
        r = xr.load_dataset(out)
        assert np.max(np.abs(r.f760_mean.values - truth)) < 0.06, m
        if m in ("sfld", "3fld", "ifld"):
            _check_windows(r, s.wavelength.values, s.irradiance.values.mean(0))


def _fld_physics(scene: xr.Dataset, clean: xr.Dataset, res: xr.Dataset, method: str):
    """Predicted noise-free error and noise sd per step of sFLD / 3FLD at O2-A (module
    docstring), from the truth and the noise-free spectra only."""
    wl = clean.wavelength.values
    i, lft, rgt = _bands(res.attrs["f760_bands_nm"], wl)
    w_r = 0.0 if method == "sfld" else (wl[i] - wl[lft]) / (wl[rgt] - wl[lft])
    w_l = 1.0 - w_r
    e = clean.irradiance.values
    lrad = clean.radiance.values
    refl, sif = clean.true_reflectance.values, clean.true_sif.values
    rho = lrad - e / np.pi * refl - sif

    def out(v):
        return w_l * v[:, lft] + w_r * v[:, rgt]

    r = e[:, i] / out(e)
    # the shoulder's reflectance: irradiance-weighted where two shoulders are mixed
    slope = e[:, i] / np.pi * (refl[:, i] - out(e * refl) / out(e)) / (1 - r)
    sif_slope = r * (sif[:, i] - out(sif)) / (1 - r)
    neglected = (rho[:, i] - r * out(rho)) / (1 - r)
    shape = SifParams(0.5, 1.0)
    k = float(sif_spectrum(760.0, shape) / sif_spectrum(wl[i], shape))
    err = k * (sif[:, i] + slope + sif_slope + neglected) - clean.true_f760.values
    a, b = float(scene.attrs["noise_a"]), float(scene.attrs["noise_b"])

    def var_l(v):
        return a * v + b

    def var_e(v):
        return np.pi * a * v + np.pi**2 * b

    f = (lrad[:, i] - r * out(lrad)) / (1 - r)
    var_lo = w_l**2 * var_l(lrad[:, lft]) + w_r**2 * var_l(lrad[:, rgt])
    var_eo = w_l**2 * var_e(e[:, lft]) + w_r**2 * var_e(e[:, rgt])
    var_r = r**2 * (var_e(e[:, i]) / e[:, i] ** 2 + var_eo / out(e) ** 2)
    var = ((var_l(lrad[:, i]) + r**2 * var_lo) / (1 - r) ** 2
           + ((f - out(lrad)) / (1 - r)) ** 2 * var_r)
    return err, k * np.sqrt(var), slope


def test_noise_free_errors_are_the_physics_of_each_method(files, results, clean_results):
    d, clean = files
    scene = open_scene(d / "tower.nc").load()
    truth = clean.true_f760.values
    err = {m: clean_results[m].f760_mean.values - truth for m in clean_results}
    # sFLD and 3FLD: their error is the sum of the terms above, to float32 round-off
    for m in ("sfld", "3fld"):
        pred, _, slope = _fld_physics(scene, clean, results[m, "csv"], m)
        np.testing.assert_allclose(err[m], pred, atol=1e-3)
    _, _, slope = _fld_physics(scene, clean, results["sfld", "csv"], "sfld")
    assert np.all(slope > 0.02)         # the red edge: R(760.6) > R(757.9)
    assert err["sfld"].mean() > 0.01    # sFLD overestimates
    assert abs(err["3fld"].mean()) < 0.5 * err["sfld"].mean()  # the slope cancels
    # iFLD and SFM remove the slopes: over the series, smaller errors than sFLD's
    # reflectance-slope term alone (rms 0.06)
    rms = lambda v: float(np.sqrt(np.mean(v**2)))  # noqa: E731
    assert rms(err["ifld"]) < rms(slope) and rms(err["sfm"]) < rms(slope)
    # SFM: F760 of the noise-free, constant-reflectance series to 2 %
    assert abs(clean_results["sfm"].f760_mean.values.sum() / truth.sum() - 1) < 0.02


def test_noisy_errors_are_the_clean_errors_plus_the_noise(files, results, clean_results):
    d, clean = files
    scene = open_scene(d / "tower.nc").load()
    truth = clean.true_f760.values
    _, sd_sfld, _ = _fld_physics(scene, clean, results["sfld", "csv"], "sfld")
    _, sd_3fld, _ = _fld_physics(scene, clean, results["3fld", "csv"], "3fld")
    assert 0.15 < np.sqrt(np.mean(sd_sfld**2)) < 0.3   # the magnitude stated above
    sd = {"sfld": (sd_sfld, True), "3fld": (sd_3fld, True), "ifld": (1.5 * sd_sfld, False),
          "sfm": (sd_sfld, False)}
    for m, (s, two_sided) in sd.items():
        e_clean = clean_results[m].f760_mean.values - truth
        e = results[m, "csv"].f760_mean.values - truth
        s_rms = float(np.sqrt(np.mean(s**2)))
        # noise adds no bias: the mean of (noisy - noise-free) within 4 standard errors
        diff = e - e_clean
        assert abs(diff.mean()) < 4 * diff.std(ddof=1) / np.sqrt(N), m
        rmse = float(np.sqrt(np.mean(e**2)))
        want = float(np.sqrt(np.mean(e_clean**2) + s_rms**2))
        assert rmse < 1.25 * want, m
        if two_sided:
            assert rmse > 0.8 * want, m
