"""bayesfluo beside the SIF retrievals users know: one table on the same simulated scenes.

For each instrument (HyPlant FLUO O2-A, DESIS, a FloX-like tower) and signal-to-noise
level (the instrument's nominal SNR times each ``--snr-factors``), one scene is simulated
noise-free by the fine-grid physics (``bayesfluo.scene.simulate``) and noise of that SNR is
added (seeded). Every method runs on the same radiance:

* ``sfld``, ``3fld``, ``ifld``: Fraunhofer line depth (:mod:`bayesfluo.inference.baselines.fld`);
* ``sfm``: spectral fitting at the prior atmosphere (:mod:`bayesfluo.inference.baselines.sfm`);
* ``oe``: optimal estimation at the prior atmosphere; ``oe-atmosphere``: with each
  pixel's surface pressure, AOT and spectral shift retrieved too
  (:mod:`bayesfluo.inference.baselines.oe`);
* ``bayesfluo``: the amortized guide shipped in ``bayesfluo/data/models/`` (HyPlant O2-A
  and DESIS; there is no FloX guide, so the FloX rows compare with ``oe`` instead).

Columns: F760 RMSE and bias against the truth (mW m-2 sr-1 nm-1), coverage of the 90 %
interval where the method gives one, pixels per second (the second call, after
compilation, scene in memory, no file IO; operators and all set-up included), peak
memory (largest resident set during that call, sampled every 2 ms, less the resident
set before the method's first call: indicative, the methods share one process), and the
ratios of RMSE and speed to the reference (bayesfluo, or OE for FloX). Small scenes
understate the throughput of methods with a fixed cost per call (bayesfluo's retrieve
expands its reference spectrum once per call), so a second table times every method on
the nominal-SNR scene tiled ``--speed-tile`` times in each direction (e.g. 4).

Usage::

    python benchmarks/compare_methods.py [--size 32x32] [--flox-steps 128]
        [--snr-factors 0.5,1,2] [--speed-tile 1] [--out table.md] [--no-agreement]

Unless ``--no-agreement``, HyPlant also gets a scene of patches drawn from bayesfluo's
own prior predictive (:func:`prior_scene`, rows "model's prior"), and for it and the
simulated scene the script prints how iFLD, SFM and OE compare with bayesfluo's
posterior mean on well-identified pixels (NDVI > 0.5, unflagged, posterior sd < 0.3
mW m-2 sr-1 nm-1), also with each pixel's true atmosphere
(:func:`bayesfluo.inference.baselines.pixels.true_operators`).
"""

from __future__ import annotations

import argparse
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import psutil

from bayesfluo.inference.baselines import BASELINES, run_baseline
from bayesfluo.instruments import get_instrument
from bayesfluo.physics import build_forward_model
from bayesfluo.physics.sensor import add_noise
from bayesfluo.scene.simulate import simulate_scene

SHIPPED = {"hyplant-fluo-o2a": "hyplant-fluo-o2a", "desis": "desis", "flox": "flox"}


class PeakRss:
    """Largest growth of the process's resident set (MB) while the block runs."""

    def __init__(self, interval_s: float = 0.002):
        self.interval = interval_s
        self.proc = psutil.Process()

    def __enter__(self):
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.interval)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20


def with_noise(clean, snr: float, seed: int):
    """A copy of a noise-free scene with the instrument's noise at ``snr`` (as
    :func:`bayesfluo.scene.simulate.simulate_scene` adds it)."""
    a, b = get_instrument(clean.attrs["instrument"]).noise_coefficients(snr)
    k_rad, k_irr = jax.random.split(jax.random.PRNGKey(seed))
    s = clean.copy()
    rad = jnp.asarray(clean["true_radiance"].values)
    s["radiance"] = (clean["radiance"].dims, np.asarray(add_noise(k_rad, rad, a, b),
                                                         np.float32), clean["radiance"].attrs)
    if "irradiance" in clean:  # the clean scene's irradiance is noise-free
        irr = jnp.asarray(clean["irradiance"].values)
        s["irradiance"] = (clean["irradiance"].dims, np.asarray(
            add_noise(k_irr, irr, a * np.pi, b * np.pi**2), np.float32),
            clean["irradiance"].attrs)
    s.attrs.update(noise_a=float(a), noise_b=float(b), snr=float(snr))
    return s


def scores(result, scene) -> dict:
    """RMSE, bias, 90 % coverage (NaN without intervals) over usable pixels."""
    t = scene["true_f760"].values
    m = result["f760_mean"].values
    ok = np.isfinite(m) & ((result["quality_flag"].values & 1) == 0)
    e = m[ok] - t[ok]
    cov = np.nan
    if "f760_q05" in result:
        cov = float(np.mean((t[ok] >= result["f760_q05"].values[ok])
                            & (t[ok] <= result["f760_q95"].values[ok])))
    return dict(n=int(ok.sum()), rmse=float(np.sqrt(np.mean(e**2))), bias=float(np.mean(e)),
                coverage=cov)


