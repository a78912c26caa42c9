"""Which style statistic? Gram matrices, per-channel mean and std, and the W2 distance compared.

    python -m experiments.style_losses [--size 128] [--steps 100] [--publish experiments/results]

On every built-in pair (``nstyle.images.BUILTIN_PAIRS``), from the content image, L-BFGS for
``--steps`` iterations at ``--size`` px with the paper's layers, for:

- ``gram (paper)``: the paper's loss and weights (α = 1, β = 1e3), the reference;
- ``gram``, ``meanstd``, ``w2``: each style loss with the normalised weights
  (``loss=normalized``: each layer's term divided by the size of its target statistic), so the
  same α/β means the same balance for all three and the comparison is of the statistic alone.

The table (``style_losses.md``/``.csv``) gives per run LPIPS to the content, the VGG16 Gram
distance and the VGG16 mean-std distance to the style (absolute, and relative to the content
image's own: below 1 is closer to the style than the photo), and the time; then the means per
loss. ``style_losses.png`` shows every result. Run directory:
``outputs/experiments/style_losses/<time>/`` (``--out DIR`` to choose; a rerun into the same
directory reuses the finished runs).
"""

from __future__ import annotations

import dataclasses
import sys

from experiments import _compare
from nstyle import images, losses, transfer

NAME = "style_losses"


def variants() -> list[_compare.Variant]:
    def normalized(kind):
        return lambda s: dataclasses.replace(s, loss=dataclasses.replace(losses.NORMALIZED, style_loss=kind))

    return [_compare.Variant("gram (paper)", lambda s: s)] + [
        _compare.Variant(kind, normalized(kind)) for kind in losses.STYLE_LOSSES
    ]


def main(argv=None) -> int:
    args = _compare.parser(f"python -m experiments.{NAME}", __doc__, size=128, steps=100).parse_args(argv)
    if args.debug:
        args.size, args.steps, args.pairs = 32, 3, 1
    dest = _compare.check_publish(args.publish, [f"{NAME}{s}" for s in (".png", ".csv", ".md")], args.overwrite)
    from nstyle import _xla

    _xla.persistent_cache()
    out = _compare.out_dir(NAME, args.out)
    base = transfer.TransferSettings(sizes=(args.size,), stage_steps=(args.steps,))
    vs = variants()
    rows, shown = _compare.compare(base, vs, images.BUILTIN_PAIRS[: args.pairs], out, size=args.size)
    summary = _compare.means(rows, ("lpips", "gram_rel", "meanstd_rel", "optimize_s", "wall_s"))
    settings = {
        "size": args.size,
        "optim": f"lbfgs×{args.steps}",
        "init": "content",
        "normalized": losses.NORMALIZED.beta,
    }
    fig = _compare.grid(shown, [v.name for v in vs], "Style losses: Gram, mean-std, W2", settings)
    _compare.write(NAME, out, rows, summary, fig, settings, dest)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
