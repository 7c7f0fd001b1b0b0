"""External atmospheres: transfer-function tables used in place of the built-in atmosphere.

A *transfer-function table* is an :class:`xarray.Dataset` holding the quantities of the
four-stream coupling (SCIENCE.md section 2) on a fine wavelength grid, as MODTRAN-based
processing chains (SFM, SpecFit, SCOPE's MODTRAN interrogation technique) produce them:

=============  ==================  ====================================================
variable       units               meaning
=============  ==================  ====================================================
``e0_cos_pi``  mW m-2 sr-1 nm-1    ``E0 cos(sza) / pi`` at the top of the atmosphere
                                   (TSIS-1 E0 times the day's Sun-distance factor)
``rho_so``     1                   path reflectance (sun -> sensor, no ground contact)
``t_ss``       1                   direct transmittance sun -> ground
``t_sd``       1                   diffuse transmittance sun -> ground
``t_oo``       1                   direct transmittance ground -> sensor
``t_do``       1                   diffuse transmittance ground -> sensor
``rho_dd``     1                   spherical albedo of the atmosphere seen from the ground
=============  ==================  ====================================================

The coordinate ``wavelength`` is in nm, air, increasing. The attributes record the
geometry and altitudes the table was computed for (``sza_deg``, ``vza_deg``, ``raa_deg``,
``surface_altitude_m``, ``sensor_altitude_m``; optional ``sun_distance_factor``,
``surface_pressure_hpa``, ``aot550``, ...). Several tables may be stacked along further
dimensions (e.g. ``surface_pressure`` or ``aot550``); :func:`external_atmosphere`
interpolates them linearly at the values asked for.

With a table the at-sensor radiance is (the same formula as the built-in route)::

    L = e0_cos_pi [rho_so + (t_ss + t_sd) R (t_oo + t_do) / (1 - rho_dd R)]
        + F (t_oo + t_do) / (1 - rho_dd R)

A table is computed for one geometry: its values are used as they are for every pixel it
is applied to (apply one table per patch of similar geometry).

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

Their priors (:class:`PerturbationPrior`) are log-normal around 1; see its docstring for
the widths. All functions are pure JAX and differentiable in the perturbations.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo._version import __version__
from bayesfluo.physics import sensor
from bayesfluo.physics.atmosphere import AtmosphereParams, TransferFunctions
from bayesfluo.physics.forward import (
    NOMINAL_SENSOR,
    BandOperator,
    FineTerms,
    ForwardModel,
    Geometry,
    fine_terms,
    response,
    windows,
)
from bayesfluo.physics.sensor import SensorParams

__all__ = ["TABLE_VARIABLES", "GEOMETRY_ATTRS", "transfer_table", "validate_table",
           "export_atmosphere", "ExternalAtmosphere", "external_atmosphere", "Perturbation",
           "PerturbationPrior", "ExternalModel", "perturb", "fine_terms_external",
           "radiance_fine_external", "radiance_exact_external", "irradiance_exact_external",
           "band_operator_external", "sample_perturbation", "PERTURBATION_SITES"]

TABLE_VARIABLES: dict[str, tuple[str, str]] = {
    "e0_cos_pi": ("mW m-2 sr-1 nm-1",
                  "top-of-atmosphere solar irradiance times cos(solar zenith angle) / pi"),
    "rho_so": ("1", "path reflectance (light scattered into the sensor without touching "
                    "the ground)"),
    "t_ss": ("1", "direct transmittance sun to ground"),
    "t_sd": ("1", "diffuse transmittance sun to ground"),
    "t_oo": ("1", "direct transmittance ground to sensor"),
    "t_do": ("1", "diffuse transmittance ground to sensor"),
    "rho_dd": ("1", "spherical albedo of the atmosphere seen from the ground"),
}
"""Variables of a transfer-function table: name -> (units, long_name)."""

GEOMETRY_ATTRS = ("sza_deg", "vza_deg", "raa_deg", "surface_altitude_m", "sensor_altitude_m")
"""Attributes every table carries: the geometry (degrees) and altitudes (m above sea
level) it was computed for."""

_fine_terms_jit = eqx.filter_jit(fine_terms)


def transfer_table(wavelength_nm, *, e0_cos_pi, rho_so, t_ss, t_sd, t_oo, t_do, rho_dd,
                   sza_deg: float, vza_deg: float, raa_deg: float, surface_altitude_m: float,
                   sensor_altitude_m: float, source: str = "", **attrs) -> xr.Dataset:
    """Build a transfer-function table from arrays on a wavelength grid.

    Parameters
    ----------
    wavelength_nm : array (n,)
        Air wavelengths, nm, strictly increasing.
    e0_cos_pi : array (..., n)
        ``E0 cos(sza) / pi``, mW m-2 sr-1 nm-1.
    rho_so, t_ss, t_sd, t_oo, t_do, rho_dd : array (..., n)
        Path reflectance, transmittances and spherical albedo (dimensionless).
    sza_deg, vza_deg, raa_deg : float
        Geometry the table was computed for, degrees.
    surface_altitude_m, sensor_altitude_m : float
        Altitudes above sea level, m.
    source : str
        Where the table comes from (kept as the ``source`` attribute).
    **attrs
        Further attributes (e.g. ``surface_pressure_hpa``, ``aot550``).

    Returns
    -------
    xarray.Dataset
        Checked by :func:`validate_table`.
    """
    wl = np.asarray(wavelength_nm, dtype=np.float64)
    values = dict(e0_cos_pi=e0_cos_pi, rho_so=rho_so, t_ss=t_ss, t_sd=t_sd, t_oo=t_oo,
                  t_do=t_do, rho_dd=rho_dd)
    data_vars = {}
    for name, (units, long_name) in TABLE_VARIABLES.items():
        arr = np.asarray(values[name], dtype=np.float32)
        if arr.ndim != 1:
            raise ValueError(f"{name} must be 1-D over wavelength, got shape {arr.shape}")
        data_vars[name] = (("wavelength",), arr, {"units": units, "long_name": long_name})
    ds = xr.Dataset(
        data_vars,
        coords={"wavelength": ("wavelength", wl, {
            "units": "nm", "medium": "air", "long_name": "wavelength in air",
            "standard_name": "radiation_wavelength"})},
        attrs={"title": "bayesfluo atmospheric transfer-function table",
               "Conventions": "CF-1.10", "source": source, "bayesfluo_version": __version__,
               "sza_deg": float(sza_deg), "vza_deg": float(vza_deg),
               "raa_deg": float(raa_deg), "surface_altitude_m": float(surface_altitude_m),
               "sensor_altitude_m": float(sensor_altitude_m),
               **{k: (float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v)
                  for k, v in attrs.items()}})
    validate_table(ds)
    return ds


def validate_table(ds: xr.Dataset, name: str = "transfer-function table") -> None:
    """Check a transfer-function table; raise ValueError naming the first problem.

    Checks: every variable of :data:`TABLE_VARIABLES` present with a ``wavelength``
    dimension; the wavelength coordinate in nm (air), finite and strictly increasing;
    values finite; transmittances and ``rho_so``, ``rho_dd`` in [0, 1] (1e-4 tolerance
    for rounding); ``e0_cos_pi`` >= 0; the geometry attributes present and finite.
    """
    missing = [v for v in TABLE_VARIABLES if v not in ds]
    if missing:
        raise ValueError(f"{name}: missing variable(s) {missing}; a table needs "
                         f"{list(TABLE_VARIABLES)}")
    if "wavelength" not in ds.coords:
        raise ValueError(f"{name}: needs a 'wavelength' coordinate in nm")
    wl_da = ds["wavelength"]
    units = str(wl_da.attrs.get("units", "nm")).strip().lower()
    if units not in ("nm", "nanometer", "nanometers"):
        raise ValueError(f"{name}: wavelength units must be nm, found {units!r}")
    if str(wl_da.attrs.get("medium", "air")).lower() != "air":
        raise ValueError(f"{name}: wavelength must be in air (convert vacuum wavelengths with "
                         "bayesfluo.physics.air.vacuum_to_air)")
    wl = np.asarray(wl_da.values, dtype=np.float64)
    if wl.ndim != 1 or wl.size < 2 or not np.all(np.isfinite(wl)) or np.any(np.diff(wl) <= 0):
        raise ValueError(f"{name}: wavelength must be finite and strictly increasing")
    if wl.max() < 50.0:
        raise ValueError(f"{name}: wavelengths {wl.min():.4g}-{wl.max():.4g} look like "
                         "micrometres; the table needs nm")
    for v in TABLE_VARIABLES:
        da = ds[v]
        if "wavelength" not in da.dims:
            raise ValueError(f"{name}: variable {v!r} has no 'wavelength' dimension")
        arr = np.asarray(da.values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: variable {v!r} contains NaN or infinite values")
        lo = 0.0 if v == "e0_cos_pi" else -1e-4
        hi = np.inf if v == "e0_cos_pi" else 1.0 + 1e-4
        if arr.min() < lo or arr.max() > hi:
            rng = "must be >= 0" if v == "e0_cos_pi" else "must lie in [0, 1]"
            raise ValueError(f"{name}: {v} {rng}, found {arr.min():.4g} to {arr.max():.4g}")
    for a in GEOMETRY_ATTRS:
        if a not in ds.attrs:
            raise ValueError(f"{name}: missing attribute {a!r} (the geometry and altitudes "
                             f"the table was computed for: {list(GEOMETRY_ATTRS)})")
        if not np.isfinite(float(ds.attrs[a])):
            raise ValueError(f"{name}: attribute {a!r} must be finite")


def export_atmosphere(model: ForwardModel, atm: AtmosphereParams, geom: Geometry,
                      source: str = "bayesfluo built-in atmosphere") -> xr.Dataset:
    """The built-in atmosphere as a transfer-function table on the model's fine grid.

    Parameters
    ----------
    model : ForwardModel
        Sets the fine wavelength grid (air, nm) and the solar spectrum.
    atm : AtmosphereParams
        Scalar surface pressure (hPa), AOT at 550 nm, Angstrom exponent, diffuse path.
    geom : Geometry
        Scalar angles (degrees), altitudes (m) and Sun-distance factor.

    Returns
    -------
    xarray.Dataset
        The table (see module docstring), with the atmosphere's parameters and the
        aerosol constants of ``model`` as attributes.
    """
    ft = _fine_terms_jit(model, atm, geom)
    e0 = (model.solar * geom.sun_distance_factor * jnp.cos(jnp.deg2rad(geom.sza_deg))
          / jnp.pi)
    tf = ft.transfer
    f = lambda a: float(np.asarray(a))  # noqa: E731
    return transfer_table(
        np.asarray(model.fine_nm, dtype=np.float64), e0_cos_pi=np.asarray(e0),
        rho_so=np.asarray(tf.rho_so), t_ss=np.asarray(tf.t_ss), t_sd=np.asarray(tf.t_sd),
        t_oo=np.asarray(tf.t_oo), t_do=np.asarray(tf.t_do), rho_dd=np.asarray(tf.rho_dd),
        sza_deg=f(geom.sza_deg), vza_deg=f(geom.vza_deg), raa_deg=f(geom.raa_deg),
        surface_altitude_m=f(geom.surface_altitude_m),
        sensor_altitude_m=f(geom.sensor_altitude_m), source=source,
        sun_distance_factor=f(geom.sun_distance_factor),
        surface_pressure_hpa=f(atm.surface_pressure_hpa), aot550=f(atm.aot550),
        angstrom=f(atm.angstrom), diffuse_path=f(atm.diffuse_path),
        aerosol_omega=model.aerosol_omega, aerosol_g=model.aerosol_g,
        aerosol_scale_height_m=model.aerosol_scale_height_m, instrument=model.instrument)


class ExternalAtmosphere(eqx.Module):
    """A transfer-function table resampled onto a forward model's fine grid (float32
    arrays of shape (n_fine,)), plus the band-group index of every fine-grid point."""

    e0_cos_pi: jax.Array
    rho_so: jax.Array
    t_ss: jax.Array
    t_sd: jax.Array
    t_oo: jax.Array
    t_do: jax.Array
    rho_dd: jax.Array
    group: jax.Array
    n_groups: int = eqx.field(static=True, default=1)


def external_atmosphere(model: ForwardModel, table: xr.Dataset,
                        group_edges_nm: tuple[float, ...] = (),
                        geometry: Geometry | None = None, max_angle_deg: float = 2.0,
                        max_altitude_m: float = 100.0, **coords) -> ExternalAtmosphere:
    """Resample a table onto ``model``'s fine grid for the forward model.

    Parameters
    ----------
    model : ForwardModel
    table : xarray.Dataset
        A transfer-function table (:func:`validate_table`).
    group_edges_nm : tuple of float
        Wavelengths (nm) splitting the window into band groups for ``up_scale``.
    geometry : Geometry, optional
        The geometry the table will be applied to; a warning is issued when its angles
        differ from the table's by more than ``max_angle_deg`` or its altitudes by more
        than ``max_altitude_m``.
    **coords
        Values of the table's further dimensions (e.g. ``surface_pressure=955.0``),
        interpolated linearly (:meth:`xarray.Dataset.interp`).

    Raises
    ------
    ValueError
        If the table is invalid, does not cover the fine grid, has a dimension left
        unresolved, or is too coarse to resolve the band responses (step above a quarter
        of the narrowest FWHM).

    Notes
    -----
    A table on the model's own fine grid (e.g. from :func:`export_atmosphere`, or read
    back from a file of it) is used without interpolation: a grid that matches to 1e-3
    of the step is taken as that grid. Any other grid is interpolated linearly.
    """
    validate_table(table)
    if coords:
        unknown = [k for k in coords if k not in table.dims]
        if unknown:
            raise ValueError(f"table has no dimension(s) {unknown}; its dimensions are "
                             f"{list(table.dims)}")
        table = table.interp(coords)
    extra = [d for d in table.dims if d != "wavelength"]
    if extra:
        raise ValueError(f"table has further dimension(s) {extra}: give their values, e.g. "
                         f"external_atmosphere(model, table, {extra[0]}=...)")
    wl = np.asarray(table["wavelength"].values, dtype=np.float64)
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
    if geometry is not None:
        _check_geometry(table, geometry, max_angle_deg, max_altitude_m)

    def resample(name):
        v = np.asarray(table[name].values, dtype=np.float64)
        return jnp.asarray(v if same else np.interp(fine, wl, v), jnp.float32)

    edges = np.sort(np.asarray(group_edges_nm, dtype=np.float64))
    group = np.searchsorted(edges, fine, side="right").astype(np.int32)
    return ExternalAtmosphere(**{n: resample(n) for n in TABLE_VARIABLES},
                              group=jnp.asarray(group), n_groups=int(edges.size + 1))


def _check_geometry(table, geom: Geometry, max_angle: float, max_alt: float) -> None:
    for a in ("sza_deg", "vza_deg"):
        d = float(np.max(np.abs(np.asarray(getattr(geom, a)) - table.attrs[a])))
        if d > max_angle:
            warnings.warn(f"{a} differs from the table's ({table.attrs[a]:.2f}) by {d:.2f} "
                          "degrees: the table's transfer functions are used as they are",
                          stacklevel=3)
    for a in ("surface_altitude_m", "sensor_altitude_m"):
        d = float(np.max(np.abs(np.asarray(getattr(geom, a)) - table.attrs[a])))
        if d > max_alt:
            warnings.warn(f"{a} differs from the table's ({table.attrs[a]:.1f} m) by {d:.1f} m",
                          stacklevel=3)


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
    table, optionally perturbed."""
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
    denom = 1.0 - ft.transfer.rho_dd * reflectance_fine
    rad = ft.path + (ft.reflected * reflectance_fine + ft.emitted * sif_fine) / denom
    if not with_irradiance:
        return rad
    irr = jnp.pi * ext.e0_cos_pi * (ft.transfer.t_ss + ft.transfer.t_sd) / denom
    return rad, irr


