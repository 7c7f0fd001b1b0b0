"""Forward model + gradient throughput, compile time and peak memory; scene simulation time.

Run:  python benchmarks/bench_forward.py            (all cases, about 5 minutes on 2 cores)
      python benchmarks/bench_forward.py --quick    (smaller batches)

Each case runs in its own subprocess so that its peak resident memory is its own.
Cases, HyPlant FLUO O2-A window (273 bands, 0.0025 nm fine grid), value and gradient of a
Gaussian log-likelihood with respect to every latent of the batch:

* ``shared``   pixels that share one atmosphere and sensor (per-pixel reflectance and SIF);
* ``patch64``  64 patches of 64 pixels, one atmosphere per patch, shared sensor;
* ``pixel``    every pixel its own atmosphere (fine-grid work per pixel);
* ``exact``    baseline: the fine-grid route (``radiance_exact``) of the ``pixel`` case.

Ratios are printed against the baseline measured in the same run and against the target of
20,000 pixel evaluations per second.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

TARGET = 20_000.0


def _case(name: str, quick: bool) -> dict:
    import jax
    import jax.numpy as jnp

    from bayesfluo.instruments import get_instrument
    from bayesfluo.physics import (
        AtmosphereParams,
        Geometry,
        SensorParams,
        SifParams,
        band_operator,
        build_forward_model,
        radiance,
        radiance_exact,
        radiance_from_operator,
    )
    from bayesfluo.physics.surface import sif_spectrum

    t0 = time.perf_counter()
    m = build_forward_model("hyplant-fluo-o2a")
    t_build = time.perf_counter() - t0
    a, b = get_instrument("hyplant-fluo-o2a").noise_coefficients()
    key = jax.random.PRNGKey(0)
    geom = Geometry(30.0, 5.0, 30.0, 100.0, 700.0)
    sens = SensorParams(jnp.float32(0.02), jnp.float32(1.02))

    def atm_of(n):
        return AtmosphereParams(jnp.full(n, 1000.0), jnp.full(n, 0.12), jnp.full(n, 1.3),
                                jnp.full(n, 1.5))

    def loglik(pred, obs):
        return -0.5 * jnp.sum((obs - pred) ** 2 / (a * obs + b))

    if name == "shared":
        n = 2048 if quick else 8192
        shape = (n,)

        def f(coef, amp, atm, sens):
            op = band_operator(m, atm, geom, sens)
            pred = jax.vmap(lambda c, s: radiance_from_operator(m, op, c, SifParams(0.0, s)))(
                coef, amp)
            return loglik(pred, obs)

        atm = jax.tree.map(lambda x: x[0], atm_of(1))
    elif name == "patch64":
        p = 16 if quick else 64
        n = p * 64
        shape = (p, 64)

        def f(coef, amp, atm, sens):
            def patch(c, s, at):
                op = band_operator(m, at, geom, sens)
                return jax.vmap(lambda cc, ss: radiance_from_operator(
                    m, op, cc, SifParams(0.0, ss)))(c, s)
            return loglik(jax.vmap(patch)(coef, amp, atm), obs)

        atm = atm_of(p)
    elif name in ("pixel", "exact"):
        n = 64 if quick else 256
        shape = (n,)
        if name == "pixel":
            def one(c, s, at, sens):
                return radiance(m, c, SifParams(0.0, s), at, geom, sens)
        else:
            def one(c, s, at, sens):
                return radiance_exact(m, m.basis_fine @ c, sif_spectrum(m.fine_nm,
                                                                        SifParams(0.0, s)),
                                      at, geom, sens)

        def f(coef, amp, atm, sens):
            return loglik(jax.vmap(one, in_axes=(0, 0, 0, None))(coef, amp, atm, sens), obs)

        atm = atm_of(n)
    else:
        raise ValueError(name)
    coef = 0.4 + 0.02 * jax.random.normal(key, shape + (m.n_basis,))
    amp = jnp.full(shape, 2.0)
    obs = jnp.full(shape + (m.n_bands,), 100.0)
    g = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
    t0 = time.perf_counter()
    jax.block_until_ready(g(coef, amp, atm, sens))
    t_compile = time.perf_counter() - t0
    reps, t0 = 0, time.perf_counter()
    while reps < 3 or time.perf_counter() - t0 < 3.0:
        jax.block_until_ready(g(coef, amp, atm, sens))
        reps += 1
    dt = (time.perf_counter() - t0) / reps
    return {"case": name, "pixels": n, "pixels_per_s": n / dt, "compile_s": t_compile,
            "model_build_s": t_build,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _simulate(instrument: str, size: str) -> dict:
    from bayesfluo.physics import build_forward_model
    from bayesfluo.scene.simulate import simulate_scene

    m = build_forward_model(instrument)
    t0 = time.perf_counter()
    ds = simulate_scene(instrument, size, seed=0, model=m)
    dt = time.perf_counter() - t0
    return {"case": f"simulate {instrument} {size}", "bands": ds.sizes["band"],
            "seconds": dt,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        kind, _, rest = args.one.partition(":")
        if kind == "sim":
            inst, size = rest.split(",")
            print(json.dumps(_simulate(inst, size)))
        else:
            print(json.dumps(_case(kind, args.quick)))
        return

    def run(spec):
        cmd = [sys.executable, __file__, "--one", spec] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    cases = {c: run(c) for c in ("exact", "pixel", "patch64", "shared")}
    base = cases["exact"]["pixels_per_s"]
    print("forward + gradient, HyPlant FLUO O2-A window (273 bands), 2-core CPU, float32")
    print(f"{'case':10s} {'pixels':>7s} {'pixel/s':>10s} {'x exact':>8s} {'x target':>9s} "
          f"{'compile s':>9s} {'peak MB':>8s}")
    for c in cases.values():
        print(f"{c['case']:10s} {c['pixels']:7d} {c['pixels_per_s']:10.0f} "
              f"{c['pixels_per_s'] / base:8.1f} {c['pixels_per_s'] / TARGET:9.2f} "
              f"{c['compile_s']:9.1f} {c['peak_rss_mb']:8.0f}")
    print(f"model build (O2 table from the disk cache): {cases['shared']['model_build_s']:.2f} s")
    size = "32x32" if args.quick else "128x128"
    for inst in ("hyplant-fluo-o2a", "hyplant-fluo"):
        s = run(f"sim:{inst},{size}")
        print(f"{s['case']}: {s['seconds']:.1f} s ({s['bands']} bands), "
              f"peak {s['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    main()
