"""Synthetic scenes with known truth.

A scene is built in three steps:

1. **Surface.** Either generated (:func:`random_surface`): agricultural parcels of crops of
   varied vigour, grassland, bare soil, water and roofs or roads, each parcel with smooth
   internal variation, so that vegetation cover, NDVI and SIF vary from zero to high; or
   given by the user as reflectance and SIF spectra on any wavelength grid
   (:func:`surface_from_spectra`, e.g. SCOPE output at 1 nm), resampled linearly onto the
   model's fine grid.
2. **Atmosphere, geometry, sensor.** Surface elevation, surface pressure and aerosol optical
   thickness vary smoothly in space; the Angstrom exponent and the diffuse path factor
   are scene constants; the sensor's spectral shift and FWHM vary across track (smile);
   view angles follow the detector column across the field of view.
3. **Radiance.** The exact fine-grid forward model (:func:`bayesfluo.physics.radiance_exact`)
   integrated by each column's spectral response, plus noise with the instrument's
   variance ``a * L + b``.

The result is an :class:`xarray.Dataset` in the scene format (README, "Scene format")
with every latent stored as a ``true_*`` variable. The same seed gives the same scene.
"""

from __future__ import annotations

import datetime as _dt
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from bayesfluo._version import __version__
from bayesfluo.instruments import Instrument, get_instrument
from bayesfluo.physics import sensor as _sensor
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.external import ExternalAtmosphere, radiance_fine_external
from bayesfluo.physics.forward import (
    ForwardModel,
    Geometry,
    build_forward_model,
    radiance_fine,
    response,
    standard_pressure_hpa,
    windows,
)
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.solar import earth_sun_distance_factor
from bayesfluo.physics.surface import SifParams, sif_spectrum

__all__ = ["SurfaceParams", "LAND_COVER", "random_surface", "surface_from_spectra",
           "smooth_field", "parcel_map",
           "simulate_scene", "surface_reflectance"]

LAND_COVER = {0: "crop", 1: "grassland", 2: "bare_soil", 3: "water", 4: "urban"}
NDVI_RED_NM, NDVI_NIR_NM = 670.0, 800.0


class SurfaceParams(NamedTuple):
    """Per-pixel parameters of the generated surface (arrays of shape (n_pixel,)).

    Reflectance = ``cover * R_veg + (1 - cover) * R_background`` with
    ``R_veg = red + (nir - red) / (1 + exp(-(lambda - edge) / width))`` and
    ``R_background = bg_offset + bg_slope (lambda - 650)/100 + bg_water exp(-(lambda - 650)/60)``.
    """

    cover: np.ndarray
    red: np.ndarray
    nir: np.ndarray
    edge_nm: np.ndarray
    edge_width_nm: np.ndarray
    bg_offset: np.ndarray
    bg_slope: np.ndarray
    bg_water: np.ndarray
    sif: SifParams
    land_cover: np.ndarray


def surface_reflectance(p: SurfaceParams, wavelength_nm):
    """Reflectance spectra (n_pixel, n_wavelength) of generated surfaces (JAX or NumPy)."""
    wl = wavelength_nm[None, :]
    col = lambda a: a[:, None]  # noqa: E731
    veg = col(p.red) + (col(p.nir) - col(p.red)) / (
        1.0 + jnp.exp(-(wl - col(p.edge_nm)) / col(p.edge_width_nm)))
    bg = (col(p.bg_offset) + col(p.bg_slope) * (wl - 650.0) / 100.0
          + col(p.bg_water) * jnp.exp(-(wl - 650.0) / 60.0))
    return col(p.cover) * veg + (1.0 - col(p.cover)) * bg


def smooth_field(rng: np.random.Generator, shape: tuple[int, int], scale_px: float
                  ) -> np.ndarray:
    """Gaussian random field with unit standard deviation and correlation ~scale_px."""
    ny, nx = shape
    noise = rng.standard_normal(shape)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    filt = np.exp(-2.0 * (np.pi * scale_px) ** 2 * (kx**2 + ky**2))
    f = np.real(np.fft.ifft2(np.fft.fft2(noise) * filt))
    return (f - f.mean()) / (f.std() + 1e-12)


