"""DESIS Level-1 products (GeoTIFF radiance cube + metadata XML): read lazily, write alike.

A DESIS Level-1B/1C product (DLR, DESIS Product Specification PAV-DLR-ICD-003) holds
``<base>-SPECTRAL_IMAGE.tif``, a multi-band GeoTIFF of digital numbers (one band per
spectral band, 235 bands of about 2.55 nm from 400 to 1000 nm without binning), and
``<base>-METADATA.xml``. From the XML (elements found by name at any depth, namespaces
ignored) this reader takes, per ``band`` element: ``bandNumber``,
``wavelengthCenterOfBand`` (nm), ``wavelengthWidthOfBand`` (FWHM, nm), ``gainOfBand`` and
``offsetOfBand``; and for the scene: ``sunZenithAngle``, ``sunAzimuthAngle``,
``sceneIncidenceAngle`` (view zenith), ``sceneAzimuthAngle`` (view azimuth),
``startTime``, ``backgroundValue`` (fill DN, masked).

Radiance = DN * gain + offset, in mW cm-2 sr-1 um-1 for DESIS L1B/L1C (DLR's product
description), i.e. 10 mW m-2 sr-1 nm-1 per unit; the reader converts to
mW m-2 sr-1 nm-1 (pass ``radiance_units`` for products in other units). The bands inside
the ``desis`` instrument window (655-795 nm) are kept; ``ndvi`` is computed first from the
apparent reflectance of the bands nearest 670 and 800 nm.

DESIS products carry no terrain height: pass ``geometry={"surface_altitude": ...}`` (m).
The sensor altitude defaults to the ISS's (400 km above the surface, recorded in the
attribute ``sensor_altitude_assumed``). A bayesfluo file ``<base>-BAYESFLUO_ANCILLARY.tif``
beside the product (bands described ``sza``, ``saa``, ``vza``, ``vaa``,
``surface_altitude``, ``sensor_altitude``, ``ndvi``, ``mask``, ``column``), as written by
:func:`write_desis_like`, supplies per-pixel values that override the XML's scene-wide
angles. Band centres below 10 are taken as micrometres (with a warning); widths must lie
in (0, 50] nm. A truncated image is found when it is opened (its last pixel is read), or,
if it changes later, when its data are loaded: both raise
:class:`~bayesfluo.io.common.SceneReadError` naming the image.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from bayesfluo.instruments import get_instrument
from bayesfluo.io.atomic import atomic_path
from bayesfluo.io.common import (
    GEOMETRY_VARIABLES,
    SceneReadError,
    apparent_ndvi,
    check_band_grid,
    check_day_of_year,
    check_geometry_keys,
    check_instrument,
    finish,
    geometry_array,
    radiance_unit_factor,
    require_geometry,
    select_window,
)

__all__ = ["read_desis", "write_desis_like", "find_desis_files", "DESIS_RADIANCE_UNITS"]

#: Units of DN * gain + offset in DESIS Level-1 products
DESIS_RADIANCE_UNITS = "mW cm-2 sr-1 um-1"

_ANCILLARY = tuple(GEOMETRY_VARIABLES) + ("ndvi", "mask", "column")
_XML_ANGLES = {"sunZenithAngle": "sza", "sunAzimuthAngle": "saa",
               "sceneIncidenceAngle": "vza", "sceneAzimuthAngle": "vaa"}
_HOW = "to read_desis/open_scene"


def find_desis_files(path: str | os.PathLike) -> tuple[Path, Path, Path | None]:
    """(spectral image, metadata XML, bayesfluo ancillary or None) of a DESIS product given
    its directory, its image or its XML.

    Raises
    ------
    SceneReadError
        If the image or the XML cannot be found.
    """
    path = Path(path)
    try:
        return _find_desis_files(path)
    except OSError as err:  # a folder that cannot be listed, a link loop, ...
        raise SceneReadError(f"{path}: cannot read the DESIS product ({err.strerror or err})"
                             ) from None


def _find_desis_files(path: Path) -> tuple[Path, Path, Path | None]:
    if path.is_dir():
        tifs = sorted(p for p in path.iterdir() if p.suffix.lower() in (".tif", ".tiff")
                      and "ANCILLARY" not in p.name.upper() and p.is_file())
        spectral = [p for p in tifs if "SPECTRAL_IMAGE" in p.name.upper()]
        tifs = spectral or tifs
        if len(tifs) != 1:
            raise SceneReadError(f"{path}: expected one DESIS *SPECTRAL_IMAGE*.tif in the "
                                 f"product directory, found {len(tifs)}")
        tif = tifs[0]
    elif path.suffix.lower() == ".xml":
        tif = None
        for suf in (".tif", ".TIF", ".tiff"):
            cand = path.with_name(path.name.replace("METADATA", "SPECTRAL_IMAGE")
                                  ).with_suffix(suf)
            if cand.is_file():
                tif = cand
        if tif is None:
            raise SceneReadError(f"{path}: no *SPECTRAL_IMAGE*.tif beside the metadata")
    else:
        tif = path
    xml = tif.with_name(tif.name.replace("SPECTRAL_IMAGE", "METADATA")).with_suffix(".xml")
    if not tif.is_file():
        raise SceneReadError(f"{tif}: the DESIS spectral image is not a readable file")
    if not xml.is_file():
        xmls = [p for p in sorted(tif.parent.glob("*METADATA*.xml")) if p.is_file()] or \
            [p for p in sorted(tif.parent.glob("*.xml")) if p.is_file()]
        if len(xmls) != 1:
            raise SceneReadError(f"{tif}: no DESIS metadata XML ({xml.name}) beside the image"
                                 + (" (a folder or a broken link has that name)"
                                    if os.path.lexists(xml) else ""))
        xml = xmls[0]
    anc = tif.with_name(tif.name.replace("SPECTRAL_IMAGE", "BAYESFLUO_ANCILLARY"))
    return tif, xml, (anc if anc.is_file() and anc != tif else None)


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def read_desis_metadata(xml: str | os.PathLike) -> dict:
    """Scene values and per-band arrays (sorted by ``bandNumber``) of a DESIS XML.

    Raises
    ------
    SceneReadError
        If the XML is malformed or lacks the band characterisation.
    """
    xml = Path(xml)
    try:
        root = ET.parse(xml).getroot()
    except (ET.ParseError, UnicodeDecodeError, LookupError, ValueError, OSError) as err:
        # LookupError: an unknown encoding in the XML declaration
        raise SceneReadError(f"{xml}: not a readable XML file ({err})") from None
    meta: dict = {}
    bands = []
    for el in root.iter():
        tag = _local(el.tag)
        if tag == "band" and len(el):
            bands.append({_local(c.tag): (c.text or "").strip() for c in el})
        elif len(el) == 0 and tag not in meta:
            meta[tag] = (el.text or "").strip()
    need = ("bandNumber", "wavelengthCenterOfBand", "wavelengthWidthOfBand", "gainOfBand",
            "offsetOfBand")
    bands = [b for b in bands if "wavelengthCenterOfBand" in b]
    if not bands:
        raise SceneReadError(f"{xml}: no <band> elements with wavelengthCenterOfBand: not "
                             "a DESIS metadata file?")
    arrays = {}
    for key in need:
        missing = [i + 1 for i, b in enumerate(bands) if not b.get(key)]
        if missing:
            raise SceneReadError(f"{xml}: {len(missing)} band(s) lack <{key}> (first: band "
                                 f"element {missing[0]})")
        try:
            arrays[key] = np.array([float(b[key]) for b in bands], np.float64)
        except ValueError:
            raise SceneReadError(f"{xml}: <{key}> holds a value that is not a number"
                                 ) from None
    order = np.argsort(arrays["bandNumber"], kind="stable")
    meta["bands"] = {k: v[order] for k, v in arrays.items()}
    return meta


def _xml_float(meta: dict, key: str, where: str) -> float | None:
    if not meta.get(key):
        return None
    try:
        return float(meta[key])
    except ValueError:
        raise SceneReadError(f"{where}: <{key}> = {meta[key]!r} is not a number") from None


def read_desis(path: str | os.PathLike, *, geometry: dict | None = None,
               instrument: str | None = None, chunks="auto",
               radiance_units: str | None = None) -> xr.Dataset:
    """Read a DESIS Level-1 product as a scene (lazy, dask-backed).

    Parameters
    ----------
    path : str or path-like
        The product directory, its ``*SPECTRAL_IMAGE.tif`` or its ``*METADATA.xml``.
    geometry : dict, optional
        Overrides and fills in ``sza``, ``saa``, ``vza``, ``vaa`` (degrees),
        ``surface_altitude``, ``sensor_altitude`` (m above sea level; scalars or per pixel),
        ``ndvi``, ``day_of_year``.
    instrument : str, optional
        Default ``"desis"``.
    chunks : "auto", int or None
        Image rows per dask chunk ("auto": about 64 MiB); None reads into memory.
    radiance_units : str, optional
        Units of DN * gain + offset; default mW cm-2 sr-1 um-1 (DESIS L1).

    Raises
    ------
    SceneReadError
        Naming the file and the problem.
    """
    tif, xml, anc_path = find_desis_files(path)
    where = str(tif)
    geometry = check_geometry_keys(geometry, where)
    instrument = check_instrument(instrument or "desis", where, _HOW)
    meta = read_desis_metadata(xml)
    b = meta["bands"]
    wl, fwhm = b["wavelengthCenterOfBand"], b["wavelengthWidthOfBand"]
    attrs: dict = {}
    if np.all(np.isfinite(wl)) and np.max(wl) < 10.0:  # a grid in micrometres
        wl, fwhm = wl * 1e3, fwhm * 1e3
        attrs["wavelength_units_guessed"] = "micrometres in the XML (from the values)"
        warnings.warn(f"{xml}: band centres below 10: taken as micrometres and converted "
                      "to nm", stacklevel=2)
    check_band_grid(wl, fwhm, str(xml), "band centres (wavelengthCenterOfBand)")
    info = _tiff_info(tif)
    nb, ny, nx = info["shape"]
    if nb != wl.size:
        raise SceneReadError(f"{tif}: the image has {nb} bands, the metadata {xml.name} "
                             f"describes {wl.size}")
    src = _TiffBands(str(tif), info["shape"], info["dtype"])
    if chunks is None:
        raw = da.from_array(src[:, :, :], chunks=info["shape"])
    else:
        rows = chunks if isinstance(chunks, int) else max(
            1, min(ny, (64 * 2**20) // max(1, nx * nb * info["dtype"].itemsize)))
        raw = da.from_array(src, chunks=(nb, rows, nx), meta=np.array((), info["dtype"]),
                            name="desis-" + tokenize(str(tif.resolve()),
                                                     tif.stat().st_mtime_ns,
                                                     tif.stat().st_size, info["shape"]))
    raw = raw.transpose(1, 2, 0)  # (y, x, band)

    units = radiance_units or DESIS_RADIANCE_UNITS
    try:
        ufac = radiance_unit_factor(units)
    except ValueError as err:
        raise SceneReadError(f"{where}: {err}") from None
    attrs["radiance_units_converted"] = f"{units} in the product, times {ufac:g}"
    gain, offset = b["gainOfBand"] * ufac, b["offsetOfBand"] * ufac
    if not (np.all(np.isfinite(gain)) and np.all(np.isfinite(offset))):
        raise SceneReadError(f"{xml}: gainOfBand/offsetOfBand are not finite")
    rad = raw.astype(np.float32) * gain.astype(np.float32) + offset.astype(np.float32)
    bad = ~da.isfinite(rad)
    fill = _xml_float(meta, "backgroundValue", str(xml))
    if fill is not None:
        bad = bad | (raw == fill)
    saturated = da.zeros(raw.shape[:2], dtype=bool, chunks=raw.chunksize[:2])
    if raw.dtype.kind in "iu" and np.iinfo(raw.dtype).max != fill:
        saturated = (raw >= np.iinfo(raw.dtype).max).any(axis=-1)
    rad = da.where(bad, np.float32(np.nan), rad)

    # --- geometry ----------------------------------------------------------------------
    anc = _read_ancillary(anc_path, ny, nx) if anc_path else {}
    values: dict = {name: _xml_float(meta, key, str(xml)) for key, name in _XML_ANGLES.items()}
    values.update({k: v for k, v in anc.items() if k in GEOMETRY_VARIABLES})
    values.update({k: v for k, v in geometry.items() if k in GEOMETRY_VARIABLES})
    if values.get("sensor_altitude") is None and values.get("surface_altitude") is not None:
        height = get_instrument(instrument).altitude_m
        values["sensor_altitude"] = float(np.mean(values["surface_altitude"])) + height
        attrs["sensor_altitude_assumed"] = f"{height:g} m above the mean surface altitude"
    geo = require_geometry(values, ny, nx, where, _HOW)
    doy, t0 = geometry.get("day_of_year"), None
    if doy is not None:
        doy = check_day_of_year(doy, where)
    if meta.get("startTime"):
        try:
            when = _dt.datetime.fromisoformat(meta["startTime"].replace("Z", "+00:00"))
        except ValueError:
            raise SceneReadError(f"{xml}: startTime {meta['startTime']!r} is not ISO 8601"
                                 ) from None
        t0 = when.isoformat()
        doy = doy if doy is not None else when.timetuple().tm_yday

    ndvi_attrs = {"units": "1", "standard_name": "normalized_difference_vegetation_index"}
    ndvi = geometry.get("ndvi", anc.get("ndvi"))
    derived: tuple[str, ...] = ()
    if ndvi is not None:
        ndvi = geometry_array("ndvi", ndvi, ny, nx, where).values
        ndvi_attrs["long_name"] = "NDVI (given)"
    else:
        derived = ("ndvi",)  # out-of-range values masked, not refused
        sza = geo["sza"].set_dims(("y", "x"), (ny, nx)).values
        ndvi, used = apparent_ndvi(rad, wl, fwhm, sza, doy)
        if ndvi is None:
            warnings.warn(f"{where}: no bands for NDVI; pass geometry={{'ndvi': ...}}",
                          stacklevel=2)
        else:
            ndvi_attrs["long_name"] = (f"NDVI of apparent reflectance at {used[0]:.2f} and "
                                       f"{used[1]:.2f} nm")
    keep = select_window(wl, instrument, where)
    mask = ~(bad[..., keep].any(axis=-1) | saturated)
    if "mask" in anc:
        mask = mask & (anc["mask"] > 0)
    column = anc.get("column", np.arange(nx))
    coords = {
        "wavelength": ("band", wl[keep], {"units": "nm", "medium": "air",
                                          "long_name": "band centre wavelength",
                                          "standard_name": "radiation_wavelength"}),
        "fwhm": ("band", fwhm[keep], {"units": "nm",
                                      "long_name": "full width at half maximum"}),
        "column": ("x", np.asarray(column).astype(np.int32),
                   {"units": "1", "long_name": "across-track detector column"}),
    }
    crs = info["crs"]
    if crs is not None:
        t = info["transform"]
        coords["x"] = ("x", t.c + (np.arange(nx) + 0.5) * t.a, {})
        coords["y"] = ("y", t.f + (np.arange(ny) + 0.5) * t.e, {})
    variables = {
        "radiance": (("y", "x", "band"), rad[..., keep],
                     {"units": "mW m-2 sr-1 nm-1", "long_name": "at-sensor spectral radiance"}),
        "mask": (("y", "x"), mask.astype(np.int8),
                 {"units": "1", "long_name": "usable pixel (1) or excluded (0)",
                  "flag_values": np.array([0, 1], np.int8), "flag_meanings": "excluded usable"}),
        "saturated": (("y", "x"), saturated.astype(np.int8),
                      {"units": "1", "long_name": "a band at the largest DN"}),
        **geo,
    }
    if ndvi is not None:
        variables["ndvi"] = (("y", "x"), ndvi.astype(np.float32), ndvi_attrs)
    gattrs = {"Conventions": "CF-1.10", "instrument": instrument,
              "source": f"DESIS product {tif.name}",
              "product_type": meta.get("productType", ""), **attrs}
    if doy is not None:
        gattrs["day_of_year"] = int(doy)
    if t0 is not None:
        gattrs["time_coverage_start"] = t0
    ds = xr.Dataset(variables, coords=coords, attrs=gattrs)
    if chunks is None:
        ds = ds.compute()
    if crs is not None:
        import rioxarray  # noqa: F401 - registers the .rio accessor

        ds = ds.rio.write_crs(crs).rio.write_coordinate_system()
        ds["radiance"].attrs["grid_mapping"] = "spatial_ref"
    return finish(ds, where, derived)


@contextlib.contextmanager
def _quiet():
    """Silence rasterio's NotGeoreferencedWarning (DESIS L1B images have no geocoding)."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _tiff_info(path: Path) -> dict:
    """Shape (bands, rows, columns), dtype, CRS and transform of a GeoTIFF."""
    import rasterio

    try:
        with _quiet(), rasterio.open(path) as src:
            dtypes = set(src.dtypes)
            if len(dtypes) != 1:
                raise SceneReadError(f"{path}: bands of different data types {dtypes}")
            info = {"shape": (src.count, src.height, src.width),
                    "dtype": np.dtype(dtypes.pop()), "crs": src.crs,
                    "transform": src.transform}
            _check_complete(src, path, info)
            return info
    except SceneReadError:
        raise
    except Exception as err:  # noqa: BLE001 - rasterio raises RasterioIOError, CPLE_* ...
        raise SceneReadError(f"{path}: cannot read as GeoTIFF ({err})") from None


