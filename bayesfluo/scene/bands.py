"""A scene's own band grid: band centres and FWHM from the file, bad bands, and the link
to a model's nominal grid.

Real instruments deliver their own calibrated band centres and widths (a FloX
spectrometer's 0.15-0.2 nm grid, a DESIS L1B's band centres, a HyPlant flight's
smile-corrected grid), and a detector may have bad elements. A scene is accepted on any
grid inside the model's window:

* the **likelihood** (fit check, refinement, NUTS) uses a forward model built on the
  scene's own grid (:func:`model_on_scene_grid`: the same fine grid and reflectance basis
  as the model's, so every latent keeps its meaning), cached per grid;
* the **guide** reads spectra on its nominal grid: the ratio of the scene's radiance to
  the model's reference spectrum on the scene's grid is interpolated linearly onto the
  guide's grid (:func:`resampling_matrix`) and multiplied by the reference there
  (:func:`bayesfluo.inference.guide.ratio_resample`), so the O2 lines are not smeared;
  guides are trained with resampled spectra (shifted, widened, resampled and gapped
  grids) so that what resampling loses is part of what their posteriors allow for.

A per-band mask (``band_mask`` (band) in the scene, 1 usable, 0 bad; or NaN in every
pixel of a band) removes bands before anything else: they are absent from the
likelihood and bridged by the resampling.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import xarray as xr

from bayesfluo.instruments import INSTRUMENTS, get_instrument
from bayesfluo.model import SifModel
from bayesfluo.physics.forward import bands_on_fine_grid, build_forward_model
from bayesfluo.physics.sensor import check_response_exponent

__all__ = ["SceneBands", "scene_bands", "covering_instruments", "same_grid", "resampling_matrix",
           "model_on_scene_grid", "GRID_TOLERANCE_NM"]

#: Band centres closer than this to the model's (nm) are the model's grid.
GRID_TOLERANCE_NM = 0.005
#: Band FWHM within this relative difference of the model's are the model's.
FWHM_TOLERANCE = 0.01


class SceneBands(NamedTuple):
    """The usable bands of a scene: ``index`` into the scene's band dimension, their
    centres and FWHM (air, nm), and the exponent of their response's shape (2: Gaussian;
    :func:`bayesfluo.physics.sensor.response`)."""

    index: np.ndarray
    centre_nm: np.ndarray
    fwhm_nm: np.ndarray
    response_exponent: float = 2.0


def covering_instruments(wavelength_nm) -> list[str]:
    """Names of the instruments (:data:`bayesfluo.instruments.INSTRUMENTS`) whose window a
    band grid covers (to within three bands at each end), narrowest window first: the
    models a scene narrower than another model's window can be retrieved with."""
    wl = np.asarray(wavelength_nm, np.float64)
    out = []
    for name, inst in INSTRUMENTS.items():
        c = inst.band_centres()
        slack = 3.0 * inst.sampling_nm
        if wl.size and wl[0] <= c[0] + slack and wl[-1] >= c[-1] - slack and (
                np.median(np.diff(wl)) <= 2.0 * inst.sampling_nm if wl.size > 1 else False):
            out.append((c[-1] - c[0], name))
    return [n for _, n in sorted(out)]


