"""The cluster paths for real, on the SLURM cluster that ``tools/slurm-local up`` starts.

- a 2×2 sweep through ``+launcher=slurm``: job directories named as the local launcher names
  them, one result equal pixel for pixel to the same job run locally, ``nstyle-collect``
  while jobs are pending or running and after a task was cancelled, and a rerun of the same
  command that submits only the missing job;
- ``nstyle-sweep +launcher=slurm hydra.launcher.tasks_per_node=2``: one batch as one SLURM task
  of two processes, each member's pixels those of the same batch run locally on one device;
- ``srun --ntasks=2 nstyle-train``: two processes, one CPU device each, joined by
  ``jax.distributed``, give the model of one process with two devices (≤ 1e-5), and only
  process 0 writes;
- the same training through submitit (``-m +launcher=slurm hydra.launcher.tasks_per_node=2``),
  cancelled with ``scancel`` mid-run and submitted again: it resumes from its last checkpoint
  to the parameters of the uninterrupted run.

Marked ``cluster``. Without a SLURM controller that answers they skip; under ``CI=true`` they
fail instead, so CI never passes without having run them. The jobs import this checkout
(PYTHONPATH) and share a compilation cache, so each step compiles once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from nstyle import fastnet, images
from nstyle.cli import collect, jobs

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parent.parent
STYLIZE = [sys.executable, "-c", "from nstyle.cli.stylize import main; main()"]
TRAIN = [sys.executable, "-c", "from nstyle.cli.train import main; main()"]
SWEEP = [sys.executable, "-c", "import sys; from nstyle.cli.sweep import main; sys.exit(main())"]
# cheap jobs: shallow layers, 32 px, few steps (as tests/test_experiments.py's TINY)
TINY = ["debug=tiny", "size=32", "steps=3", "loss.content_layers=[conv1_2]", "loss.style_layers=[conv1_1]"]
GRID = ["seed=1,2", "loss.beta=1e3,1e4"]
TRAIN_ARGS = [
    "train/experiment=debug",
    "style=builtin:coffee",
    "size=32",
    "steps=6",
    "batch=2",
    "seed=3",
    "checkpoint_every=3",
    "log_every=1",
    "sample_every=6",
    # the loss through VGG16's first two blocks only: a smaller step to compile (the tests are about processes)
    "loss.content_layers=[relu2_2]",
    "loss.style_layers=[relu1_2,relu2_2]",
]


def _cluster_answers() -> str | None:
    """None if a SLURM controller answers and its node takes jobs, else why not."""
    if shutil.which("scontrol") is None or shutil.which("sbatch") is None:
        return "no SLURM commands (scontrol, sbatch) on PATH"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, env=_clean_env())
        nodes = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20, env=_clean_env()
        )
    except (OSError, subprocess.SubprocessError) as e:
        return f"scontrol ping failed: {e}"
    if "is UP" not in ping.stdout:
        return "no SLURM controller answers (scontrol ping)"
    if not any(s.startswith(("idle", "mixed", "allocated", "completing")) for s in nodes.stdout.split()):
        return f"no SLURM node takes jobs (sinfo: {nodes.stdout.strip() or 'none'})"
    return None


def _clean_env() -> dict[str, str]:
    """This environment without a SLURM job's variables (a nested sbatch/srun would inherit them)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}


@pytest.fixture(scope="module", autouse=True)
def cluster():
    why = _cluster_answers()
    if why is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true but {why}; start it with tools/slurm-local up")
        pytest.skip(f"{why}; start one with: sudo tools/slurm-local up")


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    """For the commands and their jobs: this checkout first, one shared compilation cache."""
    e = _clean_env()
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [e.get("PYTHONPATH")])])
    e.update(
        JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jaxcache")),
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )
    e.pop("XLA_FLAGS", None)
    return e


def _run(cmd: list[str], env: dict, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}\n{_job_logs(cmd)}"
    return r


def _wait_for(what: str, ready, timeout: float = 900, poll: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _job_logs(cmd: list[str]) -> str:
    """The tails of submitit's job logs under the command's hydra.sweep.dir (what a failed task printed)."""
    sweep = next((a.split("=", 1)[1] for a in cmd if a.startswith("hydra.sweep.dir=")), None)
    if sweep is None:
        return ""
    logs = sorted(Path(sweep).glob(".submitit/*/*.err"), key=lambda p: p.stat().st_mtime)[-2:]
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-1500:]}" for p in logs)


def _lock_is_free(run_dir: Path) -> bool:
    """Whether no process holds the run directory's flock (nstyle._rundir.LOCK_FILE)."""
    import fcntl

    from nstyle import _rundir

    fd = os.open(run_dir / _rundir.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)  # closing ends the flock taken here
    return True


