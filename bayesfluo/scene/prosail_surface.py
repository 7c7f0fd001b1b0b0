"""Surfaces from outside the model's family: PROSAIL canopies and SIF of other shapes.

The model describes reflectance with B-splines and SIF with a fixed pair of Gaussian
peaks. A posterior is only honest if it stays honest on surfaces that are not drawn from
that family, so training and validation use scenes built here as well:

* **vegetation**: canopy reflectance from PROSAIL (PROSPECT-5 leaves in a 4SAIL canopy,
  ``pip install prosail``) with leaf and canopy parameters drawn broadly (leaf area index
  0.2-7, chlorophyll 15-80 ug cm-2, carotenoids, brown pigments, water, dry matter, leaf
  structure, mean leaf angle, hot spot, soil brightness and moisture), crops with smooth
  variation inside each parcel;
* **soils** (PROSAIL's dry and wet soil spectra, no canopy), **water** and **roofs or
  roads** (grey with a slope);
* **SIF** of shapes the model does not have: each peak an asymmetric Gaussian (left and
  right widths drawn separately), peak positions 680-690 and 728-748 nm, far-red widths
  14-32 nm, a red-to-far-red ratio of 0.3-1.2, an amplitude that grows with the canopy's
  light absorption (``1 - exp(-0.5 LAI)``) times a photosynthetic vigour.

:func:`prosail_surface` returns the spectra in the form of
:func:`bayesfluo.scene.simulate.surface_from_spectra` (``simulate_scene(surface=...)``).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from bayesfluo.scene.simulate import parcel_map, smooth_field

__all__ = ["prosail_surface", "asymmetric_sif"]

#: Land cover classes of :func:`prosail_surface` and their probabilities per parcel.
CLASSES = {"crop": 0.55, "grassland": 0.12, "bare_soil": 0.15, "water": 0.06, "urban": 0.12}


def asymmetric_sif(wavelength_nm: np.ndarray, amp_far: np.ndarray, centre_far: np.ndarray,
                   left_far: np.ndarray, right_far: np.ndarray, amp_red: np.ndarray,
                   centre_red: np.ndarray, left_red: np.ndarray, right_red: np.ndarray
                   ) -> np.ndarray:
    """SIF spectra (n, n_wavelength), mW m-2 sr-1 nm-1: two peaks, each a Gaussian with
    its own width (sd, nm) left and right of its centre (nm), of height ``amp``."""
    wl = np.asarray(wavelength_nm, np.float64)[None, :]

    def peak(a, c, lo, hi):
        d = wl - c[:, None]
        s = np.where(d < 0, lo[:, None], hi[:, None])
        return a[:, None] * np.exp(-0.5 * (d / s) ** 2)

    return (peak(amp_far, centre_far, left_far, right_far)
            + peak(amp_red, centre_red, left_red, right_red))


def _prosail():
    try:
        import prosail
    except ImportError:  # pragma: no cover - the message is the point
        raise ImportError("PROSAIL surfaces need the 'prosail' package: pip install prosail "
                          "(or pip install 'bayesfluo[dev]')") from None
    return prosail


def prosail_surface(shape: tuple[int, int], rng: np.random.Generator, *,
                    sza_deg: float = 30.0,
                    wavelength_nm: np.ndarray | None = None) -> xr.Dataset:
    """A patchwork of parcels with PROSAIL canopies, soils, water and roofs, and SIF of
    shapes outside the model's family (see the module docstring).

    Parameters
    ----------
    shape : (ny, nx)
        Scene size in pixels.
    rng : numpy.random.Generator
        Source of every random draw (the same seed gives the same surface).
    sza_deg : float
        Sun zenith angle for PROSAIL's canopy reflectance, degrees (the view is nadir).
    wavelength_nm : array, optional
        Output grid (air, nm); default 400-1000 nm at 1 nm, which covers the NDVI bands
        (670, 800 nm) and the window of every instrument.

    Returns
    -------
    xarray.Dataset
        ``reflectance`` (1) and ``sif`` (mW m-2 sr-1 nm-1) over (pixel, wavelength), row
        after row of ``shape``, and ``land_cover`` (pixel) with the class names in its
        ``flag_meanings``.
    """
    prosail = _prosail()
    wl = np.arange(400.0, 1001.0, 1.0) if wavelength_nm is None else np.asarray(
        wavelength_nm, np.float64)
    ny, nx = shape
    n = ny * nx
    parcel = parcel_map(rng, shape)
    ids = np.unique(parcel)
    names = list(CLASSES)
    probs = np.array(list(CLASSES.values()))
    cls_of = rng.choice(len(names), size=ids.size, p=probs / probs.sum())
    if ids.size >= 3:  # every scene has vegetated and non-vegetated parcels
        cls_of[rng.choice(ids.size, 3, replace=False)] = (0, 2, 4)
    lc = cls_of[np.searchsorted(ids, parcel)].ravel()
    scale = max(2.0, min(ny, nx) / 10)
    fields = [smooth_field(rng, shape, scale).ravel() for _ in range(4)]

    def per_parcel(lo, hi):
        return rng.uniform(lo, hi, ids.size)[np.searchsorted(ids, parcel)].ravel()

    # leaf and canopy parameters: drawn per parcel, varied smoothly inside it
    lai = np.clip(per_parcel(0.3, 6.5) * np.exp(0.25 * fields[0]), 0.2, 7.0)
    lai = np.where(lc == 1, np.clip(0.6 * lai, 0.2, 4.0), lai)   # grassland: sparser
    cab = np.clip(per_parcel(15.0, 80.0) + 5.0 * fields[1], 10.0, 90.0)
    car = np.clip(cab / rng.uniform(4.0, 8.0), 2.0, 20.0)
    cbrown = per_parcel(0.0, 0.6)
    cw = per_parcel(0.005, 0.03)
    cm = per_parcel(0.003, 0.012)
    nleaf = per_parcel(1.2, 2.3)
    lidfa = per_parcel(30.0, 70.0)
    hspot = per_parcel(0.01, 0.3)
    rsoil = per_parcel(0.5, 1.5)
    psoil = per_parcel(0.0, 1.0)
    refl_full = np.empty((n, 2101))
    for i in range(n):  # PROSAIL is a scalar Fortran-style code: ~1 ms a spectrum
        refl_full[i] = prosail.run_prosail(
            nleaf[i], cab[i], car[i], cbrown[i], cw[i], cm[i], lai[i], lidfa[i], hspot[i],
            float(sza_deg), 0.0, 0.0, typelidf=2, rsoil=rsoil[i], psoil=psoil[i],
            factor="SDR")
    # PROSAIL's soil spectrum alone (its canopy at LAI -> 0) for bare soil
    soil_full = np.empty((n, 2101))
    for i in np.flatnonzero(lc == 2):
        soil_full[i] = prosail.run_prosail(1.5, 40.0, 8.0, 0.0, 0.01, 0.009, 1e-6, 45.0, 0.1,
                                           float(sza_deg), 0.0, 0.0, typelidf=2,
                                           rsoil=rsoil[i], psoil=psoil[i], factor="SDR")
    grid = np.arange(400.0, 2501.0)
    veg = np.stack([np.interp(wl, grid, r) for r in refl_full])
    soil = np.stack([np.interp(wl, grid, r) if lc[i] == 2 else np.zeros(wl.size)
                     for i, r in enumerate(soil_full)])
    water = (0.02 + 0.01 * fields[2][:, None]) * np.exp(-(np.maximum(wl[None, :], 500.0)
                                                           - 640.0) / 80.0)
    urban = (np.clip(0.2 + 0.06 * fields[3], 0.06, 0.4)[:, None]
             * (1.0 + 0.1 * (wl[None, :] - 700.0) / 100.0))
    refl = np.select([lc[:, None] == 0, lc[:, None] == 1, lc[:, None] == 2,
                      lc[:, None] == 3], [veg, veg, soil, np.clip(water, 0.002, None)], urban)
    refl = np.clip(refl, 1e-4, 0.95)

    # SIF: absorbed light (1 - exp(-0.5 LAI)) times vigour; none on soil, water, roofs
    vegetated = lc <= 1
    fapar = np.where(vegetated, 1.0 - np.exp(-0.5 * lai), 0.0)
    vigour = np.clip(per_parcel(0.3, 1.2) + 0.1 * fields[1], 0.05, 1.4)
    amp_far = 4.2 * fapar * vigour
    sif = asymmetric_sif(
        wl, amp_far, centre_far=per_parcel(728.0, 748.0) + 0.8 * fields[2],
        left_far=per_parcel(14.0, 26.0), right_far=per_parcel(18.0, 32.0),
        amp_red=amp_far * per_parcel(0.3, 1.2), centre_red=per_parcel(680.0, 690.0),
        left_red=per_parcel(6.0, 11.0), right_red=per_parcel(7.0, 14.0))
    sif = np.clip(sif, 0.0, None)
    return xr.Dataset(
        {"reflectance": (("pixel", "wavelength"), refl, {"units": "1"}),
         "sif": (("pixel", "wavelength"), sif, {"units": "mW m-2 sr-1 nm-1"}),
         "land_cover": ("pixel", lc.astype(np.int8),
                        {"flag_values": np.arange(len(names), dtype=np.int8),
                         "flag_meanings": " ".join(names)})},
        coords={"wavelength": ("wavelength", wl, {"units": "nm", "medium": "air"})},
        attrs={"source": "bayesfluo.scene.prosail_surface (PROSPECT-5 + 4SAIL via "
                         "the prosail package; asymmetric SIF peaks)"})
