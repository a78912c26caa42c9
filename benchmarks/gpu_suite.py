"""nstyle on one GPU: every figure the project lacks, in one run of under 8 minutes, one results file.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite_h100.json    # on the GPU machine
    python benchmarks/gpu_suite.py --dry-run                                       # anywhere: checks, in seconds

Sections, each at every matmul/convolution precision of ``--precisions`` (nstyle's
``NSTYLE_PRECISION``: float32, tensorfloat32 — the default — and bfloat16; the Gram products
are float32 at all of them):

- ``peak``: the achieved matmul peak (8192² float32 operands) at each precision, and the
  device's nominal peak where known: the denominators of every "share of peak" below;
- ``loss``: the Gatys loss value and gradient through VGG19 (the paper's layers) at 256, 512
  and 1024 px: median seconds, achieved TFLOP/s (2 × the forward convolutions' FLOPs: the
  backward pass computes input gradients only) and its share of the peaks;
- ``lbfgs``: a 512 px stylisation, 500 L-BFGS iterations end to end (``nstyle.optimize.stylize``:
  targets, compilation, iterations), its iterations' time and its final loss: the precision's
  effect on the result (the issue's goal: <= 3 s on an H100-class GPU; the original Lua
  neural-style reports 43 s for it on a Titan X);
- ``train``: FastNet training throughput at 256 px, batch 4 and 16 (images/s);
- ``infer``: FastNet inference at 256, 512, 1024 and 2048 px (seconds per image).

The results file (JSON) is rewritten after every section, so a run cut short keeps what it
measured. ``--dry-run`` runs every section on tiny inputs on whatever device there is (the
CPU here) with one precision, checks the inputs (VGG19 and VGG16 weights in nstyle's cache,
the built-in images) and writes the same file structure: ``tests/test_gpu_suite.py`` runs it.

On the GPU machine the weights must be in nstyle's cache (``NSTYLE_CACHE_DIR``) or their
source packages in ``NSTYLE_WEIGHTS_SOURCE``; nothing is downloaded. nstyle sets the
settings that matter on a GPU itself: buffer donation of the optimiser state and of the
training state, the preallocated memory fraction (``nstyle._xla.device_defaults``) and the
default precision (``nstyle._xla.precision``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import _common as C  # noqa: E402

# Dense (no sparsity) peaks from the vendors' data sheets, TFLOP/s: float32 on CUDA cores,
# TF32 and bfloat16 on tensor cores. Matched against jax's device_kind.
NOMINAL_TFLOPS = {
    "H200": {"float32": 67.0, "tensorfloat32": 494.7, "bfloat16": 989.4},
    "H100": {"float32": 67.0, "tensorfloat32": 494.7, "bfloat16": 989.4},  # SXM
    "A100": {"float32": 19.5, "tensorfloat32": 156.0, "bfloat16": 312.0},
    "L4": {"float32": 30.3, "tensorfloat32": 60.0, "bfloat16": 121.0},
}
FULL = {"loss": (256, 512, 1024), "lbfgs": (512, 500), "train": (256, (4, 16), 20), "infer": (256, 512, 1024, 2048)}
DRY = {"loss": (32,), "lbfgs": (32, 3), "train": (32, (2,), 2), "infer": (32,)}


def _time(fn, repeats: int, warmup: int = 1) -> list[float]:
    import jax

    for _ in range(warmup):
        jax.block_until_ready(fn())
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t)
    return out


def _nominal(kind: str) -> dict | None:
    return next((v for k, v in NOMINAL_TFLOPS.items() if k.lower() in kind.lower()), None)


def _shares(tflops: float, peaks: dict, precision: str) -> dict:
    return {f"share_of_{name}": tflops / p[precision] for name, p in peaks.items() if p and p.get(precision)}


def section_peak(prec: str, dry: bool) -> dict:
    import jax
    import jax.numpy as jnp

    n = 256 if dry else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    with jax.default_matmul_precision(prec):
        f = jax.jit(lambda a, b: a @ b)
        best = min(_time(lambda: f(a, a), 2 if dry else 10))
    return {"n": n, "tflops": 2 * n**3 / best / 1e12}


def section_loss(prec: str, dry: bool, sizes) -> dict:
    import jax

    from nstyle import _xla, losses, optimize, vgg, weights

    loss = losses.PerceptualLoss()
    params = vgg.with_backward_kernels(weights.load("vgg19"), loss.layers)
    out = {}
    for s in sizes:
        content, style, x = (a[0] for a in C.images(s))
        targets = optimize.prepare_targets(params, loss, content, [style], None, 1)
        t = jax.tree.map(lambda a: a[:1], targets)
        f = _xla.jit(jax.value_and_grad(lambda x, p, t: losses.perceptual_loss(p, x, t, loss)[0].sum()))
        xb = jax.numpy.asarray(x[None])
        t0 = time.perf_counter()
        v, _ = jax.block_until_ready(f(xb, params, t))
        compile_s = time.perf_counter() - t0
        times = _time(lambda: f(xb, params, t), 2 if dry else 20)
        med = statistics.median(times)
        out[str(s)] = {
            "median_s": med,
            "min_s": min(times),
            "compile_s": compile_s,
            "tflops": 2 * C.forward_gflop(s) / med / 1e3,
            "loss": float(v),
        }
    return out


def section_lbfgs(prec: str, dry: bool, size: int, steps: int) -> dict:
    from nstyle import images, losses, optimize, weights

    params = weights.load("vgg19")
    content = images.load_image("builtin:astronaut", max_side=size)
    style = images.load_image("builtin:coffee", max_side=size)
    t0 = time.perf_counter()
    r = optimize.stylize(
        params, losses.PerceptualLoss(), content=content, styles=[style], optim=optimize.OptimConfig(steps=steps)
    )
    total = time.perf_counter() - t0
    return {
        "size": size,
        "steps": r.iterations,
        "end_to_end_s": total,
        "iterations_s": r.wall_s,
        "compile_s": r.compile_s,
        "s_per_iteration": r.wall_s / max(r.iterations, 1),
        "final_loss": r.final["loss"],
        "stopped_reason": r.stopped_reason,
    }


def section_train(prec: str, dry: bool, size: int, batches, steps: int) -> dict:
    import jax
    import optax

    from nstyle import fastnet, losses, train, weights

    vp = weights.load("vgg16")
    loss, _ = train.perceptual_loss_for(train.TrainLoss(), size, vp)
    style = losses.style_targets(vp, [jax.random.uniform(jax.random.key(1), (1, size, size, 3))], loss)
    net = fastnet.FastNetConfig(width=8, blocks=1) if dry else fastnet.FastNetConfig()
    opt, mesh = optax.adam(1e-3), train.make_mesh()
    step = train.make_train_step(net, loss, opt, vp, style, mesh)
    out = {}
    for b in batches:
        b = max(b, jax.device_count()) // jax.device_count() * jax.device_count()
        state = train.init_state(net, opt, jax.random.key(0), mesh)
        x = jax.random.uniform(jax.random.key(2), (b, size, size, 3))
        key = jax.random.key(3)
        t0 = time.perf_counter()
        state, m = step(state, x, key)  # compiles
        jax.block_until_ready(m)
        compile_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(steps):
            state, m = step(state, x, key)
        jax.block_until_ready(m)
        dt = (time.perf_counter() - t0) / steps
        out[str(b)] = {"s_per_step": dt, "images_per_s": b / dt, "compile_s": compile_s, "loss": float(m["loss"])}
    return out


def section_infer(prec: str, dry: bool, sizes) -> dict:
    import jax

    from nstyle import _xla, fastnet

    cfg = fastnet.FastNetConfig(width=8, blocks=1) if dry else fastnet.FastNetConfig()
    params = fastnet.init(cfg, jax.random.key(0))
    run = _xla.jit(lambda p, x: fastnet.stylize(cfg, p, x))  # as nstyle-apply compiles it
    out = {}
    for s in sizes:
        x = jax.random.uniform(jax.random.key(s), (1, s, s, 3))
        times = _time(lambda: run(params, x), 2 if dry else 10)
        out[str(s)] = {"median_s": statistics.median(times), "min_s": min(times)}
    return out


def check_inputs() -> dict:
    """Everything the suite reads, before any timing: weights (cached or from a local source), images."""
    import jax

    from nstyle import images, weights

    for name in ("vgg19", "vgg16"):
        weights.load(name)
    for spec in ("builtin:astronaut", "builtin:coffee"):
        images.load_image(spec, max_side=32)
    dev = jax.devices()[0]
    return {"platform": dev.platform, "device_kind": dev.device_kind, "devices": jax.device_count()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--out", type=Path, default=None, help="results file (JSON); default benchmarks/results/gpu_suite_<device>.json"
    )
    ap.add_argument("--overwrite", action="store_true", help="replace an existing results file")
    ap.add_argument("--dry-run", action="store_true", help="tiny inputs, one precision: check every path quickly")
    ap.add_argument("--precisions", nargs="+", default=["float32", "tensorfloat32", "bfloat16"])
    ap.add_argument("--sections", nargs="+", default=["peak", "loss", "lbfgs", "train", "infer"])
    args = ap.parse_args(argv)

    from nstyle import _io, _xla, runinfo

    _xla.device_defaults()
    plan = DRY if args.dry_run else FULL
    precisions = args.precisions[:1] if args.dry_run else args.precisions
    for p in precisions:
        if p not in _xla.PRECISIONS:
            raise SystemExit(f"error: unknown precision '{p}' (expected one of {', '.join(_xla.PRECISIONS)})")
    t_start = time.perf_counter()
    info = check_inputs()
    if args.out is not None:
        out = args.out
    elif args.dry_run:  # a check, not a result: nothing is left in the tree
        out = Path(tempfile.mkdtemp(prefix="gpu_suite_")) / "dry_run.json"
    else:
        out = HERE / "results" / f"gpu_suite_{info['device_kind'].replace(' ', '_').lower()}.json"
    if out.exists() and not args.overwrite:
        raise SystemExit(f"error: {out} exists; pass --overwrite to replace it or --out to write elsewhere")
    results = {
        "suite": "gpu_suite",
        "dry_run": args.dry_run,
        "device": info,
        "run": runinfo.describe(),
        "nominal_tflops": _nominal(info["device_kind"]),
        "precisions": precisions,
        "sections": {},
    }
    runners = {
        "peak": lambda p: section_peak(p, args.dry_run),
        "loss": lambda p: section_loss(p, args.dry_run, plan["loss"]),
        "lbfgs": lambda p: section_lbfgs(p, args.dry_run, *plan["lbfgs"]),
        "train": lambda p: section_train(p, args.dry_run, *plan["train"]),
        "infer": lambda p: section_infer(p, args.dry_run, plan["infer"]),
    }
    for name in args.sections:
        if name not in runners:
            raise SystemExit(f"error: unknown section '{name}' (expected some of {', '.join(runners)})")
    for name in args.sections:
        for p in precisions:
            os.environ[_xla.PRECISION_ENV] = p
            t0 = time.perf_counter()
            res = runners[name](p)
            results["sections"].setdefault(name, {})[p] = {**res, "section_s": time.perf_counter() - t0}
            print(f"{name:6s} {p:14s} {time.perf_counter() - t0:7.1f} s", flush=True)
            _io.write_json(out, _with_shares(results), overwrite=True)
    results["total_s"] = time.perf_counter() - t_start
    _io.write_json(out, _with_shares(results), overwrite=True)
    print(f"wrote {out} ({results['total_s']:.0f} s)")
    return 0


def _with_shares(results: dict) -> dict:
    """Add each loss measurement's share of the achieved and nominal peak at its precision."""
    peaks = {p: {"tflops": v["tflops"]} for p, v in results["sections"].get("peak", {}).items()}
    for p, by_size in results["sections"].get("loss", {}).items():
        for r in by_size.values():
            if not isinstance(r, dict):
                continue
            achieved = {p: peaks.get(p, {}).get("tflops")}
            r.update(_shares(r["tflops"], {"achieved_peak": achieved, "nominal_peak": results["nominal_tflops"]}, p))
    return results


if __name__ == "__main__":
    sys.exit(main())
