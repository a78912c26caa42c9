"""``nstyle-stylize``: one Gatys et al. stylisation per run, configured by Hydra.

    nstyle-stylize                                          # built-in demo, the paper's settings
    nstyle-stylize content=photo.jpg style=painting.jpg size=512 steps=500 seed=1
    nstyle-stylize style=[a.jpg,b.jpg] style_blend=[0.7,0.3] preserve_color=luminance
    nstyle-stylize schedule=[256] size=512                  # coarse to fine: 256 px, then 512 px
    nstyle-stylize experiment=demo_texture style=painting.jpg   # texture synthesis (α = 0)
    nstyle-stylize -m loss.alpha=1,10 loss.beta=1e3,1e4     # a sweep; one dir per job

The run directory (Hydra's; ``hydra.run.dir=DIR``) receives ``result.png``,
``snapshots/step_XXXX.png``, ``metrics.json`` and Hydra's ``.hydra/``. A directory that
already holds a result is refused unless ``overwrite=true``; in a sweep (``-m``), a job whose
directory holds a finished result (``result.png`` and a readable ``metrics.json``) is skipped,
so rerunning a sweep command with its ``hydra.sweep.dir`` completes only the jobs that are
missing. Mistakes in the input end the program with one line ``nstyle-stylize: error: ...``
and exit status 2.

:func:`run` is the library-level entry (settings in, files out); :func:`task` is the Hydra
task function and returns the final total loss, for sweepers that optimise it.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nstyle import _io, _rundir, distributed, images, memory, optimize, runinfo, transfer, weights
from nstyle._errors import UserError
from nstyle.cli import app, schema
from nstyle.cli.errors import EXIT_INTERRUPTED, fail, message

PROG = "nstyle-stylize"
RESULT_FILES = ("result.png", "metrics.json")


def finished_result(out_dir: Path) -> dict | None:
    """The metrics of the finished result in ``out_dir`` (both files, readable), else None."""
    if not (out_dir / "result.png").is_file():
        return None
    metrics = _io.read_json(out_dir / "metrics.json")
    return metrics if isinstance(metrics, dict) and "final_loss" in metrics else None


def check_run_dir(out_dir: Path, overwrite: bool) -> None:
    held = [f for f in RESULT_FILES if (out_dir / f).exists()]
    if held and not overwrite:
        raise UserError(
            f"{out_dir} already holds a result ({', '.join(held)}); choose another hydra.run.dir "
            f"or pass overwrite=true to replace it"
        )


class Progress:
    """tqdm bar over all stages with the current loss terms, and the snapshot writer."""

    def __init__(self, total: int, quiet: bool, snapshot_every: int, snap_dir: Path, finish, show_tv: bool):
        self.total, self.quiet, self.every, self.snap_dir, self.finish = total, quiet, snapshot_every, snap_dir, finish
        self.show_tv = show_tv
        self.done = 0
        self.bar = None

    def __call__(self, i: int, state, m: dict) -> None:
        self.done += 1
        if not self.quiet and self.bar is None and self.done == 1:
            from tqdm import tqdm  # made at the first iteration: it/s counts no loading or compiling

            self.bar = tqdm(total=self.total, desc=PROG, unit="it", dynamic_ncols=True, file=sys.stderr)
        if self.bar is not None:
            self.bar.update(1)
            post = {"loss": m["loss"][0], "content": m["content"][0], "style": m["style"][0]}
            if self.show_tv:
                post["tv"] = m["tv"][0]
            self.bar.set_postfix({k: f"{float(v):.3g}" for k, v in post.items()}, refresh=False)
            if self.done == self.total:
                self.close()
        if self.every and self.done % self.every == 0:
            x = np.clip(np.asarray(state.image[0], np.float32), 0.0, 1.0)
            images.save_image(self.snap_dir / f"step_{self.done:04d}.png", self.finish(x))

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def input_info(spec: str | None) -> dict | None:
    """Spec, resolved path and sha256 of an input image."""
    if spec is None:
        return None
    path = images.resolve(spec)
    return {"spec": spec, "path": str(path.resolve()), "sha256": _io.sha256_file(path)}


def run_metrics(
    s: transfer.TransferSettings, r: transfer.TransferResult, params, *, wall_s: float, extra: dict | None = None
) -> dict:
    """What ``metrics.json`` records of a stylisation (also of each member of a batched sweep)."""
    return {
        "result": "result.png",
        "stopped_reason": r.stopped_reason,
        "final_loss": r.final["loss"],
        "final": r.final,
        "iterations": r.iterations,
        "evals": r.evals,
        "evals_per_iter": r.evals / max(r.iterations, 1),
        "restarts": sum(st["restarts"] for st in r.stages),
        "lbfgs_memory_resets": sum(st["lbfgs_memory_resets"] for st in r.stages),
        "compile_s": sum(st["compile_s"] for st in r.stages),
        "optimize_s": sum(st["wall_s"] for st in r.stages),
        "wall_s": wall_s,
        "stages": r.stages,
        "history": r.history,
        "result_sha256": _io.array_sha256(images.to_uint8(r.image)),
        "inputs": {
            "content": input_info(s.content),
            "styles": [input_info(p) for p in s.styles],
            "init": input_info(s.init) if s.init not in optimize.INITS else s.init,
        },
        "settings": s,
        **runinfo.describe(params=params, seed=s.seed),
        **(extra or {}),
    }


def run(
    s: transfer.TransferSettings,
    out_dir: Path,
    *,
    overwrite: bool = False,
    quiet: bool = True,
    snapshot_every: int = 0,
    max_memory_bytes: int | None = None,
    extra_metrics: dict | None = None,
    on_start: Callable[[], Any] | None = None,
) -> dict:
    """Stylise with settings ``s`` into ``out_dir``; returns the metrics written to metrics.json.

    The run holds ``out_dir``'s lock (:mod:`nstyle._rundir`) from before its checks to its
    last write. Everything about the inputs (and that ``out_dir`` can be written) is checked
    before the network is loaded; then ``on_start()`` is called (the command line writes
    Hydra's records there) and, with ``overwrite``, the earlier result and its snapshots are
    removed, so a directory never mixes two runs.
    """
    import time

    out_dir = Path(out_dir)
    with _rundir.hold(out_dir):
        check_run_dir(out_dir, overwrite)
        _rundir.check_writable(out_dir, out_dir / "snapshots")
        inputs = transfer.load_inputs(s)
        budget = max_memory_bytes if max_memory_bytes is not None else memory.available_bytes()
        plans = transfer.check_sizes(s, inputs, budget)
        params = weights.load(s.arch)
        _rundir.remove_stale_temporaries(out_dir, ["snapshots"])
        if overwrite:
            remove_result(out_dir)
        if on_start is not None:
            on_start()
        progress = Progress(
            sum(s.stage_steps),
            quiet,
            snapshot_every,
            out_dir / "snapshots",
            lambda x: transfer.finish(s, inputs, x),
            s.loss.tv_weight > 0,
        )
        t0 = time.perf_counter()
        try:
            r = transfer.run(s, inputs, params, callback=progress, plans=plans)
        finally:
            progress.close()
        metrics = run_metrics(s, r, params, wall_s=time.perf_counter() - t0, extra=extra_metrics)
        images.save_image(out_dir / "result.png", r.image)
        _io.write_json(out_dir / "metrics.json", metrics)
    return metrics


def remove_result(out_dir: Path) -> None:
    """Delete a run directory's result, metrics and snapshots (``overwrite=true``): metrics
    first, so a reader never takes an old result for the new run's."""
    for name in reversed(RESULT_FILES):
        (out_dir / name).unlink(missing_ok=True)
    snaps = out_dir / "snapshots"
    if snaps.is_dir():
        for p in snaps.glob("step_*.png"):
            p.unlink(missing_ok=True)


def task(cfg) -> float:
    """The Hydra task: validate, stylise into Hydra's run dir; returns the final total loss."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from nstyle import _xla

    app.quiet_jax_logs()
    try:
        hc = HydraConfig.get()
        out_dir, multirun = Path(hc.runtime.output_dir), hc.mode == RunMode.MULTIRUN
        typed = schema.Typed.from_overrides(list(hc.overrides.task))
    except ValueError:  # called without Hydra (e.g. main(cfg) from a script)
        out_dir, multirun, typed = Path.cwd(), False, None
    quiet = cfg.quiet if cfg.quiet is not None else multirun
    done = finished_result(out_dir) if multirun and not cfg.overwrite else None
    if done is not None:  # a sweep run again: this job finished earlier
        print(f"{PROG}: {out_dir} already holds a finished result; skipped", file=sys.stderr, flush=True)
        loss = done["final_loss"]
        return float(loss) if isinstance(loss, (int, float)) else math.nan
    try:
        _xla.device_defaults()
        if distributed.launch_rank()[1] > 1:  # N copies of one job would race for its files
            raise UserError(
                "nstyle-stylize runs each job as one process; use hydra.launcher.tasks_per_node=1 "
                "(nstyle-sweep splits a batch over several processes)"
            )
        _xla.persistent_cache()  # a sweep's later jobs (and the next run) reuse the compiled step
        s = schema.stylize_settings(cfg, typed)
        max_mem = int(cfg.max_memory_gb * 2**30) if cfg.max_memory_gb is not None else None
        metrics = run(
            s,
            out_dir,
            # a sweep job's half-written result (killed between result.png and metrics.json) is redone
            overwrite=cfg.overwrite or multirun,
            quiet=quiet,
            snapshot_every=cfg.snapshot_every,
            max_memory_bytes=max_mem,
            on_start=lambda: app.write_hydra_files(out_dir, cfg),
        )
    except UserError as e:
        if multirun:
            # an exception (not sys.exit) lets Hydra mark this job failed and run the others;
            # the collector then reports it as failed with this message
            print(f"{PROG}: error: {message(e)}", file=sys.stderr, flush=True)
            raise app.JobError(f"{PROG}: error: {message(e)}") from None
        fail(PROG, message(e))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    reason = metrics["stopped_reason"]
    if reason == "nonfinite":
        print(
            f"{PROG}: warning: the loss became NaN/inf after {metrics['iterations']} iterations; the run stopped "
            f"and {out_dir / 'result.png'} is the last image with a finite loss",
            file=sys.stderr,
        )
    elif reason == "interrupted":
        print(
            f"{PROG}: interrupted after {metrics['iterations']} iterations; partial result in {out_dir}",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERRUPTED)
    if not quiet:
        print(
            f"{out_dir / 'result.png'}  loss {metrics['final_loss']:.4g}  {metrics['iterations']} it  "
            f"{metrics['evals_per_iter']:.2f} evals/it  {metrics['wall_s']:.1f} s",
            file=sys.stderr,
        )
    loss = metrics["final_loss"]
    return float(loss) if isinstance(loss, (int, float)) else math.nan


def precheck(run_dir: Path, cfg, multirun: bool) -> None:
    """Before Hydra writes anything: refuse a run directory that holds a result, and a sweep
    directory that holds finished jobs (Hydra would replace their ``.hydra/`` records), unless
    the sweep goes through ``+launcher=slurm``, which reruns only what did not finish."""
    if cfg.overwrite:
        return
    if not multirun:
        check_run_dir(run_dir, False)
        return
    if str(cfg.hydra.launcher.get("_target_", "")).startswith("hydra_plugins.nstyle_launcher."):
        return  # nstyle's SLURM launcher submits only the unfinished jobs, and leaves the others' records alone
    done = sorted(p.parent for p in run_dir.rglob("metrics.json") if (p.parent / ".hydra").is_dir())
    if done:
        raise UserError(
            f"{run_dir} already holds {len(done)} finished job(s) (e.g. {done[0].relative_to(run_dir)}); "
            f"choose another hydra.sweep.dir, or nstyle-sweep to finish an interrupted sweep"
        )


def validate(cfg) -> None:
    """Every value of a composed config (one job of a sweep too), before anything runs."""
    schema.stylize_settings(app.without_hydra(cfg), schema.Typed.from_overrides(list(cfg.hydra.overrides.task)))


def main(cfg: Any = None):
    """Console script. With ``cfg`` (a composed config) it runs :func:`task` and returns the
    final total loss; without, it parses the command line with Hydra (and returns None, so
    the console script exits 0)."""
    schema.register()
    if cfg is not None:
        return task(cfg)
    app.hydra_main(PROG, "config", task, precheck=precheck, validate=validate)


if __name__ == "__main__":
    main()