def _squeue_lists(job_id: str) -> bool:
    r = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%i"], capture_output=True, text=True, env=_clean_env())
    return r.returncode == 0 and bool(r.stdout.strip())


def _max_param_difference(a: Path, b: Path) -> float:
    pa, pb = fastnet.load_model(a)[1], fastnet.load_model(b)[1]
    diffs = jax.tree_util.tree_map(lambda u, v: float(np.max(np.abs(u - v))), pa, pb)
    return max(jax.tree_util.tree_leaves(diffs))


# ----------------------------------------------------------------------------- sweeps


def test_slurm_sweep_matches_local_run_and_a_rerun_completes_only_the_cancelled_job(tmp_path, env):
    sweep = tmp_path / "sweep"
    cmd = [*STYLIZE, "-m", "+launcher=slurm", f"hydra.sweep.dir={sweep}", *TINY, *GRID]
    t0 = time.monotonic()
    first = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # the launcher writes a record per job before submitting, then adds the SLURM id
        def submitted():
            if not sweep.is_dir():
                return None
            records = [jobs.read_status(d) or {} for d in sweep.iterdir() if d.is_dir() and not d.name.startswith(".")]
            ids = [r.get("slurm_job") for r in records if r.get("num") == 3]
            return ids[0] if len(records) == 4 and ids and ids[0] else None

        last_task = _wait_for("the sweep's submission", submitted)
        subprocess.run(["scancel", last_task], check=True, env=_clean_env())  # two CPUs: task 3 waits its turn
        s = collect.summarize(sweep, evaluate=False)  # while the others are pending or running
        assert s.counts["died"] == 1 and s.counts["failed"] == 0, s.report()
        assert s.counts["pending"] + s.counts["running"] + s.counts["completed"] == 3, s.report()
        dead = next(j for j in s.jobs if j.status == "died")
        assert (
            dead.slurm_job == last_task and dead.overrides["seed"] == "2" and dead.overrides["loss.beta"] == "10000.0"
        )
        out, _ = first.communicate(timeout=900)
    finally:
        if first.poll() is None:
            first.kill()
    first_s = time.monotonic() - t0
    assert first.returncode != 0 and last_task in out, out[-3000:]  # the sweep reports the job it lost

    s = collect.summarize(sweep, evaluate=False)
    assert s.counts["completed"] == 3 and s.counts["failed"] == 1, s.report()
    lost = next(j for j in s.jobs if j.status == "failed")
    assert "SLURM job" in lost.error and lost.slurm_job == last_task
    done = {j.name: (j.path / "result.png").stat().st_mtime_ns for j in s.jobs if j.status == "completed"}

    t0 = time.monotonic()
    rerun = _run(cmd, env)  # the same command: only the missing job is submitted
    rerun_s = time.monotonic() - t0
    assert (rerun.stdout + rerun.stderr).count("finished earlier, not submitted") == 3, rerun.stderr[-3000:]
    s = collect.summarize(sweep, evaluate=False)
    assert s.counts["completed"] == 4 and s.counts["pending"] == 0, s.report()
    for j in s.jobs:
        if j.name in done:
            assert (j.path / "result.png").stat().st_mtime_ns == done[j.name], f"{j.name} was run again"
        assert json.loads((j.path / "status.json").read_text())["slurm_job"]

    # one job with the local (basic) launcher: the same directory name, the same pixels
    local = tmp_path / "local"
    _run([*STYLIZE, "-m", f"hydra.sweep.dir={local}", *TINY, "seed=2", "loss.beta=1e4"], env)
    (job_dir,) = [d for d in local.iterdir() if d.is_dir() and not d.name.startswith(".")]
    on_slurm = sweep / job_dir.name
    assert on_slurm.is_dir(), f"{job_dir.name} not among {sorted(p.name for p in sweep.iterdir())}"
    a = images.to_uint8(images.load_image(job_dir / "result.png"))
    b = images.to_uint8(images.load_image(on_slurm / "result.png"))
    assert a.shape == b.shape and np.array_equal(a, b)
    print(f"\nwall time: SLURM 2x2 sweep with one task cancelled {first_s:.1f} s, rerun {rerun_s:.1f} s")


