"""Recompute a shipped guide's held-out world calibration without retraining it.

The calibration (:func:`bayesfluo.inference.train.world_holdout_calibration`: the
``poor_fit`` references and the F760 sd factors) depends on the model's fit check; when
the model changes (for example each pixel's own surface pressure and smile,
``Patch.pixel_offset``) the guide's weights stay valid but its references must be
measured again on the same held-out world scenes (``world_seed`` onwards, never trained
on, apart from the validation seeds). Training runs the same function at its end, so a
retrained guide and a recalibrated one agree.

Usage::

    python benchmarks/recalibrate_guide.py bayesfluo/data/models/hyplant-fluo-o2a
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bayesfluo.inference.guide import load_guide
from bayesfluo.inference.train import TrainConfig, world_holdout_calibration
from bayesfluo.io.atomic import atomic_path

KEYS = ("fit_chi2_quantiles", "fit_chi2_ratio_quantiles", "fit_spike_quantiles",
        "f760_sd_inflation", "f687_sd_inflation")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--dry-run", action="store_true", help="print, do not write")
    a = ap.parse_args()
    guide = load_guide(a.model_dir)
    tc = TrainConfig.from_toml(a.model_dir / "train.toml")
    t0 = time.perf_counter()
    new = world_holdout_calibration(guide, tc)
    print(f"{a.model_dir.name}: held-out world calibration in {time.perf_counter() - t0:.0f} s")
    keys = [k for k in KEYS if k in new]   # F687's only for a window with the O2-B band
    for k in keys:
        print(f"  {k}: {guide.info.get(k)}\n   -> {new[k]}")
    if a.dry_run:
        return
    meta_file = a.model_dir / "model.json"
    meta = json.loads(meta_file.read_text())
    meta["info"].update({k: new[k] for k in keys})
    with atomic_path(meta_file) as tmp:
        Path(tmp).write_text(json.dumps(meta, indent=1))
    print(f"wrote {meta_file}")


if __name__ == "__main__":
    main()
