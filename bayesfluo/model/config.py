"""The model's configuration: priors and the choice of free shared latents."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

__all__ = ["ModelConfig", "ATMOSPHERE_LATENTS", "SENSOR_LATENTS"]

#: Patch-level atmospheric latents of the built-in atmosphere
ATMOSPHERE_LATENTS = ("surface_pressure", "aot550", "diffuse_path")
#: Patch-level (or scene-level) sensor latents
SENSOR_LATENTS = ("spectral_shift", "fwhm_scale")


@dataclass(frozen=True)
class ModelConfig:
    """Priors and the choice of free latents (defaults suit HyPlant FLUO).

    Attributes
    ----------
    free : tuple of str
        Atmospheric and sensor latents that are sampled; the others are fixed to ``fixed``.
    fixed : dict
        Values of the fixed latents (``angstrom`` is always fixed).
    reflectance_mean, reflectance_logit_sd, reflectance_length_nm : float
        Prior of the reflectance: logit-normal around the mean, smooth over the length.
    sif_scale, sif_scale_bare : float
        Half-normal scale of F760 (mW m-2 sr-1 nm-1) for vegetation and for bare ground.
    ndvi_vegetated, ndvi_width : float
        NDVI where the scale is half way between, and the width of the transition.
    sif_red_ratio : float
        Scale of the red-peak amplitude relative to the far-red one.
    pressure_sd, aot550_prior, aot550_log_sd, diffuse_path_prior, diffuse_path_log_sd,
    shift_sd, fwhm_sd : float
        Atmospheric and sensor priors (hPa, 1, 1, 1, 1, nm, 1).
    """

    free: tuple[str, ...] = ("surface_pressure", "aot550", "spectral_shift")
    fixed: dict = field(default_factory=lambda: {"aot550": 0.12, "diffuse_path": 1.5,
                                                 "angstrom": 1.3, "spectral_shift": 0.0,
                                                 "fwhm_scale": 1.0})
    reflectance_mean: float = 0.3
    reflectance_logit_sd: float = 1.5
    reflectance_length_nm: float = 20.0
    sif_scale: float = 2.0
    sif_scale_bare: float = 0.05
    ndvi_vegetated: float = 0.35
    ndvi_width: float = 0.05
    sif_red_ratio: float = 0.5
    pressure_sd: float = 5.0
    aot550_prior: float = 0.12
    aot550_log_sd: float = 0.4
    diffuse_path_prior: float = 0.5
    diffuse_path_log_sd: float = 0.3
    shift_sd: float = 0.05
    fwhm_sd: float = 0.03

    def __post_init__(self):
        known = set(ATMOSPHERE_LATENTS) | set(SENSOR_LATENTS)
        bad = [n for n in self.free if n not in known]
        if bad:
            raise ValueError(f"unknown free latent(s) {bad}; choose from {sorted(known)}")

    def __hash__(self) -> int:
        # ``fixed`` is a dict: hash the configuration by its value (it is static data of
        # jitted functions that take a model)
        return hash(repr(self))

    def replace(self, **changes) -> ModelConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """The configuration as plain JSON-able values."""
        d = dataclasses.asdict(self)
        d["free"] = list(self.free)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        """A configuration from a dict (e.g. a TOML table; the inverse of :meth:`to_dict`):
        ``free`` as a list, ``fixed`` merged over the defaults; unknown keys are an error."""
        d = dict(d)
        if "free" in d:
            d["free"] = tuple(d["free"])
        if "fixed" in d:
            d["fixed"] = cls().fixed | dict(d["fixed"])
        return cls(**d)
