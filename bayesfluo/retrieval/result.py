"""The result of a retrieval: its variables, flags and attributes
(``shared/SCENE_FORMAT.md`` section 4).

For ``f760``, ``sif_peak``, ``reflectance760`` (and ``f687``, ``sif_red_peak``,
``sif_integrated`` where the window has the O2-B band) and each free atmospheric or sensor
latent: ``Q_mean``, ``Q_sd``, ``Q_q05``, ``Q_q50``, ``Q_q95`` over (y, x);
``f687_f760_corr``, the posterior correlation of F687 and F760, and
``sif_red_contraction``, how much the data pinned the red peak (1 - posterior / prior
variance of its amplitude; O2-B windows);
``quality_flag`` (bits: :data:`QUALITY_FLAGS`),
``input_flag`` (what was wrong with a masked input pixel, bits of
:data:`bayesfluo.scene.grid.INPUT_FLAGS`), ``fit_chi2`` (reduced chi-square of the fit,
when checked), and optionally ``f760_draws`` (y, x, draw). CF attributes and units on every
variable.

:func:`result_dataset` assembles the image pieces of the chunks
(:func:`bayesfluo.retrieval.chunk.retrieve_chunk`) into a Dataset, in memory
(:func:`bayesfluo.retrieval.api.retrieve`) or as the template of a streamed output
(:mod:`bayesfluo.retrieval.streaming`); :func:`result_attrs` gives its global attributes.
"""

from __future__ import annotations

import time

import numpy as np
import xarray as xr

from bayesfluo import __version__
from bayesfluo.scene.grid import INPUT_FLAGS

__all__ = ["QUALITY_FLAGS", "result_dataset", "result_attrs", "describe_variables"]

#: Bits of ``quality_flag``
QUALITY_FLAGS = {"masked_input": 1, "poor_fit": 2, "out_of_distribution": 4,
                 "few_pixels_in_patch": 8, "not_refined": 16}

_ATTRS = {
    "f760": ("sun-induced chlorophyll fluorescence at 760 nm", "mW m-2 sr-1 nm-1", None),
    "f687": ("sun-induced chlorophyll fluorescence at 687 nm", "mW m-2 sr-1 nm-1", None),
    "sif_peak": ("sun-induced chlorophyll fluorescence at its far-red peak",
                 "mW m-2 sr-1 nm-1", None),
    "sif_red_peak": ("sun-induced chlorophyll fluorescence at its red peak",
                     "mW m-2 sr-1 nm-1", None),
    "sif_integrated": ("sun-induced chlorophyll fluorescence integrated over 650-800 nm",
                       "mW m-2 sr-1", None),
    "f687_f760": ("sun-induced chlorophyll fluorescence at 687 and at 760 nm", "1", None),
    "sif_red": ("red-peak amplitude of sun-induced chlorophyll fluorescence", "1", None),
    "reflectance760": ("surface reflectance at 760 nm", "1",
                       "surface_bidirectional_reflectance"),
    "surface_pressure": ("surface air pressure of the pixel's patch", "hPa",
                         "surface_air_pressure"),
    "aot550": ("aerosol optical thickness at 550 nm of the pixel's patch", "1",
               "atmosphere_optical_thickness_due_to_ambient_aerosol_particles"),
    "diffuse_path": ("diffuse-path factor of the pixel's patch", "1", None),
    "spectral_shift": ("spectral shift of the sensor's bands (patch)", "nm", None),
    "fwhm_scale": ("scale of the sensor's band FWHM (patch)", "1", None),
}
_STATS = {"mean": "posterior mean", "sd": "posterior standard deviation",
          "q05": "posterior 5 % quantile", "q50": "posterior median",
          "q95": "posterior 95 % quantile",
          "lo90": "lower bound of the shortest 90 % posterior interval",
          "hi90": "upper bound of the shortest 90 % posterior interval",
          "corr": "posterior correlation",
          "contraction": "posterior contraction (1 - posterior / prior variance)"}


