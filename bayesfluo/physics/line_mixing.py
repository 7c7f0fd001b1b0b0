"""Line mixing in the O2 A band from a relaxation matrix (Tran and Hartmann, LISA data).

At the pressures of the lower atmosphere the lines of the A band overlap and collisions
transfer intensity between them: absorption moves from the far wings and the troughs
between lines towards the band's centre and the branch heads. In the impact approximation
(Levy, Lacome and Boulet 1992) the band's profile is

    sigma(nu) = C nu (1 - exp(-c2 nu / T)) (1 / pi)
                Im[ d^T (nu I - Sigma - i P W(T))^-1 diag(rho(T)) d ],

with ``Sigma`` the line positions shifted by ``P delta``, ``W`` the relaxation matrix
(cm-1 atm-1; its diagonal the Lorentz half widths), ``rho`` the lower-state populations,
``d`` the signed dipole elements and ``P`` the pressure in atm. Diagonalising
``Sigma + i P W = V diag(lambda) V^-1`` turns the band into "equivalent lines" with complex
positions ``lambda_j`` and complex amplitudes
``A_j = (d^T V)_j (V^-1 diag(rho) d)_j``; the Doppler broadening of each is a Voigt profile
of complex amplitude:

    sigma(nu) = C nu (1 - exp(-c2 nu / T)) sum_j Re[conj(A_j) w(z_j)] / (alpha sqrt(pi)),
    z_j = (nu - Re lambda_j + i Im lambda_j) / alpha,

``alpha`` the Doppler 1/e half width at the band centre. With ``W`` diagonal this is the
plain Voigt sum.

Data (``bayesfluo/data/o2``, copied unchanged; see ``PROVENANCE.md``):

* ``o2a_lisa_sdf.dat``: per line (70 lines of 16O2, P and R branches up to N'' = 35):
  vacuum position (cm-1), population at 296 K, reduced dipole, dipole element (its square
  times position and the stimulated-emission factor is proportional to the HITRAN
  intensity to 0.2 %), lower-state energy (cm-1), air-broadened half width (cm-1 atm-1) at
  296 K, its temperature exponent, pressure shift (cm-1 atm-1) and the line's label;
* ``o2a_lisa_rmf.dat``: the 70 x 70 relaxation matrix at 296 K (cm-1 atm-1) and the
  temperature exponent of each element, ``W(T) = W(296) (296 / T)**n``, one element per
  row with the labels of its row and column.

After scaling each element by temperature the matrix is made to satisfy detailed balance
at ``T`` again (``W diag(rho)`` symmetric) by averaging ``W diag(rho)`` with its transpose.

bayesfluo keeps its HITRAN Voigt sum for all lines and adds the line-mixing *correction*
of these 70 lines, ``sigma_mixed - sigma_voigt``, both computed from the LISA data with
the same intensities: ``sigma_voigt`` is cut 25 cm-1 from each line as the HITRAN sum is,
``sigma_mixed`` is not cut (its wings carry the mixing). Where the two line lists agree,
the result is the HITRAN sum with the 70 strongest lines' Voigt profiles replaced by the
mixed band; the scale ``C`` is fitted to the HITRAN intensities of the same lines.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.physics import constants as K
from bayesfluo.physics.hitran import ISOTOPOLOGUE_MASS_AMU, LineList
from bayesfluo.physics.voigt import faddeeva

__all__ = ["MixingData", "load_mixing_data", "mixing_correction", "band_profile"]

_CHUNK = 2048
CUTOFF_CM = 25.0


class MixingData(NamedTuple):
    """Line data and relaxation matrix of the A band (see the module docstring for units)."""

    wavenumber: np.ndarray   # (n,) cm-1, vacuum
    population: np.ndarray   # (n,) at 296 K
    dipole: np.ndarray       # (n,) signed dipole element
    elower: np.ndarray       # (n,) cm-1
    shift: np.ndarray        # (n,) cm-1 atm-1
    w0: np.ndarray           # (n, n) cm-1 atm-1 at 296 K
    w_exponent: np.ndarray   # (n, n)
    labels: tuple[str, ...]


def _parse_sdf(text: str):
    rows, labels = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line[:80].split()
        if len(fields) != 8:
            raise ValueError(f"o2a_lisa_sdf.dat line {lineno}: expected 8 numbers, got "
                             f"{len(fields)}")
        rows.append([float(f) for f in fields])
        labels.append(" ".join(line[80:].split()))
    return np.asarray(rows), tuple(labels)


def _parse_rmf(text: str, labels: tuple[str, ...]):
    index = {lab: i for i, lab in enumerate(labels)}
    n = len(labels)
    w0 = np.full((n, n), np.nan)
    ex = np.zeros((n, n))
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        # two labels of three tokens each ("P 35P 35") follow the two numbers
        row_label, col_label = " ".join(parts[2:5]), " ".join(parts[5:8])
        if row_label not in index or col_label not in index:
            raise ValueError(f"o2a_lisa_rmf.dat line {lineno}: unknown line label "
                             f"{row_label!r} or {col_label!r}")
        k, m = index[row_label], index[col_label]
        w0[k, m] = float(parts[0])
        ex[k, m] = float(parts[1])
    if np.isnan(w0).any():
        raise ValueError(f"o2a_lisa_rmf.dat: {int(np.isnan(w0).sum())} of {n * n} relaxation "
                         "matrix elements missing")
    return w0, ex


@functools.cache
def load_mixing_data() -> MixingData:
    """The LISA A-band line-mixing data shipped with bayesfluo."""
    root = resources.files("bayesfluo.data").joinpath("o2")
    sdf, labels = _parse_sdf(root.joinpath("o2a_lisa_sdf.dat").read_text(encoding="ascii"))
    w0, ex = _parse_rmf(root.joinpath("o2a_lisa_rmf.dat").read_text(encoding="ascii"), labels)
    # the diagonal of the matrix repeats the half widths of the line file
    if not np.allclose(np.diag(w0), sdf[:, 5], atol=1e-4):
        raise ValueError("o2a_lisa_rmf.dat: diagonal differs from the widths of "
                         "o2a_lisa_sdf.dat")
    return MixingData(wavenumber=sdf[:, 0], population=sdf[:, 1], dipole=sdf[:, 3],
                      elower=sdf[:, 4], shift=sdf[:, 7], w0=w0, w_exponent=ex, labels=labels)


def _populations(data: MixingData, t_k: float) -> np.ndarray:
    t0 = K.T_REF_HITRAN
    # linear-rotor partition function, Q proportional to T
    return data.population * (t0 / t_k) * np.exp(-K.C2 * data.elower * (1.0 / t_k - 1.0 / t0))


def _relaxation(data: MixingData, t_k: float, rho: np.ndarray) -> np.ndarray:
    w = data.w0 * (K.T_REF_HITRAN / t_k) ** data.w_exponent
    s = w * rho[None, :]
    s = 0.5 * (s + s.T)  # detailed balance at t_k: W diag(rho) symmetric
    return s / rho[None, :]


def intensity_scale(data: MixingData, lines: LineList) -> float:
    """The constant C relating LISA populations and dipoles to HITRAN intensities (296 K):
    median over the LISA lines of ``S / (nu rho d^2 (1 - exp(-c2 nu / 296)))``, the HITRAN
    line taken as the 16O2 line nearest in position (within 0.01 cm-1)."""
    main = lines.select(lines.isotopologue == 1)
    j = np.searchsorted(main.wavenumber, data.wavenumber).clip(1, main.wavenumber.size - 1)
    j = np.where(np.abs(main.wavenumber[j - 1] - data.wavenumber)
                 < np.abs(main.wavenumber[j] - data.wavenumber), j - 1, j)
    ok = np.abs(main.wavenumber[j] - data.wavenumber) < 0.01
    if ok.sum() < data.wavenumber.size // 2:
        raise ValueError("the HITRAN line list does not hold the LISA A-band lines")
    nu = data.wavenumber[ok]
    ratio = main.intensity[j[ok]] / (nu * data.population[ok] * data.dipole[ok] ** 2
                                     * (1 - np.exp(-K.C2 * nu / K.T_REF_HITRAN)))
    return float(np.median(ratio))


class EquivalentLines(NamedTuple):
    """Complex positions (cm-1) and amplitudes of a band at one pressure and temperature."""

    position: np.ndarray   # complex (n,): Re position, Im half width
    amplitude: np.ndarray  # complex (n,)


def equivalent_lines(data: MixingData, p_atm: float, t_k: float, *, mixing: bool = True
                     ) -> EquivalentLines:
    """Diagonalise ``Sigma + i P W`` (module docstring); ``mixing=False`` keeps only the
    diagonal of ``W`` (the plain Voigt sum of the same lines)."""
    rho = _populations(data, t_k)
    w = _relaxation(data, t_k, rho)
    if not mixing:
        w = np.diag(np.diag(w))
    g = np.diag(data.wavenumber + data.shift * p_atm) + 1j * p_atm * w
    lam, v = np.linalg.eig(g)
    left = data.dipole @ v
    right = np.linalg.solve(v, rho * data.dipole)
    return EquivalentLines(position=lam, amplitude=left * right)


@jax.jit
def _profile_kernel(nu, pos_re, pos_im, amp_re, amp_im, alpha, cut):
    dnu = nu[:, None] - pos_re[None, :]
    z = (dnu + 1j * pos_im[None, :]) / alpha
    w = faddeeva(z)
    # Re[conj(A) w] = Re A Re w + Im A Im w
    val = (amp_re[None, :] * jnp.real(w) + amp_im[None, :] * jnp.imag(w))
    val = jnp.where(jnp.abs(dnu) <= cut, val, 0.0)
    return val.sum(axis=1) / (alpha * jnp.sqrt(jnp.pi))


def band_profile(wavenumber_cm: np.ndarray, data: MixingData, p_hpa: float, t_k: float,
                 scale: float, *, mixing: bool = True, cutoff_cm: float | None = None
                 ) -> np.ndarray:
    """Cross section (cm2 molecule-1) of the 70 LISA lines at vacuum wavenumbers (cm-1),
    with (``mixing=True``) or without line mixing; ``cutoff_cm`` cuts each equivalent
    line's profile that far from its position (no cut by default)."""
    p_atm = p_hpa / K.P_REF_HPA
    eq = equivalent_lines(data, p_atm, t_k, mixing=mixing)
    if np.any(eq.position.imag <= 0):
        raise ValueError("equivalent lines with non-positive width: relaxation matrix "
                         "not positive at this temperature")
    centre = float(np.mean(data.wavenumber))
    mass = ISOTOPOLOGUE_MASS_AMU[1] * K.AMU
    alpha = centre / K.SPEED_OF_LIGHT * np.sqrt(2 * K.BOLTZMANN * t_k / mass)  # 1/e width
    nu = np.asarray(wavenumber_cm, np.float64)
    ref = centre  # offsets from the band centre in float64, then float32
    out = np.zeros_like(nu)
    amp_scale = float(np.max(np.abs(eq.amplitude)))
    args = [jnp.asarray(a, jnp.float32) for a in (
        eq.position.real - ref, eq.position.imag, eq.amplitude.real / amp_scale,
        eq.amplitude.imag / amp_scale)]
    cut = np.float32(cutoff_cm if cutoff_cm is not None else np.inf)
    for start in range(0, nu.size, _CHUNK):
        block = nu[start:start + _CHUNK]
        bpad = np.pad(block - ref, (0, _CHUNK - block.size), mode="edge")
        val = _profile_kernel(jnp.asarray(bpad, jnp.float32), *args, np.float32(alpha), cut)
        out[start:start + block.size] = np.asarray(val, np.float64)[: block.size]
    stim = nu * (1.0 - np.exp(-K.C2 * nu / t_k))
    return out * amp_scale * scale * stim


def mixing_correction(wavenumber_cm: np.ndarray, data: MixingData, p_hpa: float, t_k: float,
                      scale: float) -> np.ndarray:
    """What line mixing adds to the Voigt sum of the 70 lines (cm2 molecule-1): the mixed
    band (no cut-off) minus the same lines' Voigt profiles cut at 25 cm-1."""
    mixed = band_profile(wavenumber_cm, data, p_hpa, t_k, scale, mixing=True)
    plain = band_profile(wavenumber_cm, data, p_hpa, t_k, scale, mixing=False,
                         cutoff_cm=CUTOFF_CM)
    return mixed - plain