def _check_complete(src, path: Path, info: dict) -> None:
    """Cheap checks that a GeoTIFF is complete: an uncompressed image is not larger than
    the file, and the last pixel of the last band (stored last) can be read."""
    from rasterio.windows import Window

    nb, ny, nx = info["shape"]
    if min(nb, ny, nx) <= 0:
        raise SceneReadError(f"{path}: the image has no pixels ({nb} x {ny} x {nx})")
    need = nb * ny * nx * info["dtype"].itemsize
    size = path.stat().st_size
    if src.compression is None and need > size:
        raise SceneReadError(f"{path}: the GeoTIFF is truncated: {size} bytes, its "
                             f"{nb} x {ny} x {nx} {info['dtype'].name} pixels need {need}")
    try:
        src.read(nb, window=Window(nx - 1, ny - 1, 1, 1))
    except Exception as err:  # noqa: BLE001 - rasterio raises RasterioIOError, CPLE_* ...
        raise SceneReadError(f"{path}: the GeoTIFF is truncated or damaged (its last "
                             f"pixel cannot be read: {err})") from None


class _TiffBands:
    """Array-like (band, row, column) view of a GeoTIFF read by windows on each slice
    (small and picklable, so dask can send it to workers)."""

    def __init__(self, path: str, shape: tuple[int, int, int], dtype: np.dtype):
        self.path, self.shape, self.dtype, self.ndim = path, shape, dtype, 3

    def __getitem__(self, key):
        import rasterio
        from rasterio.windows import Window

        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (3 - len(key))
        (b0, b1, _), (r0, r1, _), (c0, c1, _) = (k.indices(n) for k, n in
                                                 zip(key, self.shape, strict=True))
        if b1 <= b0 or r1 <= r0 or c1 <= c0:
            return np.empty((max(b1 - b0, 0), max(r1 - r0, 0), max(c1 - c0, 0)),
                            self.dtype)
        try:
            with _quiet(), rasterio.open(self.path) as src:
                return src.read(list(range(b0 + 1, b1 + 1)),
                                window=Window(c0, r0, c1 - c0, r1 - r0))
        except Exception as err:  # noqa: BLE001 - rasterio raises RasterioIOError, ...
            raise SceneReadError(f"{self.path}: cannot read the DESIS spectral image "
                                 f"(bands {b0 + 1}-{b1}, rows {r0}-{r1 - 1}: {err}); "
                                 "truncated or damaged?") from None