def parcel_map(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Parcel index map: a grid of fields about 20 pixels wide, jittered edges."""
    labels = []
    for n in shape:
        k = max(1 if n >= 4 else 0, int(round(n / 20)) - 1)  # number of cuts
        pos = (np.arange(1, k + 1) + rng.uniform(-0.3, 0.3, k)) * n / (k + 1)
        labels.append(np.searchsorted(np.sort(pos), np.arange(n) + 0.5))
    return labels[0][:, None] * (labels[1].max() + 1) + labels[1][None, :]


def random_surface(shape: tuple[int, int], rng: np.random.Generator) -> SurfaceParams:
    """Generated land surface of ``shape`` pixels (see module docstring)."""
    ny, nx = shape
    parcel = parcel_map(rng, shape)
    ids = np.unique(parcel)
    probs = np.array([0.55, 0.12, 0.15, 0.06, 0.12])
    cls_of = rng.choice(len(probs), size=ids.size, p=probs)
    # every scene has vegetated and non-vegetated parcels
    if ids.size >= 3:
        cls_of[rng.choice(ids.size, 3, replace=False)] = (0, 2, 4)
    lc = cls_of[np.searchsorted(ids, parcel)]
    vig_of = rng.uniform(0.3, 1.2, size=ids.size)
    scale = max(2.0, min(ny, nx) / 10)
    f1, f2, f3 = (smooth_field(rng, shape, scale) for _ in range(3))
    vigour = np.clip(vig_of[np.searchsorted(ids, parcel)] + 0.12 * f1, 0.1, 1.4)
    cover = np.select(
        [lc == 0, lc == 1, lc == 2, lc == 3, lc == 4],
        [np.clip(0.85 + 0.12 * f2, 0.4, 1.0), np.clip(0.9 + 0.05 * f2, 0.7, 1.0),
         np.clip(0.04 + 0.04 * f2, 0.0, 0.15), np.zeros(shape),
         np.clip(0.05 + 0.05 * f2, 0.0, 0.2)])
    bg_offset = np.select([lc == 3, lc == 4], [np.full(shape, 0.005),
                                               np.clip(0.18 + 0.06 * f3, 0.06, 0.35)],
                          np.clip(0.17 + 0.04 * f3, 0.08, 0.3))
    bg_slope = np.select([lc == 3, lc == 4], [np.zeros(shape), np.full(shape, 0.01)],
                         np.clip(0.06 + 0.015 * f3, 0.02, 0.1))
    bg_water = np.where(lc == 3, 0.04, 0.0)
    red = np.clip(0.06 - 0.025 * vigour + 0.005 * f1, 0.02, 0.08)
    nir = np.clip(0.30 + 0.17 * vigour + 0.03 * f2, 0.25, 0.6)
    edge = 712.0 + 8.0 * vigour + 1.0 * f3
    width = np.full(shape, 10.0) + 0.5 * f1
    amp = cover * vigour
    sif = SifParams(
        amplitude_red=(1.3 * amp).ravel(), amplitude_far_red=(3.9 * amp).ravel(),
        centre_red=(684.0 + 0.8 * f2).ravel(), centre_far_red=(740.0 + 1.2 * f3).ravel(),
        sigma_red=np.full(ny * nx, 9.0), sigma_far_red=(21.0 + 0.8 * f1).ravel())
    r = lambda a: np.asarray(a, dtype=np.float64).ravel()  # noqa: E731
    return SurfaceParams(r(cover), r(red), r(nir), r(edge), r(width), r(bg_offset), r(bg_slope),
                         r(bg_water), sif, lc.ravel().astype(np.int8))


def _one_canopy(surf: SurfaceParams, rng: np.random.Generator) -> SurfaceParams:
    """A single canopy over time (tower): the first crop pixel's surface everywhere, its
    fluorescence varying smoothly (stress, light) by a factor 0.5-1.2."""
    n = surf.cover.size
    i = int(np.argmax(surf.land_cover == 0))
    rep = lambda a: np.full(n, np.asarray(a)[i])  # noqa: E731
    t = np.linspace(0.0, 1.0, n)
    factor = 0.85 + 0.35 * np.sin(2 * np.pi * (t * rng.uniform(0.5, 1.5) + rng.uniform()))
    sif = SifParams(rep(surf.sif.amplitude_red) * factor, rep(surf.sif.amplitude_far_red) * factor,
                    *(rep(a) for a in surf.sif[2:]))
    return SurfaceParams(*(rep(a) for a in surf[:-2]), sif=sif, land_cover=rep(surf.land_cover))


def surface_from_spectra(spectra: xr.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Check user surface spectra (scene format section 3) and return arrays.

    Returns
    -------
    wavelength_nm : (n_wavelength,), reflectance : (n_pixel, n_wavelength),
    sif : (n_pixel, n_wavelength), all float64.

    Raises
    ------
    ValueError
        Missing variables, non-increasing or non-finite grid, NaN values, reflectance
        outside [0, 1], negative fluorescence, or a vacuum grid (convert it to air first).
    """
    for name in ("reflectance", "sif"):
        if name not in spectra:
            raise ValueError(f"surface spectra need a variable {name!r} (pixel, wavelength)")
    wl_name = "wavelength"
    if wl_name not in spectra.coords and wl_name not in spectra:
        raise ValueError("surface spectra need a 'wavelength' coordinate in nm")
    wl_da = spectra[wl_name]
    units = str(wl_da.attrs.get("units", "nm")).strip().lower()
    scale = {"nm": 1.0, "nanometer": 1.0, "nanometers": 1.0, "um": 1e3, "micrometer": 1e3,
             "micrometers": 1e3, "µm": 1e3}.get(units)
    if scale is None:
        raise ValueError(f"surface spectra: wavelength units {units!r} not understood (use nm)")
    wl = np.asarray(wl_da.values, dtype=np.float64) * scale
    if str(wl_da.attrs.get("medium", "air")).lower() == "vacuum":
        from bayesfluo.physics.air import vacuum_to_air
        wl = vacuum_to_air(wl)
    if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0):
        raise ValueError("surface spectra: wavelength must be finite and strictly increasing")
    out = []
    for name in ("reflectance", "sif"):
        da = spectra[name]
        if wl_name not in da.dims or da.ndim != 2:
            raise ValueError(f"surface spectra: {name!r} must have dims (pixel, wavelength)")
        arr = np.asarray(da.transpose(..., wl_name).values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"surface spectra: {name!r} contains NaN or infinite values")
        out.append(arr)
    refl, sif = out
    if refl.min() < 0.0 or refl.max() > 1.0:
        raise ValueError(f"surface spectra: reflectance must lie in [0, 1], found "
                         f"{refl.min():.3g} to {refl.max():.3g}")
    if sif.min() < 0.0:
        raise ValueError(f"surface spectra: fluorescence must be >= 0, found {sif.min():.3g}")
    if refl.shape != sif.shape:
        raise ValueError("surface spectra: reflectance and sif must have the same shape")
    return wl, refl, sif


