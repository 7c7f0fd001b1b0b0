"""Scene pixels and the atmosphere they are seen through, for the baseline retrievals.

Every baseline works on the same arrays: the scene's pixels cut into patches
(:class:`bayesfluo.patches.PatchGrid`; one patch per time step for a tower time series),
and one :class:`bayesfluo.physics.BandOperator` per patch. The operator is the model's own
physics (:func:`bayesfluo.physics.band_operator`) at the patch's mean geometry and at the
*prior* atmosphere of :class:`bayesfluo.model.ModelConfig` (surface pressure of the
standard atmosphere at the patch's mean ground altitude, AOT 0.12, Angstrom exponent 1.3,
diffuse-path factor 1.5, no spectral shift, nominal FWHM): what an operational processor
would take from a look-up table and ancillary data. ``patch_size=1`` gives every pixel
its own geometry (slower: one fine-grid operator per pixel).

For a top-of-canopy instrument (FloX) the operator is built from the *measured*
irradiance instead (:func:`measured_operator`): ``L = E/pi * R + F`` per band, as FloX
processing chains (FLD, SpecFit) use it, with the few metres of air between canopy and
sensor neglected.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig, shared_parameters
from bayesfluo.patches import PatchGrid, noise_coefficients, sun_distance
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    band_operator,
    standard_pressure_hpa,
)

__all__ = ["Pixels", "scene_pixels", "prior_operators", "measured_operator", "true_operators",
           "to_result"]


@dataclass
class Pixels:
    """A scene's pixels as patches.

    Attributes
    ----------
    radiance : ndarray (n_patch, P, bands), float32
        Radiance (mW m-2 sr-1 nm-1); unusable pixels replaced by 1.
    valid : ndarray (n_patch, P), bool
        Usable pixels (scene mask, finite radiance, not padding).
    ndvi : ndarray (n_patch, P), float32
    irradiance : ndarray (n_patch, P, bands) or None
        Measured downwelling irradiance (mW m-2 nm-1), top-of-canopy scenes only.
    geometry : Geometry of (n_patch,) float32 arrays
        Patch-mean geometry (degrees, m above sea level, Earth-Sun distance factor).
    surface_pressure0 : ndarray (n_patch,)
        Prior surface pressure of each patch, hPa.
    noise_a, noise_b : float
        Noise variance ``a L + b`` (the instrument's nominal noise for a noise-free
        simulation, so that fits stay weighted).
    wavelength : ndarray (bands,)
        Band centres, nm.
    tower : bool
        Top-of-canopy time series (time, band) rather than an image (y, x, band).
    grid : PatchGrid or None
        The image's patches (None for a time series).
    """

    radiance: np.ndarray
    valid: np.ndarray
    ndvi: np.ndarray
    irradiance: np.ndarray | None
    geometry: Geometry
    surface_pressure0: np.ndarray
    noise_a: float
    noise_b: float
    wavelength: np.ndarray
    tower: bool
    grid: PatchGrid | None

    @property
    def n_pixels(self) -> int:
        """Usable pixels."""
        return int(self.valid.sum())

    def to_scene(self, values: np.ndarray, scene: xr.Dataset) -> np.ndarray:
        """(n_patch, P, ...) -> the scene's pixel dims (y, x, ...) or (time, ...)."""
        if self.tower:
            return values[:, 0]
        return self.grid.to_image(values, scene.sizes["y"])


def _per_pixel(scene: xr.Dataset, name: str, shape: tuple, default: float | None = None
               ) -> np.ndarray:
    """A geometry variable broadcast to the scene's pixel shape, float64."""
    if name not in scene:
        if default is None:
            raise ValueError(f"the scene has no {name!r} (needed by the baselines)")
        return np.full(shape, default)
    v = scene[name]
    if v.ndim == 0:
        return np.full(shape, float(v))
    if len(shape) == 2 and v.dims == ("y",):
        return np.repeat(np.asarray(v.values, np.float64)[:, None], shape[1], 1)
    if len(shape) == 2 and v.dims == ("x",):
        return np.repeat(np.asarray(v.values, np.float64)[None], shape[0], 0)
    order = ("y", "x") if len(shape) == 2 else ("time",)
    return np.asarray(v.transpose(*order).values, np.float64)


