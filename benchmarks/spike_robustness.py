"""How a spectral spike (a hot detector element, a glint) moves the guide's retrieval.

    python benchmarks/spike_robustness.py [--model hyplant-fluo-o2a] [--sd 15 40]

On a simulated scene of the model's instrument (20 x 13 pixels, seed 2) three pixels in
three different patches get a spike of ``--sd`` noise standard deviations in three bands,
for sets of bands given by wavelength (continuum, inside the O2-A band, spread over the
window; inside the O2-B band where the window holds it; for the O2-A window these are its
bands 20, 21, 40; 100, 101, 200; 5, 150, 250). Prints per pixel the rise
of the fit's reduced chi-square in units of the spike's own weight (1: the fit ignores the
spike; more: the encoder's mean is pulled by it), the change of the F760 mean in units of
its posterior sd, and whether the pixel is flagged ``poor_fit``.
"""

from __future__ import annotations

import argparse

import numpy as np

HIT = [(3, 4), (10, 7), (15, 1)]
#: spiked bands, nm (the nearest band of the scene to each)
BAND_SETS = {"continuum": [752.28, 752.39, 754.48], "O2-A": [761.08, 761.19, 772.08],
             "spread": [750.63, 766.58, 777.58], "O2-B": [687.0, 687.11, 689.5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hyplant-fluo-o2a")
    p.add_argument("--sd", type=float, nargs="+", default=[15.0, 40.0])
    a = p.parse_args()

    from bayesfluo.inference.guide import load_guide
    from bayesfluo.retrieval.api import QUALITY_FLAGS, RetrieveOptions, Retriever, retrieve
    from bayesfluo.scene.grid import noise_coefficients
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    guide = load_guide(resolve_model(a.model))
    scene = simulate_scene(guide.instrument, (20, 13), seed=2, model=guide.model.fm)
    r = Retriever(guide)
    base = retrieve(scene, guide, RetrieveOptions(), retriever=r, progress=False)
    na, nb = noise_coefficients(scene)
    poor = QUALITY_FLAGS["poor_fit"]
    print(f"model {a.model}; poor_fit threshold "
          f"{float(base.fit_chi2.attrs['poor_fit_threshold']):.2f}; pixels {HIT}")
    print(f"{'spike':>6s} {'bands':20s} {'chi2 rise / weight':>22s} {'dF760 / sd':>22s} "
          f"{'poor_fit':>10s}")
    for sd in a.sd:
        weight = 3 * sd**2 / scene.sizes["band"]
        centres = scene["wavelength"].values
        for name, nm in BAND_SETS.items():
            if min(nm) < centres.min() or max(nm) > centres.max():
                continue
            bands = sorted({int(np.argmin(np.abs(centres - w))) for w in nm})
            name = f"{name} {','.join(map(str, bands))}"
            art = scene.copy(deep=True)
            rad = art["radiance"].values
            for y, x in HIT:
                rad[y, x, bands] += sd * np.sqrt(na * rad[y, x, bands] + nb)
            res = retrieve(art, guide, RetrieveOptions(), retriever=r, progress=False)
            rise = [float(res.fit_chi2[y, x] - base.fit_chi2[y, x]) / weight for y, x in HIT]
            shift = [float((res.f760_mean[y, x] - base.f760_mean[y, x]) / base.f760_sd[y, x])
                     for y, x in HIT]
            flag = [bool(res.quality_flag.values[y, x] & poor) for y, x in HIT]
            print(f"{sd:6.0f} {name:20s} {' '.join(f'{v:6.2f}' for v in rise):>22s} "
                  f"{' '.join(f'{v:6.2f}' for v in shift):>22s} "
                  f"{''.join('y' if f else 'n' for f in flag):>10s}")


if __name__ == "__main__":
    main()