def _parse_size(size) -> tuple[int, int]:
    if isinstance(size, str):
        parts = size.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"size must look like 128x128, got {size!r}")
        size = (int(parts[0]), int(parts[1]))
    if isinstance(size, int):
        size = (size, size)
    ny, nx = (int(s) for s in size)
    if ny < 1 or nx < 1:
        raise ValueError("scene size must be positive")
    return ny, nx


def _check_finite(**values) -> None:
    for name, v in values.items():
        if v is not None and not np.all(np.isfinite(np.asarray(v, dtype=np.float64))):
            raise ValueError(f"{name} must be finite, got {v!r}")


def _simulate_block(model: ForwardModel, refl_fine, sif_fine, atm: AtmosphereParams,
                    geom: Geometry, sens: SensorParams, want_irradiance: bool,
                    external=None):
    """Band radiance (and irradiance) of pixels that share one detector column; through
    an external transfer-function table (``ExternalAtmosphere``) when one is given."""
    w = response(model, sens)

    def one(r, f, a, g):
        if external is None:
            out = radiance_fine(model, r, f, a, g, with_irradiance=want_irradiance)
        else:
            out = radiance_fine_external(external, r, f, with_irradiance=want_irradiance)
        return [_sensor.band_integrate(w, windows(model, s)) for s in
                (out if want_irradiance else (out,))]

    return jax.vmap(one)(refl_fine, sif_fine, atm, geom)


