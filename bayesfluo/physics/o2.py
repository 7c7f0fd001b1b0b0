"""O2 absorption, line by line, tabulated once as optical depth above a pressure level.

Physics (HITRAN conventions, Rothman et al. 1998, appendix A):

* line intensity at temperature T::

      S(T) = S(296) Q(296)/Q(T) exp(-c2 E''/T) / exp(-c2 E''/296)
             * (1 - exp(-c2 nu/T)) / (1 - exp(-c2 nu/296)),

  with the partition function of a linear rotor, Q(T) proportional to T (vibrational
  excitation of O2 is below 1e-3 at atmospheric temperatures);
* Lorentz HWHM ``(296/T)**n_air * (gamma_air (p - p_O2) + gamma_self p_O2)`` with p in atm;
* pressure shift ``nu + delta_air p``;
* Doppler HWHM ``nu/c sqrt(2 ln2 k T / m)`` with the isotopologue mass;
* Voigt profile (:mod:`bayesfluo.physics.voigt`), cut off 25 cm-1 from the line centre.

The atmosphere is the US 1976 standard atmosphere cut into layers between fixed pressure
levels (``PRESSURE_LEVELS_HPA``, 28 layers, finer near the ground). Each layer's cross
section is evaluated at its mid pressure and the standard temperature there. Because the O2
column in a layer is proportional to its pressure thickness (hydrostatic balance,
``N = vmr dp / (m_air g)``), the optical depth of everything above a pressure p is

    tau_above(p, lambda) = vmr / (m_air g) * integral_0^p sigma(lambda, p') dp',

which, with sigma constant in each layer, is exactly piecewise linear in p. The table holds
``tau_above`` at the level pressures; :func:`tau_above` interpolates it linearly, which
gives the whole column above a surface of pressure ``p_s`` and, by difference, the column
between the ground and a sensor. Scaling the surface pressure scales the column ("the
standard atmosphere scaled to surface pressure"); the temperature profile stays the
standard one.

By default the table adds line mixing of the 70 strongest A-band lines
(:mod:`bayesfluo.physics.line_mixing`, relaxation matrix of Tran and Hartmann) and
O2-O2 / O2-N2 collision-induced absorption (:mod:`bayesfluo.physics.cia`) to each layer;
``o2_table(..., line_mixing=False, cia=False)`` gives the plain Voigt sum (for comparison).
Not included: speed-dependent profiles, the line mixing of the B band and of the weaker
isotopologues, and water vapour; gravity is taken constant.

The table is computed once per (grid, line list) and cached in memory and on disk
(``$BAYESFLUO_CACHE`` or ``~/.cache/bayesfluo``), written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.physics import constants as K
from bayesfluo.physics.air import air_to_vacuum
from bayesfluo.physics.cia import cia_layer_optical_depth
from bayesfluo.physics.hitran import ISOTOPOLOGUE_MASS_AMU, LineList, load_o2_lines
from bayesfluo.physics.line_mixing import intensity_scale, load_mixing_data, mixing_correction
from bayesfluo.physics.standard_atmosphere import pressure_to_altitude, us1976
from bayesfluo.physics.voigt import voigt_profile

__all__ = ["PRESSURE_LEVELS_HPA", "SPECTROSCOPY", "O2Table", "o2_table", "tau_above",
           "line_cross_section", "layer_properties"]

PRESSURE_LEVELS_HPA = np.array([
    0.0, 1.0, 5.0, 10.0, 20.0, 35.0, 50.0, 75.0, 100.0, 150.0, 200.0, 250.0, 300.0, 350.0,
    400.0, 450.0, 500.0, 550.0, 600.0, 650.0, 700.0, 750.0, 800.0, 850.0, 900.0, 950.0,
    1000.0, 1050.0, 1100.0])
LINE_CUTOFF_CM = 25.0
SPECTROSCOPY = ("O2 A band: HITRAN 2008 Voigt lines, line mixing of 70 lines (LISA relaxation "
                "matrix, Tran and Hartmann), O2-O2 + O2-N2 CIA (HITRAN, DISAMAR/BIRA table)")
"""What the default O2 table holds, recorded in a trained guide's ``model.json``."""
_CHUNK = 512
_TABLE_VERSION = 2


class O2Table(NamedTuple):
    """Tabulated O2 optical depth above each pressure level.

    Attributes
    ----------
    pressure_hpa : ndarray (levels,)
        Level pressures, hPa, increasing from 0 (top of atmosphere).
    tau : ndarray (levels, wavelength)
        Vertical optical depth of O2 above each level, float32.
    wavelength_air_nm : ndarray (wavelength,)
        The fine grid, air wavelengths, nm.
    """

    pressure_hpa: np.ndarray
    tau: np.ndarray
    wavelength_air_nm: np.ndarray


