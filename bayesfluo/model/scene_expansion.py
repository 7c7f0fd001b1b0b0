"""One band operator for a whole scene: a Taylor expansion of the built-in operator in
its physical inputs (atmosphere, sensor, geometry) about the scene's typical patch.

A retrieval's fit check needs each pixel's band operator at the guide's posterior mean.
The exact operator integrates fine-grid spectra (12,515 points for HyPlant O2-A) over
every band's response, about 3 ms a patch on one CPU core, fourteen times the encoder's
cost for the patch, and four times more with each pixel's offsets
(:meth:`~bayesfluo.model.SifModel.pixel_operators`). Within one scene the inputs vary
little (one sun, one flight altitude, a few tens of hPa of terrain, a few hundredths of
a nm of residual shift), so one expansion about the scene's median inputs, computed
once, replaces it: second order in every input that varies, with the diagonal third-
and fourth-order terms (the spectral shift moves the bands across the O2 lines, and the
aerosol's logarithm spans a factor of ten within a scene; both need them).

A patch whose inputs leave the expansion's trust region (the ellipsoid with the
semi-axes :data:`EXPANSION_RADIUS` around the centre, or a constant input that differs)
keeps the exact operator, so the expansion never extrapolates. Inside the region the
radiance it gives differs from the exact operator's by at most a few tenths of a noise
standard deviation in any band (at the worst of 64 points on the region's surface: 0.43
for HyPlant O2-A, 0.44 for DESIS; rms over a default scene's pixels 0.03;
``tests/test_scene_expansion.py`` checks 0.6).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.instruments import get_instrument
from bayesfluo.model.patch import Patch
from bayesfluo.physics.atmosphere import AtmosphereParams
from bayesfluo.physics.forward import BandOperator, Geometry, band_operator
from bayesfluo.physics.sensor import SensorParams

__all__ = ["OPERATOR_INPUTS", "EXPANSION_RADIUS", "TRUST_NORM", "PAIR_STEP",
           "SceneExpansion", "operator_inputs", "operator_of_inputs", "scene_expansion",
           "expanded_operator", "expansion_centre", "expansion_radius",
           "has_scene_expansion"]

#: The operator's physical inputs, in the order of an input vector: surface pressure
#: (hPa), natural log of the aerosol optical thickness at 550 nm, Angstrom exponent,
#: diffuse-path factor, spectral shift (nm), FWHM scale, solar, view and relative azimuth
#: angles (degrees), surface and sensor altitude (m), sun-distance factor.
OPERATOR_INPUTS = ("surface_pressure", "log_aot550", "angstrom", "diffuse_path",
                   "spectral_shift", "fwhm_scale", "sza", "vza", "raa",
                   "surface_altitude", "sensor_altitude", "sun_distance_factor")

#: The semi-axes of the expansion's trust region, an ellipsoid about its centre (in each
#: input's units; the spectral shift in units of the median band FWHM): a patch whose
#: inputs, or one of whose pixels' inputs, lie outside keeps the exact operator. Wide
#: enough that nearly every patch of default simulated HyPlant O2-A and DESIS scenes lies
#: inside (the swath's edges included), narrow enough that the expansion stays within a
#: noise sd of the exact operator (``tests/test_scene_expansion.py``).
EXPANSION_RADIUS = {"surface_pressure": 60.0, "log_aot550": 2.3, "angstrom": 0.3,
                    "diffuse_path": 0.3, "spectral_shift": 0.2, "fwhm_scale": 0.1,
                    "sza": 3.0, "vza": 20.0, "raa": 180.0, "surface_altitude": 600.0,
                    "sensor_altitude": 600.0, "sun_distance_factor": 0.0}

#: The trust region: the inputs' offsets from the centre, each over its semi-axis
#: (:data:`EXPANSION_RADIUS`), within this Euclidean norm
TRUST_NORM = 1.25

#: Where each pair's cross terms are fitted: the four corners at this fraction of both
#: inputs' extent in the trust region (on its surface)
PAIR_STEP = 0.5**0.5

# the altitudes' semi-axes at most these fractions of the sensor's height above ground
_HEIGHT_CAP = {"surface_altitude": 0.4, "sensor_altitude": 0.2}

# the inputs every patch of a built-in-atmosphere model can vary in (the others are the
# model's constants unless free)
_VARYING = ("surface_pressure", "log_aot550", "spectral_shift", "fwhm_scale", "sza", "vza",
            "raa", "surface_altitude", "sensor_altitude")
# pixel offsets (Patch.pixel_offset columns) -> the input they move
_PIXEL_DIMS = ("surface_pressure", "spectral_shift", "fwhm_scale", "vza")


class SceneExpansion(eqx.Module):
    """The band operator about ``centre`` (all :data:`OPERATOR_INPUTS`) as a polynomial
    in the inputs ``dims`` (indices into the input vector): along each input the
    quartic through the exact operator at ``centre`` and at +-1/2 and +-1 trust radius,
    plus a term ``du_k du_l`` for every pair (the mixed difference over half the radii).
    The other inputs are held at the centre (a patch that differs in them keeps the
    exact operator).

    ``value``: the operator at the centre; ``coef`` (leading dim: the monomials):
    the coefficients of the monomials :func:`_features` (``du``, ``du^2``, ``du^3``,
    ``du^4`` of each input, then ``du_k du_l``, ``k < l``), so that evaluating the
    expansion for many patches is one matrix product; ``radius`` (D,): the trust
    region's semi-axes (:data:`EXPANSION_RADIUS`), ``D = len(dims)``."""

    centre: jax.Array
    value: BandOperator
    coef: BandOperator
    radius: jax.Array
    dims: tuple = eqx.field(static=True)

    def at(self, du, along=None) -> tuple[BandOperator, BandOperator | None]:
        """The expanded operator at ``centre + du`` (``du`` (D,) in ``dims``) and its
        derivatives there along the inputs ``along`` (indices into ``dims``; leading dim
        ``len(along)``; None: no derivatives)."""
        def apply(w):
            return jax.tree.map(lambda c: jnp.tensordot(w, c, 1), self.coef)

        op = jax.tree.map(jnp.add, self.value, apply(_features(du)))
        if along is None:
            return op, None
        return op, apply(jax.jacfwd(_features)(du)[:, jnp.asarray(along)].T)


