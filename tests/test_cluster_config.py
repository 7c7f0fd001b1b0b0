"""Slurm clusters from a configuration file (``bayesfluo retrieve --cluster FILE``), tested
without Slurm: the configuration's checks, the job script dask-jobqueue would submit, the
error without the ``hpc`` extra, and the command line's options."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from bayesfluo.cli import main
from bayesfluo.retrieval import executors
from bayesfluo.retrieval.executors import (
    DaskExecutor,
    dask_client,
    executor_context,
    read_cluster_config,
    slurm_cluster,
    slurm_job_script,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "docs" / "examples" / "slurm.toml"

GOOD = """[slurm]
queue = "gpu-a100"
account = "proj42"
cores = 12
memory = "48GiB"
walltime = "00:30:00"
processes = 3
jobs = 5
job_extra_directives = ["--gres=gpu:1"]
"""


def _write(tmp_path: Path, text: str, name: str = "slurm.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_example_config_job_script_has_what_it_asks():
    """The committed example (docs/examples/slurm.toml): its partition, account, cores,
    memory and walltime reach the #SBATCH lines, and each job runs its worker processes
    with one dask thread each."""
    pytest.importorskip("dask_jobqueue")
    cfg = tomllib.loads(EXAMPLE.read_text())["slurm"]
    assert (cfg["cores"], cfg["memory"], cfg["processes"]) == (8, "32GiB", 2)
    script = slurm_job_script(EXAMPLE)
    lines = script.splitlines()
    assert lines[0].startswith("#!")
    for want in (f"#SBATCH -p {cfg['queue']}", f"#SBATCH -A {cfg['account']}",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32G",
                 f"#SBATCH -t {cfg['walltime']}", "#SBATCH --exclusive",
                 *cfg["job_script_prologue"]):
        assert want in lines, (want, script)
    worker = next(line for line in lines if "dask_worker" in line)
    assert "--nthreads 1" in worker and "--nworkers 2" in worker
    assert "--memory-limit 16.00GiB" in worker     # 32 GiB shared by 2 processes


def test_config_is_read_with_defaults(tmp_path):
    path = _write(tmp_path, '[slurm]\ncores = 4\nmemory = "8GiB"\n')
    cfg = read_cluster_config(path)
    assert cfg == {"cores": 4, "memory": "8GiB", "processes": 1, "jobs": 1}


def test_cluster_is_built_but_not_scaled_without_scale(tmp_path):
    pytest.importorskip("dask_jobqueue")
    cluster = slurm_cluster(_write(tmp_path, GOOD), scale=False)
    try:
        script = cluster.job_script()
        assert "#SBATCH -p gpu-a100" in script and "#SBATCH --gres=gpu:1" in script
        assert "#SBATCH --cpus-per-task=12" in script and "#SBATCH -t 00:30:00" in script
        assert "--nthreads 1" in script and "--nworkers 3" in script
        assert len(cluster.worker_spec) == 0       # nothing submitted
    finally:
        cluster.close()


@pytest.mark.parametrize("text, words", [
    ('[slurm]\ncores = 4\nmemory = "8GiB"\npartition = "x"\n', ["'partition'", "unknown"]),
    ('[slurm]\ncores = "4"\nmemory = "8GiB"\n', ["cores", "int"]),
    ('[slurm]\ncores = 4\nmemory = "8GiB"\njob_extra_directives = "--gres=gpu:1"\n',
     ["job_extra_directives", "list of strings"]),
    ('[slurm]\ncores = 4\n', ["lacks 'memory'"]),
    ('[slurm]\ncores = 4\nmemory = "8GiB"\njobs = 0\n', ["jobs", "at least 1"]),
    ('[slurm]\ncores = 2\nmemory = "8GiB"\nprocesses = 3\n', ["processes", "exceeds cores"]),
    ('cores = 4\nmemory = "8GiB"\n', ["'cores'"]),
    ('[pbs]\ncores = 4\n', ["'pbs'"]),
    ('', ["no [slurm] table"]),
    ('[slurm\ncores = 4\n', ["not a TOML file"]),
])
def test_bad_config_names_file_and_key(tmp_path, text, words):
    path = _write(tmp_path, text, "my-cluster.toml")
    with pytest.raises(ValueError) as err:
        read_cluster_config(path)
    message = str(err.value)
    assert str(path) in message
    for w in words:
        assert w in message, message


def test_missing_config_file_is_named(tmp_path):
    path = tmp_path / "nosuch.toml"
    with pytest.raises(FileNotFoundError, match="nosuch.toml"):
        read_cluster_config(path)
    assert main(["cluster-script", str(path)]) == 2


def test_without_dask_jobqueue_the_error_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "dask_jobqueue", None)   # import fails
    path = _write(tmp_path, GOOD)
    with pytest.raises(ImportError, match=r'pip install "bayesfluo\[hpc\]"'):
        slurm_cluster(path)
    assert main(["cluster-script", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bayesfluo cluster-script: error:" in err and "bayesfluo[hpc]" in err


def test_cluster_script_command_prints_the_script_alone(capsys):
    pytest.importorskip("dask_jobqueue")
    assert main(["cluster-script", str(EXAMPLE)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("#!") and "#SBATCH -p compute" in out
    assert "nothing was submitted" in err and "4 time(s)" in err


@pytest.mark.parametrize("other", [["--workers", "2"], ["--scheduler", "tcp://h:8786"]])
def test_cluster_option_excludes_the_other_executors(other, capsys):
    with pytest.raises(SystemExit) as e:
        main(["retrieve", "s.nc", "--model", "m", "--out", "r.nc", *other,
              "--cluster", str(EXAMPLE)])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --cluster: not allowed with argument {other[0]}" in err


def test_dask_client_takes_exactly_one_cluster():
    with pytest.raises(ValueError, match="one of them"), \
            dask_client(workers=1, cluster_config=EXAMPLE):
        pass
    with pytest.raises(ValueError, match="one of them"), dask_client():
        pass


def test_executor_context_runs_on_the_files_cluster(tmp_path, monkeypatch):
    """``--cluster FILE`` reaches :func:`slurm_cluster` with the file, and the executor
    keeps two chunks in flight per worker the file asks for (5 jobs x 3 processes),
    before any job has started. Starts a local scheduler (no workers) in place of Slurm."""
    from distributed import LocalCluster

    path = _write(tmp_path, GOOD)
    seen = []

    def fake(config_path):
        seen.append(config_path)
        return LocalCluster(n_workers=0, processes=False, dashboard_address=None)

    monkeypatch.setattr(executors, "slurm_cluster", fake)
    with executor_context(tmp_path, None, cluster_config=path) as ex:
        assert isinstance(ex, DaskExecutor)
        assert ex.window == 2 * 5 * 3
        assert ex.client.status == "running"
    assert seen == [path]