def test_batched_sweep_on_slurm_split_over_two_processes_matches_a_local_batch(tmp_path, env):
    # one batch (two loss weights) as one SLURM task of two processes, one member on each device
    sweep, local = tmp_path / "slurm", tmp_path / "local"
    batch = [*TINY, "seed=1", "loss.beta=1e3,1e4"]
    t0 = time.monotonic()
    r = _run([*SWEEP, "+launcher=slurm", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}", *batch], env)
    slurm_s = time.monotonic() - t0
    assert "1 batches submitted to SLURM" in r.stderr, r.stderr[-3000:]
    _run([*SWEEP, f"hydra.sweep.dir={local}", *batch], env)  # the same batch in one process, one device
    s = collect.summarize(sweep, evaluate=False)
    assert s.counts["completed"] == 2, s.report()
    for j in s.jobs:
        record = jobs.read_status(j.path) or {}
        assert record.get("slurm_job"), record
        a = images.to_uint8(images.load_image(j.path / "result.png"))
        b = images.to_uint8(images.load_image(local / j.name / "result.png"))
        assert np.array_equal(a, b), j.name
    print(f"\nwall time: nstyle-sweep, one batch on SLURM as two processes {slurm_s:.1f} s")


# ----------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("photos")
    for i, spec in enumerate(["builtin:astronaut", "builtin:chelsea", "builtin:coffee", "builtin:rocket"]):
        images.save_image(d / f"p{i}.png", images.load_image(spec, max_side=64))
    return d


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory, env, photos) -> Path:
    """``srun --ntasks=2 nstyle-train``: the uninterrupted two-process run."""
    run_dir = tmp_path_factory.mktemp("train") / "two"
    t0 = time.monotonic()
    _run(
        [
            "srun",
            "--ntasks=2",
            "--kill-on-bad-exit=1",
            *TRAIN,
            *TRAIN_ARGS,
            f"data={photos}",
            f"hydra.run.dir={run_dir}",
        ],
        env,
    )
    print(f"\nwall time: srun --ntasks=2 nstyle-train {time.monotonic() - t0:.1f} s")
    return run_dir


def test_two_processes_train_the_model_of_one_process_with_two_devices(tmp_path, env, photos, two_processes):
    one = tmp_path / "one"
    t0 = time.monotonic()
    _run(
        [*TRAIN, *TRAIN_ARGS, f"data={photos}", f"hydra.run.dir={one}"],
        dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
    )
    print(f"\nwall time: one process, two devices {time.monotonic() - t0:.1f} s")
    assert _max_param_difference(one / "model.npz", two_processes / "model.npz") <= 1e-5
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two_processes / "metrics.json").read_text())
    assert (m1["devices"], m1["processes"]) == (2, 1) and (m2["devices"], m2["processes"]) == (2, 2)
    # only process 0 wrote: each step logged once, one .hydra/, the last checkpoints and samples
    rows = [line.split(",", 1)[0] for line in (two_processes / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == [str(i) for i in range(1, 7)]
    assert sorted(p.name for p in (two_processes / ".hydra").iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert sorted(p.name for p in (two_processes / "checkpoints").iterdir()) == [
        "ckpt_00000003.npz",
        "ckpt_00000006.npz",
    ]
    assert (two_processes / "samples" / "step_0000006.png").exists()


def test_training_cancelled_mid_run_and_submitted_again_resumes_to_the_same_parameters(
    tmp_path, env, photos, two_processes
):
    sweep = tmp_path / "sweep"
    base = [*TRAIN, "-m", "+launcher=slurm", "hydra.launcher.tasks_per_node=2", f"hydra.sweep.dir={sweep}"]
    args = [*TRAIN_ARGS, f"data={photos}"]
    run_dir = sweep / "0"
    t0 = time.monotonic()
    # after its checkpoint at step 3 the job waits: scancel finds it mid-run
    first = subprocess.Popen(
        [*base, *args, "pause_at_step=3"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for("the checkpoint at step 3", lambda: (run_dir / "checkpoints" / "ckpt_00000003.npz").exists())
        job = (jobs.read_status(run_dir) or {}).get("slurm_job")
        assert job and _squeue_lists(job)
        subprocess.run(["scancel", job], check=True, env=_clean_env())
        out, _ = first.communicate(timeout=300)  # the launcher sees the job die and ends
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode != 0 and job in out, out[-3000:]
    assert not (run_dir / "model.npz").exists()
    assert not _squeue_lists(job)
    killed_s = time.monotonic() - t0
    # SLURM ends the job at SIGTERM and kills stragglers after KillWait: until the last process of
    # the cancelled job is gone it holds the run directory's lock, and a resubmission is refused
    _wait_for("the cancelled job's processes to release the run directory", lambda: _lock_is_free(run_dir), 120)

    t0 = time.monotonic()
    _run([*base, *args], env)  # submitted again (the same job dir: sweep/0)
    resumed_s = time.monotonic() - t0
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["resumed_from_step"] == 3 and summary["processes"] == 2 and summary["devices"] == 2
    assert _max_param_difference(run_dir / "model.npz", two_processes / "model.npz") <= 1e-5
    assert (jobs.read_status(run_dir) or {}).get("status") == "completed"
    print(f"\nwall time: submitit training cancelled at step 3 {killed_s:.1f} s, resumed {resumed_s:.1f} s")
