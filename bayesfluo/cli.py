"""Command line: ``bayesfluo demo | simulate | train | retrieve | nuts | baseline |
report | instruments | atmosphere | cluster-script``."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import numpy as np

from bayesfluo import __version__

__all__ = ["main", "build_parser"]


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless it has none (None, a flag) or
    its help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (not action.option_strings or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or "default" in text):
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """An argument parser (and its subcommands') whose help shows defaults."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


def _cli_wording(err: Exception) -> str:
    """An error's message in the command line's terms: ``pass instrument=...`` ->
    ``--instrument NAME``, ``geometry={'sza': ...}`` -> ``--geometry sza=...``; a scene
    narrower than the model's window names the shipped model of its own window."""
    message = re.sub(r"\binstrument=\.\.\.", "--instrument NAME", str(err))

    def geometry(m: re.Match) -> str:
        keys = re.findall(r"'(\w+)'\s*:", m.group(1))
        return "--geometry " + ",".join(f"{k}=..." for k in keys) if keys else "--geometry"

    message = re.sub(r"\bgeometry=\{([^}]*)\}", geometry, message)
    fits = _fitting_instrument(err)
    if fits is not None:
        from bayesfluo.shipped import shipped_models
        if fits in shipped_models():
            message += f" (the shipped one: --model {fits})"
    return re.sub(r" to (read_\w+/)?open_scene\b", "", message)


def _fitting_instrument(err: BaseException | None) -> str | None:
    """The instrument whose model would take the scene, from a
    :class:`~bayesfluo.scene.grid.SceneWindowError` in ``err``'s chain of causes."""
    from bayesfluo.scene.grid import SceneWindowError

    while err is not None:
        if isinstance(err, SceneWindowError) and err.fits:
            return err.fits
        err = err.__cause__
    return None


def _parse_size(text: str, instrument: str) -> str | tuple[int, int]:
    """``--size``: ``NYxNX``, or one number N: N x N pixels for an image, N time steps for
    a tower (top-of-canopy) instrument."""
    if text.strip().isdigit():
        from bayesfluo.instruments import get_instrument

        n = int(text)
        return (n, 1) if get_instrument(instrument).platform == "tower" else (n, n)
    return text


#: Suffixes of ENVI cubes, which bayesfluo reads but does not write.
_ENVI_SUFFIXES = (".hdr", ".img", ".dat", ".bsq", ".bil", ".bip")


def _cmd_simulate(args: argparse.Namespace) -> int:
    import xarray as xr

    if Path(args.out).suffix.lower() in _ENVI_SUFFIXES:  # before minutes of simulation
        raise ValueError(f"{args.out}: simulate writes netCDF (.nc), Zarr (.zarr) or, for a "
                         "tower series, a FloX CSV (.csv), not ENVI; the ENVI reader takes "
                         "cubes from other software")

    from bayesfluo.io import write_dataset, write_flox_csv
    from bayesfluo.io.writers import write_zarr
    from bayesfluo.scene.simulate import simulate_scene

    surface = None
    if args.surface:
        try:
            surface = xr.load_dataset(args.surface)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read surface spectra {args.surface}: {err}") from err
    atmosphere = fm = None
    if args.atmosphere:
        from bayesfluo.io.tables import external_atmosphere, read_table
        from bayesfluo.physics.forward import build_forward_model

        fm = build_forward_model(args.instrument)
        atmosphere = external_atmosphere(fm, read_table(args.atmosphere))
    t0 = time.perf_counter()
    ds = simulate_scene(args.instrument, _parse_size(args.size, args.instrument),
                        seed=args.seed, surface=surface,
                        sza_deg=args.sza, altitude_m=args.altitude,
                        snr=np.inf if args.no_noise else args.snr, progress=not args.quiet,
                        model=fm, atmosphere=atmosphere)
    suffix = Path(args.out).suffix.lower()
    if suffix == ".csv":  # the FloX table a tower user has (time series with irradiance)
        if "irradiance" not in ds:
            raise ValueError(f"{args.out}: a CSV holds a top-of-canopy time series; "
                             f"{args.instrument} scenes are images: use .nc or .zarr")
        write_flox_csv(ds, args.out)
    elif suffix == ".zarr":
        write_zarr(ds, args.out)
    else:
        write_dataset(ds, args.out)
    print(f"wrote {args.out}: {args.instrument}, {dict(ds.sizes)}, "
          f"{time.perf_counter() - t0:.1f} s")
    if args.plot:
        from bayesfluo.report.plotting import plot_scene

        plot_scene(ds, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_atmosphere(args: argparse.Namespace) -> int:
    from bayesfluo.instruments import get_instrument
    from bayesfluo.io.tables import export_atmosphere, write_table
    from bayesfluo.physics.forward import (
        Geometry,
        build_forward_model,
        check_inputs,
        default_atmosphere,
    )
    from bayesfluo.physics.solar import earth_sun_distance_factor

    inst = get_instrument(args.instrument)
    height = inst.altitude_m if args.altitude is None else args.altitude
    atm = default_atmosphere(args.surface_altitude, args.aot, args.angstrom, args.diffuse_path)
    if args.pressure is not None:
        atm = atm._replace(surface_pressure_hpa=np.float32(args.pressure))
    f32 = np.float32
    geom = Geometry(f32(args.sza), f32(args.vza), f32(args.raa), f32(args.surface_altitude),
                    f32(args.surface_altitude + height),
                    f32(earth_sun_distance_factor(args.day_of_year)))
    check_inputs(atm=atm, geom=geom)
    table = export_atmosphere(build_forward_model(inst), atm, geom)
    kw = {} if str(args.out).endswith((".nc", ".nc4")) else {"layout": args.layout}
    write_table(table, args.out, **kw)
    print(f"wrote {args.out}: {table.sizes['wavelength']} wavelengths "
          f"{float(table.wavelength[0]):.3f}-{float(table.wavelength[-1]):.3f} nm")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bayesfluo.demo import run_demo

    run_demo(args.out_dir, instrument=args.instrument, size=args.size, seed=args.seed,
             model=args.model)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from bayesfluo.inference.train import TrainConfig, TrainingDiverged, train
    from bayesfluo.retrieval.devices import device_line

    overrides = {}
    if args.out:
        overrides["out"] = args.out
    if args.devices:
        overrides["devices"] = args.devices
    tc = TrainConfig.from_toml(args.config, **overrides)
    print(device_line(), flush=True)
    t0 = time.perf_counter()
    scenes = None
    if tc.finetune_steps:
        from bayesfluo.io import read_scene

        scenes = [read_scene(p) for p in tc.scenes]
    try:
        guide = train(tc, progress=not args.quiet, scenes=scenes)
    except TrainingDiverged as err:
        print(f"bayesfluo train: stopped: {err}", file=sys.stderr)
        return 3
    print(f"wrote {tc.out}: {guide.instrument} guide, final loss {guide.info['final_loss']}, "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def _parse_geometry(text: str | None) -> dict | None:
    """``"sza=30,vza=0,surface_altitude=100"`` -> dict (angles degrees, altitudes m)."""
    if not text:
        return None
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            out[key.strip()] = (int(value) if key.strip() == "day_of_year"
                                else float(value))
        except ValueError:
            sep = ""
        if not sep:
            raise ValueError(f"--geometry wants KEY=NUMBER[,KEY=NUMBER...], not {item!r}")
    return out


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.io.writers import output_format
    from bayesfluo.retrieval.api import FlagSummary, RetrieveOptions, Retriever, retrieve_file
    from bayesfluo.retrieval.batch import EXTENSIONS, is_batch, run_batch
    from bayesfluo.retrieval.devices import device_line
    from bayesfluo.retrieval.executors import executor_context
    from bayesfluo.shipped import resolve_model

    chunk = {} if args.chunk_pixels is None else {"chunk_pixels": args.chunk_pixels}
    opts = RetrieveOptions(quality=not args.no_quality, n_draws=args.draws, seed=args.seed,
                           refine=args.refine, **chunk)
    t0 = time.perf_counter()
    distributed = args.scheduler or args.workers is not None or args.cluster
    print(device_line() + ("; chunks run on the dask workers" if distributed else ""),
          flush=True)
    model_dir = resolve_model(args.model)
    reader_kwargs = _reader_kwargs(args)
    variables = args.variables.split(",") if args.variables else None
    batch = is_batch(args.scene, args.out)
    if not batch:
        output_format(args.out)
    retriever = Retriever(load_guide(model_dir))
    with executor_context(model_dir, retriever, scheduler=args.scheduler,
                          workers=args.workers, cluster_config=args.cluster,
                          reader_kwargs=reader_kwargs) as executor:
        if batch:
            fmt = args.format or "nc"
            report = run_batch(args.scene, args.out, model_dir, opts, fmt=fmt,
                               retriever=retriever, executor=executor,
                               reader_kwargs=reader_kwargs, variables=variables,
                               separate=args.separate_maps, progress=not args.quiet)
            first, *rest = report.summary().splitlines()
            print(f"{args.out}: {first} ({time.perf_counter() - t0:.1f} s)", *rest, sep="\n")
            return 0 if report.ok else 1
        if args.format and output_format(args.out) != output_format(
                "x" + EXTENSIONS[args.format]):
            raise ValueError(f"--format {args.format} disagrees with --out {args.out}")
        flags = FlagSummary()
        out = retrieve_file(args.scene[0], model_dir, args.out, opts, progress=not args.quiet,
                            retriever=retriever, reader_kwargs=reader_kwargs,
                            executor=executor, variables=variables,
                            separate=args.separate_maps, flags=flags)
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s)")
    print(f"  {flags.line()}")
    return 0


def _cmd_cluster_script(args: argparse.Namespace) -> int:
    from bayesfluo.retrieval.executors import read_cluster_config, slurm_job_script

    jobs = read_cluster_config(args.config)["jobs"]
    print(slurm_job_script(args.config))  # stdout: the script alone
    print(f"'bayesfluo retrieve --cluster {args.config}' submits this script {jobs} "
          "time(s), with its own scheduler's address (nothing was submitted now)",
          file=sys.stderr)
    return 0


def _reader_kwargs(args: argparse.Namespace) -> dict:
    """``--instrument`` and ``--geometry`` as the scene readers' keyword arguments."""
    kwargs = {}
    if getattr(args, "instrument", None):
        kwargs["instrument"] = args.instrument
    if (geometry := _parse_geometry(getattr(args, "geometry", None))) is not None:
        kwargs["geometry"] = geometry
    return kwargs


def _cmd_nuts(args: argparse.Namespace) -> int:
    from bayesfluo.inference.nuts import NutsConfig, nuts_reference, parse_pixels
    from bayesfluo.io import open_scene, write_datatree

    # any format: netCDF, Zarr, ENVI, DESIS, FloX CSV or netCDF
    scene = open_scene(args.scene, **_reader_kwargs(args)).load()
    if "time" in scene["radiance"].dims:  # a tower: --pixels are time steps 't0:t1' or 't;t'
        spec = args.pixels.strip()
        if "," not in spec:  # time steps only: add the one column
            spec = (spec + ",0:1" if ":" in spec
                    else ";".join(f"{t},0" for t in spec.split(";") if t.strip()))
        rows, cols = parse_pixels(spec, (scene.sizes["time"], 1))
    else:
        rows, cols = parse_pixels(args.pixels, (scene.sizes["y"], scene.sizes["x"]))
    cfg = NutsConfig(num_warmup=args.warmup, num_samples=args.samples,
                     num_chains=args.chains, predictive_draws=args.predictive_draws)
    model = None
    if args.atmosphere:
        model = _table_model(args.atmosphere, scene, rows, cols)
    t0 = time.perf_counter()
    dt = nuts_reference(scene, rows, cols, patch_size=args.patch_size, nuts=cfg,
                        seed=args.seed, model=model)
    dt.attrs["input"] = str(args.scene)
    if args.atmosphere:
        dt.attrs["atmosphere"] = f"external table: {args.atmosphere}"
    write_datatree(dt, args.out)
    conv = dt["convergence"].to_dataset()
    print(f"wrote {args.out}: {rows.size} pixels in {int(dt['sample_stats'].sizes['patch'])} "
          f"patches, {time.perf_counter() - t0:.0f} s")
    print(f"  converged (R-hat <= 1.01, bulk ESS of F760 >= 400, no divergences): "
          f"{int(conv.converged.sum())} of {rows.size} pixels; worst R-hat "
          f"{float(conv.r_hat_max.max()):.3f}, median bulk ESS {float(conv.ess_bulk.median()):.0f}")
    return 0


def _table_model(path: str, scene, rows, cols):
    """The scene instrument's model through the transfer-function table at ``path``
    (perturbations free, :class:`~bayesfluo.model.PerturbationPrior`); warns where the
    table's geometry is not that of the pixels ``rows, cols`` (their mean)."""
    from bayesfluo.io.tables import external_atmosphere, read_table
    from bayesfluo.model import ExternalModel, PerturbationPrior, SifModel
    from bayesfluo.scene.grid import patch_of_pixels

    if "time" in scene["radiance"].dims:
        raise ValueError(f"{path}: a top-of-canopy time series has its measured "
                         "irradiance; --atmosphere is for images")
    model = SifModel.for_instrument(scene.attrs["instrument"])
    geometry = patch_of_pixels(scene, rows, cols).geometry
    ext = external_atmosphere(model.fm, read_table(path), geometry=geometry)
    return model.replace(table=ExternalModel(ext, PerturbationPrior()))


def _cmd_baseline(args: argparse.Namespace) -> int:
    from bayesfluo.inference.baselines import run_baseline
    from bayesfluo.io import open_scene, write_dataset

    kwargs = {"patch_size": args.patch_size}
    if args.windows:
        if args.method != "sfm":
            raise ValueError("--windows is for --method sfm (top-of-canopy series)")
        try:
            kwargs["windows_nm"] = [tuple(float(v) for v in w.split("-"))
                                    for w in args.windows.split(",")]
        except ValueError:
            kwargs["windows_nm"] = None
        if kwargs["windows_nm"] is None or any(len(w) != 2 for w in kwargs["windows_nm"]):
            raise ValueError(f"--windows wants LO-HI[,LO-HI...] in nm, not {args.windows!r}")
    # any format: netCDF, Zarr, ENVI, DESIS, FloX CSV or netCDF
    scene = open_scene(args.scene, **_reader_kwargs(args)).load()
    t0 = time.perf_counter()
    ds = run_baseline(scene, args.method, **kwargs)
    ds.attrs["input"] = str(args.scene)
    write_dataset(ds, args.out)
    f687 = (f", F687 {float(np.nanmean(ds.f687_mean.values)):.3f}" if "f687_mean" in ds
            else "")
    print(f"wrote {args.out}: {args.method}, mean F760 "
          f"{float(np.nanmean(ds.f760_mean.values)):.3f}{f687} mW m-2 sr-1 nm-1, "
          f"{time.perf_counter() - t0:.1f} s")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from bayesfluo.report.html import write_report

    t0 = time.perf_counter()
    out = write_report(args.run, args.out, scene=args.scene, model=args.model,
                       reader_kwargs=_reader_kwargs(args))
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_instruments(args: argparse.Namespace) -> int:
    from bayesfluo.instruments import INSTRUMENTS

    print(f"{'name':18s} {'window nm':>13s} {'bands':>6s} {'FWHM nm':>8s} {'SNR':>5s}  platform")
    for inst in INSTRUMENTS.values():
        lo, hi = inst.window_nm
        print(f"{inst.name:18s} {lo:6.1f}-{hi:6.1f} {inst.band_centres().size:6d} "
              f"{inst.fwhm_nm:8.2f} {inst.snr:5.0f}  {inst.platform}")
    return 0


def _add_reader_options(parser: argparse.ArgumentParser, what: str) -> None:
    """``--instrument`` and ``--geometry`` for a command that reads a scene file."""
    parser.add_argument("--instrument", help=f"instrument name, where the {what} does not "
                        "say (see 'bayesfluo instruments')")
    parser.add_argument("--geometry", help=f"values the {what} lacks, e.g. 'sza=35,saa=160,"
                        "vza=0,vaa=0,surface_altitude=100,sensor_altitude=105' (degrees, m); "
                        "a FloX series also latitude=...,longitude=... (degrees north and "
                        "east: the sun's position from its UTC times)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesfluo`` command."""
    p = _Parser(prog="bayesfluo", description=("Probabilistic retrieval of sun-induced "
                                               "chlorophyll fluorescence."))
    p.add_argument("--version", action="version", version=f"bayesfluo {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a scene with known truth (netCDF)")
    s.add_argument("--instrument", default="hyplant-fluo",
                   help="instrument name (see 'bayesfluo instruments')")
    s.add_argument("--size", default="128x128",
                   help="NYxNX pixels, or N (N x N pixels; N time steps for a tower such "
                   "as flox)")
    s.add_argument("--seed", type=int, default=0, help="random seed of the scene")
    s.add_argument("--surface", help="netCDF of reflectance and sif spectra (pixel, wavelength)")
    s.add_argument("--sza", type=float, default=30.0, help="sun zenith angle, degrees")
    s.add_argument("--altitude", type=float, help="sensor height above ground, m "
                   "(default: the instrument's)")
    s.add_argument("--snr", type=float, help="signal-to-noise ratio at reference radiance "
                   "(default: the instrument's)")
    s.add_argument("--no-noise", action="store_true", help="noise-free radiance")
    s.add_argument("--plot", help="also write an overview PNG here")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--atmosphere", help="transfer-function table (netCDF, or MODTRAN-style "
                   "text) used in place of the built-in atmosphere")
    s.add_argument("--out", required=True,
                   help="output scene: .nc (netCDF-4), .zarr, or .csv (FloX table; tower)")
    s.set_defaults(func=_cmd_simulate)

    at = sub.add_parser("atmosphere", help="export the built-in atmosphere as a "
                        "transfer-function table (netCDF for .nc, else text)")
    at.add_argument("--instrument", default="hyplant-fluo",
                    help="instrument name (see 'bayesfluo instruments')")
    at.add_argument("--sza", type=float, default=30.0, help="sun zenith angle, degrees")
    at.add_argument("--vza", type=float, default=0.0, help="view zenith angle, degrees")
    at.add_argument("--raa", type=float, default=0.0, help="relative azimuth, degrees")
    at.add_argument("--surface-altitude", type=float, default=100.0, help="m above sea level")
    at.add_argument("--altitude", type=float, help="sensor height above ground, m (default: "
                    "the instrument's)")
    at.add_argument("--pressure", type=float, help="surface pressure, hPa (default: standard "
                    "atmosphere at the surface altitude)")
    at.add_argument("--aot", type=float, default=0.12, help="aerosol optical thickness, 550 nm")
    at.add_argument("--angstrom", type=float, default=1.3, help="aerosol Angstrom exponent")
    at.add_argument("--diffuse-path", type=float, default=1.5,
                    help="diffuse-path factor of the atmosphere")
    at.add_argument("--day-of-year", type=int, default=180,
                    help="day of the year (Earth-Sun distance)")
    at.add_argument("--layout", choices=("named", "t18"), default="named",
                    help="text layout (ignored for .nc)")
    at.add_argument("--out", required=True, help="output table (.nc, .txt, .atm)")
    at.set_defaults(func=_cmd_atmosphere)

    d = sub.add_parser("demo", help="simulate a demo scene, retrieve it with the shipped "
                       "model, map F760 beside the truth")
    d.add_argument("--instrument", default="hyplant-fluo-o2a",
                   help="instrument of the demo scene")
    d.add_argument("--size", default="64x64", help="NYxNX pixels of the demo scene")
    d.add_argument("--seed", type=int, default=0, help="random seed of the demo scene")
    d.add_argument("--model", help="model directory or shipped model name (default: the "
                   "instrument's shipped model)")
    d.add_argument("--out-dir", default="bayesfluo-demo",
                   help="folder of the scene, result and figure")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train an amortized guide (TOML configuration)")
    t.add_argument("config", help="TOML file (see bayesfluo/data/models/*/train.toml)")
    t.add_argument("--out", help="output model directory (overrides the file's)")
    t.add_argument("--devices", type=int, help="devices for data parallelism")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("retrieve", help="posterior maps of a scene (or a batch of scenes) "
                       "with a trained guide")
    r.add_argument("scene", nargs="+",
                   help="scene file(s) or quoted glob pattern(s) ('flights/*.hdr'): netCDF, "
                   "Zarr, ENVI .hdr, DESIS, FloX CSV or netCDF")
    r.add_argument("--model", required=True,
                   help="model directory, or the name of a shipped model (e.g. "
                   "hyplant-fluo-o2a, desis)")
    r.add_argument("--out", required=True,
                   help="output file, its format by extension (.nc netCDF, .zarr Zarr, .tif "
                   "GeoTIFF maps); for several inputs or a glob, an output directory")
    r.add_argument("--format", choices=("nc", "zarr", "tif"),
                   help="output format of a batch (default: nc; a single output's format "
                   "follows --out)")
    r.add_argument("--variables", help="GeoTIFF maps to write, comma-separated (default "
                   "F760 mean, sd, 5 and 95 %% quantiles, SIF peak, reflectance, quality flag)")
    r.add_argument("--separate-maps", action="store_true",
                   help="GeoTIFF: one file per variable (<name>_<variable>.tif)")
    r.add_argument("--instrument", help="instrument name, where the input file does not "
                   "say (see 'bayesfluo instruments')")
    r.add_argument("--geometry", help="values the input lacks, e.g. "
                   "'sza=35,saa=160,vza=0,vaa=0,surface_altitude=100,sensor_altitude=1700'; "
                   "a FloX series also latitude=...,longitude=... (degrees, m)")
    dist = r.add_mutually_exclusive_group()
    dist.add_argument("--scheduler", help="address of a dask scheduler (tcp://host:8786) or "
                      "a scheduler file (.json): chunks become tasks on that cluster")
    dist.add_argument("--workers", type=int,
                      help="start a local dask cluster of N worker processes (1 thread each)")
    dist.add_argument("--cluster", metavar="CONFIG",
                      help="a Slurm cluster from a configuration file (TOML, "
                      "docs/cluster.md; needs bayesfluo[hpc]): chunks become tasks on its "
                      "jobs")
    r.add_argument("--draws", type=int, default=0, help="posterior draws of F760 per pixel")
    r.add_argument("--seed", type=int, default=0, help="seed of the draws")
    r.add_argument("--no-quality", action="store_true",
                   help="skip the fit check (poor_fit flag, fit_chi2)")
    r.add_argument("--refine", action="store_const", const=True, default=None,
                   help="refine each patch's posterior from the guide's to the Laplace "
                        "approximation at the model's mode (bayesfluo.inference.refine): agrees "
                        "with NUTS (HyPlant: median 0.08 sd against the guide's 0.36, about "
                        "800x slower than the guide alone). A tower's scans are refined by "
                        "default (0.02 sd against 0.40, about 7x slower; the red peak stays "
                        "the guide's)")
    r.add_argument("--no-refine", dest="refine", action="store_const", const=False,
                   help="the guide alone, also for a tower's scans")
    r.add_argument("--chunk-pixels", type=int,
                   help="pixels per chunk (bounds memory: the scene is read and written "
                   "chunk by chunk; default: 8192 on a CPU, 65536 on a GPU)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_retrieve)

    n = sub.add_parser("nuts", help="NUTS reference posteriors of scene pixels (DataTree)")
    n.add_argument("scene", help="scene file: netCDF, Zarr, ENVI .hdr, DESIS, FloX CSV or "
                   "netCDF")
    n.add_argument("--pixels", required=True,
                   help="'r0:r1,c0:c1' (a block) or 'r,c;r,c;...' (listed pixels); for a "
                        "top-of-canopy time series 't0:t1' or 't;t;...' (time steps)")
    n.add_argument("--patch-size", type=int, default=8,
                   help="pixels in the same PATCH_SIZE-square block share an atmosphere "
                        "(time series: blocks of PATCH_SIZE**2 time steps)")
    n.add_argument("--warmup", type=int, default=500, help="warm-up iterations per chain")
    n.add_argument("--samples", type=int, default=500, help="draws kept per chain")
    n.add_argument("--chains", type=int, default=4, help="independent chains")
    n.add_argument("--predictive-draws", type=int, default=50,
                   help="posterior-predictive draws kept per chain")
    n.add_argument("--seed", type=int, default=0, help="random seed of the chains")
    n.add_argument("--atmosphere", help="transfer-function table (netCDF, or MODTRAN-style "
                   "text; `bayesfluo atmosphere` writes one) used in place of the built-in "
                   "atmosphere, its optical depths, upward transmittance and path radiance "
                   "perturbed per patch")
    _add_reader_options(n, "input file")
    n.add_argument("--out", required=True, help="output netCDF (DataTree groups)")
    n.set_defaults(func=_cmd_nuts)

    b = sub.add_parser("baseline", help="a baseline retrieval (sFLD, 3FLD, iFLD, SFM, OE) "
                       "of a scene, for comparison")
    b.add_argument("scene", help="scene file: netCDF, Zarr, ENVI .hdr, DESIS, FloX CSV or "
                   "netCDF")
    b.add_argument("--method", default="ifld",
                   choices=["sfld", "3fld", "ifld", "sfm", "oe", "oe-atmosphere"],
                   help="the retrieval method (a top-of-canopy series such as FloX: "
                   "FLD and SFM in the FloX convention, with its measured irradiance)")
    b.add_argument("--patch-size", type=int, default=8,
                   help="pixels per side sharing one geometry and atmosphere operator")
    b.add_argument("--windows", help="SFM fitting windows of a top-of-canopy series, "
                   "LO-HI[,LO-HI] nm (default: 750-780,670-700)")
    _add_reader_options(b, "input file")
    b.add_argument("--out", required=True, help="output netCDF file")
    b.set_defaults(func=_cmd_baseline)

    rp = sub.add_parser("report", help="one self-contained HTML report of a retrieval, "
                        "NUTS or validation run")
    rp.add_argument("run", help="netCDF of a retrieval result, a NUTS DataTree or a "
                    "validation run")
    rp.add_argument("--out", help="output HTML (default: RUN with suffix .html)")
    rp.add_argument("--scene", help="the scene of the run (default: the file the run's "
                    "'input' attribute names, if found)")
    _add_reader_options(rp, "scene file")
    rp.add_argument("--model", help="model directory or shipped model name (default for a "
                    "retrieval: the result's 'model' attribute)")
    rp.set_defaults(func=_cmd_report)

    i = sub.add_parser("instruments", help="list the instruments bayesfluo knows")
    i.set_defaults(func=_cmd_instruments)

    cs = sub.add_parser("cluster-script", help="print the Slurm job script that "
                        "'retrieve --cluster CONFIG' would submit (submits nothing)")
    cs.add_argument("config", help="cluster configuration file (TOML, docs/cluster.md)")
    cs.set_defaults(func=_cmd_cluster_script)
    return p


def _os_error(err: OSError, args: argparse.Namespace) -> str:
    """One line for an OSError: the output it hit (where it is one) and the OS's words."""
    reason = " ".join(str(err.strerror or err).split())   # HDF5's messages span lines
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    name = err.filename
    inputs = getattr(args, "scene", None) or []
    inputs = [inputs] if isinstance(inputs, str) else inputs
    if name is not None and any(Path(str(name)).resolve() == Path(i).resolve()
                                for i in inputs):
        return f"cannot read {name}: {reason}"
    if out is not None:
        o = Path(str(out)).resolve()
        hit = Path(str(name)).resolve() if name is not None else None
        if (hit is None or hit == o or o in hit.parents or hit in o.parents
                or hit.parent == o.parent):
            return f"cannot write {out}: {reason}" + (f" ({name})" if name is not None
                                                       and hit != o else "")
    return f"{name}: {reason}" if name is not None else reason


def _compilation_cache() -> None:
    """Keep JAX's compiled programs between runs in the user's cache directory
    (``$BAYESFLUO_CACHE``, else ``$XDG_CACHE_HOME/bayesfluo/jax``, else
    ``~/.cache/bayesfluo/jax``; ``BAYESFLUO_CACHE=off`` disables it): a second run of a
    command skips most of its compilation. JAX writes each entry atomically, so
    concurrent processes share the directory safely."""
    import os
    from pathlib import Path
    where = os.environ.get("BAYESFLUO_CACHE")
    if where == "off":
        return
    if not where:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        where = str(Path(base) / "bayesfluo" / "jax")
    try:
        Path(where).mkdir(parents=True, exist_ok=True)
    except OSError:
        return  # no writable cache: compile every time
    import jax
    jax.config.update("jax_compilation_cache_dir", where)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayesfluo`` console script.

    Exit codes: 0 done; 1 an output could not be written (read-only or full file
    system, an output another run is writing) or a batch had failures; 2 bad input or
    usage (the reason printed); 3 training diverged.
    """
    args = build_parser().parse_args(argv)
    _compilation_cache()
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bayesfluo {args.command}: error: {_cli_wording(err)}", file=sys.stderr)
        return 2
    except ImportError as err:  # an optional extra not installed (its message names it)
        if 'pip install "bayesfluo[' not in str(err):
            raise
        print(f"bayesfluo {args.command}: error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # writing (also an output another run is writing)
        print(f"bayesfluo {args.command}: error: {_os_error(err, args)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