def radiance_exact_external(model: ForwardModel, ext: ExternalAtmosphere, reflectance_fine,
                            sif_fine, sens: SensorParams = NOMINAL_SENSOR,
                            pert: Perturbation | None = None):
    """Band radiance (mW m-2 sr-1 nm-1) by integrating the fine-grid radiance through a
    table (the simulator's route; :func:`bayesfluo.physics.forward.radiance_exact`)."""
    lfine = radiance_fine_external(ext, reflectance_fine, sif_fine, pert)
    return sensor.band_integrate(response(model, sens), windows(model, lfine))


def irradiance_exact_external(model: ForwardModel, ext: ExternalAtmosphere, reflectance_fine,
                              sens: SensorParams = NOMINAL_SENSOR,
                              pert: Perturbation | None = None):
    """Band downwelling irradiance at the surface (mW m-2 nm-1) through a table."""
    _, e = radiance_fine_external(ext, reflectance_fine, jnp.zeros_like(reflectance_fine),
                                  pert, with_irradiance=True)
    return sensor.band_integrate(response(model, sens), windows(model, e))


def band_operator_external(model: ForwardModel, ext: ExternalAtmosphere,
                           sens: SensorParams = NOMINAL_SENSOR,
                           pert: Perturbation | None = None) -> BandOperator:
    """The :class:`~bayesfluo.physics.forward.BandOperator` of a table (the inference
    route, used with :func:`bayesfluo.physics.forward.radiance_from_operator`).

    As :func:`bayesfluo.physics.forward.band_operator`, except that the spherical albedo
    at each band is the response-weighted mean of the table's (a MODTRAN ``rho_dd`` may
    carry line structure; for a smooth one it equals the band-centre value to second
    order in the response width).
    """
    ft = fine_terms_external(ext, pert)
    fine_win = windows(model, model.fine_nm)
    c = model.band_centre_nm
    w = sensor.response(fine_win, c, model.band_fwhm_nm, sens)
    spectra = windows(model, jnp.stack([ft.reflected, ft.emitted]))
    mom = sensor.band_moments(w, spectra, fine_win - c[:, None])
    rho = sensor.band_integrate(w, windows(model, ext.rho_dd))
    return BandOperator(path=sensor.band_integrate(w, windows(model, ft.path)),
                        reflected=mom[0], emitted=mom[1], rho_dd=rho)


