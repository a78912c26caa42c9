"""The status file of a sweep job, written by Hydra's callback or by ``nstyle-sweep``.

``status.json`` holds ``running`` (with pid, host and start time), then ``completed`` or
``failed`` (with the error's first line), so the collector can tell a job that failed from
one still running, and a running one whose process is gone (``died``).
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

from nstyle import _io

STATUS_FILE = "status.json"

try:  # the callback base class; the collector itself needs only the files
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object  # type: ignore[assignment,misc]


def write_status(job_dir: str | os.PathLike, status: str, **extra: Any) -> None:
    """Record ``status`` for the job in ``job_dir``, keeping what an earlier record said."""
    path = Path(job_dir) / STATUS_FILE
    old = _io.read_json(path) or {}
    now = time.time()
    data = {**old, "status": status, "pid": os.getpid(), "host": socket.gethostname(), **extra}
    data.setdefault("started", now)
    if status != "running":
        data["ended"] = now
    _io.write_json(path, data)


def read_status(job_dir: str | os.PathLike) -> dict | None:
    return _io.read_json(Path(job_dir) / STATUS_FILE)


class JobStatusCallback(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback that leaves ``status.json`` in each job directory.

    Install it in a config with::

        hydra:
          callbacks:
            job_status:
              _target_: nstyle.cli.jobs.JobStatusCallback
    """

    def on_job_start(self, config, **kwargs: Any) -> None:
        out = Path(str(config.hydra.runtime.output_dir))
        write_status(out, "running", started=time.time())

    def on_job_end(self, config, job_return, **kwargs: Any) -> None:
        out = Path(str(config.hydra.runtime.output_dir))
        status = getattr(job_return.status, "name", str(job_return.status)).lower()
        if status == "completed":
            write_status(out, "completed")
            return
        err = job_return._return_value  # the exception; .return_value would re-raise it
        msg = f"{type(err).__name__}: {err}".splitlines()[0][:500] if err is not None else "unknown error"
        write_status(out, "failed", error=msg)
