"""SLURM for the commands: what the scheduler says about a sweep's jobs, and how to submit and wait.

A job submitted to SLURM by nstyle (``+launcher=slurm``: Hydra's launcher for
``nstyle-stylize -m`` / ``nstyle-train -m``, or ``nstyle-sweep``) has a ``status.json`` in its
directory from the moment it is submitted: ``pending`` with its ``slurm_job`` id
(``<array>_<task>``), then what the job itself records (:mod:`nstyle.cli.jobs`). :func:`states`
asks ``squeue`` and ``sacct`` about such ids, so the collector and the waiting command can
tell a job that was cancelled, timed out or ran out of memory from one still pending or
running, on any host. submitit itself learns a job's end only from ``sacct`` and, for a task
cancelled before it started (which leaves no record there), never.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from nstyle import distributed
from nstyle._errors import UserError

# SLURM job states in which the job may still start or is running (squeue's long names)
ACTIVE = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "STOPPED"}
)
# a job squeue no longer lists and sacct does not know: removed before it started, or long finished
GONE = "GONE"
_TIMEOUT_S = 20


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    if shutil.which(cmd[0]) is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not the caller's own job
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError):
        return None


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id and "[" not in job_id:  # sacct's "12_[3-5]": pending tasks squeue lists one by one
            out[job_id] = state.split()[0] if state.strip() else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    return out


def states(job_ids: Iterable[str]) -> dict[str, str]:
    """``{job id: state}`` for SLURM jobs (``'12_3'``: task 3 of array 12; ``'15'``: a plain job).

    ``squeue`` knows every pending and running job, and a finished one for the cluster's
    MinJobAge; ``sacct`` (a cluster with accounting) every job that ever started. A job
    neither knows is :data:`GONE`: removed before it started (``scancel`` of a pending array
    task leaves no record), or finished long ago. Jobs are left out when there is no SLURM
    to ask (a copy of the sweep on another machine).
    """
    ids = sorted({str(j) for j in job_ids})
    if not ids:
        return {}
    r = _run(["squeue", "-h", "-t", "all", "-r", "-j", ",".join(ids), "-o", "%i|%T"])
    if r is None or (r.returncode != 0 and "Invalid job id" not in r.stderr):
        return {}  # no controller to ask: know nothing
    listed = _parse(r.stdout if r.returncode == 0 else "")
    found = {j: listed[j] for j in ids if j in listed}
    missing = [j for j in ids if j not in found]
    if missing:
        r = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"])
        known = _parse(r.stdout) if r is not None and r.returncode == 0 else {}
        for j in missing:
            found[j] = known.get(j, GONE)
    return found


def ended(state: str | None) -> bool:
    """Whether a job in ``state`` will never run (again): it completed, failed, was cancelled or is gone."""
    return state is not None and state not in ACTIVE


def wait(job, poll_s: float = 2.0, result_grace_s: float = 60.0) -> str | None:
    """Wait for a submitit job; None when every task returned, else why not (one line).

    Polls submitit (the result files) and :func:`states`: a job SLURM says has ended without
    a result died (cancelled before or while running, out of memory, timed out, node
    failure). One that ``COMPLETED`` gets ``result_grace_s`` for its result file to show
    (a shared filesystem may show it late).
    """
    ended_at = None
    while not job.done():
        state = states([job.job_id]).get(job.job_id)
        if ended(state):
            ended_at = ended_at or time.monotonic()
            grace = result_grace_s if state == "COMPLETED" else poll_s
            if time.monotonic() - ended_at > grace:
                return f"SLURM job {job.job_id} {describe(state)}"
        else:
            ended_at = None
        time.sleep(poll_s)
    try:
        job.results()  # every task's (a job of several processes has one per process)
    except Exception as e:  # noqa: BLE001 -- submitit's own errors, or the job's with its traceback
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if type(e).__name__ == "UncompletedJobError":  # ended without a result file
            m = re.search(r"state: ([A-Z_]+)", str(e))
            return f"SLURM job {job.job_id} {describe(m.group(1) if m else 'UNKNOWN')}"
        return next((line for line in reversed(lines) if "Error" in line), lines[-1] if lines else type(e).__name__)
    return None


def describe(state: str) -> str:
    """A SLURM state as the end of a sentence about a job that did not finish."""
    if state == GONE:
        return "is gone without a result (cancelled before it started?)"
    return f"ended {state} without a result"


# --------------------------------------------------------------------------- submitting


def executor(launcher: Mapping[str, Any], folder: str | os.PathLike):
    """A submitit SLURM executor with the resources of a ``hydra.launcher`` node (conf/launcher/slurm.yaml).

    The same keys the Hydra launcher reads: ``timeout_min``, ``nodes``, ``tasks_per_node``,
    ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``partition``, ``setup``, ... (None values
    are left out, so the cluster's defaults apply).
    """
    import submitit

    params = {k: v for k, v in launcher.items() if v is not None and k not in ("_target_", "submitit_folder")}
    init = {"folder": str(folder)}
    if "max_num_timeout" in params:
        init["slurm_max_num_timeout"] = params.pop("max_num_timeout")
    ex = submitit.AutoExecutor(cluster="slurm", **init)
    generic = {"timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "name"}
    generic |= {"stderr_to_stdout"}
    ex.update_parameters(**{k if k in generic else f"slurm_{k}": v for k, v in params.items()})
    return ex


def shared_dir(argv: Sequence[str], key: str, folder: str) -> list[str]:
    """``argv`` with a directory (``key``, e.g. ``hydra.run.dir``) all processes of a multi-process run share.

    Hydra's defaults name directories after the time, which two processes may read a second
    apart; in a SLURM step the job and step ids name it instead (``<folder>/slurm-<job>.<step>``).
    Elsewhere the command line must give it. A single process gets ``argv`` unchanged.
    """
    argv = list(argv)
    if distributed.launch_rank()[1] == 1 or any(a.split("=", 1)[0].lstrip("+") == key for a in argv):
        return argv
    if distributed.slurm_step() is None:
        raise UserError(f"a multi-process run needs {key}=DIR, the same directory for every process")
    return argv + [f"{key}={folder}/slurm-{os.environ['SLURM_JOB_ID']}.{os.environ['SLURM_STEP_ID']}"]
