"""The model object: one physical and statistical model of a patch, used by every
inference (guide, training, NUTS, refinement, baselines, SBC, retrieval, report).

:class:`SifModel` owns, once: the forward model and its configuration, the atmosphere
source (the built-in radiative transfer, an external transfer-function table, or a
measured irradiance), which latents are free, the priors with their transforms
(:mod:`bayesfluo.model.priors`), the patch's band operator and its expansion, prediction,
the noise model (:func:`bayesfluo.physics.sensor.noise_variance`, one formula), the
likelihood and the NumPyro programs.

The program of one patch (:meth:`SifModel.program`), ``P`` pixels sharing an atmosphere
and a sensor state:

per pixel (plate ``pixel``)
    ``reflectance_z`` (K): non-centred B-spline coefficients of the reflectance,
    ``coeffs = sigmoid(mu + L z)`` with ``L`` the Cholesky factor of a squared-exponential
    covariance over the knot positions (length ``reflectance_length_nm``). The sigmoid
    keeps every coefficient, hence (convex hull of B-splines) the reflectance, in [0, 1];
    the correlation keeps it smooth.
    ``sif_far_red_raw`` (and ``sif_red_raw`` where the window has the O2-B band): SIF peak
    amplitude in prior scales, ``scale(NDVI) * HalfNormal(1)``, in the softplus coordinate
    of :class:`~bayesfluo.model.priors.SoftplusHalfNormal`.

per patch (built-in atmosphere)
    ``surface_pressure`` (hPa): ``p0 + pressure_sd * z``, p0 the standard pressure at the
    surface altitude; ``aot550``: log-normal around ``aot550_prior``; ``diffuse_path``:
    ``1 + lognormal``; sensor ``spectral_shift`` (nm): ``shift_sd * z``; ``fwhm_scale``:
    ``1 + fwhm_sd * z``. Which are free is ``cfg.free``; the others take ``cfg.fixed``.

per patch (external table)
    ``table_tau_scale``, ``table_up_scale``, ``table_path_scale`` (priors near 1,
    :class:`~bayesfluo.model.table_prior.PerturbationPrior`) replace the built-in
    atmosphere's latents; the sensor latents of ``cfg.free`` stay.

top of canopy (measured irradiance, FloX-like towers)
    ``L = E/pi * R + F`` per band (:func:`toc_operator`): a few metres of air between
    canopy and sensor are neglected, as FloX processing chains do, and there are no
    atmospheric or sensor latents (``cfg.free`` must be empty). The measured irradiance's
    own noise is carried through: ``var(e / pi) = a_E E/pi + b_E`` adds ``R^2 var(e/pi)``
    to each band's variance; to first order in ``e`` this is the exact likelihood of the
    radiance given the measured irradiance.

per pixel, known (``Patch.pixel_offset``, :meth:`SifModel.pixel_operators`)
    a pixel's surface pressure differs from the patch's by the standard atmosphere's
    difference between its own surface altitude (the scene's DEM) and the patch's mean,
    its spectral shift and FWHM scale by the instrument's characterised smile at its
    detector column, its view zenith by its own: the free shared latents are the
    patch's, each pixel's operator is moved by its known offsets (to first order). A
    hilly patch or one across the swath is then not a misfit.

Likelihood: ``radiance ~ Normal(L(theta), sqrt(a L + b))`` per band, masked by the pixel
mask. Deterministic sites: ``f760``, ``f687`` (B band windows), ``sif_peak``,
``reflectance760`` and each free shared latent's physical value.
"""

from __future__ import annotations

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions.transforms import biject_to

from bayesfluo.instruments import get_instrument
from bayesfluo.model.config import SENSOR_LATENTS, ModelConfig
from bayesfluo.model.patch import Patch
from bayesfluo.model.priors import (
    SHAPE760,
    SoftplusHalfNormal,
    knee_softplus,
    reflectance_prior,
    reflectance_weights,
    shared_values,
    sif_scale,
)
from bayesfluo.model.table_prior import ExternalModel
from bayesfluo.physics.external import (
    PERTURBATION_SITES,
    Perturbation,
    band_operator_external,
)
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    band_operator,
    build_forward_model,
    radiance_from_operator,
)
from bayesfluo.physics.sensor import noise_variance
from bayesfluo.physics.surface import SifParams, sif_spectrum, sif_taylor

__all__ = ["SifModel", "OperatorExpansion", "toc_operator", "has_red_peak",
           "PIXEL_OFFSET_COLUMNS"]

#: The columns of ``Patch.pixel_offset``: what a pixel's operator inputs differ from its
#: patch's by (surface pressure, hPa; spectral shift, nm; FWHM scale, 1; view zenith, deg)
PIXEL_OFFSET_COLUMNS = ("surface_pressure", "spectral_shift", "fwhm_scale", "vza")