def _pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    k, m = np.triu_indices(n, 1)
    return k, m


def _features(du) -> jax.Array:
    """The monomials of an expansion (:class:`SceneExpansion`) at ``du`` (D,)."""
    k, m = _pairs(du.shape[-1])
    x, y = du[k], du[m]
    return jnp.concatenate([du, du * du, du**3, du**4, x * y, x * x * y, x * y * y,
                            x * x * y * y])


def operator_inputs(model, patch: Patch, zvec, delta=None) -> jax.Array:
    """The physical inputs (:data:`OPERATOR_INPUTS`, (..., 12)) of a patch's built-in
    operator at shared coordinates ``zvec`` (S,), moved by ``delta`` (4,) or (P, 4)
    (:meth:`~bayesfluo.model.SifModel.pixel_delta`'s columns; default none), exactly as
    :meth:`~bayesfluo.model.SifModel.operator` builds them."""
    atm, sens, _ = model.shared(patch.surface_pressure0,
                                dict(zip(model.free, zvec, strict=True)))
    g = patch.geometry
    d = jnp.zeros(4, jnp.float32) if delta is None else jnp.asarray(delta, jnp.float32)
    cols = [atm.surface_pressure_hpa + d[..., 0], jnp.log(atm.aot550), atm.angstrom,
            atm.diffuse_path, sens.shift_nm + d[..., 1], sens.fwhm_scale + d[..., 2],
            g.sza_deg, g.vza_deg + d[..., 3], g.raa_deg, g.surface_altitude_m,
            g.sensor_altitude_m, g.sun_distance_factor]
    shape = jnp.broadcast_shapes(*(jnp.shape(c) for c in cols))
    return jnp.stack([jnp.broadcast_to(jnp.asarray(c, jnp.float32), shape) for c in cols], -1)


def operator_of_inputs(model, u) -> BandOperator:
    """The built-in band operator at the physical inputs ``u`` (12,)
    (:data:`OPERATOR_INPUTS`)."""
    atm = AtmosphereParams(u[0], jnp.exp(u[1]), u[2], u[3])
    geom = Geometry(u[6], u[7], u[8], u[9], u[10], u[11])
    return band_operator(model.fm, atm, geom, SensorParams(u[4], u[5]))


def has_scene_expansion(model) -> bool:
    """Whether ``model``'s operator can be expanded over a scene (a built-in atmosphere;
    a top-of-canopy operator is the measured irradiance, a table's has no inputs here)."""
    return not model.top_of_canopy and model.table is None


