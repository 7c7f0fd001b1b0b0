"""``bayesfluo report``: the HTML file is self-contained and every figure loads in a real
browser (Debian's headless Chromium driven by playwright, no browser download), for a
retrieval, the committed validation run and a NUTS DataTree; a broken figure is caught."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import arviz as az
import numpy as np
import pytest
import xarray as xr

ROOT = Path(__file__).resolve().parent.parent
VALIDATION = ROOT / "docs" / "validation" / "hyplant-fluo-o2a_validation.nc"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def render(paths: list[Path]) -> list[dict]:
    """Open each HTML file in headless Chromium; per file: the number of images, those
    that failed to load or decode (naturalWidth 0, ``decode()`` rejected, or a bottom
    row that is not opaque: a truncated image), the section ids, and every request that
    left the file (anything but ``data:`` and ``file:``)."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed at /usr/bin/chromium "
                    "(apt-get install chromium); the browser check needs it")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    out = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            external: list[str] = []
            page.on("request", lambda r: external.append(r.url)
                    if not r.url.startswith(("data:", "file:")) else None)
            for path in paths:
                external.clear()
                page.goto(path.resolve().as_uri())
                page.wait_for_load_state("load")
                info = page.evaluate("""async () => {
                    // Chromium shows a truncated PNG partly (naturalWidth > 0, decode()
                    // resolves) and leaves the rest transparent; the report's figures are
                    // opaque, so the bottom row of a fully decoded one is opaque
                    const whole = (i) => {
                        const c = document.createElement('canvas');
                        c.width = i.naturalWidth; c.height = i.naturalHeight;
                        const g = c.getContext('2d');
                        g.drawImage(i, 0, 0);
                        const d = g.getImageData(0, c.height - 1, c.width, 1).data;
                        for (let k = 3; k < d.length; k += 4) if (d[k] !== 255) return false;
                        return true;
                    };
                    const imgs = Array.from(document.images);
                    const ok = await Promise.all(imgs.map(i => i.decode().then(
                        () => i.naturalWidth > 0 && whole(i), () => false)));
                    return {n: imgs.length,
                            broken: imgs.filter((_, k) => !ok[k]).map(i => i.alt),
                            sections: Array.from(document.querySelectorAll('section'))
                                           .map(s => s.id)};
                }""")
                info["external"] = list(external)
                out.append(info)
        finally:
            browser.close()
    return out


def _meta(text: str, name: str) -> str:
    return re.search(rf'<meta name="bayesfluo-{name}" content="([^"]*)">', text).group(1)


def _self_contained(text: str) -> None:
    assert not re.search(r'<(link|script)[^>]+(href|src)=', text)
    assert not re.search(r'src="(?!data:image/png;base64,)', text)


def _checks(text: str) -> dict[str, str]:
    rows = re.findall(r'<tr class="(pass|fail|info)"><td>([^<]*)</td>', text)
    return {name: status for status, name in rows}


@pytest.fixture(scope="module")
def retrieval_run(tmp_path_factory, model_o2a):
    """A 16 x 16 HyPlant O2-A scene retrieved with the shipped model (20 draws per
    pixel), written as ``bayesfluo retrieve`` writes them."""
    from bayesfluo.inference.guide import load_guide
    from bayesfluo.io import write_dataset
    from bayesfluo.retrieval.api import RetrieveOptions, retrieve
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    d = tmp_path_factory.mktemp("report")
    scene = simulate_scene("hyplant-fluo-o2a", (16, 16), seed=4, model=model_o2a)
    write_dataset(scene, d / "scene.nc")
    res = retrieve(scene, load_guide(resolve_model("hyplant-fluo-o2a")),
                   RetrieveOptions(n_draws=20), progress=False, source="scene.nc",
                   model_name="hyplant-fluo-o2a")
    write_dataset(res, d / "result.nc")
    return d


def _nuts_tree(stuck_chain: bool) -> xr.DataTree:
    """A small DataTree in the layout of ``bayesfluo nuts`` (2 patches x 3 pixels, 4
    chains x 300 draws of independent normals; one chain shifted when ``stuck_chain``)."""
    from bayesfluo.inference.nuts import convergence

    rng = np.random.default_rng(7)
    c, d, p = 4, 300, 6
    f = 1.0 + 0.1 * rng.normal(size=(c, d, p))
    if stuck_chain:
        f[0] += 0.5
    post = {"f760": f, "sif_far_red_raw": f / 2, "reflectance_z": rng.normal(size=(c, d, p, 3)),
            "surface_pressure_z": rng.normal(size=(c, d, 2)),
            "surface_pressure": 990 + 2 * rng.normal(size=(c, d, 2))}
    ss = {"diverging": np.zeros((c, d, 2), bool), "tree_depth": np.full((c, d, 2), 3)}
    dims = {"f760": ["pixel"], "sif_far_red_raw": ["pixel"], "reflectance_z": ["pixel", "basis"],
            "surface_pressure_z": ["patch"], "surface_pressure": ["patch"],
            "diverging": ["patch"], "tree_depth": ["patch"], "radiance": ["pixel", "band"]}
    band = np.linspace(750, 780, 40)
    obs = 100 + rng.normal(size=(p, 40))
    dt = az.from_dict({"posterior": post, "sample_stats": ss,
                       "observed_data": {"radiance": obs}}, dims=dims,
                      coords={"band": band, "pixel": np.arange(p), "patch": np.arange(2)})
    pp = obs[None, None] + rng.normal(size=(c, 10, p, 40))
    dt["posterior_predictive"] = xr.DataTree(xr.Dataset(
        {"radiance": (("chain", "draw", "pixel", "band"), pp)},
        coords={"band": band, "pixel": np.arange(p)}))
    dt["constant_data"] = xr.DataTree(xr.Dataset(
        {"ndvi": ("pixel", np.full(p, 0.7)), "patch_of_pixel": ("pixel", np.repeat([0, 1], 3)),
         "y": ("pixel", np.arange(p)), "x": ("pixel", np.zeros(p, int))}))
    dt["convergence"] = xr.DataTree(convergence(dt))
    return dt


