"""End-to-end seconds of a Gatys stylisation (100 L-BFGS iterations) in nstyle vs PyTorch.

    .venv/bin/python benchmarks/bench_stylize.py                         # 256 and 512 px, 1 round
    .venv/bin/python benchmarks/bench_stylize.py --sizes 256 --rounds 3  # A B, B A, A B ...
    .venv/bin/python benchmarks/bench_stylize.py --sizes 256 --warm-cache  # nstyle's later runs (XLA cache)

Both sides stylise the built-in chelsea (content) with the built-in ihc (style), longest side
``size``, the paper's settings (VGG19 from ``~/.cache/nstyle/vgg19.npz``, average pooling,
content conv4_2, style conv1_1 … conv5_1 with 1/5 each, α = 1, β = 1e3), starting from the
content image, with L-BFGS for exactly ``--steps`` iterations, history 10, no line search
(one loss+gradient evaluation per iteration on both sides):

- nstyle: ``nstyle.optimize.stylize`` (``OptimConfig(steps=100)``), in a fresh process;
- PyTorch: ``bench_stylize_torch.py`` with ``torch.optim.LBFGS``, run by ``--torch-python``
  (default ``$NSTYLE_TORCH_PYTHON``), in a fresh process.

"End to end" is measured inside each process after its imports: loading the weights, the
targets, compilation (nstyle), the iterations and the final loss. The runs alternate so a
change in the machine's load hits both; the medians over rounds and their ratio
nstyle/torch are printed (below 1.0: nstyle is faster). The final losses are printed as a
check that both did the same work (the two L-BFGS implementations differ in detail, e.g. the
first step's scaling, so they agree roughly, not exactly).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
TORCH_SCRIPT = HERE / "bench_stylize_torch.py"
CONTENT, STYLE = "builtin:chelsea", "builtin:ihc"


def child(images_npz: str, steps: int, xla_cache: str | None = None) -> dict:
    """One nstyle stylisation in this (fresh) process; returns the timings.

    ``xla_cache``: a persistent compilation cache directory (as ``nstyle-stylize`` uses one),
    else none: every compilation is cold.
    """
    t_start = time.perf_counter()
    import jax
    import numpy as np

    from nstyle import _xla, losses, optimize, runinfo, weights

    if xla_cache:
        _xla.persistent_cache(xla_cache)
    t0 = time.perf_counter()
    params = weights.load("vgg19")
    with np.load(images_npz) as z:
        content, style = z["content"], z["style"]
    r = optimize.stylize(
        params,
        losses.PerceptualLoss(),
        content=content,
        styles=[style],
        init="content",
        key=jax.random.key(0),
        optim=optimize.OptimConfig(steps=steps, memory=10),
    )
    t_end = time.perf_counter()
    return {
        "framework": "nstyle",
        "version": runinfo.versions()["jax"],
        "shape": list(content.shape[:2]),
        "iterations": r.iterations,
        "evals": r.evals,
        "end_to_end_s": t_end - t0,
        "optimize_s": r.wall_s,
        "compile_s": r.compile_s,
        "setup_s": t_end - t0 - r.wall_s - r.compile_s,
        "import_s": t0 - t_start,
        "loss_first": r.history["loss"][0],
        "loss_final": r.final["loss"],
    }


def _run(cmd: list[str]) -> dict:
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return json.loads(next(line[7:] for line in p.stdout.splitlines() if line.startswith("RESULT ")))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=1, help="pairs of runs per size, alternating which goes first")
    ap.add_argument(
        "--torch-python",
        default=os.environ.get("NSTYLE_TORCH_PYTHON"),
        help="the PyTorch venv's python (default $NSTYLE_TORCH_PYTHON)",
    )
    ap.add_argument(
        "--torch-threads",
        type=int,
        default=0,
        help="torch threads (default: all cores, as torch does; on a loaded machine its OpenMP "
        "barriers make 1 thread faster than 2, so try both)",
    )
    ap.add_argument(
        "--warm-cache",
        action="store_true",
        help="nstyle uses a persistent XLA cache (as nstyle-stylize does), warmed by one untimed run "
        "per size first: the time of any run after the first",
    )
    ap.add_argument("--xla-cache", help=argparse.SUPPRESS)
    ap.add_argument("--json", help="also write all per-run results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps, args.xla_cache)), flush=True)
        return

    import numpy as np

    from nstyle import _io, images, runinfo

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            npz = str(Path(tmp) / f"images_{size}.npz")
            np.savez(npz, content=images.load_image(CONTENT, size), style=images.load_image(STYLE, size))
            ours = [sys.executable, __file__, "--child", npz, "--steps", str(args.steps)]
            if args.warm_cache:
                ours += ["--xla-cache", str(Path(tmp) / "xla")]
                _run(ours)  # untimed: fills the cache
            theirs = [
                args.torch_python,
                str(TORCH_SCRIPT),
                "--images",
                npz,
                "--steps",
                str(args.steps),
                "--threads",
                str(args.torch_threads),
            ]
            for r in range(args.rounds):
                for name, cmd in (
                    [("nstyle", ours), ("torch", theirs)] if r % 2 == 0 else [("torch", theirs), ("nstyle", ours)]
                ):
                    res = {**_run(cmd), "size": size, "round": r}
                    runs.append(res)
                    print(
                        f"  {name:6s} {size}px round {r} threads {res.get('threads', '-')}: "
                        f"end to end {res['end_to_end_s']:7.1f} s "
                        f"(iterations {res['optimize_s']:6.1f} s, compile {res.get('compile_s', 0):5.1f} s), "
                        f"{res['iterations']} it, {res['evals']} evals, "
                        f"loss {res['loss_first']:.4g} -> {res['loss_final']:.4g}",
                        flush=True,
                    )
    dev = runinfo.device_info()
    cache = "warm persistent XLA cache" if args.warm_cache else "cold compilation"
    print(
        f"\n{args.steps} L-BFGS iterations, {dev['cpu_count']} CPUs ({dev['machine']}), nstyle with {cache}, "
        f"medians over {args.rounds} round(s):"
    )
    print(
        "| size | nstyle end-to-end s | torch end-to-end s | nstyle/torch | nstyle iterations s "
        "| torch iterations s | nstyle/torch (iterations) |"
    )
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        med = lambda fw, k: statistics.median(r[k] for r in runs if r["size"] == size and r["framework"] == fw)  # noqa: E731
        a, b = med("nstyle", "end_to_end_s"), med("torch", "end_to_end_s")
        ai, bi = med("nstyle", "optimize_s"), med("torch", "optimize_s")
        print(f"| {size} | {a:.1f} | {b:.1f} | {a / b:.2f} | {ai:.1f} | {bi:.1f} | {ai / bi:.2f} |")
    if args.json:
        _io.write_json(args.json, {"runs": runs, "device": dev, "versions": runinfo.versions()})


if __name__ == "__main__":
    main()
