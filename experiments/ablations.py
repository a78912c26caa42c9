"""Ablations as sweeps over config groups, each collected into a figure and a table.

    python -m experiments.ablations pooling [size=256 steps=300] [--publish experiments/results]
    python -m experiments.ablations content_layer | init | optimizer | all

- ``pooling``: VGG19 with max vs average pooling (``network.pooling``); Gatys et al. found
  average pooling gives better gradient flow and smoother results.
- ``content_layer``: content at conv2_2, conv3_2, conv4_2 (the paper's), conv5_2.
- ``init``: start from white noise (the paper), the content image, or the style image.
- ``optimizer``: L-BFGS (the paper) vs Adam, same number of iterations (``optim`` group).

Each is ``nstyle-stylize -m experiment=ablation_<name>`` (presets in conf/experiment/) plus
``nstyle-collect``; this module runs both and publishes
``DIR/ablation_<name>.{png,csv,md}``. Debug: ``python -m experiments.ablations all debug=tiny``.
"""

from __future__ import annotations

import sys

from experiments import _sweep
from nstyle._errors import UserError
from nstyle.cli.errors import command

ABLATIONS = {
    "pooling": ("network.pooling", "VGG19 pooling: average vs max"),
    "content_layer": ("loss.content_layers", "Content layer"),
    "init": ("init", "Initial image"),
    "optimizer": ("optim", "Optimiser: L-BFGS vs Adam"),
}


@command("python -m experiments.ablations")
def main(argv=None) -> int:
    """Exit status 0 when every job of every ablation completed, 1 when some failed, 2 for bad input."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*ABLATIONS, "all"):
        raise UserError(
            f"usage: python -m experiments.ablations {{{'|'.join(ABLATIONS)}|all}} [overrides] [--publish DIR]"
        )
    which = list(ABLATIONS) if argv[0] == "all" else [argv[0]]
    worst = 0
    for name in which:
        args, overrides = _sweep.parse(f"python -m experiments.ablations {name}", __doc__, argv[1:])
        if args.sweep_dir and len(which) > 1:
            args.sweep_dir = f"{args.sweep_dir}/{name}"
        key, title = ABLATIONS[name]
        _, code = _sweep.run_sweep(
            f"ablation_{name}", args, overrides, rows=None, cols=key, title=f"Ablation — {title}"
        )
        if code == 2:
            return 2
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