def scene_pixels(scene: xr.Dataset, patch_size: int = 8, fm: ForwardModel | None = None
                 ) -> Pixels:
    """Cut a scene (scene format) into patches (see the module docstring).

    Raises
    ------
    ValueError
        If the scene lacks radiance, geometry or (top of canopy) irradiance, or its band
        grid differs from ``fm``'s.
    """
    if "radiance" not in scene:
        raise ValueError("the scene has no 'radiance'")
    if patch_size < 1:
        raise ValueError(f"patch_size must be >= 1, got {patch_size}")
    rad_da = scene["radiance"]
    tower = "time" in rad_da.dims
    wl = np.asarray(scene["wavelength"].values, np.float64)
    if fm is not None:
        want = np.asarray(fm.band_centre_nm, np.float64)
        if want.size != wl.size or np.max(np.abs(want - wl)) > 0.01:
            raise ValueError(f"the scene's {wl.size} bands differ from the {fm.instrument} "
                             f"model's {want.size} bands")
    a, b = noise_coefficients(scene)
    if not a + b > 0:  # a noise-free simulation: weight by the instrument's nominal noise
        a, b = get_instrument(scene.attrs["instrument"]).noise_coefficients()
    if tower:
        rad = np.asarray(rad_da.transpose("time", "band").values, np.float32)
        shape = rad.shape[:1]
        if "irradiance" not in scene:
            raise ValueError("a top-of-canopy scene needs the measured 'irradiance'")
        irr = np.asarray(scene["irradiance"].transpose("time", "band").values, np.float32)
    else:
        rad = np.asarray(rad_da.transpose("y", "x", "band").values, np.float32)
        shape = rad.shape[:2]
        irr = None
    valid = np.all(np.isfinite(rad), -1)
    if irr is not None:
        valid &= np.all(np.isfinite(irr), -1) & np.all(irr > 0, -1)
    if "mask" in scene:
        valid &= _per_pixel(scene, "mask", shape) > 0
    rad = np.where(valid[..., None], rad, 1.0).astype(np.float32)
    ndvi = np.nan_to_num(_per_pixel(scene, "ndvi", shape, 0.0)).astype(np.float32)
    geo = {n: _per_pixel(scene, n, shape, d) for n, d in
           (("sza", None), ("vza", None), ("saa", 0.0), ("vaa", 0.0),
            ("surface_altitude", None), ("sensor_altitude", None))}
    raa = (geo["saa"] - geo["vaa"]) % 360.0
    dist = sun_distance(scene)
    if tower:
        irr = np.where(valid[..., None], irr, 1.0).astype(np.float32)
        geom = Geometry(*(np.asarray(v, np.float32) for v in (
            geo["sza"], geo["vza"], raa, geo["surface_altitude"], geo["sensor_altitude"],
            np.full(shape, dist))))
        return Pixels(rad[:, None], valid[:, None], ndvi[:, None], irr[:, None], geom,
                      np.asarray(standard_pressure_hpa(jnp.asarray(geom.surface_altitude_m))),
                      a, b, wl, True, None)
    grid = PatchGrid(shape, patch_size)
    P = grid.to_patches  # noqa: N806
    valid_p = P(valid, fill=False).astype(bool)
    w = np.maximum(valid_p.sum(1), 1)

    def mean(v):  # patch mean over usable pixels (all pixels where none is usable)
        vp, ones = P(v), P(np.ones(shape))
        ok = valid_p.sum(1) > 0
        return np.where(ok, (vp * valid_p).sum(1) / w, vp.sum(1) / np.maximum(ones.sum(1), 1))

    alt = mean(geo["surface_altitude"])
    geom = Geometry(*(np.asarray(v, np.float32) for v in (
        mean(geo["sza"]), mean(geo["vza"]), mean(raa), alt, mean(geo["sensor_altitude"]),
        np.full(alt.shape, dist))))
    return Pixels(P(rad), valid_p, P(ndvi).astype(np.float32), None, geom,
                  np.asarray(standard_pressure_hpa(jnp.asarray(alt, jnp.float32))), a, b, wl,
                  False, grid)


def prior_operators(fm: ForwardModel, px: Pixels, cfg: ModelConfig | None = None,
                    batch_size: int = 16) -> BandOperator:
    """One band operator per patch (leading dimension n_patch) at the patch's geometry and
    the prior atmosphere of ``cfg`` (all free latents at their prior means)."""
    cfg = cfg or ModelConfig()
    key = (repr(cfg), batch_size)
    if key not in _OPERATOR_FNS:
        def many(fm, geom, p0):
            def one(g, p):
                atm, sens, _ = shared_parameters(cfg, {"surface_pressure0": p},
                                                 {n: jnp.float32(0.0) for n in cfg.free})
                return band_operator(fm, atm, Geometry(*g), sens)

            return jax.lax.map(lambda t: one(*t), (tuple(geom), p0), batch_size=batch_size)

        _OPERATOR_FNS[key] = jax.jit(many)
    geom = tuple(jnp.asarray(v, jnp.float32) for v in px.geometry)
    return _OPERATOR_FNS[key](fm, geom, jnp.asarray(px.surface_pressure0, jnp.float32))


