"""Scenes cut into patches: the unit that shares an atmosphere in the model and the guide.

A scene of ``ny x nx`` pixels is cut into square patches of ``patch_size`` pixels a side
(the last row and column of patches padded with masked pixels, so every patch has the same
static shape and a retrieval compiles once). :func:`patch_inputs` gathers, for a band of
patch rows, what :func:`bayesfluo.model.scene_model` and the guide need, and flags the
pixels whose input is unusable.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr

from bayesfluo.guide import (
    ancillary_inputs,
    expand_reference,
    pixel_features,
    reference_expansion,
)
from bayesfluo.instruments import get_instrument
from bayesfluo.model import ModelConfig
from bayesfluo.physics.forward import ForwardModel, standard_pressure_hpa
from bayesfluo.physics.solar import earth_sun_distance_factor

__all__ = ["PatchGrid", "patch_inputs", "check_scene_for_model", "INPUT_FLAGS",
           "noise_coefficients"]

#: Input problems per pixel (bits of ``input_flag``)
INPUT_FLAGS = {"masked": 1, "not_finite": 2, "negative": 4, "saturated": 8}


@dataclass(frozen=True)
class PatchGrid:
    """Square patches over an image of ``shape`` (ny, nx)."""

    shape: tuple[int, int]
    patch_size: int

    @property
    def n_rows(self) -> int:
        """Rows of patches."""
        return -(-self.shape[0] // self.patch_size)

    @property
    def n_cols(self) -> int:
        """Columns of patches."""
        return -(-self.shape[1] // self.patch_size)

    def to_patches(self, a: np.ndarray, fill=0) -> np.ndarray:
        """(ny', nx, ...) image rows (a whole number of patch rows, the last may be
        short) -> (n_patches, P, ...)."""
        s = self.patch_size
        ny = a.shape[0]
        pr = -(-ny // s)
        pad = [(0, pr * s - ny), (0, self.n_cols * s - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        a = np.pad(a, pad, constant_values=fill)
        a = a.reshape((pr, s, self.n_cols, s) + a.shape[2:])
        a = np.moveaxis(a, 2, 1)
        return a.reshape((pr * self.n_cols, s * s) + a.shape[4:])

    def to_image(self, p: np.ndarray, ny: int) -> np.ndarray:
        """Inverse of :meth:`to_patches` for ``ny`` image rows."""
        s = self.patch_size
        pr = p.shape[0] // self.n_cols
        a = p.reshape((pr, self.n_cols, s, s) + p.shape[2:])
        a = np.moveaxis(a, 1, 2).reshape((pr * s, self.n_cols * s) + p.shape[2:])
        return a[:ny, :self.shape[1]]


def noise_coefficients(scene: xr.Dataset) -> tuple[float, float]:
    """``(a, b)`` of the noise variance ``a L + b``: the scene's attributes ``noise_a``,
    ``noise_b`` where given, else the instrument's defaults."""
    if "noise_a" in scene.attrs and "noise_b" in scene.attrs:
        return float(scene.attrs["noise_a"]), float(scene.attrs["noise_b"])
    return get_instrument(scene.attrs["instrument"]).noise_coefficients()


def check_scene_for_model(scene: xr.Dataset, instrument: str, band_centre_nm) -> None:
    """Raise ValueError naming the problem if the scene cannot be retrieved with a model
    for ``instrument`` (band grid, layout, needed variables)."""
    inst = scene.attrs.get("instrument")
    if inst != instrument:
        raise ValueError(f"the scene is from {inst!r}, the model is for {instrument!r}")
    if "y" not in scene["radiance"].dims or "x" not in scene["radiance"].dims:
        raise ValueError("retrieve needs an image (y, x, band); top-of-canopy time series "
                         "(FloX) need the measured-irradiance model, not available yet")
    wl = np.asarray(scene["wavelength"].values, np.float64)
    want = np.asarray(band_centre_nm, np.float64)
    if wl.size != want.size:
        raise ValueError(f"the scene has {wl.size} bands, the {instrument} model expects "
                         f"{want.size} ({want[0]:.2f}-{want[-1]:.2f} nm)")
    off = float(np.max(np.abs(wl - want)))
    if off > 0.01:
        raise ValueError(f"the scene's wavelength grid differs from the {instrument} model's "
                         f"by up to {off:.3g} nm (more than 0.01 nm)")
    if scene["wavelength"].attrs.get("medium", "air") != "air":
        raise ValueError("the scene's wavelengths are in vacuum; the model's are in air")
    for v in ("ndvi", "sza", "vza", "surface_altitude", "sensor_altitude"):
        if v not in scene:
            raise ValueError(f"the scene has no {v!r} (needed by the model)")


