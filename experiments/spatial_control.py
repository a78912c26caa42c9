"""Spatial control (Gatys et al. 2017): two styles, each in its own region of the content.

    python -m experiments.spatial_control [--size 128] [--steps 100] [--publish experiments/results]
                                          [--figure docs/images/spatial_control.png]

For every built-in pair, style A is the pair's style and style B the next pair's; the masks
(written as PNG files into the run directory and given as ``masks=[...]``, as on the command
line) put A on the left and B on the right of the content, with a soft 20%-wide ramp between
them. Two runs per pair, from the content image, L-BFGS for ``--steps`` iterations, the
paper's loss: ``blend`` (both styles everywhere, equal weights) and ``masks``.

The table measures the left and right fifths of each result (away from the ramp) with the
VGG16 Gram distance to A and to B, and ``own/other``: each region's distance to its own
style over its distance to the other one, averaged over the two regions (below 1: each side
is closer to its own style). With masks it must be lower than with the blend, where the two
sides get the same style. ``--figure`` also writes the first pair's row as a small PNG for
the docs.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from experiments import _compare
from nstyle import images, metrics, transfer

NAME = "spatial_control"


def masks_for(shape: tuple[int, int], ramp: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Left and right masks (H, W) in [0, 1] that sum to 1, with a linear ramp in the middle."""
    w = shape[1]
    x = (np.arange(w) + 0.5) / w
    left = np.clip((0.5 + ramp / 2 - x) / ramp, 0.0, 1.0)
    left = np.broadcast_to(left, shape).astype(np.float32)
    return left, 1.0 - left


def region_distances(result: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict:
    w = result.shape[1]
    left, right = result[:, : w // 5], result[:, w - w // 5 :]
    d = {
        "left→A": metrics.style_distance(left, a),
        "left→B": metrics.style_distance(left, b),
        "right→A": metrics.style_distance(right, a),
        "right→B": metrics.style_distance(right, b),
    }
    d["own/other"] = 0.5 * (d["left→A"] / d["left→B"] + d["right→B"] / d["right→A"])
    return {k: float(f"{v:.4g}") for k, v in d.items()}


def main(argv=None) -> int:
    p = _compare.parser(f"python -m experiments.{NAME}", __doc__, size=128, steps=100)
    p.add_argument("--figure", default=None, help="also write the first pair's row here (a small PNG for the docs)")
    args = p.parse_args(argv)
    if args.debug:
        args.size, args.steps, args.pairs = 32, 3, 1
    dest = _compare.check_publish(args.publish, [f"{NAME}{s}" for s in (".png", ".csv", ".md")], args.overwrite)
    from nstyle import _xla, lpips, weights
    from nstyle.cli import figures

    _xla.persistent_cache()
    out = _compare.out_dir(NAME, args.out)
    out.mkdir(parents=True, exist_ok=True)
    params = weights.load("vgg19")
    pairs = images.BUILTIN_PAIRS
    rows, cells, labels = [], [], []
    for k, (content_spec, style_a) in enumerate(pairs[: args.pairs]):
        style_b = pairs[(k + 1) % len(pairs)][1]
        content = images.load_image(content_spec, args.size)
        a, b = (images.load_image(s, args.size) for s in (style_a, style_b))
        name = _compare.pair_name(content_spec, style_a) + "+" + _compare.pair_name(content_spec, style_b).split("×")[1]
        mask_files = []
        for side, m in zip(("left", "right"), masks_for(content.shape[:2])):
            path = out / f"{_compare.pair_name(content_spec, style_a).split('×')[0]}_mask_{side}.png"
            images.save_image(path, np.repeat(m[..., None], 3, axis=-1))
            mask_files.append(str(path))
        base = transfer.TransferSettings(
            content=content_spec, styles=(style_a, style_b), sizes=(args.size,), stage_steps=(args.steps,)
        )
        row_images = [content, np.repeat(images.load_image(mask_files[0])[..., :1], 3, axis=-1), a, b]
        for variant, s in (("blend", base), ("masks", dataclasses.replace(base, masks=tuple(mask_files)))):
            image, rec = _compare.run_one(s, out, f"{name}__{variant}", lambda arch: params)
            lp = float(np.asarray(lpips.lpips_distance(image[None], images.resize(content, image.shape[:2])[None]))[0])
            row = {"pair": name, "variant": variant, **region_distances(image, a, b), "lpips": round(lp, 3)}
            row.update(
                iterations=rec["iterations"], optimize_s=round(rec["optimize_s"], 1), wall_s=round(rec["wall_s"], 1)
            )
            rows.append(row)
            row_images.append(image)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
        cells.append([_compare.fit(x, (96, 128)) for x in row_images])
        short = [_compare.pair_name(content_spec, s).split("×")[1].split("_")[0] for s in (style_a, style_b)]
        labels.append(f"{_compare.pair_name(content_spec, style_a).split('×')[0]}\nA {short[0]}, B {short[1]}")
    columns = ["content", "mask of A", "style A", "style B", "blend", "masks"]
    settings = {"size": args.size, "optim": f"lbfgs×{args.steps}", "loss": "paper", "ramp": "20% of the width"}
    fig = figures.image_grid(
        cells, labels, columns, title="Spatial control: style A left, style B right", settings=settings
    )
    summary = _compare.means(rows, ("own/other", "lpips", "optimize_s"))
    _compare.write(NAME, out, rows, summary, fig, settings, dest)
    if args.figure:
        from experiments._common import publish_file

        row = figures.image_row(
            [cells[0][i] for i in (0, 1, 2, 3, 5)],
            ["content", "mask (A = white)", "style A", "style B", "result"],
            title="nstyle-stylize style=[A,B] masks=[mask_A,mask_B]",
            settings=settings,
            panel_in=1.6,
        )
        tmp = out / "spatial_control_docs.png"
        figures.save_figure(row, tmp)
        print(f"wrote {publish_file(tmp, Path(args.figure))}")
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