def timed(fn, n_pixels: int) -> tuple[object, float, float]:
    """Run ``fn`` once to compile, then time a second call: (result, pixel/s, peak MB).

    Peak MB is the largest resident set during the second call less the resident set
    before the first: the method's working memory plus what its compilation keeps. The
    methods share one process, so memory an earlier method freed to the allocator can be
    reused unseen: the figures are indicative, to a few tens of MB."""
    base = psutil.Process().memory_info().rss
    fn()
    with PeakRss() as mem:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return out, n_pixels / dt, max(mem.peak - base, 0) / 2**20


def run_case(inst: str, scene, methods, fm, guide=None) -> list[dict]:
    """All methods on one scene: a list of rows."""
    rows = []
    n = int(np.prod(scene["true_f760"].shape))
    for m in methods:
        if m == "oe-atmosphere" and "time" in scene["radiance"].dims:
            continue
        res, pps, mb = timed(lambda m=m: run_baseline(scene, m, fm=fm), n)
        rows.append(dict(method=m, pps=pps, mb=mb, result=res, **scores(res, scene)))
    if guide is not None:
        from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve

        r = Retriever(guide, fm)
        opt = RetrieveOptions(quality=False)
        res, pps, mb = timed(lambda: retrieve(scene, guide, opt, retriever=r, progress=False),
                             n)
        rows.append(dict(method="bayesfluo", pps=pps, mb=mb, result=res,
                         **scores(res, scene)))
    return rows


def prior_scene(fm, cfg, n_side: int, seed: int):
    """A scene of ``n_side`` x ``n_side`` patches of 8 x 8 pixels, each drawn from
    bayesfluo's prior predictive at nominal conditions
    (:func:`bayesfluo.scene.prior.simulate_patch`: 600 m, sun zenith 30 deg, SNR 150
    shot noise, a quarter of the pixels bare), laid out on the guide's patch grid: data
    the model explains exactly, where its posterior is calibrated."""
    import xarray as xr

    from bayesfluo.model import SifModel
    from bayesfluo.scene.grid import PatchGrid
    from bayesfluo.scene.prior import simulate_patch

    key = jax.random.PRNGKey(seed)
    model = SifModel(fm, cfg)
    datas, truths = zip(*[simulate_patch(model, jax.random.fold_in(key, i))
                          for i in range(n_side * n_side)], strict=True)
    if cfg.fixed.get("fwhm_scale", 1.0) != 1.0 or "diffuse_path" in cfg.free:
        raise ValueError("prior_scene supports the default fixed FWHM and diffuse path")
    grid = PatchGrid((8 * n_side, 8 * n_side), 8)
    img = lambda v: grid.to_image(np.stack(v), 8 * n_side)  # noqa: E731
    rad = img([np.asarray(d.radiance) for d in datas]).astype(np.float32)
    g = datas[0].geometry
    yx = ("y", "x")
    ds = xr.Dataset({
        "radiance": (yx + ("band",), rad, {"units": "mW m-2 sr-1 nm-1"}),
        "ndvi": (yx, img([np.asarray(d.ndvi) for d in datas])),
        "mask": (yx, np.ones(rad.shape[:2], np.int8)),
        "true_f760": (yx, img([t["f760"] for t in truths])),
        **{f"true_{n}": (yx, img([np.full(64, float(t[n]) if n in t else cfg.fixed[n])
                                  for t in truths]))
           for n in ("surface_pressure", "aot550", "spectral_shift", "fwhm_scale")},
        "true_angstrom": float(cfg.fixed["angstrom"]),
        "true_diffuse_path": float(cfg.fixed["diffuse_path"]),
        # vza 0.5 deg, not the simulation's 0 (airmass differs by 4e-5): retrieve returns
        # NaN for a scene whose mean view zenith is exactly 0 (the guide's reference
        # expansion differentiates arccos at 1)
        "sza": float(g.sza_deg), "vza": 0.5, "saa": float(g.raa_deg),
        "vaa": 0.0, "surface_altitude": float(g.surface_altitude_m),
        "sensor_altitude": float(g.sensor_altitude_m)},
        coords={"wavelength": ("band", np.asarray(fm.band_centre_nm, np.float64),
                               {"units": "nm", "medium": "air"})},
        attrs={"instrument": fm.instrument, "noise_a": float(datas[0].noise_a),
               "noise_b": float(datas[0].noise_b), "snr": 150.0})
    return ds


