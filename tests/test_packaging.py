"""The package as users install it: a wheel (not an editable install) carries the shipped
models and the solar and O2 data, and once installed, away from the source checkout, the
command line simulates a scene and retrieves it with the shipped model.

The wheel is built without build isolation (setuptools from the dev extras) from a copy
of the checkout, so the checkout gets no ``build/`` folder; it is installed with
``--target`` into a temporary folder that ``PYTHONPATH`` puts ahead of the checkout's
editable install, and the commands run from an empty folder. ``.ci/run`` does the same
with a fresh virtual environment and every dependency.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "bayesfluo"

def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 600
         ) -> subprocess.CompletedProcess:
    """Run ``cmd``; fail the test with its output when it exits non-zero."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} exited {proc.returncode}\n"
                    f"--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (pyproject.toml, README.md, bayesfluo/)."""
    pytest.importorskip("setuptools", reason="the dev extras bring setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    shutil.copytree(PKG, src / "bayesfluo",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--no-cache-dir", "-q", "-w", str(out), str(src)], cwd=tmp)
    (whl,) = out.glob("bayesfluo-*.whl")
    return whl


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> tuple[Path, dict]:
    """The wheel installed into a folder of its own; the environment that imports it."""
    site = tmp_path_factory.mktemp("site")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
          "--target", str(site), str(wheel)], cwd=site)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONPATH"] = str(site)
    env["PYTHONNOUSERSITE"] = "1"
    return site, env


def test_wheel_carries_models_and_data(wheel):
    """Every shipped model (model.json, weights.eqx, its card and train.toml) and the solar
    and O2 data are in the wheel, under the paths the package looks them up at."""
    names = set(zipfile.ZipFile(wheel).namelist())
    models = sorted(p.parent.name for p in (PKG / "data" / "models").glob("*/model.json"))
    assert "hyplant-fluo-o2a" in models
    for m in models:
        for f in ("model.json", "weights.eqx", "README.md", "train.toml"):
            assert f"bayesfluo/data/models/{m}/{f}" in names, (m, f)
    for p in [*(PKG / "data" / "solar").glob("*.csv.gz"), *(PKG / "data" / "o2").glob("*.par")]:
        assert f"bayesfluo/data/{p.parent.name}/{p.name}" in names, p.name
    assert any(n.startswith("bayesfluo/data/solar/") for n in names)
    assert any(n.startswith("bayesfluo/data/o2/") for n in names)
    # every module of the source tree is packaged (no package folder without __init__)
    for py in PKG.rglob("*.py"):
        if "__pycache__" not in py.parts:
            assert f"bayesfluo/{py.relative_to(PKG).as_posix()}" in names, py
    assert any(n.endswith("entry_points.txt") for n in names)


# 52 s (building and installing a wheel); `.ci/run` makes the same check with a fresh
# virtual environment after the default tests, so here it runs with -m slow
@pytest.mark.slow
def test_installed_wheel_runs_a_retrieval(installed, tmp_path):
    """From an empty folder, with only the installed wheel on the path: the package is the
    installed one, its registry finds the shipped models, and the command line simulates an
    8x8 HyPlant scene and retrieves it with the shipped guide (finite F760 means)."""
    import numpy as np
    import xarray as xr

    site, env = installed
    work = tmp_path / "empty"
    work.mkdir()
    py = [sys.executable]
    where = _run(py + ["-c", "import bayesfluo, bayesfluo.shipped as s; "
                       "print(bayesfluo.__file__); print(','.join(s.shipped_models()))"],
                 cwd=work, env=env).stdout.split()
    assert Path(where[0]).resolve().is_relative_to(site.resolve()), where[0]
    assert "hyplant-fluo-o2a" in where[1].split(",")
    assert "retrieve" in _run(py + ["-m", "bayesfluo.cli", "--help"], cwd=work, env=env).stdout
    script = site / "bin" / "bayesfluo"
    cli = [str(script)] if script.is_file() else py + ["-m", "bayesfluo.cli"]
    _run(cli + ["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "8x8", "--seed",
                "3", "--quiet", "--out", "s.nc"], cwd=work, env=env)
    _run(cli + ["retrieve", "s.nc", "--model", "hyplant-fluo-o2a", "--quiet", "--out",
                "r.nc"], cwd=work, env=env)
    with xr.open_dataset(work / "r.nc", engine="h5netcdf") as r:
        f760 = r["f760_mean"].values
    assert f760.shape == (8, 8)
    assert np.all(np.isfinite(f760))
    assert sorted(p.name for p in work.iterdir()) == ["r.nc", "s.nc"]
