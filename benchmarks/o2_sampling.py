"""How fine must the fine grid be? Band transmittance of the O2-A band at HyPlant FLUO
resolution (0.25 nm FWHM, 0.11 nm sampling) for 2.15 air masses, computed on fine grids
of 0.0025, 0.005 and 0.01 nm, against a 0.001 nm reference in the same run.

Run:  python benchmarks/o2_sampling.py       (about 30 s on 2 cores)
"""

from __future__ import annotations

import time

import jax.numpy as jnp
import numpy as np

from bayesfluo.physics.o2 import o2_table, tau_above
from bayesfluo.physics.sensor import FWHM_TO_SIGMA
from bayesfluo.physics.solar import solar_irradiance


def band_transmittance(step: float, centres: np.ndarray, airmass: float = 2.15):
    grid = np.arange(755.0, 775.0, step)
    tab = o2_table(grid)
    tau = np.asarray(tau_above(tab.pressure_hpa, jnp.asarray(tab.tau), 1013.25), np.float64)
    e0 = solar_irradiance(grid)
    sigma = 0.25 * FWHM_TO_SIGMA
    w = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / sigma) ** 2)
    w /= w.sum(axis=1, keepdims=True)
    return (w @ (e0 * np.exp(-tau * airmass))) / (w @ e0), float(np.sum(tau) * step)


def main() -> None:
    centres = np.arange(757.0, 773.0, 0.11)
    t0 = time.perf_counter()
    ref, area_ref = band_transmittance(0.001, centres)
    print(f"reference 0.001 nm grid: {time.perf_counter() - t0:.1f} s")
    print(f"{'step nm':>8s} {'max abs err':>12s} {'rms err':>9s} {'tau area / ref':>15s}")
    for step in (0.0025, 0.005, 0.01):
        t, area = band_transmittance(step, centres)
        d = t - ref
        print(f"{step:8.4f} {np.abs(d).max():12.1e} {np.sqrt(np.mean(d**2)):9.1e} "
              f"{area / area_ref:15.3f}")


if __name__ == "__main__":
    main()