def result_dataset(pieces: dict[str, list[np.ndarray]], scene: xr.Dataset,
                   chi2_max: float | None) -> xr.Dataset:
    """The result Dataset of image pieces.

    Parameters
    ----------
    pieces : dict of list of numpy.ndarray
        Each variable's image pieces (rows, x) (``f760_draws``: (rows, x, draw)), top to
        bottom (:func:`bayesfluo.retrieval.chunk.retrieve_chunk` of each chunk).
    scene : xarray.Dataset
        The scene (or the rows of it the pieces cover): its ``y``, ``x`` coordinates.
    chi2_max : float or None
        ``poor_fit`` threshold of ``fit_chi2`` (an attribute of ``fit_chi2``).

    Returns
    -------
    xarray.Dataset
        The variables with their CF attributes (see the module docstring).
    """
    coords = {c: scene.coords[c] for c in ("y", "x") if c in scene.coords}
    ds = xr.Dataset(coords=coords)
    for k, parts in pieces.items():
        v = np.concatenate(parts, 0)
        if k == "f760_draws":
            ds[k] = (("y", "x", "draw"), v.astype(np.float32))
            ds[k].attrs.update(long_name="posterior draws of F760", units="mW m-2 sr-1 nm-1")
            continue
        ds[k] = (("y", "x"), v)
    return describe_variables(ds, chi2_max)


def describe_variables(ds: xr.Dataset, chi2_max: float | None) -> xr.Dataset:
    """Set the CF attributes of a result's variables (summaries, flags, ``fit_chi2``
    with its ``poor_fit`` threshold ``chi2_max``) in place; returns ``ds``."""
    for k in list(ds.data_vars):
        name, _, stat = k.rpartition("_")
        if name in _ATTRS and stat in _STATS:
            long_name, units, std = _ATTRS[name]
            ds[k].attrs.update(long_name=f"{_STATS[stat]} of {long_name}", units=units)
            if std:
                ds[k].attrs["standard_name"] = std
    ds["quality_flag"].attrs.update(
        long_name="retrieval quality flag", units="1",
        flag_masks=np.array(list(QUALITY_FLAGS.values()), np.int8),
        flag_meanings=" ".join(QUALITY_FLAGS))
    ds["input_flag"].attrs.update(
        long_name="problems of the input pixel", units="1",
        flag_masks=np.array(list(INPUT_FLAGS.values()), np.int8),
        flag_meanings=" ".join(INPUT_FLAGS))
    if "fit_chi2" in ds:
        ds["fit_chi2"].attrs.update(
            long_name="reduced chi-square of the radiance at the posterior mean", units="1",
            poor_fit_threshold=chi2_max)
    return ds


def result_attrs(guide, *, source: str | None, model_name: str | None, elapsed_s: float,
                 refined: bool = False, bands=None, n_scene_bands: int | None = None
                 ) -> dict:
    """Global attributes of a result (``shared/SCENE_FORMAT.md`` section 4).

    Parameters
    ----------
    guide : AmortizedGuide
        The guide that retrieved it (instrument, patch size, training fingerprint).
    source, model_name : str or None
        The input's and the model's names.
    elapsed_s : float
        Wall time of the retrieval, s.
    refined : bool
        Whether the posterior was refined (:mod:`bayesfluo.inference.refine`).
    bands : SceneBands, optional
        The scene's bands the retrieval used (:func:`bayesfluo.scene.bands.scene_bands`),
        of ``n_scene_bands``: recorded in ``bands_used`` (a scene cut to the model's
        window, bad bands left out, its own grid).
    """
    extra = {}
    if bands is not None:
        c = bands.centre_nm
        extra["bands_used"] = (
            f"{c.size} of {n_scene_bands or c.size} scene bands, {c[0]:.3f}-{c[-1]:.3f} nm "
            f"(air): the model's window of the scene, without bad bands, on the scene's "
            f"own grid")
    return extra | dict(
        posterior=("amortized guide, refined to the Laplace approximation at the mode "
                   "(bayesfluo.inference.refine)" if refined else "amortized guide"),
        model=model_name or guide.instrument, model_fingerprint=guide.info.get(
            "fingerprint", "")[:12], bayesfluo_version=__version__,
        input=source or "", instrument=guide.instrument,
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        Conventions="CF-1.10", retrieval_time_s=round(elapsed_s, 3),
        patch_size=guide.patch_size)
