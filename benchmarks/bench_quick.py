"""``experiment=quick`` against the paper recipe: wall time, style distance and LPIPS on the built-in pairs.

    .venv/bin/python benchmarks/bench_quick.py --size 160 --paper-steps 150 --rounds 1
    .venv/bin/python benchmarks/bench_quick.py --rounds 0 --candidate "optim=adam steps=60"   # try other settings

The paper recipe is ``nstyle-stylize`` at its defaults (L-BFGS without line search, Gram
matrices, α/β = 1e-3, average pooling, from the content image) with ``--paper-steps``
iterations; the quick preset is ``nstyle-stylize experiment=quick`` (conf/experiment/quick.yaml),
or ``--candidate`` overrides instead. Both at ``--size`` px on every pair of
``nstyle.images.BUILTIN_PAIRS``, each composed through the same Hydra config and schema as the
command, and run by :func:`nstyle.transfer.run`.

Timing: per pair, one untimed run of each fills the XLA compilation cache, then
``--rounds`` rounds of A B B A (paper, quick, quick, paper) are timed; the medians are
reported. ``--no-warmup`` skips the untimed runs when the persistent compilation cache already
holds both sides' programs: the first A and the first B then each pay the in-process loading
once, symmetrically. ``wall_s`` is the whole :func:`transfer.run` (targets, loading compiled code,
iterations, every stage); ``optimize_s`` the iterations alone. The weights and images are
loaded once, outside the timing. Quality, measured on the saved 8-bit results with networks
the loss does not use: the VGG16 Gram distance to the style image
(:func:`nstyle.metrics.style_distance`) and LPIPS (VGG16 heads) to the content image. Lower is
better for both; the goal is both at most the paper recipe's in at most half its time.
Prints one JSON line per pair and a summary line.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import time

import numpy as np


def settings(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from nstyle.cli import app, schema

    schema.register()
    with initialize_config_dir(config_dir=str(app.conf_dir()), version_base="1.3"):
        return schema.stylize_settings(compose("config", overrides=overrides))


def run(s, inputs, params) -> tuple[np.ndarray, float, float]:
    from nstyle import images, transfer

    t0 = time.perf_counter()
    r = transfer.run(s, inputs, params)
    wall = time.perf_counter() - t0
    saved = images.to_uint8(r.image).astype(np.float32) / 255.0  # what result.png holds
    return saved, wall, sum(st["wall_s"] for st in r.stages)


def quality(image: np.ndarray, content: np.ndarray, style: np.ndarray) -> dict:
    from nstyle import images, lpips, metrics

    c = images.resize(content, image.shape[:2])
    return {
        "style_distance": metrics.style_distance(image, style),
        "lpips": float(np.asarray(lpips.lpips_distance(image[None], c[None]))[0]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--paper-steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=1, help="rounds of A B B A timing (0: one untimed-cache run each)")
    p.add_argument("--candidate", default="experiment=quick", help="overrides of the quick side")
    p.add_argument("--pairs", type=int, default=None, help="only the first N built-in pairs")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", help="time the first round too (see above)")
    args = p.parse_args()

    from nstyle import _xla, images, transfer, weights

    _xla.persistent_cache()
    quick_overrides = shlex.split(args.candidate)
    out = []
    for content_spec, style_spec in images.BUILTIN_PAIRS[: args.pairs]:
        common = [f"content={content_spec}", f"style={style_spec}"]
        paper = settings([*common, f"size={args.size}", f"steps={args.paper_steps}"])
        quick = settings([*common, *quick_overrides, f"size={args.size}"])
        sides = {"paper": paper, "quick": quick}
        inputs = {k: transfer.load_inputs(s) for k, s in sides.items()}
        params = {k: weights.load(s.arch) for k, s in sides.items()}
        times: dict[str, list] = {"paper": [], "quick": []}
        results = {}
        if args.warmup or args.rounds == 0:
            for k in sides:  # fills the compilation cache; its own timing kept when no rounds follow
                results[k] = run(sides[k], inputs[k], params[k])
                if args.rounds == 0:
                    times[k].append(results[k][1:])
        for _ in range(args.rounds):
            for k in ("paper", "quick", "quick", "paper"):
                img, wall, opt = run(sides[k], inputs[k], params[k])
                if k in results:
                    assert np.array_equal(img, results[k][0]), "a rerun with the same settings changed the pixels"
                else:
                    results[k] = (img, wall, opt)
                times[k].append((wall, opt))
        content = images.resize(inputs["paper"].content, results["paper"][0].shape[:2])
        style = images.resize(
            inputs["paper"].styles[0], transfer.style_shape(paper, inputs["paper"].styles[0], args.size)
        )
        row = {"pair": f"{content_spec}×{style_spec}", "size": args.size}
        for k in sides:
            q = quality(results[k][0], content, style)
            row[k] = {
                "wall_s": statistics.median(t[0] for t in times[k]),
                "optimize_s": statistics.median(t[1] for t in times[k]),
                "iterations": sum(sides[k].stage_steps),
                **q,
            }
        row["time_ratio"] = row["quick"]["wall_s"] / row["paper"]["wall_s"]
        row["style_ratio"] = row["quick"]["style_distance"] / row["paper"]["style_distance"]
        row["lpips_ratio"] = row["quick"]["lpips"] / row["paper"]["lpips"]
        print(json.dumps(row), flush=True)
        out.append(row)
    summary = {
        "candidate": args.candidate,
        "pairs": len(out),
        "time_ratio": statistics.mean(r["time_ratio"] for r in out),
        "style_ratio": statistics.mean(r["style_ratio"] for r in out),
        "lpips_ratio": statistics.mean(r["lpips_ratio"] for r in out),
        "all_better_or_equal": all(r["style_ratio"] <= 1 and r["lpips_ratio"] <= 1 for r in out),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
