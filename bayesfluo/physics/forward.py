"""The image-formation model: sun -> atmosphere -> surface -> atmosphere -> sensor.

At-sensor radiance (mW m-2 sr-1 nm-1) on the fine grid (SCIENCE.md section 2)::

    L = E0 cos(sza)/pi * [rho_so + (t_ss + t_sd) R (t_oo + t_do) / (1 - rho_dd R)]
        + F (t_oo + t_do) / (1 - rho_dd R)

then integrated by each band's response. Two evaluations are provided:

* :func:`radiance_exact` builds ``L`` on the fine grid from any reflectance and
  fluorescence spectra and integrates it (used by the simulator, and as the reference);
* :func:`radiance` (used by inference) splits the work. The fine-structured factors
  (``E0 t t``, ``t``, path radiance) depend only on atmosphere, geometry and sensor; their
  response-weighted moments about each band centre are computed once by
  :func:`band_operator`. The smooth surface terms ``R`` and ``F`` enter through their
  second-order Taylor coefficients at the band centres, the multiple-scattering factor
  ``1 / (1 - rho_dd R)`` through its value there (:func:`radiance_from_operator`). The
  neglected terms are of relative size ``g''' sigma**3 / g`` (sigma the response width),
  about 1e-5 for HyPlant and 1e-4 for DESIS bands;
  the tests compare both routes.

Under :func:`jax.vmap`, whatever depends only on unbatched inputs is computed once: vmap
over pixels with a shared atmosphere and sensor evaluates :func:`band_operator` once.
All functions are pure and differentiable in every parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.instruments import Instrument, get_instrument
from bayesfluo.physics import atmosphere, sensor, surface
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.o2 import o2_table, tau_above
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.solar import solar_irradiance, solar_range_air_nm
from bayesfluo.physics.standard_atmosphere import us1976
from bayesfluo.physics.surface import SifParams

__all__ = ["bands_on_fine_grid", "Geometry", "ForwardModel", "BandOperator", "FineTerms",
           "build_forward_model",
           "fine_terms", "windows", "response", "integrate_bands", "radiance_from_terms",
           "operator_from_terms",
           "radiance_fine", "radiance_exact", "irradiance_exact", "band_operator",
           "radiance_from_operator", "radiance", "standard_pressure_hpa",
           "default_atmosphere", "check_inputs"]

MAX_SHIFT_FWHM = 0.5  # largest spectral shift the response windows allow, in units of FWHM
MAX_FWHM_SCALE = 1.3
NOMINAL_SENSOR = SensorParams(0.0, 1.0)  # largest FWHM scale factor the response windows allow
_Z_GRID = np.linspace(-500.0, 86000.0, 17301).astype(np.float32)
_LNP_GRID = np.log(us1976(_Z_GRID.astype(np.float64))[1] / 100.0).astype(np.float32)


class Geometry(NamedTuple):
    """Viewing and illumination of a pixel: angles in degrees, altitudes in m above sea
    level, ``sun_distance_factor`` = (1 AU / d)**2 of the day."""

    sza_deg: jnp.ndarray
    vza_deg: jnp.ndarray
    raa_deg: jnp.ndarray
    surface_altitude_m: jnp.ndarray
    sensor_altitude_m: jnp.ndarray
    sun_distance_factor: jnp.ndarray = 1.0


class ForwardModel(eqx.Module):
    """Precomputed arrays of one instrument window (build with :func:`build_forward_model`).

    Fine grid ``fine_nm`` (air, nm) with the solar spectrum (mW m-2 nm-1 at 1 AU) and the
    O2 table on it; band centres and FWHM (nm); response windows and the exponent of the
    response's shape (:func:`bayesfluo.physics.sensor.response`); B-spline reflectance
    basis on the fine grid (n_fine, K) and its Taylor coefficients at band centres
    (3, bands, K).
    """

    fine_nm: jax.Array
    solar: jax.Array
    o2_levels_hpa: jax.Array
    o2_tau: jax.Array
    band_centre_nm: jax.Array
    band_fwhm_nm: jax.Array
    tap_start: jax.Array
    basis_fine: jax.Array
    basis_band: jax.Array
    knots_nm: jax.Array
    taps: int = eqx.field(static=True)
    tap_stride: int = eqx.field(static=True)
    tap_start0: int = eqx.field(static=True)
    instrument: str = eqx.field(static=True)
    platform: str = eqx.field(static=True)
    aerosol_omega: float = eqx.field(static=True, default=0.93)
    aerosol_g: float = eqx.field(static=True, default=0.70)
    aerosol_scale_height_m: float = eqx.field(static=True, default=2000.0)
    response_exponent: float = eqx.field(static=True, default=2.0)

    @property
    def n_bands(self) -> int:
        return int(self.band_centre_nm.shape[0])

    @property
    def n_basis(self) -> int:
        return int(self.basis_fine.shape[1])


def bands_on_fine_grid(instrument: str | Instrument, band_centre_nm, band_fwhm_nm,
                       fine_step_nm: float | None = None) -> np.ndarray:
    """Which bands of an own grid (centres, FWHM, nm) the instrument's nominal fine grid
    holds with their whole response windows (at the largest shift and FWHM scale the
    model allows): bool per band. Bands at the window's ends of a grid shifted outwards
    or widened do not fit and are left out."""
    inst = get_instrument(instrument)
    step = fine_step_nm or inst.fine_step_nm
    centres, fwhm = inst.band_centres(), inst.band_fwhm()
    max_shift = MAX_SHIFT_FWHM * fwhm.max()
    margin = 4.0 * fwhm.max() * MAX_FWHM_SCALE * sensor.FWHM_TO_SIGMA + max_shift + 2 * step
    # the fine grid and the response windows exactly as build_forward_model lays them out
    n = int(np.ceil((centres[-1] - centres[0] + 2 * margin) / step)) + 1
    fine0 = centres[0] - margin
    c = np.asarray(band_centre_nm, np.float64)
    w = np.broadcast_to(np.asarray(band_fwhm_nm, np.float64), c.shape)
    half = 4.0 * np.max(w) * MAX_FWHM_SCALE * sensor.FWHM_TO_SIGMA + max_shift
    taps = int(np.ceil(2 * half / step)) + 1
    start = np.round((c - half - fine0) / step)
    return (start >= 0) & (start + taps <= n)


def build_forward_model(instrument: str | Instrument, fine_step_nm: float | None = None,
                        n_basis: int | None = None, *, band_centre_nm=None,
                        band_fwhm_nm=None, line_mixing: bool = True,
                        cia: bool = True, response_exponent: float = 2.0) -> ForwardModel:
    """Precompute the solar spectrum, O2 table, response windows and spline basis.

    The O2 table is cached on disk after the first call (see :mod:`bayesfluo.physics.o2`).

    Parameters
    ----------
    instrument : str or Instrument
    fine_step_nm : float, optional
        Step of the fine grid (nm; default the instrument's).
    n_basis : int, optional
        B-spline reflectance basis size (default the instrument's).
    band_centre_nm, band_fwhm_nm : array_like, optional
        A band grid of the instrument's own (a scene's calibrated band centres and FWHM,
        air, nm; increasing centres, any spacing, bands may be missing) in place of the
        nominal one. The fine grid and the reflectance basis stay those of the nominal
        grid, so the latents (and a guide's outputs) mean the same on every grid; the
        bands must lie inside the nominal window (+- half a nominal band).
    line_mixing, cia : bool
        O2 A-band line mixing and collision-induced absorption in the O2 table (default on;
        off only to show what they change, see :mod:`bayesfluo.physics.o2`).
    response_exponent : float
        Shape of the bands' spectral response: 2 Gaussian, up to 8 flat-topped
        (:func:`bayesfluo.physics.sensor.response`).

    Raises
    ------
    ValueError
        If the instrument is unknown, its window lies outside the shipped solar spectrum
        or a given band grid leaves the nominal window.
    """
    inst = get_instrument(instrument)
    exponent = sensor.check_response_exponent(response_exponent)
    step = fine_step_nm or inst.fine_step_nm
    centres = inst.band_centres()
    fwhm = inst.band_fwhm()
    own = None
    if band_centre_nm is not None:
        own = np.asarray(band_centre_nm, np.float64)
        own_fwhm = (np.broadcast_to(np.asarray(band_fwhm_nm, np.float64), own.shape)
                    if band_fwhm_nm is not None else np.interp(own, centres, fwhm))
        half = 0.5 * float(np.median(np.diff(centres)))
        if (own.ndim != 1 or own.size < 4 or np.any(np.diff(own) <= 0)
                or not np.all(np.isfinite(own))):
            raise ValueError("band centres must be 1-D, finite, strictly increasing, >= 4")
        if own[0] < centres[0] - half or own[-1] > centres[-1] + half:
            raise ValueError(
                f"bands {own[0]:.2f}-{own[-1]:.2f} nm leave the {inst.name} window "
                f"{centres[0]:.2f}-{centres[-1]:.2f} nm")
        if not np.all((own_fwhm > 0) & (own_fwhm <= 1.5 * fwhm.max())):
            raise ValueError(f"band FWHM must lie in (0, {1.5 * fwhm.max():.3g}] nm for "
                             f"{inst.name}, got {own_fwhm.min():.3g}-{own_fwhm.max():.3g}")
    if centres.size < 4:
        raise ValueError(f"instrument {inst.name} has only {centres.size} bands in its window")
    max_shift = MAX_SHIFT_FWHM * fwhm.max()
    margin = 4.0 * fwhm.max() * MAX_FWHM_SCALE * sensor.FWHM_TO_SIGMA + max_shift + 2 * step
    lo, hi = solar_range_air_nm()
    if centres[0] - margin < lo or centres[-1] + margin > hi:
        raise ValueError(
            f"window {centres[0]:.2f}-{centres[-1]:.2f} nm of {inst.name} needs solar data "
            f"from {centres[0] - margin:.2f} to {centres[-1] + margin:.2f} nm; the shipped "
            f"spectrum covers {lo:.2f}-{hi:.2f} nm (air)")
    n = int(np.ceil((centres[-1] - centres[0] + 2 * margin) / step)) + 1
    fine = centres[0] - margin + step * np.arange(n)
    table = o2_table(fine, line_mixing=line_mixing, cia=cia)
    knots = surface.bspline_knots(fine[0], fine[-1], n_basis or inst.n_basis)
    if own is not None:
        centres, fwhm = own, own_fwhm
    start, taps, stride = sensor.tap_layout(fine, centres, fwhm, max_shift, MAX_FWHM_SCALE)
    basis_band = np.stack([surface.bspline_basis(centres, knots, d) / (1.0, 1.0, 2.0)[d]
                           for d in range(3)])
    f32 = lambda a: jnp.asarray(a, dtype=jnp.float32)  # noqa: E731
    return ForwardModel(
        fine_nm=f32(fine), solar=f32(solar_irradiance(fine)),
        o2_levels_hpa=f32(table.pressure_hpa), o2_tau=f32(table.tau),
        band_centre_nm=f32(centres), band_fwhm_nm=f32(fwhm), tap_start=jnp.asarray(start),
        basis_fine=f32(surface.bspline_basis(fine, knots)), basis_band=f32(basis_band),
        knots_nm=f32(knots), taps=taps, tap_stride=stride, tap_start0=int(start[0]),
        instrument=inst.name, platform=inst.platform, response_exponent=exponent)


def windows(model: ForwardModel, spectrum):
    """Response windows (..., bands, taps) of fine-grid spectra (..., n_fine)."""
    return sensor.windows(spectrum, model.tap_start, model.taps, model.tap_start0,
                          model.tap_stride)


def response(model: ForwardModel, sens: SensorParams):
    """Response weights (bands, taps) of the bands for a column's shift and FWHM scale."""
    return sensor.response(windows(model, model.fine_nm), model.band_centre_nm,
                           model.band_fwhm_nm, sens, model.response_exponent)


def integrate_bands(model: ForwardModel, spectrum, sens: SensorParams = NOMINAL_SENSOR):
    """Band values (..., bands) of fine-grid spectra (..., n_fine) through the bands'
    responses for a column's shift and FWHM scale (units of ``spectrum``)."""
    return sensor.band_integrate(response(model, sens), windows(model, spectrum))


def standard_pressure_hpa(altitude_m):
    """US 1976 pressure (hPa) at geometric altitude (m); differentiable JAX version."""
    return jnp.exp(jnp.interp(altitude_m, _Z_GRID, _LNP_GRID))


def default_atmosphere(surface_altitude_m=0.0, aot550=0.1, angstrom=1.3, diffuse_path=1.5
                       ) -> AtmosphereParams:
    """Standard atmosphere over a surface at the given altitude, continental aerosol."""
    return AtmosphereParams(standard_pressure_hpa(jnp.asarray(surface_altitude_m, jnp.float32)),
                            jnp.float32(aot550), jnp.float32(angstrom), jnp.float32(diffuse_path))


class FineTerms(NamedTuple):
    """Fine-grid factors of the radiance: path radiance, the irradiance-times-upward
    transmittance that multiplies R/(1-rho_dd R), the upward transmittance that
    multiplies F/(1-rho_dd R), and the transfer functions themselves.

    Every atmosphere source on the fine grid gives these: the built-in radiative transfer
    (:func:`fine_terms`) and a transfer-function table
    (:func:`bayesfluo.physics.external.fine_terms_external`); :func:`radiance_from_terms`
    and :func:`operator_from_terms` turn them into radiance and a band operator.
    """

    path: jax.Array
    reflected: jax.Array
    emitted: jax.Array
    transfer: atmosphere.TransferFunctions


def fine_terms(model: ForwardModel, atm: AtmosphereParams, geom: Geometry) -> FineTerms:
    """Transfer functions and radiance factors on the fine grid for one pixel or patch."""
    p_s = atm.surface_pressure_hpa
    p_ratio_sensor = standard_pressure_hpa(geom.sensor_altitude_m) / standard_pressure_hpa(
        geom.surface_altitude_m)
    p_sensor = p_s * p_ratio_sensor
    tau_col = tau_above(model.o2_levels_hpa, model.o2_tau, p_s)
    tau_below = tau_col - tau_above(model.o2_levels_hpa, model.o2_tau, p_sensor)
    height = jnp.maximum(geom.sensor_altitude_m - geom.surface_altitude_m, 0.0)
    aer_frac = 1.0 - jnp.exp(-height / model.aerosol_scale_height_m)
    tf = atmosphere.transfer_functions(
        model.fine_nm, tau_col, tau_below, atm, geom.sza_deg, geom.vza_deg, geom.raa_deg,
        1.0 - p_ratio_sensor, aer_frac, model.aerosol_omega, model.aerosol_g)
    e_top = model.solar * geom.sun_distance_factor * jnp.cos(jnp.deg2rad(geom.sza_deg)) / jnp.pi
    up = tf.t_oo + tf.t_do
    return FineTerms(path=e_top * tf.rho_so, reflected=e_top * (tf.t_ss + tf.t_sd) * up,
                     emitted=up, transfer=tf)


def radiance_from_terms(ft: FineTerms, reflectance_fine, sif_fine, downwelling=None):
    """At-sensor radiance on the fine grid (mW m-2 sr-1 nm-1) from the radiance factors of
    any atmosphere source and fine-grid R and F.

    Parameters
    ----------
    ft : FineTerms
        Path radiance, reflected and emitted factors and transfer functions (fine grid).
    reflectance_fine, sif_fine : array (..., n_fine)
        Surface reflectance (1) and fluorescence (mW m-2 sr-1 nm-1).
    downwelling : array (n_fine,), optional
        Irradiance at the top of the atmosphere on a horizontal surface,
        ``E0 cos(sza)`` (mW m-2 nm-1); given, the downwelling irradiance at the surface
        ``downwelling (t_ss + t_sd) / (1 - rho_dd R)`` (mW m-2 nm-1) is returned too.

    Returns
    -------
    radiance : array (..., n_fine)
        Or ``(radiance, irradiance)`` when ``downwelling`` is given.
    """
    denom = 1.0 - ft.transfer.rho_dd * reflectance_fine
    rad = ft.path + (ft.reflected * reflectance_fine + ft.emitted * sif_fine) / denom
    if downwelling is None:
        return rad
    return rad, downwelling * (ft.transfer.t_ss + ft.transfer.t_sd) / denom


def radiance_fine(model: ForwardModel, reflectance_fine, sif_fine, atm: AtmosphereParams,
                  geom: Geometry, with_irradiance: bool = False):
    """At-sensor radiance on the fine grid (mW m-2 sr-1 nm-1) from fine-grid R and F.

    With ``with_irradiance`` also the downwelling irradiance at the surface
    (mW m-2 nm-1), ``E0 cos(sza) (t_ss + t_sd) / (1 - rho_dd R)``, as a top-of-canopy
    spectrometer measures it: returns ``(radiance, irradiance)``.
    """
    ft = fine_terms(model, atm, geom)
    if not with_irradiance:
        return radiance_from_terms(ft, reflectance_fine, sif_fine)
    e_top = model.solar * geom.sun_distance_factor * jnp.cos(jnp.deg2rad(geom.sza_deg))
    return radiance_from_terms(ft, reflectance_fine, sif_fine, e_top)


def radiance_exact(model: ForwardModel, reflectance_fine, sif_fine, atm: AtmosphereParams,
                   geom: Geometry, sens: SensorParams = NOMINAL_SENSOR):
    """Band radiance (mW m-2 sr-1 nm-1) by integrating the fine-grid radiance."""
    return integrate_bands(model, radiance_fine(model, reflectance_fine, sif_fine, atm, geom),
                           sens)


def irradiance_exact(model: ForwardModel, reflectance_fine, atm: AtmosphereParams,
                     geom: Geometry, sens: SensorParams = NOMINAL_SENSOR):
    """Band downwelling irradiance at the surface (mW m-2 nm-1), as a top-of-canopy
    spectrometer measures it (see :func:`radiance_fine`)."""
    _, e = radiance_fine(model, reflectance_fine, jnp.zeros_like(reflectance_fine), atm, geom,
                         with_irradiance=True)
    return integrate_bands(model, e, sens)


class BandOperator(NamedTuple):
    """What a pixel's surface needs from atmosphere, geometry and sensor, per band:
    path radiance (bands,), moments of the reflected and emitted factors (3, bands) and
    the spherical albedo at the band centres (bands,)."""

    path: jax.Array
    reflected: jax.Array
    emitted: jax.Array
    rho_dd: jax.Array


def operator_from_terms(model: ForwardModel, ft: FineTerms,
                        sens: SensorParams = NOMINAL_SENSOR, rho_dd=None) -> BandOperator:
    """The :class:`BandOperator` of the fine-grid radiance factors of any atmosphere
    source: the response-weighted moments about each band centre of the reflected and
    emitted factors and the band path radiance (mW m-2 sr-1 nm-1).

    Parameters
    ----------
    model : ForwardModel
    ft : FineTerms
        The source's fine-grid factors (:func:`fine_terms`, or a table's).
    sens : SensorParams
        Spectral shift (nm) and FWHM scale of the detector column.
    rho_dd : array (bands,), optional
        Spherical albedo at the bands; default the response-weighted mean of
        ``ft.transfer.rho_dd`` (a table's may carry line structure).
    """
    fine_win = windows(model, model.fine_nm)
    c = model.band_centre_nm
    w = sensor.response(fine_win, c, model.band_fwhm_nm, sens, model.response_exponent)
    spectra = windows(model, jnp.stack([ft.reflected, ft.emitted]))
    mom = sensor.band_moments(w, spectra, fine_win - c[:, None])
    if rho_dd is None:
        rho_dd = sensor.band_integrate(w, windows(model, ft.transfer.rho_dd))
    return BandOperator(path=sensor.band_integrate(w, windows(model, ft.path)),
                        reflected=mom[0], emitted=mom[1], rho_dd=rho_dd)


def band_operator(model: ForwardModel, atm: AtmosphereParams, geom: Geometry,
                  sens: SensorParams = NOMINAL_SENSOR) -> BandOperator:
    """The expensive, surface-independent part of :func:`radiance` (see module docstring);
    the spherical albedo is the built-in atmosphere's at the band centres."""
    ft = fine_terms(model, atm, geom)
    rho = atmosphere.spherical_albedo(model.band_centre_nm, atm, model.aerosol_omega,
                                      model.aerosol_g)
    return operator_from_terms(model, ft, sens, rho)


def radiance_from_operator(model: ForwardModel, op: BandOperator, reflectance_coeffs,
                           sif: SifParams):
    """Band radiance of one pixel's surface through a precomputed :class:`BandOperator`.

    The cheap, per-pixel part of :func:`radiance`: reflectance and fluorescence Taylor
    coefficients at the band centres contracted with the operator's moments. The
    multiple-scattering factor ``1 / (1 - rho_dd R)`` (within 10 % of one, and smooth) is
    taken at the band centre; its variation across a band changes the radiance by about
    1e-5 (relative) for HyPlant and 1e-4 for DESIS (tested against the fine-grid route).
    """
    # sum_m moment_m R_m = coeffs @ (basis contracted with the moments): the contraction
    # depends on the operator only, so under vmap over pixels it is computed once
    reflected_basis = jnp.einsum("dbk,db->kb", model.basis_band, op.reflected)
    r0 = model.basis_band[0] @ reflectance_coeffs
    f = surface.sif_taylor(model.band_centre_nm, sif)
    reflected = reflectance_coeffs @ reflected_basis
    emitted = jnp.sum(op.emitted * f, axis=0)
    return op.path + (reflected + emitted) / (1.0 - op.rho_dd * r0)


def radiance(model: ForwardModel, reflectance_coeffs, sif: SifParams, atm: AtmosphereParams,
             geom: Geometry, sens: SensorParams = NOMINAL_SENSOR):
    """Band radiance (mW m-2 sr-1 nm-1) of one pixel from its latent parameters.

    Parameters
    ----------
    model : ForwardModel
    reflectance_coeffs : array (K,)
        B-spline coefficients of the reflectance (``model.basis_fine @ coeffs`` on the
        fine grid).
    sif : SifParams
        Fluorescence peaks.
    atm : AtmosphereParams
    geom : Geometry
    sens : SensorParams
        Spectral shift (nm) and FWHM scale of the pixel's detector column.
    """
    return radiance_from_operator(model, band_operator(model, atm, geom, sens),
                                  reflectance_coeffs, sif)


def check_inputs(reflectance_coeffs=None, sif: SifParams | None = None,
                 atm: AtmosphereParams | None = None, geom: Geometry | None = None,
                 sens: SensorParams | None = None) -> None:
    """Check forward-model inputs outside of ``jit``; raise ValueError naming the problem.

    The jitted functions cannot raise on values; call this on user input before them.
    Checks finiteness of every parameter and the physical ranges: non-negative SIF
    amplitudes and positive widths, surface pressure in (0, 1100] hPa, AOT >= 0, diffuse
    path factor >= 1, zenith angles in [0, 90) degrees, sensor not below the ground, and
    spectral shift and FWHM scale inside the range the response windows allow.
    """
    groups = {"reflectance_coeffs": reflectance_coeffs, "sif": sif, "atm": atm, "geom": geom,
              "sens": sens}
    for gname, group in groups.items():
        if group is None:
            continue
        items = group._asdict().items() if hasattr(group, "_asdict") else [(gname, group)]
        for name, value in items:
            v = np.asarray(value, dtype=np.float64)
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{gname}.{name} contains NaN or infinite values"
                                 if name != gname else f"{gname} contains NaN or infinite values")

    def need(ok, message):
        if not np.all(ok):
            raise ValueError(message)

    if sif is not None:
        need(np.asarray(sif.amplitude_red) >= 0, "sif.amplitude_red must be >= 0")
        need(np.asarray(sif.amplitude_far_red) >= 0, "sif.amplitude_far_red must be >= 0")
        need(np.asarray(sif.sigma_red) > 0, "sif.sigma_red must be > 0")
        need(np.asarray(sif.sigma_far_red) > 0, "sif.sigma_far_red must be > 0")
    if atm is not None:
        p = np.asarray(atm.surface_pressure_hpa)
        need((p > 0) & (p <= 1100), "atm.surface_pressure_hpa must be in (0, 1100] hPa")
        need(np.asarray(atm.aot550) >= 0, "atm.aot550 must be >= 0")
        need(np.asarray(atm.diffuse_path) >= 1, "atm.diffuse_path must be >= 1")
    if geom is not None:
        for name in ("sza_deg", "vza_deg"):
            a = np.asarray(getattr(geom, name))
            need((a >= 0) & (a < 90), f"geom.{name} must be in [0, 90) degrees")
        need(np.asarray(geom.sensor_altitude_m) >= np.asarray(geom.surface_altitude_m),
             "geom.sensor_altitude_m is below the ground (surface_altitude_m)")
    if sens is not None:
        scale = np.asarray(sens.fwhm_scale)
        need((scale >= 1 / MAX_FWHM_SCALE) & (scale <= MAX_FWHM_SCALE),
             f"sens.fwhm_scale must be in [{1 / MAX_FWHM_SCALE:.3f}, {MAX_FWHM_SCALE}]")