def layer_properties(levels_hpa: np.ndarray = PRESSURE_LEVELS_HPA):
    """Mid pressure (hPa) and US 1976 temperature (K) of each layer between levels."""
    p_mid = 0.5 * (levels_hpa[1:] + levels_hpa[:-1])
    z = pressure_to_altitude(np.clip(p_mid, 0.3, None) * 100.0)
    t_mid, _ = us1976(np.clip(z, -1000.0, 86000.0))
    return p_mid, t_mid


def _line_strengths(lines: LineList, t: float) -> np.ndarray:
    t0 = K.T_REF_HITRAN
    ratio_q = t0 / t
    boltz = np.exp(-K.C2 * lines.elower / t) / np.exp(-K.C2 * lines.elower / t0)
    stim = (1 - np.exp(-K.C2 * lines.wavenumber / t)) / (1 - np.exp(-K.C2 * lines.wavenumber / t0))
    return lines.intensity * ratio_q * boltz * stim


def _line_widths(lines: LineList, p_hpa: float, t: float):
    p_atm = p_hpa / K.P_REF_HPA
    p_self = K.O2_VMR * p_atm
    gamma = (K.T_REF_HITRAN / t) ** lines.n_air * (
        lines.gamma_air * (p_atm - p_self) + lines.gamma_self * p_self)
    mass = np.array([ISOTOPOLOGUE_MASS_AMU.get(int(i), K.O2_MASS_AMU)
                     for i in lines.isotopologue]) * K.AMU
    alpha = lines.wavenumber / K.SPEED_OF_LIGHT * np.sqrt(2 * np.log(2) * K.BOLTZMANN * t / mass)
    centre = lines.wavenumber + lines.delta_air * p_atm
    return centre, alpha, gamma


@jax.jit
def _sigma_kernel(dnu, strength, alpha, gamma):
    """Cross section (cm2) at offsets dnu (wavelength, line) for one layer's line data."""
    prof = voigt_profile(dnu, alpha[None, :], gamma[None, :])
    prof = jnp.where(jnp.abs(dnu) <= LINE_CUTOFF_CM, prof, 0.0)
    return prof @ strength


def line_cross_section(wavenumber_cm: np.ndarray, lines: LineList, p_hpa: float, t_k: float
                       ) -> np.ndarray:
    """O2 absorption cross section (cm2 molecule-1) at vacuum wavenumbers (cm-1).

    Sums the Voigt lines of ``lines`` at pressure ``p_hpa`` and temperature ``t_k``,
    processing the grid in chunks so that only lines within the cut-off are evaluated.
    """
    nu = np.asarray(wavenumber_cm, dtype=np.float64)
    s = _line_strengths(lines, t_k)
    centre, alpha, gamma = _line_widths(lines, p_hpa, t_k)
    order = np.argsort(centre)
    centre, alpha, gamma, s = centre[order], alpha[order], gamma[order], s[order]
    out = np.zeros_like(nu)
    for start in range(0, nu.size, _CHUNK):
        block = nu[start:start + _CHUNK]
        lo = np.searchsorted(centre, block.min() - LINE_CUTOFF_CM)
        hi = np.searchsorted(centre, block.max() + LINE_CUTOFF_CM, side="right")
        if hi <= lo:
            continue
        n = hi - lo
        npad = int(2 ** np.ceil(np.log2(max(n, 16))))  # few distinct shapes, few compiles
        pad = npad - n
        c = np.pad(centre[lo:hi], (0, pad), constant_values=centre[lo])
        a = np.pad(alpha[lo:hi], (0, pad), constant_values=1.0)
        g = np.pad(gamma[lo:hi], (0, pad), constant_values=1.0)
        st = np.pad(s[lo:hi], (0, pad))
        bpad = np.pad(block, (0, _CHUNK - block.size), mode="edge")
        dnu = (bpad[:, None] - c[None, :]).astype(np.float32)  # offsets in float64 first
        # scale strengths to order one for float32; undo afterwards
        scale = float(st.max()) if st.max() > 0 else 1.0
        sig = _sigma_kernel(jnp.asarray(dnu), jnp.asarray((st / scale).astype(np.float32)),
                            jnp.asarray(a.astype(np.float32)), jnp.asarray(g.astype(np.float32)))
        out[start:start + block.size] = np.asarray(sig, dtype=np.float64)[: block.size] * scale
    return out


