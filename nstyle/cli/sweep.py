"""Batched sweeps: run the members of a grid that differ only in loss weights as ONE optimisation.

    nstyle-sweep experiment=alpha_beta_grid [size=256 steps=300] [hydra.sweep.dir=DIR]
    nstyle-sweep experiment=alpha_beta_grid +launcher=slurm hydra.sweep.dir=DIR     # one SLURM job per batch
    nstyle-collect DIR

Takes the same overrides as ``nstyle-stylize -m`` (the sweep comes from the experiment's
``hydra.sweeper.params`` and from comma-separated command-line values), expands the grid
in the same order as Hydra's basic sweeper, and groups the jobs that share everything but
``loss.alpha`` / ``loss.beta`` / ``loss.tv_weight`` (e.g. the four α/β values of one column
of the paper's grid). Each group is optimised as one batch by
:func:`nstyle.optimize.stylize_batch`: the per-image loss weights are vmapped inside one
jitted step, each image keeps its own L-BFGS memory — the result of each member is that of
its own run (same start, same iterations), but the VGG passes of the batch run together
and the step compiles once per group instead of once per job.

Each member gets the directory a Hydra multirun would give it
(``<sweep dir>/<override_dirname>/``) with ``.hydra/{config,overrides,hydra}.yaml``,
``result.png``, ``metrics.json`` (per-member loss history; ``wall_s`` is the group's wall
time, ``batch`` its size) and ``status.json``, so :mod:`nstyle.cli.collect` reads batched and
unbatched sweeps alike. Members that already hold a ``result.png`` are skipped (rerun the
command to finish an interrupted sweep). Only single-stage runs (no ``schedule``) batch.

Several devices: a batch is split over all of them (:func:`nstyle.distributed.make_mesh`), so a
grid also runs as one multi-process job (``srun --ntasks=N nstyle-sweep ...``: every process
expands the same grid, process 0 writes the files).

With ``+launcher=slurm`` (conf/launcher/slurm.yaml) each batch is submitted as one task of a
SLURM array through submitit, with the resources of ``hydra.launcher`` (``tasks_per_node=N``:
N processes per batch, joined as above); the command waits for them, as Hydra's launcher
does. Each member's ``status.json`` says ``pending`` with its SLURM task until the task starts.
"""

from __future__ import annotations

import dataclasses
import itertools
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from nstyle import _io, distributed, images, losses, memory, optimize, transfer, weights
from nstyle._errors import UserError
from nstyle.cli import app, jobs, schema, slurm, stylize
from nstyle.cli.errors import command, message

PROG = "nstyle-sweep"
WEIGHT_KEYS = ("loss.alpha", "loss.beta", "loss.tv_weight")


@dataclasses.dataclass
class Member:
    num: int  # Hydra's job number (order of the sweep)
    overrides: list[str]  # this job's sweep overrides, e.g. ["loss.beta=1e3", "loss.style_layers=[conv1_1]"]


def _parser():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create()


def split_sweep(argv: Sequence[str], sweeper_params: dict) -> tuple[list[str], list[list[str]]]:
    """(fixed overrides, per-key lists of sweep choices) from the command line and the preset.

    Mirrors Hydra's BasicSweeper: the preset's ``hydra.sweeper.params`` first, a command-line
    override of the same key replaces it; keys are expanded in that order by a cartesian product.
    """
    parser = _parser()
    fixed: list[str] = []
    sweeps: dict[str, list[str]] = {}
    for k, v in sweeper_params.items():
        (o,) = parser.parse_overrides([f"{k}={v}"])
        sweeps[o.get_key_element()] = (
            [f"{o.get_key_element()}={x}" for x in o.sweep_string_iterator()] if o.is_sweep_override() else [f"{k}={v}"]
        )
    for o in parser.parse_overrides(list(argv)):
        key = o.get_key_element()
        if o.is_sweep_override():
            sweeps[key] = [f"{key}={x}" for x in o.sweep_string_iterator()]
        else:
            sweeps.pop(key, None)
            fixed.append(o.input_line)
    return fixed, list(sweeps.values())