_EXPANSION_VALUES: dict = {}
_EXPANSIONS: dict = {}


@partial(jax.jit, static_argnames=("patch_size", "n_cols", "n_patches", "with_radiance"))
def _prepare(exp, rad, mask_flag, sza, vza, raa, surf, sens, ndvi, noise, limits, mean, sd, *,
             patch_size: int, n_cols: int, n_patches: int, with_radiance: bool):
    """Input flags and guide inputs of image rows in one compiled pass, cut into patches.

    ``rad`` (rows, nx, B) as read; ``mask_flag`` (rows, nx) the ``masked`` bit of each
    pixel; the geometry (degrees, m) and NDVI (rows, nx); ``noise`` = (a, b, reference
    radiance); ``limits`` = (lowest, saturation) radiance. Returns the input flags (the
    bits of :data:`INPUT_FLAGS`) and, in patches (``n_patches``, P, ...; padding pixels
    flagged ``masked``, zero otherwise), the flags, the encoder's features
    (:func:`bayesfluo.guide.pixel_features` with the reference spectrum expanded at each
    pixel's geometry; zero where flagged), NDVI and (``with_radiance``) the radiance
    (zero where flagged).
    """
    # negative and saturated judged on a pixel's finite values (an infinity is not a
    # saturation reading); one min and one max reduction instead of three any/all passes
    finite = jnp.isfinite(rad)
    lo = jnp.min(jnp.where(finite, rad, jnp.inf), -1)
    hi = jnp.max(jnp.where(finite, rad, -jnp.inf), -1)
    flag = (mask_flag
            | jnp.where(jnp.isfinite(jnp.sum(rad, -1)), 0, INPUT_FLAGS["not_finite"])
            | jnp.where(lo < limits[0], INPUT_FLAGS["negative"], 0)
            | jnp.where((hi >= limits[1]) & jnp.isfinite(limits[1]),
                        INPUT_FLAGS["saturated"], 0))
    ok = (flag == 0)[..., None]
    rad = jnp.where(ok, rad, 0.0)
    anc = ancillary_inputs(sza, vza, raa, surf, sens, noise[0], noise[1], ndvi, noise[2])
    feats = pixel_features(rad, anc, mean, sd, expand_reference(exp, sza, vza, surf, sens))
    feats = jnp.where(ok, feats, 0.0)

    def cut(a, fill=0):
        s = patch_size
        ny, nx = a.shape[:2]
        a = jnp.pad(a, [(0, n_patches // n_cols * s - ny), (0, n_cols * s - nx)]
                    + [(0, 0)] * (a.ndim - 2), constant_values=fill)
        a = a.reshape((n_patches // n_cols, s, n_cols, s) + a.shape[2:])
        return jnp.moveaxis(a, 2, 1).reshape((n_patches, s * s) + a.shape[4:])

    out = dict(flag=flag, input_flag=cut(flag, INPUT_FLAGS["masked"]), features=cut(feats),
               ndvi=cut(ndvi))
    if with_radiance:
        out["radiance"] = cut(rad)
    return out


def _expansion_about(fm: ForwardModel, cfg: ModelConfig, centre: tuple):
    """The reference expansion about ``centre``, computed once per model, configuration
    and centre (every chunk of a scene shares its centre)."""
    key = (id(fm), repr(cfg), centre)
    if key not in _EXPANSION_VALUES:
        if len(_EXPANSION_VALUES) > 64:
            _EXPANSION_VALUES.clear()
        _EXPANSION_VALUES[key] = (fm, _reference_expansion_jit(fm, cfg)(
            *(jnp.float32(c) for c in centre)))
    return _EXPANSION_VALUES[key][1]


def _reference_expansion_jit(fm: ForwardModel, cfg: ModelConfig):
    """Jitted :func:`bayesfluo.guide.reference_expansion` about a chunk's mean geometry
    (compiled once per model and configuration)."""
    key = (id(fm), repr(cfg))
    if key not in _EXPANSIONS:
        _EXPANSIONS[key] = (fm, jax.jit(lambda *g: reference_expansion(fm, cfg, *g)))
    return _EXPANSIONS[key][1]


def reference_centre(scene: xr.Dataset) -> tuple[float, float, float, float]:
    """Mean sza, vza (degrees), surface and sensor altitude (m) of a scene: where the
    guide's reference spectrum is expanded (:func:`bayesfluo.guide.reference_expansion`)."""
    rows = slice(None)
    return tuple(float(np.nanmean(_pixel_values(scene, v, rows)))
                 for v in ("sza", "vza", "surface_altitude", "sensor_altitude"))


def _pixel_values(scene: xr.Dataset, name: str, rows: slice, default=None) -> np.ndarray:
    ny, nx = scene.sizes["y"], scene.sizes["x"]
    n = len(range(*rows.indices(ny)))
    if name not in scene:
        return np.full((n, nx), default, np.float64)
    v = scene[name]
    if v.ndim == 0:
        return np.full((n, nx), float(v), np.float64)
    if v.dims == ("y",):
        return np.repeat(np.asarray(v.values[rows], np.float64)[:, None], nx, 1)
    if v.dims == ("x",):
        return np.repeat(np.asarray(v.values, np.float64)[None], n, 0)
    return np.asarray(v.transpose("y", "x").values[rows], np.float64)


def patch_inputs(scene: xr.Dataset, grid: PatchGrid, rows: slice, feature_mean,
                 feature_sd, reference_radiance: float, fm: ForwardModel,
                 cfg: ModelConfig, centre: tuple | None = None) -> dict:
    """Model and guide inputs of the patches in the image rows ``rows`` (whole patch
    rows). The reference spectra of the guide's input are expanded about ``centre``
    (:func:`reference_centre` of the whole scene by default, so that results do not
    depend on how a scene is cut into chunks).

    Returns a dict of numpy arrays with a leading patch dimension: ``radiance`` (N, P, B)
    (unusable pixels zeroed), ``mask`` (N, P), ``ndvi``, ``features`` (N, P, F),
    ``geometry`` (tuple of (N,) arrays: sza, vza, raa, surface and sensor altitude,
    sun-distance factor), ``noise_a``, ``noise_b``, ``surface_pressure0`` (N,), and
    ``input_flag`` (N, P; bits of :data:`INPUT_FLAGS`, padding pixels 1).
    """
    return _patch_inputs(scene, grid, rows, feature_mean, feature_sd, reference_radiance, fm,
                         cfg, centre)


def _patch_inputs(scene: xr.Dataset, grid: PatchGrid, rows: slice, feature_mean, feature_sd,
                  reference_radiance: float, fm: ForwardModel, cfg: ModelConfig,
                  centre: tuple | None = None, *, n_patches: int | None = None,
                  with_radiance: bool = True, device: bool = False) -> dict:
    """:func:`patch_inputs`, padded with masked patches to ``n_patches`` patches (if
    given); with ``device``, ``features``, ``mask``, ``ndvi``, ``radiance`` and
    ``input_flag`` stay JAX arrays (no host copy), and ``radiance`` is left out without
    ``with_radiance``. Padding patches take the last patch's geometry, noise and prior
    pressure."""
    rad = np.asarray(scene["radiance"].transpose("y", "x", "band").values[rows], np.float32)
    ny, nx = rad.shape[:2]
    n_real = -(-ny // grid.patch_size) * grid.n_cols
    n_patches = n_patches or n_real
    mask_flag = (np.where(_pixel_values(scene, "mask", rows) > 0, 0, INPUT_FLAGS["masked"])
                 .astype(np.int32) if "mask" in scene else np.zeros((ny, nx), np.int32))
    a, b = noise_coefficients(scene)
    # dark targets (water) legitimately dip below zero by noise: only radiance more than
    # five read-noise sd below zero is an error
    neg_limit = -5.0 * np.sqrt(b) if b > 0 else 0.0
    sat = scene["radiance"].attrs.get("saturation_radiance")
    sat = np.inf if sat is None else float(sat)
    sza = _pixel_values(scene, "sza", rows)
    vza = _pixel_values(scene, "vza", rows)
    raa = (_pixel_values(scene, "saa", rows, 0.0) - _pixel_values(scene, "vaa", rows, 0.0)) % 360
    surf = _pixel_values(scene, "surface_altitude", rows)
    sens = _pixel_values(scene, "sensor_altitude", rows)
    ndvi = np.nan_to_num(_pixel_values(scene, "ndvi", rows), nan=0.0)
    centre = reference_centre(scene) if centre is None else centre
    exp = _expansion_about(fm, cfg, tuple(float(c) for c in centre))
    f32 = partial(np.asarray, dtype=np.float32)
    prep = _prepare(exp, rad, mask_flag, *map(f32, (sza, vza, raa, surf, sens, ndvi)),
                    f32([a, b, reference_radiance]), f32([neg_limit, sat]),
                    f32(feature_mean), f32(feature_sd), patch_size=grid.patch_size,
                    n_cols=grid.n_cols, n_patches=n_patches, with_radiance=with_radiance)
    flag = np.asarray(prep["flag"])

    P = grid.to_patches  # noqa: N806
    flag_p = P(flag, fill=INPUT_FLAGS["masked"])
    mask_p = (flag_p == 0).astype(np.float32)
    w = np.maximum(mask_p.sum(1), 1.0)

    def patch_mean(v):
        vp = P(v)
        # patches without a usable pixel take the mean of their pixels (outputs are masked)
        any_ok = mask_p.sum(1) > 0
        m_ok = (vp * mask_p).sum(1) / w
        m_all = vp.sum(1) / np.maximum(P(np.ones_like(v)).sum(1), 1.0)
        m = np.where(any_ok, m_ok, m_all)
        return np.pad(m, (0, n_patches - n_real), mode="edge")

    geom = (patch_mean(sza), patch_mean(vza), patch_mean(raa), patch_mean(surf),
            patch_mean(sens), np.full(n_patches, sun_distance(scene)))
    out = dict(mask=(prep["input_flag"] == 0).astype(jnp.float32), ndvi=prep["ndvi"],
               features=prep["features"],
               geometry=tuple(g.astype(np.float32) for g in geom),
               noise_a=np.full(n_patches, a, np.float32),
               noise_b=np.full(n_patches, b, np.float32),
               surface_pressure0=np.asarray(prior_pressure_vec(geom[3]), np.float32),
               input_flag=prep["input_flag"])
    if with_radiance:
        out["radiance"] = prep["radiance"]
    if not device:
        out = {k: v if isinstance(v, tuple) else np.asarray(v) for k, v in out.items()}
    return out


def prior_pressure_vec(surface_altitude_m) -> np.ndarray:
    """Prior mean of the surface pressure of each patch (hPa): the standard atmosphere at
    its mean surface altitude (m)."""
    return np.asarray(standard_pressure_hpa(jnp.asarray(surface_altitude_m, jnp.float32)))


def sun_distance(scene: xr.Dataset) -> float:
    """Earth-Sun distance factor of the scene's ``day_of_year`` (1 when unknown)."""
    doy = scene.attrs.get("day_of_year")
    return float(earth_sun_distance_factor(int(doy))) if doy is not None else 1.0
