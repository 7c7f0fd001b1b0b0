"""Command line: ``bayesfluo simulate | demo | nuts | instruments``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

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
    from bayesfluo.io import write_dataset
    from bayesfluo.plotting import plot_scene
    from bayesfluo.simulate import simulate_scene

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = simulate_scene(args.instrument, args.size, seed=args.seed, progress=True)
    scene = write_dataset(ds, out / "demo_scene.nc")
    png = out / "demo_scene.png"
    plot_scene(ds, png)
    f = ds["true_f760"].values
    print(f"simulated a {args.size} {args.instrument} scene in {time.perf_counter() - t0:.1f} s")
    print(f"  true F760: {np.nanmin(f):.2f} to {np.nanmax(f):.2f} mW m-2 sr-1 nm-1, "
          f"{np.mean(f < 0.05):.0%} of pixels without fluorescence")
    print(f"  scene: {scene}\n  figure: {png}")
    print("  (retrieval of this scene arrives with the Bayesian model and the amortized guide)")
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

    d = sub.add_parser("demo", help="simulate a demo scene and plot it")
    d.add_argument("--instrument", default="hyplant-fluo-o2a")
    d.add_argument("--size", default="64x64")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out-dir", default="bayesfluo-demo")
    d.set_defaults(func=_cmd_demo)

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