_simulate_block_jit = jax.jit(_simulate_block, static_argnames=("want_irradiance",))


def simulate_scene(instrument: str | Instrument = "hyplant-fluo", size=(128, 128),
                   seed: int = 0, *, surface: xr.Dataset | None = None,
                   sza_deg: float | None = 30.0, saa_deg: float = 150.0,
                   heading_deg: float = 0.0, altitude_m: float | None = None,
                   surface_altitude_m: float = 100.0, day_of_year: int = 180,
                   snr: float | None = None, aot550: float = 0.12,
                   spectral_shift_nm: float | None = None,
                   model: ForwardModel | None = None, progress: bool = False,
                   atmosphere: ExternalAtmosphere | None = None) -> xr.Dataset:
    """Simulate a scene with known truth.

    Parameters
    ----------
    instrument : str or Instrument
        An instrument name (see ``bayesfluo.INSTRUMENTS``).
    size : "NYxNX", int or (ny, nx)
        Scene size in pixels; for a top-of-canopy instrument, ``ny * nx`` time steps.
    seed : int
        Seed of everything random; the same seed gives the same scene.
    surface : xarray.Dataset, optional
        User surface spectra (``reflectance``, ``sif`` over (pixel, wavelength)); then the
        scene has one row of ``pixel`` columns, or ``size`` if it has as many pixels.
    sza_deg, saa_deg : float
        Sun zenith and azimuth, degrees. A tower time series spans a day around ``sza_deg``
        at noon.
    heading_deg : float
        Flight heading, degrees from north (sets view azimuths).
    altitude_m : float, optional
        Sensor height above the mean ground, m; defaults to the instrument's.
    surface_altitude_m : float
        Mean ground elevation above sea level, m.
    day_of_year : int
        Sets the Earth-Sun distance.
    snr : float, optional
        Signal-to-noise ratio at the instrument's reference radiance; default the
        instrument's. ``numpy.inf`` gives a noise-free scene.
    aot550 : float
        Mean aerosol optical thickness at 550 nm.
    spectral_shift_nm : float, optional
        Spectral shift of the sensor's bands at nadir (nm; the smile adds to it across
        track); default a random draw of a fifth of the instrument's smile.
    model : ForwardModel, optional
        A prebuilt forward model of the instrument (saves its set-up time).
    atmosphere : ExternalAtmosphere, optional
        An external transfer-function table on ``model``'s fine grid (e.g.
        ``external_atmosphere(model, read_table(path))`` of :mod:`bayesfluo.io.tables`)
        used for every pixel in place of the built-in atmosphere, as it is (the table's
        geometry, not the pixels', sets the transfer functions). The scene then has no
        ``true_surface_pressure``, ``true_aot550``, ``true_angstrom`` or
        ``true_diffuse_path``; its attribute ``atmosphere`` names the table's source.
    progress : bool
        Show a progress bar.
    """
    inst = get_instrument(instrument)
    _check_finite(sza_deg=sza_deg, saa_deg=saa_deg, heading_deg=heading_deg,
                  altitude_m=altitude_m, surface_altitude_m=surface_altitude_m, aot550=aot550,
                  spectral_shift_nm=spectral_shift_nm)
    if sza_deg is None or not 0.0 <= sza_deg < 80.0:
        raise ValueError(f"sza_deg must be in [0, 80) degrees, got {sza_deg}")
    if aot550 < 0:
        raise ValueError("aot550 must be >= 0")
    if snr is not None and not snr > 0:
        raise ValueError("snr must be positive (numpy.inf for no noise)")
    model = model or build_forward_model(inst)
    if model.instrument != inst.name:
        raise ValueError(f"model is for {model.instrument}, not {inst.name}")
    external = atmosphere
    if external is not None and external.e0_cos_pi.shape != model.fine_nm.shape:
        raise ValueError(f"atmosphere has {external.e0_cos_pi.shape[0]} fine-grid points, "
                         f"the {inst.name} model {model.fine_nm.shape[0]}: resample the table "
                         "onto this model's grid (bayesfluo.io.tables.external_atmosphere)")
    rng = np.random.default_rng(seed)
    key = jax.random.PRNGKey(seed)
    fine = np.asarray(model.fine_nm, dtype=np.float64)
    tower = inst.platform == "tower"

    if surface is not None:
        wl_s, refl_s, sif_s = surface_from_spectra(surface)
        if wl_s[0] > fine[0] or wl_s[-1] < fine[-1]:
            raise ValueError(
                f"surface spectra cover {wl_s[0]:.1f}-{wl_s[-1]:.1f} nm; {inst.name} needs "
                f"{fine[0]:.1f}-{fine[-1]:.1f} nm (air)")
        npix = refl_s.shape[0]
        ny, nx = _parse_size(size)
        if ny * nx != npix:
            ny, nx = 1, npix
        surf = None
    else:
        ny, nx = _parse_size(size)
        surf = random_surface((ny, nx), rng)
        npix = ny * nx
    if tower:  # a time series: one "column" of ny * nx time steps
        ny, nx = ny * nx, 1
        if surf is not None:
            surf = _one_canopy(surf, rng)
    shape = (ny, nx)

    # --- atmosphere: smooth in space -------------------------------------------------
    scale = max(2.0, min(ny, nx) / 4)
    dem = surface_altitude_m + 40.0 * smooth_field(rng, shape, scale)
    weather = rng.uniform(-0.01, 0.01)  # relative offset of surface pressure from standard
    p_std = np.asarray(standard_pressure_hpa(jnp.asarray(dem, jnp.float32)), dtype=np.float64)
    psurf = p_std * (1.0 + weather + 0.002 * smooth_field(rng, shape, scale))
    aot = np.clip(aot550 * (1.0 + 0.2 * smooth_field(rng, shape, scale)), 0.0, None)
    angstrom = rng.uniform(1.0, 1.6)
    diffuse_path = rng.uniform(1.3, 1.7)

    # --- geometry and sensor -------------------------------------------------------------
    if tower:
        columns = np.zeros(nx, dtype=np.int32)
        hour = np.linspace(-4.0, 4.0, npix).reshape(shape)  # hours from solar noon
        sza_map = np.degrees(np.arccos(np.clip(np.cos(np.radians(sza_deg))
                                               * np.cos(np.radians(15.0 * hour) * 0.8),
                                               0.17, 1.0)))
        saa_map = 180.0 + 15.0 * hour
        vza_map = np.zeros(shape)
        vaa_map = np.zeros(shape)
    else:
        columns = np.round(np.linspace(0, inst.n_columns - 1, nx)).astype(np.int32)
        view = inst.view_zenith(columns)
        vza_map = np.broadcast_to(np.abs(view)[None, :], shape).copy()
        vaa_map = np.broadcast_to(np.where(view >= 0, heading_deg + 90.0, heading_deg - 90.0)
                                  [None, :] % 360.0, shape).copy()
        sza_map = np.full(shape, float(sza_deg))
        saa_map = np.full(shape, float(saa_deg))
    height = float(inst.altitude_m if altitude_m is None else altitude_m)
    if height <= 0:
        raise ValueError("sensor altitude above ground must be positive")
    sensor_alt = float(surface_altitude_m + height)
    if tower:
        sensor_alt_map = dem + height  # the mast stands on the ground
    else:
        sensor_alt_map = np.full(shape, sensor_alt)
    shift0 = rng.normal(0.0, 0.2 * inst.smile_shift_nm) if inst.smile_shift_nm else 0.0
    if spectral_shift_nm is not None:
        shift0 = float(spectral_shift_nm)
    smile_shift, fwhm_scale = (inst.smile(columns) if not tower
                               else (np.zeros(nx), np.ones(nx)))
    shift = shift0 + smile_shift
    dist = float(earth_sun_distance_factor(day_of_year))

    # --- radiance, column by column ------------------------------------------------------
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    rad = np.empty((ny, nx, model.n_bands), np.float32)
    irr = np.empty((ny, nx, model.n_bands), np.float32) if tower else None
    refl_band = np.empty((ny, nx, model.n_bands), np.float32)
    sif_band = np.empty((ny, nx, model.n_bands), np.float32)
    centres = np.asarray(model.band_centre_nm, dtype=np.float64)
    fine_j = f32(fine)
    block = min(ny, 128)  # pixels per jitted call: bounded memory, one compiled shape
    tasks = [(j, r0) for j in range(nx) for r0 in range(0, ny, block)]
    for j, r0 in tqdm(tasks, desc="simulate", disable=not progress, unit="block"):
        rows = np.minimum(np.arange(r0, r0 + block), ny - 1)  # pad with the last row
        keep = rows.size - max(0, r0 + block - ny)
        sl = np.ravel_multi_index((rows, np.full(rows.size, j)), shape)
        if surf is not None:
            sp = SurfaceParams(*(f32(a[sl]) for a in surf[:-2]), sif=None, land_cover=None)
            sp_sif = SifParams(*(f32(np.asarray(a)[sl]) for a in surf.sif))
            r_fine = surface_reflectance(sp, fine_j)
            f_fine = jax.vmap(lambda s: sif_spectrum(fine_j, s))(sp_sif)
            r_band = surface_reflectance(sp, f32(centres))
            f_band = jax.vmap(lambda s: sif_spectrum(f32(centres), s))(sp_sif)
        else:
            r_fine = f32(np.stack([np.interp(fine, wl_s, refl_s[i]) for i in sl]))
            f_fine = f32(np.stack([np.interp(fine, wl_s, sif_s[i]) for i in sl]))
            r_band = np.stack([np.interp(centres, wl_s, refl_s[i]) for i in sl])
            f_band = np.stack([np.interp(centres, wl_s, sif_s[i]) for i in sl])
        def px(a, rows=rows, j=j):
            return f32(a[rows, j])

        def full(v, n=rows.size):
            return f32(np.full(n, v))

        atm = AtmosphereParams(px(psurf), px(aot), full(angstrom), full(diffuse_path))
        geom = Geometry(px(sza_map), px(vza_map), f32((saa_map - vaa_map)[rows, j] % 360.0),
                        px(dem), px(sensor_alt_map), full(dist))
        sens = SensorParams(f32(shift[j]), f32(fwhm_scale[j]))
        out = _simulate_block_jit(model, r_fine, f_fine, atm, geom, sens, tower, external)
        dst = slice(r0, r0 + keep)
        rad[dst, j] = np.asarray(out[0])[:keep]
        if tower:
            irr[dst, j] = np.asarray(out[1])[:keep]
        refl_band[dst, j] = np.asarray(r_band)[:keep]
        sif_band[dst, j] = np.asarray(f_band)[:keep]

    a, b = inst.noise_coefficients(snr)
    k_rad, k_irr = jax.random.split(key)
    clean = rad.copy()
    rad = np.asarray(_sensor.add_noise(k_rad, jnp.asarray(rad), a, b), dtype=np.float32)
    if tower:
        # irradiance channel: same relative noise at its own reference level
        irr = np.asarray(_sensor.add_noise(k_irr, jnp.asarray(irr), a * np.pi, b * np.pi**2),
                         dtype=np.float32)

    # --- truth summaries -------------------------------------------------------------------
    def sif_at(wl0):
        if surf is not None:
            return np.asarray(sif_spectrum(wl0, SifParams(*(np.asarray(x) for x in surf.sif))))
        return np.array([np.interp(wl0, wl_s, s) for s in sif_s])

    if surf is not None:
        rr = np.asarray(surface_reflectance(surf._replace(sif=None),
                                            np.array([NDVI_RED_NM, NDVI_NIR_NM])))
        peak_wl = np.asarray(surf.sif.centre_far_red)
        sif_peak = np.asarray(sif_spectrum(peak_wl, SifParams(*(np.asarray(x)
                                                                for x in surf.sif))))
    else:
        rr = np.stack([[np.interp(w, wl_s, r) for w in (NDVI_RED_NM, NDVI_NIR_NM)]
                       for r in refl_s])
        m = (wl_s >= 720.0) & (wl_s <= 780.0)
        sif_peak = sif_s[:, m].max(axis=1) if m.any() else sif_s.max(axis=1)
    ndvi = (rr[:, 1] - rr[:, 0]) / (rr[:, 1] + rr[:, 0])

    ds = _to_dataset(
        inst=inst, model=model, shape=shape, tower=tower, radiance=rad, clean=clean,
        irradiance=irr, refl_band=refl_band, sif_band=sif_band, ndvi=ndvi.reshape(shape),
        f760=sif_at(760.0).reshape(shape), f687=sif_at(687.0).reshape(shape),
        sif_peak=np.asarray(sif_peak).reshape(shape), psurf=psurf, aot=aot, angstrom=angstrom,
        diffuse_path=diffuse_path, shift=shift, fwhm_scale=fwhm_scale, columns=columns,
        sza=sza_map, saa=saa_map, vza=vza_map, vaa=vaa_map, dem=dem, sensor_alt=sensor_alt,
        sensor_alt_map=sensor_alt_map, day_of_year=day_of_year, seed=seed, noise=(a, b),
        snr=inst.snr if snr is None else snr,
        land_cover=None if surf is None else surf.land_cover.reshape(shape),
        cover=None if surf is None else surf.cover.reshape(shape),
        source="bayesfluo.scene.simulate" + (" (user surface spectra)" if surf is None else ""))
    if external is not None:
        ds = ds.drop_vars(["true_surface_pressure", "true_aot550", "true_angstrom",
                           "true_diffuse_path"])
        ds.attrs["atmosphere"] = "external table: " + external.source
    if model.response_exponent != 2.0:  # the bands' response is not Gaussian: say so
        ds.attrs["response_exponent"] = float(model.response_exponent)
    return ds


