"""Baseline SIF retrievals on the same scene format and physics as bayesfluo.

* :mod:`~bayesfluo.inference.baselines.fld`: sFLD, 3FLD and iFLD at the O2-A (and O2-B) band;
* :mod:`~bayesfluo.inference.baselines.sfm`: spectral fitting by weighted least squares;
* :mod:`~bayesfluo.inference.baselines.oe`: optimal estimation (Gaussian prior and posterior).

All take a scene (``xarray.Dataset``) and return a result Dataset named as bayesfluo's
(``f760_mean``, and ``f760_sd`` and quantiles where the method claims an uncertainty).
A top-of-canopy time series (FloX) is processed in the field's convention, with its
measured irradiance on its own band grid: FLD with the FloX in-band and shoulder windows
(:data:`~bayesfluo.inference.baselines.fld.TOWER_FLD_WINDOWS`), SFM over 750-780 and
670-700 nm (:data:`~bayesfluo.inference.baselines.sfm.TOC_SFM_WINDOWS_NM`).
"""

from bayesfluo.inference.baselines.fld import FLD_METHODS, fld_retrieve
from bayesfluo.inference.baselines.oe import gaussian_prior, oe_retrieve
from bayesfluo.inference.baselines.pixels import scene_pixels
from bayesfluo.inference.baselines.sfm import sfm_retrieve

__all__ = ["FLD_METHODS", "fld_retrieve", "sfm_retrieve", "oe_retrieve", "gaussian_prior",
           "scene_pixels", "BASELINES", "run_baseline"]

BASELINES = ("sfld", "3fld", "ifld", "sfm", "oe", "oe-atmosphere")


def run_baseline(scene, method: str, **kwargs):
    """Run a baseline by name (one of :data:`BASELINES`) on a scene."""
    if method in FLD_METHODS:
        return fld_retrieve(scene, method, **kwargs)
    if method == "sfm":
        return sfm_retrieve(scene, **kwargs)
    if method == "oe":
        return oe_retrieve(scene, **kwargs)
    if method == "oe-atmosphere":
        return oe_retrieve(scene, free_atmosphere=True, **kwargs)
    raise ValueError(f"unknown baseline {method!r}; choose from {BASELINES}")
