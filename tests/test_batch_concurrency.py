"""Two batches into one folder: each output is written under its lock, a run never removes
another live run's temporaries, and leftovers of dead runs are cleaned up."""

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from bayesfluo.io import write_dataset
from bayesfluo.retrieval.api import RetrieveOptions, retrieve_file
from bayesfluo.retrieval.batch import run_batch
from bayesfluo.retrieval.streaming import temporary_tag

OPTS = RetrieveOptions(quality=False)
NAMES = ("s1", "s2", "s3")


@pytest.fixture(scope="module")
def scenes(tmp_path_factory, model_o2a):
    """Three tiny scenes (8 x 8, different radiance)."""
    from bayesfluo.scene.simulate import simulate_scene
    d = tmp_path_factory.mktemp("scenes")
    base = simulate_scene("hyplant-fluo-o2a", (8, 8), seed=5, model=model_o2a,
                          progress=False)
    base = base[[v for v in base.data_vars if not v.startswith("true_")]]
    for i, n in enumerate(NAMES):
        s = base.copy(deep=True)
        s["radiance"] = s["radiance"] * np.float32(1.0 + 0.01 * i)
        write_dataset(s, d / f"{n}.nc")
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory, scenes, model_dir, retriever):
    """Each scene retrieved alone."""
    d = tmp_path_factory.mktemp("reference")
    for n in NAMES:
        retrieve_file(scenes / f"{n}.nc", model_dir, d / f"{n}.nc", OPTS, progress=False,
                      retriever=retriever)
    return d


def _same(a: Path, b: Path):
    with xr.open_dataset(a) as x, xr.open_dataset(b) as y:
        for k in x.data_vars:
            np.testing.assert_array_equal(x[k].values, y[k].values, err_msg=k)


# A second process that writes s1.nc the way a batch does: it holds s1.nc's lock, has
# its own (tagged) temporary beside it, and finishes only once the batch under test has
# written s2.nc and s3.nc (so that batch meets s1.nc locked, goes on, and has to wait).
# It exits 3 if its temporary was removed under it.
_HOLDER = textwrap.dedent("""
    import shutil, sys, time
    from pathlib import Path
    from bayesfluo.retrieval.streaming import lock_output, temporary_tag, unlock_output
    out, staged = Path(sys.argv[1]), Path(sys.argv[2])
    fd = lock_output(out / "s1.nc")
    assert fd is not None
    tmp = out / f".s1.nc.{temporary_tag()}.abcd.zarr.tmp"
    tmp.mkdir()
    (tmp / "part").write_bytes(b"being written")
    print("locked", flush=True)
    t0 = time.time()
    while not ((out / "s2.nc").exists() and (out / "s3.nc").exists()):
        if time.time() - t0 > 120:
            sys.exit(4)
        time.sleep(0.05)
    time.sleep(0.5)   # the batch is now waiting for s1.nc
    if not (tmp / "part").exists():
        sys.exit(3)
    shutil.copy(staged, out / ".s1.nc.staged")
    (out / ".s1.nc.staged").replace(out / "s1.nc")
    shutil.rmtree(tmp)
    unlock_output(out / "s1.nc", fd)
""")


def test_batch_leaves_an_output_another_run_writes_and_waits_for_it(tmp_path, scenes,
                                                                    reference, model_dir,
                                                                    retriever):
    """Before: a second batch removed the first's temporary of an output it was writing
    (the first then failed). Now it goes on with the other outputs, waits for the locked
    one at the end and takes it as done; both end with every output complete and nothing
    else in the folder."""
    out = tmp_path / "res"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(out),
                               str(reference / "s1.nc")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        rep = run_batch([str(scenes / "*.nc")], out, model_dir, OPTS, retriever=retriever,
                        progress=False, wait_s=120)
        assert holder.wait(timeout=60) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
    assert rep.ok, rep.summary()
    assert sorted(p.name for p in rep.done) == ["s2.nc", "s3.nc"]
    assert [p.name for p in rep.skipped] == ["s1.nc"]
    assert sorted(p.name for p in out.iterdir()) == ["s1.nc", "s2.nc", "s3.nc"]
    for n in NAMES:
        _same(reference / f"{n}.nc", out / f"{n}.nc")
    # the flags of what this run wrote, in one line
    assert "flags: 0 masked_input" in rep.summary() and "of 128 pixels" in rep.summary()


