"""Self-supervised fine-tuning on a scene outside the pre-training range, before and after.

    python benchmarks/finetune_shift.py [--shift 0.25] [--steps 300]

Simulates a HyPlant FLUO O2-A scene (32 x 32, seed 11) whose sensor spectral shift (nm) is
outside what the shipped guide saw in pre-training (prior sd 0.05 nm); retrieves it with
the shipped guide, fine-tunes the guide on the scene by SVI (no truth used) and retrieves
again. Prints the shift, pressure and F760 errors before and after, and writes
docs/validation/finetune_shift.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def _scores(res, scene):
    good = res["quality_flag"].values & 1 == 0
    t = scene["true_f760"].values[good]
    m = res["f760_mean"].values[good]
    hit = (t >= res["f760_q05"].values[good]) & (t <= res["f760_q95"].values[good])
    return dict(shift=float(np.nanmean(res["spectral_shift_mean"].values)),
                pressure_error=float(np.nanmean(res["surface_pressure_mean"].values
                                                - scene["true_surface_pressure"].values)),
                f760_rmse=float(np.sqrt(np.mean((m - t) ** 2))),
                f760_bias=float(np.mean(m - t)), coverage90=float(hit.mean()),
                chi2=float(np.nanmedian(res["fit_chi2"].values)))


def main() -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bayesfluo.inference.guide import load_guide
    from bayesfluo.inference.train import TrainConfig, train
    from bayesfluo.io import read_scene, write_dataset
    from bayesfluo.retrieval.api import retrieve
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shift", type=float, default=0.25)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--size", default="32x32")
    a = p.parse_args()
    scene = simulate_scene("hyplant-fluo-o2a", a.size, seed=11, spectral_shift_nm=a.shift)
    truth = float(scene["true_spectral_shift"].mean())
    base_dir = resolve_model("hyplant-fluo-o2a")
    base = load_guide(base_dir)
    before = _scores(retrieve(scene, base, progress=False), scene)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_dataset(scene, Path(tmp) / "scene.nc")
        t0 = time.perf_counter()
        tuned = train(TrainConfig(out=str(Path(tmp) / "tuned"), start_from=str(base_dir),
                                  pretrain_steps=0, scenes=(str(path),),
                                  finetune_steps=a.steps, finetune_batch_patches=4,
                                  checkpoint_every=100), progress=True,
                      scenes=[read_scene(path)])
        wall = time.perf_counter() - t0
        hist = np.loadtxt(Path(tmp) / "tuned" / "history.csv", delimiter=",", skiprows=1,
                          usecols=(1, 2))
    after = _scores(retrieve(scene, tuned, progress=False), scene)
    print(f"scene: HyPlant FLUO O2-A {a.size}, true mean spectral shift {truth:.3f} nm; "
          f"{a.steps} SVI steps in {wall:.0f} s")
    print(f"{'':22s} {'before':>10s} {'after':>10s}")
    for k in before:
        print(f"{k:22s} {before[k]:10.4f} {after[k]:10.4f}")
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].plot(hist[:, 0], hist[:, 1], lw=0.8)
    ax[0].set_yscale("symlog")
    ax[0].set_xlabel("SVI step")
    ax[0].set_ylabel("negative ELBO per pixel")
    ax[1].bar(["before", "after"], [before["shift"], after["shift"]], color=["C1", "C2"])
    ax[1].axhline(truth, color="k", ls="--", label="true shift")
    ax[1].set_ylabel("retrieved spectral shift (nm)")
    ax[1].legend()
    fig.tight_layout()
    out = ROOT / "docs" / "validation" / "finetune_shift.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