PERTURBATION_SITES = ("tau_scale", "up_scale", "path_scale")


@dataclass(frozen=True)
class PerturbationPrior:
    """Log-normal priors around 1 of the :class:`Perturbation` of a table.

    Each free perturbation is ``exp(log_sd * z)``, ``z`` standard normal (sampled as
    ``table_<name>_z``; the value is recorded as ``table_<name>``). Widths (one standard
    deviation, relative):

    * ``tau_log_sd`` = 0.015: surface pressure varies with weather by about +-1 %
      (+-10 hPa) and a table is usually computed at a nominal elevation a few tens of
      metres off (0.4 % per 30 m); the O2 and Rayleigh optical depths follow it.
    * ``up_log_sd`` = 0.01: upward continuum transmittance. For an airborne sensor a few
      hundred metres up, an AOT error of 0.05 below the sensor changes it by about 1 %;
      from space (whole atmosphere below) widen it to about 0.05.
    * ``path_log_sd`` = 0.2: path radiance scales with the aerosol and Rayleigh optical
      depth below the sensor and with the phase function; +-20 % covers an AOT error of
      tens of percent. It is a small term for low-flying sensors.

    ``free`` chooses the sampled ones (the others stay 1); ``group_edges_nm`` (given to
    :func:`external_atmosphere`) sets how many ``up_scale`` values there are.
    """

    free: tuple[str, ...] = PERTURBATION_SITES
    tau_log_sd: float = 0.015
    up_log_sd: float = 0.01
    path_log_sd: float = 0.2

    def __post_init__(self):
        bad = [n for n in self.free if n not in PERTURBATION_SITES]
        if bad:
            raise ValueError(f"unknown table perturbation(s) {bad}; choose from "
                             f"{list(PERTURBATION_SITES)}")