def _expansion_dims(model) -> tuple:
    names = _VARYING + tuple(n for n in ("angstrom", "diffuse_path") if n in model.free)
    return tuple(OPERATOR_INPUTS.index(n) for n in OPERATOR_INPUTS if n in names)


def expansion_radius(model, dims, centre=None):
    """The trust region's semi-axis (:data:`EXPANSION_RADIUS`) of each input ``dims`` of
    ``model`` (D,): the spectral shift's in units of the median band FWHM; the view
    zenith's at most 4 degrees beyond half the instrument's field of view; the surface
    and sensor altitudes' at most 0.4 and 0.2 of the sensor's height above the surface
    at ``centre`` (12,), so that no point of the expansion puts the sensor below the
    ground (numpy where ``centre`` is, or None)."""
    fwhm = float(np.median(np.asarray(model.fm.band_fwhm_nm)))
    fov = float(get_instrument(model.fm.instrument).fov_deg)
    r = []
    for k in dims:
        name = OPERATOR_INPUTS[k]
        v = EXPANSION_RADIUS[name]
        r.append(v * fwhm if name == "spectral_shift" else
                 min(v, 0.5 * fov + 4.0) if name == "vza" else v)
    if centre is None:
        return np.asarray(r)
    height = (centre[OPERATOR_INPUTS.index("sensor_altitude")]
              - centre[OPERATOR_INPUTS.index("surface_altitude")])
    cap = np.asarray([_HEIGHT_CAP.get(OPERATOR_INPUTS[k], np.inf) for k in dims])
    if isinstance(centre, np.ndarray):
        return np.minimum(r, np.maximum(cap * float(height), 1.0))
    return jnp.minimum(jnp.asarray(r, jnp.float32),
                       jnp.maximum(jnp.asarray(cap, jnp.float32) * height, 1.0))


def scene_expansion(model, centre) -> SceneExpansion:
    """The :class:`SceneExpansion` of ``model``'s built-in operator about ``centre``
    (12,) (:func:`expansion_centre`), from ``1 + 4 D + 2 D (D - 1)`` exact operators
    (181 for the nine inputs of HyPlant O2-A: half a second on one CPU core)."""
    centre = jnp.asarray(centre, jnp.float32)
    dims = _expansion_dims(model)
    n = len(dims)
    idx = jnp.asarray(dims)
    radius = expansion_radius(model, dims, centre)
    h = 0.5 * TRUST_NORM * radius        # the axis nodes span the whole trust region
    eye = jnp.eye(n, dtype=jnp.float32)
    axis = jnp.asarray([-2.0, -1.0, 1.0, 2.0], jnp.float32)
    steps = [jnp.zeros((1, n), jnp.float32),
             (axis[None, :, None] * (h[:, None] * eye)[:, None, :]).reshape(-1, n)]
    pairs = list(zip(*_pairs(n), strict=True))
    signs = jnp.asarray([[1, 1], [1, -1], [-1, 1], [-1, -1]], jnp.float32)
    pk = PAIR_STEP * TRUST_NORM * radius
    if pairs:
        kk, mm = (jnp.asarray(x) for x in zip(*pairs, strict=True))
        st = (signs[None, :, 0, None] * (pk[kk, None] * eye[kk])[:, None, :]
              + signs[None, :, 1, None] * (pk[mm, None] * eye[mm])[:, None, :])
        steps.append(st.reshape(-1, n))
    du = jnp.concatenate(steps)
    ops = jax.lax.map(lambda d: operator_of_inputs(model, centre.at[idx].add(d)), du,
                      batch_size=16)
    value = jax.tree.map(lambda a: a[0], ops)

    def coefficients(a):
        # along each input the quartic through f(-2h), f(-h), f(0), f(h), f(2h)
        f = a[1:1 + 4 * n].reshape((n, 4) + a.shape[1:])
        fm2, fm1, fp1, fp2 = (f[:, i] for i in range(4))
        f0 = a[0]
        hh = h.reshape((n,) + (1,) * (a.ndim - 1))
        c1 = (fm2 - 8 * fm1 + 8 * fp1 - fp2) / 12.0 / hh
        c2 = (-fm2 + 16 * fm1 - 30 * f0 + 16 * fp1 - fp2) / 24.0 / hh**2
        c3 = (-fm2 + 2 * fm1 - 2 * fp1 + fp2) / 12.0 / hh**3
        c4 = (fm2 - 4 * fm1 + 6 * f0 - 4 * fp1 + fp2) / 24.0 / hh**4
        out = [c1, c2, c3, c4]
        if pairs:
            # each pair's four corners at +-PAIR_STEP radii, less the two axes'
            # quartics: the bi-quadratic cross terms x y, x^2 y, x y^2, x^2 y^2 through them
            g = a[1 + 4 * n:].reshape((len(pairs), 4) + a.shape[1:])
            bshape = (-1,) + (1,) * (a.ndim - 1)

            def axis_poly(k, x):
                x = x.reshape(bshape)
                return c1[k] * x + c2[k] * x**2 + c3[k] * x**3 + c4[k] * x**4

            x, y = pk[kk], pk[mm]
            res = [g[:, i] - f0 - axis_poly(kk, sk * x) - axis_poly(mm, sl * y)
                   for i, (sk, sl) in enumerate(((1, 1), (1, -1), (-1, 1), (-1, -1)))]
            x, y = x.reshape(bshape), y.reshape(bshape)
            out += [(res[0] - res[1] - res[2] + res[3]) / 4.0 / (x * y),
                    (res[0] - res[1] + res[2] - res[3]) / 4.0 / (x * x * y),
                    (res[0] + res[1] - res[2] - res[3]) / 4.0 / (x * y * y),
                    (res[0] + res[1] + res[2] + res[3]) / 4.0 / (x * x * y * y)]
        return jnp.concatenate(out)

    return SceneExpansion(centre, value, jax.tree.map(coefficients, ops), radius, dims)


