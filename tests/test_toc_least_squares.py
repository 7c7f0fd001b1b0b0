"""The weighted least squares of top-of-canopy scans (``bayesfluo.model.toc_least_squares``),
against NumPy's float64 solution of the same weighted problem built here from the model's
basis and SIF shapes."""

from __future__ import annotations

import numpy as np
import pytest

from bayesfluo.model import SifModel
from bayesfluo.model.toc_least_squares import scan_least_squares, sif_shapes


@pytest.fixture(scope="module")
def tower(model_flox):
    return SifModel(model_flox, top_of_canopy=True)


def test_solution_and_covariance_are_the_weighted_least_squares(tower):
    rng = np.random.default_rng(5)
    basis = np.asarray(tower.fm.basis_band[0], np.float64)               # (B, K)
    shapes = np.asarray(sif_shapes(tower, tower.fm.band_centre_nm), np.float64)  # (B, S)
    n_scan, (n_band, k) = 6, basis.shape
    e = 40.0 + 30.0 * rng.random((n_scan, 1)) * (1.0 + 0.2 * rng.random((n_scan, n_band)))
    c = rng.uniform(0.05, 0.6, (n_scan, k))
    amp = rng.uniform(0.0, 3.0, (n_scan, shapes.shape[1]))
    clean = e * (c @ basis.T) + amp @ shapes.T
    var = 1e-3 * clean + 1e-3
    rad = clean + np.sqrt(var) * rng.normal(size=clean.shape)
    theta, cov = scan_least_squares(tower, rad, e, 1.0 / var)
    theta, cov = np.asarray(theta, np.float64), np.asarray(cov, np.float64)
    plain, _ = scan_least_squares(tower, rad, e, 1.0 / var, refine_steps=0)
    worst_plain = 0.0
    for i in range(n_scan):
        design = np.concatenate([e[i][:, None] * basis, shapes], 1)
        a = design.T @ (design / var[i][:, None])
        want = np.linalg.solve(a, design.T @ (rad[i] / var[i]))
        sd = np.sqrt(np.diag(np.linalg.inv(a)))
        # float32 normal equations (columns scaled to unit norm, a 1e-6 ridge) and one
        # refinement step: every coefficient within a small fraction of its standard
        # error, the fitted radiance within a small fraction of the noise
        assert np.max(np.abs(theta[i] - want) / sd) < 0.05
        fit_err = (design @ theta[i] - design @ want) / np.sqrt(var[i])
        assert np.sqrt(np.mean(fit_err**2)) < 0.1
        plain_err = (design @ np.asarray(plain[i], np.float64) - design @ want) / np.sqrt(
            var[i])
        worst_plain = max(worst_plain, float(np.sqrt(np.mean(plain_err**2))))
        # the covariance is the float32 inverse (its SIF sds within 10 %: 9 % at worst
        # here, on the scan whose normal equations lose the most digits)
        np.testing.assert_allclose(np.sqrt(np.diag(cov[i]))[k:], sd[k:], rtol=0.1)
    # without the refinement step the nearly collinear B-splines lose digits in float32
    # (this draw has a scan whose fit is 2 noise sd RMS off the exact solution's)
    assert worst_plain > 0.5
    # noise free, the solution is the truth (to the ridge's pull: 0.006 of amplitudes
    # whose standard errors are 1-3 mW m-2 sr-1 nm-1)
    theta0, _ = scan_least_squares(tower, clean, e, 1.0 / var)
    np.testing.assert_allclose(np.asarray(theta0)[:, k:], amp, atol=1e-2)


def test_red_peak_only_where_the_window_has_it(tower, model_o2a):
    assert sif_shapes(tower, 760.0).shape == (2,)                 # FloX: 650-800 nm
    o2a = SifModel(model_o2a, top_of_canopy=True)
    assert sif_shapes(o2a, 760.0).shape == (1,)