_OPERATOR_FNS: dict = {}


def measured_operator(px: Pixels) -> BandOperator:
    """Band operators (n_patch,) from the measured irradiance of a top-of-canopy scene:
    ``L = E/pi * R + F`` per band (zero path radiance, no multiple scattering term)."""
    if px.irradiance is None:
        raise ValueError("measured_operator needs a top-of-canopy scene with irradiance")
    e = jnp.asarray(px.irradiance[:, 0], jnp.float32) / jnp.pi  # (n, bands)
    z = jnp.zeros_like(e)
    return BandOperator(path=z, reflected=jnp.stack([e, z, z], 1),
                        emitted=jnp.stack([jnp.ones_like(e), z, z], 1), rho_dd=z)


def to_result(px: Pixels, scene: xr.Dataset, values: dict[str, np.ndarray], method: str,
              attrs: dict | None = None, poor_fit_rate: float = 1e-3) -> xr.Dataset:
    """A result Dataset (scene format section 4 names) from (n_patch, P) arrays; unusable
    pixels become NaN with ``quality_flag`` bit 1; where ``values`` has ``fit_chi2``,
    bit 2 (``poor_fit``) marks a reduced chi-square above its ``1 - poor_fit_rate``
    quantile for data the model explains (chi-square with one degree of freedom per
    band)."""
    dims = ("time",) if px.tower else ("y", "x")
    coords = {c: scene.coords[c] for c in dims if c in scene.coords}
    ds = xr.Dataset(coords=coords)
    bad = ~px.valid
    long = {"mean": "estimate", "sd": "standard deviation", "q05": "5 % quantile",
            "q95": "95 % quantile", "noise_sd": "standard deviation from radiance noise only"}
    for name, v in values.items():
        v = np.where(bad, np.nan, np.asarray(v, np.float32))
        q, _, stat = name.partition("_")
        units = "1" if q.startswith("reflectance") or name == "fit_chi2" else \
            "mW m-2 sr-1 nm-1"
        ds[name] = (dims, px.to_scene(v, scene).astype(np.float32))
        ds[name].attrs.update(units=units, long_name=f"{method} {long.get(stat, stat)} of {q}")
    flag = np.where(bad, 1, 0).astype(np.int8)
    if "fit_chi2" in values:
        nb = px.radiance.shape[-1]
        limit = float(scipy.stats.chi2.isf(poor_fit_rate, nb) / nb)
        with np.errstate(invalid="ignore"):
            flag |= np.where(~bad & ~(np.asarray(values["fit_chi2"]) <= limit), 2, 0
                             ).astype(np.int8)
    ds["quality_flag"] = (dims, px.to_scene(flag, scene))
    ds["quality_flag"].attrs.update(long_name="retrieval quality flag", units="1",
                                    flag_masks=np.array([1, 2], np.int8),
                                    flag_meanings="masked_input poor_fit")
    ds.attrs.update(method=method, instrument=scene.attrs.get("instrument", ""),
                    Conventions="CF-1.10", **(attrs or {}))
    return ds


def true_operators(scene: xr.Dataset, fm: ForwardModel) -> BandOperator:
    """Each pixel's band operator at its *true* atmosphere, geometry and sensor smile
    (simulated image scenes only; leading dimension y * x, for ``patch_size=1``): the
    baselines with a perfectly known atmosphere, to separate the errors of their
    assumptions from those of the prior atmosphere."""
    from bayesfluo.physics.atmosphere import AtmosphereParams
    from bayesfluo.physics.sensor import SensorParams

    if "true_surface_pressure" not in scene or "time" in scene["radiance"].dims:
        raise ValueError("true_operators needs a simulated image scene (true_* variables)")
    ny, nx = scene.sizes["y"], scene.sizes["x"]

    def f(name, default=None):
        return jnp.asarray(_per_pixel(scene, name, (ny, nx), default).ravel(), jnp.float32)

    raa = jnp.asarray((((_per_pixel(scene, "saa", (ny, nx), 0.0)
                         - _per_pixel(scene, "vaa", (ny, nx), 0.0)) % 360.0).ravel()),
                      jnp.float32)
    geom = Geometry(f("sza"), f("vza"), raa, f("surface_altitude"), f("sensor_altitude"),
                    jnp.full(ny * nx, sun_distance(scene), jnp.float32))
    atm = AtmosphereParams(f("true_surface_pressure"), f("true_aot550"), f("true_angstrom"),
                           f("true_diffuse_path"))
    sens = SensorParams(f("true_spectral_shift"), f("true_fwhm_scale"))
    return jax.lax.map(lambda t: band_operator(fm, *t), (atm, geom, sens), batch_size=16)
