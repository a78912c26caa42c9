"""The paper's α/β × style-depth grid (Gatys et al. 2016, Fig. 3), as a Hydra sweep.

    python -m experiments.alpha_beta_grid --batched size=192 steps=200 --publish experiments/results

Rows: α/β ∈ {1e-5, 1e-4, 1e-3, 1e-2} (α = 1, β swept); columns: the style layers
{conv1_1}, {conv1_1, conv2_1}, … {conv1_1 … conv5_1} (w_l = 1/n); content conv4_2.
The sweep preset is ``conf/experiment/alpha_beta_grid.yaml``; the same grid one job after
another (or on a cluster) is ``nstyle-stylize -m experiment=alpha_beta_grid [+launcher=slurm]``
followed by ``nstyle-collect <sweep dir> --rows loss.beta --cols loss.style_layers``.
``--batched`` optimises the four α/β values of each column as one batch (nstyle-sweep).

Writes the jobs and ``summary/`` (grid.png, loss_curves.png, table.csv/.md with final
content and style loss, LPIPS to the content image, VGG16 Gram distance to the style image,
wall time) into the sweep directory; ``--publish DIR`` copies them to
``DIR/alpha_beta_grid.{png,csv,md}`` and ``alpha_beta_grid_curves.png``.
Debug: ``python -m experiments.alpha_beta_grid --batched debug=tiny``.
"""

from __future__ import annotations

import sys

from experiments import _sweep
from nstyle.cli.errors import command

NAME = "alpha_beta_grid"


@command(f"python -m experiments.{NAME}")
def main(argv=None) -> int:
    """Exit status 0 when every job completed, 1 when some failed, 2 for bad input."""
    args, overrides = _sweep.parse(f"python -m experiments.{NAME}", __doc__, argv)
    _, code = _sweep.run_sweep(
        NAME,
        args,
        overrides,
        rows="loss.beta",
        cols="loss.style_layers",
        title="Style transfer: α/β × deepest style layer",
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
