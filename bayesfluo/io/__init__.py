"""Reading and writing scenes and results (xarray <-> files)."""

from bayesfluo.io.netcdf import read_scene, validate_scene, write_dataset, write_datatree

__all__ = ["read_scene", "validate_scene", "write_dataset", "write_datatree"]