def _read_ancillary(path: Path, ny: int, nx: int) -> dict[str, np.ndarray]:
    import rasterio

    try:
        with _quiet(), rasterio.open(path) as src:
            if (src.height, src.width) != (ny, nx):
                raise SceneReadError(f"{path}: the ancillary image is {src.height} x "
                                     f"{src.width}, the product {ny} x {nx}")
            names = list(src.descriptions)
            arr = src.read().astype(np.float64)
    except SceneReadError:
        raise
    except Exception as err:  # noqa: BLE001 - rasterio errors
        raise SceneReadError(f"{path}: cannot read the ancillary GeoTIFF ({err})") from None
    out = {n: arr[i] for i, n in enumerate(names) if n in _ANCILLARY}
    for n, v in out.items():
        if n in GEOMETRY_VARIABLES and np.all(v == v.flat[0]):
            out[n] = float(v.flat[0])  # the same everywhere: a scalar
        elif n in GEOMETRY_VARIABLES and np.all(v == v[:1]):
            out[n] = v[0]  # per column
    if "column" in out:
        out["column"] = out["column"][0]
    return out


def _georeferencing(scene: xr.Dataset) -> dict:
    """``crs`` and ``transform`` for rasterio when the scene is on a regular grid with a
    CRS (:func:`bayesfluo.io.writers.scene_crs`), else nothing."""
    from rasterio.transform import from_origin

    from bayesfluo.io.writers import scene_crs

    try:
        crs = scene_crs(scene)
    except Exception:  # noqa: BLE001 - an unreadable CRS: write without
        crs = None
    if crs is None or "x" not in scene.coords or "y" not in scene.coords or \
            scene.sizes["x"] < 2 or scene.sizes["y"] < 2:
        return {}
    x, y = np.asarray(scene["x"], np.float64), np.asarray(scene["y"], np.float64)
    dx, dy = x[1] - x[0], y[0] - y[1]
    if not (np.allclose(np.diff(x), dx) and np.allclose(-np.diff(y), dy)):
        return {}
    return {"crs": crs.to_wkt(), "transform": from_origin(x[0] - dx / 2, y[0] + dy / 2,
                                                          dx, dy)}


