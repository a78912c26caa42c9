"""FastNet speed: inference vs the Gatys optimisation (Johnson et al.'s Table 1), and training throughput.

    .venv/bin/python benchmarks/bench_fastnet.py                         # everything, CPU sizes 256 512 1024
    .venv/bin/python benchmarks/bench_fastnet.py --what infer --sizes 256 512
    .venv/bin/python benchmarks/bench_fastnet.py --what train --train-size 256 --batch 4

- ``infer``: seconds per image for the full network (paper architecture; the weights do not
  change the cost) at each size, median of ``--repeats`` after one compile call.
- ``gatys``: seconds per L-BFGS iteration of nstyle.optimize (VGG19, the paper's layers), median
  of ``--gatys-iters`` iterations after compiling; the time for 100/300/500 iterations is that
  median times the count (each iteration is one identical loss+gradient evaluation). The ratio
  to one FastNet pass is Johnson et al.'s speed-up.
- ``train``: images/s of the jitted train step (VGG16 loss) at ``--train-size`` px, batch ``--batch``.

Prints a table and writes JSON to ``--out`` (default: stdout only). Timings are of whatever
else the machine is doing; report the machine and its load with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np


def _median_time(fn, repeats: int) -> float:
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def bench_infer(sizes, repeats):
    from nstyle import fastnet

    cfg = fastnet.FastNetConfig()
    params = fastnet.init(cfg, jax.random.key(0))
    from nstyle import _xla

    run = _xla.jit(lambda p, x: fastnet.stylize(cfg, p, x))  # as nstyle-apply compiles it
    out = {}
    for s in sizes:
        x = jax.random.uniform(jax.random.key(s), (1, s, s, 3))
        jax.block_until_ready(run(params, x))  # compile
        out[s] = _median_time(lambda: run(params, x), repeats)
        print(f"infer {s:5d} px: {out[s]:.4f} s/image", flush=True)
    return out


def bench_gatys(sizes, iters):
    from nstyle import losses, optimize, vgg, weights

    loss = losses.PerceptualLoss()  # the paper's layers and weights
    params = vgg.with_backward_kernels(weights.load("vgg19"), loss.layers)  # as optimize.stylize_batch prepares them
    optim = optimize.OptimConfig(name="lbfgs", steps=iters)
    init, step = optimize.make_step(loss, optim)
    out = {}
    for s in sizes:
        rng = np.random.default_rng(s)
        content, style = rng.random((s, s, 3), dtype=np.float32), rng.random((s, s, 3), dtype=np.float32)
        targets = optimize.prepare_targets(params, loss, content, [style], None, 1)
        w = optimize.loss_weights(loss, 1)
        state = init(jnp.asarray(content[None]))
        state, m = step(state, params, targets, w)  # compile
        jax.block_until_ready(m)
        ts = []
        for _ in range(iters):
            t = time.perf_counter()
            state, m = step(state, params, targets, w)
            jax.block_until_ready(m)
            ts.append(time.perf_counter() - t)
        out[s] = statistics.median(ts)
        print(f"gatys {s:5d} px: {out[s]:.3f} s/iteration (median of {iters})", flush=True)
    return out


def bench_train(size, batch, steps):
    import optax

    from nstyle import fastnet, losses, train, weights

    vp = weights.load("vgg16")
    loss, _ = train.perceptual_loss_for(train.TrainLoss(), size, vp)
    style = losses.style_targets(vp, [jax.random.uniform(jax.random.key(1), (1, size, size, 3))], loss)
    net, opt = fastnet.FastNetConfig(), optax.adam(1e-3)
    mesh = train.make_mesh()
    step = train.make_train_step(net, loss, opt, vp, style, mesh)
    state = train.init_state(net, opt, jax.random.key(0), mesh)
    x = jax.random.uniform(jax.random.key(2), (batch, size, size, 3))
    key = jax.random.key(3)
    state, m = step(state, x, key)  # compile
    jax.block_until_ready(m)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, x, key)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t) / steps
    print(
        f"train {size} px batch {batch}: {dt:.3f} s/step, {batch / dt:.2f} images/s (loss {float(m['loss']):.4g})",
        flush=True,
    )
    return {"size": size, "batch": batch, "s_per_step": dt, "images_per_s": batch / dt, "loss": float(m["loss"])}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--what", nargs="+", default=["infer", "gatys", "train"], choices=["infer", "gatys", "train"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[256, 512, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--gatys-iters", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--train-steps", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    res = {
        "device": str(jax.devices()[0]),
        "platform": jax.devices()[0].platform,
        "cpus": os.cpu_count(),
        "load_avg": os.getloadavg(),
    }
    if "infer" in args.what:
        res["infer_s"] = bench_infer(args.sizes, args.repeats)
    if "gatys" in args.what:
        res["gatys_s_per_iter"] = bench_gatys(args.sizes, args.gatys_iters)
    if "infer_s" in res and "gatys_s_per_iter" in res:
        print("\n size | FastNet s | Gatys 100 it s | 300 it s | 500 it s | speed-up (100 / 300 / 500)")
        table = {}
        for s in args.sizes:
            f, g = res["infer_s"][s], res["gatys_s_per_iter"][s]
            row = {n: g * n for n in (100, 300, 500)}
            table[s] = {
                "fastnet_s": f,
                **{f"gatys_{n}_s": v for n, v in row.items()},
                **{f"speedup_{n}": v / f for n, v in row.items()},
            }
            print(
                f" {s:4d} | {f:9.4f} | {row[100]:14.1f} | {row[300]:8.1f} | {row[500]:8.1f} | "
                f"{row[100] / f:.0f}x / {row[300] / f:.0f}x / {row[500] / f:.0f}x"
            )
        res["table"] = table
    if "train" in args.what:
        res["train"] = bench_train(args.train_size, args.batch, args.train_steps)
    res["load_avg_after"] = os.getloadavg()
    text = json.dumps(res, indent=2, default=str)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