def expand(sweeps: list[list[str]]) -> list[Member]:
    return [Member(num=i, overrides=list(combo)) for i, combo in enumerate(itertools.product(*sweeps))]


def group_members(members: Sequence[Member]) -> list[list[Member]]:
    """Members that differ only in loss weights go together (order of first appearance)."""
    groups: dict[tuple, list[Member]] = {}
    for m in members:
        key = tuple(o for o in m.overrides if o.split("=", 1)[0].lstrip("+") not in WEIGHT_KEYS)
        groups.setdefault(key, []).append(m)
    return list(groups.values())


def _compose(conf_dir: Path, overrides: list[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name="config", overrides=overrides, return_hydra_config=True)


def task_config(cfg):
    """The job's config without the ``hydra`` node, as Hydra hands it to a task."""
    import copy

    from omegaconf import open_dict, read_write

    task_cfg = copy.deepcopy(cfg)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg


def _write_job_files(job_dir: Path, cfg, task_overrides: list[str], num: int) -> None:
    from omegaconf import OmegaConf

    hydra_dir = job_dir / ".hydra"
    _io.write_text(hydra_dir / "config.yaml", OmegaConf.to_yaml(task_config(cfg)))
    _io.write_text(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(task_overrides)))
    job = {
        "hydra": {
            "job": {"name": PROG, "override_dirname": str(cfg.hydra.job.override_dirname), "num": num, "id": str(num)},
            "mode": "MULTIRUN",
            "batched": True,
        }
    }
    _io.write_text(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create(job)))


def _status(job_dir: Path, status: str, **extra) -> None:
    jobs.write_status(job_dir, status, **extra)


def _shared_start(init, shape, key, content, styles, n: int) -> np.ndarray:
    """The start each member would have alone, shared by all: (n, H, W, 3)."""
    x0 = optimize.initial_images(init, shape, 1, key, content=content, styles=styles)  # (1, H, W, 3)
    return np.broadcast_to(np.asarray(x0), (n,) + tuple(x0.shape[1:]))


def _batch_settings(cfgs: list) -> tuple[list, dict, losses.PerceptualLoss]:
    """The members' settings, their loss weights as (B,) arrays, and the batch's loss: a term is
    computed if any member uses it (zeros switch it off per member)."""
    settings = [schema.stylize_settings(c) for c in cfgs]
    s0 = settings[0]
    for s in settings[1:]:
        same = dataclasses.replace(
            s, loss=dataclasses.replace(s.loss, alpha=s0.loss.alpha, beta=s0.loss.beta, tv_weight=s0.loss.tv_weight)
        )
        if same != s0:
            raise UserError("members of a batch must differ only in loss.alpha / loss.beta / loss.tv_weight")
    if len(s0.sizes) > 1:
        raise UserError("batched sweeps support single-stage runs only (no schedule); run it with nstyle-stylize -m")
    ws = {k: np.asarray([getattr(s.loss, k) for s in settings], np.float32) for k in ("alpha", "beta", "tv_weight")}
    loss = dataclasses.replace(
        s0.loss, alpha=float(ws["alpha"].max()), beta=float(ws["beta"].max()), tv_weight=float(ws["tv_weight"].max())
    )
    return settings, ws, loss


