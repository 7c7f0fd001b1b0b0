"""Instruments as data: spectral sampling, response width, noise, platform and geometry.

Values from SCIENCE.md section 3. Windows are limited to 650-800 nm, the range of the
shipped solar spectrum (640-820 nm) less the margins of the spectral response; DESIS and
FLORIS cover more of the spectrum than bayesfluo models. All wavelengths are in air.

Noise: variance ``a * L + b`` with ``L`` in mW m-2 sr-1 nm-1, set so that the
signal-to-noise ratio is ``snr`` at ``reference_radiance`` with ``read_noise_fraction`` of
the variance there coming from the signal-independent term.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Instrument", "INSTRUMENTS", "get_instrument"]


@dataclass(frozen=True)
class Instrument:
    """An imaging spectrometer or field spectrometer.

    Attributes
    ----------
    name : str
        Identifier used in scenes (attribute ``instrument``) and on the command line.
    window_nm : (float, float)
        First and last band centre modelled, nm (air).
    first_band_nm : float
        A band centre of the instrument's real grid; bands are ``first + k * sampling``.
    sampling_nm, fwhm_nm : float
        Band spacing and full width at half maximum of the response, nm.
    platform : str
        ``"airborne"``, ``"spaceborne"`` or ``"tower"`` (top of canopy, irradiance measured).
    altitude_m : float
        Default sensor height above the ground, m.
    fov_deg : float
        Full across-track field of view, degrees (0 for a single-view spectrometer).
    n_columns : int
        Detector columns across track.
    pixel_size_m : float
        Ground sampling distance, m.
    snr, reference_radiance, read_noise_fraction : float
        Noise model (see module docstring).
    n_basis : int
        Cubic B-spline functions for the reflectance over the window.
    smile_shift_nm, smile_fwhm : float
        Typical edge-of-swath spectral shift (nm) and relative FWHM change of the smile.
    fine_step_nm : float
        Step of the fine grid on which radiance is computed before band integration, nm
        (0.0025 resolves the O2 lines to 7e-4 in band transmittance; see
        ``benchmarks/o2_sampling.py``).
    description : str
        One line for people.
    """

    name: str
    window_nm: tuple[float, float]
    first_band_nm: float
    sampling_nm: float
    fwhm_nm: float
    platform: str
    altitude_m: float
    fov_deg: float
    n_columns: int
    pixel_size_m: float
    snr: float
    reference_radiance: float = 100.0
    read_noise_fraction: float = 0.1
    n_basis: int = 8
    smile_shift_nm: float = 0.0
    smile_fwhm: float = 0.0
    fine_step_nm: float = 0.0025
    description: str = ""

    def band_centres(self) -> np.ndarray:
        """Band centres (nm, air) inside the window."""
        lo, hi = self.window_nm
        k0 = int(np.ceil((lo - self.first_band_nm) / self.sampling_nm - 1e-9))
        k1 = int(np.floor((hi - self.first_band_nm) / self.sampling_nm + 1e-9))
        return self.first_band_nm + self.sampling_nm * np.arange(k0, k1 + 1)

    def band_fwhm(self) -> np.ndarray:
        """Nominal FWHM of each band, nm."""
        return np.full(self.band_centres().shape, self.fwhm_nm)

    def noise_coefficients(self, snr: float | None = None) -> tuple[float, float]:
        """(a, b) of the noise variance ``a * L + b``; ``snr`` overrides the default."""
        s = self.snr if snr is None else snr
        var_ref = (self.reference_radiance / s) ** 2
        b = self.read_noise_fraction * var_ref
        a = (1.0 - self.read_noise_fraction) * var_ref / self.reference_radiance
        return a, b

    def view_zenith(self, column: np.ndarray) -> np.ndarray:
        """Signed view angle (degrees) of detector columns across the field of view."""
        if self.n_columns == 1:
            return np.zeros_like(np.asarray(column, dtype=np.float64))
        c = 2.0 * np.asarray(column, dtype=np.float64) / (self.n_columns - 1) - 1.0
        return c * self.fov_deg / 2.0

    def smile(self, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The characterised smile at detector columns: ``(shift_nm, fwhm_scale)``,
        quadratic across the swath (zero shift and unit scale at nadir; ``smile_shift_nm``
        and ``1 + smile_fwhm`` at the edges). The spectral shift of a scene adds a
        constant to it; a file's own per-column band centres replace it."""
        col = np.asarray(column, dtype=np.float64)
        if self.n_columns == 1:
            return np.zeros_like(col), np.ones_like(col)
        c2 = (2.0 * col / (self.n_columns - 1) - 1.0) ** 2
        return self.smile_shift_nm * c2, 1.0 + self.smile_fwhm * c2

    def replace(self, **changes) -> Instrument:
        """A copy with some fields changed (e.g. ``window_nm`` or ``snr``)."""
        return dataclasses.replace(self, **changes)


