"""Scene pixels and the atmosphere they are seen through, for the baseline retrievals.

Every baseline works on the same arrays: the scene's pixels cut into patches by
:mod:`bayesfluo.scene.grid` (the patches of the model and the guide; one patch per time
step for a tower time series), as a batch of :class:`bayesfluo.model.Patch`, and one
:class:`bayesfluo.physics.BandOperator` per patch. The operator is the model's own
(:meth:`bayesfluo.model.SifModel.operator`) at the patch's mean geometry and at the
*prior* atmosphere of :class:`bayesfluo.model.ModelConfig` (surface pressure of the
standard atmosphere at the patch's mean ground altitude, AOT 0.12, Angstrom exponent 1.3,
diffuse-path factor 1.5, no spectral shift, nominal FWHM): what an operational processor
would take from a look-up table and ancillary data. ``patch_size=1`` gives every pixel
its own geometry (slower: one fine-grid operator per pixel).

For a top-of-canopy instrument (FloX) the operator is built from the *measured*
irradiance instead (:func:`bayesfluo.model.toc_operator`): ``L = E/pi * R + F`` per band,
as FloX processing chains (FLD, SpecFit) use it, with the few metres of air between canopy
and sensor neglected. The top-of-canopy FLD and SFM work on the file's own band grid and
need no forward model; the others use :func:`scene_forward_model`, the instrument's
forward model on the scene's own band centres and FWHM.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
import xarray as xr

from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig, Patch, SifModel, toc_operator
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    band_operator,
    build_forward_model,
)
from bayesfluo.scene.bands import GRID_TOLERANCE_NM, scene_bands
from bayesfluo.scene.grid import (
    INPUT_FLAGS,
    PatchGrid,
    assemble_patches,
    flag_pixels,
    noise_coefficients,
    patch_of_pixels,
    pixel_values,
    read_rows,
    sun_distance,
)

__all__ = ["Pixels", "scene_pixels", "scene_forward_model", "baseline_model",
           "prior_operators", "operators_for", "true_operators", "to_result"]


@dataclass
class Pixels:
    """A scene's pixels as patches.

    Attributes
    ----------
    patches : Patch
        The batch of patches (leading dims (n_patch, P)): ``radiance`` (mW m-2 sr-1
        nm-1, float32; unusable pixels hold a finite placeholder), ``mask`` (1 where a
        pixel is usable: scene mask, finite and believable radiance, not padding; for a
        tower also a finite, positive irradiance), ``ndvi``, the patch-mean
        ``geometry`` (degrees, m above sea level, Earth-Sun distance factor; a tower's
        is the series' mean, unused), ``noise_a``, ``noise_b`` (n_patch,): the noise
        variance ``a L + b`` (the instrument's nominal noise for a noise-free
        simulation, so that fits stay weighted), ``surface_pressure0`` (n_patch,) hPa,
        and a tower's measured ``irradiance`` (mW m-2 nm-1).
    wavelength : ndarray (bands,)
        Band centres, nm.
    tower : bool
        Top-of-canopy time series (time, band) rather than an image (y, x, band).
    grid : PatchGrid or None
        The image's patches (None for a time series).
    """

    patches: Patch
    wavelength: np.ndarray
    tower: bool
    grid: PatchGrid | None

    @property
    def radiance(self) -> np.ndarray:
        """Radiance (n_patch, P, bands), mW m-2 sr-1 nm-1."""
        return self.patches.radiance

    @property
    def valid(self) -> np.ndarray:
        """Usable pixels (n_patch, P), bool."""
        return np.asarray(self.patches.mask) > 0

    @property
    def ndvi(self) -> np.ndarray:
        """NDVI (n_patch, P)."""
        return self.patches.ndvi

    @property
    def irradiance(self) -> np.ndarray | None:
        """Measured irradiance (n_patch, P, bands), mW m-2 nm-1; None for an image."""
        return self.patches.irradiance

    @property
    def noise_a(self) -> float:
        """``a`` of the noise variance ``a L + b``, mW m-2 sr-1 nm-1."""
        return float(np.asarray(self.patches.noise_a).ravel()[0])

    @property
    def noise_b(self) -> float:
        """``b`` of the noise variance ``a L + b``, (mW m-2 sr-1 nm-1)^2."""
        return float(np.asarray(self.patches.noise_b).ravel()[0])

    @property
    def n_pixels(self) -> int:
        """Usable pixels."""
        return int(self.valid.sum())

    def replace(self, **patch_fields) -> Pixels:
        """The same pixels with some fields of :attr:`patches` changed."""
        return Pixels(self.patches.replace(**patch_fields), self.wavelength, self.tower,
                      self.grid)

    def to_scene(self, values: np.ndarray, scene: xr.Dataset) -> np.ndarray:
        """(n_patch, P, ...) -> the scene's pixel dims (y, x, ...) or (time, ...)."""
        if self.tower:
            return values[:, 0]
        return self.grid.to_image(values, scene.sizes["y"])


def scene_pixels(scene: xr.Dataset, patch_size: int = 8, fm: ForwardModel | None = None
                 ) -> Pixels:
    """Cut a scene (scene format) into patches (see the module docstring): an image by
    :func:`bayesfluo.scene.grid.read_rows`, :func:`~bayesfluo.scene.grid.flag_pixels`
    and :func:`~bayesfluo.scene.grid.assemble_patches`; a time series by
    :func:`bayesfluo.scene.grid.patch_of_pixels`, one patch per time step.

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
    tower = "time" in scene["radiance"].dims
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
        n = scene.sizes["time"]
        one = patch_of_pixels(scene, np.arange(n), np.zeros(n, int))  # all time steps
        # one patch per time step (P = 1); the series' mean geometry (unused: the
        # measured irradiance is the atmosphere)
        per_step = lambda v: np.asarray(v)[:, None]  # noqa: E731
        patches = Patch(radiance=per_step(one.radiance), mask=per_step(one.mask),
                        ndvi=per_step(one.ndvi),
                        geometry=Geometry(*(np.full(n, v, np.float32) for v in one.geometry)),
                        noise_a=np.full(n, a, np.float32), noise_b=np.full(n, b, np.float32),
                        surface_pressure0=np.full(n, one.surface_pressure0, np.float32),
                        irradiance=per_step(one.irradiance))
        return Pixels(patches, wl, True, None)
    for v in ("sza", "vza", "surface_altitude", "sensor_altitude"):
        if v not in scene:
            raise ValueError(f"the scene has no {v!r} (needed by the baselines)")
    rows = read_rows(scene, slice(None))
    flag, rad = flag_pixels(rows.radiance, rows.mask_flag, np.asarray(rows.limits, np.float32))
    flag = np.asarray(flag)
    grid = PatchGrid(flag.shape, patch_size)
    P = grid.to_patches  # noqa: N806
    patches = assemble_patches(grid, rows, flag, P(flag, fill=INPUT_FLAGS["masked"]),
                               P(rows.ndvi).astype(np.float32), P(np.asarray(rad)),
                               sun_distance(scene))
    n_patch = patches.mask.shape[0]
    patches = patches.replace(mask=np.asarray(patches.mask),
                              noise_a=np.full(n_patch, a, np.float32),
                              noise_b=np.full(n_patch, b, np.float32))
    return Pixels(patches, wl, False, grid)


def scene_forward_model(scene: xr.Dataset) -> ForwardModel:
    """The forward model of the scene's instrument (attribute ``instrument``) on the
    scene's own band grid: the nominal one where the scene's band centres (within 0.005
    nm), FWHM (1 %) and response shape are the instrument's, else one built on the
    scene's centres, FWHM and ``response_exponent``
    (:func:`bayesfluo.scene.bands.scene_bands`; same fine grid and reflectance basis).

    Raises
    ------
    ValueError
        If the scene names no instrument, its bands leave the instrument's window, or
        some of its bands are masked (the baselines use every band of the file).
    """
    inst = scene.attrs.get("instrument")
    if not inst:
        raise ValueError("the scene does not name its instrument (attribute 'instrument')")
    fm = build_forward_model(inst)
    bands = scene_bands(scene, inst)
    wl = np.asarray(scene["wavelength"].values, np.float64)
    nominal = np.asarray(fm.band_centre_nm, np.float64)
    if (wl.size == nominal.size and np.max(np.abs(wl - nominal)) <= GRID_TOLERANCE_NM
            and bands.index.size == wl.size
            and np.max(np.abs(bands.fwhm_nm / np.asarray(fm.band_fwhm_nm) - 1)) <= 0.01
            and bands.response_exponent == fm.response_exponent):
        return fm
    if bands.index.size != wl.size:
        raise ValueError(f"{wl.size - bands.index.size} of the scene's {wl.size} bands are "
                         f"masked or outside the {inst} window; the baselines use every "
                         "band: select the usable ones first (scene.isel(band=...))")
    return build_forward_model(inst, n_basis=fm.n_basis, band_centre_nm=bands.centre_nm,
                               band_fwhm_nm=bands.fwhm_nm,
                               response_exponent=bands.response_exponent)


def baseline_model(fm: ForwardModel, config: ModelConfig | None, px: Pixels) -> SifModel:
    """The model whose operator, priors and noise the baselines use: ``fm`` with
    ``config`` (default :class:`~bayesfluo.model.ModelConfig`), or for a tower the
    measured-irradiance model. The same object for the same inputs (the baselines'
    compiled functions are kept per model)."""
    key = (id(fm), repr(config), px.tower)
    if key not in _MODELS or _MODELS[key].fm is not fm:
        if px.tower:
            _MODELS[key] = SifModel(fm, config.replace(free=()) if config else None,
                                    top_of_canopy=True)
        else:
            _MODELS[key] = SifModel(fm, config)
    return _MODELS[key]


_MODELS: dict = {}


def prior_operators(model: SifModel, px: Pixels, batch_size: int = 16) -> BandOperator:
    """One band operator per patch (leading dimension n_patch) at the patch's geometry and
    the prior atmosphere of the model (all free latents at their prior means,
    :meth:`bayesfluo.model.SifModel.operator`)."""
    geom = Geometry(*(jnp.asarray(v, jnp.float32) for v in px.patches.geometry))
    return _prior_operators(model, geom, jnp.asarray(px.patches.surface_pressure0,
                                                     jnp.float32), batch_size=batch_size)


@partial(jax.jit, static_argnames="batch_size")
def _prior_operators(model: SifModel, geom: Geometry, p0, *, batch_size: int):
    # the model (its forward model's arrays) enters as an argument, not as compile-time
    # constants: XLA would fold the fm-only expressions on the host, which rounds
    # differently in float32's last digit, and the baselines' operators stay what they were
    geo = Patch(radiance=None, mask=None, ndvi=None, geometry=geom, noise_a=None,
                noise_b=None, surface_pressure0=p0)
    return jax.lax.map(model.operator, geo, batch_size=batch_size)


def operators_for(model: SifModel, px: Pixels) -> BandOperator:
    """The band operators the baselines use, one per patch: the measured irradiance's
    (:func:`bayesfluo.model.toc_operator`) for a tower, else the model's at the prior
    atmosphere (:func:`prior_operators`)."""
    if px.tower:
        return toc_operator(px.irradiance[:, 0])
    return prior_operators(model, px)


def to_result(px: Pixels, scene: xr.Dataset, values: dict[str, np.ndarray], method: str,
              attrs: dict | None = None, poor_fit_rate: float = 1e-3,
              n_bands: int | None = None) -> xr.Dataset:
    """A result Dataset (scene format section 4 names) from (n_patch, P) arrays; unusable
    pixels become NaN with ``quality_flag`` bit 1; where ``values`` has ``fit_chi2``,
    bit 2 (``poor_fit``) marks a reduced chi-square above its ``1 - poor_fit_rate``
    quantile for data the model explains (chi-square with one degree of freedom per
    band; ``n_bands`` bands fitted, default all of the scene's)."""
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
        nb = n_bands or px.radiance.shape[-1]
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
        return jnp.asarray(pixel_values(scene, name, slice(None), default).ravel(),
                           jnp.float32)

    raa = jnp.asarray((((pixel_values(scene, "saa", slice(None), 0.0)
                         - pixel_values(scene, "vaa", slice(None), 0.0)) % 360.0).ravel()),
                      jnp.float32)
    geom = Geometry(f("sza"), f("vza"), raa, f("surface_altitude"), f("sensor_altitude"),
                    jnp.full(ny * nx, sun_distance(scene), jnp.float32))
    atm = AtmosphereParams(f("true_surface_pressure"), f("true_aot550"), f("true_angstrom"),
                           f("true_diffuse_path"))
    sens = SensorParams(f("true_spectral_shift"), f("true_fwhm_scale"))
    return jax.lax.map(lambda t: band_operator(fm, *t), (atm, geom, sens), batch_size=16)
