"""bayesfluo: probabilistic retrieval of sun-induced chlorophyll fluorescence (SIF).

Wavelengths are in nm (air unless a name says vacuum), radiance in mW m-2 sr-1 nm-1,
irradiance in mW m-2 nm-1, angles in degrees.

The names most scripts need are importable from here (loaded on first use, so that
``import bayesfluo`` stays fast): :func:`open_scene`, :func:`simulate_scene`,
:func:`load_guide`, :func:`resolve_model`, :func:`retrieve`, :func:`retrieve_file`,
:class:`RetrieveOptions`, :func:`nuts_reference`, :class:`SifModel`, :class:`ModelConfig`,
:class:`Patch`, :func:`write_dataset`.
"""

from importlib import import_module

from bayesfluo._version import __version__
from bayesfluo.instruments import INSTRUMENTS, Instrument, get_instrument

_LAZY = {
    "open_scene": "bayesfluo.io.readers",
    "write_dataset": "bayesfluo.io.netcdf",
    "simulate_scene": "bayesfluo.scene.simulate",
    "load_guide": "bayesfluo.inference.guide",
    "resolve_model": "bayesfluo.shipped",
    "retrieve": "bayesfluo.retrieval.api",
    "retrieve_file": "bayesfluo.retrieval.api",
    "RetrieveOptions": "bayesfluo.retrieval.api",
    "nuts_reference": "bayesfluo.inference.nuts",
    "SifModel": "bayesfluo.model",
    "ModelConfig": "bayesfluo.model",
    "Patch": "bayesfluo.model",
}

__all__ = ["__version__", "INSTRUMENTS", "Instrument", "get_instrument", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bayesfluo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
