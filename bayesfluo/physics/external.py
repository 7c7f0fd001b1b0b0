"""External atmospheres: a transfer-function table used in place of the built-in atmosphere.

A table (read, written, validated and built from arrays in :mod:`bayesfluo.io.tables`)
holds the quantities of the four-stream coupling (SCIENCE.md section 2) on a fine
wavelength grid, as MODTRAN-based processing chains (SFM, SpecFit, SCOPE's MODTRAN
interrogation technique) produce them: ``e0_cos_pi`` (``E0 cos(sza) / pi`` at the top of
the atmosphere, mW m-2 sr-1 nm-1), the path reflectance ``rho_so``, the transmittances
``t_ss``, ``t_sd`` (sun -> ground, direct and diffuse), ``t_oo``, ``t_do`` (ground ->
sensor) and the spherical albedo ``rho_dd`` (all dimensionless). Here it is an
:class:`ExternalAtmosphere`: those arrays resampled onto a forward model's fine grid
(:func:`resample_table`).

With a table the at-sensor radiance is the built-in route's formula::

    L = e0_cos_pi [rho_so + (t_ss + t_sd) R (t_oo + t_do) / (1 - rho_dd R)]
        + F (t_oo + t_do) / (1 - rho_dd R)

A table is one atmosphere source behind the interface of the forward model: it gives the
fine-grid radiance factors (:func:`fine_terms_external`, a
:class:`~bayesfluo.physics.forward.FineTerms` as :func:`~bayesfluo.physics.forward.fine_terms`
gives for the built-in atmosphere), and the radiance and the band operator are made from
them by the same functions (:func:`~bayesfluo.physics.forward.radiance_from_terms`,
:func:`~bayesfluo.physics.forward.operator_from_terms`). A table is computed for one
geometry: its values are used as they are for every pixel it is applied to (apply one
table per patch of similar geometry).

Perturbations (:class:`Perturbation`), after the SFMNN's per-patch atmosphere, let the
data correct a table computed for a slightly different atmosphere:

* ``tau_scale`` ``s``: every transmittance ``t -> t**s``, i.e. all optical depths of the
  paths scaled by ``s``. O2 and Rayleigh optical depths are proportional to surface
  pressure, so ``s - 1`` is the relative pressure error of the table; inside the O2 lines
  (optical depths of several) this is what changes the band depth.
* ``up_scale`` ``c_g`` per band group ``g`` (wavelength ranges split at
  ``group_edges_nm``): ``t_oo, t_do -> c_g t_oo, c_g t_do``, a smooth error of the upward
  continuum transmittance (aerosol between ground and sensor).
* ``path_scale`` ``b``: ``rho_so -> b rho_so`` (the path radiance's aerosol and geometry
  dependence).

Their priors are the model's (:class:`bayesfluo.model.table_prior.PerturbationPrior`).
All functions are pure JAX and differentiable in the perturbations.
"""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.physics.atmosphere import TransferFunctions
from bayesfluo.physics.forward import (
    NOMINAL_SENSOR,
    BandOperator,
    FineTerms,
    ForwardModel,
    integrate_bands,
    operator_from_terms,
    radiance_from_terms,
)
from bayesfluo.physics.sensor import SensorParams

__all__ = ["TABLE_TERMS", "ExternalAtmosphere", "resample_table", "Perturbation",
           "PERTURBATION_SITES", "perturb", "fine_terms_external", "radiance_fine_external",
           "radiance_exact_external", "irradiance_exact_external", "band_operator_external"]

TABLE_TERMS = ("e0_cos_pi", "rho_so", "t_ss", "t_sd", "t_oo", "t_do", "rho_dd")
"""The quantities of a transfer-function table (module docstring), in table order."""

PERTURBATION_SITES = ("tau_scale", "up_scale", "path_scale")
"""The perturbations of a table (the fields of :class:`Perturbation`)."""