def test_retrieval_report_renders_every_figure(retrieval_run):
    from bayesfluo.report.html import write_report

    out = write_report(retrieval_run / "result.nc", retrieval_run / "report.html")
    text = out.read_text()
    _self_contained(text)
    # scene and model found through the result's attributes: every section of a
    # retrieval with truth, draws, scene and model is there
    sections = _meta(text, "sections").split(",")
    assert sections == ["maps", "fits", "calibration", "training"]
    # maps (2), spectral fit (1), rank ECDF and coverage from the draws (2), training (1)
    assert int(_meta(text, "figures")) == 6
    checks = _checks(text)
    assert any(c.startswith("90 % interval of F760 holds the truth") for c in checks)
    assert "usable pixels flagged poor_fit or out_of_distribution" in checks
    [info] = render([out])
    assert info["n"] == 6 and info["broken"] == [] and info["external"] == []
    assert info["sections"] == ["summary"] + sections


def test_validation_report_via_cli(tmp_path, capsys):
    """The committed NUTS validation run: its checks agree with the summary the
    validation benchmark wrote independently (docs/validation/..._summary.json)."""
    from bayesfluo.cli import main

    out = tmp_path / "validation.html"
    assert main(["report", str(VALIDATION), "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    text = out.read_text()
    _self_contained(text)
    summary = json.loads((VALIDATION.parent / "hyplant-fluo-o2a_summary.json").read_text())
    checks = _checks(text)
    for name, s in summary["sbc"].items():
        row = f"SBC ranks of {name} ({summary['pixels']} pixels, {s['bins']} bins)"
        assert checks[row] == ("pass" if s["passed"] else "fail"), row
    for level, s in summary["coverage_f760"].items():
        row = f"{float(level):.0%} interval of F760 holds the truth"
        assert checks[row] == ("pass" if s["passed"] else "fail"), row
        assert f"<td>{row}</td><td>{s['observed']:.1%}</td>" in text
    pm = summary["patch_mean_f760"]
    row = f"90 % interval of the patch-mean F760 holds the truth ({pm['n']} patches)"
    assert checks[row] == ("pass" if pm["coverage"]["0.90"]["passed"] else "fail")
    assert f"<td>{row}</td><td>{pm['coverage']['0.90']['observed']:.1%}</td>" in text
    div = summary["convergence"]["divergences"]
    assert checks["divergent transitions"] == ("pass" if div == 0 else "fail")
    assert f"<td>divergent transitions</td><td>{div}</td>" in text
    assert _meta(text, "sections") == "nuts,calibration"
    [info] = render([out])
    assert info["n"] == int(_meta(text, "figures")) == 4
    assert info["broken"] == [] and info["external"] == []


def test_nuts_report_flags_a_stuck_chain(tmp_path):
    from bayesfluo.io import write_datatree
    from bayesfluo.report.html import write_report

    paths = []
    for stuck in (False, True):
        write_datatree(_nuts_tree(stuck), tmp_path / f"nuts{stuck}.nc")
        paths.append(write_report(tmp_path / f"nuts{stuck}.nc"))
    good, bad = (p.read_text() for p in paths)
    assert _checks(good)["split R-hat of F760"] == "pass"
    assert _checks(bad)["split R-hat of F760"] == "fail"
    for text in (good, bad):
        _self_contained(text)
        assert _meta(text, "sections") == "fits,nuts"
    infos = render(paths)
    for info, text in zip(infos, (good, bad), strict=True):
        # convergence histograms, 3 trace/rank plots of F760, 1 of the patch pressure,
        # the posterior-predictive residuals
        assert info["n"] == int(_meta(text, "figures")) == 6
        assert info["broken"] == [] and info["external"] == []


def test_broken_figure_is_detected(tmp_path):
    """The browser check fails on a truncated image and on a corrupted one."""
    from bayesfluo.io import write_datatree
    from bayesfluo.report.html import write_report

    write_datatree(_nuts_tree(False), tmp_path / "nuts.nc")
    text = write_report(tmp_path / "nuts.nc").read_text()
    imgs = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(imgs) >= 2
    truncated = text.replace(imgs[0], imgs[0][: len(imgs[0]) // 3])
    raw = bytearray(base64.b64decode(imgs[1]))
    raw[8:40] = bytes(32)                     # overwrite the PNG header chunk
    corrupt = text.replace(imgs[1], base64.b64encode(bytes(raw)).decode())
    (tmp_path / "a.html").write_text(truncated)
    (tmp_path / "b.html").write_text(corrupt)
    a, b = render([tmp_path / "a.html", tmp_path / "b.html"])
    assert len(a["broken"]) == 1 and len(b["broken"]) == 1
    assert a["n"] == b["n"] == len(imgs)


def test_report_refuses_other_files(tmp_path, capsys):
    from bayesfluo.cli import main
    from bayesfluo.report.html import run_kind

    xr.Dataset({"radiance": ("band", np.ones(3))}).to_netcdf(tmp_path / "x.nc")
    with pytest.raises(ValueError, match="not a bayesfluo run"):
        run_kind(xr.open_dataset(tmp_path / "x.nc"))
    assert main(["report", str(tmp_path / "x.nc")]) == 2
    assert "not a bayesfluo run" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing.nc")]) == 2
    assert not (tmp_path / "x.html").exists()