def _cache_dir() -> Path:
    root = os.environ.get("BAYESFLUO_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "bayesfluo"


def _compute_table(wavelength_air_nm: np.ndarray, lines: LineList,
                   levels_hpa: np.ndarray, mixing: bool = True, cia: bool = True
                   ) -> np.ndarray:
    wl_vac = air_to_vacuum(wavelength_air_nm)
    nu = 1.0e7 / wl_vac
    sel = lines.in_range(nu.min() - LINE_CUTOFF_CM, nu.max() + LINE_CUTOFF_CM)
    sel = sel.select(sel.molecule == 7)
    p_mid, t_mid = layer_properties(levels_hpa)
    # molecules cm-2 per hPa of O2 column: vmr * 100 Pa / (m_air g) * 1e-4 m2/cm2
    per_hpa = K.O2_VMR * 100.0 / (K.MEAN_AIR_MASS_AMU * K.AMU * K.GRAVITY) * 1.0e-4
    tau_layers = np.zeros((p_mid.size, nu.size))
    dp = np.diff(levels_hpa)
    lm = load_mixing_data() if mixing else None
    lm_in = lm is not None and (lm.wavenumber.max() + LINE_CUTOFF_CM > nu.min()
                                and lm.wavenumber.min() - LINE_CUTOFF_CM < nu.max())
    scale = intensity_scale(lm, lines) if lm_in else 0.0
    for i, (p, t) in enumerate(zip(p_mid, t_mid, strict=True)):
        sigma = line_cross_section(nu, sel, p, t) if len(sel.wavenumber) else 0.0 * nu
        if lm_in:
            sigma = sigma + mixing_correction(nu, lm, p, t, scale)
        tau_layers[i] = np.maximum(sigma, 0.0) * per_hpa * dp[i]
        if cia:
            tau_layers[i] += cia_layer_optical_depth(wl_vac, levels_hpa[i], levels_hpa[i + 1], t)
    tau = np.concatenate([np.zeros((1, nu.size)), np.cumsum(tau_layers, axis=0)])
    return tau.astype(np.float32)


@functools.lru_cache(maxsize=8)
def _cached_table(lo: float, hi: float, n: int, levels: tuple[float, ...], mixing: bool,
                  cia: bool) -> O2Table:
    wl = np.linspace(lo, hi, n)
    levels_hpa = np.asarray(levels)
    lines = load_o2_lines()
    key = hashlib.sha256(repr((_TABLE_VERSION, lo, hi, n, levels, lines.wavenumber.sum(),
                               lines.intensity.sum(), mixing, cia)).encode()).hexdigest()[:16]
    path = _cache_dir() / f"o2_table_{key}.npy"
    tau = None
    if path.exists():
        try:
            tau = np.load(path)
            if tau.shape != (levels_hpa.size, n):
                tau = None
        except (OSError, ValueError):
            tau = None
    if tau is None:
        tau = _compute_table(wl, lines, levels_hpa, mixing, cia)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npy.tmp",
                                             delete=False) as fh:
                np.save(fh, tau)
            os.replace(fh.name, path)
        except OSError:
            pass  # a read-only home is fine: the table is recomputed next time
    return O2Table(pressure_hpa=levels_hpa, tau=tau, wavelength_air_nm=wl)


def o2_table(wavelength_air_nm: np.ndarray,
             levels_hpa: np.ndarray = PRESSURE_LEVELS_HPA, *, line_mixing: bool = True,
             cia: bool = True) -> O2Table:
    """O2 optical depth above each pressure level on a uniform air-wavelength grid (nm).

    ``line_mixing`` adds the A band's line mixing, ``cia`` the collision-induced
    absorption (both on by default; see the module docstring).
    """
    wl = np.asarray(wavelength_air_nm, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2 or np.any(np.diff(wl) <= 0):
        raise ValueError("wavelength grid must be 1-D and increasing")
    if not np.allclose(np.diff(wl), wl[1] - wl[0], rtol=1e-6, atol=1e-9):
        raise ValueError("wavelength grid must be uniformly spaced")
    return _cached_table(round(float(wl[0]), 9), round(float(wl[-1]), 9), wl.size,
                         tuple(float(x) for x in levels_hpa), bool(line_mixing), bool(cia))


def tau_above(table_pressure_hpa, table_tau, pressure_hpa):
    """O2 vertical optical depth above a pressure level (hPa), on the table's grid.

    Exact linear interpolation in pressure between table levels (see module docstring).
    Differentiable in ``pressure_hpa``; a scalar pressure gives ``(wavelength,)``.
    Pressures beyond the last level are extrapolated linearly.
    """
    p = jnp.asarray(pressure_hpa)
    levels = jnp.asarray(table_pressure_hpa, dtype=table_tau.dtype)
    i = jnp.clip(jnp.searchsorted(levels, p, side="right") - 1, 0, levels.shape[0] - 2)
    w = (p - levels[i]) / (levels[i + 1] - levels[i])
    return table_tau[i] * (1.0 - w) + table_tau[i + 1] * w