INSTRUMENTS: dict[str, Instrument] = {
    "hyplant-fluo": Instrument(
        name="hyplant-fluo", window_nm=(670.0, 780.0), first_band_nm=670.0, sampling_nm=0.11,
        fwhm_nm=0.25, platform="airborne", altitude_m=600.0, fov_deg=32.0, n_columns=384,
        pixel_size_m=1.0, snr=150.0, n_basis=16, smile_shift_nm=0.05, smile_fwhm=0.05,
        description="HyPlant FLUO imaging spectrometer (airborne), 670-780 nm"),
    "hyplant-fluo-o2a": Instrument(
        name="hyplant-fluo-o2a", window_nm=(750.0, 780.0), first_band_nm=670.0,
        sampling_nm=0.11, fwhm_nm=0.25, platform="airborne", altitude_m=600.0, fov_deg=32.0,
        n_columns=384, pixel_size_m=1.0, snr=150.0, n_basis=6, smile_shift_nm=0.05,
        smile_fwhm=0.05, description="HyPlant FLUO, O2-A window 750-780 nm"),
    "desis": Instrument(
        name="desis", window_nm=(655.0, 795.0), first_band_nm=402.0, sampling_nm=2.55,
        fwhm_nm=3.5, platform="spaceborne", altitude_m=400000.0, fov_deg=4.1, n_columns=1024,
        pixel_size_m=30.0, snr=150.0, n_basis=12, smile_shift_nm=0.2, smile_fwhm=0.02,
        fine_step_nm=0.005, description="DESIS on the ISS, bands within 655-795 nm"),
    "floris": Instrument(
        name="floris", window_nm=(670.0, 780.0), first_band_nm=670.0, sampling_nm=0.1,
        fwhm_nm=0.3, platform="spaceborne", altitude_m=815000.0, fov_deg=8.4, n_columns=500,
        pixel_size_m=300.0, snr=300.0, n_basis=16, smile_shift_nm=0.02, smile_fwhm=0.02,
        description="FLEX FLORIS high-resolution spectrometer, 670-780 nm"),
    "flox": Instrument(
        name="flox", window_nm=(655.0, 795.0), first_band_nm=650.0, sampling_nm=0.15,
        fwhm_nm=0.35, platform="tower", altitude_m=5.0, fov_deg=0.0, n_columns=1,
        pixel_size_m=1.0, snr=300.0, n_basis=18, description=(
            "FloX-like top-of-canopy spectrometer: upwelling radiance and downwelling "
            "irradiance, 655-795 nm")),
}


def get_instrument(name: str | Instrument) -> Instrument:
    """Look up an instrument by name (or pass an :class:`Instrument` through)."""
    if isinstance(name, Instrument):
        return name
    try:
        return INSTRUMENTS[name]
    except KeyError:
        raise ValueError(
            f"unknown instrument {name!r}; known: {', '.join(sorted(INSTRUMENTS))}") from None
