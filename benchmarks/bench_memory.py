"""Peak memory and time per iteration of ``nstyle-stylize`` in each memory mode, against the estimate.

    .venv/bin/python benchmarks/bench_memory.py                                 # 1024 and 2048 px, every mode
    .venv/bin/python benchmarks/bench_memory.py --sizes 4096 --modes tiled --steps 1
    .venv/bin/python benchmarks/bench_memory.py --sizes 512 1024 --modes plain remat --json out.json
    .venv/bin/python benchmarks/bench_memory.py --apply 6000x4000 --max-memory-gb 4    # tiled FastNet inference

Each (size, mode) runs ``nstyle-stylize content=builtin:astronaut style=builtin:coffee size=S
steps=N memory_mode=M`` in a fresh process (the command users run, compilation included: the
persistent XLA cache is off, so every run compiles as a first run does) and reads its peak
resident memory from the kernel (``wait4``'s ``ru_maxrss``), its time per iteration and
compile time from ``metrics.json``, and the estimate ``nstyle.memory`` made before the run
(``memory_estimate_bytes``, with the tile it chose). A run whose estimate exceeds the memory
available now is skipped and reported as such. Alternate modes within a size (``--rounds``)
to compare times on a shared machine.

``--apply WxH`` measures ``nstyle-apply`` instead: a W×H JPEG (a built-in photo resized) through a
freshly initialised FastNet of the paper's size (the weights do not change the cost), in a fresh
process, within ``--max-memory-gb``; it reports the peak RSS, the tile nstyle-apply chose and
the seconds, once with the default statistics (a resized copy) and once with ``exact_stats``
if ``--exact`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STYLIZE = "import sys; from nstyle.cli.stylize import main; sys.argv[0] = 'nstyle-stylize'; main()"


def run_once(size: int, mode: str, steps: int, extra: list[str]) -> dict:
    """One stylisation in a fresh process; its peak RSS, timings and the estimate it planned with."""
    with tempfile.TemporaryDirectory(prefix="nstyle-mem-") as d:
        out = Path(d) / "run"
        args = [
            sys.executable,
            "-c",
            STYLIZE,
            "content=builtin:astronaut",
            "style=builtin:coffee",
            f"size={size}",
            f"steps={steps}",
            f"memory_mode={mode}",
            "snapshot_every=0",
            "quiet=true",
            f"hydra.run.dir={out}",
            *extra,
        ]
        env = dict(os.environ, NSTYLE_XLA_CACHE="off")
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stderr = proc.stderr.read()
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            return {"size": size, "mode": mode, "error": stderr.strip().splitlines()[-1] if stderr.strip() else code}
        m = json.loads((out / "metrics.json").read_text())
    stage = m["stages"][-1]
    return {
        "size": size,
        "mode": stage["memory_mode"],
        "tile": stage["tile"],
        "steps": m["iterations"],
        "peak_rss_bytes": usage.ru_maxrss * 1024,  # Linux: KiB
        "estimate_bytes": stage["memory_estimate_bytes"],
        "s_per_iter": m["optimize_s"] / max(m["iterations"], 1),
        "compile_s": m["compile_s"],
        "process_s": wall,
        "final_loss": m["final_loss"],
    }


APPLY = "import sys; from nstyle.cli.apply import main; sys.exit(main())"


def run_apply(w: int, h: int, max_memory_gb: float, exact: bool) -> dict:
    """``nstyle-apply`` on a w×h photo in a fresh process: peak RSS, the plan it chose, seconds."""
    import jax

    from nstyle import fastnet, images

    with tempfile.TemporaryDirectory(prefix="nstyle-apply-") as d:
        photo = images.save_image(Path(d) / "photo.jpg", images.resize(images.load_image("builtin:astronaut"), (h, w)))
        model = Path(d) / "model.npz"
        cfg = fastnet.FastNetConfig()
        fastnet.export_model(model, cfg, jax.device_get(fastnet.init(cfg, jax.random.key(0))))
        out = Path(d) / "out.png"
        args = [sys.executable, "-c", APPLY, f"model={model}", f"input={photo}", f"output={out}"]
        args += [f"max_memory_gb={max_memory_gb}"] + (["exact_stats=true"] if exact else [])
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        if os.waitstatus_to_exitcode(status) != 0:
            return {"size": [h, w], "error": proc.stderr.read().strip()[-500:]}
        meta = json.loads((Path(d) / "out.png.json").read_text())["images"][0]
        return {
            "size": [h, w],
            "exact_stats": exact,
            "max_memory_gb": max_memory_gb,
            "peak_rss_bytes": usage.ru_maxrss * 1024,
            "estimate_bytes": meta["memory_estimate_bytes"],
            "tile": meta["tile"],
            "stats_side": meta["stats_side"],
            "seconds": meta["seconds"],
            "process_s": wall,
        }


def estimate(size: int, mode: str) -> int:
    """What the run will plan with (the largest tile that fits, for tiled), without running it."""
    from nstyle import losses, memory

    layers = losses.PerceptualLoss().layers
    plan = memory.choose(memory.available_bytes(), size, size, layers, mode=mode)
    return plan.bytes if plan is not None else memory.estimate(size, size, layers, mode=mode)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--modes", nargs="+", default=["plain", "remat", "tiled"])
    ap.add_argument("--steps", type=int, default=2, help="iterations per run")
    ap.add_argument("--rounds", type=int, default=1, help="runs per (size, mode), alternated A B … then … B A")
    ap.add_argument("--headroom", type=float, default=0.85, help="skip runs estimated above this × available")
    ap.add_argument("--json", type=Path, default=None, help="also write every result to this file")
    ap.add_argument("--apply", default=None, metavar="WxH", help="measure nstyle-apply on a W×H photo instead")
    ap.add_argument("--max-memory-gb", type=float, default=4.0, help="--apply: the budget given to nstyle-apply")
    ap.add_argument("--exact", action="store_true", help="--apply: also run with exact_stats=true")
    ap.add_argument("extra", nargs="*", help="further nstyle-stylize overrides")
    args = ap.parse_args(argv)

    if args.apply:
        w, h = (int(v) for v in args.apply.lower().split("x"))
        results = [run_apply(w, h, args.max_memory_gb, exact) for exact in ([False, True] if args.exact else [False])]
        for r in results:
            if "error" in r:
                print(f"apply {w}x{h}: error: {r['error']}")
                continue
            print(
                f"apply {w}x{h} exact_stats={r['exact_stats']}: peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB "
                f"(estimate {r['estimate_bytes'] / 2**30:.2f}, budget {r['max_memory_gb']} GiB), tile {r['tile']}, "
                f"statistics from {r['stats_side']} px, {r['seconds']:.1f} s (process {r['process_s']:.1f} s)",
                flush=True,
            )
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        return

    from nstyle import memory

    results = []
    head = ("size", "mode", "tile", "peak RSS", "estimate", "est/meas", "s/it", "compile")
    print(" ".join(f"{h:>{n}}" for h, n in zip(head, (5, 10, 5, 9, 9, 8, 7, 8))), flush=True)
    for size in args.sizes:
        for r in range(args.rounds):
            for mode in args.modes if r % 2 == 0 else args.modes[::-1]:
                need, avail = estimate(size, mode), memory.available_bytes()
                if need > args.headroom * avail:
                    gib = f"estimate {need / 2**30:.1f} GiB, {avail / 2**30:.1f} GiB available"
                    print(f"{size:5d} {mode:>10}  skipped: {gib}", flush=True)
                    results.append({"size": size, "mode": mode, "skipped": True, "estimate_bytes": need})
                    continue
                res = run_once(size, mode, args.steps, args.extra)
                results.append(res)
                if "error" in res:
                    print(f"{size:5d} {mode:>10}  error: {res['error']}", flush=True)
                    continue
                ratio = res["estimate_bytes"] / res["peak_rss_bytes"]
                print(
                    f"{size:5d} {res['mode']:>10} {res['tile'] or '':>5} {res['peak_rss_bytes'] / 2**30:7.2f}G "
                    f"{res['estimate_bytes'] / 2**30:7.2f}G {ratio:8.2f} {res['s_per_iter']:7.1f} "
                    f"{res['compile_s']:7.1f}s",
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