def tiled(scene, k: int):
    """The scene repeated ``k`` x ``k`` times (``k * k`` times along time for a tower):
    a larger scene of the same pixels, for throughput."""
    import xarray as xr

    if "time" in scene["radiance"].dims:
        big = xr.concat([scene] * (k * k), dim="time", data_vars="minimal", coords="minimal",
                        compat="override")
        return big.assign_coords(time=np.arange(big.sizes["time"]))
    dims_y = [v for v in scene.data_vars if "y" in scene[v].dims]
    row = xr.concat([scene] * k, dim="x", data_vars=[v for v in scene.data_vars
                                                     if "x" in scene[v].dims],
                    coords="minimal", compat="override")
    return xr.concat([row] * k, dim="y", data_vars=dims_y, coords="minimal",
                     compat="override")


def throughput(scene, methods, fm, guide=None) -> list[dict]:
    """Pixel/s and peak MB of every method on one (large) scene."""
    n = int(np.prod(scene["true_f760"].shape))
    rows = []
    for m in methods:
        if m == "oe-atmosphere" and "time" in scene["radiance"].dims:
            continue
        _, pps, mb = timed(lambda m=m: run_baseline(scene, m, fm=fm), n)
        rows.append(dict(method=m, pps=pps, mb=mb))
    if guide is not None:
        from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve

        r = Retriever(guide, fm)
        opt = RetrieveOptions(quality=False)
        _, pps, mb = timed(lambda: retrieve(scene, guide, opt, retriever=r, progress=False), n)
        rows.append(dict(method="bayesfluo", pps=pps, mb=mb))
    return rows


def speed_table(all_rows) -> str:
    out = ["| scene | pixels | method | pixel/s | peak MB | speed / ref |",
           "|---|---|---|---|---|---|"]
    for inst, n, rows in all_rows:
        ref = next((r for r in rows if r["method"] == "bayesfluo"), None)
        ref = ref or next((r for r in rows if r["method"] == "oe"), rows[0])
        for r in rows:
            name = r["method"] + (" (ref)" if r is ref else "")
            out.append(f"| {inst} | {n:,} | {name} | {r['pps']:,.0f} | {r['mb']:.0f} | "
                       f"{r['pps'] / ref['pps']:.3g} |")
    return "\n".join(out)


def agreement(rows: list[dict], scene, true_atmosphere: bool = True) -> str:
    """How baselines compare with bayesfluo's posterior mean on well-identified pixels."""
    by = {r["method"]: r["result"] for r in rows}
    if "bayesfluo" not in by:
        return ""
    b = by["bayesfluo"]
    mean, sd = b["f760_mean"].values, b["f760_sd"].values
    good = ((b["quality_flag"].values == 0) & (scene["ndvi"].values > 0.5) & (sd < 0.3)
            & np.isfinite(mean))
    t = scene["true_f760"].values
    lines = [f"well-identified pixels: {int(good.sum())} (NDVI > 0.5, unflagged, posterior "
             f"sd < 0.3; mean sd {np.mean(sd[good]):.3f}; bayesfluo error/sd: median "
             f"{np.median(np.abs(mean - t)[good] / sd[good]):.2f})"]
    if true_atmosphere:
        from bayesfluo.inference.baselines import fld_retrieve, scene_pixels, sfm_retrieve
        from bayesfluo.inference.baselines.pixels import true_operators
        fm = build_forward_model(scene.attrs["instrument"])
        px1 = scene_pixels(scene, 1, fm)
        ops = true_operators(scene, fm)
        by["ifld, true atmosphere"] = fld_retrieve(scene, "ifld", fm=fm, pixels=px1,
                                                   operators=ops)
        by["sfm, true atmosphere"] = sfm_retrieve(scene, fm=fm, pixels=px1, operators=ops)
    for m in ("ifld", "sfm", "oe", "oe-atmosphere", "ifld, true atmosphere",
              "sfm, true atmosphere"):
        if m not in by:
            continue
        d = by[m]["f760_mean"].values[good] - mean[good]
        z = np.abs(d) / sd[good]
        lines.append(f"  {m:22s} - bayesfluo mean: mean {np.mean(d):+.3f}, median |diff|/sd "
                     f"{np.median(z):.2f}, within 1 sd {np.mean(z <= 1):.0%}; its own error "
                     f"RMSE {np.sqrt(np.mean((by[m]['f760_mean'].values - t)[good] ** 2)):.3f}")
    return "\n".join(lines)


def fmt(v, spec):
    return "—" if v is None or (isinstance(v, float) and not np.isfinite(v)) else format(v, spec)


