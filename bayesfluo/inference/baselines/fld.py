"""Fraunhofer line depth (FLD) retrievals at the O2-A and O2-B bands: sFLD, 3FLD, iFLD.

Each band k of a pixel is written, with the model's own physics at the prior atmosphere
(:mod:`bayesfluo.inference.baselines.pixels`), as

    L_k = c_k + (a_k R_k + b_k F_k) / (1 - rho_k R_k)

``c`` the path radiance, ``a`` the band-integrated ``E0 cos(sza)/pi (t_ss + t_sd)
(t_oo + t_do)`` (the at-sensor solar term; for a tower, ``E/pi`` from the measured
irradiance and ``b = 1``, ``c = rho = 0``), ``b`` the upward transmittance of
fluorescence and ``rho`` the spherical albedo. With ``L' = L - c`` and the apparent
quantities ``R' = R/(1 - rho R)``, ``F' = F/(1 - rho R)``, one band *in* the absorption
and one (or two) *out* of it give two equations in two unknowns once the spectral
variation of ``R`` and ``F`` between the bands is assumed:

sFLD (Plascyk 1975; one shoulder)
    ``R_in = R_out``, ``F_in = F_out``:
    ``F' = (a_out L'_in - a_in L'_out) / (a_out b_in - a_in b_out)``.
3FLD (Maier et al. 2003)
    as sFLD with ``L'_out``, ``a_out``, ``b_out`` linearly interpolated at the in-band
    wavelength from a left and a right shoulder.
iFLD (Alonso et al. 2008, IEEE GRSL 5, 620)
    ``R_out = alpha_R R_in``, ``F_out = alpha_F F_in``, with ``alpha_R`` the apparent
    reflectance ``L'/a`` at the left shoulder over its value at the in-band wavelength
    interpolated across the absorption (a cubic polynomial through the continuum bands
    on both sides), and ``alpha_F = alpha_R a_out / a~_in`` (``a~_in`` the continuum of
    ``a`` interpolated the same way):
    ``F' = (alpha_R a_out L'_in - a_in L'_out) / (alpha_R a_out b_in - alpha_F a_in b_out)``.

``F = F' (1 - rho R_in)`` then undoes the multiple-scattering factor. ``F`` is the value at
the in-band wavelength; it is moved to 760 nm (687 nm) with the model's fixed SIF shape
(far-red Gaussian at 740 nm, sd 21 nm: a factor 1.03 at HyPlant's 760.6 nm band, 1.08 at
DESIS's 761.6 nm band).

Known biases (derived in the tests from the truth of simulated scenes):

* sFLD assumes flat reflectance between shoulder and line. On vegetation ``R`` rises
  with wavelength through the red edge, ``R_in > R_out``, so sFLD *overestimates* F by
  ``a_in a_out (R_in - R_out) / (a_out b_in - a_in b_out)`` (the in-band is dark,
  ``a_in << a_out``, so this is about ``a_in (R_in - R_out) / b_in``: 0.5-1.5
  mW m-2 sr-1 nm-1 for HyPlant over vegetation) plus a smaller term from the slope of F.
* 3FLD removes the linear part of the reflectance slope; what remains is the curvature
  of R and of the irradiance continuum between the shoulders.
* iFLD's correction factors come from the apparent reflectance, which contains F itself
  (``R' + b F / a``); its errors grow where the continuum fit misses the reflectance
  shape, and it is noisier than sFLD (the division by the interpolated continuum).
* All three read the atmosphere from the prior: a surface-pressure error of 5 hPa or a
  spectral shift of 0.05 nm changes the in-band ``a_in`` by a few percent, which, at
  ``F / L ~ 2 %``, moves F by tens of percent. This dominates at HyPlant resolution.
* At DESIS resolution (3.5 nm) the "in" band still contains much continuum light, the
  contrast ``a_in / a_out`` is about 0.5 instead of 0.1, and the noise is amplified by
  ``1 / (1 - a_in/a_out)``.

The uncertainty returned (``*_noise_sd``) is the radiance noise propagated through the
formula (automatic differentiation); it does not include any of the biases above.

**Top of canopy (FloX convention).** For a tower time series ``a = E/pi`` is the
*measured* irradiance of each time step (``b = 1``, ``c = rho = 0``), and the bands are
chosen on the file's own band grid as FloX processing chains and the field literature on
FLD at the O2 bands choose them (Plascyk 1975, Maier et al. 2003, Alonso et al. 2008 for
the methods; their use on field spectrometers in the reviews of Meroni et al. 2009 and
the FloX/FluoWat processing of Cogliati et al. 2015 and Julitta et al. 2016): the
*in-band* is the band of least irradiance (series mean) in a search window around the
bottom of the band, the *shoulders* the bands of most irradiance in windows just outside
it (:data:`TOWER_FLD_WINDOWS`):

=====  ===============  ==============  ===============  =======================
band   in-band (min E)  left shoulder   right shoulder   iFLD continuum
=====  ===============  ==============  ===============  =======================
O2-A   759.5-761.5 nm   757.0-759.0 nm  770.0-772.0 nm   750-759, 770-780 nm
       (about 760.6)
O2-B   686.5-688.0 nm   684.0-686.0 nm  694.0-697.0 nm   670-686, 694-700 nm
       (about 687.1)
=====  ===============  ==============  ===============  =======================

sFLD uses the in-band and the left shoulder, 3FLD both shoulders weighted by their
distance to the in-band, iFLD the left shoulder with ``alpha_R`` and ``alpha_F`` from
the apparent reflectance ``pi L / E`` and the irradiance interpolated across the band by
a cubic through the continuum bands. F687 is reported where the file covers the O2-B
windows. At FloX resolution (0.3-0.4 nm) the O2-B band is shallow (in-band irradiance
about 60 % of the shoulders') and lies on the rising red edge, so sFLD and 3FLD F687 are
dominated by the reflectance-slope and curvature terms above (errors of the order of
F687 itself); only iFLD's F687 is usable.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo.inference.baselines.pixels import (
    Pixels,
    baseline_model,
    operators_for,
    scene_forward_model,
    scene_pixels,
    to_result,
)
from bayesfluo.model import ModelConfig, toc_operator
from bayesfluo.physics.forward import BandOperator, ForwardModel
from bayesfluo.physics.sensor import noise_variance
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["AbsorptionBand", "O2A", "O2B", "FLD_METHODS", "FldBands", "select_bands",
           "TowerWindows", "FLOX_O2A", "FLOX_O2B", "TOWER_FLD_WINDOWS", "select_tower_bands",
           "fld_retrieve"]

FLD_METHODS = ("sfld", "3fld", "ifld")


@dataclass(frozen=True)
class AbsorptionBand:
    """An O2 absorption band used by the FLD family (wavelengths in nm, air).

    Attributes
    ----------
    name, quantity : str
        E.g. ``"O2-A"`` and the result name ``"f760"``.
    report_nm : float
        Wavelength the retrieved SIF is reported at.
    lo_nm, hi_nm : float
        Edges of the absorption band.
    in_range_nm : (float, float)
        Where the in-band is searched (deepest band of the at-sensor solar term).
    continuum_nm : (float, float)
        Range of the continuum bands that iFLD interpolates through.
    """

    name: str
    quantity: str
    report_nm: float
    lo_nm: float
    hi_nm: float
    in_range_nm: tuple[float, float]
    continuum_nm: tuple[float, float]


O2A = AbsorptionBand("O2-A", "f760", 760.0, 759.3, 770.5, (759.5, 762.5), (745.0, 782.0))
O2B = AbsorptionBand("O2-B", "f687", 687.0, 686.6, 694.0, (686.6, 688.5), (676.0, 700.0))


@dataclass(frozen=True)
class TowerWindows:
    """FLD windows of one O2 band for a top-of-canopy series (FloX convention, module
    docstring); wavelengths in nm (air).

    Attributes
    ----------
    name, quantity, report_nm : str, str, float
        As in :class:`AbsorptionBand`.
    in_nm : (float, float)
        Search window of the in-band: the band of least irradiance in it.
    left_nm, right_nm : (float, float)
        Search windows of the shoulders: the band of most irradiance in each.
    continuum_nm : tuple of (float, float)
        Windows of the continuum bands iFLD interpolates through.
    """

    name: str
    quantity: str
    report_nm: float
    in_nm: tuple[float, float]
    left_nm: tuple[float, float]
    right_nm: tuple[float, float]
    continuum_nm: tuple[tuple[float, float], ...]


FLOX_O2A = TowerWindows("O2-A", "f760", 760.0, (759.5, 761.5), (757.0, 759.0), (770.0, 772.0),
                        ((750.0, 759.0), (770.0, 780.0)))
FLOX_O2B = TowerWindows("O2-B", "f687", 687.0, (686.5, 688.0), (684.0, 686.0), (694.0, 697.0),
                        ((670.0, 686.0), (694.0, 700.0)))
#: The FLD windows of a top-of-canopy series (module docstring).
TOWER_FLD_WINDOWS = (FLOX_O2A, FLOX_O2B)


@dataclass(frozen=True)
class FldBands:
    """Band indices chosen for one absorption band: ``inside``, ``left``, ``right`` and
    the continuum bands ``continuum`` (tuple), with the in-band wavelength (nm)."""

    inside: int
    left: int
    right: int
    continuum: tuple[int, ...]
    in_nm: float


def select_bands(wavelength: np.ndarray, fwhm: float, a: np.ndarray, band: AbsorptionBand
                 ) -> FldBands | None:
    """Choose the FLD bands from the band centres (nm), FWHM (nm) and the at-sensor solar
    term ``a`` (bands,); None if the window does not hold the absorption band.

    The in-band is the darkest band of ``a`` in ``band.in_range_nm``; the shoulders are the
    brightest bands within ``3 nm + FWHM`` outside the band edges (at least half a FWHM
    away); continuum bands lie at least one FWHM outside the edges, inside
    ``band.continuum_nm``.
    """
    wl = np.asarray(wavelength, np.float64)
    a = np.asarray(a, np.float64)

    def pick(sel, fn):
        idx = np.flatnonzero(sel)
        return None if idx.size == 0 else int(idx[fn(a[idx])])

    inside = pick((wl >= band.in_range_nm[0]) & (wl <= band.in_range_nm[1]), np.argmin)
    left = pick((wl >= band.lo_nm - 3.0 - fwhm) & (wl <= band.lo_nm - 0.5 * fwhm), np.argmax)
    right = pick((wl >= band.hi_nm + 0.5 * fwhm) & (wl <= band.hi_nm + 3.0 + fwhm), np.argmax)
    cont = np.flatnonzero(((wl <= band.lo_nm - fwhm) | (wl >= band.hi_nm + fwhm))
                          & (wl >= band.continuum_nm[0]) & (wl <= band.continuum_nm[1]))
    if inside is None or left is None or right is None:
        return None
    has_both = (wl[cont] < band.lo_nm).sum() >= 2 and (wl[cont] > band.hi_nm).sum() >= 2
    if not has_both:
        return None
    return FldBands(inside, left, right, tuple(int(i) for i in cont), float(wl[inside]))


def select_tower_bands(wavelength: np.ndarray, irradiance: np.ndarray,
                       windows: TowerWindows) -> FldBands | None:
    """Choose the FLD bands of a top-of-canopy series on its own band grid (nm) from its
    irradiance (bands,) (the series' mean): the in-band is the band of least irradiance in
    ``windows.in_nm``, the shoulders the bands of most irradiance in ``windows.left_nm``
    and ``windows.right_nm``; continuum bands lie in ``windows.continuum_nm``. None if the
    grid misses a window or leaves fewer than two continuum bands on a side."""
    wl = np.asarray(wavelength, np.float64)
    e = np.asarray(irradiance, np.float64)

    def pick(win, fn):
        idx = np.flatnonzero((wl >= win[0]) & (wl <= win[1]) & np.isfinite(e))
        return None if idx.size == 0 else int(idx[fn(e[idx])])

    inside = pick(windows.in_nm, np.argmin)
    left = pick(windows.left_nm, np.argmax)
    right = pick(windows.right_nm, np.argmax)
    if inside is None or left is None or right is None:
        return None
    cont = np.flatnonzero(np.any([(wl >= lo) & (wl <= hi) for lo, hi in windows.continuum_nm],
                                 0) & np.isfinite(e))
    if (wl[cont] < wl[inside]).sum() < 2 or (wl[cont] > wl[inside]).sum() < 2:
        return None
    return FldBands(inside, left, right, tuple(int(i) for i in cont), float(wl[inside]))


def _cubic_at(x_fit, y_fit, x_eval):
    """Least-squares cubic through (x_fit, y_fit) evaluated at x_eval (scaled abscissa)."""
    x0, s = jnp.mean(x_fit), jnp.std(x_fit) + 1e-6
    v = lambda x: jnp.stack([jnp.ones_like(x), (x - x0) / s, ((x - x0) / s) ** 2,  # noqa
                             ((x - x0) / s) ** 3], -1)
    coef = jnp.linalg.lstsq(v(x_fit), y_fit)[0]
    return v(x_eval) @ coef


def _fld_pixel(method: str, bands: FldBands, wl, rad, op: BandOperator):
    """Apparent-corrected F at the in-band wavelength of one pixel (see module docstring)."""
    a, b, c, rho = op.reflected[0], op.emitted[0], op.path, op.rho_dd
    lp = rad - c
    i, lft, rgt = bands.inside, bands.left, bands.right
    if method == "sfld":
        a_o, b_o, l_o = a[lft], b[lft], lp[lft]
        num = a_o * lp[i] - a[i] * l_o
        den = a_o * b[i] - a[i] * b_o
    elif method == "3fld":
        wr = (wl[i] - wl[lft]) / (wl[rgt] - wl[lft])
        mix = lambda v: (1.0 - wr) * v[lft] + wr * v[rgt]  # noqa: E731
        a_o, b_o, l_o = mix(a), mix(b), mix(lp)
        num = a_o * lp[i] - a[i] * l_o
        den = a_o * b[i] - a[i] * b_o
    elif method == "ifld":
        cont = jnp.asarray(bands.continuum)
        r_app = lp[cont] / a[cont]
        r_in = _cubic_at(wl[cont], r_app, wl[i])
        a_in_cont = _cubic_at(wl[cont], a[cont], wl[i])
        alpha_r = (lp[lft] / a[lft]) / r_in
        alpha_f = alpha_r * a[lft] / a_in_cont
        num = alpha_r * a[lft] * lp[i] - a[i] * lp[lft]
        den = alpha_r * a[lft] * b[i] - alpha_f * a[i] * b[lft]
    else:
        raise ValueError(f"unknown FLD method {method!r}; choose from {FLD_METHODS}")
    f_app = num / den
    r_app_in = (lp[i] - b[i] * f_app) / a[i]
    r_in = r_app_in / (1.0 + rho[i] * r_app_in)
    return f_app * (1.0 - rho[i] * r_in)


_FNS: dict = {}


def _fld_fn(method: str, bands: FldBands):
    """Jitted (patch, pixel)-vectorised FLD estimate and its noise sd."""
    key = (method, bands)
    if key not in _FNS:
        def one(wl, rad, op, a, b):
            f, g = jax.value_and_grad(lambda r: _fld_pixel(method, bands, wl, r, op))(rad)
            var = noise_variance(rad, a, b)
            return f, jnp.sqrt(jnp.sum(g * g * var))

        per_patch = jax.vmap(one, in_axes=(None, 0, None, None, None))
        _FNS[key] = jax.jit(jax.vmap(per_patch, in_axes=(None, 0, 0, None, None)))
    return _FNS[key]


def fld_retrieve(scene: xr.Dataset, method: str = "ifld", *, fm: ForwardModel | None = None,
                 config: ModelConfig | None = None, patch_size: int = 8,
                 pixels: Pixels | None = None, operators: BandOperator | None = None
                 ) -> xr.Dataset:
    """F760 (and F687 where the window holds the O2-B band) of every pixel by an FLD
    method.

    Parameters
    ----------
    scene : xarray.Dataset
        A scene in the scene format (image or top-of-canopy time series).
    method : {"sfld", "3fld", "ifld"}
    fm : ForwardModel, optional
        The instrument's forward model (images; default on the scene's own band grid,
        :func:`~bayesfluo.inference.baselines.pixels.scene_forward_model`). A
        top-of-canopy series needs none: its bands are chosen on its own grid from its
        measured irradiance (:func:`select_tower_bands`).
    config : ModelConfig, optional
        Prior atmosphere (default :class:`bayesfluo.model.ModelConfig`).
    patch_size : int
        Pixels per side of the patches that share one geometry and operator.
    pixels, operators : optional
        Precomputed :func:`scene_pixels` and operators (to time the method alone).

    Returns
    -------
    xarray.Dataset
        ``f760_mean`` and ``f760_noise_sd`` (and ``f687_*``), mW m-2 sr-1 nm-1, over the
        scene's pixel dims; ``quality_flag``; attributes name the bands used
        (``f760_bands_nm``) and, for a series, the windows they were chosen in
        (``f760_windows_nm``).
    """
    if method not in FLD_METHODS:
        raise ValueError(f"unknown FLD method {method!r}; choose from {FLD_METHODS}")
    t0 = time.perf_counter()
    tower = "time" in scene["radiance"].dims
    values, attrs = {}, {}
    if tower:
        px = pixels or scene_pixels(scene, patch_size)
        if operators is None:
            operators = toc_operator(px.irradiance[:, 0])
        wl = np.asarray(px.wavelength, np.float64)
        e = np.asarray(px.irradiance[:, 0], np.float64)
        e_mean = np.nanmean(np.where(px.valid[:, :1], e, np.nan), 0)
        chosen = [(w, select_tower_bands(wl, e_mean, w)) for w in TOWER_FLD_WINDOWS]
        attrs["fld_convention"] = "top of canopy (FloX): measured irradiance, L = E/pi R + F"
    else:
        fm = fm or scene_forward_model(scene)
        px = pixels or scene_pixels(scene, patch_size, fm)
        if operators is None:
            operators = operators_for(baseline_model(fm, config, px), px)
        wl = np.asarray(fm.band_centre_nm, np.float64)
        fwhm = float(np.max(np.asarray(fm.band_fwhm_nm)))
        a_mean = np.asarray(jnp.mean(operators.reflected[:, 0], 0))
        chosen = [(band, select_bands(wl, fwhm, a_mean, band)) for band in (O2A, O2B)]
    shape = SifParams(0.5, 1.0)
    for band, sel in chosen:
        if sel is None:
            continue
        f, sd = _fld_fn(method, sel)(jnp.asarray(wl, jnp.float32), jnp.asarray(px.radiance),
                                     operators, jnp.float32(px.noise_a),
                                     jnp.float32(px.noise_b))
        k = float(sif_spectrum(band.report_nm, shape) / sif_spectrum(sel.in_nm, shape))
        values[f"{band.quantity}_mean"] = np.asarray(f) * k
        values[f"{band.quantity}_noise_sd"] = np.asarray(sd) * k
        attrs[f"{band.quantity}_bands_nm"] = (
            f"in {wl[sel.inside]:.2f}, left {wl[sel.left]:.2f}, right {wl[sel.right]:.2f}")
        if tower:
            attrs[f"{band.quantity}_windows_nm"] = (
                f"in {band.in_nm[0]:g}-{band.in_nm[1]:g} (min E), left "
                f"{band.left_nm[0]:g}-{band.left_nm[1]:g}, right "
                f"{band.right_nm[0]:g}-{band.right_nm[1]:g} (max E), continuum "
                + ", ".join(f"{lo:g}-{hi:g}" for lo, hi in band.continuum_nm))
    if not values:
        where = "series" if tower else f"{fm.instrument} window"
        raise ValueError(f"the {where} holds neither the O2-A nor the O2-B band with "
                         "shoulders on both sides")
    attrs["retrieval_time_s"] = round(time.perf_counter() - t0, 3)
    return to_result(px, scene, values, method, attrs)