def scene_bands(scene: xr.Dataset, instrument: str) -> SceneBands:
    """The scene's usable bands: its ``wavelength`` coordinate (air, nm), its ``fwhm``
    (per band; the instrument's nominal width interpolated where the scene has none),
    without bands that ``band_mask`` marks bad (0) or that are NaN in every pixel of the
    first row; the response's shape from the scene's ``response_exponent`` attribute
    (default 2, Gaussian).

    Raises
    ------
    ValueError
        If the grid is not finite and strictly increasing, fewer than 4 bands remain or
        ``response_exponent`` is outside [2, 8].
    """
    inst = get_instrument(instrument)
    exponent = check_response_exponent(scene.attrs.get("response_exponent", 2.0),
                                       "the scene's response_exponent attribute")
    wl = np.asarray(scene["wavelength"].values, np.float64)
    if wl.ndim != 1 or not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0):
        raise ValueError("the scene's wavelength must be finite and strictly increasing")
    if "fwhm" in scene.variables and scene["fwhm"].dims == ("band",):
        fwhm = np.asarray(scene["fwhm"].values, np.float64)
    else:
        fwhm = np.interp(wl, inst.band_centres(), inst.band_fwhm())
    ok = np.ones(wl.size, bool)
    if "band_mask" in scene.variables:
        ok &= np.asarray(scene["band_mask"].values).astype(bool)
    rad = scene["radiance"]
    if "y" in rad.dims:
        first = np.asarray(rad.isel(y=0).transpose(..., "band").values, np.float64)
        ok &= ~np.all(np.isnan(first.reshape(-1, wl.size)), 0)
    ok &= np.isfinite(fwhm) & (fwhm > 0)
    # a scene wider than the model's window is cut to it
    nominal = inst.band_centres()
    half = 0.5 * float(np.median(np.diff(nominal)))
    inside = (wl >= nominal[0] - half) & (wl <= nominal[-1] + half)
    # up to three nominal bands may be missing at each end
    if not inside.any() or wl[inside][0] > nominal[0] + 6.5 * half or (
            wl[inside][-1] < nominal[-1] - 6.5 * half):
        fit = covering_instruments(wl)
        hint = (f"; its bands cover the window of {', '.join(fit)}: retrieve with a model "
                "for one of those (`bayesfluo retrieve --model NAME`; shipped models are "
                "named after their instrument)" if fit else
                "; no instrument bayesfluo knows has a window inside them")
        raise ValueError(
            f"the scene's bands ({wl[0]:.2f}-{wl[-1]:.2f} nm) do not cover the "
            f"{inst.name} window {nominal[0]:.2f}-{nominal[-1]:.2f} nm{hint}")
    if inside.any():  # bands whose response the model's fine grid does not hold
        fits = np.zeros(wl.size, bool)
        fits[inside] = bands_on_fine_grid(inst, wl[inside], fwhm[inside])
        inside &= fits
    idx = np.flatnonzero(ok & inside)
    if idx.size < 4:
        raise ValueError(f"only {idx.size} usable bands in the {inst.name} window "
                         "(band_mask, NaN bands)")
    gaps = np.diff(wl[idx])
    if gaps.size and gaps.max() > 10 * max(half, float(np.median(gaps))):
        raise ValueError(f"the usable bands leave a gap of {gaps.max():.2f} nm at "
                         f"{wl[idx][np.argmax(gaps)]:.2f} nm: too many bands masked")
    return SceneBands(idx, wl[idx], fwhm[idx], exponent)


def same_grid(bands: SceneBands, model: SifModel, n_scene_bands: int | None = None) -> bool:
    """Whether the scene's usable bands are the model's band grid: all of them, centres
    within :data:`GRID_TOLERANCE_NM`, FWHM within :data:`FWHM_TOLERANCE` and the same
    response shape."""
    want = np.asarray(model.fm.band_centre_nm, np.float64)
    if bands.centre_nm.size != want.size:
        return False
    if n_scene_bands is not None and n_scene_bands != want.size:
        return False
    fwhm = np.asarray(model.fm.band_fwhm_nm, np.float64)
    return bool(np.max(np.abs(bands.centre_nm - want)) <= GRID_TOLERANCE_NM
                and np.max(np.abs(bands.fwhm_nm / fwhm - 1.0)) <= FWHM_TOLERANCE
                and bands.response_exponent == model.fm.response_exponent)


def resampling_matrix(from_nm: np.ndarray, to_nm: np.ndarray) -> np.ndarray:
    """Linear interpolation (len(to), len(from)) from band centres ``from_nm`` to
    ``to_nm`` (nm), constant beyond the ends: ``x_to = W @ x_from``."""
    from_nm = np.asarray(from_nm, np.float64)
    to_nm = np.asarray(to_nm, np.float64)
    j = np.clip(np.searchsorted(from_nm, to_nm) - 1, 0, from_nm.size - 2)
    t = np.clip((to_nm - from_nm[j]) / (from_nm[j + 1] - from_nm[j]), 0.0, 1.0)
    w = np.zeros((to_nm.size, from_nm.size))
    rows = np.arange(to_nm.size)
    w[rows, j] = 1.0 - t
    w[rows, j + 1] += t
    return w


_MODELS: dict = {}


def model_on_scene_grid(model: SifModel, bands: SceneBands) -> SifModel:
    """``model`` with its forward model built on the scene's band grid (cached per grid
    and model; the same fine grid and basis).

    Raises
    ------
    ValueError
        If the bands leave the model's window.
    """
    key = (id(model.fm), repr(model.cfg), bands.centre_nm.round(5).tobytes(),
           bands.fwhm_nm.round(5).tobytes(), bands.response_exponent)
    if key not in _MODELS:
        if len(_MODELS) > 16:
            _MODELS.clear()
        inst = get_instrument(model.instrument)
        fm = build_forward_model(inst, n_basis=model.fm.n_basis,
                                 band_centre_nm=bands.centre_nm, band_fwhm_nm=bands.fwhm_nm,
                                 response_exponent=bands.response_exponent)
        if (fm.fine_nm.shape != model.fm.fine_nm.shape
                or not np.allclose(fm.knots_nm, model.fm.knots_nm)):
            raise ValueError(f"the model's fine grid is not the {inst.name} default; a "
                             "scene on its own band grid needs the default fine grid")
        _MODELS[key] = (model, model.replace(fm=fm))
    return _MODELS[key][1]