def _to_dataset(*, inst, model, shape, tower, radiance, clean, irradiance, refl_band, sif_band,
                ndvi, f760, f687, sif_peak, psurf, aot, angstrom, diffuse_path, shift,
                fwhm_scale, columns, sza, saa, vza, vaa, dem, sensor_alt, sensor_alt_map,
                day_of_year, seed, noise, snr, land_cover, cover, source) -> xr.Dataset:
    ny, nx = shape
    centres = np.asarray(model.band_centre_nm, dtype=np.float64)
    rad_units = "mW m-2 sr-1 nm-1"
    if tower:
        pix_dims = ("time",)
        flat = lambda a: np.asarray(a).reshape((ny * nx,) + np.shape(a)[2:])  # noqa: E731
    else:
        pix_dims = ("y", "x")
        flat = lambda a: np.asarray(a)  # noqa: E731
    band_dims = pix_dims + ("band",)

    def var(dims, data, units, long_name, standard_name=None, dtype=np.float32, **extra):
        attrs = {"units": units, "long_name": long_name, **extra}
        if standard_name:
            attrs["standard_name"] = standard_name
        return xr.Variable(dims, np.asarray(data).astype(dtype), attrs)

    v = {
        "radiance": var(band_dims, flat(radiance), rad_units,
                        "at-sensor spectral radiance" if not tower
                        else "upwelling top-of-canopy spectral radiance"),
        "mask": var(pix_dims, flat(np.ones(shape)), "1", "usable pixel (1) or excluded (0)",
                    dtype=np.int8, flag_values=np.array([0, 1], np.int8),
                    flag_meanings="excluded usable"),
        "sza": var(pix_dims, flat(sza), "degree", "solar zenith angle", "solar_zenith_angle"),
        "saa": var(pix_dims, flat(saa), "degree", "solar azimuth angle (clockwise from north)",
                   "solar_azimuth_angle"),
        "vza": var(pix_dims, flat(vza), "degree", "view zenith angle",
                   "sensor_zenith_angle"),
        "vaa": var(pix_dims, flat(vaa), "degree",
                   "azimuth of the sensor seen from the pixel (clockwise from north)",
                   "sensor_azimuth_angle"),
        "surface_altitude": var(pix_dims, flat(dem), "m", "ground elevation above sea level",
                                "surface_altitude"),
        "ndvi": var(pix_dims, flat(ndvi), "1", "NDVI from reflectance at 670 and 800 nm",
                    "normalized_difference_vegetation_index"),
        "true_f760": var(pix_dims, flat(f760), rad_units, "true SIF at 760 nm"),
        "true_sif_peak": var(pix_dims, flat(sif_peak), rad_units,
                             "true SIF at the far-red peak"),
        "true_reflectance": var(band_dims, flat(refl_band), "1",
                                "true surface reflectance at band centres",
                                "surface_bidirectional_reflectance"),
        "true_sif": var(band_dims, flat(sif_band), rad_units, "true SIF at band centres"),
        "true_radiance": var(band_dims, flat(clean), rad_units, "noise-free radiance"),
        "true_surface_pressure": var(pix_dims, flat(psurf), "hPa", "true surface pressure",
                                     "surface_air_pressure"),
        "true_aot550": var(pix_dims, flat(aot), "1", "true aerosol optical thickness, 550 nm",
                           "atmosphere_optical_thickness_due_to_ambient_aerosol_particles"),
        "true_angstrom": var((), angstrom, "1", "true Angstrom exponent"),
        "true_diffuse_path": var((), diffuse_path, "1",
                                 "true O2 path factor of diffuse light"),
    }
    if 687.0 >= centres[0] and 687.0 <= centres[-1]:
        v["true_f687"] = var(pix_dims, flat(f687), rad_units, "true SIF at 687 nm")
    if tower:
        v["irradiance"] = var(band_dims, flat(irradiance), "mW m-2 nm-1",
                              "downwelling irradiance at the top of canopy",
                              "surface_downwelling_spectral_irradiance_in_air")
        v["sensor_altitude"] = var(pix_dims, flat(sensor_alt_map), "m",
                                   "sensor altitude above sea level")
        v["true_spectral_shift"] = var((), shift[0], "nm", "true spectral shift")
        v["true_fwhm_scale"] = var((), fwhm_scale[0], "1", "true FWHM scale factor")
    else:
        v["sensor_altitude"] = var((), sensor_alt, "m", "sensor altitude above sea level",
                                   "altitude")
        v["true_spectral_shift"] = var(("x",), shift, "nm",
                                       "true spectral shift of the detector column")
        v["true_fwhm_scale"] = var(("x",), fwhm_scale, "1",
                                   "true FWHM scale factor of the detector column")
    if land_cover is not None:
        v["true_land_cover"] = var(pix_dims, flat(land_cover), "1", "land cover class",
                                   dtype=np.int8,
                                   flag_values=np.array(list(LAND_COVER), np.int8),
                                   flag_meanings=" ".join(LAND_COVER.values()))
        v["true_vegetation_cover"] = var(pix_dims, flat(cover), "1",
                                         "true fractional vegetation cover")
    coords = {
        "wavelength": ("band", centres, {"units": "nm", "medium": "air",
                                         "long_name": "band centre wavelength",
                                         "standard_name": "radiation_wavelength"}),
        "fwhm": ("band", np.asarray(model.band_fwhm_nm, np.float64),
                 {"units": "nm", "long_name": "nominal full width at half maximum"}),
    }
    if tower:
        t0 = np.datetime64(_dt.datetime(2026, 1, 1, 8)) + np.timedelta64(day_of_year - 1, "D")
        coords["time"] = ("time", t0 + (np.linspace(0, 8 * 3600, ny * nx)).astype(
            "timedelta64[s]"))
    else:
        coords["column"] = ("x", columns.astype(np.int32),
                            {"units": "1", "long_name": "across-track detector column"})
    a, b = noise
    attrs = {
        "Conventions": "CF-1.10", "instrument": inst.name, "day_of_year": int(day_of_year),
        "source": source, "seed": int(seed), "bayesfluo_version": __version__,
        "noise_a": float(a), "noise_b": float(b), "snr": float(snr),
        "title": f"bayesfluo synthetic {inst.name} scene",
        "history": f"{_dt.datetime.now(_dt.UTC).isoformat(timespec='seconds')} simulated",
    }
    return xr.Dataset(v, coords=coords, attrs=attrs)
