"""bayesfluo: probabilistic retrieval of sun-induced chlorophyll fluorescence (SIF).

Wavelengths are in nm (air unless a name says vacuum), radiance in mW m-2 sr-1 nm-1,
irradiance in mW m-2 nm-1, angles in degrees.
"""

from bayesfluo._version import __version__
from bayesfluo.instruments import INSTRUMENTS, Instrument, get_instrument

__all__ = ["__version__", "INSTRUMENTS", "Instrument", "get_instrument"]
