"""How much of the model's misfit on default scenes each per-pixel term removes.

The simulator (``bayesfluo simulate`` at its defaults) varies inside a patch what a patch
model would hold fixed: surface pressure follows the DEM, the spectral shift and FWHM
follow the smile across track, the view zenith follows the column, and the Angstrom
exponent and diffuse-path factor are the scene's own draws. Here each pixel's radiance
through its *true* operator (the simulator's truth, :func:`true_operators`) is compared
with the model's (:meth:`bayesfluo.model.SifModel.pixel_operators`) at the patch's true
state (mean pressure, AOT, spectral shift), for a fixed surface (reflectance 0.4, F760
peak amplitude 1.5), so only the atmosphere-and-sensor structure differs. The model's
terms are switched on one at a time; printed is the mean squared difference in noise
variances (the reduced chi-square the structure alone adds to a perfect fit), over the
left-edge, centre and right-edge 8 x 8 patches of three scenes.

A second column says what the same structure does to F760: each pixel's reflectance
(B-spline coefficients) and SIF amplitude fitted by Gauss-Newton to the simulator's own
noise-free radiance (its fine-grid reflectance and SIF, shapes included) through the
model's operator of that step at the patch's true state; printed is the mean relative
F760 error of the pixels whose true F760 exceeds 0.3 mW m-2 sr-1 nm-1 (through each
pixel's true operator the same fit recovers F760 to 0.5 %: the last row). A structure
that leaves a tiny misfit can still move F760: the misfit is what a patch's 64 pixels
average, the F760 error is what each pixel's fit trades against it.

Usage::

    python benchmarks/model_ablation.py [--width 64] [--seeds 903,904,905]

``--width``: scene columns; the simulator spreads them over the instrument's 384 detector
columns, so a patch of a 64-column scene spans 48 of them (16 columns: half the swath, as
the README's NUTS example).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from bayesfluo.inference.baselines.pixels import true_operators
from bayesfluo.model import ModelConfig, SifModel
from bayesfluo.physics.sensor import noise_variance
from bayesfluo.physics.surface import SifParams, sif_spectrum
from bayesfluo.scene.grid import patch_of_pixels
from bayesfluo.scene.simulate import simulate_scene

INSTRUMENT = "hyplant-fluo-o2a"
# the pixel-offset columns each step keeps (Patch.pixel_offset: pressure, shift, FWHM, vza)
STEPS = [("one operator per patch (the model before)", None, False),
         ("+ each pixel's pressure from its altitude", [0], False),
         ("+ the smile's spectral shift per column", [0, 1], False),
         ("+ the smile's FWHM per column", [0, 1, 2], False),
         ("+ each pixel's view zenith", [0, 1, 2, 3], False),
         ("+ the scene's true Angstrom exponent and diffuse path", [0, 1, 2, 3], True)]


def f760_fit(model: SifModel, ops, radiance, noise, true_f760) -> float:
    """Mean relative F760 error (pixels with true F760 > 0.3) of per-pixel Gauss-Newton
    fits of reflectance coefficients and the SIF amplitude to noise-free ``radiance``
    (P, B) through the per-pixel operators ``ops``."""
    k = model.fm.n_basis
    sd = jnp.sqrt(noise_variance(radiance, *noise))

    def res(x, op, lum, s):
        one = jax.tree.map(lambda a: a[None], op)
        return (model.predict(one, x[None, :k], jnp.zeros(1), x[None, k])[0] - lum) / s

    def fit(op, lum, s):
        x = jnp.concatenate([jnp.full(k, 0.3), jnp.ones(1)])
        for _ in range(10):
            j = jax.jacfwd(res)(x, op, lum, s)
            x = x - jnp.linalg.solve(j.T @ j + 1e-6 * jnp.eye(k + 1),
                                     j.T @ res(x, op, lum, s))
        return x[k]

    if ops.path.ndim == 1:  # one operator for the patch
        ops = jax.tree.map(lambda a: jnp.broadcast_to(a, (radiance.shape[0],) + a.shape), ops)
    far = np.asarray(jax.jit(jax.vmap(fit))(ops, radiance, sd))
    f = far * float(sif_spectrum(760.0, SifParams(0.0, 1.0)))
    veg = true_f760 > 0.3
    return float(np.mean((f[veg] - true_f760[veg]) / true_f760[veg])) if veg.any() else np.nan


def patch_misfit(scene, truth, cols0: int, keep, true_aerosol: bool) -> tuple[float, float]:
    """Mean squared radiance difference (noise variances) of one 8 x 8 patch, and the
    relative F760 error of per-pixel fits through the same operators (:func:`f760_fit`)."""
    nx = scene.sizes["x"]
    rows, cols = np.meshgrid(np.arange(8), np.arange(cols0, cols0 + 8), indexing="ij")
    r, c = rows.ravel(), cols.ravel()
    patch = patch_of_pixels(scene, r, c)
    fixed = dict(ModelConfig().fixed)
    if true_aerosol:
        fixed.update(angstrom=float(scene["true_angstrom"]),
                     diffuse_path=float(scene["true_diffuse_path"]))
    model = SifModel.for_instrument(INSTRUMENT, ModelConfig(fixed=fixed))
    if keep is None:
        patch = patch.replace(pixel_offset=None)
    else:
        off = np.asarray(patch.pixel_offset).copy()
        off[:, [i for i in range(4) if i not in keep]] = 0.0
        patch = patch.replace(pixel_offset=jnp.asarray(off))
    cfg = model.cfg
    p_true = float(np.mean(scene["true_surface_pressure"].values[r, c]))
    aot = float(np.mean(scene["true_aot550"].values[r, c]))
    shift = float(np.mean(np.asarray(scene["true_spectral_shift"].values)[c]))
    z = jnp.asarray([(p_true - float(patch.surface_pressure0)) / cfg.pressure_sd,
                     np.log(aot / cfg.aot550_prior) / cfg.aot550_log_sd,
                     shift / cfg.shift_sd], jnp.float32)
    top = jax.tree.map(lambda v: v[r * nx + c], truth)
    n = r.size
    coeffs, red, far = jnp.full((n, model.fm.n_basis), 0.4), jnp.zeros(n), jnp.full(n, 1.5)
    l_true = model.predict(top, coeffs, red, far)
    ops = model.pixel_operators(patch, z)
    l_model = model.predict(ops, coeffs, red, far)
    var = noise_variance(l_true, patch.noise_a, patch.noise_b)
    noise = (float(patch.noise_a), float(patch.noise_b))
    obs = jnp.asarray(scene["true_radiance"].values[r, c])
    return (float(jnp.mean((l_model - l_true) ** 2 / var)),
            f760_fit(model, ops, obs, noise, scene["true_f760"].values[r, c]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=64, help="scene columns (default 64)")
    ap.add_argument("--seeds", default="903,904,905", help="scene seeds")
    a = ap.parse_args()
    fm = SifModel.for_instrument(INSTRUMENT).fm
    out = {name: [] for name, _, _ in STEPS}
    exact = []
    for seed in (int(s) for s in a.seeds.split(",")):
        scene = simulate_scene(INSTRUMENT, (8, a.width), seed=seed, model=fm)
        truth = true_operators(scene, fm)
        for c0 in (0, a.width // 2 - 4, a.width - 8):
            for name, keep, aer in STEPS:
                out[name].append(patch_misfit(scene, truth, c0, keep, aer))
            sel = np.arange(c0, c0 + 8)[None, :] + a.width * np.arange(8)[:, None]
            idx = sel.ravel()
            model = SifModel.for_instrument(INSTRUMENT)
            exact.append(f760_fit(model, jax.tree.map(lambda v, i=idx: v[i], truth),
                                  jnp.asarray(scene["true_radiance"].values.reshape(
                                      -1, scene.sizes["band"])[idx]),
                                  (float(scene.attrs["noise_a"]),
                                   float(scene.attrs["noise_b"])),
                                  scene["true_f760"].values.ravel()[idx]))
    print(f"{INSTRUMENT}, scenes {a.seeds} of 8 x {a.width} pixels, 3 patches each, at the "
          "true patch state: mean squared radiance misfit (noise variances) and the mean "
          "relative F760 error of per-pixel fits (true F760 > 0.3)")
    for name, v in out.items():
        m, f = np.array(v).T
        print(f"  {name:55s} misfit mean {np.mean(m):6.3f} max {np.max(m):6.3f}   "
              f"F760 {np.nanmean(f):+.3f} (patches {np.nanmin(f):+.3f} to {np.nanmax(f):+.3f})")
    label = "each pixel's own true operator (the fit itself)"
    print(f"  {label:55s} {'':29s}F760 {np.nanmean(exact):+.3f}")


if __name__ == "__main__":
    main()