def expansion_centre(model, inputs) -> jax.Array:
    """The centre (12,) of a scene's expansion from the inputs (N, 12) of a sample of its
    patches (:func:`operator_inputs`; rows with a non-finite value ignored): the
    coordinate-wise median, rounded to an eighth of each input's trust radius
    (:func:`expansion_radius`), so that one odd patch in the sample does not move it
    (and with it every pixel's fit check) unless the median sits at a rounding edge."""
    u = np.asarray(inputs, np.float64)
    u = u[np.all(np.isfinite(u), -1)]
    if not len(u):
        raise ValueError("no patch with finite operator inputs to centre the expansion on")
    c = np.median(u, 0)
    dims = _expansion_dims(model)
    step = expansion_radius(model, dims, c) / 8.0
    c[list(dims)] = np.round(c[list(dims)] / step) * step
    return jnp.asarray(c, jnp.float32)


def expanded_operator(model, patch: Patch, zvec, expansion: SceneExpansion
                      ) -> tuple[BandOperator, BandOperator | None, jax.Array]:
    """A patch's band operator from the scene's expansion, in the form of
    :meth:`~bayesfluo.model.SifModel.offset_jacobian`: the expansion at the patch's inputs
    (its mean pixel offsets) and its derivatives along the four pixel offsets there
    (None for a patch without offsets); and whether the patch and each of its pixels lie
    inside the expansion's trust region (where not, the caller uses the exact
    operator)."""
    delta = model.pixel_delta(patch)
    dbar = None if delta is None else model.patch_delta(patch)
    u_p = operator_inputs(model, patch, zvec, dbar)
    idx = jnp.asarray(expansion.dims)
    du = (u_p - expansion.centre)[idx]
    norm = jnp.sqrt(jnp.sum((du / expansion.radius) ** 2))
    inside = norm <= TRUST_NORM
    fixed = jnp.asarray([k for k in range(len(OPERATOR_INPUTS)) if k not in expansion.dims])
    inside &= jnp.all(u_p[fixed] == expansion.centre[fixed])
    du = du * jnp.minimum(1.0, TRUST_NORM / jnp.maximum(norm, 1e-30))  # outside: its edge
    if delta is None:
        return expansion.at(du)[0], None, inside
    u_pix = operator_inputs(model, patch, zvec, delta)               # (P, 12)
    inside &= jnp.all(jnp.sum(((u_pix - expansion.centre)[:, idx] / expansion.radius) ** 2,
                              -1) <= TRUST_NORM**2)
    op, jac = expansion.at(du, [expansion.dims.index(OPERATOR_INPUTS.index(n))
                                for n in _PIXEL_DIMS])
    return op, jac, inside
