"""The diagnostic figures render from the xarray objects that the validation and NUTS
produce (synthetic inputs of the same layout)."""

import arviz as az
import numpy as np
import xarray as xr

from bayesfluo.report.diagnostic_plots import (
    plot_coverage,
    plot_f760_recovery,
    plot_residuals,
    plot_sbc_ranks,
    plot_trace_rank,
)


def _validation(n=200, n_patch=4, n_draws=199, seed=0):
    rng = np.random.default_rng(seed)
    levels = [0.5, 0.8, 0.9, 0.95]
    truth = rng.gamma(2.0, 0.7, n)
    sd = np.full(n, 0.2)
    mean = truth + sd * rng.normal(size=n)
    z = (truth - mean) / sd
    from scipy import stats

    hits = np.stack([np.abs(z) <= stats.norm.ppf(0.5 + q / 2) for q in levels])
    ds = xr.Dataset(
        {"rank_f760": ("pixel", rng.integers(0, n_draws + 1, n)),
         "rank_reflectance760": ("pixel", rng.integers(0, n_draws + 1, n)),
         "truth_f760": ("pixel", truth), "mean_f760": ("pixel", mean), "sd_f760": ("pixel", sd),
         "ndvi": ("pixel", rng.uniform(0, 0.9, n)), "crb_shared": ("pixel", sd * 0.9),
         "hit_f760": (("level", "pixel"), hits),
         "hit_patch_mean_f760": (("patch", "level"), np.ones((n_patch, 4), bool))},
        coords={"level": levels})
    ds.attrs["n_rank_draws"] = n_draws
    return ds


def test_validation_figures(tmp_path):
    ds = _validation()
    for fn in (plot_sbc_ranks, plot_coverage, plot_f760_recovery):
        path = tmp_path / f"{fn.__name__}.png"
        fig = fn(ds, path)
        assert path.stat().st_size > 5000
        assert len(fig.axes) >= 1


def test_nuts_figures(tmp_path):
    rng = np.random.default_rng(1)
    dt = az.from_dict({"posterior": {"f760": rng.normal(size=(2, 50, 3)),
                                     "surface_pressure": rng.normal(size=(2, 50, 1))},
                       "posterior_predictive": {"radiance": rng.normal(size=(2, 50, 3, 10))},
                       "observed_data": {"radiance": rng.normal(size=(3, 10))}},
                      dims={"f760": ["pixel"], "surface_pressure": ["patch"],
                            "radiance": ["pixel", "band"]},
                      coords={"band": np.linspace(750, 780, 10)})
    p1, p2 = tmp_path / "res.png", tmp_path / "trace.png"
    plot_residuals(dt, pixels=(0, 2), path=p1)
    plot_trace_rank(dt, "f760", 1, path=p2)
    plot_trace_rank(dt, "surface_pressure", 0)
    assert p1.stat().st_size > 5000 and p2.stat().st_size > 5000
