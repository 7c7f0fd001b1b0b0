"""Reading and writing scenes and results (xarray <-> files)."""

from bayesfluo.io.desis import read_desis, write_desis_like
from bayesfluo.io.envi import read_envi, write_envi
from bayesfluo.io.flox import read_flox_csv, read_flox_netcdf, write_flox_csv
from bayesfluo.io.netcdf import read_scene, validate_scene, write_dataset, write_datatree
from bayesfluo.io.readers import SceneReadError, open_scene
from bayesfluo.io.writers import georeference, output_format, write_geotiff, write_result

__all__ = ["read_scene", "validate_scene", "write_dataset", "write_datatree"]
__all__ += ["open_scene", "SceneReadError", "read_envi", "write_envi", "read_desis",
            "write_desis_like", "read_flox_csv", "read_flox_netcdf", "write_flox_csv"]
__all__ += ["write_result", "write_geotiff", "georeference", "output_format"]