def run_group(cfgs: list, job_dirs: list[Path]) -> dict:
    """Optimise one group's members as one batch and write each member's files (process 0).

    With several devices (also those of several processes) the batch is split over all of them.
    """
    import jax

    settings, ws, loss = _batch_settings(cfgs)
    s0 = settings[0]
    inputs = transfer.load_inputs(s0)
    per_device = -(-len(cfgs) // jax.device_count())
    (plan,) = transfer.check_sizes(
        dataclasses.replace(s0, loss=loss), inputs, memory.available_bytes(), batch=per_device
    )
    mesh = distributed.make_mesh() if jax.device_count() > 1 else None
    content, styles, init_file, shape = transfer.stage_images(s0, inputs, s0.sizes[-1])
    masks, style_masks = transfer.stage_masks(s0, inputs, s0.sizes[-1])
    params = weights.load(s0.arch)
    key = jax.random.fold_in(jax.random.key(s0.seed), 0)  # nstyle-stylize's stage 0 key
    init = _shared_start(s0.init if init_file is None else init_file, shape, key, content, styles, len(cfgs))
    optim = dataclasses.replace(s0.optim, steps=s0.stage_steps[-1])
    t0 = time.perf_counter()
    r = optimize.stylize_batch(
        params,
        loss,
        content=content,
        styles=styles,
        style_blend=s0.style_blend,
        weights=ws,
        batch=len(cfgs),
        shape=shape,
        init=init,
        key=key,
        optim=optim,
        memory=plan.mode,
        tile=plan.tile,
        masks=masks,
        style_masks=style_masks,
        mesh=mesh,
    )
    wall = time.perf_counter() - t0
    out = {"wall_s": wall, "compile_s": r.compile_s, "batch": len(cfgs), "devices": jax.device_count()}
    if not distributed.is_main():
        return out
    for i, (s, d) in enumerate(zip(settings, job_dirs)):
        final = {k: float(v[i]) for k, v in r.final.items()}
        stage = {
            "size": s.sizes[-1],
            "shape": list(shape),
            "iterations": r.iterations,
            "evals": int(r.evals[i]),
            "restarts": int(r.restarts[i]),
            "lbfgs_memory_resets": int(r.resets[i]),
            "compile_s": r.compile_s,
            "wall_s": r.wall_s,
            "memory_mode": plan.mode,
            "tile": plan.tile,
            "memory_estimate_bytes": plan.bytes,
            "stopped_reason": "nonfinite" if r.diverged[i] else r.stopped_reason,
            "final": final,
        }
        member = transfer.TransferResult(
            image=transfer.finish(s, inputs, r.images[i]),
            stages=[stage],
            history={k: v[:, i].tolist() for k, v in r.history.items()},
            stopped_reason=stage["stopped_reason"],
        )
        extra = {"batch": len(cfgs), "batch_index": i, "devices": jax.device_count(), "processes": jax.process_count()}
        metrics = stylize.run_metrics(s, member, params, wall_s=wall, extra=extra)
        images.save_image(d / "result.png", member.image)
        _io.write_json(d / "metrics.json", metrics)
        _status(d, "completed")
    return out


def run_batch(cfgs: list, job_dirs: list[Path]) -> dict:
    """:func:`run_group` with the members' status: ``running``, then ``completed`` or ``failed``."""
    main = distributed.is_main()
    if main:
        for d in job_dirs:
            _status(d, "running")
    try:
        return run_group(cfgs, job_dirs)
    except Exception as e:
        if main:
            msg = message(e) if isinstance(e, UserError) else f"{type(e).__name__}: {message(e)}"
            for d in job_dirs:
                _status(d, "failed", error=msg[:500])
        raise


def batch_job(cfgs: list, job_dirs: list[str]) -> dict:
    """One batch as a SLURM job: what submitit runs in each task of the job."""
    from nstyle import _xla

    distributed.initialize()  # a job of several tasks: one batch split over all their devices
    _xla.persistent_cache()
    return run_batch(cfgs, [Path(d) for d in job_dirs])


@dataclasses.dataclass
class Batch:
    cfgs: list  # the members' composed configs (with their hydra node)
    dirs: list[Path]
    members: list[Member]

    def write_job_files(self, fixed: list[str]) -> None:
        """Hydra's records of each member (process 0)."""
        if distributed.is_main():
            for cfg, d, m in zip(self.cfgs, self.dirs, self.members):
                _write_job_files(d, cfg, fixed + m.overrides, m.num)

    def task_configs(self) -> list:
        return [task_config(c) for c in self.cfgs]


def _run_here(batch: Batch, fixed: list[str], quiet: bool) -> bool:
    """Run one batch in this process (with the others of a multi-process run); True if it completed."""
    batch.write_job_files(fixed)
    t0 = time.perf_counter()
    try:
        out = run_batch(batch.task_configs(), batch.dirs)
    except Exception as e:  # noqa: BLE001 -- a failed batch is reported in its jobs; go on
        msg = message(e) if isinstance(e, UserError) else f"{type(e).__name__}: {message(e)}"
        print(f"{PROG}: batch of {len(batch.dirs)} failed: {msg}", file=sys.stderr)
        return False
    if not quiet and distributed.is_main():
        names = ", ".join(" ".join(m.overrides) for m in batch.members)
        print(
            f"{PROG}: batch of {out['batch']} done in {time.perf_counter() - t0:.1f} s "
            f"(compile {out['compile_s']:.1f} s): {names}",
            file=sys.stderr,
        )
    return True


def _run_on_slurm(batches: list[Batch], launcher: dict, fixed: list[str], quiet: bool) -> int:
    """Submit each batch as a task of one SLURM array and wait for them; returns the failed member count."""
    ex = slurm.executor({**launcher, "name": launcher.get("name") or PROG}, launcher["submitit_folder"])
    for b in batches:
        b.write_job_files(fixed)
        for d, m in zip(b.dirs, b.members):
            _status(d, "pending", overrides=m.overrides, num=m.num)
    with ex.batch():
        submitted = [ex.submit(batch_job, b.task_configs(), [str(d) for d in b.dirs]) for b in batches]
    for job, b in zip(submitted, batches):
        for d in b.dirs:
            jobs.mark_submitted(d, job.job_id)
    if not quiet:
        ids = ", ".join(j.job_id for j in submitted)
        print(f"{PROG}: {len(batches)} batches submitted to SLURM ({ids}); waiting for them", file=sys.stderr)
    failed = 0
    for job, b in zip(submitted, batches):
        error = slurm.wait(job)
        if error is None:
            if not quiet:
                print(f"{PROG}: SLURM job {job.job_id} done: {len(b.dirs)} members", file=sys.stderr)
            continue
        print(f"{PROG}: SLURM job {job.job_id} failed: {error}", file=sys.stderr)
        for d in b.dirs:
            status = (jobs.read_status(d) or {}).get("status")
            if status in ("pending", "running"):
                _status(d, "failed", error=error[:500], slurm_job=job.job_id)
            failed += status != "completed"
    return failed


def _batch_loss(settings: list[transfer.TransferSettings]):
    """The loss a batch computes: every term any member uses (zeros switch it off per member)."""
    s0 = settings[0]
    top = {k: max(getattr(s.loss, k) for s in settings) for k in ("alpha", "beta", "tv_weight")}
    return dataclasses.replace(s0.loss, **{k: float(v) for k, v in top.items()})


def batch_that_fits(cfgs: list) -> int:
    """The largest number of these members (one group) whose batch fits in memory, checked
    before anything is allocated; :class:`MemoryBudgetError` (with the size that would fit) if
    not even one does."""
    settings = [schema.stylize_settings(c) for c in cfgs]
    s0 = dataclasses.replace(settings[0], loss=_batch_loss(settings))
    max_gb = cfgs[0].max_memory_gb
    budget = int(max_gb * 2**30) if max_gb is not None else memory.available_bytes()
    inputs = transfer.load_inputs(s0)
    transfer.check_sizes(s0, inputs, budget, batch=1)
    n = len(cfgs)  # the runtime and weights are shared by the batch: only the images' part grows with it
    while n > 1 and transfer.needed_bytes(s0, inputs, batch=n) > budget:
        n -= 1
    return n


def run(argv: Sequence[str], conf_dir: Path | None = None, quiet: bool = False) -> tuple[Path, int]:
    """Expand, group and run the sweep given by ``argv``; returns the sweep directory and the
    number of jobs that failed.

    The sweep directory is created (unique, unless ``hydra.sweep.dir`` is given) and locked
    for the whole sweep. Every member's config and every batch's memory are checked before
    the first batch runs: a bad member or a batch that cannot fit even one image is a
    :class:`UserError` and nothing is written; a group too large for memory runs as several
    smaller batches.
    """
    from omegaconf import OmegaConf

    schema.register()
    conf_dir = conf_dir or app.conf_dir()
    parser = _parser()
    plain = [o.input_line for o in parser.parse_overrides(list(argv)) if not o.is_sweep_override()]
    base = _compose(conf_dir, plain)
    preset = base.hydra.sweeper.params
    params = OmegaConf.to_container(preset, resolve=False) if preset is not None else {}
    fixed, sweeps = split_sweep(argv, params)
    members = expand(sweeps)
    groups = group_members(members)
    main = distributed.is_main()
    # process 0 owns the sweep directory; the other processes of a multi-process sweep share it
    sweep = app.RunDir(base, argv, multirun=True)
    sweep.lock()
    failed = True
    try:
        sweep_dir = sweep.path
        batches = []
        for g in groups:
            cfgs, dirs, todo = [], [], []
            for m in g:
                cfg = _compose(conf_dir, fixed + m.overrides)
                d = sweep_dir / schema.job_dirname(cfg.hydra.job.override_dirname)
                if (d / "result.png").exists() and (d / "metrics.json").exists():
                    continue  # finished by an earlier (interrupted) invocation
                cfgs.append(cfg)
                dirs.append(d)
                todo.append(m)
            if not cfgs:
                continue
            n = batch_that_fits([task_config(c) for c in cfgs])
            batches += [Batch(cfgs[i : i + n], dirs[i : i + n], todo[i : i + n]) for i in range(0, len(cfgs), n)]
        if main:
            # what Hydra's multirun.yaml holds: lets the collector count jobs not yet started
            multirun = OmegaConf.to_container(base, resolve=False)
            multirun["hydra"]["overrides"]["task"] = list(argv)
            multirun["hydra"]["sweep"]["dir"] = str(sweep_dir)
            _io.write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(OmegaConf.create(multirun)))
        if not quiet and main:
            print(f"{PROG}: {len(members)} jobs in {len(batches)} batches -> {sweep_dir}", file=sys.stderr)
        launcher = OmegaConf.to_container(base.hydra.launcher, resolve=True) if "launcher" in base.hydra else {}
        if str(launcher.get("_target_", "")).endswith(".SlurmLauncher") and batches:
            n_failed = _run_on_slurm(batches, launcher, fixed, quiet)
        else:
            n_failed = sum(len(b.dirs) for b in batches if not _run_here(b, fixed, quiet))
        failed = False
    finally:
        sweep.close(failed)
    return sweep_dir, n_failed


@command(PROG)
def main(argv: Sequence[str] | None = None) -> int:
    """Console script; exit status 0 when every job completed, 1 when some failed, 2 for bad input."""
    from nstyle import _xla

    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    argv = [a for a in argv if a not in ("-m", "--multirun")]
    argv = slurm.shared_dir(argv, "hydra.sweep.dir", "multirun/stylize")
    app.check_overrides("config", argv, validate=stylize.validate)
    _xla.device_defaults()
    distributed.initialize()  # several tasks of a SLURM step: one grid split over all their devices
    _xla.persistent_cache()
    sweep_dir, failed = run(argv)
    if not distributed.is_main():
        return 0
    print(sweep_dir)
    if failed:
        print(f"{PROG}: {failed} job(s) failed; see their status.json, or nstyle-collect {sweep_dir}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
