"""Throughput of whole-scene retrieval with a guide (default: the shipped HyPlant FLUO O2-A).

Prints pixels per second and peak memory, on a scene of the guide's instrument held in memory
(file IO excluded), for
  (a) posterior summaries alone (``RetrieveOptions(quality=False)``),
  (b) with the residual-based quality flag (each pixel's band operator from one expansion
      of the operator over the scene, :mod:`bayesfluo.model.scene_expansion`),
and, measured in the same run on the same pixels, the bare forward pass of the encoder
(:meth:`bayesfluo.inference.guide.Encoder.encode` on features already on the device) and a plain
4-layer, 256-wide MLP: the limits. Each case runs in its own process so its peak memory
(max RSS) is its own. On a shared machine, compare the ratios of one run, not absolute
rates across runs. The header names the device JAX ran on (its default backend: a GPU
where ``bayesfluo[cuda]`` is installed and sees one, ``docs/gpu.md``); chunks follow
``RetrieveOptions``' default for that backend.

XLA CPU settings tried and not adopted (no gain beyond run-to-run noise on a 2-core AMD
EPYC with AVX2, jax 0.12): ``--xla_cpu_experimental_xnn_graph_fusion_mode=
XNN_GRAPH_FUSION_MODE_GREEDY`` (bit-identical outputs, same speed),
``--xla_cpu_experimental_{xnn,ynn,onednn}_fusion_type=LIBRARY_FUSION_TYPE_DOT``,
``--xla_cpu_use_onednn=true``, ``--xla_cpu_use_thunk_runtime=false``.

    python benchmarks/bench_retrieve.py [--size 256] [--repeat 3] [--model hyplant-fluo-o2a]

``--model``: a shipped model's name or a model directory (e.g. the whole-window
``hyplant-fluo``, 1001 bands).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def _case(name: str, size: int, repeat: int, model: str) -> dict:
    import equinox as eqx
    import jax
    import jax.numpy as jnp
    import numpy as np

    from bayesfluo.inference.guide import guide_inputs, load_guide
    from bayesfluo.instruments import get_instrument
    from bayesfluo.retrieval.api import RetrieveOptions, Retriever, retrieve
    from bayesfluo.retrieval.devices import device_summary
    from bayesfluo.scene.grid import PatchGrid
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    guide = load_guide(resolve_model(model))
    tile = simulate_scene(guide.instrument, (64, 64), seed=0)
    reps = size // 64
    scene = tile.copy()
    # tile the simulated 64 x 64 scene to size x size (patches are independent)
    big = {}
    for v in tile.data_vars:
        da = tile[v]
        if da.dims[:2] == ("y", "x"):
            big[v] = (da.dims, np.tile(da.values, (reps, reps) + (1,) * (da.ndim - 2)))
        elif da.dims == ("x",):
            big[v] = (da.dims, np.tile(da.values, reps))
        elif da.dims == ("y",):
            big[v] = (da.dims, np.tile(da.values, reps))
        else:
            big[v] = da
    scene = tile.drop_dims(["y", "x"]).assign(big)
    scene.attrs = tile.attrs
    n_pix = size * size
    r = Retriever(guide)
    if name in ("summaries", "quality", "refined"):
        if name == "refined":
            # Laplace refinement of every patch: ~500x slower than the guide, so measured
            # on the 64 x 64 tile
            scene, n_pix = tile, 64 * 64
            opt = RetrieveOptions(quality=False, refine=True, chunk_pixels=4096)
        else:
            opt = RetrieveOptions(quality=name == "quality")
        retrieve(scene, guide, opt, retriever=r, progress=False)       # compile
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            retrieve(scene, guide, opt, retriever=r, progress=False)
            t.append(time.perf_counter() - t0)
    elif name == "encoder":
        grid = PatchGrid((size, size), guide.patch_size)
        d = guide_inputs(scene, grid, slice(None), r.model, guide.feature_mean,
                         guide.feature_sd, get_instrument(guide.instrument).reference_radiance)
        f, m = jnp.asarray(d.features), jnp.asarray(d.patches.mask)
        chunk = RetrieveOptions().chunk_pixels // guide.n_pixels
        jax.block_until_ready(r.encode(f[:chunk], m[:chunk]))
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for i in range(0, f.shape[0], chunk):
                jax.block_until_ready(r.encode(f[i:i + chunk], m[i:i + chunk]))
            t.append(time.perf_counter() - t0)
    elif name == "mlp4x256":
        mlp = eqx.nn.MLP(guide.feature_mean.size, 16, 256, 4, key=jax.random.PRNGKey(0))
        chunk = RetrieveOptions().chunk_pixels
        f = jax.random.normal(jax.random.PRNGKey(1), (chunk, guide.feature_mean.size))
        fn = jax.jit(jax.vmap(mlp))
        jax.block_until_ready(fn(f))
        t = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(0, n_pix, chunk):
                jax.block_until_ready(fn(f))
            t.append(time.perf_counter() - t0)
    best = min(t)
    return dict(case=name, pixels=n_pix, seconds=best, pixels_per_s=n_pix / best,
                peak_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                device=device_summary())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256, help="scene side (multiple of 64)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--refined", action="store_true",
                   help="also (c): summaries after the Laplace refinement (64 x 64 pixels)")
    p.add_argument("--model", default="hyplant-fluo-o2a",
                   help="shipped model name or model directory")
    p.add_argument("--case", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.case:
        print(json.dumps(_case(a.case, a.size, a.repeat, a.model)))
        return
    rows = []
    cases = ["encoder", "mlp4x256", "summaries", "quality"] + (["refined"] if a.refined else [])
    for case in cases:
        out = subprocess.run([sys.executable, __file__, "--case", case, "--size", str(a.size),
                              "--repeat", str(a.repeat), "--model", a.model], check=True,
                             capture_output=True,
                             text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    base = {r["case"]: r for r in rows}
    bare = base["encoder"]["pixels_per_s"]
    print(f"model {a.model}, {a.size} x {a.size} pixels in memory, best of {a.repeat}")
    devs = {json.dumps(r["device"], sort_keys=True) for r in rows}
    for d in map(json.loads, sorted(devs)):   # one line (each case ran on the same device)
        print(f"device: {d['backend']} ({d['device_kind']}, {d['count']} device(s)), "
              f"{d['cpu_cores']} CPU cores")
    print(f"{'case':44s} {'pixel/s':>10s} {'x bare encoder':>15s} {'peak MB':>8s}")
    names = {"encoder": "bare encoder forward pass (the limit)",
             "mlp4x256": "plain 4-layer 256-wide MLP (reference)",
             "summaries": "(a) retrieve: posterior summaries",
             "quality": "(b) retrieve: summaries + quality flag",
             "refined": "(c) retrieve: Laplace-refined summaries"}
    for r in rows:
        print(f"{names[r['case']]:44s} {r['pixels_per_s']:10,.0f} "
              f"{r['pixels_per_s'] / bare:15.2f} {r['peak_mb']:8.0f}")
    a_rate = base["summaries"]["pixels_per_s"]
    print(f"(a) within {bare / a_rate:.2f}x of the bare pass; a 4-megapixel flight line "
          f"takes {4e6 / a_rate:.0f} s")


if __name__ == "__main__":
    main()
