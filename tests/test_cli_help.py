"""The command line as a user meets it: --version, help with defaults, errors in the
command line's terms, one-line errors for outputs that cannot be written, the flag
summary after a retrieval, the README's own commands and links."""

import argparse
import os
import re
import tomllib
from pathlib import Path

import pytest
import xarray as xr

import bayesfluo
from bayesfluo.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    p = build_parser()
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"bayesfluo {bayesfluo.__version__}"


def test_every_option_has_help_showing_its_default():
    def compact(text):   # help is wrapped, also at hyphens: compare without spaces
        return re.sub(r"\s+", "", text)

    for name, parser in _subcommands().items():
        text = compact(parser.format_help())
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            d = action.default
            if d is not None and d is not False:
                assert compact(f"(default: {d})") in text, \
                    f"{name} {action.option_strings[0]} does not show its default {d!r}"
    helps = {n: compact(p.format_help()) for n, p in _subcommands().items()}
    for want in ("--sizeSIZENYxNX", "(default:128x128)", "--seedSEEDrandom", "(default:0)"):
        assert want in helps["simulate"]
    for want in ("--warmupWARMUPwarm-upiterationsperchain(default:500)",
                 "--samplesSAMPLESdrawskeptperchain(default:500)",
                 "--chainsCHAINSindependentchains(default:4)"):
        assert want in helps["nuts"]


def test_readme_flox_command_works(tmp_path, capsys):
    """``bayesfluo simulate --instrument flox --size 200`` (the README's command) failed:
    'size must look like 128x128'. A single number is N time steps for a tower (the
    README's 200; 24 here to be quick)."""
    out = tmp_path / "flox.nc"
    assert main(["simulate", "--instrument", "flox", "--size", "24", "--quiet", "--out",
                 str(out)]) == 0
    with xr.open_dataset(out) as ds:
        assert ds["radiance"].dims == ("time", "band") and ds.sizes["time"] == 24
    assert "flox --size 200" in (ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def scene():
    from bayesfluo.scene.simulate import simulate_scene
    s = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=1, progress=False)
    return s[[v for v in s.data_vars if not v.startswith("true_")]]


def test_reader_errors_name_the_command_line_options(tmp_path, scene, capsys):
    """The readers' advice ``pass instrument=...`` / ``geometry={'sza': ...}`` (Python)
    reaches a command-line user as ``--instrument`` / ``--geometry sza=...``."""
    from bayesfluo.io import write_envi
    write_envi(scene, tmp_path / "f.img")
    hdr = (tmp_path / "f.hdr").read_text().splitlines()
    out = tmp_path / "r.nc"
    for drop, want, python in (("bayesfluo instrument", "--instrument", "instrument="),
                               ("sun zenith", "--geometry sza=...", "geometry={")):
        (tmp_path / "f.hdr").write_text("\n".join(line for line in hdr
                                                  if not line.startswith(drop)) + "\n")
        assert main(["retrieve", str(tmp_path / "f.hdr"), "--model", "hyplant-fluo-o2a",
                     "--out", str(out), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert want in err and python not in err and "open_scene" not in err, err
        assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_output_that_cannot_be_written_is_one_line_exit_1(tmp_path, scene, capsys):
    """An output under a regular file (not a folder): before, a raw OSError traceback;
    now one line naming the output and the OS's reason, exit code 1 (for simulate, and
    for retrieve before any work)."""
    from bayesfluo.io import write_dataset
    path = write_dataset(scene, tmp_path / "scene.nc")
    (tmp_path / "afile").write_text("")
    for args in (["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "2x2",
                  "--quiet"],
                 ["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--quiet"]):
        out = tmp_path / "afile" / "out.nc"
        assert main(args + ["--out", str(out)]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert err.startswith(f"bayesfluo {args[0]}: error: cannot write {out}: "), err


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_read_only_folder_is_one_line_exit_1(tmp_path, scene, capsys):
    from bayesfluo.io import write_dataset
    path = write_dataset(scene, tmp_path / "scene.nc")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for args in (["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "2x2",
                      "--quiet"],
                     ["retrieve", str(path), "--model", "hyplant-fluo-o2a", "--quiet"]):
            assert main(args + ["--out", str(ro / "out.nc")]) == 1
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1
            assert f"cannot write {ro / 'out.nc'}: Permission denied" in err
    finally:
        ro.chmod(0o755)


def test_requires_python_312():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["requires-python"] == ">=3.12"


def test_readme_links_stay_inside_the_repository():
    """Every relative link or image of the README resolves to a file of the repository;
    no path outside it (``../``, the development folder ``shared/``) is referred to."""
    text = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    assert targets
    for t in targets:
        if re.match(r"[a-z]+:", t) or t.startswith("#"):
            continue
        p = (ROOT / t.split("#")[0]).resolve()
        assert ROOT in p.parents and p.exists(), t
    assert not re.search(r"(^|[\s`(])(\.\./|shared/)", text)


def test_flox_csv_written_by_simulate_feeds_baseline(tmp_path, capsys):
    """`simulate --out x.csv` writes a FloX table (not netCDF under a .csv name), and
    `baseline` reads it (`nuts` on such a table: tests/test_flox_cli.py's fixture); an
    image instrument cannot go to CSV."""
    from bayesfluo.cli import main
    csv = tmp_path / "t.csv"
    assert main(["simulate", "--instrument", "flox", "--size", "6", "--seed", "1",
                 "--out", str(csv), "--quiet"]) == 0
    assert csv.read_bytes()[:1] != b"\x89"            # not an HDF5 file
    assert main(["baseline", str(csv), "--out", str(tmp_path / "b.nc")]) == 0
    assert main(["simulate", "--instrument", "hyplant-fluo-o2a", "--size", "4x4",
                 "--out", str(tmp_path / "img.csv"), "--quiet"]) == 2
    assert "use .nc or .zarr" in capsys.readouterr().err