class OperatorExpansion(NamedTuple):
    """Second-order Taylor expansion of a patch's :class:`BandOperator` in the
    standard-normal coordinates of the free shared latents (in ``cfg.free`` order)
    about ``z0``: ``op(z) = value + jac . d + d . hess . d / 2``, ``d = z - z0``; and,
    for a patch with pixel offsets, the derivatives along them at ``z0`` (``offset_jac``,
    leading dim 4; :meth:`SifModel.pixel_operators`)."""

    z0: jax.Array
    value: BandOperator
    jac: BandOperator
    hess: BandOperator
    offset_jac: BandOperator | None = None

    def __call__(self, z) -> BandOperator:
        """The expanded operator at ``z``."""
        d = jnp.asarray(z) - self.z0
        return jax.tree.map(lambda v, j, h: v + j @ d + 0.5 * (h @ d) @ d, self.value,
                            self.jac, self.hess)


def has_red_peak(fm: ForwardModel) -> bool:
    """Whether the window of ``fm`` holds the O2-B band (a red SIF peak is then a latent)."""
    return bool(float(fm.band_centre_nm[0]) < 690.0)


def toc_operator(irradiance) -> BandOperator:
    """Band operators (leading dimensions of ``irradiance``) of a top-of-canopy
    measurement: ``L = E/pi * R + F`` per band, ``E`` the measured irradiance
    (mW m-2 nm-1): no path radiance, no multiple-scattering term, the reflectance and
    SIF at the band centre."""
    e = jnp.asarray(irradiance, jnp.float32) / jnp.pi
    z = jnp.zeros_like(e)
    return BandOperator(path=z, reflected=jnp.stack([e, z, z], -2),
                        emitted=jnp.stack([jnp.ones_like(e), z, z], -2), rho_dd=z)


