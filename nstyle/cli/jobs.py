"""The status file of a sweep job, written by Hydra's callback or by ``nstyle-sweep``.

``status.json`` holds ``pending`` (a job submitted to SLURM, not started: its overrides and
SLURM id), ``running`` (with pid, host and start time), then ``completed`` or
``failed`` (with the error's first line), so the collector can tell a job that failed from
one still running, and a running one whose process is gone (``died``). A job that runs under
SLURM also records its ``slurm_job`` id (``<array job>_<task>`` for an array task), which the
collector asks SLURM about when the job's host is another machine. Of the processes of a
multi-process job only process 0 writes.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from nstyle import _io, distributed

STATUS_FILE = "status.json"

try:  # the callback base class; the collector itself needs only the files
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object  # type: ignore[assignment,misc]


def slurm_job_id(env: dict | None = None) -> str | None:
    """This process's SLURM job as ``squeue``/``sacct`` name it (``123`` or, in an array, ``120_3``)."""
    env = os.environ if env is None else env
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID") or None


def write_status(job_dir: str | os.PathLike, status: str, **extra: Any) -> None:
    """Record ``status`` for the job in ``job_dir``, keeping what an earlier record said.

    ``pending`` is written by the submitting process; every other status by the job's own
    process (its pid, host and SLURM id), except ``failed`` for a job that died unheard.
    """
    path = Path(job_dir) / STATUS_FILE
    old = _io.read_json(path) or {}
    if status in ("pending", "running"):  # a new attempt: what an earlier one recorded no longer holds
        old = {k: v for k, v in old.items() if k not in ("started", "ended", "error", "slurm_job", "pid", "host")}
    data = {**old, "status": status}
    now = time.time()
    if status != "pending":
        data.update(pid=os.getpid(), host=socket.gethostname())
        slurm = slurm_job_id()
        if slurm is not None:
            data["slurm_job"] = slurm
        data.setdefault("started", now)
    data.update(extra)
    if status not in ("pending", "running"):
        data["ended"] = now
    _io.write_json(path, data)


def read_status(job_dir: str | os.PathLike) -> dict | None:
    return _io.read_json(Path(job_dir) / STATUS_FILE)


def mark_submitted(job_dir: str | os.PathLike, slurm_job: str) -> None:
    """Add the SLURM id to a job's ``pending`` record, unless the job has started already."""
    if (read_status(job_dir) or {}).get("status") == "pending":
        write_status(job_dir, "pending", slurm_job=slurm_job)


class JobStatusCallback(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback that leaves ``status.json`` in each job directory.

    Install it in a config with::

        hydra:
          callbacks:
            job_status:
              _target_: nstyle.cli.jobs.JobStatusCallback
    """

    def on_job_start(self, config, **kwargs: Any) -> None:
        if distributed.launch_rank()[0] != 0:
            return
        out = Path(str(config.hydra.runtime.output_dir))
        write_status(out, "running", started=time.time())

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        if distributed.launch_rank()[0] != 0:
            return
        out = Path(str(config.hydra.runtime.output_dir))
        status = getattr(job_return.status, "name", str(job_return.status)).lower()
        if status == "completed":
            write_status(out, "completed")
            return
        err = job_return._return_value  # the exception; .return_value would re-raise it
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:500] if err is not None else "unknown error"
        write_status(out, "failed", error=msg)
