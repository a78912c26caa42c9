"""nstyle's SLURM launcher for Hydra: hydra-submitit-launcher's, with job records and a wait that ends.

``conf/launcher/slurm.yaml`` selects it (Hydra instantiates launchers only from the
``hydra_plugins`` namespace, hence this package). It submits like its parent, one task of a
SLURM array per job of the sweep, with the same ``hydra.launcher`` settings, and adds:

- **records**: before submitting, each job's directory gets a ``status.json`` saying
  ``pending`` with the job's overrides, then its SLURM id (:mod:`nstyle.cli.jobs`), so
  ``nstyle-collect`` lists a job before it starts and can ask SLURM about it;
- **reruns**: a job whose record says ``completed`` is not submitted again, so the same
  command with the same ``hydra.sweep.dir`` completes only what is missing;
- **a wait that ends**: submitit learns a job's end from ``sacct`` only, and waits forever for
  a task cancelled before it started (it leaves no record there) or for any dead job on a
  cluster without accounting. :func:`nstyle.cli.slurm.wait` also asks ``squeue``; a task
  that died becomes a failed job, and the sweep ends with Hydra's error once all have ended.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from omegaconf import OmegaConf, open_dict

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _SubmititSlurmLauncher
except ImportError:  # the [sweep] extra is not installed: no SLURM launcher to extend
    _SubmititSlurmLauncher = None

log = logging.getLogger(__name__)

if _SubmititSlurmLauncher is not None:

    class SlurmLauncher(_SubmititSlurmLauncher):
        """hydra-submitit-launcher's ``SlurmLauncher`` with job records, reruns and a wait that ends."""

        def _job_dir(self, overrides: list[str], num: int) -> Path | None:
            """The directory Hydra will give job ``num`` (None if it cannot be computed here)."""
            try:
                cfg = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
                with open_dict(cfg.hydra.job):
                    cfg.hydra.job.num = num
                    cfg.hydra.job.id = f"job_id_for_{num}"
                return Path(str(cfg.hydra.sweep.dir)) / str(OmegaConf.select(cfg, "hydra.sweep.subdir"))
            except Exception as e:  # noqa: BLE001 -- an exotic subdir: no record, Hydra still runs the job
                log.warning(f"no job record for job #{num}: {e}")
                return None

        def launch(self, job_overrides, initial_job_idx: int) -> list[JobReturn]:
            from nstyle.cli import jobs, slurm

            assert self.config is not None
            sweep_dir = Path(str(self.config.hydra.sweep.dir))
            sweep_dir.mkdir(parents=True, exist_ok=True)
            if "mode" in self.config.hydra.sweep:  # as the parent does
                sweep_dir.chmod(int(str(self.config.hydra.sweep.mode), 8))
            log.info(f"nstyle SLURM launcher, sweep output dir: {sweep_dir}")
            returns: list[JobReturn | None] = [None] * len(job_overrides)
            todo: list[tuple[int, tuple, Path | None]] = []
            for i, overrides in enumerate(job_overrides):
                num = initial_job_idx + i
                job_dir = self._job_dir(list(overrides), num)
                record = jobs.read_status(job_dir) if job_dir is not None else None
                if (record or {}).get("status") == "completed":
                    log.info(f"\t#{num} : finished earlier, not submitted: {job_dir}")
                    returns[i] = JobReturn(overrides=list(overrides), status=JobStatus.COMPLETED)
                    continue
                log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
                if job_dir is not None:
                    jobs.write_status(job_dir, "pending", overrides=list(overrides), num=num)
                params = (list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state())
                todo.append((i, params, job_dir))
            if not todo:
                return returns  # type: ignore[return-value]
            executor = slurm.executor(self.params, self.params["submitit_folder"])
            submitted = executor.map_array(self, *zip(*(params for _, params, _ in todo)))
            for job, (_, _, job_dir) in zip(submitted, todo):
                if job_dir is not None:
                    jobs.mark_submitted(job_dir, job.job_id)
            log.info(f"submitted {len(submitted)} SLURM tasks ({submitted[0].job_id.split('_')[0]}); waiting for them")
            for job, (i, params, job_dir) in zip(submitted, todo):
                error = slurm.wait(job)
                if error is None:
                    returns[i] = job.results()[0]
                    continue
                log.error(f"\t#{params[2]} : {error}")
                if job_dir is not None and (jobs.read_status(job_dir) or {}).get("status") in ("pending", "running"):
                    jobs.write_status(job_dir, "failed", error=error[:500], slurm_job=job.job_id)
                returns[i] = _failed(params[0], error)
            return returns  # type: ignore[return-value]


def _failed(overrides: list[str], error: str) -> JobReturn:
    """The JobReturn of a job that never returned: after the sweep Hydra prints its error (no
    traceback) and exits with status 1."""
    from nstyle.cli.app import JobError

    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
    ret._return_value = JobError(error)  # what JobReturn.return_value raises
    return ret


def __getattr__(name: str) -> Any:  # a clear message where the [sweep] extra is missing
    if name == "SlurmLauncher":
        raise ImportError("the SLURM launcher needs hydra-submitit-launcher: pip install 'nstyle[sweep]'")
    raise AttributeError(name)
