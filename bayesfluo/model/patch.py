"""The patch: ``P`` neighbouring pixels (or a tower's time steps) that share an atmosphere
and a sensor state, the unit every inference works on.

A :class:`Patch` is a JAX pytree (a named tuple of arrays): one patch has pixel arrays of
shape (P, ...) and scalar patch values; a batch of patches has one more leading dimension
on every field (``geometry`` then holds (N,) arrays). Scenes become patches in
:mod:`bayesfluo.scene.grid` (images cut into square patches) and in
:func:`bayesfluo.scene.grid.patch_of_pixels` (any set of pixels, e.g. for NUTS).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from bayesfluo.physics.forward import Geometry

__all__ = ["Patch"]


class Patch(NamedTuple):
    """Data of one patch (or of a batch of patches, with a leading patch dimension).

    Attributes
    ----------
    radiance : array (P, B) or None
        At-sensor (or top-of-canopy) radiance, mW m-2 sr-1 nm-1; None for the prior
        predictive. Unusable pixels hold finite placeholder values and ``mask`` 0.
    mask : array (P,)
        1 where a pixel is used, 0 where not (padding, bad input).
    ndvi : array (P,)
        NDVI of each pixel (the SIF prior's vegetation cue).
    geometry : Geometry
        The patch's mean geometry (degrees, m, sun-distance factor).
    noise_a, noise_b : scalar
        Noise variance ``a L + b`` ((mW m-2 sr-1 nm-1)^2).
    surface_pressure0 : scalar
        Prior mean of the surface pressure (hPa): the standard atmosphere at the patch's
        mean surface altitude.
    irradiance : array (P, B) or None
        Measured downwelling irradiance (mW m-2 nm-1) of a top-of-canopy patch.
    irradiance_noise_a, irradiance_noise_b : scalar or None
        Noise variance of ``E / pi`` (default: the radiance's coefficients).
    pixel_offset : array (P, 4) or None
        What each pixel's atmosphere, sensor and view differ from the patch's by, known
        from ancillary data: surface pressure (hPa; the standard atmosphere at the pixel's
        own surface altitude minus the patch's ``surface_pressure0``), the instrument's
        characterised smile at the pixel's detector column (spectral shift, nm, and FWHM
        scale - 1: absolute), and view zenith (degrees, the pixel's minus the patch's).
        0 for masked pixels; None: every pixel has the patch's (towers, prior draws).
    """

    radiance: Any
    mask: Any
    ndvi: Any
    geometry: Geometry
    noise_a: Any
    noise_b: Any
    surface_pressure0: Any
    irradiance: Any = None
    irradiance_noise_a: Any = None
    irradiance_noise_b: Any = None
    pixel_offset: Any = None

    @property
    def n_pixels(self) -> int:
        """Pixels per patch (P)."""
        return int(self.ndvi.shape[-1])

    @property
    def top_of_canopy(self) -> bool:
        """Whether the patch carries a measured irradiance (a tower's measurement)."""
        return self.irradiance is not None

    def replace(self, **changes) -> Patch:
        """A copy with some fields changed."""
        return self._replace(**changes)

    def index(self, i) -> Patch:
        """Patch ``i`` (an index or index array) of a batch of patches."""
        return jax.tree.map(lambda v: v[i], self)

    def to_jax(self) -> Patch:
        """The same patch with every array a JAX array (float32 where floating)."""
        def conv(v):
            a = jnp.asarray(v)
            return a.astype(jnp.float32) if jnp.issubdtype(a.dtype, jnp.floating) else a
        return jax.tree.map(conv, self)
