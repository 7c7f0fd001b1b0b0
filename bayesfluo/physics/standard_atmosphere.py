"""US Standard Atmosphere 1976 (identical to ICAO below 32 km): temperature and pressure.

Hydrostatic layers of constant lapse rate in geopotential altitude up to 86 km geometric
(COESA 1976, NOAA-S/T 76-1562, table 4). Used once, to place the absorbing layers of the
O2 tables; not in the differentiable hot path.
"""

from __future__ import annotations

import numpy as np

__all__ = ["us1976", "pressure_to_altitude", "standard_pressure_hpa"]

_R_EARTH = 6356766.0  # m, effective radius for geopotential altitude
_G0 = 9.80665
_R_AIR = 287.053  # J kg-1 K-1
_H_BASE = np.array([0.0, 11000.0, 20000.0, 32000.0, 47000.0, 51000.0, 71000.0, 84852.0])
_LAPSE = np.array([-6.5, 0.0, 1.0, 2.8, 0.0, -2.8, -2.0]) * 1e-3  # K per geopotential m


def _bases():
    t = [288.15]
    p = [101325.0]
    for i, lapse in enumerate(_LAPSE):
        dh = _H_BASE[i + 1] - _H_BASE[i]
        t1 = t[-1] + lapse * dh
        if lapse == 0.0:
            p1 = p[-1] * np.exp(-_G0 * dh / (_R_AIR * t[-1]))
        else:
            p1 = p[-1] * (t1 / t[-1]) ** (-_G0 / (_R_AIR * lapse))
        t.append(t1)
        p.append(p1)
    return np.array(t), np.array(p)


_T_BASE, _P_BASE = _bases()


def us1976(altitude_m) -> tuple[np.ndarray, np.ndarray]:
    """Temperature (K) and pressure (Pa) at geometric altitude (m), -1 to 86 km."""
    z = np.asarray(altitude_m, dtype=np.float64)
    if np.any(z < -1000.0) or np.any(z > 86000.0):
        raise ValueError("US 1976 standard atmosphere is defined from -1 km to 86 km")
    h = _R_EARTH * z / (_R_EARTH + z)
    i = np.clip(np.searchsorted(_H_BASE, h, side="right") - 1, 0, len(_LAPSE) - 1)
    lapse = _LAPSE[i]
    dh = h - _H_BASE[i]
    t = _T_BASE[i] + lapse * dh
    with np.errstate(divide="ignore", invalid="ignore"):
        p_iso = _P_BASE[i] * np.exp(-_G0 * dh / (_R_AIR * _T_BASE[i]))
        p_grad = _P_BASE[i] * (t / _T_BASE[i]) ** (-_G0 / (_R_AIR * np.where(lapse == 0, 1, lapse)))
    p = np.where(lapse == 0.0, p_iso, p_grad)
    return t, p


def standard_pressure_hpa(altitude_m) -> np.ndarray:
    """US 1976 pressure (hPa) at a geometric altitude (m)."""
    return us1976(altitude_m)[1] / 100.0


_Z_TAB = np.linspace(-1000.0, 86000.0, 8701)
_LNP_TAB = np.log(us1976(_Z_TAB)[1])


def pressure_to_altitude(pressure_pa) -> np.ndarray:
    """Geometric altitude (m) at which the US 1976 atmosphere has this pressure (Pa)."""
    lnp = np.log(np.asarray(pressure_pa, dtype=np.float64))
    return np.interp(-lnp, -_LNP_TAB, _Z_TAB)
