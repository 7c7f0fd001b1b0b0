"""Residuals of fitted spectra around the O2-A band with and without line mixing and CIA.

Patches are simulated by the model's own forward model with the default O2 table (line
mixing of the A band and O2-O2 / O2-N2 collision-induced absorption), at random sun
zenith (20-60 deg), flight height (300-3000 m) and surface altitude (0-1000 m), with the
instrument's noise model. Each patch is fitted twice, at the mode of its posterior
(:func:`bayesfluo.model.laplace.laplace`, exact operator, Newton steps from least
squares): by the model with the same O2 table, and by the same model whose table lacks
line mixing and CIA (what bayesfluo used before). Prints, per fit, the largest absolute
mean residual over 755-775 nm in units of one spectrum's noise sd (the mean over all
pixels of every patch), the band where it falls, the median reduced chi-square and the
F760 error; ``--plot`` draws the mean residual spectra::

    python benchmarks/o2_spectroscopy_residuals.py [--instrument hyplant-fluo-o2a]
        [--patches 16] [--pixels 64] [--seed 0] [--plot docs/o2_residuals.png]

``--instrument flox``: the top-of-canopy model takes the measured irradiance, so the O2
table does not enter it; what is checked instead is a diurnal series simulated by the
fine-grid simulator (line mixing and CIA in its irradiance and in the few metres between
canopy and sensor) on a non-nominal grid (0.17 nm step, 0.3 nm FWHM, shifted 0.03 nm),
written by ``write_flox_csv``, read back by ``open_scene`` and fitted on its own grid
(``--patches`` blocks of ``--pixels`` scans).
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--instrument", default="hyplant-fluo-o2a")
    p.add_argument("--patches", type=int, default=16)
    p.add_argument("--pixels", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--plot", default=None)
    a = p.parse_args()

    import jax

    from bayesfluo.model import ModelConfig, SifModel
    from bayesfluo.model.laplace import fit_at_mode
    from bayesfluo.physics.forward import build_forward_model
    from bayesfluo.scene.prior import simulate_patch

    t0 = time.perf_counter()
    if a.instrument == "flox":
        _flox(a, t0)
        return
    cfg = ModelConfig()
    models = {
        "with line mixing and CIA": SifModel(build_forward_model(a.instrument), cfg),
        "without (Voigt lines only)": SifModel(
            build_forward_model(a.instrument, line_mixing=False, cia=False), cfg),
    }
    truth_model = models["with line mixing and CIA"]
    centres = np.asarray(truth_model.fm.band_centre_nm)
    rng = np.random.default_rng(a.seed)

    res = {n: [] for n in models}
    chi2 = {n: [] for n in models}
    f760_err = {n: [] for n in models}
    decrement = {n: [] for n in models}
    for i in range(a.patches):
        patch, truth = simulate_patch(
            truth_model, jax.random.PRNGKey(a.seed * 1000 + i), n_pixels=a.pixels,
            sza_deg=float(rng.uniform(20, 60)), height_m=float(rng.uniform(300, 3000)),
            surface_altitude_m=float(rng.uniform(0, 1000)), snr=None)
        for name, model in models.items():
            fit = fit_at_mode(model, patch)
            res[name].append(np.asarray(fit.residual))
            chi2[name].append(np.asarray(fit.chi2))
            decrement[name].append(float(fit.mode.decrement))
            f760_err[name].append(np.asarray(fit.sites["f760"]) - truth["f760"])
    wall = time.perf_counter() - t0

    window = (centres >= 755.0) & (centres <= 775.0)
    n_spec = a.patches * a.pixels
    print(f"{a.instrument}: {a.patches} patches x {a.pixels} pixels simulated with line "
          f"mixing and CIA (the instrument's noise), fitted at the posterior mode; "
          f"{wall:.0f} s")
    print(f"mean residual in one spectrum's noise sd over {n_spec} spectra (its own "
          f"standard error {1 / np.sqrt(n_spec):.3f})")
    means = {}
    for name in models:
        rr = np.concatenate(res[name])
        mean = rr.mean(0)
        means[name] = mean
        err = np.concatenate(f760_err[name])
        j = np.argmax(np.abs(mean) * window)
        print(f"  {name:28s}: max |mean residual| 755-775 nm {np.abs(mean[window]).max():.3f}"
              f" sd at {centres[j]:.2f} nm; bands beyond 1 sd: "
              f"{int(np.sum(np.abs(mean[window]) > 1))} of {int(window.sum())}; median "
              f"chi2 {np.median(np.concatenate(chi2[name])):.2f}; F760 error: mean "
              f"{np.mean(err):+.3f}, rmse {np.sqrt(np.mean(err ** 2)):.3f} mW m-2 sr-1 nm-1;"
              f" converged {np.mean(np.asarray(decrement[name]) < 0.5):.0%} of patches")
    if a.plot:
        _plot(a.plot, centres, means, a.instrument, n_spec)
        print(f"wrote {a.plot}")


def _flox(a, t0) -> None:
    import tempfile

    from bayesfluo.instruments import get_instrument
    from bayesfluo.io.flox import write_flox_csv
    from bayesfluo.io.readers import open_scene
    from bayesfluo.model import SifModel
    from bayesfluo.model.laplace import fit_at_mode
    from bayesfluo.physics.forward import build_forward_model
    from bayesfluo.scene.bands import model_on_scene_grid, scene_bands
    from bayesfluo.scene.grid import patch_of_pixels
    from bayesfluo.scene.simulate import simulate_scene

    inst = get_instrument("flox")
    nominal = inst.band_centres()
    centres = np.arange(nominal[0] + 0.2, nominal[-1] - 0.2, 0.17) + 0.03
    fm = build_forward_model(inst, band_centre_nm=centres, band_fwhm_nm=0.3)
    n = a.patches * a.pixels
    sim = simulate_scene(inst, (n, 1), seed=a.seed, model=fm)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_flox_csv(sim, f"{tmp}/tower.csv")
        scene = open_scene(path).load()
    model = model_on_scene_grid(SifModel.for_instrument("flox"), scene_bands(scene, "flox"))
    res, f760 = [], []
    for b in range(a.patches):
        rows = np.arange(b * a.pixels, (b + 1) * a.pixels)
        patch = patch_of_pixels(scene, rows, np.zeros(rows.size, int))
        fit = fit_at_mode(model, patch)
        res.append(np.asarray(fit.residual))
        f760.append(np.asarray(fit.sites["f760"]))
    res, f760 = np.concatenate(res), np.concatenate(f760)
    truth = scene["true_f760"].values.ravel()[:n] if "true_f760" in scene else \
        sim["true_f760"].values.ravel()[:n]
    c = np.asarray(model.fm.band_centre_nm)
    window = (c >= 755.0) & (c <= 775.0)
    mean = res.mean(0)
    j = np.argmax(np.abs(mean) * window)
    err = f760 - truth
    print(f"flox: {n} scans of a diurnal series simulated on a {c.size}-band grid (0.17 nm "
          f"step, 0.3 nm FWHM, +0.03 nm), through write_flox_csv and open_scene, fitted at "
          f"the posterior mode on that grid; {time.perf_counter() - t0:.0f} s")
    print(f"mean residual in one spectrum's noise sd (standard error {1 / np.sqrt(n):.3f}): "
          f"max |mean| 755-775 nm {np.abs(mean[window]).max():.3f} at {c[j]:.2f} nm; bands "
          f"beyond 1 sd: {int(np.sum(np.abs(mean[window]) > 1))} of {int(window.sum())}; "
          f"median chi2 {np.median((res ** 2).mean(1)):.2f}; F760 error: mean "
          f"{np.mean(err):+.3f}, rmse {np.sqrt(np.mean(err ** 2)):.3f} mW m-2 sr-1 nm-1")
    if a.plot:
        _plot(a.plot, c, {"top-of-canopy model, own grid": mean}, "flox", n)
        print(f"wrote {a.plot}")


def _plot(path, centres, means, instrument, n_spec):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 3.6), constrained_layout=True)
    for (name, mean), colour in zip(means.items(), ("C0", "C3"), strict=False):
        ax.plot(centres, mean, color=colour, lw=1.2, label=name)
    ax.axhspan(-1, 1, color="0.9", zorder=0, label="within 1 noise sd")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlim(755, 775)
    ax.set_xlabel("wavelength (nm, air)")
    ax.set_ylabel("mean residual / noise sd")
    ax.set_title(f"{instrument}: mean fit residual of {n_spec} spectra simulated with line "
                 "mixing and CIA", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