def table(all_rows: list[tuple[str, float, list[dict]]]) -> str:
    head = ("| scene | SNR | method | F760 RMSE | bias | 90 % coverage | pixel/s | peak MB "
            "| RMSE / ref | speed / ref |\n|---|---|---|---|---|---|---|---|---|---|")
    out = [head]
    for inst, snr, rows in all_rows:
        ref = next((r for r in rows if r["method"] == "bayesfluo"), None)
        ref = ref or next((r for r in rows if r["method"] == "oe"), rows[0])
        for r in rows:
            name = r["method"] + (" (ref)" if r is ref else "")
            out.append(
                f"| {inst} | {snr:g} | {name} | {r['rmse']:.3f} | {r['bias']:+.3f} | "
                f"{fmt(r['coverage'] * 100 if np.isfinite(r['coverage']) else np.nan, '.0f')}"
                f"{'' if not np.isfinite(r['coverage']) else ' %'} | {r['pps']:,.0f} | "
                f"{r['mb']:.0f} | {r['rmse'] / ref['rmse']:.2f} | {r['pps'] / ref['pps']:.3g} |")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="32x32", help="image scenes, NYxNX (default 32x32)")
    ap.add_argument("--flox-steps", type=int, default=128, help="FloX time steps")
    ap.add_argument("--snr-factors", default="0.5,1,2",
                    help="SNR levels as multiples of the instrument's nominal SNR")
    ap.add_argument("--instruments", default="hyplant-fluo-o2a,desis,flox")
    ap.add_argument("--methods", default=",".join(BASELINES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-agreement", dest="agreement", action="store_false",
                    help="skip comparing iFLD, SFM, OE with bayesfluo's posterior mean")
    ap.add_argument("--speed-tile", type=int, default=1,
                    help="also time every method on the nominal scene tiled K x K (1: no; "
                         "4 takes about 7 more minutes on 2 cores)")
    ap.add_argument("--prior-patches", type=int, default=4,
                    help="patches per side of the prior-predictive scene (agreement)")
    ap.add_argument("--out", help="also write the Markdown table here")
    args = ap.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    for m in methods:
        if m not in BASELINES:
            raise SystemExit(f"unknown method {m!r}; choose from {BASELINES}")
    factors = [float(f) for f in args.snr_factors.split(",")]
    all_rows, notes, speed_rows = [], [], []
    t_start = time.perf_counter()
    for inst in args.instruments.split(","):
        fm = build_forward_model(inst)
        size = (args.flox_steps, 1) if inst == "flox" else args.size
        t0 = time.perf_counter()
        clean = simulate_scene(inst, size, seed=args.seed, snr=np.inf, model=fm)
        print(f"# simulated {inst} {dict(clean['radiance'].sizes)} in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)
        guide = None
        if inst in SHIPPED:
            from bayesfluo.inference.guide import load_guide
            from bayesfluo.shipped import resolve_model
            guide = load_guide(resolve_model(SHIPPED[inst]))
        nominal = get_instrument(inst).snr
        for k, f in enumerate(factors):
            snr = nominal * f
            scene = with_noise(clean, snr, args.seed + 1000 + k)
            rows = run_case(inst, scene, methods, fm, guide)
            all_rows.append((inst, snr, rows))
            print(f"# {inst} SNR {snr:g}: " + ", ".join(
                f"{r['method']} {r['rmse']:.3f}" for r in rows), flush=True)
            if args.speed_tile > 1 and f == 1.0:
                big = tiled(scene, args.speed_tile)
                n_big = int(np.prod(big["true_f760"].shape))
                speed_rows.append((inst, n_big, throughput(big, methods, fm, guide)))
                print(f"# {inst} throughput on {n_big} pixels: " + ", ".join(
                    f"{r['method']} {r['pps']:,.0f}/s" for r in speed_rows[-1][2]), flush=True)
            if args.agreement and inst == "hyplant-fluo-o2a" and f == 1.0:
                notes.append(f"{inst}, SNR {snr:g}, simulated scene:\n"
                             + agreement(rows, scene))
                ps = prior_scene(fm, guide.config, args.prior_patches, args.seed + 7)
                prow = run_case(inst, ps, methods, fm, guide)
                all_rows.append((inst + " (model's prior)", 150.0, prow))
                notes.append(f"{inst}, {args.prior_patches ** 2} patches drawn from "
                             "bayesfluo's prior predictive (the model holds exactly):\n"
                             + agreement(prow, ps))
    md = table(all_rows)
    if speed_rows:
        md += ("\n\nThroughput on larger scenes (the nominal-SNR scene tiled "
               f"{args.speed_tile} x {args.speed_tile}):\n\n" + speed_table(speed_rows))
    print()
    print(md)
    for n in notes:
        print()
        print(n)
    print(f"\n# total {time.perf_counter() - t_start:.0f} s; jax {jax.__version__}, "
          f"{jax.devices()[0].platform}")
    if args.out:
        from pathlib import Path

        from bayesfluo.io.atomic import atomic_path
        with atomic_path(Path(args.out)) as tmp:
            Path(tmp).write_text(md + "\n" + "\n\n".join(notes) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
