"""What SLURM says about a sweep's jobs, and submitit executors built from ``hydra.launcher``.

A sweep launched through submitit (``+launcher=slurm``) leaves ``<sweep dir>/.submitit/``
with one folder per SLURM job: ``<array>_<task>`` for the tasks of an array (Hydra's
launcher submits a sweep as one array, task i = job i), ``<job>`` for a plain job. From
those names and the ``slurm_job`` field of each ``status.json`` (:mod:`nstyle.cli.jobs`),
:func:`states` asks ``squeue`` (jobs still known to the controller) and then ``sacct``
(the accounting database, when the cluster has one) for each job's state, so the collector
can tell a task that was cancelled or failed from one still pending or running.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from nstyle import distributed
from nstyle._errors import UserError

SUBMITIT_DIR = ".submitit"
# SLURM job states in which the job may still start or is running (squeue's long names)
ACTIVE = frozenset(
    {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD", "RESIZING", "STOPPED"}
)
_TASK_DIR = re.compile(r"^(\d+)_(\d+)$")
_JOB_DIR = re.compile(r"^(\d+)$")
_TIMEOUT_S = 20


def submitted(sweep_dir: str | os.PathLike) -> tuple[dict[str, set[int]], set[str]]:
    """``({array id: {task indices}}, {plain job ids})`` of the jobs submitit submitted for a sweep."""
    arrays: dict[str, set[int]] = {}
    plain: set[str] = set()
    folder = Path(sweep_dir) / SUBMITIT_DIR
    if not folder.is_dir():
        return arrays, plain
    for p in folder.iterdir():
        if m := _TASK_DIR.match(p.name):
            arrays.setdefault(m.group(1), set()).add(int(m.group(2)))
        elif _JOB_DIR.match(p.name):
            plain.add(p.name)
    return arrays, plain - set(arrays)  # an array's own folder (its submission script) is no job


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}  # not the caller's own job
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=_TIMEOUT_S, env=env)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout if r.returncode == 0 else None


def _expand(job_id: str) -> list[str]:
    """``'12_[2-4,7]'`` (sacct's way to write an array's pending tasks) -> ``['12_2', '12_3', '12_4', '12_7']``."""
    m = re.fullmatch(r"(\d+)_\[([0-9,\-]+)(?:%\d+)?\]", job_id)
    if m is None:
        return [job_id]
    out = []
    for part in m.group(2).split(","):
        lo, _, hi = part.partition("-")
        out += [f"{m.group(1)}_{i}" for i in range(int(lo), int(hi or lo) + 1)]
    return out


def _parse(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        job_id, sep, state = line.strip().partition("|")
        if sep and job_id:
            for j in _expand(job_id):
                out[j] = state.split()[0] if state else "UNKNOWN"  # "CANCELLED by 0" -> CANCELLED
    return out


def states(job_ids: Iterable[str]) -> dict[str, str]:
    """``{job id: state}`` (``'12_3'``: task 3 of array 12) for every job SLURM still knows of.

    ``squeue`` first (it keeps a finished job for the cluster's MinJobAge), ``sacct`` for the
    rest. An array's id stands for all its tasks. Empty when neither knows them, or there is
    no SLURM here (a copy of the sweep on another machine).
    """
    bases = sorted({str(j).split("_")[0] for j in job_ids})
    if not bases:
        return {}
    found = _parse(_run(["squeue", "-h", "-t", "all", "-r", "-j", ",".join(bases), "-o", "%i|%T"]) or "")
    missing = [b for b in bases if not any(k == b or k.startswith(b + "_") for k in found)]
    if missing:
        text = _run(["sacct", "-n", "-P", "-X", "-j", ",".join(missing), "-o", "JobID,State"])
        for k, v in _parse(text or "").items():
            found.setdefault(k, v)
    return found


def ended(state: str | None) -> bool:
    """Whether a job in ``state`` will never run (again): it completed, failed or was cancelled."""
    return state is not None and state not in ACTIVE


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
