"""The image-formation model in pure JAX, one module per stage.

``solar`` (TSIS-1 irradiance, Earth-Sun distance) -> ``hitran`` / ``voigt`` / ``o2`` (O2
line-by-line optical depth tables) -> ``atmosphere`` (transfer functions) -> ``surface``
(reflectance, fluorescence) -> ``sensor`` (spectral response, noise) -> ``forward``
(composition).
"""

from bayesfluo.physics.atmosphere import AtmosphereParams, TransferFunctions
from bayesfluo.physics.forward import (
    BandOperator,
    ForwardModel,
    Geometry,
    band_operator,
    build_forward_model,
    default_atmosphere,
    irradiance_exact,
    radiance,
    radiance_exact,
    radiance_from_operator,
)
from bayesfluo.physics.sensor import SensorParams
from bayesfluo.physics.surface import SifParams

__all__ = ["AtmosphereParams", "TransferFunctions", "BandOperator", "ForwardModel", "Geometry",
           "band_operator", "build_forward_model", "default_atmosphere", "irradiance_exact",
           "radiance", "radiance_exact", "radiance_from_operator", "SensorParams", "SifParams"]