class ExternalAtmosphere(eqx.Module):
    """A transfer-function table resampled onto a forward model's fine grid (float32
    arrays of shape (n_fine,); ``e0_cos_pi`` in mW m-2 sr-1 nm-1, the others
    dimensionless), plus the band-group index of every fine-grid point and where the
    table comes from (``source``, e.g. its file)."""

    e0_cos_pi: jax.Array
    rho_so: jax.Array
    t_ss: jax.Array
    t_sd: jax.Array
    t_oo: jax.Array
    t_do: jax.Array
    rho_dd: jax.Array
    group: jax.Array
    n_groups: int = eqx.field(static=True, default=1)
    source: str = eqx.field(static=True, default="")


def resample_table(model: ForwardModel, wavelength_nm, terms: Mapping[str, np.ndarray],
                   group_edges_nm: tuple[float, ...] = (), source: str = ""
                   ) -> ExternalAtmosphere:
    """Resample a table's arrays onto ``model``'s fine grid.

    Parameters
    ----------
    model : ForwardModel
    wavelength_nm : array (n,)
        The table's air wavelengths, nm, strictly increasing.
    terms : mapping
        The arrays (n,) of :data:`TABLE_TERMS` (``e0_cos_pi`` in mW m-2 sr-1 nm-1, the
        others dimensionless), already checked (:func:`bayesfluo.io.tables.validate_table`).
    group_edges_nm : tuple of float
        Wavelengths (nm) splitting the window into band groups for ``up_scale``.
    source : str
        Where the table comes from (kept as :attr:`ExternalAtmosphere.source`).

    Returns
    -------
    ExternalAtmosphere

    Raises
    ------
    ValueError
        If the table does not cover the fine grid, or is too coarse to resolve the band
        responses (step above a quarter of the narrowest FWHM).

    Notes
    -----
    A table on the model's own fine grid (e.g. exported from the built-in atmosphere, or
    read back from a file of it) is used without interpolation: a grid that matches to
    1e-3 of the step is taken as that grid. Any other grid is interpolated linearly.
    """
    wl = np.asarray(wavelength_nm, dtype=np.float64)
    fine = np.asarray(model.fine_nm, dtype=np.float64)
    step = fine[1] - fine[0]
    if wl[0] > fine[0] + 1e-3 * step or wl[-1] < fine[-1] - 1e-3 * step:
        raise ValueError(f"table covers {wl[0]:.3f}-{wl[-1]:.3f} nm; {model.instrument} needs "
                         f"{fine[0]:.3f}-{fine[-1]:.3f} nm (air)")
    table_step = float(np.max(np.diff(wl)))
    fwhm_min = float(np.min(np.asarray(model.band_fwhm_nm)))
    if table_step > fwhm_min / 4.0:
        raise ValueError(f"table step {table_step:.4g} nm is too coarse for bands of FWHM "
                         f"{fwhm_min:.3g} nm (needs <= {fwhm_min / 4:.3g} nm)")
    same = wl.size == fine.size and np.max(np.abs(wl - fine)) < 1e-3 * step

    def resample(name):
        v = np.asarray(terms[name], dtype=np.float64)
        return jnp.asarray(v if same else np.interp(fine, wl, v), jnp.float32)

    edges = np.sort(np.asarray(group_edges_nm, dtype=np.float64))
    group = np.searchsorted(edges, fine, side="right").astype(np.int32)
    return ExternalAtmosphere(**{n: resample(n) for n in TABLE_TERMS},
                              group=jnp.asarray(group), n_groups=int(edges.size + 1),
                              source=str(source))


class Perturbation(eqx.Module):
    """Multiplicative perturbations of a table (module docstring): optical-depth scale
    ``tau_scale``, upward-transmittance scale per band group ``up_scale`` (n_groups,)
    and path-radiance scale ``path_scale``; all 1 leave the table unchanged."""

    tau_scale: jax.Array = eqx.field(default_factory=lambda: jnp.float32(1.0))
    up_scale: jax.Array = eqx.field(default_factory=lambda: jnp.ones((1,), jnp.float32))
    path_scale: jax.Array = eqx.field(default_factory=lambda: jnp.float32(1.0))


