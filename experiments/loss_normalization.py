"""Loss weights that hold at any size: the paper's weights against the normalised ones, 64 to 1024 px.

    python -m experiments.loss_normalization [--sizes 64 128 256 512 1024] [--steps 100] [--publish experiments/results]

With METHOD.md's normalisations the content term ½Σ(F − P)² grows with the number of
positions while the style term (on mean Gram matrices) does not, so the paper's α/β = 1e-3
gives a different balance at every size: heavily stylised at 64 px, hardly at 1024 px.
``loss=normalized`` (``nstyle.losses.NORMALIZED``) divides every term by its value at zero
features, so every term is a relative error whatever the size. For one pair (chelsea × ihc,
the demo's; ``--pair K`` for another built-in pair) at each size, from the content image,
L-BFGS for ``--steps`` iterations, the style image at the output's size: the table gives
LPIPS to the content and the VGG16 Gram and mean-std distances relative to the content
image's own, per size and weighting; the figure shows the results side by side.
Run directory: ``outputs/experiments/loss_normalization/<time>/`` (``--out DIR``; a rerun
into it reuses the finished runs).
"""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from experiments import _compare
from nstyle import images, losses, transfer

NAME = "loss_normalization"
WEIGHTINGS = {"paper": losses.PerceptualLoss(), "normalized": losses.NORMALIZED}


def main(argv=None) -> int:
    p = _compare.parser(f"python -m experiments.{NAME}", __doc__, size=0, steps=100)
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    p.add_argument("--pair", type=int, default=0, help="which built-in pair (default 0: chelsea × ihc)")
    args = p.parse_args(argv)
    if args.debug:
        args.sizes, args.steps = [32, 48], 3
    dest = _compare.check_publish(args.publish, [f"{NAME}{s}" for s in (".png", ".csv", ".md")], args.overwrite)
    from nstyle import _xla
    from nstyle.cli import figures

    _xla.persistent_cache()
    out = _compare.out_dir(NAME, args.out)
    content_spec, style_spec = images.BUILTIN_PAIRS[args.pair]
    rows, cells = [], {w: [] for w in WEIGHTINGS}
    for size in args.sizes:
        base = transfer.TransferSettings(
            content=content_spec, styles=(style_spec,), sizes=(size,), stage_steps=(args.steps,)
        )
        vs = [
            _compare.Variant(w, lambda s, loss=loss: dataclasses.replace(s, loss=loss))
            for w, loss in WEIGHTINGS.items()
        ]
        r, shown = _compare.compare(base, vs, [(content_spec, style_spec)], out / f"{size}px", size=size)
        for row in r:
            if row["variant"] != "(content image)":
                rows.append({"size": size, **row})
        for w in WEIGHTINGS:
            (imgs,) = shown.values()
            cells[w].append(_compare.fit(imgs[w], (96, 128)))
    settings = {"pair": _compare.pair_name(content_spec, style_spec), "optim": f"lbfgs×{args.steps}", "init": "content"}
    settings["normalized"] = f"alpha={losses.NORMALIZED.alpha:g} beta={losses.NORMALIZED.beta:g}"
    fig = figures.image_grid(
        [cells[w] for w in WEIGHTINGS],
        [f"{w} weights" for w in WEIGHTINGS],
        [f"{s} px" for s in args.sizes],
        title="One set of loss weights at every size: paper vs normalised",
        settings=settings,
    )
    summary = []
    for w in WEIGHTINGS:
        rel = [r["gram_rel"] for r in rows if r["variant"] == w]
        lp = [r["lpips"] for r in rows if r["variant"] == w]
        summary.append(
            {
                "weights": w,
                "gram_rel min–max": f"{min(rel):.3f}–{max(rel):.3f}",
                "gram_rel spread (max/min)": round(max(rel) / min(rel), 2),
                "lpips min–max": f"{min(lp):.3f}–{max(lp):.3f}",
                "lpips spread (max/min)": round(max(lp) / min(lp), 2),
                "gram_rel log-slope per size doubling": round(
                    float(np.polyfit(np.log2(args.sizes), np.log(rel), 1)[0]), 3
                ),
            }
        )
    _compare.write(NAME, out, rows, summary, fig, {**settings, "sizes": args.sizes}, dest)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
