"""Training: determinism, resume after a kill, divergence stop, data parallelism, the
pre-training simulator and self-supervised fine-tuning."""

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bayesfluo.inference.train as tr
from bayesfluo.inference.guide import load_guide

TINY = dict(width=32, depth=1, patch_size=4, batch_patches=4, n_atmospheres=16,
            warmup_steps=2, checkpoint_every=5)


def _weights(path):
    import equinox as eqx
    g = load_guide(path)
    return [np.asarray(x) for x in jax.tree.leaves(eqx.filter(g.encoder, eqx.is_array))]


def test_same_seed_same_weights_and_resume_after_kill(tmp_path):
    """Two uninterrupted runs agree bit for bit; a run killed (SIGKILL) after a
    checkpoint and started again ends with the same weights."""
    steps = 16
    cfg = dict(TINY, pretrain_steps=steps, seed=3)
    tr.train(tr.TrainConfig(out=str(tmp_path / "a"), **cfg), progress=False)
    tr.train(tr.TrainConfig(out=str(tmp_path / "b"), **cfg), progress=False)
    for u, v in zip(_weights(tmp_path / "a"), _weights(tmp_path / "b"), strict=True):
        np.testing.assert_array_equal(u, v)

    out = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import bayesfluo.inference.train as tr, time
        orig = tr._save_checkpoint
        def slow(path, state):          # a checkpoint, then a pause: the kill lands mid-run
            orig(path, state)
            time.sleep(3.0)
        tr._save_checkpoint = slow
        tr.train(tr.TrainConfig(out={str(out)!r}, **{cfg!r}), progress=False)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
    ckpt = out / "checkpoint.pkl"
    t0 = time.time()
    while not ckpt.exists():
        assert time.time() - t0 < 300, "no checkpoint appeared"
        assert proc.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with open(ckpt, "rb") as f:
        step = pickle.load(f)["step"]
    assert 0 < step < steps
    assert not (out / "model.json").exists()
    tr.train(tr.TrainConfig(out=str(out), **cfg), progress=False)
    for u, v in zip(_weights(tmp_path / "a"), _weights(out), strict=True):
        np.testing.assert_array_equal(u, v)
    hist = (out / "history.csv").read_text().splitlines()
    assert len(hist) == steps + 1  # header + one line per step, none repeated


