"""``nstyle-train``: train a FastNet (Johnson et al. 2016) for one style or several, configured by Hydra.

    nstyle-train style=starry.jpg data=/data/coco/train2014 size=256 steps=40000 batch=4 seed=0
    nstyle-train 'style=[a.jpg,b.jpg,c.jpg]' data=DIR        # one network, three styles (Dumoulin et al. 2017)
    nstyle-train train/experiment=debug style=builtin:chelsea data=DIR      # tiny, seconds
    resume:  the same command plus hydra.run.dir=<an existing run directory>
    srun --ntasks=2 nstyle-train style=... data=DIR hydra.run.dir=DIR   # two processes, one model

The schema is :class:`nstyle.cli.schema.TrainSchema`; :func:`nstyle.train.train` does the
work in Hydra's run directory. Besides the library's files the run directory gets
``loss.png`` (the loss terms of ``metrics.csv``, redrawn at every checkpoint) and ``.hydra/``
(written once the run's checks passed: a refused resume leaves the directory as it was).

Under a SLURM step of several tasks (or with ``NSTYLE_DISTRIBUTED=1``) the processes join
through :func:`nstyle.distributed.initialize` and train one model; process 0 holds the run
directory's lock and writes every file, ``.hydra/`` included (``conf/train.yaml`` gives the
others no ``hydra.output_subdir``). They must share one run directory: without
``hydra.run.dir`` it is ``outputs/train/slurm-<job>.<step>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from nstyle import distributed, train
from nstyle._errors import UserError
from nstyle.cli import app, figures, schema, slurm
from nstyle.cli.errors import command, fail, message

PROG = "nstyle-train"


def plot_losses(workdir: Path) -> None:
    """``loss.png``: the logged loss terms against step, log scale."""
    rows = train.read_log(workdir / "metrics.csv")
    if not rows:
        return
    steps = [r["step"] for r in rows]
    curves = {
        k: (steps, [r[k] for r in rows]) for k in ("loss", "content", "style", "tv") if max(r[k] for r in rows) > 0
    }
    fig = figures.loss_curves(
        curves, title=f"FastNet training: {workdir.name}", xlabel="step", ylabel="weighted loss (mean per image)"
    )
    figures.save_figure(fig, workdir / "loss.png")


@command(PROG, exits=True)
def task(dcfg) -> float:
    """The Hydra task: validate, train in Hydra's run directory; returns the final loss."""
    from hydra.core.hydra_config import HydraConfig

    from nstyle import _xla

    app.quiet_jax_logs()
    hc = HydraConfig.get()
    cfg = schema.train_settings(dcfg, schema.Typed.from_overrides(list(hc.overrides.task)))
    workdir = Path(hc.runtime.output_dir)
    _xla.device_defaults()
    distributed.initialize()  # several tasks of a SLURM step: one run; before anything asks JAX for devices
    _xla.persistent_cache()  # a resumed or repeated run reuses the compiled train step
    main = distributed.is_main()
    summary = train.train(
        cfg,
        workdir,
        on_checkpoint=(lambda step: plot_losses(workdir)) if main else None,
        on_start=lambda: app.write_hydra_files(workdir, dcfg),
    )
    loss = summary["final"].get("loss", float("nan"))
    if main:
        plot_losses(workdir)
        print(f"{PROG}: wrote {workdir / 'model.npz'} (final loss {loss:.4g})")
    return float(loss)


def validate(cfg) -> None:
    """Every value of a composed config (each job of a sweep), before anything runs."""
    schema.train_settings(app.without_hydra(cfg), schema.Typed.from_overrides(list(cfg.hydra.overrides.task)))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if "-m" not in argv and "--multirun" not in argv:
            argv = slurm.shared_dir(argv, "hydra.run.dir", "outputs/train")
    except UserError as e:
        fail(PROG, message(e))
    app.hydra_main(PROG, "train", task, argv, validate=validate)


if __name__ == "__main__":
    main(sys.argv[1:])
