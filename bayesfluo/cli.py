"""Command line: ``bayesfluo demo | simulate | train | retrieve | nuts | instruments``."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

__all__ = ["main"]


def _cmd_simulate(args: argparse.Namespace) -> int:
    import xarray as xr

    from bayesfluo.io import write_dataset
    from bayesfluo.simulate import simulate_scene

    surface = None
    if args.surface:
        try:
            surface = xr.load_dataset(args.surface)
        except (OSError, ValueError) as err:
            raise ValueError(f"cannot read surface spectra {args.surface}: {err}") from err
    t0 = time.perf_counter()
    ds = simulate_scene(args.instrument, args.size, seed=args.seed, surface=surface,
                        sza_deg=args.sza, altitude_m=args.altitude,
                        snr=np.inf if args.no_noise else args.snr, progress=not args.quiet)
    write_dataset(ds, args.out)
    print(f"wrote {args.out}: {args.instrument}, {dict(ds.sizes)}, "
          f"{time.perf_counter() - t0:.1f} s")
    if args.plot:
        from bayesfluo.plotting import plot_scene

        plot_scene(ds, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from bayesfluo.demo import run_demo

    run_demo(args.out_dir, instrument=args.instrument, size=args.size, seed=args.seed,
             model=args.model)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from bayesfluo.train import TrainConfig, TrainingDiverged, train

    overrides = {}
    if args.out:
        overrides["out"] = args.out
    if args.devices:
        overrides["devices"] = args.devices
    tc = TrainConfig.from_toml(args.config, **overrides)
    t0 = time.perf_counter()
    try:
        guide = train(tc, progress=not args.quiet)
    except TrainingDiverged as err:
        print(f"bayesfluo train: stopped: {err}", file=sys.stderr)
        return 3
    print(f"wrote {tc.out}: {guide.instrument} guide, final loss {guide.info['final_loss']}, "
          f"{time.perf_counter() - t0:.0f} s")
    return 0


def _cmd_retrieve(args: argparse.Namespace) -> int:
    from bayesfluo.models import resolve_model
    from bayesfluo.retrieve import RetrieveOptions, retrieve_file

    opts = RetrieveOptions(quality=not args.no_quality, n_draws=args.draws, seed=args.seed,
                           chunk_pixels=args.chunk_pixels)
    t0 = time.perf_counter()
    out = retrieve_file(args.scene, resolve_model(args.model), args.out, opts,
                        progress=not args.quiet)
    print(f"wrote {out} ({time.perf_counter() - t0:.1f} s)")
    return 0


def _cmd_nuts(args: argparse.Namespace) -> int:
    from bayesfluo.io import read_scene, write_datatree
    from bayesfluo.nuts import NutsConfig, nuts_reference, parse_pixels

    scene = read_scene(args.scene)
    if scene["radiance"].ndim != 3:
        raise ValueError("nuts needs an image scene (y, x, band); tower time series are not "
                         "supported yet")
    rows, cols = parse_pixels(args.pixels, (scene.sizes["y"], scene.sizes["x"]))
    cfg = NutsConfig(num_warmup=args.warmup, num_samples=args.samples,
                     num_chains=args.chains, predictive_draws=args.predictive_draws)
    t0 = time.perf_counter()
    dt = nuts_reference(scene, rows, cols, patch_size=args.patch_size, nuts=cfg,
                        seed=args.seed)
    dt.attrs["input"] = str(args.scene)
    write_datatree(dt, args.out)
    conv = dt["convergence"].to_dataset()
    print(f"wrote {args.out}: {rows.size} pixels in {int(dt['posterior'].sizes['patch'])} "
          f"patches, {time.perf_counter() - t0:.0f} s")
    print(f"  converged (R-hat <= 1.01, bulk ESS of F760 >= 400, no divergences): "
          f"{int(conv.converged.sum())} of {rows.size} pixels; worst R-hat "
          f"{float(conv.r_hat_max.max()):.3f}, median bulk ESS {float(conv.ess_bulk.median()):.0f}")
    return 0


def _cmd_instruments(args: argparse.Namespace) -> int:
    from bayesfluo.instruments import INSTRUMENTS

    print(f"{'name':18s} {'window nm':>13s} {'bands':>6s} {'FWHM nm':>8s} {'SNR':>5s}  platform")
    for inst in INSTRUMENTS.values():
        lo, hi = inst.window_nm
        print(f"{inst.name:18s} {lo:6.1f}-{hi:6.1f} {inst.band_centres().size:6d} "
              f"{inst.fwhm_nm:8.2f} {inst.snr:5.0f}  {inst.platform}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``bayesfluo`` command."""
    p = argparse.ArgumentParser(prog="bayesfluo", description=(
        "Probabilistic retrieval of sun-induced chlorophyll fluorescence."))
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("simulate", help="simulate a scene with known truth (netCDF)")
    s.add_argument("--instrument", default="hyplant-fluo")
    s.add_argument("--size", default="128x128", help="NYxNX pixels (time steps for flox)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--surface", help="netCDF of reflectance and sif spectra (pixel, wavelength)")
    s.add_argument("--sza", type=float, default=30.0, help="sun zenith angle, degrees")
    s.add_argument("--altitude", type=float, help="sensor height above ground, m")
    s.add_argument("--snr", type=float, help="signal-to-noise ratio at reference radiance")
    s.add_argument("--no-noise", action="store_true", help="noise-free radiance")
    s.add_argument("--plot", help="also write an overview PNG here")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.add_argument("--out", required=True, help="output netCDF file")
    s.set_defaults(func=_cmd_simulate)

    d = sub.add_parser("demo", help="simulate a demo scene, retrieve it with the shipped "
                       "model, map F760 beside the truth")
    d.add_argument("--instrument", default="hyplant-fluo-o2a")
    d.add_argument("--size", default="64x64")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--model", help="model directory or shipped model name (default: the "
                   "instrument's shipped model)")
    d.add_argument("--out-dir", default="bayesfluo-demo")
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train an amortized guide (TOML configuration)")
    t.add_argument("config", help="TOML file (see models/*/train.toml)")
    t.add_argument("--out", help="output model directory (overrides the file's)")
    t.add_argument("--devices", type=int, help="devices for data parallelism")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    r = sub.add_parser("retrieve", help="posterior maps of a scene with a trained guide")
    r.add_argument("scene", help="scene netCDF")
    r.add_argument("--model", required=True,
                   help="model directory, or the name of a shipped model (e.g. "
                   "hyplant-fluo-o2a, desis)")
    r.add_argument("--out", required=True, help="output netCDF")
    r.add_argument("--draws", type=int, default=0, help="posterior draws of F760 per pixel")
    r.add_argument("--seed", type=int, default=0, help="seed of the draws")
    r.add_argument("--no-quality", action="store_true",
                   help="skip the fit check (poor_fit flag, fit_chi2)")
    r.add_argument("--chunk-pixels", type=int, default=32768,
                   help="pixels per chunk (memory bound)")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.set_defaults(func=_cmd_retrieve)

    n = sub.add_parser("nuts", help="NUTS reference posteriors of scene pixels (DataTree)")
    n.add_argument("scene", help="scene netCDF")
    n.add_argument("--pixels", required=True,
                   help="'r0:r1,c0:c1' (a block) or 'r,c;r,c;...' (listed pixels)")
    n.add_argument("--patch-size", type=int, default=8,
                   help="pixels in the same PATCH_SIZE-square block share an atmosphere")
    n.add_argument("--warmup", type=int, default=500)
    n.add_argument("--samples", type=int, default=500)
    n.add_argument("--chains", type=int, default=4)
    n.add_argument("--predictive-draws", type=int, default=50,
                   help="posterior-predictive draws kept per chain")
    n.add_argument("--seed", type=int, default=0)
    n.add_argument("--out", required=True, help="output netCDF (DataTree groups)")
    n.set_defaults(func=_cmd_nuts)

    i = sub.add_parser("instruments", help="list the instruments bayesfluo knows")
    i.set_defaults(func=_cmd_instruments)
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayesfluo`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"bayesfluo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