def test_changed_configuration_refuses_old_checkpoint(tmp_path):
    tr.train(tr.TrainConfig(out=str(tmp_path), pretrain_steps=5, **TINY), progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        tr.train(tr.TrainConfig(out=str(tmp_path), pretrain_steps=5, seed=9, **TINY),
                 progress=False)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    """A NaN loss at step 7 stops the run with a message naming the step and the last
    good checkpoint (step 5), which stays on disk."""
    real_loop = tr._loop
    calls = {"i": 0}

    def loop(phase, step_fn, *args, **kw):
        def nan_late(p, o, k):
            calls["i"] += 1
            out = step_fn(p, o, k)
            return out if calls["i"] < 8 else (out[0], out[1], jnp.nan, out[3])
        return real_loop(phase, nan_late, *args, **kw)

    monkeypatch.setattr(tr, "_loop", loop)
    with pytest.raises(tr.TrainingDiverged, match=r"step 7.*checkpoint.*step 5"):
        tr.train(tr.TrainConfig(out=str(tmp_path), pretrain_steps=20, **TINY),
                 progress=False)
    with open(tmp_path / "checkpoint.pkl", "rb") as f:
        assert pickle.load(f)["step"] == 5
    assert not (tmp_path / "model.json").exists()


# 68 s (two training processes); the GPU/multi-device path, run with -m slow
@pytest.mark.slow
def test_two_devices_match_one(tmp_path):
    """Data parallelism over two forced host devices gives the one-device losses."""
    script = textwrap.dedent("""
        import os, sys, json
        os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
        import jax
        import bayesfluo.inference.train as tr
        assert len(jax.devices()) == 2
        out, dev = sys.argv[1], int(sys.argv[2])
        tr.train(tr.TrainConfig(out=out, pretrain_steps=6, devices=dev, width=32, depth=1,
                                patch_size=4, batch_patches=4, n_atmospheres=16,
                                warmup_steps=2, checkpoint_every=5), progress=False)
    """)
    for dev in (1, 2):
        subprocess.run([sys.executable, "-c", script, str(tmp_path / f"d{dev}"), str(dev)],
                       check=True, env=os.environ.copy())
    loss = {d: [float(r.split(",")[2]) for r in
                (tmp_path / f"d{d}" / "history.csv").read_text().splitlines()[1:]]
            for d in (1, 2)}
    np.testing.assert_allclose(loss[2], loss[1], rtol=1e-4)


def test_simulator_draws_the_model_prior(model_o2a):
    """The pre-training simulator's truth is the model's prior: moments of the
    reflectance coordinates and SIF amplitudes match the model's prior predictive (5
    standard errors; seeded)."""
    from bayesfluo.model import SifModel
    model = SifModel(model_o2a)
    tc = tr.TrainConfig(**TINY)
    pool = tr.build_pool(model, tc, jax.random.PRNGKey(0), 8, progress=False)
    b = tr.simulate_batch(model, tc, pool, jax.random.PRNGKey(1), 400, 100.0)
    u = np.asarray(b.u_true).reshape(-1, b.u_true.shape[-1])
    n = u.shape[0]
    np.testing.assert_array_less(np.abs(u[:, :-1].mean(0)), 5 / np.sqrt(n))
    np.testing.assert_allclose(u[:, :-1].std(0), 1.0, atol=5 * np.sqrt(0.5 / n))
    raw = np.asarray(jax.nn.softplus(u[:, -1] / 0.1) * 0.1)
    # half-normal(1): mean sqrt(2/pi)
    np.testing.assert_allclose(raw.mean(), np.sqrt(2 / np.pi), atol=5 * 0.6 / np.sqrt(n))
    # radiance consistent with the model given the same latents
    assert np.all(np.isfinite(np.asarray(b.patches.radiance)))
    assert b.patches.radiance.shape == (400, 16, model_o2a.n_bands)


def test_toml_configuration(tmp_path):
    f = tmp_path / "t.toml"
    f.write_text('instrument = "desis"\nout = "m"\npretrain_steps = 7\n'
                 '[model]\nshift_sd = 0.2\n[ranges]\nsza_deg = [20, 40]\n')
    tc = tr.TrainConfig.from_toml(f)
    assert tc.out == str(tmp_path / "m") and tc.model.shift_sd == 0.2
    assert tc.ranges["sza_deg"] == (20, 40) and tc.ranges["snr"][0] > 0
    f.write_text("pretrain_step = 7\n")
    with pytest.raises(ValueError, match="unknown key"):
        tr.TrainConfig.from_toml(f)
    f.write_text("pretrain_steps = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        tr.TrainConfig.from_toml(f)


@pytest.mark.slow
def test_finetuning_recovers_a_shift_outside_pretraining(tmp_path):
    """A scene whose sensor shift (0.25 nm) is five prior sd outside the pre-training
    range: the shipped guide misses it; 150 SVI steps on the scene recover it."""
    from bayesfluo.io import read_scene, write_dataset
    from bayesfluo.retrieval.api import RetrieveOptions, retrieve
    from bayesfluo.scene.simulate import simulate_scene
    from bayesfluo.shipped import resolve_model

    scene = simulate_scene("hyplant-fluo-o2a", (16, 16), seed=5, spectral_shift_nm=0.25)
    truth = float(scene["true_spectral_shift"].mean())
    write_dataset(scene, tmp_path / "s.nc")
    base = load_guide(resolve_model("hyplant-fluo-o2a"))
    opt = RetrieveOptions(quality=False)
    before = float(retrieve(scene, base, opt, progress=False)["spectral_shift_mean"].mean())
    tc = tr.TrainConfig(out=str(tmp_path / "ft"), start_from=str(resolve_model(
        "hyplant-fluo-o2a")), pretrain_steps=0, scenes=(str(tmp_path / "s.nc"),),
        finetune_steps=150, finetune_batch_patches=4, checkpoint_every=50)
    g = tr.train(tc, progress=False, scenes=[read_scene(tmp_path / "s.nc")])
    after = float(retrieve(scene, g, opt, progress=False)["spectral_shift_mean"].mean())
    assert abs(after - truth) < 0.5 * abs(before - truth), (truth, before, after)
    assert abs(after - truth) < 0.05, (truth, before, after)


def test_finetuning_needs_its_scenes_read(tmp_path):
    """Training does not read files (the inference layer does no I/O): fine-tuning without
    the scenes of ``tc.scenes`` given as datasets stops before any work, naming the fix."""
    tc = tr.TrainConfig(out=str(tmp_path), pretrain_steps=0, scenes=("s.nc",),
                        finetune_steps=1, **TINY)
    with pytest.raises(ValueError, match="read_scene"):
        tr.train(tc, progress=False)
    assert not any(tmp_path.iterdir())


def test_nuisance_latents_enter_the_pool_operators(model_o2a):
    """``[nuisance]`` ranges replace the model's fixed Angstrom exponent and diffuse-path
    factor in the pool's band operators: a range of one value gives the operators of a
    model whose fixed values are that value (built through ``SifModel.operator``, not
    the pool's path); a range gives values in between; bad tables are refused."""
    from bayesfluo.model import ModelConfig, SifModel
    model = SifModel(model_o2a)
    key = jax.random.PRNGKey(4)
    tc = tr.TrainConfig(**TINY, nuisance={"angstrom": [1.6, 1.6], "diffuse_path": [1.7, 1.7]})
    pool = tr.build_pool(model, tc, key, 5, progress=False)
    other = SifModel(model_o2a, ModelConfig(fixed={"aot550": 0.12, "diffuse_path": 1.7,
                                                   "angstrom": 1.6, "spectral_shift": 0.0,
                                                   "fwhm_scale": 1.0}))
    ref = tr.build_pool(other, tr.TrainConfig(**TINY), key, 5, progress=False)
    base = tr.build_pool(model, tr.TrainConfig(**TINY), key, 5, progress=False)
    a, b, c = (np.asarray(p.atmospheres.operator.reflected) for p in (pool, ref, base))
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert np.max(np.abs(a - c) / np.abs(c).max()) > 1e-3       # the values matter
    # geometry and shared latents are the same draws: only the operators change
    np.testing.assert_array_equal(np.asarray(pool.atmospheres.z), np.asarray(base.atmospheres.z))
    with pytest.raises(ValueError, match="only"):
        tr.TrainConfig(**TINY, nuisance={"aot550": [0.1, 0.2]})
    with pytest.raises(ValueError, match="free latent"):
        tr.TrainConfig(**TINY, model=ModelConfig(free=("surface_pressure", "diffuse_path")),
                       nuisance={"diffuse_path": [1.3, 1.7]})
    with pytest.raises(ValueError, match="lo <= hi"):
        tr.TrainConfig(**TINY, nuisance={"angstrom": [1.6, 1.0]})