def perturb(ext: ExternalAtmosphere, pert: Perturbation | None) -> TransferFunctions:
    """The table's transfer functions with a :class:`Perturbation` applied (fine grid)."""
    if pert is None:
        return TransferFunctions(ext.t_ss, ext.t_sd, ext.t_oo, ext.t_do, ext.rho_so,
                                 ext.rho_dd)
    tiny = jnp.float32(1e-30)
    power = lambda t: jnp.exp(pert.tau_scale * jnp.log(jnp.maximum(t, tiny)))  # noqa: E731
    up = jnp.broadcast_to(jnp.asarray(pert.up_scale, jnp.float32).reshape(-1),
                          (ext.n_groups,))[ext.group]
    return TransferFunctions(power(ext.t_ss), power(ext.t_sd), up * power(ext.t_oo),
                             up * power(ext.t_do), pert.path_scale * ext.rho_so, ext.rho_dd)


def fine_terms_external(ext: ExternalAtmosphere, pert: Perturbation | None = None
                        ) -> FineTerms:
    """Fine-grid radiance factors (:class:`bayesfluo.physics.forward.FineTerms`) of a
    table, optionally perturbed (path radiance in mW m-2 sr-1 nm-1)."""
    tf = perturb(ext, pert)
    up = tf.t_oo + tf.t_do
    return FineTerms(path=ext.e0_cos_pi * tf.rho_so,
                     reflected=ext.e0_cos_pi * (tf.t_ss + tf.t_sd) * up, emitted=up,
                     transfer=tf)


def radiance_fine_external(ext: ExternalAtmosphere, reflectance_fine, sif_fine,
                           pert: Perturbation | None = None, with_irradiance: bool = False):
    """At-sensor radiance on the fine grid (mW m-2 sr-1 nm-1) through a table.

    The table counterpart of :func:`bayesfluo.physics.forward.radiance_fine`; with
    ``with_irradiance`` also the downwelling irradiance at the surface (mW m-2 nm-1),
    ``pi e0_cos_pi (t_ss + t_sd) / (1 - rho_dd R)``.
    """
    ft = fine_terms_external(ext, pert)
    if not with_irradiance:
        return radiance_from_terms(ft, reflectance_fine, sif_fine)
    return radiance_from_terms(ft, reflectance_fine, sif_fine, jnp.pi * ext.e0_cos_pi)


def radiance_exact_external(model: ForwardModel, ext: ExternalAtmosphere, reflectance_fine,
                            sif_fine, sens: SensorParams = NOMINAL_SENSOR,
                            pert: Perturbation | None = None):
    """Band radiance (mW m-2 sr-1 nm-1) by integrating the fine-grid radiance through a
    table (the simulator's route; :func:`bayesfluo.physics.forward.radiance_exact`)."""
    return integrate_bands(model, radiance_fine_external(ext, reflectance_fine, sif_fine, pert),
                           sens)


def irradiance_exact_external(model: ForwardModel, ext: ExternalAtmosphere, reflectance_fine,
                              sens: SensorParams = NOMINAL_SENSOR,
                              pert: Perturbation | None = None):
    """Band downwelling irradiance at the surface (mW m-2 nm-1) through a table."""
    _, e = radiance_fine_external(ext, reflectance_fine, jnp.zeros_like(reflectance_fine),
                                  pert, with_irradiance=True)
    return integrate_bands(model, e, sens)


def band_operator_external(model: ForwardModel, ext: ExternalAtmosphere,
                           sens: SensorParams = NOMINAL_SENSOR,
                           pert: Perturbation | None = None) -> BandOperator:
    """The :class:`~bayesfluo.physics.forward.BandOperator` of a table (the inference
    route, used with :func:`bayesfluo.physics.forward.radiance_from_operator`).

    As :func:`bayesfluo.physics.forward.band_operator` (both are
    :func:`~bayesfluo.physics.forward.operator_from_terms`), except that the spherical
    albedo at each band is the response-weighted mean of the table's (a MODTRAN
    ``rho_dd`` may carry line structure; for a smooth one it equals the band-centre value
    to second order in the response width).
    """
    return operator_from_terms(model, fine_terms_external(ext, pert), sens)