class ExternalModel(eqx.Module):
    """What the NumPyro model needs to use a table: the resampled table and the prior of
    its perturbations (put it in ``data["external"]`` of
    :func:`bayesfluo.model.sif_model`)."""

    atmosphere: ExternalAtmosphere
    prior: PerturbationPrior = eqx.field(static=True, default=PerturbationPrior())


def sample_perturbation(external: ExternalModel) -> Perturbation:
    """Sample the free perturbations of ``external.prior`` (NumPyro sites, see
    :class:`PerturbationPrior`) and return the :class:`Perturbation`."""
    import numpyro  # the physics stays importable without the probabilistic layer
    import numpyro.distributions as dist

    prior = external.prior
    n_groups = external.atmosphere.n_groups
    sds = {"tau_scale": prior.tau_log_sd, "up_scale": prior.up_log_sd,
           "path_scale": prior.path_log_sd}
    shapes = {"tau_scale": (), "up_scale": (n_groups,), "path_scale": ()}
    vals = {}
    for name in PERTURBATION_SITES:
        if name in prior.free:
            z = numpyro.sample(f"table_{name}_z", dist.Normal(0.0, 1.0).expand(
                list(shapes[name])).to_event(len(shapes[name])))
            vals[name] = numpyro.deterministic(f"table_{name}", jnp.exp(sds[name] * z))
        else:
            vals[name] = jnp.ones(shapes[name], jnp.float32)
    return Perturbation(**vals)