class SifModel(eqx.Module):
    """The probabilistic model of a patch (see the module docstring).

    A JAX pytree (an :class:`equinox.Module`): the forward model's and the table's arrays
    are its leaves, the configuration is static, so a model can be passed into a jitted
    function as an argument as well as closed over.

    Parameters
    ----------
    fm : ForwardModel
        The instrument's forward model (band grid, fine grid, O2 tables, basis).
    cfg : ModelConfig, optional
        Priors and free latents (default :class:`ModelConfig`; a top-of-canopy model
        defaults to no free shared latents).
    table : ExternalModel, optional
        An external transfer-function table with priors on its perturbations, used in
        place of the built-in atmosphere.
    top_of_canopy : bool
        The atmosphere is the patch's measured irradiance (``Patch.irradiance``).
    """

    fm: ForwardModel
    cfg: ModelConfig = eqx.field(static=True)
    table: ExternalModel | None
    top_of_canopy: bool = eqx.field(static=True)
    has_red: bool = eqx.field(static=True)
    _prior: tuple
    _w760: jax.Array

    def __init__(self, fm: ForwardModel, cfg: ModelConfig | None = None, *,
                 table: ExternalModel | None = None, top_of_canopy: bool = False):
        if cfg is None:
            cfg = ModelConfig(free=()) if top_of_canopy else ModelConfig()
        if top_of_canopy and cfg.free:
            raise ValueError(f"a top-of-canopy model (measured irradiance) has no "
                             f"atmospheric or sensor latents; got free={cfg.free}: use "
                             "ModelConfig(free=())")
        if top_of_canopy and table is not None:
            raise ValueError("give either a measured irradiance or an external atmosphere, "
                             "not both")
        self.fm = fm
        self.cfg = cfg
        self.table = table
        self.top_of_canopy = bool(top_of_canopy)
        self.has_red = has_red_peak(fm)
        self._prior = reflectance_prior(fm, cfg)
        self._w760 = reflectance_weights(fm, 760.0)

    @classmethod
    def for_instrument(cls, instrument: str, cfg: ModelConfig | None = None,
                       **kwargs) -> SifModel:
        """The model of a named instrument (:func:`bayesfluo.instruments.get_instrument`);
        a top-of-canopy instrument (FloX) gets the measured-irradiance source."""
        inst = get_instrument(instrument)
        kwargs.setdefault("top_of_canopy", inst.platform == "tower")
        return cls(build_forward_model(inst), cfg, **kwargs)

    def replace(self, **changes) -> SifModel:
        """A model with some of ``fm``, ``cfg``, ``table``, ``top_of_canopy`` changed."""
        kw = dict(fm=self.fm, cfg=self.cfg, table=self.table,
                  top_of_canopy=self.top_of_canopy) | changes
        fm, cfg = kw.pop("fm"), kw.pop("cfg")
        return SifModel(fm, cfg, **kw)

    def __repr__(self) -> str:
        src = ("measured irradiance" if self.top_of_canopy else
               "table" if self.table is not None else "built-in atmosphere")
        return (f"SifModel({self.fm.instrument}, {len(self.fm.band_centre_nm)} bands, "
                f"{src}, free={self.cfg.free}, red peak={self.has_red})")

    # --- latents and priors ---------------------------------------------------------

    @property
    def instrument(self) -> str:
        """Name of the instrument."""
        return self.fm.instrument

    @property
    def free(self) -> tuple[str, ...]:
        """Free shared latents of the built-in atmosphere and sensor (``cfg.free``)."""
        return () if self.top_of_canopy else tuple(self.cfg.free)

    @property
    def n_local(self) -> int:
        """Local (per-pixel) latent coordinates: K spline coefficients and 1 or 2 SIF."""
        return self.fm.n_basis + 1 + int(self.has_red)

    def local_names(self) -> list[str]:
        """Names of the local latent coordinates, in the guide's order."""
        return ([f"reflectance_z[{k}]" for k in range(self.fm.n_basis)]
                + ["sif_far_red_raw"] + (["sif_red_raw"] if self.has_red else []))

    def reflectance_prior(self) -> tuple[jax.Array, jax.Array]:
        """``(mu, chol)`` of the reflectance prior
        (:func:`bayesfluo.model.priors.reflectance_prior`)."""
        return self._prior

    def sif_scale(self, ndvi):
        """Half-normal scale of F760 given NDVI (mW m-2 sr-1 nm-1)."""
        return sif_scale(ndvi, self.cfg)

    def coefficients(self, reflectance_z):
        """B-spline coefficients of the reflectance from its prior coordinates (..., K)."""
        mu, chol = self._prior
        return jax.nn.sigmoid(mu + reflectance_z @ chol.T)

    def amplitudes(self, ndvi, far_raw, red_raw=None):
        """SIF peak amplitudes ``(red, far)`` (mW m-2 sr-1 nm-1, at the peaks' centres'
        shape normalisation) from the raw amplitudes (prior scales)."""
        scale = self.sif_scale(ndvi) / SHAPE760
        far = scale * far_raw
        red = (self.cfg.sif_red_ratio * scale * red_raw if self.has_red and red_raw is not None
               else jnp.zeros_like(far))
        return red, far

    def surface(self, local_u, ndvi):
        """Reflectance coefficients and SIF amplitudes ``(coeffs, red, far)`` of pixels
        from their local latents in the guide's unconstrained order (..., D) (SIF in the
        softplus coordinate)."""
        k = self.fm.n_basis
        coeffs = self.coefficients(local_u[..., :k])
        red_raw = knee_softplus(local_u[..., k + 1]) if self.has_red else None
        red, far = self.amplitudes(ndvi, knee_softplus(local_u[..., k]), red_raw)
        return coeffs, red, far

    def reflectance760(self, coeffs):
        """Reflectance at 760 nm of B-spline coefficients (..., K)."""
        return coeffs @ self._w760

    def shared(self, surface_pressure0, z: dict):
        """``(atmosphere, sensor, values)`` of a patch from the standard-normal
        coordinates ``z`` (``{name: value}``) of the free shared latents
        (:func:`bayesfluo.model.priors.shared_values`)."""
        return shared_values(self.cfg, surface_pressure0, z)

    def shared_physical(self, surface_pressure0, zvec) -> dict:
        """Physical values of the free shared latents from their coordinates (..., S)."""
        z = {n: zvec[..., i] for i, n in enumerate(self.free)}
        return self.shared(surface_pressure0, z)[2]

    def shared_sites(self) -> tuple[tuple[str, tuple[int, ...]], ...]:
        """The patch-level sample sites whose standard-normal coordinates, flattened and
        concatenated in this order, are the shared vector ``zvec`` of :meth:`operator`:
        ``<name>_z`` of each free latent (``cfg.free`` order); through an external table
        its sensor latents, then ``table_<name>_z`` of each free perturbation (``up_scale``
        one per band group). Empty at top of canopy."""
        if self.top_of_canopy:
            return ()
        if self.table is None:
            return tuple((f"{n}_z", ()) for n in self.free)
        shapes = {"tau_scale": (), "up_scale": (self.table.atmosphere.n_groups,),
                  "path_scale": ()}
        return (tuple((f"{n}_z", ()) for n in self.cfg.free if n in SENSOR_LATENTS)
                + tuple((f"table_{n}_z", shapes[n]) for n in PERTURBATION_SITES
                        if n in self.table.prior.free))

    @property
    def shared_size(self) -> int:
        """Length of the shared vector ``zvec`` (:meth:`shared_sites`)."""
        return int(sum(np.prod(shape, dtype=int) for _, shape in self.shared_sites()))

    def shared_vector(self, z: dict) -> jax.Array:
        """The shared vector ``zvec`` (:meth:`shared_sites` order) from the sites'
        values ``{site: z}``."""
        sites = self.shared_sites()
        if not sites:
            return jnp.zeros(0, jnp.float32)
        return jnp.concatenate([jnp.ravel(jnp.asarray(z[n], jnp.float32)) for n, _ in sites])

    def _table_parts(self, zvec) -> tuple[dict, Perturbation]:
        """The sensor latents ``{name: z}`` and the table's :class:`Perturbation` of a
        table model's shared vector (:meth:`shared_sites`)."""
        prior = self.table.prior
        sds = {"tau_scale": prior.tau_log_sd, "up_scale": prior.up_log_sd,
               "path_scale": prior.path_log_sd}
        sensor, pert, o = {}, {}, 0
        for name, shape in self.shared_sites():
            k = int(np.prod(shape, dtype=int))
            v = zvec[o] if shape == () else zvec[o:o + k].reshape(shape)
            o += k
            if name.startswith("table_"):
                key = name.removeprefix("table_").removesuffix("_z")
                pert[key] = jnp.exp(sds[key] * v)
            else:
                sensor[name.removesuffix("_z")] = v
        n_groups = self.table.atmosphere.n_groups
        pert.setdefault("up_scale", jnp.ones((n_groups,), jnp.float32))
        return sensor, Perturbation(**pert)

    # --- the patch operator -----------------------------------------------------------

    def operator(self, patch: Patch, zvec=None) -> BandOperator:
        """The patch's band operator at the coordinates ``zvec`` (S,) of the free shared
        latents (:meth:`shared_sites` order; default: the prior mean, zeros), at the
        patch's mean pixel offsets where it has them (:meth:`patch_delta`). Measured
        irradiance: one operator per pixel (leading dim P). Through an external table:
        its sensor latents and perturbations (the table's own geometry)."""
        if self.top_of_canopy:
            return toc_operator(patch.irradiance)
        if zvec is None:
            zvec = jnp.zeros(self.shared_size, jnp.float32)
        dbar = self.patch_delta(patch)
        if dbar is not None:  # at the patch's mean pixel offsets
            return self._operator_at(patch, zvec, dbar)
        if self.table is not None:  # the table's geometry: one operator for the patch
            return self.table_operator(*self._table_parts(zvec))
        atm, sens, _ = self.shared(patch.surface_pressure0,
                                   dict(zip(self.free, zvec, strict=True)))
        return band_operator(self.fm, atm, patch.geometry, sens)

    def pixel_delta(self, patch: Patch) -> jax.Array | None:
        """What each pixel's operator inputs differ from its patch's by (P, 4): surface
        pressure (hPa), spectral shift (nm), FWHM scale (1), view zenith (degrees), from
        ``patch.pixel_offset``; None where the patch has none (or the model has no
        built-in atmosphere).

        The smile is the instrument's absolute one (``pixel_offset`` columns 1, 2): a
        fixed shift or FWHM scale is the smile's value at the pixel's column; a free one
        is the patch's (its prior centred on the scene's constant) and each pixel differs
        from it by its smile minus the patch's (usable pixels') mean smile.

        Through an external table only the smile: the table is one atmosphere at one
        geometry (its surface pressure and view zenith do not move), and its sensor
        latents are those of ``cfg.free``."""
        if patch.pixel_offset is None or self.top_of_canopy:
            return None
        off = jnp.asarray(patch.pixel_offset, jnp.float32)
        mean = self._usable_mean(patch, off)
        free = self.cfg.free  # the built-in model's free latents; a table's sensor ones
        zero = jnp.zeros_like(off[..., 0])
        cols = [off[..., 0] if self.table is None else zero]
        for i, name in ((1, "spectral_shift"), (2, "fwhm_scale")):
            cols.append(off[..., i] - mean[..., None, i] if name in free else off[..., i])
        cols.append(off[..., 3] if self.table is None else zero)
        return jnp.stack(cols, -1)

    @staticmethod
    def _usable_mean(patch: Patch, v):
        """Mean over the patch's usable pixels of ``v`` (..., P, k)."""
        w = (jnp.ones(v.shape[:-1], jnp.float32) if patch.mask is None
             else (jnp.asarray(patch.mask) > 0).astype(jnp.float32))
        return jnp.sum(v * w[..., None], -2) / jnp.maximum(jnp.sum(w, -1), 1.0)[..., None]

    def patch_delta(self, patch: Patch) -> jax.Array | None:
        """The mean over the patch's usable pixels of :meth:`pixel_delta` (4,): the
        patch's own operator (:meth:`operator`) is taken there (e.g. a fixed FWHM scale
        at the patch's mean smile), each pixel's about it."""
        delta = self.pixel_delta(patch)
        return None if delta is None else self._usable_mean(patch, delta)

    def _operator_at(self, patch: Patch, zvec, delta) -> BandOperator:
        """The operator at shared coordinates ``zvec`` moved by ``delta`` (4,)
        (:meth:`pixel_delta`'s columns; through a table, its smile columns)."""
        if self.table is not None:
            sensor, pert = self._table_parts(zvec)
            sens = self._table_sensor(sensor)
            sens = sens._replace(shift_nm=sens.shift_nm + delta[1],
                                 fwhm_scale=sens.fwhm_scale + delta[2])
            return band_operator_external(self.fm, self.table.atmosphere, sens, pert)
        atm, sens, _ = self.shared(patch.surface_pressure0,
                                   dict(zip(self.free, zvec, strict=True)))
        atm = atm._replace(surface_pressure_hpa=atm.surface_pressure_hpa + delta[0])
        sens = sens._replace(shift_nm=sens.shift_nm + delta[1],
                             fwhm_scale=sens.fwhm_scale + delta[2])
        geom = patch.geometry._replace(vza_deg=patch.geometry.vza_deg + delta[3])
        return band_operator(self.fm, atm, geom, sens)

    def offset_jacobian(self, patch: Patch, zvec, dbar=None
                        ) -> tuple[BandOperator, BandOperator]:
        """The patch's operator at ``zvec`` (:meth:`operator`, at :meth:`patch_delta`,
        or ``dbar`` where the caller has it) and its derivatives along the four pixel
        offsets (leading dim 4): ``(value, jac)``."""
        dbar = self.patch_delta(patch) if dbar is None else dbar
        value, lin = jax.linearize(lambda d: self._operator_at(patch, zvec, d), dbar)
        return value, jax.vmap(lin)(jnp.eye(4, dtype=jnp.float32))

    def pixel_operators(self, patch: Patch, zvec=None,
                        expansion: OperatorExpansion | None = None) -> BandOperator:
        """The band operator of each pixel (leading dim P) at the patch's shared
        coordinates ``zvec`` (S,), moved by the pixel's known offsets
        (:meth:`pixel_delta`: its own surface pressure from its surface altitude, the
        smile at its column, its view zenith); the patch's one operator where there are
        no offsets.

        First order in each pixel's offsets from the patch's mean ones
        (:meth:`patch_delta`, where :meth:`operator` is taken): the exact operator at
        ``zvec`` plus its derivatives along them, or with an ``expansion``
        (:meth:`operator_expansion`) the expansion at ``zvec`` plus the derivatives at
        its centre. The exact route costs the operator and four forward derivatives
        (a retrieval's fit check takes its operators from the scene's expansion instead,
        :mod:`bayesfluo.model.scene_expansion`). Inside an
        8 x 8 patch of a default simulated scene the offsets are a few hPa, hundredths of
        a nm, a few per cent of FWHM and a few degrees: on an edge-of-swath HyPlant O2-A patch the
        first-order radiance differs from each pixel's exact one by at most 0.31 noise sd
        in one band (rms 0.04), where the patch's one operator errs by up to 6.3 (rms
        1.06) (``tests/test_pixel_offsets.py``).
        """
        if zvec is None:
            zvec = jnp.zeros(self.shared_size, jnp.float32)
        delta = self.pixel_delta(patch)
        if expansion is not None:
            op = expansion(zvec) if self.shared_size else expansion.value
            if delta is None or expansion.offset_jac is None:
                return op
            jac = expansion.offset_jac
        elif delta is None:
            return self.operator(patch, zvec)
        dbar = self._usable_mean(patch, delta)
        if expansion is None:
            op, jac = self.offset_jacobian(patch, zvec, dbar)
        d = delta - dbar[..., None, :]
        return jax.tree.map(lambda v, j: v + jnp.tensordot(d, j, 1), op, jac)

    def table_operator(self, sensor_z: dict, perturbation: Perturbation) -> BandOperator:
        """Band operator through the external table, with sensor latents ``sensor_z``
        (``{name: z}``, the sensor latents of ``cfg.free``) and the table's perturbation."""
        return band_operator_external(self.fm, self.table.atmosphere,
                                      self._table_sensor(sensor_z), perturbation)

    def _table_sensor(self, sensor_z: dict):
        """The sensor state (:class:`~bayesfluo.physics.sensor.SensorParams`) of a table
        model's sensor latents ``{name: z}`` (the fixed ones from ``cfg.fixed``)."""
        fixed = {"surface_pressure": 1013.25, "aot550": 0.12, "diffuse_path": 1.5,
                 "angstrom": 1.3, "spectral_shift": 0.0, "fwhm_scale": 1.0, **self.cfg.fixed}
        cfg_s = self.cfg.replace(free=tuple(n for n in self.cfg.free if n in SENSOR_LATENTS),
                                 fixed=fixed)
        return shared_values(cfg_s, jnp.float32(1013.25), sensor_z)[1]

    def operator_expansion(self, patch: Patch, z0, order: int = 2) -> OperatorExpansion:
        """The patch's band operator expanded about ``z0`` (one value per free latent) to
        first or second order (the Hessian term zero for ``order=1``).

        NUTS and the refinement evaluate the operator (fine-grid atmosphere and sensor
        response, most of the cost of a gradient) thousands of times within a small
        posterior region of the few shared latents; the expansion replaces it there at a
        tiny fraction of the cost. Its error is third order in the distance from ``z0``.
        """
        z0 = jnp.asarray(z0, jnp.float32)

        def op_of(zv):
            return self.operator(patch, zv)

        if self.pixel_delta(patch) is None:
            value, off = op_of(z0), None
        else:  # the operator at z0 comes with the derivatives along the pixel offsets
            value, off = self.offset_jacobian(patch, z0)
        if order == 2:
            return OperatorExpansion(z0, value, jax.jacfwd(op_of)(z0),
                                     jax.jacfwd(jax.jacfwd(op_of))(z0), off)
        jac = jax.jacfwd(op_of)(z0)
        hess = jax.tree.map(lambda j: jnp.zeros(j.shape + z0.shape, j.dtype), jac)
        return OperatorExpansion(z0, value, jac, hess, off)

    # --- prediction and noise ---------------------------------------------------------

    def predict(self, op: BandOperator, coeffs, red, far) -> jax.Array:
        """Band radiance (P, B) of the pixels of a patch through its operator (one
        operator, or one per pixel: :meth:`pixel_operators`, a top-of-canopy patch),
        mW m-2 sr-1 nm-1."""
        if self.top_of_canopy:
            # radiance_from_operator(fm, toc_operator(E), ...) without its zero terms
            # (path, higher moments, multiple scattering): a third of the cost
            e = op.reflected[..., 0, :]
            r0 = coeffs @ self.fm.basis_band[0].T
            sif = sif_spectrum(self.fm.band_centre_nm, SifParams(red[..., None],
                                                                 far[..., None]))
            return e * r0 + sif
        per_pixel = op.path.ndim == 2
        return jax.vmap(lambda o, c, r, f: radiance_from_operator(
            self.fm, o, c, SifParams(r, f)), in_axes=(0 if per_pixel else None, 0, 0, 0))(
                op, coeffs, red, far)

    def predict_linearised(self, op: BandOperator, jac: BandOperator | None, d, coeffs, red,
                           far) -> jax.Array:
        """Band radiance (P, B) of a patch's pixels through ``op + d_p . jac`` for each
        pixel ``p``, without forming the per-pixel operators (:meth:`pixel_operators`'s
        first-order form: ``op`` at the patch's mean pixel offsets, ``jac`` its
        derivatives along them, leading dim 4; ``d`` (P, 4) each pixel's offsets from
        the mean, :meth:`pixel_delta`), mW m-2 sr-1 nm-1. ``jac`` None: ``op`` for every
        pixel. The same radiance as :meth:`predict` of those operators (to float
        rounding), at a fraction of the memory traffic."""
        bb = self.fm.basis_band                                      # (3, B, K)
        nb = bb.shape[1]
        # as plain matrix products over the flattened (moment, band) axis: XLA's batched
        # small einsums are several times slower on CPU
        rt = coeffs @ bb.reshape(-1, bb.shape[-1]).T                   # (P, 3B)
        c = self.fm.band_centre_nm
        t_red = sif_taylor(c, SifParams(1.0, 0.0)).reshape(-1)
        t_far = sif_taylor(c, SifParams(0.0, 1.0)).reshape(-1)
        f = red[:, None] * t_red + far[:, None] * t_far                 # (P, 3B)
        refl, emit = op.reflected.reshape(-1), op.emitted.reshape(-1)
        path, rho = op.path, op.rho_dd
        if jac is not None:
            path = path + d @ jac.path
            rho = rho + d @ jac.rho_dd
            refl = refl + d @ jac.reflected.reshape(jac.reflected.shape[0], -1)
            emit = emit + d @ jac.emitted.reshape(jac.emitted.shape[0], -1)
        num = (rt * refl + f * emit).reshape(-1, 3, nb).sum(1)
        r0 = rt[:, :nb]
        return path + num / (1.0 - rho * r0)

    def noise_variance(self, predicted, noise_a, noise_b, extra=0.0):
        """Noise variance per band ``a max(L, 0) + b`` (plus ``extra``, e.g. the measured
        irradiance's noise carried through), (mW m-2 sr-1 nm-1)^2."""
        return noise_variance(predicted, noise_a, noise_b) + extra

    def irradiance_variance(self, patch: Patch, coeffs):
        """Variance added to each band by the measured irradiance's own noise (top of
        canopy): ``R^2 var(e/pi)``, ``R`` the reflectance at the band centre."""
        r0 = coeffs @ self.fm.basis_band[0].T
        e = patch.irradiance / jnp.pi
        ea = patch.noise_a if patch.irradiance_noise_a is None else patch.irradiance_noise_a
        eb = patch.noise_b if patch.irradiance_noise_b is None else patch.irradiance_noise_b
        return r0**2 * noise_variance(e, ea, eb)

    def predict_mean(self, patch: Patch, shared_z, local_u) -> jax.Array:
        """Band radiance of a patch's pixels (P, B) at given shared coordinates (S,) and
        local latents (P, D) (the guide's unconstrained order)."""
        coeffs, red, far = self.surface(local_u, patch.ndvi)
        return self.predict(self.pixel_operators(patch, shared_z), coeffs, red, far)

    def fit_chi2(self, patch: Patch, predicted) -> jax.Array:
        """Reduced chi-square of each pixel's radiance against ``predicted`` (P,)."""
        var = self.noise_variance(predicted, patch.noise_a, patch.noise_b)
        return jnp.mean((patch.radiance - predicted) ** 2 / var, -1)

    def expanded_potential(self, patch: Patch, expansion: OperatorExpansion, z: dict
                           ) -> jax.Array:
        """The potential energy of :meth:`program` through an operator ``expansion``,
        written out for samplers: ``-log p(radiance, z)`` at the unconstrained sites
        ``z`` (NumPyro's unconstrained space: the SIF amplitudes in their softplus
        coordinate, the log Jacobian included). Built-in atmosphere or external table.

        Equal to ``numpyro.infer.util.potential_energy(self.program, (patch, expansion),
        {}, z)`` to float32 rounding (tested), and about three times cheaper to
        differentiate for a patch of 64 pixels: the radiance is linear in the spline
        coefficients and the SIF amplitudes but for the multiple-scattering factor, so
        the per-pixel work is two small matrix products for all pixels, where
        :func:`bayesfluo.physics.forward.radiance_from_operator` under ``vmap`` builds the
        SIF Taylor terms pixel by pixel.
        """
        if self.top_of_canopy:
            raise ValueError("the expanded potential is of a patch's shared operator, "
                             "not of a measured irradiance")
        fm = self.fm
        half_log_2pi = 0.5 * np.log(2.0 * np.pi)
        zs = self.shared_vector(z)  # every shared coordinate has a standard-normal prior
        refl = z["reflectance_z"]
        # priors: standard normal reflectance and shared coordinates, soft-plus half-normal
        # SIF amplitudes (the program's own distribution and transform)
        lp = -0.5 * (jnp.sum(refl**2) + jnp.sum(zs**2)) - half_log_2pi * (refl.size
                                                                          + zs.size)
        sif_prior = SoftplusHalfNormal(1.0)
        to_sif = biject_to(sif_prior.support)

        def amplitude(v):
            x = to_sif(v)
            return x, jnp.sum(sif_prior.log_prob(x) + to_sif.log_abs_det_jacobian(v, x))

        far_raw, lp_far = amplitude(z["sif_far_red_raw"])
        lp = lp + lp_far
        red_raw = None
        if self.has_red:
            red_raw, lp_red = amplitude(z["sif_red_raw"])
            lp = lp + lp_red
        red, far = self.amplitudes(patch.ndvi, far_raw, red_raw)
        coeffs = self.coefficients(refl)                                  # (P, K)
        # the radiance of every pixel through the expanded operator
        op = self.pixel_operators(patch, zs, expansion)
        c = fm.band_centre_nm
        emitted = [jnp.sum(op.emitted * sif_taylor(c, SifParams(0.0, 1.0)), -2)]
        amps = [far]
        if self.has_red:
            emitted.append(jnp.sum(op.emitted * sif_taylor(c, SifParams(1.0, 0.0)), -2))
            amps.append(red)
        x = jnp.concatenate([coeffs, jnp.stack(amps, -1)], -1)          # (P, K + n_sif)
        if op.path.ndim == 2:  # one operator per pixel (its own pressure, smile)
            design = jnp.concatenate([jnp.einsum("dbk,pdb->pkb", fm.basis_band,
                                                 op.reflected), jnp.stack(emitted, 1)], 1)
            num = jnp.einsum("pk,pkb->pb", x, design)
        else:
            design = jnp.concatenate(
                [jnp.einsum("dbk,db->kb", fm.basis_band, op.reflected), jnp.stack(emitted)])
            num = x @ design
        pred = op.path + num / (1.0 - op.rho_dd * (coeffs @ fm.basis_band[0].T))
        # the likelihood, masked per pixel
        sd = jnp.sqrt(self.noise_variance(pred, patch.noise_a, patch.noise_b))
        ll = jnp.sum(-0.5 * ((patch.radiance - pred) / sd) ** 2 - jnp.log(sd)
                     - half_log_2pi, -1)
        return -(lp + jnp.sum(jnp.where(patch.mask > 0, ll, 0.0)))

    # --- NumPyro programs ---------------------------------------------------------------

    def _surface_sites(self, ndvi, n_pix: int, dim: int = -1):
        """Sample the pixel-level latents (inside the caller's other plates) and record
        the deterministic summaries: ``(coeffs, amp_red, amp_far)``."""
        cfg, fm = self.cfg, self.fm
        with numpyro.plate("pixel", n_pix, dim=dim):
            z = numpyro.sample("reflectance_z", dist.Normal(0.0, 1.0).expand([fm.n_basis])
                               .to_event(1))
            coeffs = numpyro.deterministic("reflectance_coeffs", self.coefficients(z))
            scale = sif_scale(ndvi, cfg) / SHAPE760
            far = numpyro.sample("sif_far_red_raw", SoftplusHalfNormal(1.0))
            amp_far = numpyro.deterministic("sif_far_red", scale * far)
            if self.has_red:
                red = numpyro.sample("sif_red_raw", SoftplusHalfNormal(1.0))
                amp_red = numpyro.deterministic("sif_red", cfg.sif_red_ratio * scale * red)
            else:
                amp_red = jnp.zeros_like(amp_far)
            sif = SifParams(amp_red, amp_far)
            numpyro.deterministic("f760", sif_spectrum(760.0, sif))
            if self.has_red:
                numpyro.deterministic("f687", sif_spectrum(687.0, sif))
            numpyro.deterministic("sif_peak", sif_spectrum(sif.centre_far_red, sif))
            numpyro.deterministic("reflectance760", self.reflectance760(coeffs))
        return coeffs, amp_red, amp_far

    def _likelihood(self, pred, obs, mask, noise_a, noise_b, extra_var=0.0):
        sd = jnp.sqrt(self.noise_variance(pred, noise_a, noise_b, extra_var))
        numpyro.sample("radiance", dist.Normal(pred, sd).to_event(1).mask(mask > 0),
                       obs=obs)

    def _sample_table_sites(self) -> jax.Array:
        """Sample a table model's shared sites (:meth:`shared_sites`: the sensor latents
        ``<name>_z``, the perturbations ``table_<name>_z``), record their values (``<name>``,
        ``table_<name>``) and return the shared vector."""
        z = {name: numpyro.sample(name, dist.Normal(0.0, 1.0).expand(list(shape))
                                  .to_event(len(shape)))
             for name, shape in self.shared_sites()}
        zvec = self.shared_vector(z)
        sensor, pert = self._table_parts(zvec)
        vals = self.shared(jnp.float32(1013.25), {
            **{m: jnp.float32(0.0) for m in self.cfg.free}, **sensor})[2]
        for n in sensor:
            numpyro.deterministic(n, vals[n])
        for n in self.table.prior.free:
            numpyro.deterministic(f"table_{n}", getattr(pert, n))
        return zvec

    def program(self, patch: Patch, expansion: OperatorExpansion | None = None):
        """NumPyro program of one patch (see the module docstring); ``patch.radiance``
        None gives the prior predictive. ``expansion`` (:meth:`operator_expansion`)
        replaces the exact band operator of the built-in atmosphere."""
        n_pix = patch.ndvi.shape[0]
        if self.top_of_canopy:
            self._check_toc(patch)
            mask = patch.mask
            # masked pixels may carry any irradiance: keep their operator finite
            irr = jnp.where((mask > 0)[:, None], jnp.asarray(patch.irradiance, jnp.float32),
                            1.0)
            p = patch.replace(irradiance=irr)
            coeffs, amp_red, amp_far = self._surface_sites(patch.ndvi, n_pix)
            with numpyro.plate("pixel", n_pix):
                pred = self.predict(toc_operator(irr), coeffs, amp_red, amp_far)
                self._likelihood(pred, patch.radiance, mask, patch.noise_a, patch.noise_b,
                                 self.irradiance_variance(p, coeffs))
            return
        if self.table is not None:
            zvec = self._sample_table_sites()
            op = self.operator(patch, zvec) if expansion is None else expansion(zvec)
        else:
            z = {n: numpyro.sample(f"{n}_z", dist.Normal(0.0, 1.0)) for n in self.free}
            vals = self.shared(patch.surface_pressure0, z)[2]
            for n in self.free:
                numpyro.deterministic(n, vals[n])
            zvec = jnp.stack([z[n] for n in self.free]) if self.free else None
            op = self.pixel_operators(patch, zvec, expansion)
        coeffs, amp_red, amp_far = self._surface_sites(patch.ndvi, n_pix)
        with numpyro.plate("pixel", n_pix):
            pred = self.predict(op, coeffs, amp_red, amp_far)
            self._likelihood(pred, patch.radiance, patch.mask, patch.noise_a, patch.noise_b)

    def batch_program(self, patches: Patch, subsample_size: int | None = None,
                      operator: BandOperator | None = None):
        """NumPyro program of many patches at once, for SVI: the priors and likelihood of
        :meth:`program`, one independent atmosphere and sensor state per patch.

        ``patches`` has a leading patch dimension N on every field. ``operator``: a
        :class:`BandOperator` per patch (leading dim N), used instead of computing it; the
        caller conditions the shared latents to the values it was computed for (the
        training simulator does). ``subsample_size``: patches per minibatch (the ``patch``
        plate draws that many at random and scales the log density by N /
        subsample_size, an unbiased minibatch ELBO).
        """
        n_patch, n_pix = patches.ndvi.shape
        with numpyro.plate("patch", n_patch, subsample_size=subsample_size, dim=-2) as idx:
            d = patches.index(idx)
            z = {n: numpyro.sample(f"{n}_z", dist.Normal(0.0, 1.0)) for n in self.free}
            z1 = {n: v[..., 0] for n, v in z.items()}  # (batch,)
            batch = d.ndvi.shape[0]
            vals = self.shared(d.surface_pressure0, z1)[2]
            for n in self.free:
                numpyro.deterministic(n, vals[n][..., None])
            if operator is not None:
                op = jax.tree.map(lambda v: v[idx], operator)
            else:
                zvec = (jnp.stack([z1[n] for n in self.free], -1) if self.free
                        else jnp.zeros((batch, 0), jnp.float32))
                op = jax.vmap(self.pixel_operators)(d, zvec)
            coeffs, amp_red, amp_far = self._surface_sites(d.ndvi, n_pix, dim=-1)
            pred = jax.vmap(self.predict)(op, coeffs, amp_red, amp_far)
            with numpyro.plate("pixel", n_pix, dim=-1):
                self._likelihood(pred, d.radiance, d.mask, d.noise_a[:, None, None],
                                 d.noise_b[:, None, None])

    def _check_toc(self, patch: Patch) -> None:
        """Raise ValueError naming the problem if ``patch`` cannot be a top-of-canopy
        patch (shapes; with concrete arrays also non-finite or non-positive irradiance of
        unmasked pixels)."""
        irr = patch.irradiance
        if irr is None:
            raise ValueError("a top-of-canopy patch needs its measured irradiance "
                             "(mW m-2 nm-1)")
        n_pix = patch.ndvi.shape[0]
        want = (n_pix, self.fm.n_bands)
        if tuple(irr.shape) != want:
            raise ValueError(f"irradiance has shape {tuple(irr.shape)}, expected (pixels, "
                             f"bands) = {want} (mW m-2 nm-1 on the {self.fm.instrument} bands)")
        rad = patch.radiance
        if rad is not None and tuple(rad.shape) != want:
            raise ValueError(f"radiance has shape {tuple(rad.shape)}, expected {want}")
        if not isinstance(irr, jax.core.Tracer):
            e = np.asarray(irr)
            use = np.asarray(patch.mask) > 0
            bad = use & ~np.all(np.isfinite(e) & (e > 0), axis=-1)
            if bad.any():
                raise ValueError(f"irradiance is not finite and positive in {int(bad.sum())}"
                                 " unmasked pixel(s)/time step(s): mask them (mask = 0)")
