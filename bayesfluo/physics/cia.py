"""Collision-induced absorption (O2-O2 and O2-N2) in the O2 A band.

Pairs of colliding molecules absorb in a broad band under the A band's lines (about 6 nm
wide, peak near 763 nm). Its optical depth grows with the square of the density:

    d tau = sigma_cia(lambda, T) n_O2**2 dz,

with ``sigma_cia`` in cm5 molecule-2 per O2 molecule squared (the O2-N2 contribution is
folded in by the table's authors as ``(0.21 sigma_O2O2 + 0.79 sigma_O2N2) / 0.21``). In
pressure coordinates (hydrostatic, ideal gas) ``n_O2**2 dz = vmr**2 p dp / (k T m_air g)``,
so a layer between levels ``p1 < p2`` at temperature ``T`` holds

    tau_layer = sigma_cia vmr**2 (p2**2 - p1**2) / (2 k T m_air g),

about 0.006 for the whole column at the peak: the transmittance falls by 1-2 % around
763 nm for a two-way path, smoothly, under the lines.

Data: ``bayesfluo/data/o2/o2o2_bira_o2a.dat`` (copied unchanged; ``PROVENANCE.md``):
``sigma = 1e-46 (a0 + a1 TC + a2 TC**2)`` cm5 molecule-2 with ``TC`` in degrees Celsius
(in the A band a1 = a2 = 0: no temperature dependence is given), from the HITRAN CIA
data, on vacuum wavelengths (nm) over 723-791 nm. Interpolated linearly in wavelength;
zero outside the table's range.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

import numpy as np

from bayesfluo.physics import constants as K

__all__ = ["CiaTable", "load_cia", "cia_cross_section", "cia_layer_optical_depth"]


class CiaTable(NamedTuple):
    """Coefficients of the CIA cross section on vacuum wavelengths (nm)."""

    wavelength_vacuum_nm: np.ndarray
    coefficients: np.ndarray  # (n, 3): a0, a1, a2 (times scale, cm5 molecule-2, TC in C)
    scale: float


def parse_cia(text: str, name: str = "CIA table") -> CiaTable:
    """Parse a DISAMAR/BIRA CIA table: a scale factor line, a header-count line, the data
    line count, then rows of wavelength (nm) and a0, a1, a2; ``#`` lines are comments."""
    lines = text.splitlines()
    try:
        scale = float(lines[0].split()[0])
        n_header = int(lines[1].split()[0])
    except (IndexError, ValueError):
        raise ValueError(f"{name}: the first two lines must give the scale factor and the "
                         "number of header lines") from None
    rows = []
    for lineno, line in enumerate(lines[n_header:], n_header + 1):
        s = line.split()
        if not s or s[0].startswith("#"):
            continue
        try:
            rows.append([float(v) for v in s[:4]])
        except ValueError:
            raise ValueError(f"{name} line {lineno}: not four numbers: {line!r}") from None
    arr = np.asarray(rows)
    order = np.argsort(arr[:, 0], kind="stable")
    arr = arr[order]
    keep = np.concatenate([[True], np.diff(arr[:, 0]) > 0])  # drop repeated wavelengths
    return CiaTable(arr[keep, 0], arr[keep, 1:], scale)


@functools.cache
def load_cia() -> CiaTable:
    """The O2-O2 + O2-N2 CIA table shipped with bayesfluo."""
    ref = resources.files("bayesfluo.data").joinpath("o2", "o2o2_bira_o2a.dat")
    return parse_cia(ref.read_text(encoding="ascii"), "o2o2_bira_o2a.dat")


def cia_cross_section(wavelength_vacuum_nm: np.ndarray, t_k: float,
                      table: CiaTable | None = None) -> np.ndarray:
    """CIA cross section (cm5 molecule-2) at vacuum wavelengths (nm) and temperature (K)."""
    table = table or load_cia()
    wl = np.asarray(wavelength_vacuum_nm, np.float64)
    tc = t_k - 273.15
    a = [np.interp(wl, table.wavelength_vacuum_nm, table.coefficients[:, i], left=0.0,
                   right=0.0) for i in range(3)]
    return table.scale * (a[0] + a[1] * tc + a[2] * tc * tc)


def cia_layer_optical_depth(wavelength_vacuum_nm: np.ndarray, p_top_hpa: float,
                            p_bottom_hpa: float, t_k: float,
                            table: CiaTable | None = None) -> np.ndarray:
    """Vertical CIA optical depth of the layer between two pressures (hPa) at ``t_k`` (K)."""
    p1, p2 = p_top_hpa * 100.0, p_bottom_hpa * 100.0  # Pa
    # n_O2**2 dz integrated: m-5, then cm-5
    column2 = (K.O2_VMR ** 2 * (p2 ** 2 - p1 ** 2)
               / (2.0 * K.BOLTZMANN * t_k * K.MEAN_AIR_MASS_AMU * K.AMU * K.GRAVITY)) * 1e-10
    return cia_cross_section(wavelength_vacuum_nm, t_k, table) * column2
