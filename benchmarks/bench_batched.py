"""Batched sweep vs one-by-one: K α/β values of the paper's grid as ONE batched optimisation.

    .venv/bin/python benchmarks/bench_batched.py --size 128 --steps 20 --k 4 --rounds 2

The K members share the content and style images and the layers; only β differs (per-image
loss weights, vmapped inside one jitted step, see nstyle.optimize). "one by one" runs the K
members as K separate optimisations, each compiling its own step — what K Hydra jobs cost —
and is also reported without the compile time (pure iterations). The two orders alternate
over ``--rounds`` to spread any drift in machine load; medians are reported.

Checks that the batched images equal the one-by-one images (the batch is K independent
optimisations, not one joint one) and prints one JSON line with the timings and ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import numpy as np

from nstyle import images, losses, optimize, weights


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--k", type=int, default=4, help="grid members (α/β values) per batch")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--content", default="builtin:chelsea")
    p.add_argument("--style", default="builtin:hubble_deep_field")
    args = p.parse_args()

    params = weights.load("vgg19")
    content = images.load_image(args.content, args.size)
    style = images.load_image(args.style, args.size)
    betas = [10.0 ** (2 + i) for i in range(args.k)]  # α = 1: α/β = 1e-2, 1e-3, ...
    loss = losses.PerceptualLoss(beta=1e3, pooling="avg")
    optim = optimize.OptimConfig(steps=args.steps)
    key = jax.random.key(0)

    def batched():
        t0 = time.perf_counter()
        r = optimize.stylize_batch(
            params,
            loss,
            content=content,
            styles=[style],
            weights={"beta": np.asarray(betas)},
            init="content",
            key=key,
            optim=optim,
        )
        return time.perf_counter() - t0, r.wall_s, r.images

    def one_by_one():
        t0 = time.perf_counter()
        iters, out = 0.0, []
        for b in betas:
            r = optimize.stylize(
                params,
                losses.PerceptualLoss(beta=b, pooling="avg"),
                content=content,
                styles=[style],
                init="content",
                key=key,
                optim=optim,
            )
            iters += r.wall_s
            out.append(r.image)
        return time.perf_counter() - t0, iters, np.stack(out)

    res = {"batched": [], "batched_iter": [], "single": [], "single_iter": []}
    max_diff = 0.0
    for rnd in range(args.rounds):
        order = (batched, one_by_one) if rnd % 2 == 0 else (one_by_one, batched)
        outs = {}
        for fn in order:
            total, it, imgs = fn()
            name = "batched" if fn is batched else "single"
            res[name].append(total)
            res[f"{name}_iter"].append(it)
            outs[name] = imgs
            print(f"round {rnd} {name:8s} total {total:7.2f} s  iterations {it:7.2f} s", flush=True)
        max_diff = max(max_diff, float(np.abs(outs["batched"] - outs["single"]).max()))
    med = {k: statistics.median(v) for k, v in res.items()}
    out = {
        "size": args.size,
        "steps": args.steps,
        "k": args.k,
        "device": str(jax.devices()[0]),
        "batched_total_s": med["batched"],
        "single_total_s": med["single"],
        "batched_iter_s": med["batched_iter"],
        "single_iter_s": med["single_iter"],
        "speedup_total": med["single"] / med["batched"],
        "speedup_iterations": med["single_iter"] / med["batched_iter"],
        "max_abs_pixel_diff": max_diff,
    }
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
