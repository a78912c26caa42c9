"""Run a sweep preset (conf/experiment/<name>.yaml), collect it, and publish its figure and table.

Used by :mod:`experiments.alpha_beta_grid` and :mod:`experiments.ablations`; the sweep runs
either as a Hydra multirun of ``nstyle-stylize`` (any launcher: ``+launcher=joblib``) or,
with ``--batched``, through ``nstyle-sweep`` (:mod:`nstyle.cli.sweep`). Then :func:`nstyle.cli.collect.summarize`
writes ``summary/`` inside the sweep directory, and ``--publish DIR`` copies the grid, the
loss curves and the table to ``DIR/<name>.png``, ``<name>_curves.png``, ``<name>.csv``,
``<name>.md``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from nstyle import _rundir
from nstyle._errors import UserError
from nstyle.cli import app, collect


def parse(prog: str, doc: str, argv: Sequence[str] | None):
    p = argparse.ArgumentParser(
        prog=prog,
        description=doc.strip().splitlines()[0],
        epilog="Other arguments are Hydra overrides for nstyle-stylize (size=256 steps=300 +launcher=joblib ...).",
    )
    p.add_argument("--batched", action="store_true", help="optimise members that differ only in α/β as one batch")
    p.add_argument("--sweep-dir", default=None, help="where the jobs go (default: multirun/<name>/<time>)")
    p.add_argument("--publish", default=None, help="copy figure and table here (e.g. experiments/results)")
    p.add_argument("--overwrite", action="store_true", help="let --publish replace existing files")
    p.add_argument("--no-eval", action="store_true", help="skip LPIPS / style distance in the table")
    return p.parse_known_args(argv)


def run_sweep(
    name: str, args, overrides: list[str], rows: str | None, cols: str | None, title: str
) -> tuple[collect.Summary | None, int]:
    """Run, collect and publish one sweep preset; returns ``(summary, exit status)``: 0 when
    every job completed, 1 when some failed (the others are still collected and published).

    The overrides and ``--publish`` are checked before anything runs (:class:`UserError`:
    one line, exit status 2); the sweep directory is a new one unless ``--sweep-dir`` names it.
    """
    published = [f"{name}{s}" for s in (".png", "_curves.png", ".csv", ".md")]
    dest = Path(args.publish) if args.publish else None
    if dest is not None and not args.overwrite:
        held = [n for n in published if (dest / n).exists()]
        if held:
            raise UserError(f"{dest} already holds {', '.join(held)}; add --overwrite to replace them")
    from nstyle.cli import stylize

    app.check_overrides("config", [f"experiment={name}", *overrides], validate=stylize.validate)
    if args.sweep_dir:
        sweep_dir = Path(args.sweep_dir)
    else:
        sweep_dir = _rundir.unique_dir(f"multirun/{name}/{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    hydra_args = [f"experiment={name}", f"hydra.sweep.dir={app.quote(str(sweep_dir))}", *overrides]
    t0 = time.perf_counter()
    if args.batched:
        from nstyle.cli import sweep

        code = sweep.main(hydra_args)
    else:
        code = subprocess.call([sys.executable, "-m", "nstyle.cli.stylize", "-m", *hydra_args])
    wall = time.perf_counter() - t0
    if code == 2 or not sweep_dir.is_dir():  # refused before any job ran; the sweep said why
        if not args.sweep_dir:
            _rundir.remove_if_unused(sweep_dir)
        return None, 2
    if code != 0:
        print(f"warning: the sweep exited with status {code}; collecting what it left", file=sys.stderr)
    s = collect.summarize(sweep_dir, rows_key=rows, cols_key=cols, evaluate=not args.no_eval, title=title)
    print(s.report())
    print(f"sweep wall time: {wall:.0f} s ({'batched' if args.batched else 'one job after another'})")
    if dest is not None:
        dest.mkdir(parents=True, exist_ok=True)
        sources = [s.files.get("grid"), s.files.get("curves"), s.files.get("csv"), s.files.get("md")]
        from experiments._common import publish_file

        for src, target in zip(sources, published):
            if src is not None:
                print(f"published {publish_file(src, dest / target)}")
    return s, 0 if code == 0 and not (s.counts["failed"] or s.counts["died"]) else 1
