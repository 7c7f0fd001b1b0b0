"""Atmospheric transfer functions of the four-stream coupling (SCIENCE.md section 2).

All functions are pure JAX, elementwise in wavelength, and differentiable in every
parameter. The approximations, chosen to be smooth, cheap and physically bounded:

Optical depths (vertical)
    * Rayleigh: Bodhaine et al. (1999), J. Atmos. Ocean. Tech. 16, 1854, eq. 30 (the
      fit for 360 ppm CO2), scaled by p / 1013.25 hPa.
    * Aerosol: Angstrom law ``aot550 (lambda/550)**(-angstrom)``; single-scattering albedo
      ``omega`` and Henyey-Greenstein asymmetry ``g`` are constants of the model
      (defaults 0.93 and 0.70, continental aerosol); exponential profile with scale height
      ``aerosol_scale_height_m`` (default 2000 m).
    * O2: line by line, from the table of :mod:`bayesfluo.physics.o2`.

Direct transmittances are Beer-Lambert along the slant path:
``t_ss = exp(-tau_total / mu_s)``, ``t_oo = exp(-tau_up / mu_v)``.

Diffuse transmittances follow the delta-scaled single-scattering "forward fraction"
approximation: of the light scattered out of the beam, a fraction ``b_fwd`` continues
downward (1/2 for Rayleigh, ``(1 + g)/2`` for aerosol), so the scattering-only total
transmittance is ``exp(-(tau_R/2 + (1 - omega (1+g)/2) tau_a) / mu)`` and its diffuse part
is that minus the direct one. Diffuse photons travel a longer path through the absorbing
O2 than the direct beam; this is one effective factor ``diffuse_path`` (>= 1) on the O2
slant optical depth of the diffuse streams.

Path reflectance ``rho_so`` is single scattering by the air between ground and sensor
(Chandrasekhar's homogeneous-layer formula), ``omega P(Theta) / (4 (mu_s + mu_v))
(1 - exp(-tau (1/mu_s + 1/mu_v)))`` per scatterer, with the Rayleigh and Henyey-Greenstein
phase functions at the scattering angle. O2 absorption on that path is that of the column
above the sensor on the way down plus half the layer below the sensor both ways (scatterers
at mid layer).

Spherical albedo ``rho_dd`` is the two-stream reflectance of a conservative layer to
diffuse light, ``2 tau_b / (1 + 2 tau_b)`` with the back-scattering optical depth
``tau_b = tau_R / 2 + omega (1 - g)/2 tau_a`` of the whole atmosphere above the ground
(the light the ground reflects is trapped by all of it, whatever the sensor altitude). It is
smooth in wavelength: O2 absorption of the trapped light is neglected.

A top-of-canopy sensor a few metres above the surface is the same formulas with a thin
layer below it (path reflectance and upward scattering vanish, the O2 of that thin layer
stays).
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp

__all__ = ["AtmosphereParams", "TransferFunctions", "rayleigh_optical_depth",
           "aerosol_optical_depth", "transfer_functions", "scattering_angle_cos",
           "spherical_albedo"]


class AtmosphereParams(NamedTuple):
    """Atmospheric state of a pixel or a patch (scalars or arrays that broadcast).

    Attributes
    ----------
    surface_pressure_hpa : surface pressure, hPa
    aot550 : aerosol optical thickness at 550 nm
    angstrom : Angstrom exponent of the aerosol optical thickness
    diffuse_path : effective O2 path factor of diffuse light relative to direct (>= 1)
    """

    surface_pressure_hpa: jnp.ndarray
    aot550: jnp.ndarray
    angstrom: jnp.ndarray
    diffuse_path: jnp.ndarray


class TransferFunctions(NamedTuple):
    """The six transfer functions of the four-stream coupling, on one wavelength grid."""

    t_ss: jnp.ndarray  # direct transmittance sun -> ground
    t_sd: jnp.ndarray  # diffuse transmittance sun -> ground
    t_oo: jnp.ndarray  # direct transmittance ground -> sensor
    t_do: jnp.ndarray  # diffuse transmittance ground -> sensor
    rho_so: jnp.ndarray  # path reflectance
    rho_dd: jnp.ndarray  # spherical albedo seen from the ground


def rayleigh_optical_depth(wavelength_nm, pressure_hpa=1013.25):
    """Rayleigh optical depth of the column above ``pressure_hpa`` (Bodhaine et al. 1999)."""
    lam = wavelength_nm * 1.0e-3  # um
    l2 = lam**2
    tau = 0.0021520 * (1.0455996 - 341.29061 / l2 - 0.90230850 * l2) / (
        1.0 + 0.0027059889 / l2 - 85.968563 * l2)
    return tau * pressure_hpa / 1013.25


def aerosol_optical_depth(wavelength_nm, aot550, angstrom):
    """Aerosol optical depth by the Angstrom law."""
    return aot550 * (wavelength_nm / 550.0) ** (-angstrom)


def scattering_angle_cos(sza_deg, vza_deg, raa_deg):
    """Cosine of the scattering angle; ``raa_deg`` = 0 when the sensor looks into the sun's
    azimuth plane on the side away from the sun (backscatter, hot spot at sza = vza)."""
    s, v, r = jnp.deg2rad(sza_deg), jnp.deg2rad(vza_deg), jnp.deg2rad(raa_deg)
    return -jnp.cos(s) * jnp.cos(v) - jnp.sin(s) * jnp.sin(v) * jnp.cos(r)


def _hg(cos_theta, g):
    return (1.0 - g**2) / (1.0 + g**2 - 2.0 * g * cos_theta) ** 1.5


def transfer_functions(wavelength_nm, tau_o2_column, tau_o2_below_sensor, atm: AtmosphereParams,
                       sza_deg, vza_deg, raa_deg, pressure_ratio_below_sensor,
                       aerosol_fraction_below_sensor, omega=0.93, g=0.70) -> TransferFunctions:
    """Transfer functions on a wavelength grid (see the module docstring for the physics).

    Parameters
    ----------
    wavelength_nm : array (n,)
        Wavelengths (air), nm.
    tau_o2_column, tau_o2_below_sensor : array (n,)
        Vertical O2 optical depth ground -> top of atmosphere and ground -> sensor.
    atm : AtmosphereParams
        Surface pressure (hPa), AOT at 550 nm, Angstrom exponent, diffuse path factor.
    sza_deg, vza_deg, raa_deg : float
        Sun zenith, view zenith and relative azimuth angles, degrees.
    pressure_ratio_below_sensor : float
        Fraction of the air column (by pressure) between ground and sensor, in [0, 1].
    aerosol_fraction_below_sensor : float
        Fraction of the aerosol optical depth between ground and sensor, in [0, 1].
    omega, g : float
        Aerosol single-scattering albedo and asymmetry parameter.
    """
    mu_s = jnp.cos(jnp.deg2rad(sza_deg))
    mu_v = jnp.cos(jnp.deg2rad(vza_deg))
    tau_r = rayleigh_optical_depth(wavelength_nm, atm.surface_pressure_hpa)
    tau_a = aerosol_optical_depth(wavelength_nm, atm.aot550, atm.angstrom)
    fr, fa = pressure_ratio_below_sensor, aerosol_fraction_below_sensor
    tau_o2_above_sensor = tau_o2_column - tau_o2_below_sensor

    def streams(tr, ta, tg, mu):
        direct = jnp.exp(-(tr + ta + tg) / mu)
        scat_total = jnp.exp(-(0.5 * tr + (1.0 - omega * 0.5 * (1.0 + g)) * ta) / mu)
        scat_direct = jnp.exp(-(tr + ta) / mu)
        diffuse = (scat_total - scat_direct) * jnp.exp(-atm.diffuse_path * tg / mu)
        return direct, diffuse

    t_ss, t_sd = streams(tau_r, tau_a, tau_o2_column, mu_s)
    t_oo, t_do = streams(fr * tau_r, fa * tau_a, tau_o2_below_sensor, mu_v)

    cos_t = scattering_angle_cos(sza_deg, vza_deg, raa_deg)
    p_ray = 0.75 * (1.0 + cos_t**2)
    airmass = 1.0 / mu_s + 1.0 / mu_v
    ss_r = p_ray / (4.0 * (mu_s + mu_v)) * (1.0 - jnp.exp(-fr * tau_r * airmass))
    ss_a = omega * _hg(cos_t, g) / (4.0 * (mu_s + mu_v)) * (1.0 - jnp.exp(-fa * tau_a * airmass))
    rho_so = (ss_r + ss_a) * jnp.exp(-tau_o2_above_sensor / mu_s
                                    - 0.5 * tau_o2_below_sensor * airmass)
    rho_dd = spherical_albedo(wavelength_nm, atm, omega, g)
    return TransferFunctions(t_ss, t_sd, t_oo, t_do, rho_so, rho_dd)


def spherical_albedo(wavelength_nm, atm: AtmosphereParams, omega=0.93, g=0.70):
    """Spherical albedo of the atmosphere above the ground (two-stream, conservative)."""
    tau_r = rayleigh_optical_depth(wavelength_nm, atm.surface_pressure_hpa)
    tau_a = aerosol_optical_depth(wavelength_nm, atm.aot550, atm.angstrom)
    tau_b = 0.5 * tau_r + omega * 0.5 * (1.0 - g) * tau_a
    return 2.0 * tau_b / (1.0 + 2.0 * tau_b)
