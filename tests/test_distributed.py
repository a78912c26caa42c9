"""When a process joins others, which rank it has before JAX starts, and what follows from it:
the directory all processes share, who writes Hydra's records and ``status.json``. The real
multi-process runs are in tests/test_cluster.py; these need no cluster."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from nstyle import distributed
from nstyle.cli import jobs, schema, slurm

STEP = {"SLURM_JOB_ID": "42", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2"}


@pytest.fixture
def env(monkeypatch):
    """A clean slate: no SLURM or JAX process variables, then ``set(**vars)``."""
    import os

    for k in list(os.environ):
        if k.startswith(("SLURM_", "JAX_")) or k == distributed.MODE_ENV:
            monkeypatch.delenv(k)

    def set_(**kv):
        for k, v in kv.items():
            monkeypatch.setenv(k, v)

    return set_


def test_processes_join_only_in_a_slurm_step_of_several_tasks(env):
    assert not distributed.wanted() and distributed.launch_rank() == (0, 1)
    env(SLURM_JOB_ID="42", SLURM_NTASKS="2", SLURM_PROCID="0")  # an sbatch -n2 script, not a step
    assert not distributed.wanted() and distributed.slurm_step() is None
    env(SLURM_STEP_ID="0", SLURM_STEP_NUM_TASKS="1")  # srun of one task
    assert not distributed.wanted()
    env(**STEP)
    assert distributed.wanted() and distributed.launch_rank() == (1, 2)
    env(NSTYLE_DISTRIBUTED="0")
    assert not distributed.wanted() and distributed.launch_rank() == (0, 1)
    env(NSTYLE_DISTRIBUTED="1", JAX_PROCESS_ID="3", JAX_NUM_PROCESSES="4")
    assert distributed.wanted() and distributed.launch_rank() == (3, 4)
    env(NSTYLE_DISTRIBUTED="sometimes")
    with pytest.raises(distributed.DistributedError, match="NSTYLE_DISTRIBUTED"):
        distributed.mode()


def test_asked_to_join_without_peers_is_a_one_line_error(env):
    env(NSTYLE_DISTRIBUTED="1")
    code = (
        "from nstyle import distributed\n"
        "try:\n    distributed.initialize(timeout_s=5)\n"
        "except distributed.DistributedError as e:\n    print('ERROR', e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "ERROR could not join the processes" in r.stdout and "NSTYLE_DISTRIBUTED=0" in r.stdout, r.stderr[-2000:]


def test_all_processes_of_a_step_share_one_directory(env):
    argv = ["style=x.jpg", "data=d"]
    assert slurm.shared_dir(argv, "hydra.run.dir", "outputs/train") == argv  # one process: Hydra's default
    env(**STEP)
    assert slurm.shared_dir(argv, "hydra.run.dir", "outputs/train") == [*argv, "hydra.run.dir=outputs/train/slurm-42.0"]
    given = [*argv, "hydra.run.dir=runs/a"]
    assert slurm.shared_dir(given, "hydra.run.dir", "outputs/train") == given
    env(NSTYLE_DISTRIBUTED="1", JAX_PROCESS_ID="0", JAX_NUM_PROCESSES="2")
    for k in STEP:
        __import__("os").environ.pop(k)
    with pytest.raises(distributed.UserError, match="hydra.run.dir=DIR"):
        slurm.shared_dir(argv, "hydra.run.dir", "outputs/train")


def test_only_process_0_writes_hydra_records_and_job_status(env, tmp_path: Path):
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"output_subdir": "${nstyle_main_only:.hydra}"}})
    assert cfg.hydra.output_subdir == ".hydra"
    callback = jobs.JobStatusCallback()
    job = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(tmp_path)}}})
    env(**STEP)  # rank 1 of 2
    assert schema.main_process_only(".hydra") is None and cfg.hydra.output_subdir is None
    callback.on_job_start(job)
    assert not (tmp_path / jobs.STATUS_FILE).exists()
    env(SLURM_PROCID="0", SLURM_ARRAY_JOB_ID="40", SLURM_ARRAY_TASK_ID="3")
    callback.on_job_start(job)
    record = json.loads((tmp_path / jobs.STATUS_FILE).read_text())
    assert record["status"] == "running" and record["slurm_job"] == "40_3"


def test_a_pending_record_takes_the_slurm_id_only_until_the_job_starts(env, tmp_path: Path):
    jobs.write_status(tmp_path, "pending", overrides=["seed=1"], num=4)
    jobs.mark_submitted(tmp_path, "9_4")
    assert jobs.read_status(tmp_path)["slurm_job"] == "9_4"
    jobs.write_status(tmp_path, "failed", error="boom")
    jobs.write_status(tmp_path, "pending", overrides=["seed=1"], num=4)  # submitted again: the old end is gone
    record = jobs.read_status(tmp_path)
    assert "error" not in record and "ended" not in record and "slurm_job" not in record
    env(SLURM_JOB_ID="11")
    jobs.write_status(tmp_path, "running")  # the job started before the submitter wrote its id
    jobs.mark_submitted(tmp_path, "10_4")
    assert jobs.read_status(tmp_path)["status"] == "running" and jobs.read_status(tmp_path)["slurm_job"] == "11"