def test_a_run_that_gives_up_waiting_reports_the_busy_output(tmp_path, scenes, model_dir,
                                                             retriever):
    from bayesfluo.retrieval.streaming import lock_output, unlock_output
    out = tmp_path / "res"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, time
        from pathlib import Path
        from bayesfluo.retrieval.streaming import lock_output
        fd = lock_output(Path(sys.argv[1]))
        print("locked", flush=True)
        time.sleep(60)
    """), str(out / "s1.nc")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_output(out / "s1.nc") is None
        rep = run_batch([str(scenes / "s1.nc")], out, model_dir, OPTS, retriever=retriever,
                        progress=False, wait_s=0.5)
        assert not rep.ok and "still being written by another run" in rep.summary()
        # a single-file run refuses the busy output, naming who writes it
        from bayesfluo.retrieval.streaming import OutputBusyError
        with pytest.raises(OutputBusyError, match=f"process {holder.pid}"):
            retrieve_file(scenes / "s1.nc", model_dir, out / "s1.nc", OPTS, progress=False,
                          retriever=retriever)
    finally:
        holder.kill()
        holder.wait()
    fd = lock_output(out / "s1.nc")     # released by the kernel when the holder died
    assert fd is not None
    unlock_output(out / "s1.nc", fd)
    assert not (out / "s1.nc").exists() and list(out.iterdir()) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_stale_temporaries_of_dead_runs_are_removed_live_ones_kept(tmp_path, scenes,
                                                                  model_dir):
    """A run killed just after renaming its output leaves its store
    (``.s1.nc.pid<N>@<host>.*.zarr.tmp/``) and its lock file: a later run removes them,
    though the output is done, and keeps the temporaries of a live process and of
    another machine."""
    out = tmp_path / "res"
    out.mkdir()
    for n in ("s1", "s3"):
        (out / f"{n}.nc").write_bytes(b"done")            # finished outputs
    host = temporary_tag().split("@", 1)[1]
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        dead = out / f".s1.nc.pid{_dead_pid()}@{host}.k1l2.zarr.tmp"
        live = out / f".s2.nc.pid{sleeper.pid}@{host}.m3n4.zarr.tmp"
        remote = out / f".s1.nc.pid{_dead_pid()}@another-machine.o5p6.zarr.tmp"
        untagged = out / ".s3.nc.q7r8s9.tmp"                 # an older run's, no owner
        for d in (dead, live, remote):
            d.mkdir()
            (d / ".zgroup").write_text("{}")
        untagged.write_bytes(b"partial")
        (out / ".s1.nc.lock").write_text("pid1@gone\n")   # nobody holds it
        (out / ".notes.lock").write_text("someone else's")  # not bayesfluo's
        rep = run_batch([str(scenes / "s1.nc"), str(scenes / "s3.nc")], out, model_dir,
                        OPTS, progress=False)
        assert rep.ok and len(rep.skipped) == 2
        left = sorted(p.name for p in out.iterdir())
        assert left == sorted(["s1.nc", "s3.nc", live.name, remote.name, ".notes.lock"])
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.slow
def test_two_cli_batches_at_once_into_one_folder(tmp_path, scenes, reference):
    """Two real ``bayesfluo retrieve 'scenes/*.nc' --out res/`` processes, the second
    started while the first holds a lock: both exit 0, every output complete and equal to
    a lone retrieval, nothing else left (about 40 s on 2 cores)."""
    out = tmp_path / "res"
    cmd = [sys.executable, "-m", "bayesfluo.cli", "retrieve", str(scenes / "*.nc"),
           "--model", "hyplant-fluo-o2a", "--out", f"{out}/", "--no-quality", "--quiet"]
    env = dict(os.environ)
    a = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    t0 = time.time()
    while not (out.is_dir() and any(p.suffix == ".lock" for p in out.iterdir())):
        assert a.poll() is None and time.time() - t0 < 300
        time.sleep(0.02)
    b = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    ra, rb = a.communicate(timeout=600), b.communicate(timeout=600)
    assert a.returncode == 0, ra
    assert b.returncode == 0, rb
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.nc" for n in NAMES]
    for n in NAMES:
        _same(reference / f"{n}.nc", out / f"{n}.nc")
    shutil.rmtree(out)
