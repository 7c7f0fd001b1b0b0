"""The device line ``bayesfluo retrieve`` and ``train`` print, and the chunk size by
backend (larger on a GPU; the CPU's unchanged)."""

from __future__ import annotations

import jax
import pytest

from bayesfluo.retrieval.chunk import RetrieveOptions
from bayesfluo.retrieval.devices import default_chunk_pixels, device_line, device_summary


def test_device_summary_is_jax_default_backend():
    s = device_summary()
    assert s["backend"] == jax.default_backend()
    assert s["count"] == len(jax.devices()) >= 1
    assert s["device_kind"] == jax.devices()[0].device_kind
    assert s["cpu_cores"] >= 1


@pytest.mark.parametrize("summary, line", [
    ({"backend": "cpu", "device_kind": "cpu", "count": 1, "cpu_cores": 2},
     "device: cpu (2 cores)"),
    ({"backend": "gpu", "device_kind": "NVIDIA H100 80GB HBM3", "count": 1, "cpu_cores": 16},
     "device: gpu NVIDIA H100 80GB HBM3"),
    ({"backend": "gpu", "device_kind": "NVIDIA A100-SXM4-40GB", "count": 4, "cpu_cores": 32},
     "device: gpu NVIDIA A100-SXM4-40GB x 4"),
])
def test_device_line(summary, line):
    assert device_line(summary) == line


def test_chunk_default_by_backend():
    """8,192 pixels on a CPU (the default before GPUs were considered), 8x on a GPU."""
    assert default_chunk_pixels("cpu") == 8192
    assert default_chunk_pixels("gpu") == 8 * 8192
    if jax.default_backend() == "cpu":
        assert RetrieveOptions().chunk_pixels == 8192
    assert RetrieveOptions(chunk_pixels=128).chunk_pixels == 128


def test_train_prints_the_device_first(tmp_path, monkeypatch, capsys):
    """``bayesfluo train`` names the device before training (training itself stubbed)."""
    from types import SimpleNamespace

    import bayesfluo.inference.train as train_mod
    from bayesfluo.cli import main

    monkeypatch.setattr(train_mod, "train", lambda tc, progress, scenes: SimpleNamespace(
        instrument=tc.instrument, info={"final_loss": 1.0}))
    cfg = tmp_path / "t.toml"
    cfg.write_text('pretrain_steps = 1\n')
    assert main(["train", str(cfg), "--out", str(tmp_path / "m"), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == device_line() and lines[1].startswith("wrote ")


def test_retrieve_prints_the_device_first(tmp_path, monkeypatch, capsys):
    """``bayesfluo retrieve`` names the device before retrieving (the guide and the
    retrieval stubbed: the CLI's output is what is tested)."""
    import bayesfluo.inference.guide
    import bayesfluo.retrieval.api
    from bayesfluo.cli import main

    monkeypatch.setattr(bayesfluo.inference.guide, "load_guide", lambda d: None)
    monkeypatch.setattr(bayesfluo.retrieval.api, "Retriever", lambda g: None)
    monkeypatch.setattr(bayesfluo.retrieval.api, "retrieve_file",
                        lambda scene, model, out, opts, **kw: out)
    assert main(["retrieve", str(tmp_path / "s.nc"), "--model", "hyplant-fluo-o2a", "--out",
                 str(tmp_path / "r.nc"), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == device_line() and lines[1].startswith("wrote ")