def _scalar_mean(scene: xr.Dataset, name: str) -> float:
    return float(np.nanmean(np.asarray(scene[name].values, np.float64)))


def write_desis_like(scene: xr.Dataset, directory: str | os.PathLike,
                     name: str = "DESIS-HSI-L1B-BAYESFLUO", dtype: str = "int16",
                     start_time: str | None = None, rows_per_block: int = 256) -> Path:
    """Write a scene as a DESIS-like Level-1B product: ``<name>-SPECTRAL_IMAGE.tif``
    (DN, bands x rows x columns), ``<name>-METADATA.xml`` (band centres, widths, gains and
    offsets in mW cm-2 sr-1 um-1, scene-mean angles, start time) and
    ``<name>-BAYESFLUO_ANCILLARY.tif`` (per-pixel geometry, ndvi, mask, detector column).
    Each file is written atomically; the image last but one, the XML last.

    Parameters
    ----------
    scene : xarray.Dataset
        An image scene (y, x, band), radiance in mW m-2 sr-1 nm-1.
    directory : path
        The product directory (created).
    dtype : "int16" or "float32"
        int16 (as DESIS) quantises each band linearly over its range (restored to within
        half a gain step); float32 stores the radiance exactly. The largest int16 value
        is the background (fill) value, used for non-finite radiance.
    start_time : str, optional
        ISO 8601 acquisition start; default noon UTC of the scene's ``day_of_year`` in
        2026.

    Returns
    -------
    pathlib.Path
        The product directory.
    """
    import rasterio

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rad = scene["radiance"]
    if tuple(rad.dims) != ("y", "x", "band"):
        raise ValueError(f"write_desis_like needs radiance (y, x, band), got {rad.dims}")
    if dtype not in ("int16", "float32"):
        raise ValueError("dtype must be int16 or float32")
    ny, nx, nb = rad.shape
    ufac = radiance_unit_factor(DESIS_RADIANCE_UNITS)
    if dtype == "int16":
        data = rad.data
        lo = np.nan_to_num(np.asarray(da.nanmin(data, axis=(0, 1)) if isinstance(
            data, da.Array) else np.nanmin(data, axis=(0, 1)), np.float64))
        hi = np.nan_to_num(np.asarray(da.nanmax(data, axis=(0, 1)) if isinstance(
            data, da.Array) else np.nanmax(data, axis=(0, 1)), np.float64))
        gain = np.where(hi > lo, (hi - lo) / 65534.0, 1.0)  # DN -32768 ... 32766
        offset = lo + 32768.0 * gain
        fill = 32767
    else:
        gain, offset, fill = np.ones(nb), np.zeros(nb), None
    tif = directory / f"{name}-SPECTRAL_IMAGE.tif"
    profile = dict(driver="GTiff", width=nx, height=ny, count=nb, dtype=dtype,
                   interleave="band", tiled=False, **_georeferencing(scene))
    if fill is not None:
        profile["nodata"] = fill
    with atomic_path(tif) as tmp, _quiet():
        with rasterio.open(tmp, "w", **profile) as dst:
            for r0 in range(0, ny, rows_per_block):
                block = np.asarray(rad[r0:r0 + rows_per_block].values, np.float64)
                if dtype == "int16":
                    q = np.round((block - offset) / gain)
                    block = np.where(np.isfinite(q), np.clip(q, -32768, 32766), fill)
                window = rasterio.windows.Window(0, r0, nx, block.shape[0])
                dst.write(np.moveaxis(block, 2, 0).astype(dtype), window=window)

    anc_names = [n for n in GEOMETRY_VARIABLES if n in scene]
    anc_names += [n for n in ("ndvi", "mask") if n in scene]
    layers = [np.broadcast_to(
        np.asarray(scene[n].values)[:, None] if scene[n].dims == ("y",) else
        scene[n].transpose(*[d for d in ("y", "x") if d in scene[n].dims]).values,
        (ny, nx)).astype(np.float32) for n in anc_names]
    if "column" in scene.coords:
        anc_names.append("column")
        layers.append(np.broadcast_to(np.asarray(scene["column"].values, np.float32)[None],
                                      (ny, nx)))
    anc = directory / f"{name}-BAYESFLUO_ANCILLARY.tif"
    with atomic_path(anc) as tmp, _quiet():
        with rasterio.open(tmp, "w", driver="GTiff", width=nx, height=ny,
                           count=len(layers), dtype="float32",
                           **_georeferencing(scene)) as dst:
            dst.write(np.stack(layers, 0))
            for i, n in enumerate(anc_names):
                dst.set_band_description(i + 1, n)

    if start_time is None:
        doy = int(scene.attrs.get("day_of_year", 180))
        start_time = (_dt.datetime(2026, 1, 1, 12, tzinfo=_dt.UTC)
                      + _dt.timedelta(days=doy - 1)).isoformat()
    root = ET.Element("hsi_doc")
    base = ET.SubElement(root, "base")
    for tag, text in (("mission", "DESIS"), ("productType", "L1B"),
                      ("startTime", start_time), ("numberOfBands", str(nb)),
                      ("source", str(scene.attrs.get("source", "bayesfluo")))):
        ET.SubElement(base, tag).text = text
    spec = ET.SubElement(root, "specific")
    for tag, var in _XML_ANGLES.items():
        if var in scene:
            ET.SubElement(spec, tag).text = repr(_scalar_mean(scene, var))
    if fill is not None:
        ET.SubElement(spec, "backgroundValue").text = str(fill)
    chars = ET.SubElement(spec, "bandCharacterisation")
    wl, fw = np.asarray(scene["wavelength"].values), np.asarray(scene["fwhm"].values)
    for i in range(nb):
        band = ET.SubElement(chars, "band")
        for tag, val in (("bandNumber", str(i + 1)),
                         ("wavelengthCenterOfBand", repr(float(wl[i]))),
                         ("wavelengthWidthOfBand", repr(float(fw[i]))),
                         ("gainOfBand", repr(float(gain[i] / ufac))),
                         ("offsetOfBand", repr(float(offset[i] / ufac)))):
            ET.SubElement(band, tag).text = val
    ET.indent(root)
    xml = directory / f"{name}-METADATA.xml"
    with atomic_path(xml) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return directory
